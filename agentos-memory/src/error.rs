//! Errors of the memory system. Each says what was wrong and, where it helps, what to do.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MemoryError {
    /// The knowledge base file could not be opened or written.
    #[error("memory store {path}: {detail}")]
    Store { path: PathBuf, detail: String },
    /// The knowledge base file (or a record in it) is damaged.
    #[error("memory store {path} is corrupted ({detail}); restore it from a backup, or move it away to start empty")]
    Corrupt { path: PathBuf, detail: String },
    /// The model behind embeddings and attention failed.
    #[error("the kernel could not {what}: {detail}")]
    Kernel { what: &'static str, detail: String },
    /// A request or configuration that cannot be served.
    #[error("invalid memory request: {0}")]
    Invalid(String),
    /// What a turn reserves outside memory (system prompt, task, prompt overhead) is more than the
    /// whole L1 budget, so no prompt of this turn can fit it.
    #[error(
        "the system prompt and the turn need {needed} tokens, more than the L1 budget of {budget}; shorten the task or the system prompt, or raise l1_budget_tokens"
    )]
    OverBudget { needed: usize, budget: usize },
    /// A memory actor is gone (the system is shutting down or restarting it).
    #[error("memory tier {0} is not running")]
    Unavailable(&'static str),
    /// A memory actor did not answer in time (see `MemoryConfig::tier_timeout`).
    #[error("memory tier {tier} did not answer within {after:?}; the system may be overloaded")]
    Timeout {
        tier: &'static str,
        after: std::time::Duration,
    },
}

pub type Result<T, E = MemoryError> = std::result::Result<T, E>;
