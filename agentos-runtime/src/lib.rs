//! # agentos-runtime: LLM agents as supervised processes
//!
//! Declare a role with `#[agent]`, start an [`AgentOS`], spawn agents and talk to them through
//! [`AgentHandle`]s. Every agent is an actor in one supervision tree (see [`os`]): a panicking
//! agent is restarted from its last checkpoint and the task it was running is redelivered; every
//! task is journaled before it is acknowledged and its outcome recorded exactly once (see the
//! delivery semantics in [`os`]).
//!
//! ```no_run
//! use agentos_runtime::prelude::*;
//!
//! /// You are a concise assistant.
//! #[agent(name = "Assistant", max_tokens = 64)]
//! #[derive(Default, Serialize, Deserialize)]
//! struct Assistant;
//!
//! # async fn demo() -> Result<(), RuntimeError> {
//! let os = AgentOS::builder().start().await?; // loads the default model
//! let assistant = os.spawn(Assistant).await?;
//! let reply = assistant.ask("What is an operating system?").await?;
//! println!("{} ({} tokens)", reply.text, reply.completion_tokens);
//! os.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod config;
pub mod error;
mod mmu;
pub mod os;
mod rpc;
pub mod scheduler;
pub mod security;
pub mod supervisor;
pub mod sync;
pub mod syscall;
mod system;
pub mod types;

pub use agent::actor::AgentActor;
pub use agent::handle::{AgentHandle, TokenStream};
pub use agent::spawn::RoleSet;
pub use agent::{
    Agent, AgentHooks, AgentMsg, AgentSpec, Delivered, FailureKind, Response, StreamEvent, TaskFailure, TaskOutcome,
    TaskStatus, Turn, TurnPrompt,
};
pub use agentos_kernel as kernel;
pub use agentos_macros::{agent, tool};
pub use agentos_memory as memory;
pub use agentos_memory::{ActiveContext, L1Stats, L2Stats, MemoryConfig, PageId, PageView, Slicing, Tier};
pub use agentos_security as isolation;
pub use agentos_sync as coherence;
pub use config::RuntimeConfig;
pub use error::{Result, RuntimeError};
pub use os::{AgentOS, AgentOsBuilder};
pub use scheduler::{AgentSchedStats, SchedulerConfig, SchedulerStats};
pub use supervisor::{RestartIntensity, Shutdown, Strategy, SupervisorEvent};
pub use sync::{
    Area, CollaborateConfig, Collaboration, Contribution, GroupDrift, Published, PulseConfig, PulsePolicy, PulseRecord,
    PulseTrigger, SyncError, SyncMetrics, SyncStats, SyncTimer, TopicFilter,
};
pub use syscall::{
    FnTool, McpServer, McpServerInfo, Step, Syscall, SyscallConfig, SyscallError, Tool, ToolChoice, ToolFuture, ToolSet,
};
pub use types::{AgentInfo, AgentState, Pid, Priority, TaskId};

/// Everything a typical program needs: `use agentos_runtime::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Agent, AgentHandle, AgentHooks, AgentInfo, AgentOS, AgentSpec, AgentState, McpServer, Priority, Response,
        RestartIntensity, RuntimeConfig, RuntimeError, SchedulerConfig, Step, Strategy, StreamEvent, SupervisorEvent,
        SyscallConfig, SyscallError, TaskId, TaskOutcome, TaskStatus, Tool, Turn, TurnPrompt,
    };
    pub use crate::{Area, CollaborateConfig, PulseConfig, PulsePolicy, PulseRecord, PulseTrigger, TopicFilter};
    pub use crate::{agent, tool};
    pub use agentos_kernel::{ChatMessage, KernelArgs, ModelSpec, SamplingParams};
    pub use futures::StreamExt;
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

/// The JSON Schema derive [`AgentHandle::ask_json`] takes its schema from (`#[derive(JsonSchema)]`
/// expands to paths under `schemars`: add `schemars = "1"` to your dependencies).
pub use schemars;

/// Not public API: paths the `#[agent]` expansion refers to.
#[doc(hidden)]
pub mod __private {
    pub use crate::security::{Declaration, declared_capabilities};
    pub use agentos_kernel::SamplingParams;
    pub use serde;
    pub use serde_json;
}
