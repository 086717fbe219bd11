//! Agents: what a user declares with `#[agent]`, and what a turn produces.
//!
//! A role is a plain struct holding the agent's own state. `#[agent(...)]` implements [`Agent`]
//! for it (the static [`AgentSpec`]: name, role, system prompt, priority, sampling, token budget,
//! tools) and, unless the attribute says `custom_hooks`, an empty [`AgentHooks`] impl. The
//! runtime runs each instance as an [`AgentActor`](actor::AgentActor) under the agent supervisor;
//! talk to it through its [`AgentHandle`](handle::AgentHandle).
//!
//! ```
//! use agentos_runtime::prelude::*;
//!
//! /// You are a meticulous researcher. Cite what you rely on.
//! #[agent(name = "Researcher", role = "researcher", priority = High, temperature = 0.7, max_tokens = 256)]
//! #[derive(Default, Serialize, Deserialize)]
//! struct Researcher {
//!     notes: Vec<String>,
//! }
//!
//! let spec = Researcher::spec();
//! assert_eq!(spec.name, "Researcher");
//! assert_eq!(spec.system, "You are a meticulous researcher. Cite what you rely on.");
//! assert_eq!(spec.priority, Priority::High);
//! ```

pub mod actor;
pub(crate) mod dispatch;
pub mod handle;
pub(crate) mod journal;
pub(crate) mod record;
pub(crate) mod spawn;

use std::time::Duration;

use agentos_kernel::{ChatMessage, FinishReason, SamplingParams};
use ractor::RpcReplyPort;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;
use crate::syscall::{Step, SyscallError, ToolChoice};
use crate::types::{AgentInfo, Priority, TaskId};

/// A role an agent can play. Implemented by `#[agent]`; see the module docs.
pub trait Agent: AgentHooks + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The role's static description, from the `#[agent]` attributes and doc comment.
    fn spec() -> AgentSpec;
}

/// Optional behaviour. `#[agent]` implements this trait with the defaults below unless its
/// attribute list says `custom_hooks`; then implement it yourself and override what you need.
///
/// A hook that panics fails the agent: the supervisor restarts it from its last checkpoint and
/// redelivers the task, up to `RuntimeConfig::max_task_attempts` starts in all.
pub trait AgentHooks {
    /// Called before each turn with the assembled prompt; edit messages or settings freely.
    fn prepare(&mut self, prompt: &mut TurnPrompt) {
        let _ = prompt;
    }

    /// Called with each finished turn before it is recorded and checkpointed. An `Err` rejects
    /// the reply: the caller gets [`RuntimeError::Hook`](crate::RuntimeError::Hook) and the turn
    /// is not recorded.
    fn after_turn(&mut self, turn: &Turn) -> Result<(), String> {
        let _ = turn;
        Ok(())
    }

    /// Called when another agent's message is delivered; it is also shown to the model at the
    /// start of the next turn.
    fn on_message(&mut self, from: &str, text: &str) {
        let _ = (from, text);
    }
}

/// The role of an agent spawned from a spec built at run time
/// ([`AgentOS::spawn_spec`](crate::AgentOS::spawn_spec)): no state, default hooks.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct DeclaredRole;

impl AgentHooks for DeclaredRole {}

impl Agent for DeclaredRole {
    /// Never used for spawning (the caller's spec is), but the trait asks for one: the defaults
    /// of every field.
    fn spec() -> AgentSpec {
        AgentSpec::new("agent", "")
    }
}

/// The static description of a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Display name, also the default instance name (unique per AgentOS).
    pub name: String,
    pub role: String,
    /// The system prompt (the doc comment, or `system = "..."`).
    pub system: String,
    pub priority: Priority,
    pub sampling: SamplingParams,
    /// Most tokens generated per generation: per turn for an agent without tools, per step
    /// (each call, and the final answer) for one with tools.
    pub max_tokens: usize,
    /// System calls and user tools the agent may call, by name (see [`syscall`](crate::syscall)).
    /// Empty: the agent only talks, each turn is one generation.
    pub tools: Vec<String>,
    /// Most calls one turn makes. When the model asks for one more, the turn ends with the
    /// text before that call and [`Response::step_limit_reached`].
    pub max_steps: usize,
    /// Whether steps must make a call (see [`ToolChoice`]).
    pub tool_choice: ToolChoice,
    /// How many recent turns are put back into each prompt (without memory); the checkpoint
    /// keeps these, every older turn is in the journal's history.
    pub history_turns: usize,
    /// The agent has an S-MMU memory (`#[agent(memory)]`): each prompt holds the system prompt,
    /// the pages of its L1 window (paged in by relevance, within the L1 token budget) and the
    /// task, instead of the last `history_turns` turns; every turn is written to memory.
    pub memory: bool,
    /// What the agent may touch (files, programs, hosts, peers, children, approvals). `None`:
    /// what the runtime's [`Policy`](crate::security::Policy) gives it (see
    /// [`security`](crate::security)); with a policy entry for it too, the two are intersected.
    #[serde(default)]
    pub capabilities: Option<agentos_security::capability::Capabilities>,
}

impl AgentSpec {
    /// A spec named `name` (also its role) with system prompt `system` and the defaults of
    /// `#[agent]` for everything else: normal priority, greedy sampling, no tools, no memory.
    pub fn new(name: impl Into<String>, system: impl Into<String>) -> Self {
        let name = name.into();
        AgentSpec {
            role: name.to_lowercase(),
            name,
            system: system.into(),
            priority: Priority::Normal,
            sampling: SamplingParams::default(),
            max_tokens: Self::DEFAULT_MAX_TOKENS,
            tools: Vec::new(),
            max_steps: Self::DEFAULT_MAX_STEPS,
            tool_choice: ToolChoice::Auto,
            history_turns: Self::DEFAULT_HISTORY_TURNS,
            memory: false,
            capabilities: None,
        }
    }

    /// Defaults used for attributes a role leaves out.
    pub const DEFAULT_MAX_TOKENS: usize = 256;
    pub const DEFAULT_HISTORY_TURNS: usize = 4;
    pub const DEFAULT_MAX_STEPS: usize = 8;
}

/// What the model is asked in one turn; [`AgentHooks::prepare`] may change any of it.
#[derive(Debug, Clone)]
pub struct TurnPrompt {
    /// System prompt, recent turns, delivered messages and the task, in chat order.
    pub messages: Vec<ChatMessage>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Strings that end the reply when generated (not included in it).
    pub stop: Vec<String>,
    /// The model continues the last message instead of starting a new assistant turn. The
    /// runtime sets it once a tool step has been written into the assistant's turn in progress
    /// (see [`ToolFormat::SystemPrompt`](crate::syscall::wire::ToolFormat::SystemPrompt)); a
    /// template that renders the tools itself always gets whole turns.
    pub continue_last: bool,
}

/// One completed turn, as recorded in the agent's history and checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// 1-based turn number within this agent's life.
    pub number: u64,
    /// The task this turn answered.
    pub task_id: TaskId,
    pub task: String,
    pub reply: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The calls the turn made, in order (empty for an agent without tools).
    pub steps: Vec<Step>,
}

/// A message from another agent, kept until the next turn shows it to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    pub from: String,
    pub text: String,
}

/// The answer to [`AgentHandle::ask`](handle::AgentHandle::ask).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The task this answers (its outcome is recorded under this id).
    pub task: TaskId,
    pub text: String,
    /// Summed over the turn's generations (one per step with tools).
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// From the task being accepted to the first generated token (queueing included).
    pub time_to_first_token: Duration,
    /// From the task being accepted to the reply.
    pub total_time: Duration,
    /// 1 normally; more when the agent (or its process) failed during the task and it was
    /// redelivered.
    pub attempts: u32,
    /// The turn number this reply was recorded as.
    pub turn: u64,
    /// The calls the turn made, in order.
    pub steps: Vec<Step>,
    /// The model asked for a call after `max_steps` calls; that call was not run.
    pub step_limit_reached: bool,
}

/// What [`AgentHandle::stream`](handle::AgentHandle::stream) yields.
#[derive(Debug)]
pub enum StreamEvent {
    /// Text that became final with one generated token (an agent with tools does not stream
    /// its calls' raw text: they come as `ToolCall`).
    Token(String),
    /// The model called a system call or tool (arguments as JSON text; the raw text when it
    /// could not be parsed, with an empty name).
    ToolCall { name: String, arguments: String },
    /// What the call returned (JSON text), or the error the model was shown.
    ToolResult {
        name: String,
        result: Result<String, SyscallError>,
    },
    /// The agent was restarted during this task; the task is being redelivered and the text
    /// streamed so far is void (the reply starts over).
    Restarted,
    /// The end: the whole reply, or why there is none.
    Done(Box<Result<Response, RuntimeError>>),
}

/// What a queued task asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum TaskInput {
    /// Answer a prompt with the model.
    Ask(String),
    /// Take a message from another agent.
    Deliver { from: String, text: String },
    /// Answer a prompt with JSON matching `schema` (JSON text: the journal's encoding keeps
    /// no free-form values), constrained by the kernel's grammar; the turn makes no calls.
    AskJson { prompt: String, schema: String },
}

impl TaskInput {
    /// The prompt and response schema of a task for the model (a delivery has neither).
    fn into_prompt(self) -> (String, Option<String>) {
        match self {
            TaskInput::Ask(prompt) => (prompt, None),
            TaskInput::AskJson { prompt, schema } => (prompt, Some(schema)),
            TaskInput::Deliver { .. } => (String::new(), None),
        }
    }
}

/// How a task ended, as recorded in the journal (see [`AgentOS::task_result`](crate::AgentOS::task_result)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// The model's reply to an `ask` or `stream`.
    Replied(Response),
    /// A message from `send` was taken by its recipient (shown to its model next turn).
    Delivered,
    /// The task ended with an error; it will not run again.
    Failed(TaskFailure),
}

/// A recorded error: its kind and the message the caller got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// The kind of a [`TaskFailure`], one per [`RuntimeError`] a task can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    NoKernel,
    Kernel,
    KernelLost,
    ShuttingDown,
    SystemDown,
    AgentStopped,
    TaskFailed,
    Hook,
    Memory,
    Timeout,
    Journal,
    Other,
    /// Cancelled by its caller (last: journals encode kinds by position).
    Cancelled,
}

impl From<&RuntimeError> for TaskFailure {
    fn from(e: &RuntimeError) -> Self {
        let kind = match e {
            RuntimeError::NoKernel => FailureKind::NoKernel,
            RuntimeError::Kernel(_) => FailureKind::Kernel,
            RuntimeError::KernelLost => FailureKind::KernelLost,
            RuntimeError::ShuttingDown => FailureKind::ShuttingDown,
            RuntimeError::SystemDown { .. } => FailureKind::SystemDown,
            RuntimeError::AgentStopped { .. } => FailureKind::AgentStopped,
            RuntimeError::Cancelled { .. } => FailureKind::Cancelled,
            RuntimeError::TaskFailed { .. } => FailureKind::TaskFailed,
            RuntimeError::Hook { .. } => FailureKind::Hook,
            RuntimeError::Memory(_) | RuntimeError::NoMemory { .. } => FailureKind::Memory,
            RuntimeError::Timeout { .. } => FailureKind::Timeout,
            RuntimeError::Journal { .. } => FailureKind::Journal,
            _ => FailureKind::Other,
        };
        TaskFailure {
            kind,
            message: e.to_string(),
        }
    }
}

/// Where a task stands (see [`AgentOS::task_result`](crate::AgentOS::task_result)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Accepted and not finished: queued, running, or waiting for its agent to be spawned again
    /// (after a crash, a task runs again when an agent of its name is spawned).
    Pending { agent: String, attempts: u32 },
    /// Finished, with its recorded outcome.
    Done { agent: String, outcome: TaskOutcome },
    /// No such task, or its outcome is older than the journal keeps.
    Unknown,
}

/// Messages an agent actor understands. Work arrives through the agent's record (see
/// [`actor`]); `Run` only says which queued task to take.
pub enum AgentMsg {
    /// Run the queued task with this id (ignored if it is no longer queued).
    Run(TaskId),
    /// Reply with the agent's current status.
    Info(RpcReplyPort<AgentInfo>),
}
