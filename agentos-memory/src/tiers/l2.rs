//! L2: deep context, one per system. It owns the semantic page table (page id → tier, owner,
//! hash, use) and the similarity index over every page, whatever its tier.
//!
//! Every page is written through to L3 before it is acknowledged, so L2 and L1 only decide where
//! a body is *resident*. L2 keeps bodies of L1 and L2 pages in memory; past its capacity the
//! least important L2 pages are demoted to L3 (their bodies dropped from memory, their embeddings
//! kept in the index, so a later query can still find them and fault them back in).
//!
//! **Start.** L2 loads the page table and the index records from L3 (no page body:
//! [`L3Msg::LoadIndex`], in chunks of [`LOAD_CHUNK_PAGES`] pages, each request bounded work under
//! the tier timeout), demotes L2 pages past its capacity (when the capacity was lowered), then
//! reads the bodies of the L1 and L2 pages in one request, so they are resident from the start as
//! they were before the restart; L3 pages stay on disk until a query faults them in.
//!
//! [`LOAD_CHUNK_PAGES`]: crate::tiers::l3::LOAD_CHUNK_PAGES
//!
//! **Cost per operation.** Nothing scans the page table: tier counts are kept as entries change,
//! an owner's pages per tier are indexed ([`L2Msg::Owned`]), and demotion picks from the L2 pages
//! ordered by last use (see [`DEMOTION_SAMPLE`]). Search costs what [`PageIndex::search`] costs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::MemoryConfig;
use crate::error::{MemoryError, Result};
use crate::index::PageIndex;
use crate::page::{CognitivePage, ContentHash, PageEntry, PageId, Tier};
use crate::tiers::ask;
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
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// and the owner's latest turn (the highest turn any of its pages was written or used in).
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

/// Demotion (LRU-Semantic, sampled): when L2 holds `over` pages past its capacity, the `over`
/// least important ([`ImportanceWeights::importance`]) of the `over + DEMOTION_SAMPLE` L2 pages
/// used longest ago go to L3. With at most that many L2 pages this is the exact order; past it,
/// a page used recently is kept even when its importance is lower, which recency dominates
/// anyway (it decays by `1/e` every `recency_turns`).
///
/// [`ImportanceWeights::importance`]: crate::page::ImportanceWeights::importance
pub const DEMOTION_SAMPLE: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct L2Actor;

pub struct L2State {
    config: MemoryConfig,
    l3: Locate<L3Msg>,
    entries: HashMap<PageId, PageEntry>,
    bodies: HashMap<PageId, CognitivePage>,
    by_hash: HashMap<ContentHash, PageId>,
    index: PageIndex,
    /// L2-tier pages by (last access turn, id): the first are the demotion candidates.
    l2_by_age: BTreeSet<(u64, PageId)>,
    owners: HashMap<String, OwnerPages>,
    /// Entries per tier: L1, L2, L3.
    in_tier: [usize; 3],
    next_id: u64,
    /// The latest turn seen, the clock of L2's importance.
    clock: u64,
    stats: L2Stats,
}

/// One owner's pages, per tier, and its latest turn.
#[derive(Default)]
struct OwnerPages {
    in_tier: [BTreeSet<PageId>; 3],
    /// The highest `created_turn` or `last_access_turn` any of its entries has had.
    latest_turn: u64,
}

fn tier_slot(tier: Tier) -> usize {
    match tier {
        Tier::L1 => 0,
        Tier::L2 => 1,
        Tier::L3 => 2,
    }
}

#[ractor::async_trait]
impl Actor for L2Actor {
    type Msg = L2Msg;
    type State = L2State;
    type Arguments = L2Args;

    async fn pre_start(&self, _myself: ActorRef<L2Msg>, args: L2Args) -> Result<L2State, ActorProcessingErr> {
        let l3 = (args.l3)().ok_or(MemoryError::Unavailable("L3"))?;
        let timeout = args.config.tier_timeout;
        // In chunks: each request is bounded work, so a large store is no timeout, and a timeout
        // still means that L3 is stuck.
        let mut index = PageIndex::new(args.config.similarity_weight);
        let mut entries = Vec::new();
        let mut after = None;
        loop {
            let load = move |reply| L3Msg::LoadIndex {
                index: Box::new(index),
                after,
                reply,
            };
            let chunk = ask(&l3, "L3", timeout, load).await??;
            entries.extend(chunk.entries);
            index = chunk.index;
            match chunk.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut state = L2State {
            index,
            config: args.config,
            l3: args.l3,
            entries: HashMap::with_capacity(entries.len()),
            bodies: HashMap::new(),
            by_hash: HashMap::with_capacity(entries.len()),
            l2_by_age: BTreeSet::new(),
            owners: HashMap::new(),
            in_tier: [0; 3],
            next_id: 1,
            clock: 0,
            stats: L2Stats::default(),
        };
        for entry in entries {
            state.next_id = state.next_id.max(entry.id.0 + 1);
            state.clock = state.clock.max(entry.last_access_turn);
            state.by_hash.insert(entry.hash, entry.id);
            state.add_entry(entry);
        }
        state.enforce_capacity().await?;
        let resident: Vec<PageId> = state
            .owners
            .values()
            .flat_map(|o| o.in_tier[0].iter().chain(&o.in_tier[1]).copied())
            .collect();
        if !resident.is_empty() {
            let pages = ask(&l3, "L3", timeout, |reply| L3Msg::Read { ids: resident, reply }).await??;
            state.bodies.extend(pages.into_iter().map(|p| (p.id, p)));
        }
        tracing::debug!(
            pages = state.entries.len(),
            resident = state.bodies.len(),
            "L2 loaded the page table and the index"
        );
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
        ask(&l3, "L3", self.config.tier_timeout, |reply| L3Msg::Write {
            pages,
            entries,
            reply,
        })
        .await?
    }

    /// Adds a new entry to the table and to every index of it.
    fn add_entry(&mut self, entry: PageEntry) {
        self.link(&entry);
        self.entries.insert(entry.id, entry);
    }

    /// Changes the entry of `id` (when there is one) and keeps the tier counts, the age order and
    /// the owner's index in step; returns the changed entry.
    fn update(&mut self, id: PageId, change: impl FnOnce(&mut PageEntry)) -> Option<PageEntry> {
        let entry = self.entries.get_mut(&id)?;
        let before = (entry.tier, entry.last_access_turn);
        change(entry);
        let entry = entry.clone();
        if before != (entry.tier, entry.last_access_turn) {
            self.unlink(&entry.owner, id, before.0, before.1);
            self.link(&entry);
        }
        Some(entry)
    }

    fn link(&mut self, entry: &PageEntry) {
        let slot = tier_slot(entry.tier);
        self.in_tier[slot] += 1;
        if entry.tier == Tier::L2 {
            self.l2_by_age.insert((entry.last_access_turn, entry.id));
        }
        let owner = match self.owners.get_mut(&entry.owner) {
            Some(o) => o,
            None => self.owners.entry(entry.owner.clone()).or_default(),
        };
        owner.in_tier[slot].insert(entry.id);
        owner.latest_turn = owner.latest_turn.max(entry.last_access_turn.max(entry.created_turn));
    }

    fn unlink(&mut self, owner: &str, id: PageId, tier: Tier, last_access_turn: u64) {
        let slot = tier_slot(tier);
        self.in_tier[slot] -= 1;
        if tier == Tier::L2 {
            self.l2_by_age.remove(&(last_access_turn, id));
        }
        if let Some(o) = self.owners.get_mut(owner) {
            o.in_tier[slot].remove(&id);
        }
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
                let entry = self
                    .update(id, |entry| {
                        entry.tier = tier;
                        entry.access_count += 1;
                        entry.last_access_turn = turn;
                    })
                    .expect("hash index and page table agree");
                changed.push(entry);
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
            changed.push(entry);
            new_pages.push(page.clone());
            seen.insert(id);
            out.push(page);
        }
        // Durable first: only an acknowledged write is visible.
        let new_entries: Vec<PageEntry> = changed
            .iter()
            .filter(|e| !self.entries.contains_key(&e.id))
            .cloned()
            .collect();
        self.persist(new_pages.clone(), changed).await?;
        for page in new_pages {
            self.index
                .insert(page.id, &page.owner, &page.text, page.embedding.clone());
            self.by_hash.insert(page.hash, page.id);
            self.bodies.insert(page.id, page);
        }
        for entry in new_entries {
            self.add_entry(entry);
        }
        self.enforce_capacity().await?;
        Ok(out)
    }

    /// A page's body from memory, or from L3 (a fault from disk).
    async fn body(&mut self, id: PageId) -> Result<CognitivePage> {
        Ok(self.bodies_of(&[id]).await?.remove(0))
    }

    /// The bodies of `ids`, in order: from memory, and those not resident from L3 in one read
    /// (each a fault from disk).
    async fn bodies_of(&mut self, ids: &[PageId]) -> Result<Vec<CognitivePage>> {
        let missing: Vec<PageId> = ids.iter().copied().filter(|id| !self.bodies.contains_key(id)).collect();
        let mut read: HashMap<PageId, CognitivePage> = HashMap::new();
        if !missing.is_empty() {
            let l3 = self.l3()?;
            let n = missing.len();
            let pages = ask(&l3, "L3", self.config.tier_timeout, |reply| L3Msg::Read {
                ids: missing,
                reply,
            })
            .await??;
            self.stats.faults_from_l3 += n as u64;
            read.extend(pages.into_iter().map(|p| (p.id, p)));
        }
        ids.iter()
            .map(|id| match self.bodies.get(id) {
                Some(p) => Ok(p.clone()),
                None => read
                    .get(id)
                    .cloned()
                    .ok_or_else(|| MemoryError::Invalid(format!("{id} is not in the store"))),
            })
            .collect()
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
        let ids: Vec<PageId> = hits.iter().map(|h| h.id).collect();
        let pages = self.bodies_of(&ids).await?;
        let mut out = Vec::with_capacity(hits.len());
        let mut changed = Vec::new();
        for (hit, page) in hits.into_iter().zip(pages) {
            let tier = self.entries.get(&hit.id).map_or(Tier::L3, |e| e.tier);
            let updated = self.update(hit.id, |entry| {
                entry.relevance = hit.relevance;
                if q.fault {
                    entry.tier = Tier::L1;
                    entry.access_count += 1;
                    entry.last_access_turn = q.turn;
                }
            });
            if q.fault && updated.is_some() {
                if tier != Tier::L1 {
                    changed.extend(updated);
                }
                self.bodies.insert(hit.id, page.clone());
            }
            out.push((page, hit.relevance, tier));
        }
        self.persist(Vec::new(), changed).await?;
        self.enforce_capacity().await?;
        Ok(out)
    }

    async fn demote(&mut self, ids: &[PageId]) -> Result<()> {
        let mut changed = Vec::new();
        for &id in ids {
            if self.entries.get(&id).is_some_and(|e| e.tier == Tier::L1) {
                changed.extend(self.update(id, |e| e.tier = Tier::L2));
            }
        }
        self.persist(Vec::new(), changed).await?;
        self.enforce_capacity().await
    }

    /// L2 overflow: the least important L2 pages leave memory for L3 (see [`DEMOTION_SAMPLE`]).
    async fn enforce_capacity(&mut self) -> Result<()> {
        let over = self.in_tier[tier_slot(Tier::L2)].saturating_sub(self.config.l2_capacity_pages);
        if over == 0 {
            return Ok(());
        }
        let weights = &self.config.importance;
        let mut ranked: Vec<(f32, PageId)> = self
            .l2_by_age
            .iter()
            .take(over + DEMOTION_SAMPLE)
            .map(|&(_, id)| (weights.importance(&self.entries[&id], self.clock), id))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut changed = Vec::with_capacity(over);
        for (_, id) in ranked.into_iter().take(over) {
            changed.extend(self.update(id, |e| e.tier = Tier::L3));
        }
        self.persist(Vec::new(), changed.clone()).await?;
        for e in changed {
            self.bodies.remove(&e.id);
            self.stats.demotions_to_l3 += 1;
        }
        Ok(())
    }

    async fn owned(&mut self, owner: &str, tier: Tier) -> Result<(Vec<CognitivePage>, u64)> {
        let Some(pages) = self.owners.get(owner) else {
            return Ok((Vec::new(), 0));
        };
        let ids: Vec<PageId> = pages.in_tier[tier_slot(tier)].iter().copied().collect();
        let turn = pages.latest_turn;
        Ok((self.bodies_of(&ids).await?, turn))
    }

    fn stats(&self) -> L2Stats {
        L2Stats {
            pages: self.entries.len(),
            resident_bodies: self.bodies.len(),
            in_l1: self.in_tier[tier_slot(Tier::L1)],
            in_l2: self.in_tier[tier_slot(Tier::L2)],
            in_l3_only: self.in_tier[tier_slot(Tier::L3)],
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::l3::{L3Actor, L3Store};
    use crate::tiers::test_tiers::embed;

    async fn start(path: &std::path::Path, config: MemoryConfig) -> (ActorRef<L3Msg>, ActorRef<L2Msg>) {
        let (l3, _) = Actor::spawn(None, L3Actor, path.to_path_buf()).await.unwrap();
        let l3_ref = l3.clone();
        let args = L2Args {
            config,
            l3: Arc::new(move || Some(l3_ref.clone())),
        };
        let (l2, _) = Actor::spawn(None, L2Actor, args).await.unwrap();
        (l3, l2)
    }

    async fn stop(l3: ActorRef<L3Msg>, l2: ActorRef<L2Msg>) {
        l2.stop_and_wait(None, None).await.unwrap();
        l3.stop_and_wait(None, None).await.unwrap();
    }

    fn draft(text: String) -> PageDraft {
        PageDraft {
            embedding: embed(&text),
            tokens: text.split(' ').count() as u32,
            span: (0, 0),
            density: 0.5,
            text,
        }
    }

    async fn store(l2: &ActorRef<L2Msg>, owner: &str, turn: u64, texts: Vec<String>, tier: Tier) -> Vec<CognitivePage> {
        let (owner, drafts) = (owner.to_string(), texts.into_iter().map(draft).collect());
        ractor::call!(l2, |reply| L2Msg::Store {
            owner,
            turn,
            drafts,
            tier,
            reply
        })
        .unwrap()
        .unwrap()
    }

    async fn owned(l2: &ActorRef<L2Msg>, owner: &str, tier: Tier) -> (Vec<PageId>, u64) {
        let owner = owner.to_string();
        let (pages, turn) = ractor::call!(l2, |reply| L2Msg::Owned { owner, tier, reply })
            .unwrap()
            .unwrap();
        (pages.iter().map(|p| p.id).collect(), turn)
    }

    /// Tier counts recounted from the entries in the store.
    fn recount(path: &std::path::Path) -> (usize, usize, usize) {
        let (store, _) = L3Store::open(path).unwrap();
        let entries = store.read_entries().unwrap();
        let count = |t: Tier| entries.iter().filter(|e| e.tier == t).count();
        (count(Tier::L1), count(Tier::L2), count(Tier::L3))
    }

    #[tokio::test]
    async fn capacity_holds_through_many_operations_and_the_counters_match_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.redb");
        let config = MemoryConfig {
            l2_capacity_pages: 16,
            ..MemoryConfig::default()
        };
        let (l3, l2) = start(&path, config.clone()).await;
        let mut l1_pages = Vec::new();
        for turn in 1..=150u64 {
            let owner = if turn % 3 == 0 { "b" } else { "a" };
            let texts = (0..10)
                .map(|i| format!("turn{turn} note{i} about topic{}", (turn + i) % 9))
                .collect();
            let pages = store(&l2, owner, turn, texts, if turn % 5 == 0 { Tier::L1 } else { Tier::L2 }).await;
            if turn % 5 == 0 {
                l1_pages.extend(pages.iter().map(|p| p.id));
            }
            if turn % 7 == 0 {
                // An L1 hands pages back; a query faults others in.
                let ids: Vec<PageId> = l1_pages.drain(..l1_pages.len() / 2).collect();
                ractor::call!(l2, |reply| L2Msg::Demote { ids, reply })
                    .unwrap()
                    .unwrap();
                let query = Query {
                    owner: Some("a".into()),
                    text: format!("topic{}", turn % 9),
                    embedding: embed(&format!("topic{}", turn % 9)),
                    k: 3,
                    min_relevance: 0.0,
                    turn,
                    fault: true,
                };
                let hits = ractor::call!(l2, |reply| L2Msg::Search { query, reply })
                    .unwrap()
                    .unwrap();
                assert_eq!(hits.len(), 3);
                l1_pages.extend(hits.iter().map(|(p, _, _)| p.id));
            }
            let stats = ractor::call!(l2, L2Msg::Stats).unwrap();
            assert!(stats.in_l2 <= 16, "turn {turn}: {stats:?}");
            assert_eq!(stats.pages, stats.in_l1 + stats.in_l2 + stats.in_l3_only, "{stats:?}");
            assert_eq!(stats.resident_bodies, stats.in_l1 + stats.in_l2, "{stats:?}");
        }
        let stats = ractor::call!(l2, L2Msg::Stats).unwrap();
        assert_eq!(stats.pages, 1500);
        assert!(stats.demotions_to_l3 as usize >= stats.in_l3_only, "{stats:?}");
        let (a_l1, a_turn) = owned(&l2, "a", Tier::L1).await;
        let (b_l1, b_turn) = owned(&l2, "b", Tier::L1).await;
        let (a_l3, _) = owned(&l2, "a", Tier::L3).await;
        let on_disk = {
            let (owner, tier) = ("a".to_string(), Tier::L3);
            let (pages, _) = ractor::call!(l2, |reply| L2Msg::Owned { owner, tier, reply })
                .unwrap()
                .unwrap();
            pages[0].text.clone()
        };
        assert!(a_l1.windows(2).all(|w| w[0] < w[1]), "oldest first");
        assert_eq!(a_l1.len() + b_l1.len(), stats.in_l1);
        assert_eq!((a_turn, b_turn), (149, 150));
        assert!(a_l3.len() > 900);
        assert_eq!(owned(&l2, "nobody", Tier::L1).await, (Vec::new(), 0));
        stop(l3, l2).await;
        assert_eq!(recount(&path), (stats.in_l1, stats.in_l2, stats.in_l3_only));

        // A restart makes the L1 and L2 bodies resident and reads no L3 body, until one is needed.
        let (l3, l2) = start(&path, config).await;
        let after = ractor::call!(l2, L2Msg::Stats).unwrap();
        assert_eq!(
            (after.pages, after.in_l1, after.in_l2, after.in_l3_only),
            (stats.pages, stats.in_l1, stats.in_l2, stats.in_l3_only)
        );
        assert_eq!(
            (after.resident_bodies, after.faults_from_l3),
            (stats.in_l1 + stats.in_l2, 0)
        );
        let query = Query {
            owner: Some("a".into()),
            text: on_disk.clone(),
            embedding: embed(&on_disk),
            k: 1,
            min_relevance: 0.0,
            turn: 151,
            fault: false,
        };
        let hits = ractor::call!(l2, |reply| L2Msg::Search { query, reply })
            .unwrap()
            .unwrap();
        assert_eq!(hits[0].0.text, on_disk);
        assert_eq!(hits[0].2, Tier::L3);
        assert_eq!(ractor::call!(l2, L2Msg::Stats).unwrap().faults_from_l3, 1);
        stop(l3, l2).await;
    }

    #[tokio::test]
    async fn a_lower_capacity_demotes_the_least_important_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.redb");
        let (l3, l2) = start(&path, MemoryConfig::default()).await;
        for turn in 1..=30u64 {
            store(&l2, "a", turn, vec![format!("page of turn {turn}")], Tier::L2).await;
        }
        stop(l3, l2).await;
        let config = MemoryConfig {
            l2_capacity_pages: 10,
            ..MemoryConfig::default()
        };
        let (l3, l2) = start(&path, config).await;
        let stats = ractor::call!(l2, L2Msg::Stats).unwrap();
        assert_eq!(
            (stats.in_l2, stats.in_l3_only, stats.resident_bodies),
            (10, 20, 10),
            "{stats:?}"
        );
        // The ten kept are the most recent (nothing else tells them apart).
        let (kept, _) = owned(&l2, "a", Tier::L2).await;
        assert_eq!(kept, (21..=30).map(PageId).collect::<Vec<_>>());
        stop(l3, l2).await;
    }
}
