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
pub mod handle;
pub(crate) mod record;

use std::time::Duration;

use agentos_kernel::{ChatMessage, FinishReason, SamplingParams};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::scheduler::Priority;

/// A role an agent can play. Implemented by `#[agent]`; see the module docs.
pub trait Agent: AgentHooks + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The role's static description, from the `#[agent]` attributes and doc comment.
    fn spec() -> AgentSpec;
}

/// Optional behaviour. `#[agent]` implements this trait with the defaults below unless its
/// attribute list says `custom_hooks`; then implement it yourself and override what you need.
///
/// A hook that panics fails the agent: the supervisor restarts it from its last checkpoint and
/// redelivers the task once.
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
    /// Most tokens generated per turn.
    pub max_tokens: usize,
    /// Tools the agent may call (the tool issue gives them meaning; the slot is here now).
    pub tools: Vec<String>,
    /// How many recent turns are put back into each prompt (without memory).
    pub history_turns: usize,
    /// The agent has an S-MMU memory (`#[agent(memory)]`): each prompt holds the system prompt,
    /// the pages of its L1 window (paged in by relevance, within the L1 token budget) and the
    /// task, instead of the last `history_turns` turns; every turn is written to memory.
    pub memory: bool,
}

impl AgentSpec {
    /// Defaults used for attributes a role leaves out.
    pub const DEFAULT_MAX_TOKENS: usize = 256;
    pub const DEFAULT_HISTORY_TURNS: usize = 4;
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
}

/// One completed turn, as recorded in the agent's history and checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// 1-based turn number within this agent's life.
    pub number: u64,
    pub task: String,
    pub reply: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// A message from another agent, kept until the next turn shows it to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    pub from: String,
    pub text: String,
}

/// The answer to [`AgentHandle::ask`](handle::AgentHandle::ask).
#[derive(Debug, Clone)]
pub struct Response {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// From the task being accepted to the first generated token (queueing included).
    pub time_to_first_token: Duration,
    /// From the task being accepted to the reply.
    pub total_time: Duration,
    /// 1 normally; 2 when the agent failed during the task and it was redelivered.
    pub attempts: u32,
    /// The turn number this reply was recorded as.
    pub turn: u64,
}
