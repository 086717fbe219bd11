//! L2: deep context, one per system. It owns the semantic page table (page id → tier, owner,
//! hash, use) and the similarity index over every page, whatever its tier.
//!
//! Every page is written through to L3 before it is acknowledged, so L2 and L1 only decide where
//! a body is *resident*. L2 keeps bodies of L1 and L2 pages in memory; past its capacity the
//! least important L2 page is demoted to L3 (its body dropped from memory, its embedding kept in
//! the index, so a later query can still find it and fault it back in).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::MemoryConfig;
use crate::error::{MemoryError, Result};
use crate::index::PageIndex;
use crate::page::{CognitivePage, ContentHash, PageEntry, PageId, Tier};
use crate::tiers::l3::L3Msg;

/// Finds the current instance of an actor (the runtime passes its supervisor slots).
pub type Locate<M> = Arc<dyn Fn() -> Option<ActorRef<M>> + Send + Sync>;

/// A page before it has an id.
#[derive(Debug, Clone)]
pub struct PageDraft {
    pub text: String,
    pub tokens: u32,
    pub span: (u64, u64),
    pub density: f32,
    pub embedding: Vec<f32>,
}

/// A query against the index.
#[derive(Debug, Clone)]
pub struct Query {
    /// Only this owner's pages (all owners when `None`).
    pub owner: Option<String>,
    pub text: String,
    pub embedding: Vec<f32>,
    pub k: usize,
    pub min_relevance: f32,
    /// The asker's turn (for the entries' use bookkeeping).
    pub turn: u64,
    /// Move the returned pages to L1 (a page fault) rather than only read them.
    pub fault: bool,
}

/// Counters of L2.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L2Stats {
    pub pages: usize,
    pub resident_bodies: usize,
    pub in_l1: usize,
    pub in_l2: usize,
    pub in_l3_only: usize,
    pub demotions_to_l3: u64,
    pub faults_from_l3: u64,
    pub duplicates: u64,
}

pub enum L2Msg {
    /// Store new pages of `owner` (duplicates resolve to the existing page), durable before the
    /// reply; they enter `tier`.
    Store {
        owner: String,
        turn: u64,
        drafts: Vec<PageDraft>,
        tier: Tier,
        reply: RpcReplyPort<Result<Vec<CognitivePage>>>,
    },
    /// The most relevant pages, best first, with their relevance and the tier each was in.
    Search {
        query: Query,
        reply: RpcReplyPort<Result<Vec<(CognitivePage, f32, Tier)>>>,
    },
    /// An L1 evicted these pages: they are L2 pages now.
    Demote {
        ids: Vec<PageId>,
        reply: RpcReplyPort<Result<()>>,
    },
    /// The owner's pages currently in `tier` (an L1 restarting reloads its window), oldest first,
    /// and the owner's latest turn.
    Owned {
        owner: String,
        tier: Tier,
        reply: RpcReplyPort<Result<(Vec<CognitivePage>, u64)>>,
    },
    Stats(RpcReplyPort<L2Stats>),
}

#[derive(Clone)]
pub struct L2Args {
    pub config: MemoryConfig,
    pub l3: Locate<L3Msg>,
}

#[derive(Debug, Clone, Copy)]
pub struct L2Actor;

pub struct L2State {
    config: MemoryConfig,
    l3: Locate<L3Msg>,
    entries: HashMap<PageId, PageEntry>,
    bodies: HashMap<PageId, CognitivePage>,
    by_hash: HashMap<ContentHash, PageId>,
    index: PageIndex,
    next_id: u64,
    /// The latest turn seen, the clock of L2's importance.
    clock: u64,
    stats: L2Stats,
}

#[ractor::async_trait]
impl Actor for L2Actor {
    type Msg = L2Msg;
    type State = L2State;
    type Arguments = L2Args;

    async fn pre_start(&self, _myself: ActorRef<L2Msg>, args: L2Args) -> Result<L2State, ActorProcessingErr> {
        let l3 = (args.l3)().ok_or(MemoryError::Unavailable("L3"))?;
        let (entries, pages) = ractor::call!(l3, L3Msg::LoadAll).map_err(|_| MemoryError::Unavailable("L3"))??;
        let mut state = L2State {
            index: PageIndex::new(args.config.similarity_weight),
            config: args.config,
            l3: args.l3,
            entries: HashMap::new(),
            bodies: HashMap::new(),
            by_hash: HashMap::new(),
            next_id: 1,
            clock: 0,
            stats: L2Stats::default(),
        };
        let mut pages: HashMap<PageId, CognitivePage> = pages.into_iter().map(|p| (p.id, p)).collect();
        for entry in entries {
            let Some(page) = pages.remove(&entry.id) else {
                return Err(MemoryError::Invalid(format!("{} has a page-table entry but no body", entry.id)).into());
            };
            state.next_id = state.next_id.max(entry.id.0 + 1);
            state.clock = state.clock.max(entry.last_access_turn);
            state
                .index
                .insert(page.id, &page.owner, &page.text, page.embedding.clone());
            state.by_hash.insert(entry.hash, entry.id);
            if entry.tier != Tier::L3 {
                state.bodies.insert(page.id, page);
            }
            state.entries.insert(entry.id, entry);
        }
        tracing::debug!(pages = state.entries.len(), "L2 loaded the page table");
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<L2Msg>,
        msg: L2Msg,
        state: &mut L2State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            L2Msg::Store {
                owner,
                turn,
                drafts,
                tier,
                reply,
            } => {
                let r = state.store(owner, turn, drafts, tier).await;
                let _ = reply.send(r);
            }
            L2Msg::Search { query, reply } => {
                let r = state.search(query).await;
                let _ = reply.send(r);
            }
            L2Msg::Demote { ids, reply } => {
                let r = state.demote(&ids).await;
                let _ = reply.send(r);
            }
            L2Msg::Owned { owner, tier, reply } => {
                let r = state.owned(&owner, tier).await;
                let _ = reply.send(r);
            }
            L2Msg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
        }
        Ok(())
    }
}

impl L2State {
    fn l3(&self) -> Result<ActorRef<L3Msg>> {
        (self.l3)().ok_or(MemoryError::Unavailable("L3"))
    }

    async fn persist(&self, pages: Vec<CognitivePage>, entries: Vec<PageEntry>) -> Result<()> {
        if pages.is_empty() && entries.is_empty() {
            return Ok(());
        }
        let l3 = self.l3()?;
        ractor::call!(l3, |reply| L3Msg::Write { pages, entries, reply }).map_err(|_| MemoryError::Unavailable("L3"))?
    }

    async fn store(
        &mut self,
        owner: String,
        turn: u64,
        drafts: Vec<PageDraft>,
        tier: Tier,
    ) -> Result<Vec<CognitivePage>> {
        self.clock = self.clock.max(turn);
        let mut out = Vec::with_capacity(drafts.len());
        let (mut new_pages, mut changed) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        for d in drafts {
            if d.text.trim().is_empty() {
                continue;
            }
            let hash = ContentHash::of(&owner, &d.text);
            if let Some(&id) = self.by_hash.get(&hash) {
                // Stored once: the existing page is used again (and comes back if it was in L3).
                self.stats.duplicates += 1;
                if !seen.insert(id) {
                    continue;
                }
                let page = self.body(id).await?;
                let entry = self.entries.get_mut(&id).expect("hash index and page table agree");
                entry.tier = tier;
                entry.access_count += 1;
                entry.last_access_turn = turn;
                changed.push(entry.clone());
                self.bodies.insert(id, page.clone());
                out.push(page);
                continue;
            }
            let id = PageId(self.next_id);
            self.next_id += 1;
            let page = CognitivePage {
                id,
                owner: owner.clone(),
                text: d.text,
                tokens: d.tokens,
                span: d.span,
                density: d.density,
                created_turn: turn,
                hash,
                embedding: d.embedding,
            };
            let entry = PageEntry::new(&page, tier);
            changed.push(entry.clone());
            new_pages.push(page.clone());
            seen.insert(id);
            out.push(page);
        }
        // Durable first: only an acknowledged write is visible.
        self.persist(new_pages.clone(), changed.clone()).await?;
        for page in new_pages {
            self.index
                .insert(page.id, &page.owner, &page.text, page.embedding.clone());
            self.by_hash.insert(page.hash, page.id);
            self.bodies.insert(page.id, page);
        }
        for entry in changed {
            self.entries.insert(entry.id, entry);
        }
        self.enforce_capacity().await?;
        Ok(out)
    }

    /// A page's body from memory, or from L3 (a fault from disk).
    async fn body(&mut self, id: PageId) -> Result<CognitivePage> {
        if let Some(p) = self.bodies.get(&id) {
            return Ok(p.clone());
        }
        let l3 = self.l3()?;
        let mut pages = ractor::call!(l3, |reply| L3Msg::Read { ids: vec![id], reply })
            .map_err(|_| MemoryError::Unavailable("L3"))??;
        self.stats.faults_from_l3 += 1;
        pages
            .pop()
            .ok_or_else(|| MemoryError::Invalid(format!("{id} is not in the store")))
    }

    async fn search(&mut self, q: Query) -> Result<Vec<(CognitivePage, f32, Tier)>> {
        self.clock = self.clock.max(q.turn);
        let hits = self.index.search(
            &q.embedding,
            &q.text,
            q.owner.as_deref(),
            &HashSet::new(),
            q.k,
            q.min_relevance,
        );
        let mut out = Vec::with_capacity(hits.len());
        let mut changed = Vec::new();
        for hit in hits {
            let page = self.body(hit.id).await?;
            let mut tier = Tier::L3;
            if let Some(entry) = self.entries.get_mut(&hit.id) {
                tier = entry.tier;
                entry.relevance = hit.relevance;
                if q.fault {
                    if entry.tier != Tier::L1 {
                        entry.tier = Tier::L1;
                        changed.push(entry.clone());
                    }
                    entry.access_count += 1;
                    entry.last_access_turn = q.turn;
                    self.bodies.insert(hit.id, page.clone());
                }
            }
            out.push((page, hit.relevance, tier));
        }
        self.persist(Vec::new(), changed).await?;
        self.enforce_capacity().await?;
        Ok(out)
    }

    async fn demote(&mut self, ids: &[PageId]) -> Result<()> {
        let mut changed = Vec::new();
        for id in ids {
            if let Some(entry) = self.entries.get_mut(id)
                && entry.tier == Tier::L1
            {
                entry.tier = Tier::L2;
                changed.push(entry.clone());
            }
        }
        self.persist(Vec::new(), changed).await?;
        self.enforce_capacity().await
    }

    /// L2 overflow: the least important L2 pages leave memory for L3.
    async fn enforce_capacity(&mut self) -> Result<()> {
        let in_l2: Vec<PageId> = self
            .entries
            .values()
            .filter(|e| e.tier == Tier::L2)
            .map(|e| e.id)
            .collect();
        let over = in_l2.len().saturating_sub(self.config.l2_capacity_pages);
        if over == 0 {
            return Ok(());
        }
        let weights = &self.config.importance;
        let mut ranked: Vec<(f32, PageId)> = in_l2
            .iter()
            .map(|id| (weights.importance(&self.entries[id], self.clock), *id))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut changed = Vec::with_capacity(over);
        for (_, id) in ranked.into_iter().take(over) {
            let entry = self.entries.get_mut(&id).expect("ranked from the table");
            entry.tier = Tier::L3;
            changed.push(entry.clone());
        }
        self.persist(Vec::new(), changed.clone()).await?;
        for e in changed {
            self.bodies.remove(&e.id);
            self.stats.demotions_to_l3 += 1;
        }
        Ok(())
    }

    async fn owned(&mut self, owner: &str, tier: Tier) -> Result<(Vec<CognitivePage>, u64)> {
        let mut ids: Vec<PageId> = self
            .entries
            .values()
            .filter(|e| e.owner == owner && e.tier == tier)
            .map(|e| e.id)
            .collect();
        ids.sort();
        let turn = self
            .entries
            .values()
            .filter(|e| e.owner == owner)
            .map(|e| e.last_access_turn.max(e.created_turn))
            .max()
            .unwrap_or(0);
        let mut pages = Vec::with_capacity(ids.len());
        for id in ids {
            pages.push(self.body(id).await?);
        }
        Ok((pages, turn))
    }

    fn stats(&self) -> L2Stats {
        let count = |t: Tier| self.entries.values().filter(|e| e.tier == t).count();
        L2Stats {
            pages: self.entries.len(),
            resident_bodies: self.bodies.len(),
            in_l1: count(Tier::L1),
            in_l2: count(Tier::L2),
            in_l3_only: count(Tier::L3),
            ..self.stats.clone()
        }
    }
}
