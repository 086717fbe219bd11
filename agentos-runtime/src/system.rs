//! `System`: what every agent actor and handle of one AgentOS shares.
//!
//! The slots of the system actors (each restart publishes the new instance), the agent
//! registry, the task journal and the settings calls need. [`AgentOS`](crate::AgentOS) builds it;
//! the actors and handles only read it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use agentos_kernel::KernelMsg;
use agentos_memory::PageId;
use agentos_sync::blackboard::Change;
use ractor::ActorRef;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::agent::journal::Journal;
use crate::agent::record::{AgentRecord, SharedRecord, fail_tasks};
use crate::agent::spawn::RoleSet;
use crate::error::{Result, RuntimeError};
use crate::mmu::MemorySystem;
use crate::scheduler::SchedulerMsg;
use crate::security::{Approver, AuditTrail, SecurityConfig};
use crate::supervisor::{ActorSlot, ChildSpec, SupervisorEvent, SupervisorMsg};
use crate::sync::SyncMsg;
use crate::syscall::mcp::McpConnection;
use crate::syscall::{SyscallConfig, Tool};
use crate::types::Pid;

pub(crate) struct System {
    pub scheduler: ActorSlot<SchedulerMsg>,
    pub kernel: Option<ActorSlot<KernelMsg>>,
    pub memory: Arc<MemorySystem>,
    pub agent_supervisor: ActorSlot<SupervisorMsg>,
    pub journal: Arc<Journal>,
    pub registry: Mutex<Registry>,
    pub next_pid: AtomicU64,
    pub accepting: AtomicBool,
    pub shutting_down: AtomicBool,
    down: OnceLock<String>,
    pub events: broadcast::Sender<SupervisorEvent>,
    /// Agent actors whose state is alive (see `AgentOS::live_agent_actors`).
    pub live_agent_actors: AtomicUsize,
    /// How long a call to a system actor may take (see `RuntimeConfig::call_timeout`).
    pub call_timeout: Duration,
    /// How long a call into memory may take (see `RuntimeConfig::memory_timeout`).
    pub memory_timeout: Duration,
    /// Starts after which a task that keeps failing its agent is answered with `TaskFailed`.
    pub max_task_attempts: u32,
    /// Limits of the system calls.
    pub syscalls: SyscallConfig,
    /// User tools and the tools of mounted MCP servers, by name.
    pub tools: HashMap<String, Arc<dyn Tool>>,
    /// Roles `spawn_agent` can start.
    pub roles: RoleSet,
    /// Mounted MCP servers (their tools are in `tools`).
    pub mcp: Vec<Arc<McpConnection>>,
    /// The coherence layer's actor.
    pub sync: ActorSlot<SyncMsg>,
    /// Blackboard changes, to watchers (kept here: it outlives restarts of the sync actor).
    pub sync_changes: broadcast::Sender<Change>,
    /// The digest page each agent with memory has pinned (replaced by the next pulse's).
    pins: Mutex<HashMap<String, PageId>>,
    /// Embeddings of texts drift was measured on lately, by SHA-256 of the text (newest last).
    embeddings: Mutex<VecDeque<([u8; 32], Vec<f32>)>>,
    /// Policy, approval timeout and exec limits.
    pub security: SecurityConfig,
    /// Decides gated calls (replaceable while the system runs).
    pub approver: std::sync::RwLock<Option<Arc<dyn Approver>>>,
    /// Where every system call is recorded.
    pub audit: AuditTrail,
}

/// Embeddings kept for drift measurements: a collaboration's replies and digests.
const EMBEDDINGS_KEPT: usize = 512;

#[derive(Default)]
pub(crate) struct Registry {
    pub by_pid: BTreeMap<Pid, SharedRecord>,
    pub by_name: HashMap<String, Pid>,
}

impl Registry {
    pub fn insert(&mut self, record: SharedRecord) -> Result<()> {
        if self.by_name.contains_key(&record.name) {
            return Err(RuntimeError::NameTaken(record.name.clone()));
        }
        self.by_name.insert(record.name.clone(), record.pid);
        self.by_pid.insert(record.pid, record);
        Ok(())
    }

    pub fn child_specs(&self) -> Vec<ChildSpec> {
        self.by_pid
            .values()
            .filter_map(|r| r.child.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

/// The settings `System` takes from the configuration.
pub(crate) struct SystemSettings {
    pub call_timeout: Duration,
    pub memory_timeout: Duration,
    pub max_task_attempts: u32,
    pub syscalls: SyscallConfig,
    pub tools: HashMap<String, Arc<dyn Tool>>,
    pub roles: RoleSet,
    pub mcp: Vec<Arc<McpConnection>>,
    pub security: SecurityConfig,
    pub audit: AuditTrail,
}

impl System {
    /// The kernel actor, when the system has one and it is running (not between restarts).
    pub fn kernel(&self) -> Option<ActorRef<KernelMsg>> {
        self.kernel.as_ref().and_then(|slot| slot.get())
    }

    pub fn new(
        scheduler: ActorSlot<SchedulerMsg>,
        kernel: Option<ActorSlot<KernelMsg>>,
        memory: Arc<MemorySystem>,
        journal: Arc<Journal>,
        events: broadcast::Sender<SupervisorEvent>,
        settings: SystemSettings,
    ) -> Self {
        System {
            scheduler,
            kernel,
            memory,
            agent_supervisor: ActorSlot::new(),
            journal,
            registry: Mutex::new(Registry::default()),
            next_pid: AtomicU64::new(1),
            accepting: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            down: OnceLock::new(),
            events,
            live_agent_actors: AtomicUsize::new(0),
            call_timeout: settings.call_timeout,
            memory_timeout: settings.memory_timeout,
            max_task_attempts: settings.max_task_attempts.max(1),
            syscalls: settings.syscalls,
            tools: settings.tools,
            roles: settings.roles,
            mcp: settings.mcp,
            sync: ActorSlot::new(),
            sync_changes: broadcast::channel(1024).0,
            pins: Mutex::new(HashMap::new()),
            embeddings: Mutex::new(VecDeque::new()),
            approver: std::sync::RwLock::new(settings.security.approver.clone()),
            security: settings.security,
            audit: settings.audit,
        }
    }

    /// Whether a model of agent `parent` may not give a new agent this name: the policy names
    /// it (its entry would apply), or another running agent may message it (a child taking it
    /// would receive what was meant for someone else; the parent's own peers are its to name).
    pub fn name_reserved(&self, name: &str, parent: Pid) -> bool {
        if self.security.policy.agents.contains_key(name) {
            return true;
        }
        let registry = self.registry();
        registry.by_pid.values().filter(|record| record.pid != parent).any(|record| {
            matches!(&record.capabilities.message, agentos_security::capability::Peers::Only(peers) if peers.contains(name))
        })
    }

    /// The approver of gated calls, if one is registered.
    pub fn approver(&self) -> Option<Arc<dyn Approver>> {
        self.approver.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn cached_embedding(&self, text: &str) -> Option<Vec<f32>> {
        let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let cache = self.embeddings.lock().unwrap_or_else(|e| e.into_inner());
        cache.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    pub fn cache_embedding(&self, text: &str, vector: Vec<f32>) {
        let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut cache = self.embeddings.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|(k, _)| *k != key);
        cache.push_back((key, vector));
        while cache.len() > EMBEDDINGS_KEPT {
            cache.pop_front();
        }
    }

    pub fn pins(&self) -> MutexGuard<'_, HashMap<String, PageId>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of the running agent called `name`.
    pub fn record(&self, name: &str) -> Option<SharedRecord> {
        let registry = self.registry();
        let pid = registry.by_name.get(name)?;
        registry.by_pid.get(pid).cloned()
    }

    pub fn records(&self) -> Vec<SharedRecord> {
        self.registry().by_pid.values().cloned().collect()
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

    /// The tree is gone: record and answer everything still queued, for every agent.
    pub async fn go_down(&self, reason: String) {
        let _ = self.down.set(reason.clone());
        let graceful = self.shutting_down.load(Ordering::SeqCst);
        for record in self.records() {
            let error = match graceful {
                true => RuntimeError::ShuttingDown,
                false => RuntimeError::SystemDown { reason: reason.clone() },
            };
            let failed = record.close(error, false);
            fail_tasks(&self.journal, &record, failed).await;
            // The start function refers to the record and the system: break the cycle.
            record.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        if let Err(e) = self.journal.flush().await {
            tracing::error!(error = %e, "the journal could not be flushed at shutdown");
        }
    }
}
