//! `AgentOS`: the root of the supervision tree and the user's entry point.
//!
//! ```text
//! AgentOS (root supervisor "agentos", one-for-one)
//! ├── kernel      supervisor ─ KernelActor (owns the engine thread)
//! ├── scheduler   SchedulerActor
//! ├── memory      supervisor (rest-for-one) ─ L3Actor, L2Actor, L1Actor × agents with memory
//! └── agents      supervisor (agent_strategy) ─ AgentActor<R> × N
//! ```
//!
//! Children start in that order and stop in the reverse order. When the root passes its restart
//! intensity it stops everything; [`AgentOS::wait`] and every pending or later call then return
//! [`RuntimeError::SystemDown`] with the reason.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use agentos_kernel::{KernelActor, KernelArgs, KernelMsg};
use ractor::{Actor, ActorRef};
use tokio::sync::{broadcast, watch};

use crate::agent::actor::{AgentActor, AgentArgs};
use crate::agent::handle::AgentHandle;
use crate::agent::record::{AgentInfo, AgentRecord, AgentState, Pid, SharedRecord};
use crate::agent::{Agent, AgentSpec};
use crate::checkpoint::CheckpointStore;
use crate::config::RuntimeConfig;
use crate::error::{Result, RuntimeError};
use crate::mmu::MemorySystem;
use crate::scheduler::{SchedulerActor, SchedulerArgs, SchedulerConfig, SchedulerMsg, SchedulerStats};
use crate::supervisor::{
    ActorSlot, ChildSpec, Restart, RestartIntensity, Strategy, Supervisor, SupervisorArgs, SupervisorEvent,
    SupervisorMsg,
};

/// The running system. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct AgentOS {
    system: Arc<System>,
    root: ActorRef<SupervisorMsg>,
    down: watch::Receiver<bool>,
    /// The checkpoint directory, when this AgentOS made it and must delete it.
    ephemeral_dir: Option<PathBuf>,
    shutdown_grace: Duration,
}

/// Builds an [`AgentOS`]; every setting has the default documented on [`RuntimeConfig`].
#[derive(Debug, Clone, Default)]
pub struct AgentOsBuilder {
    config: RuntimeConfig,
}

impl AgentOsBuilder {
    /// Runs the kernel with these model and engine settings.
    pub fn kernel(mut self, kernel: KernelArgs) -> Self {
        self.config.kernel = Some(kernel);
        self
    }

    /// Runs without a kernel: agents exchange messages, tasks fail with `NoKernel`.
    pub fn without_kernel(mut self) -> Self {
        self.config.kernel = None;
        self
    }

    pub fn checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.checkpoint_dir = Some(dir.into());
        self
    }

    pub fn agent_strategy(mut self, strategy: Strategy) -> Self {
        self.config.agent_strategy = strategy;
        self
    }

    pub fn agent_intensity(mut self, intensity: RestartIntensity) -> Self {
        self.config.agent_intensity = intensity;
        self
    }

    pub fn system_intensity(mut self, intensity: RestartIntensity) -> Self {
        self.config.system_intensity = intensity;
        self
    }

    pub fn scheduler(mut self, scheduler: SchedulerConfig) -> Self {
        self.config.scheduler = scheduler;
        self
    }

    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the supervision tree (loading the model, when there is a kernel).
    pub async fn start(self) -> Result<AgentOS> {
        AgentOS::start(self.config).await
    }
}

impl AgentOS {
    pub fn builder() -> AgentOsBuilder {
        AgentOsBuilder::default()
    }

    /// Starts the supervision tree with `config`.
    pub async fn start(config: RuntimeConfig) -> Result<AgentOS> {
        let (checkpoint_dir, ephemeral_dir) = match &config.checkpoint_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = ephemeral_checkpoint_dir();
                (dir.clone(), Some(dir))
            }
        };
        let (events, _) = broadcast::channel(1024);
        config.memory.validate().map_err(|reason| RuntimeError::Start {
            what: "the memory system".into(),
            reason,
        })?;
        let store_path = config
            .memory
            .store_path
            .clone()
            .unwrap_or_else(|| checkpoint_dir.join("memory.redb"));
        let kernel_slot = config.kernel.as_ref().map(|_| ActorSlot::new());
        let memory = Arc::new(MemorySystem::new(
            config.memory.clone(),
            store_path,
            kernel_slot.clone(),
        ));
        let system = Arc::new(System {
            scheduler: ActorSlot::new(),
            kernel: kernel_slot,
            memory: memory.clone(),
            agent_supervisor: ActorSlot::new(),
            checkpoints: CheckpointStore::open(checkpoint_dir)?,
            registry: Mutex::new(Registry::default()),
            next_pid: AtomicU64::new(1),
            accepting: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            down: OnceLock::new(),
            events: events.clone(),
            live_agent_actors: AtomicUsize::new(0),
        });

        let mut root = SupervisorArgs::new("agentos", Strategy::OneForOne)
            .intensity(config.system_intensity)
            .events(events.clone());
        if let (Some(kernel), Some(slot)) = (config.kernel.clone(), system.kernel.clone()) {
            let events = events.clone();
            root = root.child(Supervisor::child_spec(
                "kernel",
                move || {
                    SupervisorArgs::new("kernel", Strategy::OneForOne)
                        .events(events.clone())
                        .child(ChildSpec::actor_in_slot(
                            "kernel-actor",
                            Restart::Permanent,
                            KernelActor,
                            kernel.clone(),
                            slot.clone(),
                        ))
                },
                ActorSlot::new(),
            ));
        }
        root = root.child(ChildSpec::actor_in_slot(
            "scheduler",
            Restart::Permanent,
            SchedulerActor,
            SchedulerArgs {
                kernel: system.kernel.clone(),
                config: config.scheduler,
            },
            system.scheduler.clone(),
        ));
        root = root.child(memory.supervisor_spec(events.clone()));
        let agents_system = system.clone();
        let (strategy, intensity) = (config.agent_strategy, config.agent_intensity);
        root = root.child(Supervisor::child_spec(
            "agents",
            move || {
                // Started (and restarted) with every registered agent, in pid order: a restarted
                // agent supervisor brings each agent back from its checkpoint.
                let mut args = SupervisorArgs::new("agents", strategy)
                    .intensity(intensity)
                    .events(agents_system.events.clone());
                args.children = agents_system.registry().child_specs();
                args
            },
            system.agent_supervisor.clone(),
        ));
        let gave_up = root.gave_up.clone();

        let (root, join) = Supervisor::spawn(root).await.map_err(|e| RuntimeError::Start {
            what: "the supervision tree".into(),
            reason: e.to_string(),
        })?;

        let (down_tx, down) = watch::channel(false);
        let monitor_system = system.clone();
        tokio::spawn(async move {
            let _ = join.await;
            let reason = if monitor_system.shutting_down.load(Ordering::SeqCst) {
                "AgentOS was shut down".to_string()
            } else {
                gave_up
                    .get()
                    .cloned()
                    .unwrap_or_else(|| "the root supervisor stopped".to_string())
            };
            monitor_system.go_down(reason);
            let _ = down_tx.send(true);
        });

        Ok(AgentOS {
            system,
            root,
            down,
            ephemeral_dir,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// Spawns an agent playing `role`, named by its spec (`#[agent(name = ...)]`).
    pub async fn spawn<R: Agent>(&self, role: R) -> Result<AgentHandle> {
        let spec = R::spec();
        let name = spec.name.clone();
        self.spawn_with(name, spec, role).await
    }

    /// Spawns an agent playing `role` under `name` (names are unique within one AgentOS and key
    /// the agent's checkpoint).
    pub async fn spawn_named<R: Agent>(&self, name: impl Into<String>, role: R) -> Result<AgentHandle> {
        self.spawn_with(name.into(), R::spec(), role).await
    }

    async fn spawn_with<R: Agent>(&self, name: String, spec: AgentSpec, role: R) -> Result<AgentHandle> {
        let system = &self.system;
        system.check_accepting()?;
        let initial =
            bincode::serde::encode_to_vec(&role, bincode::config::standard()).map_err(|e| RuntimeError::Start {
                what: format!("agent `{name}`"),
                reason: format!("cannot serialise its state: {e}"),
            })?;
        let pid = Pid(system.next_pid.fetch_add(1, Ordering::Relaxed));
        let record = Arc::new(AgentRecord::new(pid, name.clone(), spec.role.clone(), spec.priority));
        let memory = spec.memory;
        let child = agent_child_spec::<R>(record.clone(), system.clone(), Arc::new(spec), Arc::new(initial));
        *record.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child.clone());
        system.registry().insert(record.clone())?;
        if memory && let Err(reason) = system.memory.start_l1(&name).await {
            system.forget_agent(&record);
            return Err(RuntimeError::Start {
                what: format!("the memory of agent `{name}`"),
                reason,
            });
        }

        let started = match system.agent_supervisor.get() {
            Some(supervisor) => ractor::call!(supervisor, SupervisorMsg::StartChild, child)
                .map_err(|_| system.down_error())
                .and_then(|r| {
                    r.map_err(|reason| RuntimeError::Start {
                        what: format!("agent `{name}`"),
                        reason,
                    })
                }),
            None => Err(system.down_error()),
        };
        if let Err(e) = started {
            system.forget_agent(&record);
            system.memory.stop_l1(&name).await;
            return Err(e);
        }
        Ok(AgentHandle::new(record, system.clone()))
    }

    /// The running agent called `name`.
    pub fn agent(&self, name: &str) -> Option<AgentHandle> {
        let registry = self.system.registry();
        let pid = registry.by_name.get(name)?;
        let record = registry.by_pid.get(pid)?.clone();
        Some(AgentHandle::new(record, self.system.clone()))
    }

    /// Every agent's pid, name, role, priority, state, turns and tokens used, in pid order.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let records: Vec<SharedRecord> = self.system.registry().by_pid.values().cloned().collect();
        records.iter().map(|r| r.info()).collect()
    }

    /// How many agent actors exist right now, restarting ones included. After agents stop (or
    /// after a shutdown) this returns to zero: a leak detector for long-running systems.
    pub fn live_agent_actors(&self) -> usize {
        self.system.live_agent_actors.load(Ordering::Relaxed)
    }

    /// Restarts, removals and escalations anywhere in the tree, as they happen.
    pub fn events(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.system.events.subscribe()
    }

    /// The kernel actor currently running, if this AgentOS has a kernel.
    pub fn kernel(&self) -> Option<ActorRef<KernelMsg>> {
        self.system.kernel.as_ref().and_then(|slot| slot.get())
    }

    /// Counters of the memory system's deep context (pages per tier, demotions, faults from disk).
    pub async fn memory_stats(&self) -> Result<agentos_memory::L2Stats> {
        let l2 = self.system.memory.l2.get().ok_or_else(|| self.system.down_error())?;
        ractor::call!(l2, agentos_memory::L2Msg::Stats).map_err(|_| self.system.down_error())
    }

    pub async fn scheduler_stats(&self) -> Result<SchedulerStats> {
        let scheduler = self.system.scheduler.get().ok_or_else(|| self.system.down_error())?;
        ractor::call!(scheduler, SchedulerMsg::Stats).map_err(|_| self.system.down_error())
    }

    /// The reason the system went down, if it did.
    pub fn down_reason(&self) -> Option<String> {
        self.system.down_reason()
    }

    /// Waits until the system goes down. Returns the reason as an error unless it was a
    /// graceful [`shutdown`](AgentOS::shutdown).
    pub async fn wait(&self) -> Result<()> {
        let mut down = self.down.clone();
        let _ = down.wait_for(|d| *d).await;
        match self.system.shutting_down.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(self.system.down_error()),
        }
    }

    /// Graceful shutdown: stops accepting work, lets queued and running tasks finish (up to
    /// `shutdown_grace`), then stops the tree children-first in reverse start order (agents
    /// checkpoint as they stop). Tasks still queued after the grace period are answered with
    /// [`RuntimeError::ShuttingDown`] and stay in their agent's checkpoint. Returns the reason if
    /// the system had already gone down on its own.
    pub async fn shutdown(self) -> Result<()> {
        let system = self.system.clone();
        system.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + self.shutdown_grace;
        loop {
            let records: Vec<SharedRecord> = system.registry().by_pid.values().cloned().collect();
            let busy = records.iter().any(|r| !r.is_idle() && r.state() != AgentState::Stopped);
            if !busy || Instant::now() >= deadline || system.down_reason().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let already_down = system.down_reason();
        system.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.root.stop_and_wait(None, None).await;
        let mut down = self.down.clone();
        let _ = down.wait_for(|d| *d).await;
        if let Some(dir) = &self.ephemeral_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        match already_down {
            Some(reason) => Err(RuntimeError::SystemDown { reason }),
            None => Ok(()),
        }
    }
}

impl Drop for AgentOS {
    fn drop(&mut self) {
        // Without a graceful shutdown the tree would outlive its owner; stop it (agents still
        // checkpoint as they stop). The ephemeral directory is left: stopping is asynchronous.
        if self.system.down_reason().is_none() {
            self.system.shutting_down.store(true, Ordering::SeqCst);
            self.root.stop(None);
        }
    }
}

/// What every agent actor and handle of one AgentOS shares.
pub(crate) struct System {
    pub scheduler: ActorSlot<SchedulerMsg>,
    pub kernel: Option<ActorSlot<KernelMsg>>,
    pub memory: Arc<MemorySystem>,
    pub agent_supervisor: ActorSlot<SupervisorMsg>,
    pub checkpoints: CheckpointStore,
    registry: Mutex<Registry>,
    next_pid: AtomicU64,
    accepting: AtomicBool,
    shutting_down: AtomicBool,
    down: OnceLock<String>,
    pub events: broadcast::Sender<SupervisorEvent>,
    /// Agent actors whose state is alive (see `AgentOS::live_agent_actors`).
    pub live_agent_actors: AtomicUsize,
}

#[derive(Default)]
pub(crate) struct Registry {
    by_pid: BTreeMap<Pid, SharedRecord>,
    by_name: HashMap<String, Pid>,
}

impl Registry {
    fn insert(&mut self, record: SharedRecord) -> Result<()> {
        if self.by_name.contains_key(&record.name) {
            return Err(RuntimeError::NameTaken(record.name.clone()));
        }
        self.by_name.insert(record.name.clone(), record.pid);
        self.by_pid.insert(record.pid, record);
        Ok(())
    }

    fn child_specs(&self) -> Vec<ChildSpec> {
        self.by_pid
            .values()
            .filter_map(|r| r.child.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

impl System {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn forget_agent(&self, record: &AgentRecord) {
        let mut registry = self.registry();
        if registry.by_pid.remove(&record.pid).is_some() {
            registry.by_name.remove(&record.name);
        }
    }

    pub fn down_reason(&self) -> Option<String> {
        self.down.get().cloned()
    }

    pub fn check_accepting(&self) -> Result<()> {
        if let Some(reason) = self.down_reason() {
            return Err(RuntimeError::SystemDown { reason });
        }
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(RuntimeError::ShuttingDown);
        }
        Ok(())
    }

    pub fn down_error(&self) -> RuntimeError {
        RuntimeError::SystemDown {
            reason: self
                .down_reason()
                .unwrap_or_else(|| "a system actor is restarting".to_string()),
        }
    }

    /// The tree is gone: answer everything still queued, for every agent.
    fn go_down(&self, reason: String) {
        let _ = self.down.set(reason.clone());
        let records: Vec<SharedRecord> = self.registry().by_pid.values().cloned().collect();
        let graceful = self.shutting_down.load(Ordering::SeqCst);
        for record in records {
            record.close(match graceful {
                true => RuntimeError::ShuttingDown,
                false => RuntimeError::SystemDown { reason: reason.clone() },
            });
        }
    }
}

/// How the agent supervisor starts (and restarts) one agent.
fn agent_child_spec<R: Agent>(
    record: SharedRecord,
    system: Arc<System>,
    spec: Arc<AgentSpec>,
    initial: Arc<Vec<u8>>,
) -> ChildSpec {
    let id = record.name.clone();
    ChildSpec::new(id, Restart::Transient, move |supervisor| {
        let args = AgentArgs {
            record: record.clone(),
            system: system.clone(),
            spec: spec.clone(),
            initial: initial.clone(),
        };
        async move {
            if args.record.queue().actor.is_some() {
                args.record.set_state(AgentState::Restarting);
                args.record.restarts.fetch_add(1, Ordering::Relaxed);
            }
            let (agent, _join) = Actor::spawn_linked(None, AgentActor::<R>::new(), args, supervisor).await?;
            Ok(agent.get_cell())
        }
    })
}

fn ephemeral_checkpoint_dir() -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "agentos-checkpoints-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}
