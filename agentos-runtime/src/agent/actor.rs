//! `AgentActor<R>`: one agent process around a user's role struct `R`.
//!
//! Its loop, one task at a time: take the next task from the agent's record, assemble the context
//! (system prompt, recent turns, messages from other agents, the task), let the role's
//! [`prepare`](crate::AgentHooks::prepare) hook edit it, submit it to the kernel through the
//! scheduler, stream tokens to the caller, let [`after_turn`](crate::AgentHooks::after_turn)
//! see the reply, record the turn and checkpoint the state. Only then is the task removed from
//! the record and answered.
//!
//! On a panic anywhere in that loop the actor fails; its supervisor starts a new one, which loads
//! the last checkpoint and re-reads the record's queue: the task that was running is redelivered
//! (its stream gets [`StreamEvent::Restarted`]) and, should it fail again, answered with
//! [`RuntimeError::TaskFailed`] instead of being run a third time.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use agentos_kernel::{ChatMessage, GenerateRequest, GenerationEvent, KernelMsg, Prompt};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::agent::handle::StreamEvent;
use crate::agent::record::{AgentInfo, AgentState, SharedRecord, TaskId, TaskInput, TaskReply};
use crate::agent::{Agent, AgentSpec, Delivered, Response, Turn, TurnPrompt};
use crate::error::RuntimeError;
use crate::os::System;
use crate::scheduler::SchedulerMsg;
use agentos_memory::{ActiveContext, Embedder, L1Msg};

/// Put between the system prompt and the L1 pages of an agent with memory.
const MEMORY_HEADER: &str = "\n\nNotes from earlier in this conversation:";
/// Chat-template markers (SmolLM2's template adds about 5 tokens per message) and page
/// separators, on top of the counted texts: the first estimate; the rendered prompt is checked.
const PROMPT_OVERHEAD_TOKENS: usize = 24;

/// Messages an agent actor understands. Work arrives through the record (see the module docs);
/// `Run` only says which queued task to take.
pub enum AgentMsg {
    /// Run the queued task with this id (ignored if it is no longer queued).
    Run(TaskId),
    /// Reply with the agent's current status.
    Info(RpcReplyPort<AgentInfo>),
}

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
    turns: Vec<Turn>,
    turn_count: u64,
    inbox: Vec<Delivered>,
    record: SharedRecord,
    system: Arc<System>,
    spec: Arc<AgentSpec>,
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

/// What a checkpoint holds. The borrowed twin below writes the same bytes without cloning.
#[derive(Deserialize)]
#[serde(bound = "R: DeserializeOwned")]
struct Checkpoint<R> {
    role: R,
    turns: Vec<Turn>,
    turn_count: u64,
    inbox: Vec<Delivered>,
    tokens_used: u64,
    /// Tasks queued but not finished when it was written; a resumed agent runs them.
    pending: Vec<TaskInput>,
}

#[derive(Serialize)]
struct CheckpointRef<'a, R> {
    role: &'a R,
    turns: &'a [Turn],
    turn_count: u64,
    inbox: &'a [Delivered],
    tokens_used: u64,
    pending: &'a [TaskInput],
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
        let checkpoint: Option<Checkpoint<R>> = system.checkpoints.load(&record.name)?;
        let (mut state, pending) = match checkpoint {
            Some(c) => {
                record.tokens_used.store(c.tokens_used, Ordering::Relaxed);
                let state = AgentActorState {
                    role: c.role,
                    turns: c.turns,
                    turn_count: c.turn_count,
                    inbox: c.inbox,
                    record: record.clone(),
                    system: system.clone(),
                    spec,
                    _live: LiveActor::new(&system),
                };
                (state, c.pending)
            }
            None => {
                let (role, _) = bincode::serde::decode_from_slice::<R, _>(&initial, bincode::config::standard())
                    .map_err(|e| format!("cannot decode the initial state of `{}`: {e}", record.name))?;
                let state = AgentActorState {
                    role,
                    turns: Vec::new(),
                    turn_count: 0,
                    inbox: Vec::new(),
                    record: record.clone(),
                    system: system.clone(),
                    spec,
                    _live: LiveActor::new(&system),
                };
                (state, Vec::new())
            }
        };
        record.turns.store(state.turn_count, Ordering::Relaxed);

        let mut queue = record.queue();
        let restart = queue.actor.is_some();
        if restart {
            for task in queue.tasks.values() {
                if let (TaskReply::Stream(events), true) = (&task.reply, task.attempts > 0) {
                    let _ = events.send(StreamEvent::Restarted);
                }
            }
        } else {
            // A fresh start from a checkpoint written with work still queued: run that work.
            for input in pending {
                let id = queue.next_id;
                queue.next_id += 1;
                queue.tasks.insert(
                    id,
                    crate::agent::record::Task {
                        input,
                        reply: TaskReply::Nobody,
                        attempts: 0,
                        accepted: Instant::now(),
                    },
                );
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

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentMsg>,
        state: &mut AgentActorState<R>,
    ) -> Result<(), ActorProcessingErr> {
        // A graceful stop (shutdown, a handle's stop, or a sibling's restart) keeps queued work in
        // the checkpoint, so nothing is lost even if the process ends now.
        if state.turn_count > 0 || !state.inbox.is_empty() || !state.record.is_idle() {
            state.checkpoint(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        state: &mut AgentActorState<R>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Run(id) => {
                let span = tracing::info_span!("task", agent = %state.record.name, pid = %state.record.pid, task = id);
                state.run_task(id).instrument(span).await
            }
            AgentMsg::Info(reply) => {
                let _ = reply.send(state.record.info());
            }
        }
        Ok(())
    }
}

impl<R: Agent> AgentActorState<R> {
    async fn run_task(&mut self, id: TaskId) {
        let record = self.record.clone();
        let taken = {
            let mut queue = record.queue();
            match queue.tasks.get_mut(&id) {
                None => None,
                Some(task) if task.attempts >= 2 => {
                    let task = queue.tasks.remove(&id).expect("present");
                    Some(Err(task))
                }
                Some(task) => {
                    task.attempts += 1;
                    let events = match &task.reply {
                        TaskReply::Stream(events) => Some(events.clone()),
                        _ => None,
                    };
                    Some(Ok((task.input.clone(), task.attempts, task.accepted, events)))
                }
            }
        };
        let outcome = match taken {
            None => return,
            Some(Err(task)) => {
                task.finish(Err(RuntimeError::TaskFailed {
                    agent: record.name.clone(),
                    reason: "the agent failed while running it, twice".to_string(),
                }));
                self.after_task();
                return;
            }
            Some(Ok((TaskInput::Ask(prompt), attempts, accepted, events))) => {
                record.set_state(AgentState::Waiting);
                self.run_turn(id, prompt, attempts, accepted, events).await.map(Some)
            }
            Some(Ok((TaskInput::Deliver { from, text }, _, _, _))) => {
                self.role.on_message(&from, &text);
                self.inbox.push(Delivered { from, text });
                self.checkpoint(Some(id));
                Ok(None)
            }
        };
        let task = record.queue().tasks.remove(&id);
        if let Some(task) = task {
            task.finish(outcome);
        }
        self.after_task();
    }

    fn after_task(&self) {
        self.record.set_state(if self.record.is_idle() {
            AgentState::Sleeping
        } else {
            AgentState::Waiting
        });
    }

    fn assemble(&self, task: &str) -> TurnPrompt {
        let spec = &self.spec;
        let mut messages = Vec::with_capacity(2 + 2 * spec.history_turns);
        if !spec.system.is_empty() {
            messages.push(ChatMessage::system(spec.system.clone()));
        }
        let skip = self.turns.len().saturating_sub(spec.history_turns);
        for turn in &self.turns[skip..] {
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
            .count_tokens(format!("{}{MEMORY_HEADER}", self.spec.system))
            .await?
            + model.count_tokens(content.clone()).await?
            + PROMPT_OVERHEAD_TOKENS;
        let query = task.to_string();
        let mut context = ractor::call!(l1, |reply| L1Msg::Assemble {
            query,
            reserved_tokens: reserved,
            reply
        })
        .map_err(RuntimeError::messaging)??;
        // The reservation is an estimate (page separators, re-tokenised page edges); the rendered
        // prompt is what counts. Over budget, the window is shrunk by the excess: the
        // context-full interrupt, handled by eviction.
        let budget = memory.config.l1_budget_tokens;
        loop {
            let messages = self.memory_messages(&context, &content);
            let tokens = self.prompt_tokens(&messages).await?;
            if tokens <= budget || context.pages.is_empty() {
                return Ok(self.turn_prompt(messages));
            }
            let page_budget = context.tokens.saturating_sub(tokens - budget);
            context =
                ractor::call!(l1, |reply| L1Msg::Shrink { page_budget, reply }).map_err(RuntimeError::messaging)??;
        }
    }

    /// System prompt with the window's pages, then the task.
    fn memory_messages(&self, context: &ActiveContext, content: &str) -> Vec<ChatMessage> {
        let mut system = self.spec.system.clone();
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
        let kernel = self
            .system
            .kernel
            .as_ref()
            .and_then(|slot| slot.get())
            .ok_or(RuntimeError::KernelLost)?;
        let messages = messages.to_vec();
        let text = ractor::call!(kernel, |reply| KernelMsg::RenderChat { messages, reply })
            .map_err(|_| RuntimeError::KernelLost)??;
        let tokens = ractor::call!(kernel, |reply| KernelMsg::Tokenize { text, reply })
            .map_err(|_| RuntimeError::KernelLost)??;
        Ok(tokens.len())
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
        }
    }

    /// Hands a finished turn to the agent's L1 to be sliced into pages. The L1 handles messages
    /// in order, so the next turn's context already includes it; the agent does not wait.
    fn write_turn_to_memory(&self, text: String) {
        let Some(l1) = self.system.memory.l1(&self.record.name) else {
            return;
        };
        let (tx, rx) = ractor::concurrency::oneshot();
        if l1.cast(L1Msg::Ingest { text, reply: tx.into() }).is_err() {
            tracing::warn!(agent = %self.record.name, "memory is restarting; this turn was not written to it");
            return;
        }
        let agent = self.record.name.clone();
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(%agent, error = %e, "writing the turn to memory failed"),
                Err(_) => tracing::warn!(%agent, "memory stopped while writing the turn"),
            }
        });
    }

    async fn run_turn(
        &mut self,
        id: TaskId,
        task: String,
        attempts: u32,
        accepted: Instant,
        events: Option<mpsc::UnboundedSender<StreamEvent>>,
    ) -> Result<Response, RuntimeError> {
        let mut prompt = if self.spec.memory {
            self.assemble_from_memory(&task).await?
        } else {
            self.assemble(&task)
        };
        self.role.prepare(&mut prompt);
        let request = GenerateRequest {
            prompt: Prompt::Chat(prompt.messages),
            max_tokens: prompt.max_tokens,
            sampling: prompt.sampling,
            stop: prompt.stop,
            ignore_eos: false,
            priority: self.record.priority() as u8,
        };
        let scheduler = self.system.scheduler.get().ok_or_else(|| self.system.down_error())?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let record = &self.record;
        let (pid, priority) = (record.pid, record.priority());
        ractor::call!(scheduler, |reply| SchedulerMsg::Submit {
            agent: pid,
            priority,
            request,
            events: tx,
            reply
        })
        .map_err(|_| self.system.down_error())??;

        let mut first_token = None;
        let summary = loop {
            match rx.recv().await {
                Some(GenerationEvent::Token { text, .. }) => {
                    if first_token.is_none() {
                        first_token = Some(accepted.elapsed());
                        record.set_state(AgentState::Running);
                    }
                    if let (Some(events), false) = (&events, text.is_empty()) {
                        let _ = events.send(StreamEvent::Token(text));
                    }
                }
                Some(GenerationEvent::Finished { tail, summary }) => {
                    if let (Some(events), false) = (&events, tail.is_empty()) {
                        let _ = events.send(StreamEvent::Token(tail));
                    }
                    break summary;
                }
                Some(GenerationEvent::Failed(e)) => return Err(RuntimeError::Kernel(e)),
                None => return Err(RuntimeError::KernelLost),
            }
        };

        let memory_text = self
            .spec
            .memory
            .then(|| format!("User: {}\nAssistant: {}", task, summary.text));
        let turn = Turn {
            number: self.turn_count + 1,
            task,
            reply: summary.text.clone(),
            prompt_tokens: summary.prompt_tokens as u32,
            completion_tokens: summary.tokens.len() as u32,
        };
        self.role.after_turn(&turn).map_err(|reason| RuntimeError::Hook {
            agent: record.name.clone(),
            reason,
        })?;
        let used = (summary.prompt_tokens + summary.tokens.len()) as u64;
        record.tokens_used.fetch_add(used, Ordering::Relaxed);
        self.turn_count = turn.number;
        record.turns.store(self.turn_count, Ordering::Relaxed);
        self.turns.push(turn);
        self.inbox.clear();
        self.checkpoint(Some(id));
        if let Some(text) = memory_text {
            self.write_turn_to_memory(text);
        }
        Ok(Response {
            text: summary.text,
            prompt_tokens: summary.prompt_tokens,
            completion_tokens: summary.tokens.len(),
            finish_reason: summary.finish_reason,
            time_to_first_token: first_token.unwrap_or_else(|| accepted.elapsed()),
            total_time: accepted.elapsed(),
            attempts,
            turn: self.turn_count,
        })
    }

    /// Writes the checkpoint: state, history, and every queued task except `done`. A failed
    /// write is logged and counted (visible in `AgentOS::agents()`); the turn itself stands.
    fn checkpoint(&self, done: Option<TaskId>) {
        let pending: Vec<TaskInput> = self
            .record
            .queue()
            .tasks
            .iter()
            .filter(|(id, _)| Some(**id) != done)
            .map(|(_, t)| t.input.clone())
            .collect();
        let checkpoint = CheckpointRef {
            role: &self.role,
            turns: &self.turns,
            turn_count: self.turn_count,
            inbox: &self.inbox,
            tokens_used: self.record.tokens_used.load(Ordering::Relaxed),
            pending: &pending,
        };
        if let Err(e) = self.system.checkpoints.save(&self.record.name, &checkpoint) {
            self.record.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(agent = %self.record.name, error = %e, "checkpoint failed");
        }
    }
}
