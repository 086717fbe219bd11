//! `MemoryConfig`: every knob of the memory system, with its default, in one place.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::page::ImportanceWeights;
use crate::slicing::SliceConfig;

/// How text is cut into pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slicing {
    /// At the attention density's sharp changes (the S-MMU's semantic slicing).
    Attention,
    /// About every `n` tokens, each cut snapped to a sentence start as attention cuts are (the
    /// baseline).
    Fixed(usize),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Hard token budget of each agent's context: system prompt + L1 pages + the current turn.
    /// Default 512.
    pub l1_budget_tokens: usize,
    /// Eviction goes down to this fraction of the budget (not just under it): an eviction makes
    /// the next prompt recompute everything from the first evicted page on, so evicting well
    /// below the limit keeps the window, and the prompt prefix the kernel caches, unchanged for
    /// several turns in between. Default 0.5.
    pub evict_watermark: f32,
    /// Pages kept in memory by L2 (bodies); past it the least important go to L3 only.
    /// Default 4096.
    pub l2_capacity_pages: usize,
    /// The knowledge base file. Default `None`: `memory.redb` in the runtime's checkpoint directory.
    pub store_path: Option<PathBuf>,
    pub slicing: Slicing,
    pub slice: SliceConfig,
    /// Most pages faulted into L1 per turn. Default 4.
    pub fault_pages: usize,
    /// Least relevance for a page to be faulted in. Default 0.2.
    pub min_relevance: f32,
    /// Weight of embedding similarity against keyword overlap in relevance. Default 0.4.
    pub similarity_weight: f32,
    pub importance: ImportanceWeights,
    /// How long one tier waits for another (L1 for L2, L2 for L3). Default 30 s.
    #[serde(default = "default_tier_timeout")]
    pub tier_timeout: Duration,
}

fn default_tier_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            l1_budget_tokens: 512,
            evict_watermark: 0.5,
            l2_capacity_pages: 4096,
            store_path: None,
            slicing: Slicing::Attention,
            slice: SliceConfig::default(),
            fault_pages: 4,
            min_relevance: 0.2,
            similarity_weight: 0.4,
            importance: ImportanceWeights::default(),
            tier_timeout: default_tier_timeout(),
        }
    }
}

impl MemoryConfig {
    /// Checks the settings that would make the tiers misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.slice.max_tokens == 0 || self.slice.min_tokens > self.slice.max_tokens {
            return Err(format!(
                "slice lengths must satisfy 0 < min_tokens <= max_tokens (got {} and {})",
                self.slice.min_tokens, self.slice.max_tokens
            ));
        }
        if self.l1_budget_tokens < self.slice.max_tokens {
            return Err(format!(
                "the L1 budget ({} tokens) must hold at least one page of max_tokens ({})",
                self.l1_budget_tokens, self.slice.max_tokens
            ));
        }
        if let Slicing::Fixed(0) = self.slicing {
            return Err("fixed slicing needs a chunk size above 0".into());
        }
        if self.l2_capacity_pages == 0 {
            return Err("l2_capacity_pages must be at least 1".into());
        }
        Ok(())
    }
}
