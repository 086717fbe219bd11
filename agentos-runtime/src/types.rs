//! The runtime's shared vocabulary: process ids, task ids, priorities and agent states.
//!
//! Every other module of the crate may use these; this module uses none of them, so the
//! dependencies of the crate run one way, from the handle to the actor to the scheduler.

use serde::{Deserialize, Serialize};

/// A process id: unique within one AgentOS, stable across restarts (unlike the actor id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pid(pub u64);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// A task's id: unique within one checkpoint directory for its whole life (it survives process
/// restarts), and the key its outcome is recorded under (see
/// [`AgentOS::task_result`](crate::AgentOS::task_result)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task#{}", self.0)
    }
}

/// Scheduling class of an agent, most urgent first. Set with `#[agent(priority = High)]` and
/// changeable at run time with [`AgentHandle::set_priority`](crate::AgentHandle::set_priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum Priority {
    Realtime = 0,
    High = 1,
    #[default]
    Normal = 2,
    Low = 3,
    Background = 4,
}

impl Priority {
    /// The class with this number (`Priority as u8`); numbers past the last are `Background`.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Priority::Realtime,
            1 => Priority::High,
            2 => Priority::Normal,
            3 => Priority::Low,
            _ => Priority::Background,
        }
    }

    /// Fair-share weight: how many budget units an agent of this class gets per window.
    pub fn weight(self) -> u64 {
        match self {
            Priority::Realtime => 16,
            Priority::High => 8,
            Priority::Normal => 4,
            Priority::Low => 2,
            Priority::Background => 1,
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    /// A class by name, in any case: `realtime`, `high`, `normal`, `low` or `background`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "realtime" => Ok(Priority::Realtime),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            "background" => Ok(Priority::Background),
            _ => Err(format!(
                "unknown priority `{text}`: use realtime, high, normal, low or background"
            )),
        }
    }
}

/// What an agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum AgentState {
    /// Idle, nothing queued.
    Sleeping = 0,
    /// Has work queued, or waits for the kernel to start its turn.
    Waiting = 1,
    /// The model is generating its reply.
    Running = 2,
    /// Failed; its supervisor is restarting it from its last checkpoint.
    Restarting = 3,
    /// Stopped for good.
    Stopped = 4,
}

impl AgentState {
    /// The state with this number (`AgentState as u8`); numbers past the last are `Stopped`.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => AgentState::Sleeping,
            1 => AgentState::Waiting,
            2 => AgentState::Running,
            3 => AgentState::Restarting,
            _ => AgentState::Stopped,
        }
    }
}

/// One line of [`AgentOS::agents`](crate::AgentOS::agents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub pid: Pid,
    pub name: String,
    pub role: String,
    pub priority: Priority,
    pub state: AgentState,
    /// Completed turns (across restarts).
    pub turns: u64,
    /// Prompt plus generated tokens over all turns.
    pub tokens_used: u64,
    /// Times its supervisor restarted it.
    pub restarts: u32,
    /// Tasks and messages waiting, including the one running.
    pub queued_tasks: usize,
    /// Journal writes of this agent that failed (each also logged as an error; the task they
    /// belonged to failed the agent and was redelivered).
    pub journal_failures: u32,
}
