//! The memory branch of the tree: the S-MMU's tiers under the memory supervisor, and the
//! kernel-backed model they use.
//!
//! ```text
//! memory  supervisor (rest-for-one)
//! ├── l3       L3Actor: the knowledge base file (redb)
//! ├── l2       L2Actor: page table + similarity index
//! └── l1:NAME  L1Actor × agents with memory: each agent's active window
//! ```
//!
//! Rest-for-one because each tier loads from the one before it: a restarted L3 is followed by a
//! fresh L2 (which reloads the page table) and fresh L1s (which reload their windows).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agentos_kernel::{KernelError, KernelMsg};
use agentos_memory::{
    AttentionSource, AttentionSpan, Embedder, L1Actor, L1Args, L1Msg, L2Actor, L2Args, L2Msg, L3Actor, L3Msg,
    MemoryConfig, MemoryError, TextAnalysis,
};
use ractor::ActorRef;

use crate::supervisor::{
    ActorSlot, ChildSpec, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorEvent, SupervisorMsg,
};

/// The memory tiers of one AgentOS, and how to reach them.
pub(crate) struct MemorySystem {
    pub config: MemoryConfig,
    pub store_path: PathBuf,
    pub l3: ActorSlot<L3Msg>,
    pub l2: ActorSlot<L2Msg>,
    pub supervisor: ActorSlot<SupervisorMsg>,
    /// `None` without a kernel: no agent gets an L1 then.
    pub model: Option<Arc<KernelMemoryModel>>,
    /// Each memory agent's L1: its slot and how to (re)start it, by agent name.
    l1: Mutex<BTreeMap<String, (ActorSlot<L1Msg>, ChildSpec)>>,
}

impl MemorySystem {
    pub fn new(config: MemoryConfig, store_path: PathBuf, kernel: Option<ActorSlot<KernelMsg>>) -> Self {
        MemorySystem {
            config,
            store_path,
            l3: ActorSlot::new(),
            l2: ActorSlot::new(),
            supervisor: ActorSlot::new(),
            model: kernel.map(|kernel| Arc::new(KernelMemoryModel { kernel })),
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
                let mut args = SupervisorArgs::new("memory", Strategy::RestForOne)
                    .events(events.clone())
                    .child(l3)
                    .child(l2);
                args.children.extend(memory.l1_specs());
                args
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

    /// Registers and starts the L1 of agent `name`. Errors when there is no kernel to embed with.
    pub async fn start_l1(&self, name: &str) -> Result<(), String> {
        let model = self
            .model
            .clone()
            .ok_or("memory needs a kernel for embeddings and attention; this AgentOS has none")?;
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
        let supervisor = self.supervisor.get().ok_or("the memory supervisor is not running")?;
        match ractor::call!(supervisor, SupervisorMsg::StartChild, spec) {
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
        if let Some(supervisor) = self.supervisor.get() {
            let _ = ractor::call!(supervisor, SupervisorMsg::StopChild, format!("l1:{name}"));
        }
    }

    fn forget_l1(&self, name: &str) {
        self.l1.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

/// The kernel as the memory system's [`Embedder`] and [`AttentionSource`].
pub(crate) struct KernelMemoryModel {
    kernel: ActorSlot<KernelMsg>,
}

impl KernelMemoryModel {
    fn kernel(&self, what: &'static str) -> Result<ActorRef<KernelMsg>, MemoryError> {
        self.kernel.get().ok_or(MemoryError::Kernel {
            what,
            detail: "the kernel is not running (it may be restarting)".into(),
        })
    }
}

fn kernel_error(what: &'static str) -> impl Fn(KernelError) -> MemoryError {
    move |e| MemoryError::Kernel {
        what,
        detail: e.to_string(),
    }
}

fn lost(what: &'static str) -> impl Fn(ractor::RactorErr<KernelMsg>) -> MemoryError {
    move |e| MemoryError::Kernel {
        what,
        detail: e.to_string(),
    }
}

#[ractor::async_trait]
impl Embedder for KernelMemoryModel {
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, MemoryError> {
        const WHAT: &str = "embed text";
        let kernel = self.kernel(WHAT)?;
        ractor::call!(kernel, |reply| KernelMsg::Embed { texts, reply })
            .map_err(lost(WHAT))?
            .map_err(kernel_error(WHAT))
    }

    async fn count_tokens(&self, text: String) -> Result<usize, MemoryError> {
        const WHAT: &str = "tokenize text";
        let kernel = self.kernel(WHAT)?;
        ractor::call!(kernel, |reply| KernelMsg::Tokenize { text, reply })
            .map_err(lost(WHAT))?
            .map(|t| t.len())
            .map_err(kernel_error(WHAT))
    }
}

#[ractor::async_trait]
impl AttentionSource for KernelMemoryModel {
    async fn analyze(&self, text: String, with_attention: bool) -> Result<TextAnalysis, MemoryError> {
        const WHAT: &str = "analyze text";
        let kernel = self.kernel(WHAT)?;
        let analysis = ractor::call!(kernel, |reply| KernelMsg::Analyze {
            text,
            with_attention,
            reply
        })
        .map_err(lost(WHAT))?
        .map_err(kernel_error(WHAT))?;
        Ok(TextAnalysis {
            pieces: analysis.pieces,
            attention: analysis
                .attention
                .into_iter()
                .map(|m| AttentionSpan {
                    n_layers: m.n_layers,
                    n_heads: m.n_heads,
                    n_tokens: m.n_new,
                    context: m.context,
                    start_pos: m.start_pos,
                    probs: m.probs,
                })
                .collect(),
        })
    }
}
