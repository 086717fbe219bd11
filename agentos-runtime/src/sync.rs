//! Coherence between agents: the blackboard, leases, topics, drift and sync pulses.
//!
//! The data structures are in [`agentos_sync`] (plain data, no model); here they run as the
//! `SyncActor` under the root supervisor (restartable: its state is in `sync.redb` in the
//! checkpoint directory), and the kernel supplies the vectors that drift is measured on.
//!
//! ## A sync pulse ([`AgentOS::pulse`](crate::AgentOS::pulse))
//! 1. *Perception alignment*: the pulse waits until each participant is at a turn boundary (its
//!    queue is empty: a generation in flight is never cut), up to `PulseConfig::deadline`; an
//!    agent still busy then is left out of this pulse (`late`).
//! 2. *Merge*: what each participant produced since the last pulse that merged it (its replies,
//!    from the journal's history) is written to the public blackboard under
//!    `pulse/<id>/<agent>/<turn>`; contradictions between agents are found
//!    ([`agentos_sync::pulse::contradictions`]); one digest is written (`pulse/<id>/digest`).
//! 3. *Injection*: the digest goes into every participant's context: an agent with memory gets
//!    it as one page pinned in its L1 window (in place of the previous pulse's), so its next
//!    prompt holds it; an agent without memory gets it as a message (from `sync`), which its
//!    next turn sees.
//! 4. *Drift* before and after (see [`agentos_sync::drift`]): a participant's state vector is
//!    `d + û(reply)`, where `û(reply)` is the unit-length kernel embedding of its latest reply
//!    and `d` the vector of the digest it holds (none before its first pulse): the normalised
//!    mean of the unit embeddings of what that digest merged. The shared picture and its own
//!    work weigh the same.
//!
//! [`AgentOS::collaborate`](crate::AgentOS::collaborate) runs rounds of parallel work with
//! pulses between them; [`AgentOS::sync_every`](crate::AgentOS::sync_every) runs pulses on a
//! timer.

mod actor;
pub(crate) mod team;

pub use actor::SyncStats;
pub(crate) use actor::{SyncActor, SyncArgs, SyncMsg};
pub use agentos_sync::blackboard::{Area, Cas, Change, Entry, Put, VClock};
pub use agentos_sync::lease::{Lease, LeaseId};
pub use agentos_sync::topic::{Publication, Subscription, TopicFilter};
pub use agentos_sync::{
    Contradiction, ContradictionKind, Contribution, DriftSample, GroupDrift, PulseRecord, PulseTrigger, SyncError,
    SyncMetrics,
};
pub use team::{CollaborateConfig, Collaboration, Published, PulseConfig, PulsePolicy, SyncTimer};
pub(crate) use team::{collaborate, measure_drift, pulse};
