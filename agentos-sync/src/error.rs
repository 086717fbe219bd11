//! The errors of the coherence layer.

use std::path::PathBuf;

/// What can go wrong in the blackboard, leases, topics or a pulse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyncError {
    /// The durable store could not be opened, read or written.
    #[error("the sync store at {path}: {detail}")]
    Store { path: PathBuf, detail: String },
    /// A record in the store fails its checksum or cannot be decoded.
    #[error("the sync store at {path} is damaged: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// A key, topic or resource name that cannot be used (empty, too long, control characters).
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A value over the blackboard's size limit.
    #[error("a blackboard value of {bytes} bytes is over the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    /// An agent used a group area it is not a member of.
    #[error("{agent} is not a member of group {group:?}")]
    NotMember { agent: String, group: String },
    /// A lease was asked with a term of zero or one over the longest allowed.
    #[error("a lease term of {term_ms} ms is not allowed (1 ms to {max_ms} ms)")]
    BadTerm { term_ms: u64, max_ms: u64 },
    /// A lease to release or renew is not the one held.
    #[error("{holder} does not hold the lease on {resource:?}")]
    NotHolder { resource: String, holder: String },
    /// Vectors handed to drift are empty or of different dimensions.
    #[error("drift needs vectors of one dimension: {0}")]
    BadVectors(String),
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;
