//! `AgentHandle`: how code outside an agent talks to it.
//!
//! A handle stays valid across restarts (it addresses the agent's record, not one actor
//! instance) and is cheap to clone.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use agentos_kernel::FinishReason;
use agentos_memory::{ActiveContext, L1Msg, L1Stats, PageId, PageView};
use futures::Stream;
use ractor::{ActorRef, RpcReplyPort};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::agent::dispatch::{Caller, dispatch};
use crate::agent::journal::Completion;
use crate::agent::record::{Cancel, SharedRecord, TaskReply, fail_tasks};
use crate::agent::{AgentMsg, Response, StreamEvent, TaskFailure, TaskInput, TaskOutcome, Turn};
use crate::error::{Result, RuntimeError};
use crate::rpc;
use crate::supervisor::SupervisorMsg;
use crate::sync::team::sync_call;
use crate::sync::{Area, Cas, Contribution, Entry, Lease, Published, Put, SyncMsg, TopicFilter};
use crate::syscall::{Syscall, SyscallError};
use crate::system::System;
use crate::types::{AgentInfo, AgentState, Pid, Priority, TaskId};

/// A live reply: a [`Stream`] of [`StreamEvent`]s ending with `Done`.
pub struct TokenStream {
    task: TaskId,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    system: Arc<System>,
    agent: String,
}

impl TokenStream {
    /// The task's id: its outcome is recorded under it (see
    /// [`AgentOS::task_result`](crate::AgentOS::task_result)), even if this stream is dropped.
    pub fn task_id(&self) -> TaskId {
        self.task
    }

    /// Waits for the end and returns the reply, ignoring the tokens.
    pub async fn response(mut self) -> Result<Response> {
        while let Some(event) = self.events.recv().await {
            if let StreamEvent::Done(outcome) = event {
                return *outcome;
            }
        }
        Err(self.gone())
    }

    fn gone(&self) -> RuntimeError {
        match self.system.down_reason() {
            Some(reason) => RuntimeError::SystemDown { reason },
            None => RuntimeError::AgentStopped {
                agent: self.agent.clone(),
            },
        }
    }
}

impl Stream for TokenStream {
    type Item = StreamEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        self.events.poll_recv(cx)
    }
}

/// A reference to a running agent. See the crate docs for an example.
#[derive(Clone)]
pub struct AgentHandle {
    record: SharedRecord,
    system: Arc<System>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("pid", &self.record.pid)
            .field("name", &self.record.name)
            .finish()
    }
}

impl AgentHandle {
    pub(crate) fn new(record: SharedRecord, system: Arc<System>) -> Self {
        AgentHandle { record, system }
    }

    pub(crate) fn record(&self) -> &SharedRecord {
        &self.record
    }

    pub fn pid(&self) -> Pid {
        self.record.pid
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The system calls and tools the agent may call (its role's `tools`).
    pub fn tools(&self) -> &[String] {
        &self.record.tools
    }

    /// A snapshot of the agent's status, read without messaging it.
    pub fn info(&self) -> AgentInfo {
        self.record.info()
    }

    /// The agent's status, answered by the agent actor itself (a round trip through its mailbox:
    /// it waits until the agent finishes its current task, up to `RuntimeConfig::call_timeout`).
    /// While the agent is being restarted this waits for the new instance.
    pub async fn status(&self) -> Result<AgentInfo> {
        let timeout = self.system.call_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let actor = self.record.queue().actor.clone().ok_or_else(|| self.stopped())?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let gone = || RuntimeError::AgentStopped {
                agent: self.record.name.clone(),
            };
            match rpc::call(&actor, "the agent (status)", left, AgentMsg::Info, gone).await {
                Ok(info) => return Ok(info),
                Err(RuntimeError::AgentStopped { .. }) if self.record.state() != AgentState::Stopped => {
                    // The instance died under us; its supervisor is starting the next one.
                    if tokio::time::Instant::now() >= deadline {
                        return Err(RuntimeError::Timeout {
                            what: "the agent (status, while it restarts)".into(),
                            after: timeout,
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(RuntimeError::AgentStopped { .. }) => return Err(self.stopped()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Asks the agent to answer `prompt` and waits for the whole reply.
    pub async fn ask(&self, prompt: impl Into<String>) -> Result<Response> {
        self.stream(prompt).await?.response().await
    }

    /// Asks the agent to answer `prompt` with a value of type `T`: the reply is constrained by
    /// the kernel's grammar to JSON matching `T`'s JSON Schema (derive `schemars::JsonSchema`),
    /// then deserialised. The turn makes no tool calls. A reply cut short by the agent's
    /// `max_tokens` is incomplete JSON: the error says so (give the role more tokens).
    ///
    /// ```no_run
    /// # async fn example(agent: agentos_runtime::AgentHandle) -> agentos_runtime::Result<()> {
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Verdict {
    ///     accept: bool,
    ///     reason: String,
    /// }
    /// let verdict: Verdict = agent.ask_json("Should we accept the proposal? Say why.").await?;
    /// # Ok(()) }
    /// ```
    pub async fn ask_json<T: DeserializeOwned + JsonSchema>(&self, prompt: impl Into<String>) -> Result<T> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).map_err(|e| RuntimeError::BadJson {
            agent: self.record.name.clone(),
            reason: format!("the schema of the type cannot be written: {e}"),
        })?;
        let response = self.ask_with_schema(prompt, schema).await?;
        serde_json::from_str(&response.text).map_err(|e| RuntimeError::BadJson {
            agent: self.record.name.clone(),
            reason: match response.finish_reason {
                FinishReason::MaxTokens => format!("the reply was cut at max_tokens ({e})"),
                FinishReason::GrammarFailed => format!("the grammar engine broke off the reply ({e})"),
                _ => e.to_string(),
            },
        })
    }

    /// Asks the agent to answer `prompt` with JSON matching `schema` (constrained decoding);
    /// the response's text is that JSON.
    pub async fn ask_with_schema(&self, prompt: impl Into<String>, schema: serde_json::Value) -> Result<Response> {
        let input = TaskInput::AskJson {
            prompt: prompt.into(),
            schema: schema.to_string(),
        };
        self.stream_task(input).await?.response().await
    }

    /// Asks the agent to answer `prompt`, streaming the reply token by token. Returns once the
    /// task is written to the journal (it survives a crash from then on). Dropping the stream
    /// does not cancel the task ([`cancel`](Self::cancel) does): the turn still completes and is recorded in the agent's history
    /// and the journal (it is the agent's work, not only the caller's).
    pub async fn stream(&self, prompt: impl Into<String>) -> Result<TokenStream> {
        self.stream_task(TaskInput::Ask(prompt.into())).await
    }

    /// Journals `input` for this agent and returns the stream of its reply.
    async fn stream_task(&self, input: TaskInput) -> Result<TokenStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = self.submit(&self.record, input, TaskReply::Stream(tx)).await?;
        Ok(TokenStream {
            task,
            events: rx,
            system: self.system.clone(),
            agent: self.record.name.clone(),
        })
    }

    /// Sends `text` from this agent to `to`. Returns once the message is written to the journal
    /// (it survives a crash from then on); `to` takes it after the task it is running, and its
    /// model sees it at the start of its next turn. The returned task id records the delivery.
    pub async fn send(&self, to: &AgentHandle, text: impl Into<String>) -> Result<TaskId> {
        let input = TaskInput::Deliver {
            from: self.record.name.clone(),
            text: text.into(),
        };
        self.submit(&to.record, input, TaskReply::Nobody).await
    }

    /// Delivers `text` to this agent as a message from `from` (a system sender such as `sync`),
    /// through the same durable inbox as [`send`](Self::send).
    pub(crate) async fn deliver(&self, from: &str, text: String) -> Result<TaskId> {
        let input = TaskInput::Deliver {
            from: from.to_string(),
            text,
        };
        self.submit(&self.record, input, TaskReply::Nobody).await
    }

    /// The blackboard entry under `key` in `area` (and it becomes this agent's context for its
    /// next write there: see [`blackboard`](agentos_sync::blackboard)).
    pub async fn read_board(&self, area: &Area, key: &str) -> Result<Option<Entry>> {
        let (area, key, reader) = (area.clone(), key.to_string(), self.record.name.clone());
        let get = |reply| SyncMsg::Get {
            area,
            key,
            reader,
            reply,
        };
        Ok(sync_call(&self.system, "the sync actor (blackboard)", get).await??)
    }

    /// Entries of `area` whose key starts with `prefix`, in key order.
    pub async fn list_board(&self, area: &Area, prefix: &str) -> Result<Vec<Entry>> {
        let (area, prefix) = (Some((area.clone(), self.record.name.clone())), prefix.to_string());
        let list = |reply| SyncMsg::List { area, prefix, reply };
        Ok(sync_call(&self.system, "the sync actor (blackboard)", list).await??)
    }

    /// Writes `value` under `key` in `area` as this agent. A write concurrent with one this
    /// agent has not read is kept beside it as a conflict ([`Put::Conflict`]), never lost.
    pub async fn write_board(&self, area: &Area, key: &str, value: serde_json::Value) -> Result<Put> {
        let (area, key, author) = (area.clone(), key.to_string(), self.record.name.clone());
        let put = |reply| SyncMsg::Put {
            area,
            key,
            value,
            author,
            reply,
        };
        Ok(sync_call(&self.system, "the sync actor (blackboard)", put).await??)
    }

    /// Writes `value` under `key` only if the entry is at Lamport version `expected` (`None`:
    /// only if absent) and not in conflict.
    pub async fn cas_board(
        &self,
        area: &Area,
        key: &str,
        expected: Option<u64>,
        value: serde_json::Value,
    ) -> Result<Cas> {
        let (area, key, author) = (area.clone(), key.to_string(), self.record.name.clone());
        let cas = |reply| SyncMsg::Cas {
            area,
            key,
            expected,
            value,
            author,
            reply,
        };
        Ok(sync_call(&self.system, "the sync actor (blackboard)", cas).await??)
    }

    /// Joins `group`, whose blackboard area only members read and write.
    pub async fn join_group(&self, group: &str) -> Result<()> {
        let (group, agent) = (group.to_string(), self.record.name.clone());
        let join = |reply| SyncMsg::Join { group, agent, reply };
        Ok(sync_call(&self.system, "the sync actor (groups)", join).await??)
    }

    /// Subscribes this agent to the topics `filter` takes: each matching publication is
    /// delivered to it as a message from `<publisher>@<topic>`. Returns the subscription's id.
    pub async fn subscribe(&self, filter: TopicFilter) -> Result<u64> {
        let subscriber = self.record.name.clone();
        let sub = |reply| SyncMsg::Subscribe {
            subscriber,
            filter,
            reply,
        };
        Ok(sync_call(&self.system, "the sync actor (subscribe)", sub).await??)
    }

    pub async fn unsubscribe(&self, id: u64) -> Result<bool> {
        let subscriber = self.record.name.clone();
        let unsub = |reply| SyncMsg::Unsubscribe { subscriber, id, reply };
        Ok(sync_call(&self.system, "the sync actor (unsubscribe)", unsub).await??)
    }

    /// Publishes `text` on `topic`: it is written to every matching subscriber's durable inbox
    /// (as [`send`](Self::send) does) before this returns. Publications of one publisher reach
    /// each subscriber in the order they were published.
    pub async fn publish(&self, topic: &str, text: impl Into<String>) -> Result<Published> {
        // One publication of this agent at a time: sequence order is delivery order.
        let _order = self.record.publishing.lock().await;
        let (publisher, topic, text) = (self.record.name.clone(), topic.to_string(), text.into());
        let publish = |reply| SyncMsg::Publish {
            publisher,
            topic,
            text,
            reply,
        };
        let (publication, recipients) = sync_call(&self.system, "the sync actor (publish)", publish).await??;
        let from = format!("{}@{}", publication.publisher, publication.topic);
        let mut published = Published {
            topic: publication.topic.clone(),
            seq: publication.seq,
            delivered: Vec::new(),
            missed: Vec::new(),
        };
        for name in recipients {
            let Some(record) = self.system.record(&name) else {
                published.missed.push((name, "not running".into()));
                continue;
            };
            let target = AgentHandle::new(record, self.system.clone());
            match target.deliver(&from, publication.text.clone()).await {
                Ok(task) => published.delivered.push((name, task)),
                Err(e) => published.missed.push((name, e.to_string())),
            }
        }
        Ok(published)
    }

    /// Takes an exclusive lease on `resource` for `term`, waiting up to `wait` behind earlier
    /// askers (served in order). A lease ends when released, when its term passes, or when
    /// this agent crashes or stops.
    pub async fn lease(&self, resource: &str, term: Duration, wait: Duration) -> Result<Lease> {
        static TICKETS: AtomicU64 = AtomicU64::new(1);
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        let actor = self.system.sync.get().ok_or_else(|| self.system.down_error())?;
        let (resource, holder) = (resource.to_string(), self.record.name.clone());
        let term_ms = term.as_millis().min(u64::MAX as u128) as u64;
        let acquire = |reply| SyncMsg::Acquire {
            resource: resource.clone(),
            holder,
            term_ms,
            ticket,
            reply,
        };
        let what = format!("the lease on {resource}");
        let gone = || self.system.down_error();
        match rpc::call(&actor, &what, wait.max(Duration::from_millis(1)), acquire, gone).await {
            Ok(lease) => Ok(lease?),
            Err(e) => {
                let _ = actor.cast(SyncMsg::CancelWait { resource, ticket });
                Err(e)
            }
        }
    }

    /// Ends `lease` (held by this agent); the next waiter gets it.
    pub async fn release(&self, lease: &Lease) -> Result<()> {
        let (resource, id, holder) = (lease.resource.clone(), lease.id, self.record.name.clone());
        let release = |reply| SyncMsg::Release {
            resource,
            id,
            holder,
            reply,
        };
        Ok(sync_call(&self.system, "the sync actor (release)", release).await??)
    }

    /// Journals a task for `target`, then queues it there.
    async fn submit(&self, target: &SharedRecord, input: TaskInput, reply: TaskReply) -> Result<TaskId> {
        self.system.check_accepting()?;
        target.check_open()?;
        let journal = &self.system.journal;
        let id = journal.next_id();
        journal.append(id, &target.name, &input).await?;
        // A message is part of what its recipient perceived: the next sync pulse merges it
        // (not the pulses' own digests).
        if let TaskInput::Deliver { from, text } = &input
            && from != "sync"
            && let Some(sync) = self.system.sync.get()
        {
            let perception = Contribution {
                agent: target.name.clone(),
                round: target.turns.load(std::sync::atomic::Ordering::Relaxed) as u32,
                text: text.clone(),
                from: Some(from.clone()),
            };
            let _ = sync.cast(SyncMsg::Perceived {
                agent: target.name.clone(),
                perception,
            });
        }
        if let Err(e) = target.enqueue(id, input, reply, 0) {
            // Closed while the task was being written: record that it will not run.
            let outcome = TaskOutcome::Failed(TaskFailure::from(&e));
            if let Err(j) = journal.complete(id, &target.name, &outcome, Completion::none()).await {
                tracing::error!(task = %id, error = %j, "could not record a refused task");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Cancels task `task` of this agent. A running turn ends without waiting for its
    /// generation: the generation is cancelled in the kernel at its next token, which frees its
    /// KV blocks, or before it is prefilled if it still waits in the scheduler or the kernel's
    /// queue; a tool call in progress finishes, but no step follows. A queued task is taken out
    /// of the queue. Either way the task's outcome is recorded as failed with
    /// [`RuntimeError::Cancelled`], which is also what its caller gets, and it is not run
    /// again (not after a restart either). Returns `false` when the task is neither queued nor
    /// running (it already finished, belongs to another agent, or is a message being taken).
    pub async fn cancel(&self, task: TaskId) -> Result<bool> {
        match self.record.cancel(task) {
            Cancel::Running => Ok(true),
            Cancel::NotFound => Ok(false),
            Cancel::Queued(queued) => {
                let error = RuntimeError::Cancelled {
                    agent: self.record.name.clone(),
                };
                fail_tasks(&self.system.journal, &self.record, vec![(task, queued, error)]).await;
                Ok(true)
            }
        }
    }

    /// Changes the agent's scheduling class from its next request on.
    pub fn set_priority(&self, priority: Priority) {
        self.record.set_priority(priority);
    }

    /// Stops the agent for good: it finishes the task it is running, and stops; tasks still
    /// queued are answered with [`RuntimeError::AgentStopped`] (recorded so, they never run).
    /// Its checkpoint and history stay in the journal: an agent spawned later under the same
    /// name resumes from them.
    pub async fn stop(&self) -> Result<()> {
        let record = &self.record;
        let queued = record.close(
            RuntimeError::AgentStopped {
                agent: record.name.clone(),
            },
            true,
        );
        fail_tasks(&self.system.journal, record, queued).await;
        // The task running goes on to its end, outside the supervisor, which stays free.
        record.idle().await;
        if let Some(supervisor) = self.system.agent_supervisor.get() {
            let id = record.name.clone();
            let stop = |reply: RpcReplyPort<bool>| SupervisorMsg::StopChild(id, reply);
            let gone = || self.system.down_error();
            rpc::call(
                &supervisor,
                "the agent supervisor (stop)",
                self.system.call_timeout,
                stop,
                gone,
            )
            .await?;
        }
        let late = record.close(
            RuntimeError::AgentStopped {
                agent: record.name.clone(),
            },
            false,
        );
        fail_tasks(&self.system.journal, record, late).await;
        if let Some(scheduler) = self.system.scheduler.get() {
            let _ = scheduler.cast(crate::scheduler::SchedulerMsg::Forget(record.pid));
        }
        self.system.forget_agent(record);
        self.system.memory.stop_l1(&record.name).await;
        if let Some(sync) = self.system.sync.get() {
            let _ = sync.cast(SyncMsg::AgentGone {
                agent: record.name.clone(),
                stopped: true,
            });
        }
        // The start function refers to the record: let go of it, or the two keep each other.
        record.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    /// The agent's completed turns numbered `from..to` (1-based, across its whole life: older
    /// turns than its prompts show are kept in the journal's history).
    pub async fn history(&self, from: u64, to: u64) -> Result<Vec<Turn>> {
        self.system.journal.history(&self.record.name, from, to).await
    }

    /// Makes system call `call` as this agent, through the same checkpoint and drivers as the
    /// calls its model makes (a call not among its `tools` is refused). Returns the JSON result
    /// the model would see.
    pub async fn call(&self, call: Syscall) -> std::result::Result<serde_json::Value, SyscallError> {
        let caller = Caller {
            record: &self.record,
            system: &self.system,
        };
        dispatch(&caller, &call).await
    }

    /// Writes `text` into the agent's memory: it is sliced into pages (from the model's
    /// attention), embedded and stored durably; returns the page ids once they are on disk.
    /// Needs an agent declared with `#[agent(memory = true)]`.
    pub async fn remember(&self, text: impl Into<String>) -> Result<Vec<PageId>> {
        let text = text.into();
        Ok(self
            .ask_memory("the agent's memory (remember)", |reply| L1Msg::Ingest { text, reply })
            .await??)
    }

    /// The `k` pages of the agent's memory most relevant to `query`, from any tier (the active
    /// window, deep context or disk), best first. Reading moves nothing between tiers.
    pub async fn recall(&self, query: impl Into<String>, k: usize) -> Result<Vec<PageView>> {
        let query = query.into();
        Ok(self
            .ask_memory("the agent's memory (recall)", |reply| L1Msg::Recall { query, k, reply })
            .await??)
    }

    /// Starts a memory turn by hand: pages relevant to `query` are faulted into the agent's L1
    /// window and the least important evicted, leaving `reserved_tokens` of the L1 budget free.
    /// Returns the window. (The agent does this itself at the start of every task.)
    pub async fn page_in(&self, query: impl Into<String>, reserved_tokens: usize) -> Result<ActiveContext> {
        let query = query.into();
        let assemble = |reply| L1Msg::Assemble {
            query,
            reserved_tokens,
            reply,
        };
        Ok(self.ask_memory("the agent's memory (page in)", assemble).await??)
    }

    /// The L1 window the agent's latest turn was given (its pages are what the model saw).
    pub async fn last_context(&self) -> Result<Option<ActiveContext>> {
        self.ask_memory("the agent's memory (last context)", L1Msg::LastContext)
            .await
    }

    /// Counters of the agent's active window (pages, tokens, faults, evictions, interrupts).
    pub async fn memory_stats(&self) -> Result<L1Stats> {
        self.ask_memory("the agent's memory (stats)", L1Msg::Stats).await
    }

    /// A call to the agent's L1, within `RuntimeConfig::memory_timeout`.
    async fn ask_memory<T: Send + 'static>(&self, what: &str, msg: impl FnOnce(RpcReplyPort<T>) -> L1Msg) -> Result<T> {
        let l1 = self.l1()?;
        let gone = || RuntimeError::Messaging("the agent's memory is restarting; try again".into());
        rpc::call(&l1, what, self.system.memory_timeout, msg, gone).await
    }

    fn l1(&self) -> Result<ActorRef<L1Msg>> {
        self.system
            .memory
            .l1(&self.record.name)
            .ok_or_else(|| RuntimeError::NoMemory {
                agent: self.record.name.clone(),
            })
    }

    fn stopped(&self) -> RuntimeError {
        match self.system.down_reason() {
            Some(reason) => RuntimeError::SystemDown { reason },
            None => RuntimeError::AgentStopped {
                agent: self.record.name.clone(),
            },
        }
    }
}
