//! `Supervisor`: restart strategies and restart intensity for ractor actors.
//!
//! ractor links children to parents and reports their exits as [`SupervisionEvent`]s, but ships no
//! policy. This actor adds the Erlang/OTP one:
//!
//! - **Strategies** ([`Strategy`]): one-for-one (restart the child that exited), one-for-all
//!   (stop every other child, then restart all in start order), rest-for-one (stop the children
//!   started after it, then restart it and them in start order).
//! - **Restart policies** per child ([`Restart`]): permanent (always restarted), transient
//!   (restarted only when it failed), temporary (never restarted).
//! - **Restart intensity** ([`RestartIntensity`]): at most `max_restarts` within `within`. One
//!   more and the supervisor gives up: it stops its remaining children (newest first) and fails,
//!   so its own parent sees an `ActorFailed` and applies *its* strategy (escalation). The reason is
//!   stored in [`SupervisorArgs::gave_up`] for whoever watches the root.
//! - **Ordered shutdown**: stopping a supervisor stops its children newest first, each waited
//!   for, before it exits. How a child is stopped is its [`Shutdown`] policy: asked to stop and
//!   waited for up to a timeout (then killed), or killed at once (OTP's `brutal_kill`) for
//!   children whose handlers can run for long and whose state lives outside the actor (agents
//!   in the middle of an LLM turn), so a restart never waits for a sibling's turn.
//!
//! Semantics worth knowing: restart intensity counts failure *events*, as OTP does: one failure
//! that makes a one-for-all supervisor restart five children is one restart, not five; a child
//! that fails while starting during a restart counts as another. Messages queued in a dead
//! child's mailbox are gone (callers that must not lose work keep it outside the actor, as the
//! agents do); exits of children the supervisor stopped itself are ignored.
//!
//! ```no_run
//! use agentos_runtime::supervisor::{ChildSpec, Restart, Strategy, Supervisor, SupervisorArgs};
//! # #[derive(Clone)] struct Worker;
//! # #[ractor::async_trait]
//! # impl ractor::Actor for Worker {
//! #     type Msg = (); type State = (); type Arguments = ();
//! #     async fn pre_start(&self, _: ractor::ActorRef<()>, _: ()) -> Result<(), ractor::ActorProcessingErr> { Ok(()) }
//! # }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let args = SupervisorArgs::new("workers", Strategy::OneForAll)
//!     .child(ChildSpec::actor("a", Restart::Permanent, Worker, ()))
//!     .child(ChildSpec::actor("b", Restart::Permanent, Worker, ()));
//! let (supervisor, _join) = Supervisor::spawn(args).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use tokio::sync::broadcast;

/// What to restart when a child exits and must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Strategy {
    /// Restart only the child that exited.
    #[default]
    OneForOne,
    /// Stop all other children, then restart every child in start order.
    OneForAll,
    /// Stop the children started after the one that exited, then restart it and them.
    RestForOne,
}

/// When a child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Restart {
    /// Always, whether it failed or stopped normally.
    Permanent,
    /// Only when it failed (panicked or returned an error); a normal stop removes it.
    Transient,
    /// Never; any exit removes it.
    Temporary,
}

/// How a supervisor stops a child (for a sibling's restart, its own exit or `StopChild`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Ask it to stop, wait up to this long, then kill it.
    Timeout(Duration),
    /// Kill it at once: the message it is handling is cut short and `post_stop` does not run.
    /// For children that keep their state elsewhere and whose handlers may run for a long time.
    Kill,
}

/// At most `max_restarts` restarts within `within`; one more and the supervisor escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartIntensity {
    pub max_restarts: u32,
    pub within: Duration,
}

impl Default for RestartIntensity {
    /// Three restarts in five seconds, as Erlang/OTP's default (intensity 1 in 5 s) is too strict
    /// for agents whose turns can fail on model output.
    fn default() -> Self {
        RestartIntensity {
            max_restarts: 3,
            within: Duration::from_secs(5),
        }
    }
}

/// Starts one child, linked to the supervisor cell it is given.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, ActorProcessingErr>> + Send>>;
type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

/// How to start (and restart) one child.
#[derive(Clone)]
pub struct ChildSpec {
    pub id: String,
    pub restart: Restart,
    /// How it is stopped; `None`: asked, and waited for up to the supervisor's `stop_timeout`.
    pub shutdown: Option<Shutdown>,
    start: StartFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl ChildSpec {
    /// A child started by `start(supervisor)`, which must spawn it linked to `supervisor`.
    pub fn new<F, Fut>(id: impl Into<String>, restart: Restart, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, ActorProcessingErr>> + Send + 'static,
    {
        ChildSpec {
            id: id.into(),
            restart,
            shutdown: None,
            start: Arc::new(move |supervisor| Box::pin(start(supervisor))),
        }
    }

    /// Sets how the supervisor stops this child.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// A child that is one actor, restarted from clones of the same handler and arguments.
    pub fn actor<A>(id: impl Into<String>, restart: Restart, actor: A, args: A::Arguments) -> Self
    where
        A: Actor + Clone,
        A::Arguments: Clone + Sync,
    {
        Self::actor_in_slot(id, restart, actor, args, ActorSlot::new())
    }

    /// Like [`ChildSpec::actor`], and every (re)started instance is published in `slot`.
    pub fn actor_in_slot<A>(
        id: impl Into<String>,
        restart: Restart,
        actor: A,
        args: A::Arguments,
        slot: ActorSlot<A::Msg>,
    ) -> Self
    where
        A: Actor + Clone,
        A::Arguments: Clone + Sync,
    {
        ChildSpec::new(id, restart, move |supervisor| {
            let (actor, args, slot) = (actor.clone(), args.clone(), slot.clone());
            async move {
                let (child, _join) = Actor::spawn_linked(None, actor, args, supervisor).await?;
                slot.set(Some(child.clone()));
                Ok(child.get_cell())
            }
        })
    }
}

/// A stable address for a child its supervisor may restart: the supervisor's start function
/// publishes each new instance here, so holders never keep a dead `ActorRef`.
pub struct ActorSlot<M> {
    current: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M> Clone for ActorSlot<M> {
    fn clone(&self) -> Self {
        ActorSlot {
            current: self.current.clone(),
        }
    }
}

impl<M> Default for ActorSlot<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> ActorSlot<M> {
    pub fn new() -> Self {
        ActorSlot {
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// The current instance, if one has been started.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, actor: Option<ActorRef<M>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }
}

/// What a supervisor did, broadcast to whoever subscribed (examples print these).
#[derive(Debug, Clone)]
pub enum SupervisorEvent {
    /// `child` exited (`reason`) and was restarted; `restarts` counts within the window.
    Restarted {
        supervisor: String,
        child: String,
        reason: String,
        restarts: u32,
    },
    /// `child` exited and, by its restart policy, was removed.
    Removed {
        supervisor: String,
        child: String,
        reason: String,
    },
    /// The intensity limit was passed: the supervisor stopped its children and failed.
    GaveUp { supervisor: String, reason: String },
    /// Agent `agent`'s checkpoint could not be read; it was moved aside to `key` of the journal
    /// at `path` (kept for inspection) and the agent started from its initial state.
    Quarantined {
        agent: String,
        path: std::path::PathBuf,
        key: String,
        reason: String,
    },
}

/// How to start a supervisor.
pub struct SupervisorArgs {
    pub name: String,
    pub strategy: Strategy,
    pub intensity: RestartIntensity,
    /// Started in order when the supervisor starts; stopped in reverse order.
    pub children: Vec<ChildSpec>,
    /// Receives every [`SupervisorEvent`] (sending never blocks; lagging receivers miss events).
    pub events: Option<broadcast::Sender<SupervisorEvent>>,
    /// Set to the reason when this supervisor gives up (the parent only sees "actor failed").
    pub gave_up: Arc<OnceLock<String>>,
    /// How long to wait for one child to stop before killing it.
    pub stop_timeout: Duration,
}

impl SupervisorArgs {
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        SupervisorArgs {
            name: name.into(),
            strategy,
            intensity: RestartIntensity::default(),
            children: Vec::new(),
            events: None,
            gave_up: Arc::new(OnceLock::new()),
            stop_timeout: Duration::from_secs(30),
        }
    }

    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    pub fn intensity(mut self, intensity: RestartIntensity) -> Self {
        self.intensity = intensity;
        self
    }

    pub fn events(mut self, events: broadcast::Sender<SupervisorEvent>) -> Self {
        self.events = Some(events);
        self
    }
}

/// Messages a supervisor understands.
pub enum SupervisorMsg {
    /// Start a child after the existing ones; replies with its cell, or why it failed to start.
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, String>>),
    /// Stop the child with this id (waiting for it) and forget it; replies whether it existed.
    StopChild(String, RpcReplyPort<bool>),
    /// The children in start order: id and current actor id (None while restarting).
    Children(RpcReplyPort<Vec<(String, Option<ActorId>)>>),
}

/// The supervisor actor. See the module documentation for its semantics.
pub struct Supervisor;

impl Supervisor {
    /// Spawns an unsupervised supervisor (a root).
    pub async fn spawn(args: SupervisorArgs) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), SpawnErr> {
        Actor::spawn(None, Supervisor, args).await
    }

    /// Spawns a supervisor linked to `parent`.
    pub async fn spawn_linked(
        args: SupervisorArgs,
        parent: ActorCell,
    ) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), SpawnErr> {
        Actor::spawn_linked(None, Supervisor, args, parent).await
    }

    /// A child spec for a nested supervisor, rebuilt from `make_args` at every (re)start.
    pub fn child_spec(
        id: impl Into<String>,
        make_args: impl Fn() -> SupervisorArgs + Send + Sync + 'static,
        slot: ActorSlot<SupervisorMsg>,
    ) -> ChildSpec {
        let make_args = Arc::new(make_args);
        ChildSpec::new(id, Restart::Permanent, move |parent| {
            let (make_args, slot) = (make_args.clone(), slot.clone());
            async move {
                let (child, _join) = Supervisor::spawn_linked(make_args(), parent).await?;
                slot.set(Some(child.clone()));
                Ok(child.get_cell())
            }
        })
    }
}

struct Child {
    spec: ChildSpec,
    /// None while stopped for a restart.
    cell: Option<ActorCell>,
}

pub struct SupervisorState {
    name: String,
    strategy: Strategy,
    intensity: RestartIntensity,
    /// Children keyed by a start-order sequence number.
    children: BTreeMap<u64, Child>,
    by_actor: HashMap<ActorId, u64>,
    by_id: HashMap<String, u64>,
    next_seq: u64,
    restarts: VecDeque<Instant>,
    events: Option<broadcast::Sender<SupervisorEvent>>,
    gave_up: Arc<OnceLock<String>>,
    stop_timeout: Duration,
}

#[ractor::async_trait]
impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            name: args.name,
            strategy: args.strategy,
            intensity: args.intensity,
            children: BTreeMap::new(),
            by_actor: HashMap::new(),
            by_id: HashMap::new(),
            next_seq: 0,
            restarts: VecDeque::new(),
            events: args.events,
            gave_up: args.gave_up,
            stop_timeout: args.stop_timeout,
        };
        for spec in args.children {
            if let Err(e) = state.add_child(&myself, spec).await {
                state.stop_children(None).await;
                return Err(e.into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_children(None).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = state.add_child(&myself, spec).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::StopChild(id, reply) => {
                let existed = match state.by_id.get(&id).copied() {
                    Some(seq) => {
                        state.stop_child(seq).await;
                        state.forget(seq);
                        true
                    }
                    None => false,
                };
                let _ = reply.send(existed);
            }
            SupervisorMsg::Children(reply) => {
                let children = state
                    .children
                    .values()
                    .map(|c| (c.spec.id.clone(), c.cell.as_ref().map(|c| c.get_id())))
                    .collect();
                let _ = reply.send(children);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        // Exits of children this supervisor stopped itself (or already replaced) are unknown here.
        let Some(seq) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        if let Some(child) = state.children.get_mut(&seq) {
            child.cell = None;
        }
        state.on_child_exit(&myself, seq, failure).await
    }
}

impl SupervisorState {
    fn emit(&self, event: SupervisorEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    async fn add_child(&mut self, myself: &ActorRef<SupervisorMsg>, spec: ChildSpec) -> Result<ActorCell, String> {
        if self.by_id.contains_key(&spec.id) {
            return Err(format!("supervisor `{}` already has a child `{}`", self.name, spec.id));
        }
        let cell = (spec.start)(myself.get_cell())
            .await
            .map_err(|e| format!("child `{}` failed to start: {e}", spec.id))?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_actor.insert(cell.get_id(), seq);
        self.by_id.insert(spec.id.clone(), seq);
        self.children.insert(
            seq,
            Child {
                spec,
                cell: Some(cell.clone()),
            },
        );
        Ok(cell)
    }

    fn forget(&mut self, seq: u64) {
        if let Some(child) = self.children.remove(&seq) {
            self.by_id.remove(&child.spec.id);
            if let Some(cell) = child.cell {
                self.by_actor.remove(&cell.get_id());
            }
        }
    }

    /// Stops one child by its shutdown policy and waits for it.
    async fn stop_child(&mut self, seq: u64) {
        let Some(child) = self.children.get_mut(&seq) else {
            return;
        };
        let Some(cell) = child.cell.take() else {
            return;
        };
        let shutdown = child.spec.shutdown.unwrap_or(Shutdown::Timeout(self.stop_timeout));
        self.by_actor.remove(&cell.get_id());
        match shutdown {
            Shutdown::Kill => {
                let _ = cell.kill_and_wait(Some(self.stop_timeout)).await;
            }
            Shutdown::Timeout(timeout) => {
                let reason = Some(format!("stopped by supervisor `{}`", self.name));
                if cell.stop_and_wait(reason, Some(timeout)).await.is_err() {
                    let _ = cell.kill_and_wait(Some(self.stop_timeout)).await;
                }
            }
        }
    }

    /// Stops the children from `first` on (all when None), newest first.
    async fn stop_children(&mut self, first: Option<u64>) {
        let seqs: Vec<u64> = self
            .children
            .range(first.unwrap_or(0)..)
            .map(|(s, _)| *s)
            .rev()
            .collect();
        for seq in seqs {
            self.stop_child(seq).await;
        }
    }

    async fn on_child_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        seq: u64,
        failure: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(child) = self.children.get(&seq) else {
            return Ok(());
        };
        let id = child.spec.id.clone();
        let reason = failure.clone().unwrap_or_else(|| "stopped normally".to_string());
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => failure.is_some(),
            Restart::Temporary => false,
        };
        if !restart {
            tracing::debug!(supervisor = %self.name, child = %id, %reason, "child removed");
            self.forget(seq);
            self.emit(SupervisorEvent::Removed {
                supervisor: self.name.clone(),
                child: id,
                reason,
            });
            return Ok(());
        }

        let first = match self.strategy {
            Strategy::OneForOne => seq,
            Strategy::OneForAll => self.children.keys().next().copied().unwrap_or(seq),
            Strategy::RestForOne => seq,
        };
        // Stop the siblings the strategy restarts too, newest first.
        let siblings: Vec<u64> = match self.strategy {
            Strategy::OneForOne => Vec::new(),
            Strategy::OneForAll => self.children.keys().copied().filter(|s| *s != seq).rev().collect(),
            Strategy::RestForOne => self.children.range(seq + 1..).map(|(s, _)| *s).rev().collect(),
        };
        for sibling in siblings {
            self.stop_child(sibling).await;
        }
        let to_restart: Vec<u64> = match self.strategy {
            Strategy::OneForOne => vec![seq],
            _ => self.children.range(first..).map(|(s, _)| *s).collect(),
        };
        let mut reason = format!("child `{id}`: {reason}");
        // One failure is one restart, however many children the strategy restarts for it.
        if let Err(message) = self.count_restart(&reason) {
            self.stop_children(None).await;
            return Err(message.into());
        }
        for restart_seq in to_restart {
            // Temporary siblings stopped by the strategy are not brought back.
            if self.children.get(&restart_seq).map(|c| c.spec.restart) == Some(Restart::Temporary) {
                self.forget(restart_seq);
                continue;
            }
            loop {
                let child = &self.children[&restart_seq];
                let child_id = child.spec.id.clone();
                match (child.spec.start)(myself.get_cell()).await {
                    Ok(cell) => {
                        self.by_actor.insert(cell.get_id(), restart_seq);
                        if let Some(child) = self.children.get_mut(&restart_seq) {
                            child.cell = Some(cell);
                        }
                        tracing::info!(supervisor = %self.name, child = %child_id, %reason, "child restarted");
                        self.emit(SupervisorEvent::Restarted {
                            supervisor: self.name.clone(),
                            child: child_id,
                            reason: reason.clone(),
                            restarts: self.restarts.len() as u32,
                        });
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(supervisor = %self.name, child = %child_id, error = %e, "restart failed");
                        reason = format!("child `{child_id}` failed to restart: {e}");
                        // A failed start is another failure: it counts, so a child that cannot
                        // start escalates instead of looping.
                        if let Err(message) = self.count_restart(&reason) {
                            self.stop_children(None).await;
                            return Err(message.into());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Records one restart; past the intensity limit, stops everything and returns the error
    /// that fails this supervisor (escalation).
    fn count_restart(&mut self, reason: &str) -> Result<(), String> {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.intensity.within)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() as u32 >= self.intensity.max_restarts {
            let message = format!(
                "supervisor `{}` gave up after {} restarts within {:?} (limit {}); last: {reason}",
                self.name,
                self.restarts.len(),
                self.intensity.within,
                self.intensity.max_restarts
            );
            tracing::error!("{message}");
            let _ = self.gave_up.set(message.clone());
            self.emit(SupervisorEvent::GaveUp {
                supervisor: self.name.clone(),
                reason: message.clone(),
            });
            return Err(message);
        }
        self.restarts.push_back(now);
        Ok(())
    }
}
