//! `AgentActor<R>`: one agent process around a user's role struct `R`.
//!
//! Its loop, one task at a time: take the next task from the agent's record, assemble the context
//! (system prompt, recent turns, messages from other agents, the task), let the role's
//! [`prepare`](crate::AgentHooks::prepare) hook edit it, submit it to the kernel through the
//! scheduler, stream tokens to the caller, let [`after_turn`](crate::AgentHooks::after_turn)
//! see the reply, then record the task's outcome together with the new checkpoint (state, the
//! recent turns, the inbox) and the turn's history entry in one journal transaction. Only then is
//! the task removed from the record and its caller answered: nothing is answered that is not on
//! disk.
//!
//! On a panic anywhere in that loop the actor fails; its supervisor starts a new one, which loads
//! the last checkpoint and re-reads the record's queue: the task that was running is redelivered
//! (its stream gets [`StreamEvent::Restarted`]). Every start counts, in the journal too, so a
//! task that keeps failing its agent (or crashing its process) is answered with
//! [`RuntimeError::TaskFailed`] after `RuntimeConfig::max_task_attempts` starts; a start cut
//! short because a supervisor stopped the agent for a sibling's restart is given back.
//!
//! A checkpoint that cannot be read (damaged, or written by a role struct that has changed since)
//! is quarantined: moved aside in the journal with the reason, reported as
//! [`SupervisorEvent::Quarantined`](crate::SupervisorEvent::Quarantined), and the agent starts from
//! the state it was spawned with, so one bad record never keeps the other agents from coming back.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use agentos_kernel::{
    ChatMessage, Constraint, GenerateRequest, GenerationEvent, GenerationSummary, Grammar, KernelMsg, Prompt,
};
use ractor::concurrency::OneshotReceiver;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::dispatch::{Caller, describe_tools, dispatch, reject};
use crate::agent::journal::{Applied, Completion, InboxChange, Journal};
use crate::agent::record::{SharedRecord, TaskReply};
use crate::agent::{
    Agent, AgentMsg, AgentSpec, Delivered, Response, StreamEvent, TaskInput, TaskOutcome, TaskStatus, Turn, TurnPrompt,
};
use crate::error::RuntimeError;
use crate::rpc;
use crate::scheduler::SchedulerMsg;
use crate::supervisor::SupervisorEvent;
use crate::syscall::drivers::existing_paths;
use crate::syscall::wire::{
    CallFilter, ExistingPaths, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN, TOOL_ROLE,
    ToolDescription, ToolFormat, call_grammar, call_text, narrow_paths, parse_call, result_text, split_call,
    tool_objects, tools_prompt,
};
use crate::syscall::{Step, Syscall, ToolChoice};
use crate::system::System;
use crate::types::{AgentState, TaskId};
use agentos_memory::{ActiveContext, Embedder, L1Msg, MemoryError, PageId};

/// Put between the system prompt and the L1 pages of an agent with memory.
const MEMORY_HEADER: &str = "\n\nNotes from earlier in this conversation:";
/// Chat-template markers (SmolLM2's template adds about 5 tokens per message) and page
/// separators, on top of the counted texts: the first estimate; the rendered prompt is checked.
const PROMPT_OVERHEAD_TOKENS: usize = 24;

/// How the runtime starts an agent actor (built by `AgentOS::spawn`; opaque to users).
pub struct AgentArgs {
    pub(crate) record: SharedRecord,
    pub(crate) system: Arc<System>,
    pub(crate) spec: Arc<AgentSpec>,
    /// The role as spawned (bincode), used when no checkpoint exists yet.
    pub(crate) initial: Arc<Vec<u8>>,
}

/// The actor behind every agent. `R` is the user's role struct.
pub struct AgentActor<R>(PhantomData<fn() -> R>);

impl<R> AgentActor<R> {
    pub(crate) fn new() -> Self {
        AgentActor(PhantomData)
    }
}

pub struct AgentActorState<R> {
    role: R,
    /// The most recent turns, at most `history_turns` of them (older ones are in the journal's
    /// history): all a prompt shows, so a checkpoint stays bounded.
    turns: VecDeque<Turn>,
    turn_count: u64,
    inbox: Vec<Delivered>,
    record: SharedRecord,
    system: Arc<System>,
    spec: Arc<AgentSpec>,
    /// The L1's answer to the last turn written to memory; read at the next memory turn.
    pending_ingest: Option<OneshotReceiver<agentos_memory::Result<Vec<PageId>>>>,
    /// The role's system prompt; once the tool format is known to be
    /// [`ToolFormat::SystemPrompt`], with the agent's tool list appended.
    system_prompt: String,
    /// The agent's tools as its prompt and call grammar show them.
    tools: Vec<ToolDescription>,
    /// How the tools reach the model, asked of the kernel at the first turn (`None` before, and
    /// for an agent without tools).
    tool_format: Option<ToolFormat>,
    /// Cancelled when the caller cancels the running task (see [`AgentRecord::cancel`]).
    cancel: CancellationToken,
    _live: LiveActor,
}

/// Counts this actor in `AgentOS::live_agent_actors()` for as long as its state exists (a
/// state is dropped however the actor ends: stop, failure or kill).
struct LiveActor(Arc<System>);

impl LiveActor {
    fn new(system: &Arc<System>) -> Self {
        system.live_agent_actors.fetch_add(1, Ordering::Relaxed);
        LiveActor(system.clone())
    }
}

impl Drop for LiveActor {
    fn drop(&mut self) {
        self.0.live_agent_actors.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a checkpoint holds (the inbox is in the journal's inbox table, a record per message).
/// The borrowed twin below writes the same bytes without cloning.
#[derive(Deserialize)]
#[serde(bound = "R: DeserializeOwned")]
struct Checkpoint<R> {
    role: R,
    turns: VecDeque<Turn>,
    turn_count: u64,
    tokens_used: u64,
}

#[derive(Serialize)]
struct CheckpointRef<'a, R> {
    role: &'a R,
    turns: &'a VecDeque<Turn>,
    turn_count: u64,
    tokens_used: u64,
}

/// Gives a task's start back when the actor is stopped in the middle of it by a supervisor (the
/// task's future is dropped without a panic): that start was no fault of the task's.
struct StartGuard {
    record: SharedRecord,
    journal: Arc<Journal>,
    id: TaskId,
    armed: bool,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed || std::thread::panicking() {
            return;
        }
        let mut queue = self.record.queue();
        if let Some(task) = queue.tasks.get_mut(&self.id) {
            task.attempts = task.attempts.saturating_sub(1);
        }
        if queue.running == Some(self.id) {
            queue.running = None;
        }
        drop(queue);
        self.journal.refund(self.id);
    }
}

#[ractor::async_trait]
impl<R: Agent> Actor for AgentActor<R> {
    type Msg = AgentMsg;
    type State = AgentActorState<R>;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentActorState<R>, ActorProcessingErr> {
        let AgentArgs {
            record,
            system,
            spec,
            initial,
        } = args;
        let tools = describe_tools(&spec, &record.capabilities, &system)?;
        let system_prompt = spec.system.clone();
        let checkpoint = match system.journal.load_checkpoint::<Checkpoint<R>>(&record.name).await? {
            None => None,
            Some(Ok(checkpoint)) => Some(checkpoint),
            Some(Err(reason)) => {
                quarantine(&system, &record.name, &reason).await?;
                None
            }
        };
        // Messages delivered since the last turn, kept beside the checkpoint.
        let inbox: Vec<Delivered> = system.journal.inbox(&record.name).await?;
        let mut state = match checkpoint {
            Some(c) => {
                record.tokens_used.store(c.tokens_used, Ordering::Relaxed);
                AgentActorState {
                    role: c.role,
                    turns: c.turns,
                    turn_count: c.turn_count,
                    inbox,
                    record: record.clone(),
                    system: system.clone(),
                    spec,
                    pending_ingest: None,
                    system_prompt: system_prompt.clone(),
                    tools: tools.clone(),
                    tool_format: None,
                    cancel: CancellationToken::new(),
                    _live: LiveActor::new(&system),
                }
            }
            None => {
                let (role, _) = bincode::serde::decode_from_slice::<R, _>(&initial, bincode::config::standard())
                    .map_err(|e| format!("cannot decode the initial state of `{}`: {e}", record.name))?;
                AgentActorState {
                    role,
                    turns: VecDeque::new(),
                    turn_count: 0,
                    inbox,
                    record: record.clone(),
                    system: system.clone(),
                    spec,
                    pending_ingest: None,
                    system_prompt: system_prompt.clone(),
                    tools: tools.clone(),
                    tool_format: None,
                    cancel: CancellationToken::new(),
                    _live: LiveActor::new(&system),
                }
            }
        };
        record.turns.store(state.turn_count, Ordering::Relaxed);

        let mut queue = record.queue();
        let restart = queue.actor.is_some();
        queue.running = None;
        for task in queue.tasks.values() {
            if let (TaskReply::Stream(events), true) = (&task.reply, task.starts > 0) {
                let _ = events.send(StreamEvent::Restarted);
            }
        }
        // Publishing the new actor and re-sending the queue under one lock: a task queued by a
        // handle meanwhile is either in this list or sent to this actor, never neither.
        queue.actor = Some(myself.clone());
        for id in queue.tasks.keys() {
            myself.cast(AgentMsg::Run(*id))?;
        }
        record.set_state(if queue.tasks.is_empty() {
            AgentState::Sleeping
        } else {
            AgentState::Waiting
        });
        drop(queue);
        state.inbox.shrink_to_fit();
        tracing::debug!(agent = %record.name, pid = %record.pid, restart, "agent started");
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        state: &mut AgentActorState<R>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Run(id) => {
                let span =
                    tracing::info_span!("task", agent = %state.record.name, pid = %state.record.pid, task = id.0);
                state.run_task(id).instrument(span).await?;
            }
            AgentMsg::Info(reply) => {
                let _ = reply.send(state.record.info());
            }
        }
        Ok(())
    }
}

/// Moves an unreadable checkpoint aside and says so on the event stream.
async fn quarantine(system: &System, agent: &str, reason: &str) -> Result<(), RuntimeError> {
    tracing::error!(%agent, %reason, "checkpoint unreadable: quarantined; the agent starts from its initial state");
    system.journal.quarantine(agent, reason).await?;
    let _ = system.events.send(SupervisorEvent::Quarantined {
        agent: agent.to_string(),
        path: system.journal.path().to_path_buf(),
        key: format!("quarantine/{agent}"),
        reason: reason.to_string(),
    });
    Ok(())
}

impl<R: Agent> AgentActorState<R> {
    /// Runs queued task `id`. An error fails the agent (its supervisor restarts it and the task
    /// is redelivered): only a journal that cannot record an outcome does that.
    async fn run_task(&mut self, id: TaskId) -> Result<(), RuntimeError> {
        let record = self.record.clone();
        let max = self.system.max_task_attempts;
        let cancelled_before_start = record.queue().tasks.get(&id).is_some_and(|t| t.cancelled);
        if cancelled_before_start {
            return self.finish(id, Err(self.cancelled()), Completion::none()).await;
        }
        let start = {
            let mut queue = record.queue();
            let started = match queue.tasks.get_mut(&id) {
                None => return Ok(()),
                Some(task) if task.attempts >= max => None,
                Some(task) => {
                    task.attempts += 1;
                    task.starts += 1;
                    let events = match &task.reply {
                        TaskReply::Stream(events) => Some(events.clone()),
                        TaskReply::Nobody => None,
                    };
                    Some((task.input.clone(), task.attempts, task.accepted, events))
                }
            };
            if started.is_some() {
                queue.running = Some(id);
                queue.cancel = CancellationToken::new();
                self.cancel = queue.cancel.clone();
            }
            started
        };
        let Some((input, attempts, accepted, events)) = start else {
            let error = RuntimeError::TaskFailed {
                agent: record.name.clone(),
                reason: format!("it was started {max} times and each time its agent failed"),
            };
            return self.finish(id, Err(error), Completion::none()).await;
        };
        // Armed before the first await: a stop that lands while the journal counts the start
        // gives the start back too (the journal applies the count and its refund in order).
        let mut guard = StartGuard {
            record: record.clone(),
            journal: self.system.journal.clone(),
            id,
            armed: true,
        };
        if let Err(e) = self.system.journal.started(id).await {
            tracing::warn!(error = %e, "could not count the start in the journal");
        }
        let mut memory_text = None;
        let (outcome, completion) = match input {
            TaskInput::Ask(_) | TaskInput::AskJson { .. } => {
                let (prompt, schema) = input.into_prompt();
                record.set_state(AgentState::Waiting);
                match self.run_turn(id, prompt, schema, attempts, accepted, events).await {
                    // Cancelled after its last generation (during a final tool call or the
                    // after_turn hook): the caller was told it is cancelled, so it is.
                    Ok(_) if self.cancel.is_cancelled() => (Err(self.cancelled()), Completion::none()),
                    Ok((response, completion, text)) => {
                        memory_text = text;
                        (Ok(Some(response)), completion)
                    }
                    Err(e) => (Err(e), Completion::none()),
                }
            }
            TaskInput::Deliver { from, text } => {
                self.role.on_message(&from, &text);
                let delivered = Delivered { from, text };
                let completion = Completion {
                    checkpoint: Some(self.encode_checkpoint()?),
                    turn: None,
                    inbox: InboxChange::Add(self.system.journal.encode(&delivered)?),
                };
                self.inbox.push(delivered);
                (Ok(None), completion)
            }
        };
        guard.armed = false;
        self.finish(id, outcome, completion).await?;
        if let Some(text) = memory_text {
            self.write_turn_to_memory(text);
        }
        Ok(())
    }

    /// The error of a cancelled task.
    fn cancelled(&self) -> RuntimeError {
        RuntimeError::Cancelled {
            agent: self.record.name.clone(),
        }
    }

    /// Records task `id`'s outcome with the state it leaves, then answers its caller.
    async fn finish(
        &self,
        id: TaskId,
        outcome: Result<Option<Response>, RuntimeError>,
        completion: Completion,
    ) -> Result<(), RuntimeError> {
        let record = &self.record;
        let recorded = match &outcome {
            Ok(Some(response)) => TaskOutcome::Replied(response.clone()),
            Ok(None) => TaskOutcome::Delivered,
            Err(e) => TaskOutcome::Failed(e.into()),
        };
        match self
            .system
            .journal
            .complete(id, &record.name, &recorded, completion)
            .await
        {
            Ok(Applied::Yes) => {}
            Ok(Applied::AlreadyRecorded) => {
                // An earlier run's completion reached the disk after that run was cut short (a
                // supervisor's stop during the commit). What is recorded stands: its caller gets
                // that, and the agent restarts from the checkpoint recorded with it, so this
                // run's state changes are dropped with its result.
                tracing::warn!(task = %id, "the task already had a recorded outcome; restarting from it");
                let recorded = match self.system.journal.status(id).await? {
                    TaskStatus::Done {
                        outcome: TaskOutcome::Replied(response),
                        ..
                    } => Ok(Some(response)),
                    TaskStatus::Done {
                        outcome: TaskOutcome::Delivered,
                        ..
                    } => Ok(None),
                    other => Err(RuntimeError::TaskFailed {
                        agent: record.name.clone(),
                        reason: format!("{other:?}"),
                    }),
                };
                if let Some(task) = record.take(id) {
                    task.finish(recorded);
                }
                return Err(RuntimeError::Messaging(format!(
                    "{id} completed twice; reloading the agent from its recorded state"
                )));
            }
            Err(e) => {
                record.journal_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(task = %id, error = %e, "could not record the task's outcome; failing the agent");
                return Err(e);
            }
        }
        if let Some(task) = record.take(id) {
            task.finish(outcome);
        }
        Ok(())
    }

    /// The agent's state as checkpoint bytes.
    fn encode_checkpoint(&self) -> Result<Vec<u8>, RuntimeError> {
        let checkpoint = CheckpointRef {
            role: &self.role,
            turns: &self.turns,
            turn_count: self.turn_count,
            tokens_used: self.record.tokens_used.load(Ordering::Relaxed),
        };
        self.system.journal.encode_checkpoint(&checkpoint)
    }

    fn assemble(&self, task: &str) -> TurnPrompt {
        let spec = &self.spec;
        let mut messages = Vec::with_capacity(2 + 2 * spec.history_turns);
        if !self.system_prompt.is_empty() {
            messages.push(ChatMessage::system(self.system_prompt.clone()));
        }
        let skip = self.turns.len().saturating_sub(spec.history_turns);
        for turn in self.turns.iter().skip(skip) {
            messages.push(ChatMessage::user(turn.task.clone()));
            messages.push(ChatMessage::assistant(turn.reply.clone()));
        }
        messages.push(ChatMessage::user(self.task_content(task)));
        self.turn_prompt(messages)
    }

    /// The context of an agent with memory: the system prompt with the pages of its L1 window
    /// (paged in for this task), then the task; within the L1 token budget.
    async fn assemble_from_memory(&self, task: &str) -> Result<TurnPrompt, RuntimeError> {
        let memory = &self.system.memory;
        let name = &self.record.name;
        let l1 = memory
            .l1(name)
            .ok_or_else(|| RuntimeError::NoMemory { agent: name.clone() })?;
        let model = memory.model.clone().ok_or(RuntimeError::NoKernel)?;
        let content = self.task_content(task);
        let reserved = model
            .count_tokens(format!("{}{MEMORY_HEADER}", self.system_prompt))
            .await?
            + model.count_tokens(content.clone()).await?
            + PROMPT_OVERHEAD_TOKENS;
        let query = task.to_string();
        let timeout = self.system.memory_timeout;
        let gone = || RuntimeError::Messaging("the agent's memory is restarting".into());
        let mut context = rpc::call(
            &l1,
            "the agent's memory (paging in)",
            timeout,
            |reply| L1Msg::Assemble {
                query,
                reserved_tokens: reserved,
                reply,
            },
            gone,
        )
        .await??;
        // The reservation is an estimate (page separators, re-tokenised page edges); the rendered
        // prompt is what counts. Over budget, the window is shrunk by the excess: the
        // context-full interrupt, handled by eviction.
        let budget = memory.config.l1_budget_tokens;
        loop {
            let messages = self.memory_messages(&context, &content);
            let tokens = self.prompt_tokens(&messages).await?;
            if tokens <= budget {
                return Ok(self.turn_prompt(messages));
            }
            if context.pages.is_empty() {
                // The system prompt and the task alone do not fit: a clear error, never a
                // prompt over the hard budget.
                return Err(MemoryError::OverBudget { needed: tokens, budget }.into());
            }
            let page_budget = context.tokens.saturating_sub(tokens - budget);
            let shrink = |reply| L1Msg::Shrink { page_budget, reply };
            context = rpc::call(&l1, "the agent's memory (shrinking)", timeout, shrink, gone).await??;
        }
    }

    /// System prompt with the window's pages, then the task.
    fn memory_messages(&self, context: &ActiveContext, content: &str) -> Vec<ChatMessage> {
        let mut system = self.system_prompt.clone();
        if !context.pages.is_empty() {
            system.push_str(MEMORY_HEADER);
            for page in &context.pages {
                system.push('\n');
                system.push_str(page.text.trim());
            }
        }
        let mut messages = Vec::with_capacity(2);
        if !system.is_empty() {
            messages.push(ChatMessage::system(system));
        }
        messages.push(ChatMessage::user(content.to_string()));
        messages
    }

    /// Tokens of `messages` rendered with the model's chat template.
    async fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, RuntimeError> {
        let kernel = self.system.kernel().ok_or(RuntimeError::KernelLost)?;
        let messages = messages.to_vec();
        let timeout = self.system.call_timeout;
        let lost = || RuntimeError::KernelLost;
        let tools = self.template_tools();
        let tokenize = |reply| KernelMsg::TokenizeChat { messages, tools, reply };
        let tokens = rpc::call(&kernel, "the kernel (chat tokens)", timeout, tokenize, lost).await??;
        Ok(tokens.len())
    }

    /// How this agent's tools reach the model: asked of the kernel once (whether the model's
    /// chat template has a tools branch); without the template's branch the tool list is
    /// appended to the system prompt here.
    async fn resolve_tool_format(&mut self) -> Result<(), RuntimeError> {
        if self.tools.is_empty() || self.tool_format.is_some() {
            return Ok(());
        }
        let kernel = self.system.kernel().ok_or(RuntimeError::KernelLost)?;
        let timeout = self.system.call_timeout;
        let info = rpc::call(&kernel, "the kernel (model info)", timeout, KernelMsg::Info, || {
            RuntimeError::KernelLost
        })
        .await?;
        let format = match info.template_has_tools_branch {
            true => ToolFormat::Template,
            false => {
                self.system_prompt.push_str(&tools_prompt(&self.tools));
                ToolFormat::SystemPrompt
            }
        };
        tracing::debug!(agent = %self.record.name, ?format, "tool format");
        self.tool_format = Some(format);
        Ok(())
    }

    /// The tools to hand to the chat template's tools branch (none unless it has one).
    fn template_tools(&self) -> Vec<serde_json::Value> {
        match self.tool_format {
            Some(ToolFormat::Template) => tool_objects(&self.tools),
            _ => Vec::new(),
        }
    }

    /// The task, preceded by messages other agents sent since the last turn.
    fn task_content(&self, task: &str) -> String {
        if self.inbox.is_empty() {
            return task.to_string();
        }
        let mut content = String::from("Messages from other agents:\n");
        for m in &self.inbox {
            content.push_str(&format!("- {}: {}\n", m.from, m.text));
        }
        content.push('\n');
        content.push_str(task);
        content
    }

    fn turn_prompt(&self, messages: Vec<ChatMessage>) -> TurnPrompt {
        TurnPrompt {
            messages,
            max_tokens: self.spec.max_tokens,
            sampling: self.spec.sampling.clone(),
            stop: Vec::new(),
            continue_last: false,
        }
    }

    /// Hands a finished turn to the agent's L1 to be sliced into pages. The L1 handles messages
    /// in order, so the next turn's context already includes it; the agent does not wait here,
    /// but reads the answer at its next memory turn.
    fn write_turn_to_memory(&mut self, text: String) {
        let Some(l1) = self.system.memory.l1(&self.record.name) else {
            return;
        };
        let (tx, rx) = ractor::concurrency::oneshot();
        if l1.cast(L1Msg::Ingest { text, reply: tx.into() }).is_err() {
            tracing::warn!(agent = %self.record.name, "memory is restarting; this turn was not written to it");
            return;
        }
        self.pending_ingest = Some(rx);
    }

    /// Reports how writing the previous turn to memory went (it is done by now or soon: the L1
    /// takes it before this turn's request).
    async fn check_previous_ingest(&mut self) {
        let Some(rx) = self.pending_ingest.take() else {
            return;
        };
        match tokio::time::timeout(self.system.memory_timeout, rx).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(agent = %self.record.name, error = %e, "writing the last turn to memory failed")
            }
            Ok(Err(_)) => tracing::warn!(agent = %self.record.name, "memory restarted while writing the last turn"),
            Err(_) => tracing::warn!(agent = %self.record.name, "writing the last turn to memory timed out"),
        }
    }

    /// One turn: generate, and while the reply ends in a call (an agent with tools), run it and
    /// generate again with its result, up to `max_steps` calls. Calls recorded by an earlier
    /// run of this task are replayed from the journal, not made again.
    async fn run_turn(
        &mut self,
        id: TaskId,
        task: String,
        response_schema: Option<String>,
        attempts: u32,
        accepted: Instant,
        events: Option<mpsc::UnboundedSender<StreamEvent>>,
    ) -> Result<(Response, Completion, Option<String>), RuntimeError> {
        if self.system.kernel.is_some() {
            self.resolve_tool_format().await?;
        }
        let format = self.tool_format.unwrap_or(ToolFormat::SystemPrompt);
        let mut prompt = if self.spec.memory {
            self.check_previous_ingest().await;
            // Paging in can wait on embedding work queued behind other requests.
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(self.cancelled()),
                prompt = self.assemble_from_memory(&task) => prompt?,
            }
        } else {
            self.assemble(&task)
        };
        let response_schema = match response_schema {
            Some(text) => {
                let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| RuntimeError::BadJson {
                    agent: self.record.name.clone(),
                    reason: format!("the schema is not JSON: {e}"),
                })?;
                // The model writes better JSON when it is told what is wanted; the grammar
                // makes sure of the syntax.
                if let Some(last) = prompt.messages.last_mut() {
                    last.content
                        .push_str(&format!("\n\nAnswer only with JSON matching this schema: {text}"));
                }
                Some(schema)
            }
            None => None,
        };
        self.role.prepare(&mut prompt);
        if self.system.kernel.is_none() {
            return Err(RuntimeError::NoKernel);
        }
        let tooled = !self.spec.tools.is_empty() && response_schema.is_none();
        let mut steps = match tooled {
            true => self.system.journal.steps(id).await?,
            false => Vec::new(),
        };
        let max_result_chars = self.system.syscalls.max_result_chars;
        for step in &steps {
            push_step(&mut prompt, step, max_result_chars, format);
            if let Some(events) = &events {
                let _ = events.send(StreamEvent::ToolCall {
                    name: step.name.clone(),
                    arguments: step.arguments.clone(),
                });
                let _ = events.send(StreamEvent::ToolResult {
                    name: step.name.clone(),
                    result: step.result.clone(),
                });
            }
        }
        if tooled {
            prompt.stop.push(TOOL_CALL_CLOSE.to_string());
            prompt.stop.push(TOOL_RESPONSE_OPEN.to_string());
            prompt.stop.push(TOOL_RESPONSE_CLOSE.to_string());
        }

        let mut first_token = None;
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let (reply, finish_reason, step_limit_reached) = loop {
            let constraint = match (&response_schema, tooled) {
                (Some(schema), _) => Some(Constraint {
                    grammar: Grammar::JsonSchema(schema.clone()),
                    after: None,
                }),
                (None, true) => self.call_constraint(steps.len()).await,
                (None, false) => None,
            };
            let summary = self
                .generate(&prompt, constraint, tooled, accepted, &events, &mut first_token)
                .await?;
            prompt_tokens += summary.prompt_tokens;
            completion_tokens += summary.tokens.len();
            let Some((before, body)) = tooled.then(|| split_call(&summary.text)).flatten() else {
                // After a result the model may open its answer with the line break it puts
                // between paragraphs of its turn; the answer is the text.
                let reply = match prompt.continue_last {
                    true => summary.text.trim_start().to_string(),
                    false => summary.text,
                };
                break (reply, summary.finish_reason, false);
            };
            if steps.len() >= self.spec.max_steps {
                break (before.trim_end().to_string(), summary.finish_reason, true);
            }
            let (mut step, exit) = self.make_call(before, body, &events).await;
            step.prompt_tokens = summary.prompt_tokens as u32;
            self.system.journal.record_step(id, steps.len(), &step).await?;
            push_step(&mut prompt, &step, max_result_chars, format);
            steps.push(step);
            if let Some(result) = exit {
                break (result, summary.finish_reason, false);
            }
        };

        let memory_text = self.spec.memory.then(|| format!("User: {task}\nAssistant: {reply}"));
        let turn = Turn {
            number: self.turn_count + 1,
            task_id: id,
            task,
            reply: reply.clone(),
            prompt_tokens: prompt_tokens as u32,
            completion_tokens: completion_tokens as u32,
            steps: steps.clone(),
        };
        let record = &self.record;
        self.role.after_turn(&turn).map_err(|reason| RuntimeError::Hook {
            agent: record.name.clone(),
            reason,
        })?;
        record
            .tokens_used
            .fetch_add((prompt_tokens + completion_tokens) as u64, Ordering::Relaxed);
        self.turn_count = turn.number;
        record.turns.store(self.turn_count, Ordering::Relaxed);
        let history = self.system.journal.encode(&turn)?;
        self.turns.push_back(turn);
        while self.turns.len() > self.spec.history_turns {
            self.turns.pop_front();
        }
        // Messages the turn showed (at its start, or taken by `recv_msg`, which records them in
        // the inbox until the turn is done) leave the inbox with it.
        let received = steps.iter().any(|s| s.name == "recv_msg" && s.result.is_ok());
        let inbox = match self.inbox.is_empty() && !received {
            true => InboxChange::Keep,
            false => InboxChange::Clear,
        };
        self.inbox.clear();
        let completion = Completion {
            checkpoint: Some(self.encode_checkpoint()?),
            turn: Some((self.turn_count, history)),
            inbox,
        };
        let response = Response {
            task: id,
            text: reply,
            prompt_tokens,
            completion_tokens,
            finish_reason,
            time_to_first_token: first_token.unwrap_or_else(|| accepted.elapsed()),
            total_time: accepted.elapsed(),
            attempts,
            turn: self.turn_count,
            steps,
            step_limit_reached,
        };
        Ok((response, completion, memory_text))
    }

    /// One generation of `prompt` through the scheduler, streaming its text to the caller (an
    /// agent with tools holds back the raw text of a call).
    async fn generate(
        &self,
        prompt: &TurnPrompt,
        constraint: Option<Constraint>,
        tooled: bool,
        accepted: Instant,
        events: &Option<mpsc::UnboundedSender<StreamEvent>>,
        first_token: &mut Option<std::time::Duration>,
    ) -> Result<GenerationSummary, RuntimeError> {
        let record = &self.record;
        let tools = self.template_tools();
        let request = GenerateRequest {
            prompt: match (tools.is_empty(), prompt.continue_last) {
                (false, _) => Prompt::ChatWithTools {
                    messages: prompt.messages.clone(),
                    tools,
                },
                (true, true) => Prompt::ContinueChat(prompt.messages.clone()),
                (true, false) => Prompt::Chat(prompt.messages.clone()),
            },
            max_tokens: prompt.max_tokens,
            sampling: prompt.sampling.clone(),
            stop: prompt.stop.clone(),
            ignore_eos: false,
            priority: record.priority() as u8,
            constraint,
        };
        let scheduler = self.system.scheduler.get().ok_or_else(|| self.system.down_error())?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let submit = SchedulerMsg::Submit {
            agent: record.pid,
            priority: record.priority(),
            request,
            events: tx,
        };
        scheduler.cast(submit).map_err(|_| self.system.down_error())?;

        let mut filter = CallFilter::default();
        let emit = |text: String| {
            if let (Some(events), false) = (events, text.is_empty()) {
                let _ = events.send(StreamEvent::Token(text));
            }
        };
        let mut show = |text: String| emit(if tooled { filter.push(&text) } else { text });
        loop {
            let event = tokio::select! {
                biased;
                // Dropping `rx` ends the generation: the kernel stops it at its next token and
                // frees its KV blocks.
                () = self.cancel.cancelled() => return Err(self.cancelled()),
                event = rx.recv() => event,
            };
            match event {
                Some(GenerationEvent::Token { text, .. }) => {
                    if first_token.is_none() {
                        *first_token = Some(accepted.elapsed());
                        record.set_state(AgentState::Running);
                    }
                    show(text);
                }
                Some(GenerationEvent::Finished { tail, summary }) => {
                    show(tail);
                    // What was held back as a possible start of a call, when none came.
                    emit(filter.finish());
                    return Ok(summary);
                }
                Some(GenerationEvent::Failed(e)) => return Err(RuntimeError::Kernel(e)),
                None => return Err(RuntimeError::KernelLost),
            }
        }
    }

    /// The grammar of step `step`'s generation: a call of one of the agent's tools, forced
    /// (`<tool_call>` and the call) where its tool choice asks for a call, otherwise lazy (free
    /// text, and a valid call once the model opens one); none once `max_steps` calls are made
    /// (but a forced call under `required`), or when `SyscallConfig::constrained_calls` is off.
    /// A file call's path offers what exists now ([`narrow_paths`]).
    async fn call_constraint(&self, step: usize) -> Option<Constraint> {
        if !self.system.syscalls.constrained_calls {
            return None;
        }
        let forced = match self.spec.tool_choice {
            ToolChoice::Auto => false,
            ToolChoice::First => step == 0,
            // Past max_steps too: the turn then ends with the call unrun.
            ToolChoice::Required => true,
        };
        if step >= self.spec.max_steps && self.spec.tool_choice != ToolChoice::Required {
            return None;
        }
        let tools = match self.existing_paths().await {
            Some(paths) => narrow_paths(&self.tools, &paths),
            None => self.tools.clone(),
        };
        Some(call_grammar(&tools, forced))
    }

    /// What exists beneath the agent's work directory now, for an agent with file tools under
    /// `SyscallConfig::max_path_choices` (walked on a blocking thread); `None` otherwise.
    async fn existing_paths(&self) -> Option<ExistingPaths> {
        let syscalls = &self.system.syscalls;
        // With mounts, a path's first component may name a mount instead: offer no choice
        // rather than the work directory's alone.
        let caps = &self.record.capabilities;
        if caps.files.iter().any(|grant| !grant.mount.is_empty()) {
            return None;
        }
        let root = caps.work_dir()?.path.clone();
        let limit = syscalls.max_path_choices;
        let file_tools = self
            .tools
            .iter()
            .any(|tool| tool.name == "fs_read" || tool.name == "fs_list");
        if limit == 0 || !file_tools {
            return None;
        }
        tokio::task::spawn_blocking(move || existing_paths(&root, limit))
            .await
            .ok()
            .flatten()
    }

    /// Parses and runs the call in `body`; returns its step and, for a successful `exit`, the
    /// turn's final answer. Nothing the model wrote fails the turn: every error is the step's
    /// result.
    async fn make_call(
        &self,
        before: &str,
        body: &str,
        events: &Option<mpsc::UnboundedSender<StreamEvent>>,
    ) -> (Step, Option<String>) {
        let started = Instant::now();
        let (name, arguments, call) = match parse_call(body) {
            Err(e) => (String::new(), body.trim().to_string(), Err(e)),
            Ok((name, arguments)) => {
                let text = arguments.to_string();
                let call = Syscall::from_call(&name, arguments);
                (name, text, call)
            }
        };
        if let Some(events) = events {
            let _ = events.send(StreamEvent::ToolCall {
                name: name.clone(),
                arguments: arguments.clone(),
            });
        }
        let caller = Caller {
            record: &self.record,
            system: &self.system,
        };
        let result = match &call {
            Ok(call) => dispatch(&caller, call).await,
            Err(e) => reject(&caller, &name, &arguments, e.clone()).await,
        };
        tracing::debug!(call = %name, ok = result.is_ok(), "system call");
        let exit = match (&call, &result) {
            (Ok(Syscall::Exit { result }), Ok(_)) => Some(result.clone()),
            _ => None,
        };
        let result = result.map(|value| value.to_string());
        if let Some(events) = events {
            let _ = events.send(StreamEvent::ToolResult {
                name: name.clone(),
                result: result.clone(),
            });
        }
        let step = Step {
            text: before.to_string(),
            name,
            arguments,
            result,
            duration_ms: started.elapsed().as_millis() as u64,
            prompt_tokens: 0,
        };
        (step, exit)
    }
}

/// Appends a step to the prompt. With the model's own tools format (its template's tools
/// branch) that is an assistant message with the call and a `tool` message with its result,
/// as the template expects. Otherwise the call and its `<tool_response>` stay in the
/// assistant's turn, which the model then continues (ReAct's observations): the step's text,
/// the call and the result are appended to the turn's assistant message (opened by the first
/// step) and the next generation continues it. A small model answers from a result it sees
/// in its own turn; shown a new turn, SmolLM2-135M mostly repeats the result's markup or
/// drifts off topic (`tools_bench`, see the README).
fn push_step(prompt: &mut TurnPrompt, step: &Step, max_result_chars: usize, format: ToolFormat) {
    let call = match serde_json::from_str::<serde_json::Value>(&step.arguments) {
        Ok(arguments) if !step.name.is_empty() => call_text(&step.name, &arguments),
        _ => format!("{TOOL_CALL_OPEN}{}{TOOL_CALL_CLOSE}", step.arguments),
    };
    let result = step
        .result
        .as_ref()
        .map(|json| serde_json::from_str(json).unwrap_or_else(|_| serde_json::Value::String(json.clone())))
        .map_err(Clone::clone);
    let result = result_text(&step.name, &result, max_result_chars, format);
    match format {
        ToolFormat::Template => {
            prompt
                .messages
                .push(ChatMessage::assistant(format!("{}{call}", step.text)));
            prompt.messages.push(ChatMessage::new(TOOL_ROLE, result));
        }
        ToolFormat::SystemPrompt => {
            let piece = format!("{}{call}\n{result}\n", step.text);
            match prompt.messages.last_mut() {
                Some(turn) if prompt.continue_last => turn.content.push_str(&piece),
                _ => prompt.messages.push(ChatMessage::assistant(piece)),
            }
            prompt.continue_last = true;
        }
    }
}
