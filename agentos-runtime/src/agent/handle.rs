//! `AgentHandle`: how code outside an agent talks to it.
//!
//! A handle stays valid across restarts (it addresses the agent's record, not one actor
//! instance) and is cheap to clone.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentos_memory::{ActiveContext, L1Msg, L1Stats, PageId, PageView};
use futures::Stream;
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};

use crate::agent::Response;
use crate::agent::actor::AgentMsg;
use crate::agent::record::{AgentInfo, AgentState, Pid, SharedRecord, TaskInput, TaskReply};
use crate::error::{Result, RuntimeError};
use crate::os::System;
use crate::scheduler::Priority;
use crate::supervisor::SupervisorMsg;

/// What [`AgentHandle::stream`] yields.
#[derive(Debug)]
pub enum StreamEvent {
    /// Text that became final with one generated token.
    Token(String),
    /// The agent failed during this task and was restarted; the task is being redelivered and
    /// the text streamed so far is void (the reply starts over).
    Restarted,
    /// The end: the whole reply, or why there is none.
    Done(Box<Result<Response>>),
}

/// A live reply: a [`Stream`] of [`StreamEvent`]s ending with `Done`.
pub struct TokenStream {
    events: mpsc::UnboundedReceiver<StreamEvent>,
    system: Arc<System>,
    agent: String,
}

impl TokenStream {
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

    pub fn pid(&self) -> Pid {
        self.record.pid
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// A snapshot of the agent's status, read without messaging it.
    pub fn info(&self) -> AgentInfo {
        self.record.info()
    }

    /// The agent's status, answered by the agent actor itself (a round trip through its mailbox:
    /// it waits until the agent finishes its current task).
    /// While the agent is being restarted this waits for the new instance (up to 10 s).
    pub async fn status(&self) -> Result<AgentInfo> {
        for _ in 0..1000 {
            let actor = self.record.queue().actor.clone().ok_or_else(|| self.stopped())?;
            if let Ok(info) = ractor::call!(actor, AgentMsg::Info) {
                return Ok(info);
            }
            if self.record.state() == AgentState::Stopped {
                break;
            }
            // The instance died under us; its supervisor is starting the next one.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(self.stopped())
    }

    /// Asks the agent to answer `prompt` and waits for the whole reply.
    pub async fn ask(&self, prompt: impl Into<String>) -> Result<Response> {
        self.stream(prompt)?.response().await
    }

    /// Asks the agent to answer `prompt`, streaming the reply token by token. Dropping the
    /// stream does not cancel the task: the turn still completes and is recorded in the agent's
    /// history (it is the agent's work, not only the caller's).
    pub fn stream(&self, prompt: impl Into<String>) -> Result<TokenStream> {
        self.system.check_accepting()?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.record
            .enqueue(TaskInput::Ask(prompt.into()), TaskReply::Stream(tx))?;
        Ok(TokenStream {
            events: rx,
            system: self.system.clone(),
            agent: self.record.name.clone(),
        })
    }

    /// Sends `text` from this agent to `to`. Returns once `to` has taken it (and checkpointed
    /// it); the model sees it at the start of `to`'s next turn.
    pub async fn send(&self, to: &AgentHandle, text: impl Into<String>) -> Result<()> {
        self.system.check_accepting()?;
        let (tx, rx) = oneshot::channel();
        let input = TaskInput::Deliver {
            from: self.record.name.clone(),
            text: text.into(),
        };
        to.record.enqueue(input, TaskReply::Delivered(tx))?;
        rx.await.map_err(|_| to.stopped())?
    }

    /// Changes the agent's scheduling class from its next request on.
    pub fn set_priority(&self, priority: Priority) {
        self.record.set_priority(priority);
    }

    /// Stops the agent for good: it finishes the task it is running, checkpoints, and stops;
    /// tasks still queued are answered with [`RuntimeError::AgentStopped`] (and kept in its
    /// checkpoint).
    pub async fn stop(&self) -> Result<()> {
        if let Some(supervisor) = self.system.agent_supervisor.get() {
            ractor::call!(supervisor, SupervisorMsg::StopChild, self.record.name.clone())
                .map_err(RuntimeError::messaging)?;
        }
        self.record.close(RuntimeError::AgentStopped {
            agent: self.record.name.clone(),
        });
        self.system.forget_agent(&self.record);
        self.system.memory.stop_l1(&self.record.name).await;
        Ok(())
    }

    /// Writes `text` into the agent's memory: it is sliced into pages (from the model's
    /// attention), embedded and stored durably; returns the page ids once they are on disk.
    /// Needs an agent declared with `#[agent(memory = true)]`.
    pub async fn remember(&self, text: impl Into<String>) -> Result<Vec<PageId>> {
        let l1 = self.l1()?;
        let text = text.into();
        ractor::call!(l1, |reply| L1Msg::Ingest { text, reply })
            .map_err(RuntimeError::messaging)?
            .map_err(RuntimeError::from)
    }

    /// The `k` pages of the agent's memory most relevant to `query`, from any tier (the active
    /// window, deep context or disk), best first. Reading moves nothing between tiers.
    pub async fn recall(&self, query: impl Into<String>, k: usize) -> Result<Vec<PageView>> {
        let l1 = self.l1()?;
        let query = query.into();
        ractor::call!(l1, |reply| L1Msg::Recall { query, k, reply })
            .map_err(RuntimeError::messaging)?
            .map_err(RuntimeError::from)
    }

    /// Starts a memory turn by hand: pages relevant to `query` are faulted into the agent's L1
    /// window and the least important evicted, leaving `reserved_tokens` of the L1 budget free.
    /// Returns the window. (The agent does this itself at the start of every task.)
    pub async fn page_in(&self, query: impl Into<String>, reserved_tokens: usize) -> Result<ActiveContext> {
        let l1 = self.l1()?;
        let query = query.into();
        ractor::call!(l1, |reply| L1Msg::Assemble {
            query,
            reserved_tokens,
            reply
        })
        .map_err(RuntimeError::messaging)?
        .map_err(RuntimeError::from)
    }

    /// The L1 window the agent's latest turn was given (its pages are what the model saw).
    pub async fn last_context(&self) -> Result<Option<ActiveContext>> {
        let l1 = self.l1()?;
        ractor::call!(l1, L1Msg::LastContext).map_err(RuntimeError::messaging)
    }

    /// Counters of the agent's active window (pages, tokens, faults, evictions, interrupts).
    pub async fn memory_stats(&self) -> Result<L1Stats> {
        let l1 = self.l1()?;
        ractor::call!(l1, L1Msg::Stats).map_err(RuntimeError::messaging)
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
