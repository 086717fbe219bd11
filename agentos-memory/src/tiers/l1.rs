//! L1: one agent's active window, under a hard token budget.
//!
//! Each turn the agent asks for its context ([`L1Msg::Assemble`]): L1 scores the query against
//! the agent's pages, **page-faults** the most relevant ones in from L2/L3, and evicts by
//! importance (LRU-Semantic: recency, frequency, density, relevance) until the system prompt,
//! the pages and the turn fit the budget. Having to evict to make room is the **context-full
//! interrupt**: it is counted, traced and handled by eviction, never by silently overrunning the
//! budget. After the turn the agent hands its text back ([`L1Msg::Ingest`]): it is sliced into
//! cognitive pages (from the model's attention, or in fixed chunks), embedded, written durably
//! through L2 to L3, and enters the window.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::config::{MemoryConfig, Slicing};
use crate::error::{MemoryError, Result};
use crate::model::{AttentionSource, Embedder};
use crate::page::{CognitivePage, PageEntry, PageId, PageView, Tier};
use crate::slicing::{boundaries, density_of_entropy, fixed_slices, slice_boundaries};
use crate::tiers::ask;
use crate::tiers::l2::{L2Msg, Locate, PageDraft, Query};

/// The context L1 hands an agent for one turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActiveContext {
    /// The window's pages in the order they were written.
    pub pages: Vec<PageView>,
    /// Tokens of those pages.
    pub tokens: usize,
    /// Pages brought in for this query.
    pub faults: usize,
    /// Pages evicted to fit the budget.
    pub evicted: usize,
    /// The budget left to pages: the L1 budget less what the caller reserved.
    pub page_budget: usize,
    /// What the caller reserved for the system prompt and the turn.
    pub reserved_tokens: usize,
}

/// Counters of one L1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct L1Stats {
    pub turns: u64,
    pub pages_written: u64,
    /// Tokens in the pages written (so `tokens_written / pages_written` is the mean page).
    pub tokens_written: u64,
    pub page_faults: u64,
    pub evictions: u64,
    pub context_full_interrupts: u64,
    /// Tokens in the window now, and the most it ever held.
    pub tokens: usize,
    pub tokens_max: usize,
    pub pages: usize,
}

pub enum L1Msg {
    /// Start a turn: the context for `query`, leaving `reserved_tokens` of the budget for the
    /// system prompt and the turn itself. When `reserved_tokens` alone exceeds
    /// `l1_budget_tokens`, the reply is [`MemoryError::OverBudget`] and nothing changes (the turn
    /// is not counted, no page moves): a prompt built anyway would overrun the budget.
    Assemble {
        query: String,
        reserved_tokens: usize,
        reply: RpcReplyPort<Result<ActiveContext>>,
    },
    /// The context-full interrupt raised by the caller: the assembled prompt came out larger than
    /// estimated, so evict until the window's pages fit `page_budget` tokens; returns the new
    /// window (also the new `LastContext`). Every `page_budget` can be met (at worst by evicting
    /// every page), so this has no over-budget error of its own: a prompt still over budget with
    /// no pages left is over budget by its reservation, which the caller knows best.
    Shrink {
        page_budget: usize,
        reply: RpcReplyPort<Result<ActiveContext>>,
    },
    /// Slice `text` into pages and keep them (durable before the reply).
    Ingest {
        text: String,
        reply: RpcReplyPort<Result<Vec<PageId>>>,
    },
    /// The `k` pages of this agent most relevant to `query`, from any tier; changes nothing.
    Recall {
        query: String,
        k: usize,
        reply: RpcReplyPort<Result<Vec<PageView>>>,
    },
    /// Keep `text` as one page pinned in the window: it is in every prompt from the next turn on
    /// and is not evicted while another page can be (the hard budget still wins: when pinned
    /// pages alone are over it, the oldest pinned page goes). Pins in place of the page
    /// `replaces` (which goes back to being an ordinary page); durable before the reply. Pins
    /// are kept by this actor: after an L1 restart the page is in the window but unpinned.
    Pin {
        text: String,
        replaces: Option<PageId>,
        reply: RpcReplyPort<Result<PageId>>,
    },
    /// The context the latest `Assemble` returned (what the model saw in the last turn).
    LastContext(RpcReplyPort<Option<ActiveContext>>),
    Stats(RpcReplyPort<L1Stats>),
}

#[derive(Clone)]
pub struct L1Args {
    pub owner: String,
    pub config: MemoryConfig,
    pub l2: Locate<L2Msg>,
    pub embedder: Arc<dyn Embedder>,
    pub attention: Arc<dyn AttentionSource>,
}

#[derive(Debug, Clone, Copy)]
pub struct L1Actor;

pub struct L1State {
    args: L1Args,
    window: Vec<(CognitivePage, PageEntry)>,
    /// Pages of the window that eviction passes over while it can (oldest first).
    pinned: Vec<PageId>,
    turn: u64,
    /// Tokens ingested so far: the next page's span starts here.
    stream_pos: u64,
    last_context: Option<ActiveContext>,
    stats: L1Stats,
}

#[ractor::async_trait]
impl Actor for L1Actor {
    type Msg = L1Msg;
    type State = L1State;
    type Arguments = L1Args;

    async fn pre_start(&self, _myself: ActorRef<L1Msg>, args: L1Args) -> Result<L1State, ActorProcessingErr> {
        args.config.validate().map_err(MemoryError::Invalid)?;
        // A restarted L1 gets its window back from the page table.
        let l2 = (args.l2)().ok_or(MemoryError::Unavailable("L2"))?;
        let owner = args.owner.clone();
        let timeout = args.config.tier_timeout;
        let owned = |reply| L2Msg::Owned {
            owner,
            tier: Tier::L1,
            reply,
        };
        let (pages, turn) = ask(&l2, "L2", timeout, owned).await??;
        let stream_pos = pages.iter().map(|p| p.span.1).max().unwrap_or(0);
        let window: Vec<(CognitivePage, PageEntry)> = pages
            .into_iter()
            .map(|p| {
                let entry = PageEntry::new(&p, Tier::L1);
                (p, entry)
            })
            .collect();
        let mut state = L1State {
            args,
            window,
            pinned: Vec::new(),
            turn,
            stream_pos,
            last_context: None,
            stats: L1Stats::default(),
        };
        state.note_tokens();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<L1Msg>,
        msg: L1Msg,
        state: &mut L1State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            L1Msg::Assemble {
                query,
                reserved_tokens,
                reply,
            } => {
                let r = state.assemble(query, reserved_tokens).await;
                let _ = reply.send(r);
            }
            L1Msg::Shrink { page_budget, reply } => {
                let r = state.shrink(page_budget).await;
                let _ = reply.send(r);
            }
            L1Msg::Ingest { text, reply } => {
                let r = state.ingest(text).await;
                let _ = reply.send(r);
            }
            L1Msg::Recall { query, k, reply } => {
                let r = state.recall(query, k).await;
                let _ = reply.send(r);
            }
            L1Msg::Pin { text, replaces, reply } => {
                let r = state.pin(text, replaces).await;
                let _ = reply.send(r);
            }
            L1Msg::LastContext(reply) => {
                let _ = reply.send(state.last_context.clone());
            }
            L1Msg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}

impl L1State {
    fn l2(&self) -> Result<ActorRef<L2Msg>> {
        (self.args.l2)().ok_or(MemoryError::Unavailable("L2"))
    }

    fn tokens(&self) -> usize {
        self.window.iter().map(|(p, _)| p.tokens as usize).sum()
    }

    fn note_tokens(&mut self) {
        let tokens = self.tokens();
        self.stats.tokens = tokens;
        self.stats.tokens_max = self.stats.tokens_max.max(tokens);
        self.stats.pages = self.window.len();
    }

    async fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        self.args
            .embedder
            .embed(vec![text.to_string()])
            .await?
            .pop()
            .ok_or(MemoryError::Kernel {
                what: "embed the query",
                detail: "no vector came back".into(),
            })
    }

    async fn assemble(&mut self, query: String, reserved_tokens: usize) -> Result<ActiveContext> {
        let budget = self.args.config.l1_budget_tokens;
        if reserved_tokens > budget {
            return Err(MemoryError::OverBudget {
                needed: reserved_tokens,
                budget,
            });
        }
        self.turn += 1;
        self.stats.turns += 1;
        let (k, min_relevance) = (self.args.config.fault_pages, self.args.config.min_relevance);
        let hits = self.search(query, k, min_relevance, true).await?;

        // Pages that were relevant before but not now lose that relevance gradually.
        for (_, entry) in &mut self.window {
            entry.relevance *= 0.5;
        }
        let mut faults = 0;
        for (page, relevance, _) in hits {
            let turn = self.turn;
            match self.window.iter_mut().find(|(p, _)| p.id == page.id) {
                Some((_, entry)) => {
                    entry.relevance = relevance;
                    entry.access_count += 1;
                    entry.last_access_turn = turn;
                }
                None => {
                    let mut entry = PageEntry::new(&page, Tier::L1);
                    entry.relevance = relevance;
                    entry.access_count = 1;
                    entry.last_access_turn = turn;
                    self.window.push((page, entry));
                    faults += 1;
                }
            }
        }
        self.stats.page_faults += faults as u64;

        let budget = budget - reserved_tokens;
        let evicted = self.evict_to(budget).await?;
        Ok(self.context(faults, evicted, budget, reserved_tokens))
    }

    async fn shrink(&mut self, page_budget: usize) -> Result<ActiveContext> {
        let (faults, reserved) = self
            .last_context
            .as_ref()
            .map_or((0, 0), |c| (c.faults, c.reserved_tokens));
        let evicted = self.evict_to(page_budget).await?;
        Ok(self.context(faults, evicted, page_budget, reserved))
    }

    /// The window as the model will see it, remembered as the last context.
    fn context(&mut self, faults: usize, evicted: usize, page_budget: usize, reserved_tokens: usize) -> ActiveContext {
        // Pages stay in the order they entered the window: consecutive turns then share a
        // prompt prefix (system prompt and the pages that stayed), whose KV the kernel's prefix
        // cache reuses, so a turn computes mostly its new tokens.
        let pages: Vec<PageView> = self
            .window
            .iter()
            .map(|(p, e)| PageView::new(p, Tier::L1, e.relevance))
            .collect();
        let context = ActiveContext {
            tokens: self.tokens(),
            pages,
            faults,
            evicted,
            page_budget,
            reserved_tokens,
        };
        self.last_context = Some(context.clone());
        context
    }

    /// When the window holds more than `budget` tokens, evicts the least important pages down to
    /// the low watermark (`budget * evict_watermark`): evicting more than the minimum keeps the
    /// window, and so the prompt prefix the kernel has cached, unchanged for the next turns.
    async fn evict_to(&mut self, budget: usize) -> Result<usize> {
        if self.tokens() <= budget {
            self.note_tokens();
            return Ok(0);
        }
        let budget = (budget as f32 * self.args.config.evict_watermark.clamp(0.0, 1.0)) as usize;
        // The context-full interrupt: handled here, by eviction to L2.
        self.stats.context_full_interrupts += 1;
        let weights = &self.args.config.importance;
        let now = self.turn;
        // Pinned pages come last in the order (oldest pin first among them): they go only when
        // the other pages alone cannot bring the window under the budget.
        let pinned_rank = |id: PageId| self.pinned.iter().position(|p| *p == id);
        let mut order: Vec<(bool, usize, f32, usize)> = self
            .window
            .iter()
            .enumerate()
            .map(|(i, (p, e))| match pinned_rank(p.id) {
                Some(rank) => (true, rank, 0.0, i),
                None => (false, 0, weights.importance(e, now), i),
            })
            .collect();
        order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2)));
        let order: Vec<(f32, usize)> = order.into_iter().map(|(_, _, w, i)| (w, i)).collect();
        let mut tokens = self.tokens();
        let mut out = Vec::new();
        for (_, i) in order {
            if tokens <= budget {
                break;
            }
            tokens -= self.window[i].0.tokens as usize;
            out.push(i);
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        let ids: Vec<PageId> = out.iter().map(|&i| self.window.remove(i).0.id).collect();
        self.pinned.retain(|p| !ids.contains(p));
        tracing::debug!(agent = %self.args.owner, evicted = ids.len(), budget, "context full: pages evicted to L2");
        self.stats.evictions += ids.len() as u64;
        let l2 = self.l2()?;
        let n = ids.len();
        ask(&l2, "L2", self.args.config.tier_timeout, |reply| L2Msg::Demote {
            ids,
            reply,
        })
        .await??;
        self.note_tokens();
        Ok(n)
    }

    async fn ingest(&mut self, text: String) -> Result<Vec<PageId>> {
        let cfg = self.args.config.clone();
        let with_attention = cfg.slicing == Slicing::Attention;
        let analysis = self.args.attention.analyze(text, with_attention).await?;
        let n = analysis.pieces.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (ranges, densities) = match cfg.slicing {
            Slicing::Fixed(size) => (
                fixed_slices(&boundaries(&analysis.pieces), size, &cfg.slice),
                vec![0.0; n],
            ),
            Slicing::Attention => {
                let mut d = Vec::with_capacity(n);
                for span in &analysis.entropy {
                    d.extend(density_of_entropy(span, &cfg.slice).map_err(|e| MemoryError::Kernel {
                        what: "return attention",
                        detail: e,
                    })?);
                }
                if d.len() != n {
                    return Err(MemoryError::Kernel {
                        what: "return attention",
                        detail: format!("attention covers {} tokens, the text has {n}", d.len()),
                    });
                }
                (slice_boundaries(&d, &boundaries(&analysis.pieces), &cfg.slice), d)
            }
        };
        let texts: Vec<String> = ranges.iter().map(|r| analysis.pieces[r.clone()].concat()).collect();
        let embeddings = self.args.embedder.embed(texts.clone()).await?;
        if embeddings.len() != texts.len() {
            return Err(MemoryError::Kernel {
                what: "embed pages",
                detail: format!("{} vectors for {} pages", embeddings.len(), texts.len()),
            });
        }
        let drafts: Vec<PageDraft> = ranges
            .iter()
            .zip(texts)
            .zip(embeddings)
            .map(|((r, text), embedding)| PageDraft {
                text,
                tokens: r.len() as u32,
                span: (self.stream_pos + r.start as u64, self.stream_pos + r.end as u64),
                density: densities[r.clone()].iter().sum::<f32>() / r.len().max(1) as f32,
                embedding,
            })
            .collect();
        let l2 = self.l2()?;
        let (owner, turn) = (self.args.owner.clone(), self.turn);
        let store = |reply| L2Msg::Store {
            owner,
            turn,
            drafts,
            tier: Tier::L1,
            reply,
        };
        let pages = ask(&l2, "L2", self.args.config.tier_timeout, store).await??;
        self.stream_pos += n as u64;
        let ids: Vec<PageId> = pages.iter().map(|p| p.id).collect();
        self.stats.pages_written += pages.len() as u64;
        self.stats.tokens_written += pages.iter().map(|p| p.tokens as u64).sum::<u64>();
        for page in pages {
            if let Some((_, entry)) = self.window.iter_mut().find(|(p, _)| p.id == page.id) {
                entry.last_access_turn = turn;
                continue;
            }
            let mut entry = PageEntry::new(&page, Tier::L1);
            entry.last_access_turn = turn;
            self.window.push((page, entry));
        }
        // Evict to what the next turn will have for pages (its reservation is like the last
        // one), not to the whole budget: the window then changes once, here, instead of again
        // when that turn assembles it, so the prompt prefix the kernel caches lasts longer.
        let reserved = self.last_context.as_ref().map_or(0, |c| c.reserved_tokens);
        self.evict_to(cfg.l1_budget_tokens.saturating_sub(reserved)).await?;
        Ok(ids)
    }

    async fn pin(&mut self, text: String, replaces: Option<PageId>) -> Result<PageId> {
        let analysis = self.args.attention.analyze(text.clone(), false).await?;
        let tokens = analysis.pieces.len();
        let embedding = self.embed_one(&text).await?;
        let draft = PageDraft {
            text,
            tokens: tokens as u32,
            span: (self.stream_pos, self.stream_pos + tokens as u64),
            density: 0.0,
            embedding,
        };
        let l2 = self.l2()?;
        let (owner, turn) = (self.args.owner.clone(), self.turn);
        let store = |reply| L2Msg::Store {
            owner,
            turn,
            drafts: vec![draft],
            tier: Tier::L1,
            reply,
        };
        let page = ask(&l2, "L2", self.args.config.tier_timeout, store)
            .await??
            .pop()
            .ok_or(MemoryError::Kernel {
                what: "store the pinned page",
                detail: "no page came back".into(),
            })?;
        self.stream_pos += tokens as u64;
        self.stats.pages_written += 1;
        self.stats.tokens_written += page.tokens as u64;
        if let Some(old) = replaces {
            self.pinned.retain(|p| *p != old);
        }
        let id = page.id;
        if !self.window.iter().any(|(p, _)| p.id == id) {
            let mut entry = PageEntry::new(&page, Tier::L1);
            entry.last_access_turn = turn;
            self.window.push((page, entry));
        }
        if !self.pinned.contains(&id) {
            self.pinned.push(id);
        }
        let reserved = self.last_context.as_ref().map_or(0, |c| c.reserved_tokens);
        self.evict_to(self.args.config.l1_budget_tokens.saturating_sub(reserved))
            .await?;
        Ok(id)
    }

    async fn recall(&mut self, query: String, k: usize) -> Result<Vec<PageView>> {
        let hits = self.search(query, k, 0.0, false).await?;
        Ok(hits
            .into_iter()
            .map(|(p, r, tier)| PageView::new(&p, tier, r))
            .collect())
    }

    /// This agent's pages most relevant to `query`; with `fault`, L2 moves them to L1.
    async fn search(
        &self,
        query: String,
        k: usize,
        min_relevance: f32,
        fault: bool,
    ) -> Result<Vec<(CognitivePage, f32, Tier)>> {
        let embedding = self.embed_one(&query).await?;
        let l2 = self.l2()?;
        let q = Query {
            owner: Some(self.args.owner.clone()),
            text: query,
            embedding,
            k,
            min_relevance,
            turn: self.turn,
            fault,
        };
        ask(&l2, "L2", self.args.config.tier_timeout, |reply| L2Msg::Search {
            query: q,
            reply,
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Slicing;
    use crate::tiers::test_tiers::Tiers;

    fn config() -> MemoryConfig {
        let mut config = MemoryConfig {
            l1_budget_tokens: 64,
            slicing: Slicing::Fixed(8),
            ..MemoryConfig::default()
        };
        config.slice.max_tokens = 16;
        config
    }

    async fn assemble(l1: &ActorRef<L1Msg>, query: &str, reserved_tokens: usize) -> Result<ActiveContext> {
        let query = query.to_string();
        ractor::call!(l1, |reply| L1Msg::Assemble {
            query,
            reserved_tokens,
            reply
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_reservation_over_the_budget_is_an_error_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tiers = Tiers::start(&dir.path().join("kb.redb"), config()).await;
        let text = "The vault opens with 2468 and the code is kept safe".to_string();
        ractor::call!(tiers.l1, |reply| L1Msg::Ingest { text, reply })
            .unwrap()
            .unwrap();
        let before = ractor::call!(tiers.l1, L1Msg::Stats).unwrap();

        let err = assemble(&tiers.l1, "vault code", 65).await.unwrap_err();
        assert_eq!(err, MemoryError::OverBudget { needed: 65, budget: 64 });
        assert!(err.to_string().contains("raise l1_budget_tokens"), "{err}");
        assert_eq!(ractor::call!(tiers.l1, L1Msg::Stats).unwrap(), before);
        assert_eq!(ractor::call!(tiers.l1, L1Msg::LastContext).unwrap(), None);

        // A reservation of the whole budget leaves no room for pages, and is not an error.
        let context = assemble(&tiers.l1, "vault code", 64).await.unwrap();
        assert_eq!((context.page_budget, context.tokens), (0, 0));
        assert!(context.pages.is_empty());
        tiers.stop().await;
    }

    #[tokio::test]
    async fn a_pinned_page_stays_in_the_window_while_others_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let tiers = Tiers::start(&dir.path().join("kb.redb"), config()).await;
        let text = "Shared state: the vault code is 2468".to_string();
        let pinned = ractor::call!(tiers.l1, |reply| L1Msg::Pin {
            text,
            replaces: None,
            reply
        })
        .unwrap()
        .unwrap();
        // Far more than the 64-token budget, on other subjects.
        for i in 0..12 {
            let text = format!("Note {i}: rivers and mountains and forests and lakes and roads number {i}");
            ractor::call!(tiers.l1, |reply| L1Msg::Ingest { text, reply })
                .unwrap()
                .unwrap();
        }
        let context = assemble(&tiers.l1, "rivers and mountains", 8).await.unwrap();
        assert!(context.tokens <= 56, "{context:?}");
        assert!(context.pages.iter().any(|p| p.id == pinned), "{context:?}");
        assert!(ractor::call!(tiers.l1, L1Msg::Stats).unwrap().evictions > 0);

        // A new pin in place of the old: the old one is an ordinary page again, and goes first.
        let text = "Shared state: the vault code is 1357".to_string();
        let next = ractor::call!(tiers.l1, |reply| L1Msg::Pin {
            text,
            replaces: Some(pinned),
            reply
        })
        .unwrap()
        .unwrap();
        let context = assemble(&tiers.l1, "rivers and mountains", 8).await.unwrap();
        assert!(context.pages.iter().any(|p| p.id == next), "{context:?}");
        tiers.stop().await;
    }
}
