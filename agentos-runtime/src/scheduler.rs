//! `SchedulerActor`: the one door from agents to the kernel.
//!
//! Every generation an agent starts goes through here, tagged with the agent's pid and priority,
//! so the scheduler sees all demand on the model in one place. Today it admits every request in
//! arrival order (the kernel batches all running requests together) and keeps per-agent counts;
//! priority classes, fair token budgets and preemption are the cognitive-scheduler issue's work and
//! plug in here without changing the agents' side of the protocol.
//!
//! The kernel may be restarted by its supervisor; the scheduler reads the current `KernelActor`
//! from an [`ActorSlot`] at every request, so it never talks to a dead one.

use std::collections::BTreeMap;

use agentos_kernel::{GenerateRequest, GenerationEvent, KernelMsg, RequestId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::agent::record::Pid;
use crate::error::RuntimeError;
use crate::supervisor::ActorSlot;

/// Scheduling class of an agent, most urgent first. Set with `#[agent(priority = High)]` and
/// changeable at run time with [`AgentHandle::set_priority`](crate::AgentHandle::set_priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum Priority {
    Realtime = 0,
    High = 1,
    #[default]
    Normal = 2,
    Low = 3,
    Background = 4,
}

impl Priority {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Priority::Realtime,
            1 => Priority::High,
            2 => Priority::Normal,
            3 => Priority::Low,
            _ => Priority::Background,
        }
    }
}

/// Messages the scheduler understands.
pub enum SchedulerMsg {
    /// Start a generation for `agent`; tokens stream to `events`.
    Submit {
        agent: Pid,
        priority: Priority,
        request: GenerateRequest,
        events: UnboundedSender<GenerationEvent>,
        reply: RpcReplyPort<Result<RequestId, RuntimeError>>,
    },
    /// Stop a generation early.
    Cancel(RequestId),
    Stats(RpcReplyPort<SchedulerStats>),
}

/// What the scheduler has admitted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub submitted: u64,
    pub by_priority: BTreeMap<Priority, u64>,
    pub by_agent: BTreeMap<Pid, u64>,
}

/// How to start the scheduler.
#[derive(Clone)]
pub struct SchedulerArgs {
    /// Where the current kernel lives; `None` for an AgentOS built without a kernel.
    pub kernel: Option<ActorSlot<KernelMsg>>,
}

#[derive(Clone)]
pub struct SchedulerActor;

pub struct SchedulerState {
    kernel: Option<ActorSlot<KernelMsg>>,
    stats: SchedulerStats,
}

#[ractor::async_trait]
impl Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        Ok(SchedulerState {
            kernel: args.kernel,
            stats: SchedulerStats::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        message: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Submit {
                agent,
                priority,
                request,
                events,
                reply,
            } => {
                let kernel = match &state.kernel {
                    None => {
                        let _ = reply.send(Err(RuntimeError::NoKernel));
                        return Ok(());
                    }
                    Some(slot) => slot.get(),
                };
                let Some(kernel) = kernel else {
                    let _ = reply.send(Err(RuntimeError::KernelLost));
                    return Ok(());
                };
                // The kernel's batcher orders and preempts by this class (0 most urgent).
                let mut request = request;
                request.priority = priority as u8;
                state.stats.submitted += 1;
                *state.stats.by_priority.entry(priority).or_default() += 1;
                *state.stats.by_agent.entry(agent).or_default() += 1;
                tracing::debug!(%agent, ?priority, "admitted");
                // The kernel replies once the request is queued on its engine thread, which may be
                // mid-step: wait for that off the scheduler's mailbox.
                tokio::spawn(async move {
                    let result = ractor::call!(kernel, |reply| KernelMsg::Generate { request, events, reply });
                    let result = match result {
                        Ok(Ok(id)) => Ok(id),
                        Ok(Err(e)) => Err(RuntimeError::Kernel(e)),
                        Err(_) => Err(RuntimeError::KernelLost),
                    };
                    let _ = reply.send(result);
                });
            }
            SchedulerMsg::Cancel(id) => {
                if let Some(kernel) = state.kernel.as_ref().and_then(|s| s.get()) {
                    let _ = kernel.cast(KernelMsg::Cancel(id));
                }
            }
            SchedulerMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}
