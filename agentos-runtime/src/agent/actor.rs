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

use agentos_kernel::{ChatMessage, GenerateRequest, GenerationEvent, Prompt};
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
        let content = if self.inbox.is_empty() {
            task.to_string()
        } else {
            let mut content = String::from("Messages from other agents:\n");
            for m in &self.inbox {
                content.push_str(&format!("- {}: {}\n", m.from, m.text));
            }
            content.push('\n');
            content.push_str(task);
            content
        };
        messages.push(ChatMessage::user(content));
        TurnPrompt {
            messages,
            max_tokens: spec.max_tokens,
            sampling: spec.sampling.clone(),
            stop: Vec::new(),
        }
    }

    async fn run_turn(
        &mut self,
        id: TaskId,
        task: String,
        attempts: u32,
        accepted: Instant,
        events: Option<mpsc::UnboundedSender<StreamEvent>>,
    ) -> Result<Response, RuntimeError> {
        let mut prompt = self.assemble(&task);
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
