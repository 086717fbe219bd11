//! What every driver shares: its error and the record of one self-test attack.

/// Why a driver refused or failed. The runtime maps each variant one to one onto the
/// model-facing `SyscallError` (same names), so messages must say what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The request is not allowed (outside the root, a denied host, over a limit...).
    #[error("denied: {0}")]
    Denied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("i/o: {0}")]
    Io(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The request ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// One attack of a self-test: what was tried and whether the sandbox held.
/// `contained == true` means the attack was stopped (no escape, limit enforced, tamper found).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trial {
    /// Short stable name, e.g. `"symlink_chain_to_etc"`.
    pub name: String,
    pub contained: bool,
    /// What happened (the error returned, the limit hit, what leaked if it escaped).
    pub detail: String,
}
