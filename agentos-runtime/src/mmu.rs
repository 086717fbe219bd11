//! The memory branch of the tree: the S-MMU's tiers under the memory supervisor, and the
//! kernel-backed model they use.
//!
//! ```text
//! memory  supervisor (rest-for-one)
//! ├── l3       L3Actor: the knowledge base file (redb)
//! ├── l2       L2Actor: page table + similarity index
//! └── l1       supervisor (one-for-one)
//!     └── l1:NAME  L1Actor × agents with memory: each agent's active window
//! ```
//!
//! Rest-for-one because each tier loads from the one before it: a restarted L3 is followed by a
//! fresh L2 (which reloads the page table) and fresh L1s (which reload their windows). The L1s
//! are independent of each other, so they sit under their own one-for-one supervisor: one
//! agent's L1 failing restarts that L1 alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentos_kernel::{DEFAULT_JOB_PRIORITY, KernelError, KernelMsg};
use agentos_memory::{
    AttentionSource, Embedder, EntropySpan, L1Actor, L1Args, L1Msg, L2Actor, L2Args, L2Msg, L3Actor, L3Msg,
    MemoryConfig, MemoryError, TextAnalysis,
};
use ractor::ActorRef;

use crate::error::RuntimeError;
use crate::rpc;
use crate::scheduler::SchedulerMsg;
use crate::supervisor::{
    ActorSlot, ChildSpec, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorEvent, SupervisorMsg,
};
use crate::types::Pid;

/// The memory tiers of one AgentOS, and how to reach them.
pub(crate) struct MemorySystem {
    pub config: MemoryConfig,
    pub store_path: PathBuf,
    pub l3: ActorSlot<L3Msg>,
    pub l2: ActorSlot<L2Msg>,
    pub supervisor: ActorSlot<SupervisorMsg>,
    /// The one-for-one supervisor of the L1s.
    l1_supervisor: ActorSlot<SupervisorMsg>,
    /// How long a call to the memory supervisors may take.
    call_timeout: Duration,
    /// `None` without a kernel: no agent gets an L1 then. Counts tokens for the agents; each
    /// L1 gets a model of its own that charges its agent's fair share.
    pub model: Option<Arc<KernelMemoryModel>>,
    scheduler: ActorSlot<SchedulerMsg>,
    memory_timeout: Duration,
    /// Each memory agent's L1: its slot and how to (re)start it, by agent name.
    l1: Mutex<BTreeMap<String, (ActorSlot<L1Msg>, ChildSpec)>>,
}

impl MemorySystem {
    pub fn new(
        config: MemoryConfig,
        store_path: PathBuf,
        kernel: Option<ActorSlot<KernelMsg>>,
        scheduler: ActorSlot<SchedulerMsg>,
        call_timeout: Duration,
        memory_timeout: Duration,
    ) -> Self {
        MemorySystem {
            config,
            store_path,
            l3: ActorSlot::new(),
            l2: ActorSlot::new(),
            supervisor: ActorSlot::new(),
            l1_supervisor: ActorSlot::new(),
            call_timeout,
            model: kernel.map(|kernel| {
                Arc::new(KernelMemoryModel {
                    kernel,
                    scheduler: scheduler.clone(),
                    agent: None,
                    timeout: memory_timeout,
                })
            }),
            scheduler,
            memory_timeout,
            l1: Mutex::new(BTreeMap::new()),
        }
    }

    /// The supervisor's child spec; restarts rebuild the L1 of every memory agent.
    pub fn supervisor_spec(self: &Arc<Self>, events: tokio::sync::broadcast::Sender<SupervisorEvent>) -> ChildSpec {
        let memory = self.clone();
        Supervisor::child_spec(
            "memory",
            move || {
                let l3 = ChildSpec::actor_in_slot(
                    "l3",
                    Restart::Permanent,
                    L3Actor,
                    memory.store_path.clone(),
                    memory.l3.clone(),
                );
                let l3_slot = memory.l3.clone();
                let l2 = ChildSpec::actor_in_slot(
                    "l2",
                    Restart::Permanent,
                    L2Actor,
                    L2Args {
                        config: memory.config.clone(),
                        l3: Arc::new(move || l3_slot.get()),
                    },
                    memory.l2.clone(),
                );
                let l1_memory = memory.clone();
                let l1_events = events.clone();
                let l1s = Supervisor::child_spec(
                    "l1",
                    move || {
                        let mut args = SupervisorArgs::new("l1", Strategy::OneForOne).events(l1_events.clone());
                        args.children = l1_memory.l1_specs();
                        args
                    },
                    memory.l1_supervisor.clone(),
                );
                SupervisorArgs::new("memory", Strategy::RestForOne)
                    .events(events.clone())
                    .child(l3)
                    .child(l2)
                    .child(l1s)
            },
            self.supervisor.clone(),
        )
    }

    fn l1_specs(&self) -> Vec<ChildSpec> {
        self.l1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(_, spec)| spec.clone())
            .collect()
    }

    /// The L1 of agent `name`, if it has one.
    pub fn l1(&self, name: &str) -> Option<ActorRef<L1Msg>> {
        self.l1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .and_then(|(slot, _)| slot.get())
    }

    /// Registers and starts the L1 of agent `name` (`pid`, whose fair share pays for its memory
    /// work). Errors when there is no kernel to embed with.
    pub async fn start_l1(&self, name: &str, pid: Pid) -> Result<(), String> {
        let shared = self
            .model
            .as_ref()
            .ok_or("memory needs a kernel for embeddings and attention; this AgentOS has none")?;
        let model = Arc::new(KernelMemoryModel {
            kernel: shared.kernel.clone(),
            scheduler: self.scheduler.clone(),
            agent: Some(pid),
            timeout: self.memory_timeout,
        });
        let slot = ActorSlot::new();
        let l2 = self.l2.clone();
        let spec = ChildSpec::actor_in_slot(
            format!("l1:{name}"),
            Restart::Permanent,
            L1Actor,
            L1Args {
                owner: name.to_string(),
                config: self.config.clone(),
                l2: Arc::new(move || l2.get()),
                embedder: model.clone(),
                attention: model,
            },
            slot.clone(),
        );
        self.l1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), (slot, spec.clone()));
        let supervisor = self.l1_supervisor.get().ok_or("the memory supervisor is not running")?;
        let started = rpc::call(
            &supervisor,
            "the L1 supervisor",
            self.call_timeout,
            |reply| SupervisorMsg::StartChild(spec, reply),
            || RuntimeError::Messaging("the L1 supervisor stopped".into()),
        )
        .await;
        match started {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.forget_l1(name);
                Err(e)
            }
            Err(e) => {
                self.forget_l1(name);
                Err(e.to_string())
            }
        }
    }

    /// Stops and forgets the L1 of agent `name` (its pages stay in L2/L3).
    pub async fn stop_l1(&self, name: &str) {
        self.forget_l1(name);
        if let Some(supervisor) = self.l1_supervisor.get() {
            let id = format!("l1:{name}");
            let stopped = rpc::call(
                &supervisor,
                "the L1 supervisor",
                self.call_timeout,
                |reply| SupervisorMsg::StopChild(id, reply),
                || RuntimeError::Messaging("the L1 supervisor stopped".into()),
            )
            .await;
            if let Err(e) = stopped {
                tracing::warn!(agent = %name, error = %e, "could not stop the agent's L1");
            }
        }
    }

    fn forget_l1(&self, name: &str) {
        self.l1.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

/// The kernel as the memory system's [`Embedder`] and [`AttentionSource`]. Its work runs in the
/// kernel's batcher as jobs of the least urgent class, and what it costs is charged to `agent`'s
/// fair share.
pub(crate) struct KernelMemoryModel {
    kernel: ActorSlot<KernelMsg>,
    scheduler: ActorSlot<SchedulerMsg>,
    agent: Option<Pid>,
    /// How long one embedding or analysis may take (queueing behind other requests included).
    timeout: Duration,
}

impl KernelMemoryModel {
    /// Asks the current kernel, within the timeout; every failure is a `MemoryError::Kernel`.
    async fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T, KernelError>>) -> KernelMsg,
    ) -> Result<T, MemoryError> {
        let error = |detail: String| MemoryError::Kernel { what, detail };
        let kernel = self
            .kernel
            .get()
            .ok_or_else(|| error("the kernel is not running (it may be restarting)".into()))?;
        let lost = || RuntimeError::KernelLost;
        rpc::call(&kernel, what, self.timeout, msg, lost)
            .await
            .map_err(|e| error(e.to_string()))?
            .map_err(|e| error(e.to_string()))
    }

    /// Charges `tokens` of model work to the agent's fair share.
    fn charge(&self, tokens: usize) {
        if let (Some(agent), Some(scheduler)) = (self.agent, self.scheduler.get()) {
            let _ = scheduler.cast(SchedulerMsg::Charge {
                agent,
                tokens: tokens as u64,
            });
        }
    }
}

#[ractor::async_trait]
impl Embedder for KernelMemoryModel {
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, MemoryError> {
        let embeddings = self
            .call("embed text", |reply| KernelMsg::Embed {
                texts,
                priority: DEFAULT_JOB_PRIORITY,
                reply,
            })
            .await?;
        self.charge(embeddings.tokens);
        Ok(embeddings.vectors)
    }

    async fn count_tokens(&self, text: String) -> Result<usize, MemoryError> {
        let tokens = self
            .call("tokenize text", |reply| KernelMsg::Tokenize { text, reply })
            .await?;
        Ok(tokens.len())
    }
}

#[ractor::async_trait]
impl AttentionSource for KernelMemoryModel {
    async fn analyze(&self, text: String, with_attention: bool) -> Result<TextAnalysis, MemoryError> {
        let analysis = self
            .call("analyze text", |reply| KernelMsg::Analyze {
                text,
                with_attention,
                priority: DEFAULT_JOB_PRIORITY,
                reply,
            })
            .await?;
        if with_attention {
            self.charge(analysis.tokens.len());
        }
        Ok(TextAnalysis {
            pieces: analysis.pieces,
            entropy: analysis
                .entropy
                .into_iter()
                .map(|e| EntropySpan {
                    n_layers: e.n_layers,
                    n_heads: e.n_heads,
                    n_tokens: e.n_tokens,
                    start_pos: e.start_pos,
                    values: e.values,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_l1_failing_restarts_that_l1_alone() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(10);
        // A kernel slot with no kernel in it: L1s start without one (they need it only to embed).
        let memory = Arc::new(MemorySystem::new(
            MemoryConfig::default(),
            dir.path().join("memory.redb"),
            Some(ActorSlot::new()),
            ActorSlot::new(),
            timeout,
            timeout,
        ));
        let (events, mut rx) = tokio::sync::broadcast::channel(64);
        let root = SupervisorArgs::new("root", Strategy::OneForOne).child(memory.supervisor_spec(events));
        let (root, _) = Supervisor::spawn(root).await.unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            memory.start_l1(name, Pid(i as u64 + 1)).await.unwrap();
        }
        let id = |name: &str| memory.l1(name).unwrap().get_id();
        let (a, b, c) = (id("a"), id("b"), id("c"));
        memory.l1("b").unwrap().kill();
        let event = tokio::time::timeout(timeout, rx.recv()).await.unwrap().unwrap();
        assert!(
            matches!(&event, SupervisorEvent::Restarted { child, supervisor, .. } if child == "l1:b" && supervisor == "l1"),
            "{event:?}"
        );
        for _ in 0..100 {
            if memory.l1("b").is_some_and(|l1| l1.get_id() != b) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(id("b"), b, "b's L1 was restarted");
        assert_eq!((id("a"), id("c")), (a, c), "the other L1s were left alone");
        assert!(rx.try_recv().is_err(), "nothing else restarted");
        root.stop_and_wait(None, None).await.unwrap();
    }
}
