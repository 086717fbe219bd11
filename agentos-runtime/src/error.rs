//! Errors of the runtime. Each says what went wrong and, where there is one, what to do.

use std::path::PathBuf;
use std::time::Duration;

use agentos_kernel::KernelError;

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("this AgentOS has no kernel (built with `without_kernel()`), so agents cannot run tasks")]
    NoKernel,

    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),

    #[error("the kernel went away during the turn (it is being restarted); ask again")]
    KernelLost,

    #[error("AgentOS is shutting down and accepts no new work")]
    ShuttingDown,

    #[error("AgentOS is down: {reason}")]
    SystemDown { reason: String },

    #[error("agent `{agent}` is stopped")]
    AgentStopped { agent: String },

    #[error("an agent named `{0}` already runs in this AgentOS; give the new one another name")]
    NameTaken(String),

    #[error("agent `{agent}`: the task was cancelled")]
    Cancelled { agent: String },

    #[error("agent `{agent}` could not finish this task: {reason}")]
    TaskFailed { agent: String, reason: String },

    #[error("agent `{agent}`: its after_turn hook rejected the reply: {reason}")]
    Hook { agent: String, reason: String },

    #[error("task journal {path}: {reason}")]
    Journal { path: PathBuf, reason: String },

    #[error("{what} did not answer within {after:?}; the system may be overloaded or stuck (see the logs)")]
    Timeout { what: String, after: Duration },

    #[error("could not start {what}: {reason}")]
    Start { what: String, reason: String },

    #[error("memory: {0}")]
    Memory(#[from] agentos_memory::MemoryError),

    /// The audit log could not be read or checked.
    #[error("audit log: {0}")]
    Audit(String),
    #[error("coherence: {0}")]
    Sync(#[from] agentos_sync::SyncError),

    #[error("agent `{agent}` has no memory: declare it with `#[agent(memory = true)]` (memory also needs a kernel)")]
    NoMemory { agent: String },

    #[error(
        "agent `{agent}` lists the tool `{tool}`, which is neither a system call nor a tool registered with the AgentOS (AgentOsBuilder::tool)"
    )]
    UnknownTool { agent: String, tool: String },

    #[error("agent `{agent}` lists `spawn_agent`, but no role is registered for it to start (AgentOsBuilder::role)")]
    NoRoles { agent: String },

    #[error("agent `{agent}`'s tools make a call grammar the kernel cannot compile: {reason}")]
    ToolGrammar { agent: String, reason: String },

    #[error("agent `{agent}`'s reply is not the JSON asked for: {reason}")]
    BadJson { agent: String, reason: String },

    #[error("actor messaging failed: {0}")]
    Messaging(String),
}
