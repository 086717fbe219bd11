//! Starting agents: from the user's code (`AgentOS::spawn`) and from a model's `spawn_agent`
//! call, which plays a role registered with [`AgentOsBuilder::role`](crate::AgentOsBuilder::role).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use ractor::Actor;

use crate::agent::actor::{AgentActor, AgentArgs};
use crate::agent::dispatch::{check_call_grammar, describe_tools};
use crate::agent::handle::AgentHandle;
use crate::agent::record::{AgentRecord, SharedRecord, TaskReply};
use crate::agent::{Agent, AgentSpec};
use crate::error::{Result, RuntimeError};
use crate::rpc;
use crate::security::capabilities_for;
use crate::supervisor::{ChildSpec, Restart, Shutdown, SupervisorMsg};
use crate::system::System;
use crate::types::{AgentState, Pid};
use agentos_security::capability::Capabilities;

/// What an agent started by another agent inherits from it.
#[derive(Clone)]
pub(crate) struct Lineage {
    /// The parent's capabilities: the child gets at most these.
    pub ceiling: Arc<Capabilities>,
    /// The spawns left to the parent's tree, which the child draws from too.
    pub spawn_budget: Arc<AtomicU32>,
}

/// Registers and starts an agent playing `role` under `name` (what `AgentOS::spawn` and the
/// `spawn_agent` system call do). `parent` is set when another agent starts it (`None`: the
/// application).
pub(crate) async fn spawn_agent<R: Agent>(
    system: &Arc<System>,
    name: String,
    spec: AgentSpec,
    role: R,
    parent: Option<Lineage>,
) -> Result<AgentHandle> {
    system.check_accepting()?;
    let capabilities = capabilities_for(
        &spec,
        &name,
        &system.security.policy,
        &system.syscalls,
        parent.as_ref().map(|p| p.ceiling.as_ref()),
    );
    let spawn_budget = match &parent {
        Some(parent) => parent.spawn_budget.clone(),
        None => Arc::new(AtomicU32::new(capabilities.spawn.max_children)),
    };
    let tools = describe_tools(&spec, &capabilities, system)?;
    check_call_grammar(system, &name, &tools).await?;
    let initial =
        bincode::serde::encode_to_vec(&role, bincode::config::standard()).map_err(|e| RuntimeError::Start {
            what: format!("agent `{name}`"),
            reason: format!("cannot serialise its state: {e}"),
        })?;
    let pid = Pid(system.next_pid.fetch_add(1, Ordering::Relaxed));
    let record = Arc::new(AgentRecord::new(
        pid,
        name.clone(),
        spec.role.clone(),
        spec.tools.clone(),
        capabilities,
        spawn_budget,
        spec.priority,
    ));
    let memory = spec.memory;
    let child = agent_child_spec::<R>(record.clone(), system.clone(), Arc::new(spec), Arc::new(initial));
    *record.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child.clone());
    system.registry().insert(record.clone())?;
    // Tasks this name had accepted and not finished (the process ended under them) run
    // again; their callers are gone, their outcomes are recorded for `task_result`.
    let recovered = match system.journal.pending(&name).await {
        Ok(pending) => pending,
        Err(e) => {
            system.forget_agent(&record);
            return Err(e);
        }
    };
    for (id, task) in recovered {
        record.enqueue(id, task.input, TaskReply::Nobody, task.attempts)?;
    }
    if memory && let Err(reason) = system.memory.start_l1(&name, pid).await {
        system.forget_agent(&record);
        return Err(RuntimeError::Start {
            what: format!("the memory of agent `{name}`"),
            reason,
        });
    }

    let started = match system.agent_supervisor.get() {
        Some(supervisor) => rpc::call(
            &supervisor,
            "the agent supervisor (spawn)",
            system.call_timeout,
            |reply| SupervisorMsg::StartChild(child, reply),
            || system.down_error(),
        )
        .await
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

/// How the agent supervisor starts (and restarts) one agent. Agents are killed, not asked, when
/// their supervisor stops them: an agent may be in the middle of an LLM turn, everything it has
/// is in its record and the journal, and its cut-short start is given back.
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
    .with_shutdown(Shutdown::Kill)
}

type SpawnRole = Arc<dyn Fn(Arc<System>, String, Lineage) -> BoxFuture<'static, Result<AgentHandle>> + Send + Sync>;

/// Roles a model may start agents of with the `spawn_agent` system call, by role name (the
/// `role` of their `#[agent]`). Each child starts from the role's `Default` state.
#[derive(Clone, Default)]
pub struct RoleSet {
    roles: BTreeMap<String, (Arc<AgentSpec>, SpawnRole)>,
}

impl RoleSet {
    /// Registers `R` under its spec's role name (a later role of the same name replaces it).
    pub fn add<R: Agent + Default>(&mut self) {
        let spec = Arc::new(R::spec());
        let template = spec.clone();
        let spawn: SpawnRole = Arc::new(move |system, name, parent| {
            let spec = (*template).clone();
            Box::pin(async move { spawn_agent(&system, name, spec, R::default(), Some(parent)).await })
        });
        self.roles.insert(spec.role.clone(), (spec, spawn));
    }

    /// The registered role names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    pub fn spec(&self, role: &str) -> Option<&AgentSpec> {
        self.roles.get(role).map(|(spec, _)| spec.as_ref())
    }

    /// Starts an agent of `role` named `name` as a child of `parent`; `None` when no such role
    /// is registered.
    pub(crate) fn spawn(
        &self,
        system: &Arc<System>,
        role: &str,
        name: String,
        parent: Lineage,
    ) -> Option<BoxFuture<'static, Result<AgentHandle>>> {
        let (_, spawn) = self.roles.get(role)?;
        Some(spawn(system.clone(), name, parent))
    }
}

impl std::fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.roles.keys()).finish()
    }
}
