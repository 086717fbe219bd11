//! # agentos-sync: coherence between agents
//!
//! Agents that work in parallel drift apart; this crate holds what brings them back to one shared
//! picture, as plain data (no model, no actors: the runtime's `SyncActor` drives it and the
//! kernel supplies the vectors):
//!
//! - [`blackboard`]: keyed entries with vector clocks; concurrent writes are kept as conflicts,
//!   never silently overwritten; compare-and-swap; public and per-group areas; durable.
//! - [`lease`]: exclusive leases on named resources, waiters served in order, terms that expire.
//! - [`topic`]: publish/subscribe matching with per-publisher sequence numbers.
//! - [`drift`]: how far each agent's semantic state is from the group's centroid.
//! - [`pulse`]: the merge of a sync pulse (digest, contradictions) and its record.
//! - [`metrics`]: cognitive latency Lκ, sync stability Γ, contextual utilisation η.

pub mod blackboard;
pub mod drift;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod pulse;
pub mod store;
pub mod topic;

pub use blackboard::{Area, Blackboard, BoardStats, Cas, Change, Entry, Put, Sibling, VClock};
pub use drift::{DriftSample, GroupDrift, drift};
pub use error::{Result, SyncError};
pub use metrics::SyncMetrics;
pub use pulse::{Contradiction, ContradictionKind, Contribution, PulseRecord, PulseTrigger};
pub use store::SyncStore;
