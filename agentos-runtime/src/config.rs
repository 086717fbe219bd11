//! `RuntimeConfig`: every knob of the runtime, with its default, in one place.

use std::path::PathBuf;
use std::time::Duration;

use agentos_kernel::KernelArgs;
use agentos_memory::MemoryConfig;

use crate::agent::spawn::RoleSet;
use crate::scheduler::SchedulerConfig;
use crate::security::SecurityConfig;
use crate::supervisor::{RestartIntensity, Strategy};
use crate::syscall::{McpServer, SyscallConfig, ToolSet};

/// How to start an [`AgentOS`](crate::AgentOS). Build it with [`AgentOS::builder`](crate::AgentOS::builder).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The model and engine settings. Default: the default model (fetched on first use) with the
    /// default engine settings. `None` runs agents without a kernel: they can exchange messages,
    /// but their tasks fail with [`RuntimeError::NoKernel`](crate::RuntimeError::NoKernel).
    pub kernel: Option<KernelArgs>,
    /// Where the task journal (`journal.redb`: tasks, outcomes, agent checkpoints, history) and
    /// the memory store live. Default `None`: a fresh directory under the system's temporary
    /// directory, deleted by a graceful shutdown. With a directory of your own, everything
    /// survives the process (even `kill -9`): an agent spawned under a name that has a
    /// checkpoint resumes from it, and the tasks it had accepted and not finished run again.
    pub checkpoint_dir: Option<PathBuf>,
    /// How the agent supervisor restarts agents. Default one-for-one.
    pub agent_strategy: Strategy,
    /// Restart limit of the agent supervisor. Default 3 within 5 s; past it the agent supervisor
    /// escalates to the root, which restarts it with every agent from its checkpoint.
    pub agent_intensity: RestartIntensity,
    /// Restart limit of the root supervisor (kernel, scheduler, memory and agent supervisors).
    /// Default 3 within 5 s; past it the system shuts down and [`AgentOS::wait`](crate::AgentOS::wait)
    /// returns the reason.
    pub system_intensity: RestartIntensity,
    /// How long a graceful shutdown lets queued and running tasks finish. Default 30 s.
    pub shutdown_grace: Duration,
    /// How long a call to a system actor (supervisor, scheduler, kernel control, an agent's
    /// status) may take before it fails with `RuntimeError::Timeout`. Default 10 s.
    pub call_timeout: Duration,
    /// How long a call into an agent's memory (paging in, writing a turn, recall) may take; it
    /// includes embedding and attention work queued behind the model's other requests.
    /// Default 120 s.
    pub memory_timeout: Duration,
    /// How many times a task may be started before it is answered with
    /// `RuntimeError::TaskFailed`: each start that ends with its agent failing (a panic, or the
    /// process dying) counts; a start cut short by a supervisor stopping the agent for a
    /// sibling's restart does not. Default 2 (one redelivery).
    pub max_task_attempts: u32,
    /// Outcomes of this many of the latest tasks are kept for `AgentOS::task_result`; older
    /// ones are pruned. Default 100,000.
    pub task_outcomes_kept: usize,
    /// Fair-share budgets of the scheduler (see [`SchedulerConfig`]).
    pub scheduler: SchedulerConfig,
    /// The S-MMU: L1 budget, slicing, page faults, the store file (see [`MemoryConfig`]). Agents
    /// declared with `#[agent(memory = true)]` use it; the store defaults to `memory.redb` in the
    /// checkpoint directory.
    pub memory: MemoryConfig,
    /// What the system calls may touch and how long they may take (see [`SyscallConfig`]).
    pub syscalls: SyscallConfig,
    /// User tools the agents may call by name (see [`Tool`](crate::Tool)). Default none.
    pub tools: ToolSet,
    /// MCP servers started with the AgentOS; their tools join `tools` (see
    /// [`syscall::mcp`](crate::syscall::mcp)). Default none.
    pub mcp_servers: Vec<McpServer>,
    /// Roles the `spawn_agent` system call can start. Default none.
    pub roles: RoleSet,
    /// Capabilities of agents, approval gates, exec limits and the audit log (see
    /// [`security`](crate::security)). Default: capabilities from `syscalls`, no approver,
    /// `audit.jsonl` in the checkpoint directory.
    pub security: SecurityConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kernel: Some(KernelArgs::default()),
            checkpoint_dir: None,
            agent_strategy: Strategy::OneForOne,
            agent_intensity: RestartIntensity::default(),
            system_intensity: RestartIntensity::default(),
            shutdown_grace: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            memory_timeout: Duration::from_secs(120),
            max_task_attempts: 2,
            task_outcomes_kept: 100_000,
            scheduler: SchedulerConfig::default(),
            memory: MemoryConfig::default(),
            syscalls: SyscallConfig::default(),
            tools: ToolSet::default(),
            mcp_servers: Vec::new(),
            roles: RoleSet::default(),
            security: SecurityConfig::default(),
        }
    }
}
