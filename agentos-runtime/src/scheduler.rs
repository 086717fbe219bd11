//! `SchedulerActor`: the one door from agents to the kernel, and the cognitive scheduler.
//!
//! Two levels share the work:
//!
//! - **Here, between agents: fair share.** Each agent has a token budget per window (default
//!   10 s), weighted by its priority class (Realtime 16, High 8, Normal 4, Low 2, Background 1
//!   units of `tokens_per_weight`). An agent over its budget is *throttled, not killed*: its next
//!   request waits here until its window rolls over, unless nobody else wants the model (the
//!   scheduler is work-conserving). Priorities can change at run time
//!   ([`AgentHandle::set_priority`](crate::AgentHandle::set_priority)); each request carries the
//!   agent's class of the moment.
//! - **In the kernel's batcher, between sequences: priorities and preemption.** Every running
//!   sequence advances in each batched forward; when all slots are taken a more urgent request
//!   preempts the least urgent sequence, which keeps its KV blocks and later resumes without
//!   re-prefilling; equals take turns by time slice; waiting requests age so none starves; KV
//!   memory admission makes requests wait rather than fail; shared prompt prefixes are computed
//!   once (prefix cache). See `agentos_kernel::engine::generate::Batcher`.
//!
//! The scheduler meters every generation on its way to the agent (the kernel streams into a
//! sink that reports the generation's usage back here when it ends, however it ends), so its
//! statistics (queue time, time to first token, tokens/s, preemptions, budget use) are per
//! agent and global.
//! The kernel may be restarted by its supervisor; the scheduler reads the current `KernelActor`
//! from an [`ActorSlot`] at every request, so it never talks to a dead one.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use agentos_kernel::{EventSink, GenerateRequest, GenerationEvent, KernelError, KernelMsg, RequestId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::supervisor::ActorSlot;
use crate::types::{Pid, Priority};

/// Fair-share settings (part of [`RuntimeConfig`](crate::RuntimeConfig)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Length of a budget window (default 10 s).
    pub window: Duration,
    /// Tokens (prompt tokens computed plus tokens generated) per weight unit per window
    /// (default 1024: a Normal agent may use 4096 tokens per 10 s while others wait).
    pub tokens_per_weight: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            window: Duration::from_secs(10),
            tokens_per_weight: 1024,
        }
    }
}

/// Messages the scheduler understands.
pub enum SchedulerMsg {
    /// Start a generation for `agent`; its events stream to `events`, which ends with
    /// `Finished` or `Failed` (or closes, when the kernel is lost). A throttled agent's request
    /// waits here for its budget.
    Submit {
        agent: Pid,
        priority: Priority,
        request: GenerateRequest,
        events: UnboundedSender<GenerationEvent>,
    },
    /// Stop a generation early.
    Cancel(RequestId),
    Stats(RpcReplyPort<SchedulerStats>),
    /// A generation ended (sent when the kernel lets go of its metered sink).
    Finished {
        agent: Pid,
        usage: Usage,
    },
    /// Re-examine throttled requests (sent to itself while any wait).
    Tick,
    /// `tokens` of memory work (embeddings, attention analysis) done for `agent`: they count
    /// against its fair share like the tokens of its generations.
    Charge {
        agent: Pid,
        tokens: u64,
    },
    /// `agent` stopped for good: drop its account and statistics (pids are never reused).
    Forget(Pid),
}

/// What one finished generation cost and how it went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub time_to_first_token: Duration,
    pub generation_time: Duration,
    pub preemptions: u32,
    pub failed: bool,
}

/// Per-agent scheduling statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentSchedStats {
    pub priority: Option<Priority>,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens served from the kernel's prefix cache.
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Total time requests waited here (throttled) before reaching the kernel.
    pub queue_seconds: f64,
    /// Sum of times to first token (kernel queueing and prefill included).
    pub ttft_seconds: f64,
    /// Sum of generation wall times.
    pub generation_seconds: f64,
    pub preemptions: u64,
    /// Requests held back because the agent was over its budget.
    pub throttled: u64,
    /// Tokens of memory work done for the agent (charged to its budget).
    pub memory_tokens: u64,
    /// Budget of the current window and how much of it is used.
    pub budget_tokens: u64,
    pub budget_used: u64,
}

impl AgentSchedStats {
    /// Mean time to first token of completed requests.
    pub fn mean_ttft(&self) -> Option<Duration> {
        (self.completed > 0).then(|| Duration::from_secs_f64(self.ttft_seconds / self.completed as f64))
    }

    /// Generated tokens per second of generation time.
    pub fn tokens_per_second(&self) -> f64 {
        if self.generation_seconds > 0.0 {
            self.generated_tokens as f64 / self.generation_seconds
        } else {
            0.0
        }
    }
}

/// What the scheduler has seen, per agent and in total.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerStats {
    pub submitted: u64,
    pub by_priority: BTreeMap<Priority, u64>,
    pub by_agent: BTreeMap<Pid, AgentSchedStats>,
    /// Generations the kernel is working on now.
    pub in_flight: usize,
    /// Requests held back (throttled) now.
    pub throttled_now: usize,
}

impl SchedulerStats {
    /// The per-agent figures summed.
    pub fn total(&self) -> AgentSchedStats {
        let mut t = AgentSchedStats::default();
        for a in self.by_agent.values() {
            t.submitted += a.submitted;
            t.completed += a.completed;
            t.failed += a.failed;
            t.prompt_tokens += a.prompt_tokens;
            t.cached_prompt_tokens += a.cached_prompt_tokens;
            t.generated_tokens += a.generated_tokens;
            t.queue_seconds += a.queue_seconds;
            t.ttft_seconds += a.ttft_seconds;
            t.generation_seconds += a.generation_seconds;
            t.preemptions += a.preemptions;
            t.throttled += a.throttled;
            t.memory_tokens += a.memory_tokens;
            t.budget_tokens += a.budget_tokens;
            t.budget_used += a.budget_used;
        }
        t
    }
}

/// How to start the scheduler.
#[derive(Clone)]
pub struct SchedulerArgs {
    /// Where the current kernel lives; `None` for an AgentOS built without a kernel.
    pub kernel: Option<ActorSlot<KernelMsg>>,
    pub config: SchedulerConfig,
}

#[derive(Clone)]
pub struct SchedulerActor;

struct Held {
    agent: Pid,
    priority: Priority,
    request: GenerateRequest,
    events: UnboundedSender<GenerationEvent>,
    since: Instant,
}

struct Account {
    window_start: Instant,
    used: u64,
    in_flight: usize,
}

pub struct SchedulerState {
    kernel: Option<ActorSlot<KernelMsg>>,
    config: SchedulerConfig,
    accounts: BTreeMap<Pid, Account>,
    held: VecDeque<Held>,
    ticking: bool,
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
            config: args.config,
            accounts: BTreeMap::new(),
            held: VecDeque::new(),
            ticking: false,
            stats: SchedulerStats::default(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        // Dropping a held request closes its event channel: its agent sees the kernel lost.
        state.held.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        message: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Submit {
                agent,
                priority,
                request,
                events,
            } => {
                if state.kernel.is_none() {
                    let _ = events.send(GenerationEvent::Failed(KernelError::EngineStopped(
                        "this AgentOS has no kernel".into(),
                    )));
                    return Ok(());
                }
                state.stats.submitted += 1;
                *state.stats.by_priority.entry(priority).or_default() += 1;
                let stats = state.stats.by_agent.entry(agent).or_default();
                stats.submitted += 1;
                stats.priority = Some(priority);
                let held = Held {
                    agent,
                    priority,
                    request,
                    events,
                    since: Instant::now(),
                };
                if state.may_run(agent, priority) {
                    state.forward(&myself, held);
                } else {
                    tracing::debug!(%agent, ?priority, "throttled: over its fair share");
                    state.stats.by_agent.entry(agent).or_default().throttled += 1;
                    state.held.push_back(held);
                    state.ensure_ticking(&myself);
                }
            }
            SchedulerMsg::Finished { agent, usage } => {
                let account = state.account(agent);
                account.in_flight = account.in_flight.saturating_sub(1);
                account.used += usage.prompt_tokens - usage.cached_prompt_tokens + usage.generated_tokens;
                state.stats.in_flight = state.stats.in_flight.saturating_sub(1);
                let s = state.stats.by_agent.entry(agent).or_default();
                if usage.failed {
                    s.failed += 1;
                } else {
                    s.completed += 1;
                    s.ttft_seconds += usage.time_to_first_token.as_secs_f64();
                }
                s.prompt_tokens += usage.prompt_tokens;
                s.cached_prompt_tokens += usage.cached_prompt_tokens;
                s.generated_tokens += usage.generated_tokens;
                s.generation_seconds += usage.generation_time.as_secs_f64();
                s.preemptions += usage.preemptions as u64;
                state.release_held(&myself);
            }
            SchedulerMsg::Forget(agent) => {
                if state.accounts.get(&agent).is_none_or(|a| a.in_flight == 0) {
                    state.accounts.remove(&agent);
                }
                state.stats.by_agent.remove(&agent);
            }
            SchedulerMsg::Charge { agent, tokens } => {
                state.account(agent).used += tokens;
                state.stats.by_agent.entry(agent).or_default().memory_tokens += tokens;
            }
            SchedulerMsg::Tick => {
                state.ticking = false;
                state.release_held(&myself);
                if !state.held.is_empty() {
                    state.ensure_ticking(&myself);
                }
            }
            SchedulerMsg::Cancel(id) => {
                if let Some(kernel) = state.kernel.as_ref().and_then(|s| s.get()) {
                    let _ = kernel.cast(KernelMsg::Cancel(id));
                }
            }
            SchedulerMsg::Stats(reply) => {
                let mut stats = state.stats.clone();
                stats.throttled_now = state.held.len();
                let now = Instant::now();
                let config = state.config;
                for (pid, s) in stats.by_agent.iter_mut() {
                    let priority = s.priority.unwrap_or_default();
                    s.budget_tokens = config.tokens_per_weight * priority.weight();
                    s.budget_used = state
                        .accounts
                        .get(pid)
                        .filter(|a| now.duration_since(a.window_start) < config.window)
                        .map_or(0, |a| a.used);
                }
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }
}

impl SchedulerState {
    fn account(&mut self, agent: Pid) -> &mut Account {
        let window = self.config.window;
        let account = self.accounts.entry(agent).or_insert_with(|| Account {
            window_start: Instant::now(),
            used: 0,
            in_flight: 0,
        });
        if account.window_start.elapsed() >= window {
            account.window_start = Instant::now();
            account.used = 0;
        }
        account
    }

    /// Within budget, or nobody else is waiting for or using the model (work-conserving).
    fn may_run(&mut self, agent: Pid, priority: Priority) -> bool {
        let budget = self.config.tokens_per_weight * priority.weight();
        if self.account(agent).used < budget {
            return true;
        }
        let others_busy = self.accounts.iter().any(|(pid, a)| *pid != agent && a.in_flight > 0)
            || self.held.iter().any(|h| h.agent != agent);
        !others_busy
    }

    /// Releases throttled requests that may run now, most urgent and oldest first. Each release
    /// counts as in flight before the next is considered, so it can keep others throttled.
    fn release_held(&mut self, myself: &ActorRef<SchedulerMsg>) {
        // A held request whose agent stopped listening (its task was cancelled) goes now.
        self.held.retain(|h| !h.events.is_closed());
        loop {
            let mut order: Vec<usize> = (0..self.held.len()).collect();
            order.sort_by_key(|&i| (self.held[i].priority, self.held[i].since));
            let next = order.into_iter().find(|&i| {
                let (agent, priority) = (self.held[i].agent, self.held[i].priority);
                self.may_run(agent, priority)
            });
            let Some(held) = next.and_then(|i| self.held.remove(i)) else {
                break;
            };
            self.forward(myself, held);
        }
    }

    fn ensure_ticking(&mut self, myself: &ActorRef<SchedulerMsg>) {
        if !self.ticking {
            self.ticking = true;
            let period = (self.config.window / 20).max(Duration::from_millis(10));
            myself.send_after(period, || SchedulerMsg::Tick);
        }
    }

    /// Sends a request to the current kernel; its events go to the agent through a
    /// [`MeteredSink`], which reports the usage back here when the generation ends.
    fn forward(&mut self, myself: &ActorRef<SchedulerMsg>, held: Held) {
        let Held {
            agent,
            priority,
            mut request,
            events,
            since,
        } = held;
        if events.is_closed() {
            // Cancelled before it reached the kernel: nothing to compute.
            return;
        }
        let Some(kernel) = self.kernel.as_ref().and_then(|slot| slot.get()) else {
            // Dropping `events` tells the agent the kernel is lost (it is restarting).
            return;
        };
        self.stats.by_agent.entry(agent).or_default().queue_seconds += since.elapsed().as_secs_f64();
        self.account(agent).in_flight += 1;
        self.stats.in_flight += 1;
        // The kernel's batcher orders and preempts by this class (0 most urgent).
        request.priority = priority as u8;
        let sink = MeteredSink {
            events,
            scheduler: myself.clone(),
            agent,
            usage: Usage {
                failed: true,
                ..Usage::default()
            },
        };
        // The kernel answers a rejected request on the sink too, so the reply is not needed.
        let (reply, _) = ractor::concurrency::oneshot();
        // A dead kernel drops the message, and with it the sink, which reports the failure.
        let _ = kernel.cast(KernelMsg::Generate {
            request,
            events: Box::new(sink),
            reply: RpcReplyPort::from(reply),
        });
    }
}

/// Where the kernel streams a metered generation: every event goes on to the agent, and when
/// the kernel lets go of the sink (the generation finished, failed, was cancelled, or the kernel
/// died) its usage goes back to the scheduler, exactly once.
struct MeteredSink {
    events: UnboundedSender<GenerationEvent>,
    scheduler: ActorRef<SchedulerMsg>,
    agent: Pid,
    usage: Usage,
}

impl EventSink for MeteredSink {
    fn send(&mut self, event: GenerationEvent) -> bool {
        if let GenerationEvent::Finished { summary, .. } = &event {
            self.usage = Usage {
                prompt_tokens: summary.prompt_tokens as u64,
                cached_prompt_tokens: summary.cached_prompt_tokens as u64,
                generated_tokens: summary.tokens.len() as u64,
                time_to_first_token: summary.time_to_first_token,
                generation_time: summary.total_time,
                preemptions: summary.preemptions,
                failed: false,
            };
        }
        // The agent gone: returning false cancels the generation and frees its KV blocks.
        self.events.send(event).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

impl Drop for MeteredSink {
    fn drop(&mut self) {
        let _ = self.scheduler.cast(SchedulerMsg::Finished {
            agent: self.agent,
            usage: self.usage,
        });
    }
}
