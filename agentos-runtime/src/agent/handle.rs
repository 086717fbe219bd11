//! `AgentHandle`: how code outside an agent talks to it.
//!
//! A handle stays valid across restarts (it addresses the agent's record, not one actor
//! instance) and is cheap to clone.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
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
        Ok(())
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
