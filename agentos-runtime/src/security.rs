//! Isolation in the runtime: the capabilities each agent holds, approval gates, and the audit
//! log every system call is written to.
//!
//! The mechanisms live in [`agentos_security`] (plain code, no model): [`Capabilities`] and
//! the policy check, the jailed file driver, the sandboxed `exec`, the capped fetch and the
//! hash-chained audit log. This module decides which capabilities an agent gets:
//!
//! 1. its spec's own ([`AgentSpec::capabilities`](crate::AgentSpec::capabilities)), narrowed
//!    by a [`Policy`] entry for its name or role when there is one; otherwise
//! 2. the policy entry for its name, or else its role; otherwise
//! 3. [`Policy::default`]; otherwise
//! 4. what [`SyscallConfig`] allows everyone: `fs_root` read-write, `exec_allow`, `net_allow`
//!    (private addresses only with `net_allow_private`), any peer, any number of children.
//!
//! An agent started by another agent's `spawn_agent` is looked up by its role only (a model
//! chose its name), gets at most its parent's capabilities ([`Capabilities::attenuate`]), and
//! draws on the spawn budget its whole tree shares. Nothing a model writes, and no message's
//! content, changes an agent's capabilities.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use agentos_security::audit::{AuditRecord, Broken, Decision, Verification};
pub use agentos_security::capability::{Access, Capabilities, FileGrant, Gate, NetGrant, Peers, SpawnGrant};
pub use agentos_security::exec::{ExecLimits, Layers};

use crate::agent::AgentSpec;
use crate::syscall::SyscallConfig;

/// Capabilities the application gives agents, by name or role.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// By agent name, or by role (an entry for the name wins over one for the role).
    pub agents: BTreeMap<String, Capabilities>,
    /// For agents that neither their spec nor `agents` gives capabilities. `None`: derived from
    /// [`SyscallConfig`] (see the module docs).
    pub default: Option<Capabilities>,
}

/// Isolation settings (part of [`RuntimeConfig`](crate::RuntimeConfig)).
#[derive(Clone)]
pub struct SecurityConfig {
    pub policy: Policy,
    /// Decides calls behind an approval [`Gate`]. Default `None`: such calls are denied. Can be
    /// set later with [`AgentOS::set_approver`](crate::AgentOS::set_approver).
    pub approver: Option<Arc<dyn Approver>>,
    /// How long a gated call waits for its approver; then it is denied. Default 60 s.
    pub approval_timeout: Duration,
    /// The audit log. Default `None`: `audit.jsonl` in the checkpoint directory.
    pub audit_path: Option<PathBuf>,
    /// Whether each audit record is on disk (fdatasync) before the call's result is returned.
    /// Default `true`; `false` trades that for speed (a crash may lose the last records).
    pub audit_sync: bool,
    /// Resource limits of `exec` children (its wall-clock timeout and output cap are
    /// [`SyscallConfig::exec_timeout`] and [`SyscallConfig::max_output_bytes`]).
    pub exec: ExecLimits,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            policy: Policy::default(),
            approver: None,
            approval_timeout: Duration::from_secs(60),
            audit_path: None,
            audit_sync: true,
            exec: ExecLimits::default(),
        }
    }
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("policy", &self.policy)
            .field("approver", &self.approver.is_some())
            .field("approval_timeout", &self.approval_timeout)
            .field("audit_path", &self.audit_path)
            .field("audit_sync", &self.audit_sync)
            .field("exec", &self.exec)
            .finish()
    }
}

/// A gated call waiting for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub agent: String,
    pub call: String,
    /// The call's arguments as JSON text.
    pub arguments: String,
    pub gate: Gate,
}

/// An approver's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    Approve,
    /// Refused, with the reason the model is shown.
    Deny(String),
}

/// Decides gated calls: a callback of the application ([`approver_fn`]), a person, or a
/// monitor agent ([`MonitorApprover`]).
pub trait Approver: Send + Sync + 'static {
    fn decide(&self, request: ApprovalRequest) -> BoxFuture<'static, Approval>;
}

struct FnApprover<F>(F);

impl<F, Fut> Approver for FnApprover<F>
where
    F: Fn(ApprovalRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Approval> + Send + 'static,
{
    fn decide(&self, request: ApprovalRequest) -> BoxFuture<'static, Approval> {
        Box::pin((self.0)(request))
    }
}

/// An approver from an async function.
pub fn approver_fn<F, Fut>(decide: F) -> Arc<dyn Approver>
where
    F: Fn(ApprovalRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Approval> + Send + 'static,
{
    Arc::new(FnApprover(decide))
}

/// An approver that asks a monitor agent: the agent is shown the policy text and the request
/// and answers in JSON (`{"approve": bool, "reason": "..."}`, constrained by its schema). An
/// error (the agent failed, or its answer did not parse) denies.
pub struct MonitorApprover {
    monitor: crate::AgentHandle,
    policy: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct Judgement {
    approve: bool,
    reason: String,
}

impl MonitorApprover {
    /// `policy` is the rule the monitor judges by, in words. Register it with
    /// `AgentOS::set_approver(Some(Arc::new(MonitorApprover::new(...))))`.
    pub fn new(monitor: crate::AgentHandle, policy: impl Into<String>) -> Self {
        MonitorApprover {
            monitor,
            policy: policy.into(),
        }
    }
}

impl Approver for MonitorApprover {
    fn decide(&self, request: ApprovalRequest) -> BoxFuture<'static, Approval> {
        let monitor = self.monitor.clone();
        let prompt = format!(
            "Policy: {}\n\nAgent `{}` asks to run `{}` with arguments {}. Does the policy allow it? \
             Answer with approve (true or false) and a short reason.",
            self.policy, request.agent, request.call, request.arguments
        );
        Box::pin(async move {
            match monitor.ask_json::<Judgement>(prompt).await {
                Ok(j) if j.approve => Approval::Approve,
                Ok(j) => Approval::Deny(format!("the monitor refused: {}", j.reason)),
                Err(e) => Approval::Deny(format!("the monitor could not decide: {e}")),
            }
        })
    }
}

/// The capability keys a role (`#[agent(...)]`) or a team file (`agentos run`, `chat`)
/// declares, as text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Declaration<'a> {
    /// Read-only grants: `"dir"` (the work directory, at most one in all) or `"mount=dir"`.
    pub read: &'a [&'a str],
    /// Read-write grants, as `read`.
    pub write: &'a [&'a str],
    pub exec: &'a [&'a str],
    pub net: &'a [&'a str],
    /// Agent names, or `["*"]` for any.
    pub peers: &'a [&'a str],
    pub children: u32,
    pub child_roles: Option<&'a [&'a str]>,
    /// Gate names: `exec`, `write`, `fetch`, `spawn`.
    pub approve: &'a [&'a str],
}

/// The capabilities `declaration` names: what it does not name is not granted (every call name
/// stays allowed: the agent's `tools` lists those). An error names the first bad value.
pub fn declare(declaration: &Declaration<'_>) -> Result<Capabilities, String> {
    let grant = |spec: &str, access| -> Result<FileGrant, String> {
        let (mount, dir) = spec.split_once('=').unwrap_or(("", spec));
        if dir.trim().is_empty() || mount.contains('/') || (spec.contains('=') && mount.trim().is_empty()) {
            return Err(format!("`{spec}` is not a directory or `mount=directory`"));
        }
        Ok(FileGrant {
            mount: mount.trim().to_string(),
            path: PathBuf::from(dir.trim()),
            access,
            scratch: false,
        })
    };
    let mut files = Vec::new();
    for spec in declaration.read {
        files.push(grant(spec, Access::Read)?);
    }
    for spec in declaration.write {
        files.push(grant(spec, Access::ReadWrite)?);
    }
    if files.iter().filter(|g| g.mount.is_empty()).count() > 1 {
        return Err("an agent has one work directory (a grant without `mount=`); give the others a mount name".into());
    }
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
    let message = match declaration.peers {
        [] => Peers::None,
        ["*"] => Peers::Any,
        names if names.contains(&"*") => return Err("`peers = [\"*\"]` means any agent; list no names with it".into()),
        names => Peers::Only(set(names)),
    };
    let mut approval = std::collections::BTreeSet::new();
    for gate in declaration.approve {
        approval.insert(match *gate {
            "exec" => Gate::Exec,
            "write" => Gate::Write,
            "fetch" => Gate::Fetch,
            "spawn" => Gate::Spawn,
            other => {
                return Err(format!(
                    "`approve` lists gates (exec, write, fetch, spawn), not `{other}`"
                ));
            }
        });
    }
    Ok(Capabilities {
        calls: None,
        files,
        exec: set(declaration.exec),
        net: NetGrant {
            hosts: declaration.net.iter().map(|s| s.to_string()).collect(),
            allow_private: false,
        },
        message,
        spawn: SpawnGrant {
            max_children: declaration.children,
            roles: declaration.child_roles.map(set),
        },
        approval,
    })
}

/// What `#[agent(...)]` expands to: [`declare`] of keys the macro has already checked the same
/// way. Should one still be refused, the role gets nothing outside the system (it fails
/// closed) and the reason is logged.
#[doc(hidden)]
pub fn declared_capabilities(declaration: Declaration<'static>) -> Capabilities {
    declare(&declaration).unwrap_or_else(|reason| {
        tracing::error!(%reason, "a role's declared capabilities were refused; it gets none");
        Capabilities::default()
    })
}

/// What [`SyscallConfig`] allows an agent given no capabilities of its own.
pub(crate) fn from_syscall_config(config: &SyscallConfig) -> Capabilities {
    Capabilities {
        files: config
            .fs_root
            .iter()
            .map(|root| FileGrant::work_dir(root.clone(), Access::ReadWrite))
            .collect(),
        exec: config.exec_allow.iter().cloned().collect(),
        net: NetGrant {
            hosts: config.net_allow.clone(),
            allow_private: config.net_allow_private,
        },
        ..Capabilities::unrestricted_calls()
    }
}

/// The capabilities of agent `name` with `spec`, started by a parent holding `ceiling` (or by
/// the application: `None`). File roots are made absolute (canonical where they exist), so that
/// attenuation compares real locations. An agent started by another agent is looked up in the
/// policy by its role only: its name was chosen by a model.
pub(crate) fn capabilities_for(
    spec: &AgentSpec,
    name: &str,
    policy: &Policy,
    syscalls: &SyscallConfig,
    ceiling: Option<&Capabilities>,
) -> Capabilities {
    let entry = match ceiling {
        Some(_) => policy.agents.get(&spec.role),
        None => policy.agents.get(name).or_else(|| policy.agents.get(&spec.role)),
    };
    let own = match (&spec.capabilities, entry) {
        (Some(declared), Some(entry)) => canonical(declared.clone()).attenuate(&canonical(entry.clone())),
        (Some(declared), None) => declared.clone(),
        (None, Some(entry)) => entry.clone(),
        (None, None) => policy.default.clone().unwrap_or_else(|| from_syscall_config(syscalls)),
    };
    let own = canonical(own);
    match ceiling {
        Some(ceiling) => own.attenuate(ceiling),
        None => own,
    }
}

fn canonical(mut caps: Capabilities) -> Capabilities {
    for grant in &mut caps.files {
        if let Ok(real) = grant.path.canonicalize() {
            grant.path = real;
        } else if grant.path.is_relative()
            && let Ok(cwd) = std::env::current_dir()
        {
            grant.path = cwd.join(&grant.path);
        }
    }
    caps
}

/// The audit log of one AgentOS: appends happen on the blocking pool (each waits for the disk
/// when `audit_sync` is on), one at a time. Closed when the system shuts down, which frees the
/// file (and its lock) for the next AgentOS on the same directory.
pub(crate) struct AuditTrail {
    state: Arc<std::sync::Mutex<AuditState>>,
    path: PathBuf,
}

enum AuditState {
    Open(agentos_security::audit::AuditLog),
    /// Where the chain ended when it was closed.
    Closed(agentos_security::audit::Head),
}

impl AuditTrail {
    pub fn open(path: PathBuf, sync: bool) -> Result<Self, String> {
        use agentos_security::audit::{AuditLog, Durability};
        let durability = match sync {
            true => Durability::Sync,
            false => Durability::Buffered,
        };
        let log = AuditLog::open_with(&path, durability).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(AuditTrail {
            state: Arc::new(std::sync::Mutex::new(AuditState::Open(log))),
            path,
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one record; an error says why it could not be written.
    pub async fn append(&self, entry: agentos_security::audit::AuditEntry) -> Result<(), String> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *state {
                AuditState::Open(log) => log.append(entry).map(|_| ()).map_err(|e| e.to_string()),
                AuditState::Closed(_) => Err("the audit log is closed: the system has shut down".into()),
            }
        })
        .await
        .map_err(|e| format!("the audit append stopped: {e}"))?
    }

    /// Where the chain ends now, as this process wrote it.
    pub fn head(&self) -> agentos_security::audit::Head {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            AuditState::Open(log) => log.head(),
            AuditState::Closed(head) => head.clone(),
        }
    }

    /// Closes the file; later appends fail.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let AuditState::Open(log) = &*state {
            *state = AuditState::Closed(log.head());
        }
    }
}
