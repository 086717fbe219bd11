//! `AgentOS`: the root of the supervision tree and the user's entry point.
//!
//! ```text
//! RootWatch (takes the system down when the root exits)
//! └── AgentOS (root supervisor "agentos", one-for-one)
//!     ├── kernel      supervisor ─ KernelActor (owns the engine thread)
//!     ├── scheduler   SchedulerActor
//!     ├── memory      supervisor (rest-for-one) ─ L3Actor, L2Actor,
//!     │               l1 supervisor (one-for-one) ─ L1Actor × agents with memory
//!     └── agents      supervisor (agent_strategy) ─ AgentActor<R> × N
//! ```
//!
//! MCP servers ([`AgentOsBuilder::mcp_server`]) are child processes outside this tree: each is
//! started before the tree and watched by a task of its own that starts it again when it ends
//! (see [`syscall::mcp`](crate::syscall::mcp)); shutdown stops them after the tree.
//!
//! Children start in that order and stop in the reverse order. When the root passes its restart
//! intensity it stops everything; [`AgentOS::wait`] and every pending or later call then return
//! [`RuntimeError::SystemDown`] with the reason. Above the root sits a small watcher actor that
//! notices its exit and records and answers whatever was still queued.
//!
//! ## Delivery semantics
//!
//! Tasks (`ask`, `stream`, `send`) are **at least once** in execution and **exactly once** in
//! outcome. Each is written to the journal before the call returns; it then runs until its outcome
//! is recorded, which happens in the same transaction as the agent state it produced. If the
//! agent or the whole process dies before that, the task runs again (from the last checkpoint,
//! so the model sees the same state), up to `RuntimeConfig::max_task_attempts` starts. Its outcome
//! is recorded once under its [`TaskId`], readable with [`AgentOS::task_result`] even by a later
//! process, and a task answered with an error (stopped agent, shutdown) is recorded as failed
//! and never runs later.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentos_kernel::{KernelActor, KernelArgs, KernelMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{broadcast, oneshot, watch};

use crate::agent::handle::AgentHandle;
use crate::agent::journal::Journal;
use crate::agent::spawn::spawn_agent;
use crate::agent::{Agent, AgentSpec, DeclaredRole, TaskStatus};
use crate::config::RuntimeConfig;
use crate::error::{Result, RuntimeError};
use crate::mmu::MemorySystem;
use crate::rpc;
use crate::scheduler::{SchedulerActor, SchedulerArgs, SchedulerConfig, SchedulerMsg, SchedulerStats};
use crate::security::{Approver, AuditRecord, AuditTrail, SecurityConfig, Verification};
use crate::supervisor::{
    ActorSlot, ChildSpec, Restart, RestartIntensity, Strategy, Supervisor, SupervisorArgs, SupervisorEvent,
    SupervisorMsg,
};
use crate::sync::{
    Area, CollaborateConfig, Collaboration, DriftSample, Entry, Lease, PulseConfig, PulseRecord, PulseTrigger,
    Subscription, SyncActor, SyncArgs, SyncMsg, SyncStats, SyncTimer,
};
use crate::syscall::mcp::McpConnection;
use crate::syscall::{McpServer, McpServerInfo, SyscallConfig, Tool};
use crate::system::{System, SystemSettings};
use crate::types::{AgentInfo, AgentState, TaskId};

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

    /// Limits of the system calls (work directory, programs, timeouts).
    pub fn syscalls(mut self, syscalls: SyscallConfig) -> Self {
        self.config.syscalls = syscalls;
        self
    }

    /// Capabilities of agents, approvals, exec limits and the audit log (see
    /// [`security`](crate::security)).
    pub fn security(mut self, security: SecurityConfig) -> Self {
        self.config.security = security;
        self
    }

    /// The directory the file calls resolve under and programs run in.
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.syscalls.fs_root = Some(dir.into());
        self
    }

    /// Offers `tool` to every agent that names it in `#[agent(tools = [...])]` (a `#[tool]`
    /// fn's `...Tool` type, an [`FnTool`](crate::FnTool), or your own [`Tool`]).
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.config.tools.add(Arc::new(tool));
        self
    }

    /// Starts `server` with the AgentOS and offers its tools like [`tool`](Self::tool)s (see
    /// [`syscall::mcp`](crate::syscall::mcp)).
    pub fn mcp_server(mut self, server: McpServer) -> Self {
        self.config.mcp_servers.push(server);
        self
    }

    /// Lets agents start agents of role `R` with the `spawn_agent` system call (by its
    /// `#[agent(role = ...)]`; each child starts from `R::default()`).
    pub fn role<R: Agent + Default>(mut self) -> Self {
        self.config.roles.add::<R>();
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
        let scheduler_slot = ActorSlot::new();
        let memory = Arc::new(MemorySystem::new(
            config.memory.clone(),
            store_path,
            kernel_slot.clone(),
            scheduler_slot.clone(),
            config.call_timeout,
            config.memory_timeout,
        ));
        let journal = Journal::open(&checkpoint_dir, config.task_outcomes_kept)?;
        let (mcp, tools) = start_mcp_servers(&config).await?;
        let tools = config_tools(&config, tools).map_err(|reason| {
            mcp.iter().for_each(|server| server.stop());
            RuntimeError::Start {
                what: "the tools".into(),
                reason,
            }
        })?;
        let audit_path = config
            .security
            .audit_path
            .clone()
            .unwrap_or_else(|| checkpoint_dir.join("audit.jsonl"));
        let audit = AuditTrail::open(audit_path, config.security.audit_sync).map_err(|reason| {
            mcp.iter().for_each(|server| server.stop());
            RuntimeError::Start {
                what: "the audit log".into(),
                reason,
            }
        })?;
        let settings = SystemSettings {
            security: config.security.clone(),
            audit,
            call_timeout: config.call_timeout,
            memory_timeout: config.memory_timeout,
            max_task_attempts: config.max_task_attempts,
            syscalls: config.syscalls.clone(),
            tools,
            roles: config.roles.clone(),
            mcp,
        };
        let system = Arc::new(System::new(
            scheduler_slot,
            kernel_slot,
            memory.clone(),
            journal,
            events.clone(),
            settings,
        ));

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
        root = root.child(ChildSpec::actor_in_slot(
            "sync",
            Restart::Permanent,
            SyncActor,
            SyncArgs {
                path: checkpoint_dir.join("sync.redb"),
                changes: system.sync_changes.clone(),
                events: events.clone(),
            },
            system.sync.clone(),
        ));
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

        let (down_tx, down) = watch::channel(false);
        let (root_tx, root_rx) = oneshot::channel();
        let watch_args = RootWatchArgs {
            root,
            system: system.clone(),
            down: down_tx,
            started: root_tx,
        };
        Actor::spawn(None, RootWatch, watch_args)
            .await
            .map_err(|e| RuntimeError::Start {
                what: "the supervision tree".into(),
                reason: e.to_string(),
            })?;
        let root = root_rx.await.map_err(|_| RuntimeError::Start {
            what: "the supervision tree".into(),
            reason: "its watcher stopped before the root started".into(),
        })?;

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

    /// Spawns an agent from a spec built at run time (a team file, a command line) rather than
    /// declared with `#[agent]`: it behaves as a role with default hooks and no state of its own.
    /// Its checkpoint is keyed by `name` like any agent's.
    pub async fn spawn_spec(&self, name: impl Into<String>, spec: AgentSpec) -> Result<AgentHandle> {
        self.spawn_with(name.into(), spec, DeclaredRole).await
    }

    async fn spawn_with<R: Agent>(&self, name: String, spec: AgentSpec, role: R) -> Result<AgentHandle> {
        spawn_agent(&self.system, name, spec, role, None).await
    }

    /// The running agent called `name`.
    pub fn agent(&self, name: &str) -> Option<AgentHandle> {
        let record = self.system.record(name)?;
        Some(AgentHandle::new(record, self.system.clone()))
    }

    /// Every agent's pid, name, role, priority, state, turns and tokens used, in pid order.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.system.records().iter().map(|r| r.info()).collect()
    }

    /// How many agent actors exist right now, restarting ones included. After agents stop (or
    /// after a shutdown) this returns to zero: a leak detector for long-running systems.
    pub fn live_agent_actors(&self) -> usize {
        self.system.live_agent_actors.load(Ordering::Relaxed)
    }

    /// Restarts, removals, escalations and quarantined checkpoints anywhere in the tree, as they
    /// happen.
    pub fn events(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.system.events.subscribe()
    }

    /// The kernel actor currently running, if this AgentOS has a kernel.
    pub fn kernel(&self) -> Option<ActorRef<KernelMsg>> {
        self.system.kernel()
    }

    /// Where task `id` stands: pending (queued, running, or waiting for its agent to be spawned
    /// again after a crash), done with its recorded outcome, or unknown. Works for tasks of
    /// earlier processes that used the same checkpoint directory.
    pub async fn task_result(&self, id: TaskId) -> Result<TaskStatus> {
        self.system.journal.status(id).await
    }

    /// Waits up to `timeout` for task `id` to have an outcome, and returns where it stands then.
    /// Once it returns a finished task, the agent that ran it has moved on too (its state and
    /// queue no longer show the task).
    pub async fn wait_for_task(&self, id: TaskId, timeout: Duration) -> Result<TaskStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        let status = self.system.journal.wait(id, timeout).await?;
        if let TaskStatus::Done { agent, .. } = &status
            && let Some(record) = self.agent(agent).map(|h| h.record().clone())
        {
            // The outcome is on disk a moment before the agent takes the task off its queue.
            let _ = tokio::time::timeout_at(deadline, record.finished(id)).await;
        }
        Ok(status)
    }

    /// The completed turns numbered `from..to` of the agent called `name` (running or not: the
    /// journal keeps every turn of every agent that used this checkpoint directory).
    pub async fn history(&self, name: &str, from: u64, to: u64) -> Result<Vec<crate::agent::Turn>> {
        self.system.journal.history(name, from, to).await
    }

    /// Checkpoints of agent `name` that could not be read and were moved aside (see
    /// [`SupervisorEvent::Quarantined`]): when (milliseconds since the Unix epoch) and why.
    pub async fn quarantined(&self, name: &str) -> Result<Vec<(u64, String)>> {
        self.system.journal.quarantined(name).await
    }

    /// Runs one sync pulse over `agents` by hand (see [`sync`](crate::sync)): waits for each to
    /// reach a turn boundary, merges what they produced since their last pulse into one digest
    /// (written to the blackboard and put into each one's context) and returns the record.
    pub async fn pulse(&self, agents: &[AgentHandle], config: &PulseConfig) -> Result<PulseRecord> {
        crate::sync::pulse(&self.system, agents, PulseTrigger::Manual, config).await
    }

    /// The group's drift now (from the kernel's embedding of each agent's state), recorded.
    pub async fn drift(&self, agents: &[AgentHandle]) -> Result<DriftSample> {
        crate::sync::measure_drift(&self.system, agents).await
    }

    /// Works on `task` with `agents` in rounds: in each, every agent answers at once (one
    /// batched kernel); between rounds a sync pulse (by `config.policy`) shares what they
    /// found; then the synthesiser (`config.synthesiser`, an agent's name) writes the answer
    /// from the last round, or without one the medoid contribution is the answer. Returns
    /// every contribution, the pulses, the drift after each round and the metrics.
    pub async fn collaborate(
        &self,
        task: &str,
        agents: &[AgentHandle],
        config: &CollaborateConfig,
    ) -> Result<Collaboration> {
        let synthesiser = match &config.synthesiser {
            Some(name) => Some(
                self.agent(name)
                    .ok_or_else(|| RuntimeError::AgentStopped { agent: name.clone() })?,
            ),
            None => None,
        };
        crate::sync::collaborate(&self.system, task, agents, config, synthesiser).await
    }

    /// Runs a pulse over `agents` every `every` (at least one second apart) until the returned
    /// timer is stopped or dropped; with `only_when_drifting`, a tick pulses only when the
    /// group's drift is above `config.drift_threshold` (trigger `Drift`), else every tick does
    /// (trigger `Timer`). A pulse that fails is logged and the timer goes on.
    pub fn sync_every(
        &self,
        agents: Vec<AgentHandle>,
        every: Duration,
        only_when_drifting: bool,
        config: PulseConfig,
    ) -> SyncTimer {
        let system = self.system.clone();
        let every = every.max(Duration::from_secs(1));
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let trigger = if only_when_drifting {
                    match crate::sync::measure_drift(&system, &agents).await {
                        Ok(s) if s.drift.max > config.drift_threshold => PulseTrigger::Drift {
                            max: s.drift.max,
                            threshold: config.drift_threshold,
                        },
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "the sync timer could not measure drift");
                            continue;
                        }
                    }
                } else {
                    PulseTrigger::Timer
                };
                if let Err(e) = crate::sync::pulse(&system, &agents, trigger, &config).await {
                    tracing::warn!(error = %e, "a timed sync pulse failed");
                }
            }
        });
        SyncTimer { task }
    }

    /// Every pulse run with this checkpoint directory, in order.
    pub async fn pulses(&self) -> Result<Vec<PulseRecord>> {
        crate::sync::team::sync_call(&self.system, "the sync actor (pulses)", SyncMsg::Pulses).await
    }

    /// Every drift sample recorded (the newest 10,000), in order.
    pub async fn drift_history(&self) -> Result<Vec<DriftSample>> {
        crate::sync::team::sync_call(&self.system, "the sync actor (drift)", SyncMsg::Samples).await
    }

    /// Blackboard entries of every area whose key starts with `prefix` (the operator's view).
    pub async fn blackboard(&self, prefix: &str) -> Result<Vec<Entry>> {
        let prefix = prefix.to_string();
        let list = |reply| SyncMsg::List {
            area: None,
            prefix,
            reply,
        };
        Ok(crate::sync::team::sync_call(&self.system, "the sync actor (blackboard)", list).await??)
    }

    /// Blackboard entries of `area` whose key starts with `prefix`, as agent `reader` sees them.
    pub async fn blackboard_area(&self, area: &Area, reader: &str, prefix: &str) -> Result<Vec<Entry>> {
        let (area, prefix) = (Some((area.clone(), reader.to_string())), prefix.to_string());
        let list = |reply| SyncMsg::List { area, prefix, reply };
        Ok(crate::sync::team::sync_call(&self.system, "the sync actor (blackboard)", list).await??)
    }

    /// Changes to the blackboard as they happen (lagging receivers miss changes).
    pub fn watch_blackboard(&self) -> broadcast::Receiver<crate::sync::Change> {
        self.system.sync_changes.subscribe()
    }

    /// The leases held now.
    pub async fn leases(&self) -> Result<Vec<Lease>> {
        crate::sync::team::sync_call(&self.system, "the sync actor (leases)", SyncMsg::Leases).await
    }

    /// Every topic subscription.
    pub async fn subscriptions(&self) -> Result<Vec<Subscription>> {
        crate::sync::team::sync_call(&self.system, "the sync actor (subscriptions)", SyncMsg::Subscriptions).await
    }

    /// Counters of the coherence layer.
    pub async fn sync_stats(&self) -> Result<SyncStats> {
        crate::sync::team::sync_call(&self.system, "the sync actor (stats)", SyncMsg::Stats).await
    }

    /// Counters of the memory system's deep context (pages per tier, demotions, faults from disk).
    pub async fn memory_stats(&self) -> Result<agentos_memory::L2Stats> {
        let l2 = self.system.memory.l2.get().ok_or_else(|| self.system.down_error())?;
        let gone = || self.system.down_error();
        rpc::call(
            &l2,
            "L2 (stats)",
            self.system.call_timeout,
            agentos_memory::L2Msg::Stats,
            gone,
        )
        .await
    }

    pub async fn scheduler_stats(&self) -> Result<SchedulerStats> {
        let scheduler = self.system.scheduler.get().ok_or_else(|| self.system.down_error())?;
        let gone = || self.system.down_error();
        rpc::call(
            &scheduler,
            "the scheduler (stats)",
            self.system.call_timeout,
            SchedulerMsg::Stats,
            gone,
        )
        .await
    }

    /// Every record of the audit log, oldest first: one per system call any agent made,
    /// allowed or denied (see [`security`](crate::security)).
    pub async fn audit(&self) -> Result<Vec<AuditRecord>> {
        let path = self.system.audit.path().to_path_buf();
        tokio::task::spawn_blocking(move || agentos_security::audit::read(&path))
            .await
            .map_err(|e| RuntimeError::Audit(e.to_string()))?
            .map_err(|e| RuntimeError::Audit(e.to_string()))
    }

    /// Checks the audit log's hash chain, and that it still ends where this process last
    /// wrote it (so deleting the newest records is found too). `first_broken` names the first
    /// record that was edited, deleted, inserted or moved.
    pub async fn verify_audit(&self) -> Result<Verification> {
        let path = self.system.audit.path().to_path_buf();
        let head = self.system.audit.head();
        tokio::task::spawn_blocking(move || agentos_security::audit::verify_against(&path, &head))
            .await
            .map_err(|e| RuntimeError::Audit(e.to_string()))?
            .map_err(|e| RuntimeError::Audit(e.to_string()))
    }

    /// Where the audit log is.
    pub fn audit_path(&self) -> PathBuf {
        self.system.audit.path().to_path_buf()
    }

    /// Registers (or with `None` removes) the approver of gated calls.
    pub fn set_approver(&self, approver: Option<Arc<dyn Approver>>) {
        *self.system.approver.write().unwrap_or_else(|e| e.into_inner()) = approver;
    }

    /// The mounted MCP servers: process, whether they run, restarts, their tools.
    pub fn mcp_servers(&self) -> Vec<McpServerInfo> {
        self.system.mcp.iter().map(|server| server.info()).collect()
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
    /// `shutdown_grace`), then stops the tree children-first in reverse start order. Tasks still
    /// queued after the grace period are answered with [`RuntimeError::ShuttingDown`], and
    /// recorded so: they do not run when the agents are spawned again. Returns the reason if the
    /// system had already gone down on its own.
    pub async fn shutdown(self) -> Result<()> {
        let system = self.system.clone();
        system.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + self.shutdown_grace;
        loop {
            let busy = system
                .records()
                .iter()
                .any(|r| !r.is_idle() && r.state() != AgentState::Stopped);
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
        for server in &system.mcp {
            server.stop();
        }
        // Every outcome is on disk now; free the directory for whoever opens it next.
        system.journal.close();
        system.audit.close();
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
        // Without a graceful shutdown the tree would outlive its owner; stop it (every task
        // accepted and not finished stays in the journal). The ephemeral directory is left:
        // stopping is asynchronous.
        if self.system.down_reason().is_none() {
            self.system.shutting_down.store(true, Ordering::SeqCst);
            self.root.stop(None);
        }
        for server in &self.system.mcp {
            server.stop();
        }
    }
}

/// How to start the root watcher.
struct RootWatchArgs {
    root: SupervisorArgs,
    system: Arc<System>,
    down: watch::Sender<bool>,
    started: oneshot::Sender<ActorRef<SupervisorMsg>>,
}

/// The root supervisor's own supervisor: it starts the root linked to itself, and when the root
/// exits (a graceful shutdown, or the root giving up) it takes the system down: every task still
/// queued is recorded and answered, and [`AgentOS::wait`] returns.
struct RootWatch;

struct RootWatchState {
    system: Arc<System>,
    down: watch::Sender<bool>,
    gave_up: Arc<std::sync::OnceLock<String>>,
}

#[ractor::async_trait]
impl Actor for RootWatch {
    type Msg = ();
    type State = RootWatchState;
    type Arguments = RootWatchArgs;

    async fn pre_start(&self, myself: ActorRef<()>, args: RootWatchArgs) -> Result<RootWatchState, ActorProcessingErr> {
        let gave_up = args.root.gave_up.clone();
        let (root, _) = Supervisor::spawn_linked(args.root, myself.get_cell()).await?;
        let _ = args.started.send(root);
        Ok(RootWatchState {
            system: args.system,
            down: args.down,
            gave_up,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut RootWatchState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(
            event,
            SupervisionEvent::ActorFailed(..) | SupervisionEvent::ActorTerminated(..)
        ) {
            return Ok(());
        }
        let reason = if state.system.shutting_down.load(Ordering::SeqCst) {
            "AgentOS was shut down".to_string()
        } else {
            state
                .gave_up
                .get()
                .cloned()
                .unwrap_or_else(|| "the root supervisor stopped".to_string())
        };
        state.system.go_down(reason).await;
        let _ = state.down.send(true);
        myself.stop(None);
        Ok(())
    }
}

/// Starts every configured MCP server; on an error the ones started are stopped again.
async fn start_mcp_servers(config: &RuntimeConfig) -> Result<(Vec<Arc<McpConnection>>, Vec<Arc<dyn Tool>>)> {
    let mut servers = Vec::new();
    let mut tools = Vec::new();
    for server in &config.mcp_servers {
        match McpConnection::start(server.clone()).await {
            Ok((connection, offered)) => {
                servers.push(connection);
                tools.extend(offered);
            }
            Err(reason) => {
                servers.iter().for_each(|s: &Arc<McpConnection>| s.stop());
                return Err(RuntimeError::Start {
                    what: format!("the MCP server `{}`", server.name),
                    reason,
                });
            }
        }
    }
    Ok((servers, tools))
}

/// The user's tools and the MCP servers' tools, by name (a name given twice is an error).
fn config_tools(
    config: &RuntimeConfig,
    mcp_tools: Vec<Arc<dyn Tool>>,
) -> std::result::Result<HashMap<String, Arc<dyn Tool>>, String> {
    let mut all = config.tools.clone();
    for tool in mcp_tools {
        all.add(tool);
    }
    all.by_name()
}

fn ephemeral_checkpoint_dir() -> PathBuf {
    use std::sync::atomic::AtomicU64;
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

#[cfg(test)]
mod tests {
    use agentos_kernel::SamplingParams;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::agent::{AgentHooks, TaskOutcome};
    use crate::types::Priority;

    /// Keeps what it is told; "panic" makes it panic every time it is told so.
    #[derive(Default, Serialize, Deserialize)]
    struct Keeper {
        seen: Vec<String>,
    }

    impl AgentHooks for Keeper {
        fn on_message(&mut self, _from: &str, text: &str) {
            self.seen.push(text.to_string());
            if text == "panic" {
                panic!("told to panic");
            }
        }
    }

    impl Agent for Keeper {
        fn spec() -> AgentSpec {
            AgentSpec {
                name: "Keeper".into(),
                role: "keeper".into(),
                system: String::new(),
                priority: Priority::Normal,
                sampling: SamplingParams::default(),
                max_tokens: 16,
                tools: Vec::new(),
                max_steps: AgentSpec::DEFAULT_MAX_STEPS,
                tool_choice: crate::syscall::ToolChoice::Auto,
                history_turns: 2,
                memory: false,
                capabilities: None,
            }
        }
    }

    async fn delivered(os: &AgentOS, from: &AgentHandle, to: &AgentHandle, text: &str) -> TaskStatus {
        let id = from.send(to, text).await.unwrap();
        os.wait_for_task(id, Duration::from_secs(10)).await.unwrap()
    }

    fn is_delivered(status: &TaskStatus) -> bool {
        matches!(
            status,
            TaskStatus::Done {
                outcome: TaskOutcome::Delivered,
                ..
            }
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_checkpoint_at_spawn_is_quarantined_and_the_agent_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let os = AgentOS::builder()
            .without_kernel()
            .checkpoint_dir(dir.path())
            .start()
            .await
            .unwrap();
        let keeper = os.spawn(Keeper::default()).await.unwrap();
        assert!(is_delivered(&delivered(&os, &keeper, &keeper, "hello").await));
        os.shutdown().await.unwrap();
        // The journal is closed with the system: damage the agent's checkpoint in the file.
        let journal = Journal::open(dir.path(), 100).unwrap();
        journal
            .put_raw_checkpoint("Keeper", b"AGOSCKPT\x02\0\0\0 not a checkpoint")
            .unwrap();
        drop(journal);

        let os = AgentOS::builder()
            .without_kernel()
            .checkpoint_dir(dir.path())
            .start()
            .await
            .unwrap();
        let mut events = os.events();
        let keeper = os
            .spawn(Keeper::default())
            .await
            .expect("a bad checkpoint does not stop the spawn");
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        match event {
            SupervisorEvent::Quarantined {
                agent, path, reason, ..
            } => {
                assert_eq!(agent, "Keeper");
                assert_eq!(path, dir.path().join("journal.redb"));
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let quarantined = os.quarantined("Keeper").await.unwrap();
        assert_eq!(quarantined.len(), 1, "the bad record is kept for inspection");
        assert!(is_delivered(&delivered(&os, &keeper, &keeper, "again").await));
        os.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_checkpoint_met_while_the_agent_supervisor_is_rebuilt_keeps_the_others_up() {
        let dir = tempfile::tempdir().unwrap();
        let os = AgentOS::builder()
            .without_kernel()
            .checkpoint_dir(dir.path())
            // The agent supervisor gives up at its first failure, so the root rebuilds it with
            // every agent from its checkpoint.
            .agent_intensity(RestartIntensity {
                max_restarts: 0,
                within: Duration::from_secs(60),
            })
            .system_intensity(RestartIntensity {
                max_restarts: 10,
                within: Duration::from_secs(60),
            })
            .start()
            .await
            .unwrap();
        let mut events = os.events();
        let a = os.spawn_named("a", Keeper::default()).await.unwrap();
        let b = os.spawn_named("b", Keeper::default()).await.unwrap();
        let c = os.spawn_named("c", Keeper::default()).await.unwrap();
        for agent in [&a, &b, &c] {
            assert!(is_delivered(&delivered(&os, agent, agent, "note").await));
        }
        os.system.journal.put_raw_checkpoint("b", b"damaged").unwrap();

        // `a` panics on this message every time: the agent supervisor gives up, the root
        // rebuilds it (meeting b's damaged checkpoint), until the message fails for good.
        let status = delivered(&os, &c, &a, "panic").await;
        assert!(
            matches!(&status, TaskStatus::Done { outcome: TaskOutcome::Failed(f), .. } if f.kind == crate::agent::FailureKind::TaskFailed),
            "{status:?}"
        );
        assert!(
            os.down_reason().is_none(),
            "the system stays up: {:?}",
            os.down_reason()
        );
        let mut quarantined = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let SupervisorEvent::Quarantined { agent, .. } = event {
                quarantined.push(agent);
            }
        }
        assert_eq!(quarantined, vec!["b".to_string()], "only b's checkpoint was set aside");
        for agent in [&a, &b, &c] {
            assert!(agent.status().await.is_ok(), "{} is back", agent.name());
            assert!(is_delivered(&delivered(&os, agent, agent, "still here").await));
        }
        assert!(os.quarantined("c").await.unwrap().is_empty());
        os.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_did_not_parse_is_audited_as_denied() {
        use crate::agent::dispatch::{Caller, reject};
        use crate::security::Decision;
        use crate::syscall::SyscallError;
        let os = AgentOS::builder().without_kernel().start().await.unwrap();
        let keeper = os.spawn(Keeper::default()).await.unwrap();
        let caller = Caller {
            record: keeper.record(),
            system: &os.system,
        };
        let error = SyscallError::Malformed("expected a JSON object".into());
        let result = reject(&caller, "", "{not json", error.clone()).await;
        assert_eq!(result, Err(error));
        let records = os.audit().await.unwrap();
        let last = records.last().expect("the rejected call is recorded");
        assert_eq!(last.entry.agent, "Keeper");
        assert_eq!(last.entry.call, "(malformed)");
        assert_eq!(last.entry.decision, Decision::Denied);
        assert!(last.entry.outcome.starts_with("error: malformed call"), "{last:?}");
        assert!(os.verify_audit().await.unwrap().first_broken.is_none());
        os.shutdown().await.unwrap();
    }
}
