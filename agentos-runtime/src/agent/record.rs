//! `AgentRecord`: the part of an agent that outlives its actor.
//!
//! An actor's mailbox dies with it, so work sent to an agent is kept here instead: a task is
//! queued in the record (with the channel its caller listens on) *before* the actor is told to
//! run it, and removed only when the caller has its answer. A restarted actor re-reads the queue,
//! so no task is lost; a task's `attempts` count makes sure it is redelivered once, never run
//! again after a second failure. The record also keeps the counters `AgentOS::agents()` lists,
//! so listing 10,000 agents sends no messages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};

use crate::agent::actor::AgentMsg;
use crate::agent::handle::StreamEvent;
use crate::error::RuntimeError;
use crate::scheduler::Priority;
use crate::supervisor::ChildSpec;

/// A process id: unique within one AgentOS, stable across restarts (unlike the actor id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Pid(pub u64);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// What an agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    fn from_u8(v: u8) -> Self {
        match v {
            0 => AgentState::Sleeping,
            1 => AgentState::Waiting,
            2 => AgentState::Running,
            3 => AgentState::Restarting,
            _ => AgentState::Stopped,
        }
    }
}

/// One line of `AgentOS::agents()`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Checkpoint writes that failed (each also logged as an error).
    pub checkpoint_failures: u32,
}

pub(crate) type TaskId = u64;

/// What a queued task asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum TaskInput {
    /// Answer a prompt with the model.
    Ask(String),
    /// Take a message from another agent.
    Deliver { from: String, text: String },
}

/// Where a task's outcome goes.
pub(crate) enum TaskReply {
    Stream(mpsc::UnboundedSender<StreamEvent>),
    Delivered(oneshot::Sender<Result<(), RuntimeError>>),
    /// Restored from a checkpoint after a shutdown: its caller is gone, the turn is still recorded.
    Nobody,
}

pub(crate) struct Task {
    pub input: TaskInput,
    pub reply: TaskReply,
    /// How many times an actor started it.
    pub attempts: u32,
    pub accepted: Instant,
}

impl Task {
    /// Sends the task's final outcome to its caller.
    /// `Ok(None)` is the outcome of a delivery, which has no model reply.
    pub fn finish(self, outcome: Result<Option<crate::agent::Response>, RuntimeError>) {
        match self.reply {
            TaskReply::Stream(events) => {
                let outcome = outcome.and_then(|r| {
                    r.ok_or_else(|| RuntimeError::Messaging("a delivery was answered as a prompt".into()))
                });
                let _ = events.send(StreamEvent::Done(Box::new(outcome)));
            }
            TaskReply::Delivered(done) => {
                let _ = done.send(outcome.map(|_| ()));
            }
            TaskReply::Nobody => {}
        }
    }
}

pub(crate) struct TaskQueue {
    pub next_id: TaskId,
    pub tasks: BTreeMap<TaskId, Task>,
    /// The current actor; None before the first start and after the agent stopped.
    pub actor: Option<ActorRef<AgentMsg>>,
    /// Set when the agent stopped for good: no more tasks are accepted.
    pub closed: Option<RuntimeError>,
}

pub(crate) struct AgentRecord {
    pub pid: Pid,
    pub name: String,
    pub role: String,
    priority: AtomicU8,
    state: AtomicU8,
    pub turns: AtomicU64,
    pub tokens_used: AtomicU64,
    pub restarts: AtomicU32,
    pub checkpoint_failures: AtomicU32,
    queue: Mutex<TaskQueue>,
    /// How the agent supervisor (re)starts this agent; also used to rebuild the supervisor.
    pub child: Mutex<Option<ChildSpec>>,
}

impl AgentRecord {
    pub fn new(pid: Pid, name: String, role: String, priority: Priority) -> Self {
        AgentRecord {
            pid,
            name,
            role,
            priority: AtomicU8::new(priority as u8),
            state: AtomicU8::new(AgentState::Sleeping as u8),
            turns: AtomicU64::new(0),
            tokens_used: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
            checkpoint_failures: AtomicU32::new(0),
            queue: Mutex::new(TaskQueue {
                next_id: 0,
                tasks: BTreeMap::new(),
                actor: None,
                closed: None,
            }),
            child: Mutex::new(None),
        }
    }

    pub fn queue(&self) -> MutexGuard<'_, TaskQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> AgentState {
        AgentState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: AgentState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn priority(&self) -> Priority {
        Priority::from_u8(self.priority.load(Ordering::Relaxed))
    }

    pub fn set_priority(&self, priority: Priority) {
        self.priority.store(priority as u8, Ordering::Relaxed);
    }

    /// Queues a task and tells the current actor to run it. The queue lock is held across both so
    /// a restarting actor (which re-sends the queue under the same lock) cannot miss it.
    pub fn enqueue(&self, input: TaskInput, reply: TaskReply) -> Result<TaskId, RuntimeError> {
        let mut queue = self.queue();
        if let Some(closed) = &queue.closed {
            return Err(clone_closed(closed, &self.name));
        }
        let id = queue.next_id;
        queue.next_id += 1;
        queue.tasks.insert(
            id,
            Task {
                input,
                reply,
                attempts: 0,
                accepted: Instant::now(),
            },
        );
        if self.state() == AgentState::Sleeping {
            self.set_state(AgentState::Waiting);
        }
        // A dead actor refuses the message; its successor re-reads the queue.
        if let Some(actor) = &queue.actor {
            let _ = actor.cast(AgentMsg::Run(id));
        }
        Ok(id)
    }

    /// Closes the record for good and fails everything still queued with `reason`.
    pub fn close(&self, reason: RuntimeError) {
        let failed: Vec<(Task, RuntimeError)> = {
            let mut guard = self.queue();
            let queue = &mut *guard;
            queue.actor = None;
            let closed = queue.closed.get_or_insert(reason);
            let errors = std::iter::repeat_with(|| clone_closed(closed, &self.name));
            let tasks = std::mem::take(&mut queue.tasks);
            tasks.into_values().zip(errors).collect()
        };
        self.set_state(AgentState::Stopped);
        for (task, error) in failed {
            task.finish(Err(error));
        }
    }

    /// A snapshot for `AgentOS::agents()` (no message to the actor).
    pub fn info(&self) -> AgentInfo {
        AgentInfo {
            pid: self.pid,
            name: self.name.clone(),
            role: self.role.clone(),
            priority: self.priority(),
            state: self.state(),
            turns: self.turns.load(Ordering::Relaxed),
            tokens_used: self.tokens_used.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            queued_tasks: self.queue().tasks.len(),
            checkpoint_failures: self.checkpoint_failures.load(Ordering::Relaxed),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.queue().tasks.is_empty()
    }
}

/// The error queued callers get once an agent is closed (errors are not `Clone`: rebuild it).
fn clone_closed(closed: &RuntimeError, name: &str) -> RuntimeError {
    match closed {
        RuntimeError::ShuttingDown => RuntimeError::ShuttingDown,
        RuntimeError::SystemDown { reason } => RuntimeError::SystemDown { reason: reason.clone() },
        _ => RuntimeError::AgentStopped {
            agent: name.to_string(),
        },
    }
}

/// Shared handle to a record.
pub(crate) type SharedRecord = Arc<AgentRecord>;
