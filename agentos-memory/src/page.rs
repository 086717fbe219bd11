//! Cognitive pages: the unit that moves between the memory tiers.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A page's id, unique within one store for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageId(pub u64);

impl std::fmt::Display for PageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "page#{}", self.0)
    }
}

/// SHA-256 of a page's owner and text: the same text written twice by one owner is stored once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(owner: &str, text: &str) -> Self {
        let mut h = Sha256::new();
        h.update((owner.len() as u64).to_le_bytes());
        h.update(owner.as_bytes());
        h.update(text.trim().as_bytes());
        ContentHash(h.finalize().into())
    }
}

/// Where a page's body is resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    /// In its owner's active window (and in L2 and L3).
    L1,
    /// In deep context: the page table and the body in memory (and in L3).
    L2,
    /// Only on disk; its embedding stays in the L2 index so it can be found and faulted back.
    L3,
}

/// What a cognitive page holds. Bodies are immutable once written; the mutable bookkeeping
/// (tier, access counts) lives in [`PageEntry`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CognitivePage {
    pub id: PageId,
    /// The agent (or namespace) the page belongs to.
    pub owner: String,
    pub text: String,
    /// Tokens of the page in the model's tokenizer.
    pub tokens: u32,
    /// Token span in the owner's stream of ingested tokens: `[start, end)`.
    pub span: (u64, u64),
    /// Mean contextual information density of its tokens (0 for pages cut without attention).
    pub density: f32,
    /// The owner's turn in which the page was written.
    pub created_turn: u64,
    pub hash: ContentHash,
    /// Sentence embedding from the kernel.
    pub embedding: Vec<f32>,
}

/// A page-table entry: where a page lives and how it has been used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageEntry {
    pub id: PageId,
    pub owner: String,
    pub tier: Tier,
    pub hash: ContentHash,
    pub tokens: u32,
    pub created_turn: u64,
    pub last_access_turn: u64,
    pub access_count: u32,
    pub density: f32,
    /// Relevance to the most recent query it was scored against, in `[0, 1]`.
    pub relevance: f32,
}

impl PageEntry {
    pub fn new(page: &CognitivePage, tier: Tier) -> Self {
        PageEntry {
            id: page.id,
            owner: page.owner.clone(),
            tier,
            hash: page.hash,
            tokens: page.tokens,
            created_turn: page.created_turn,
            last_access_turn: page.created_turn,
            access_count: 0,
            density: page.density,
            relevance: 0.0,
        }
    }
}

/// The weights of a page's importance (the LRU-Semantic eviction order: lowest goes first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportanceWeights {
    pub recency: f32,
    pub frequency: f32,
    pub density: f32,
    pub relevance: f32,
    /// Turns after which recency has decayed to 1/e. Default 8.
    pub recency_turns: f32,
}

impl Default for ImportanceWeights {
    fn default() -> Self {
        ImportanceWeights {
            recency: 0.3,
            frequency: 0.15,
            density: 0.05,
            relevance: 0.5,
            recency_turns: 8.0,
        }
    }
}

impl ImportanceWeights {
    /// Importance in `[0, 1]` of an entry at turn `now`: recency of use, frequency of use,
    /// information density and relevance to the current query.
    pub fn importance(&self, entry: &PageEntry, now: u64) -> f32 {
        let age = now.saturating_sub(entry.last_access_turn) as f32;
        let recency = (-age / self.recency_turns.max(0.1)).exp();
        let frequency = 1.0 - (-(entry.access_count as f32) / 3.0).exp();
        let total = self.recency + self.frequency + self.density + self.relevance;
        (self.recency * recency
            + self.frequency * frequency
            + self.density * entry.density
            + self.relevance * entry.relevance)
            / total.max(f32::EPSILON)
    }
}

/// What callers see of a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageView {
    pub id: PageId,
    pub owner: String,
    pub text: String,
    pub tokens: u32,
    pub created_turn: u64,
    pub tier: Tier,
    /// Relevance to the query that returned it (0 when not from a query).
    pub relevance: f32,
}

impl PageView {
    pub fn new(page: &CognitivePage, tier: Tier, relevance: f32) -> Self {
        PageView {
            id: page.id,
            owner: page.owner.clone(),
            text: page.text.clone(),
            tokens: page.tokens,
            created_turn: page.created_turn,
            tier,
            relevance,
        }
    }
}
