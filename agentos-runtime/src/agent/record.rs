//! `AgentRecord`: the part of an agent that outlives its actor.
//!
//! An actor's mailbox dies with it, so work sent to an agent is kept here instead: a task is
//! written to the journal, then queued in the record (with the channel its caller listens on),
//! and only then is the actor told to run it; it leaves the record when its outcome is recorded
//! and its caller answered. A restarted actor re-reads the queue, so no task is lost; a task's
//! `attempts` (also in the journal) make sure it is not run forever when it keeps failing its
//! agent. The record also keeps the counters `AgentOS::agents()` lists, so listing 10,000 agents
//! sends no messages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ractor::ActorRef;
use tokio::sync::{mpsc, watch};

use crate::agent::journal::{Completion, Journal};
use agentos_security::capability::Capabilities;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentMsg, Response, StreamEvent, TaskFailure, TaskInput, TaskOutcome};
use crate::error::RuntimeError;
use crate::supervisor::ChildSpec;
use crate::types::{AgentInfo, AgentState, Pid, Priority, TaskId};

/// Where a task's outcome goes.
pub(crate) enum TaskReply {
    Stream(mpsc::UnboundedSender<StreamEvent>),
    /// Nobody waits: a delivered message (its sender had its acknowledgement when it was
    /// journaled), or a task recovered from the journal after a crash (its caller is gone; its
    /// outcome is recorded for `AgentOS::task_result`).
    Nobody,
}

pub(crate) struct Task {
    pub input: TaskInput,
    pub reply: TaskReply,
    /// Starts that count towards the attempt limit (a start a supervisor's stop cut short is
    /// given back).
    pub attempts: u32,
    /// Times an actor started it in this process (a stream is told each restart).
    pub starts: u32,
    pub accepted: Instant,
    /// Its caller cancelled it while it ran: a start after a restart fails it at once.
    pub cancelled: bool,
}

impl Task {
    /// Sends the task's final outcome to its caller. `Ok(None)` is the outcome of a delivery,
    /// which has no model reply.
    pub fn finish(self, outcome: Result<Option<Response>, RuntimeError>) {
        match self.reply {
            TaskReply::Stream(events) => {
                let outcome = outcome.and_then(|r| {
                    r.ok_or_else(|| RuntimeError::Messaging("a delivery was answered as a prompt".into()))
                });
                let _ = events.send(StreamEvent::Done(Box::new(outcome)));
            }
            TaskReply::Nobody => {}
        }
    }
}

pub(crate) struct TaskQueue {
    pub tasks: BTreeMap<TaskId, Task>,
    /// The current actor; None before the first start and after the agent stopped.
    pub actor: Option<ActorRef<AgentMsg>>,
    /// Set when the agent stopped for good: no more tasks are accepted.
    pub closed: Option<RuntimeError>,
    /// The task an actor is running now.
    pub running: Option<TaskId>,
    /// Cancels the running task's generation (a new token per start).
    pub cancel: CancellationToken,
}

/// What [`AgentRecord::cancel`] found.
pub(crate) enum Cancel {
    /// The task runs (or ran and waits for its agent's restart): it is marked, its token is
    /// cancelled, and it ends with `RuntimeError::Cancelled`.
    Running,
    /// The task was queued and is now out of the queue: record its outcome and answer it.
    Queued(Task),
    /// No such task is queued or running (it finished, or is not this agent's).
    NotFound,
}

pub(crate) struct AgentRecord {
    pub pid: Pid,
    pub name: String,
    pub role: String,
    /// The system calls and tools the agent may use (its role's `tools`).
    pub tools: Vec<String>,
    /// What its calls may touch (fixed for its life: see [`security`](crate::security)).
    pub capabilities: Arc<Capabilities>,
    /// Agents it has started with `spawn_agent` (counted against its spawn grant).
    pub children: AtomicU32,
    /// Spawns left to the tree of agents it belongs to: shared with the agent the application
    /// started at its root and every descendant, so a chain of children cannot multiply it.
    pub spawn_budget: Arc<AtomicU32>,
    priority: AtomicU8,
    state: AtomicU8,
    pub turns: AtomicU64,
    pub tokens_used: AtomicU64,
    pub restarts: AtomicU32,
    pub journal_failures: AtomicU32,
    queue: Mutex<TaskQueue>,
    /// How many tasks are queued (waiters for an idle agent watch it).
    queued: watch::Sender<usize>,
    /// How the agent supervisor (re)starts this agent; also used to rebuild the supervisor.
    pub child: Mutex<Option<ChildSpec>>,
    /// Held while this agent publishes: its publications are delivered in sequence order.
    pub publishing: tokio::sync::Mutex<()>,
}

impl AgentRecord {
    pub fn new(
        pid: Pid,
        name: String,
        role: String,
        tools: Vec<String>,
        capabilities: Capabilities,
        spawn_budget: Arc<AtomicU32>,
        priority: Priority,
    ) -> Self {
        AgentRecord {
            pid,
            name,
            role,
            tools,
            capabilities: Arc::new(capabilities),
            children: AtomicU32::new(0),
            spawn_budget,
            priority: AtomicU8::new(priority as u8),
            state: AtomicU8::new(AgentState::Sleeping as u8),
            turns: AtomicU64::new(0),
            tokens_used: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
            journal_failures: AtomicU32::new(0),
            queue: Mutex::new(TaskQueue {
                tasks: BTreeMap::new(),
                actor: None,
                closed: None,
                running: None,
                cancel: CancellationToken::new(),
            }),
            queued: watch::Sender::new(0),
            child: Mutex::new(None),
            publishing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn queue(&self) -> MutexGuard<'_, TaskQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> AgentState {
        AgentState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: AgentState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn priority(&self) -> Priority {
        Priority::from_u8(self.priority.load(Ordering::Relaxed))
    }

    pub fn set_priority(&self, priority: Priority) {
        self.priority.store(priority as u8, Ordering::Relaxed);
    }

    /// The error a caller gets when the record no longer takes tasks.
    pub fn check_open(&self) -> Result<(), RuntimeError> {
        match &self.queue().closed {
            Some(closed) => Err(clone_closed(closed, &self.name)),
            None => Ok(()),
        }
    }

    /// Queues a journaled task and tells the current actor to run it. The queue lock is held
    /// across both so a restarting actor (which re-sends the queue under the same lock) cannot
    /// miss it.
    pub fn enqueue(&self, id: TaskId, input: TaskInput, reply: TaskReply, attempts: u32) -> Result<(), RuntimeError> {
        let mut queue = self.queue();
        if let Some(closed) = &queue.closed {
            return Err(clone_closed(closed, &self.name));
        }
        queue.tasks.insert(
            id,
            Task {
                input,
                reply,
                attempts,
                starts: 0,
                accepted: Instant::now(),
                cancelled: false,
            },
        );
        self.queued.send_replace(queue.tasks.len());
        if self.state() == AgentState::Sleeping {
            self.set_state(AgentState::Waiting);
        }
        // A dead actor refuses the message; its successor re-reads the queue.
        if let Some(actor) = &queue.actor {
            let _ = actor.cast(AgentMsg::Run(id));
        }
        Ok(())
    }

    /// Takes the oldest queued delivery (not the running task) out of the queue, for `recv_msg`:
    /// its id, sender and text. The agent's state is left alone (it is running a turn).
    pub fn take_delivery(&self) -> Option<(TaskId, String, String)> {
        let mut queue = self.queue();
        let running = queue.running;
        let id = queue
            .tasks
            .iter()
            .find(|(id, task)| Some(**id) != running && matches!(task.input, TaskInput::Deliver { .. }))
            .map(|(id, _)| *id)?;
        let task = queue.tasks.remove(&id)?;
        self.queued.send_replace(queue.tasks.len());
        match task.input {
            TaskInput::Deliver { from, text } => Some((id, from, text)),
            TaskInput::Ask(_) | TaskInput::AskJson { .. } => None,
        }
    }

    /// Cancels task `id`: the running one through its token (and a mark on the task, which a
    /// start after a restart reads), a queued one by taking it out. A delivery that is being
    /// taken cannot be cancelled (it is done in one step).
    pub fn cancel(&self, id: TaskId) -> Cancel {
        let mut queue = self.queue();
        let running = queue.running == Some(id);
        let Some(task) = queue.tasks.get_mut(&id) else {
            return Cancel::NotFound;
        };
        let prompt = matches!(task.input, TaskInput::Ask(_) | TaskInput::AskJson { .. });
        if running || task.starts > 0 {
            // Running, or started before and waiting for its agent's restart.
            if !prompt {
                return Cancel::NotFound;
            }
            task.cancelled = true;
            if running {
                queue.cancel.cancel();
            }
            return Cancel::Running;
        }
        let task = queue.tasks.remove(&id).expect("found above");
        if queue.tasks.is_empty() && self.state() == AgentState::Waiting {
            self.set_state(AgentState::Sleeping);
        }
        self.queued.send_replace(queue.tasks.len());
        Cancel::Queued(task)
    }

    /// Changes whenever a task is queued or taken (a `recv_msg` waits on it).
    pub fn watch_queue(&self) -> watch::Receiver<usize> {
        self.queued.subscribe()
    }

    /// Takes task `id` out of the queue, leaving the agent's state as the rest of the queue
    /// says: done before its caller is answered, so a caller that sees its answer also sees
    /// the agent idle (or busy with the next task).
    pub fn take(&self, id: TaskId) -> Option<Task> {
        let mut queue = self.queue();
        let task = queue.tasks.remove(&id);
        if queue.running == Some(id) {
            queue.running = None;
        }
        if self.state() != AgentState::Stopped {
            self.set_state(if queue.tasks.is_empty() {
                AgentState::Sleeping
            } else {
                AgentState::Waiting
            });
        }
        // Waiters see the new state when they wake.
        self.queued.send_replace(queue.tasks.len());
        task
    }

    /// Closes the record for good: no task is accepted any more, and every queued task (but the
    /// one running, when `keep_running`) is taken out to be failed with `reason`.
    pub fn close(&self, reason: RuntimeError, keep_running: bool) -> Vec<(TaskId, Task, RuntimeError)> {
        let failed: Vec<(TaskId, Task, RuntimeError)> = {
            let mut guard = self.queue();
            let queue = &mut *guard;
            let keep = queue.running.filter(|_| keep_running);
            if !keep_running {
                queue.actor = None;
            }
            let closed = queue.closed.get_or_insert(reason);
            let ids: Vec<TaskId> = queue.tasks.keys().copied().filter(|id| Some(*id) != keep).collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let task = queue.tasks.remove(&id).expect("listed above");
                out.push((id, task, clone_closed(closed, &self.name)));
            }
            self.queued.send_replace(queue.tasks.len());
            out
        };
        if !keep_running {
            self.set_state(AgentState::Stopped);
        }
        failed
    }

    /// Waits until task `id` is no longer queued.
    pub async fn finished(&self, id: TaskId) {
        let mut queued = self.queued.subscribe();
        while self.queue().tasks.contains_key(&id) {
            if queued.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until no task is queued.
    pub async fn idle(&self) {
        let mut queued = self.queued.subscribe();
        let _ = queued.wait_for(|n| *n == 0).await;
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
            journal_failures: self.journal_failures.load(Ordering::Relaxed),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.queue().tasks.is_empty()
    }
}

/// Records each task's error as its outcome, then answers its caller: a task answered with an
/// error is never run later, not even by a new process reading the journal.
pub(crate) async fn fail_tasks(journal: &Journal, record: &AgentRecord, tasks: Vec<(TaskId, Task, RuntimeError)>) {
    let outcomes: Vec<TaskOutcome> = tasks
        .iter()
        .map(|(_, _, error)| TaskOutcome::Failed(TaskFailure::from(error)))
        .collect();
    // Submitted together, they share one commit.
    let writes = tasks
        .iter()
        .zip(&outcomes)
        .map(|((id, _, _), outcome)| journal.complete(*id, &record.name, outcome, Completion::none()));
    let results = futures::future::join_all(writes).await;
    for ((id, task, error), result) in tasks.into_iter().zip(results) {
        if let Err(e) = result {
            record.journal_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(agent = %record.name, task = %id, error = %e, "could not record a failed task");
        }
        task.finish(Err(error));
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
