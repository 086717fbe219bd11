//! The `SyncActor`: the coherence layer's state, under the root supervisor.
//!
//! It owns the blackboard, the topic subscriptions, the leases and the record of pulses and
//! drift, all written through to `sync.redb` in the checkpoint directory before a call is
//! answered. A restarted instance reads them back (the blackboard, subscriptions, leases, marks,
//! pulses and drift samples: nothing acknowledged is lost); callers waiting for a lease when it
//! failed get an error and may ask again. The messages delivered since each agent's last pulse
//! (what the next pulse merges beside the agent's replies) are kept in memory only: they are
//! durable in the recipients' inboxes already, and writing each one again here would put a
//! disk commit on every message; a restart of this actor forgets them. It watches the supervisor events: an agent that
//! crashes (and is restarted) or is removed loses its leases and its places in lease queues.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentos_sync::blackboard::{Area, Blackboard, BoardStats, Cas, Change, Entry, Put};
use agentos_sync::lease::{Acquire, Grant, Lease, LeaseId, LeaseTable};
use agentos_sync::topic::{Publication, Subscription, TopicFilter, TopicSnapshot, TopicTable};
use agentos_sync::{Contribution, DriftSample, PulseRecord, SyncError, SyncStore};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::supervisor::SupervisorEvent;

type Reply<T> = RpcReplyPort<Result<T, SyncError>>;

/// The drift samples kept (the oldest go first).
const MAX_SAMPLES: usize = 10_000;

pub(crate) enum SyncMsg {
    Get {
        area: Area,
        key: String,
        reader: String,
        reply: Reply<Option<Entry>>,
    },
    /// Entries whose key starts with `prefix`: of `area` as `reader` may see them, or with
    /// neither, of every area (the operator's view).
    List {
        area: Option<(Area, String)>,
        prefix: String,
        reply: Reply<Vec<Entry>>,
    },
    Put {
        area: Area,
        key: String,
        value: serde_json::Value,
        author: String,
        reply: Reply<Put>,
    },
    Cas {
        area: Area,
        key: String,
        expected: Option<u64>,
        value: serde_json::Value,
        author: String,
        reply: Reply<Cas>,
    },
    Join {
        group: String,
        agent: String,
        reply: Reply<()>,
    },
    Subscribe {
        subscriber: String,
        filter: TopicFilter,
        reply: Reply<u64>,
    },
    Unsubscribe {
        subscriber: String,
        id: u64,
        reply: Reply<bool>,
    },
    Publish {
        publisher: String,
        topic: String,
        text: String,
        reply: Reply<(Publication, Vec<String>)>,
    },
    /// Answered when the lease is granted (maybe much later); `ticket` names the waiter.
    Acquire {
        resource: String,
        holder: String,
        term_ms: u64,
        ticket: u64,
        reply: Reply<Lease>,
    },
    Release {
        resource: String,
        id: LeaseId,
        holder: String,
        reply: Reply<()>,
    },
    /// The waiter `ticket` gave up.
    CancelWait {
        resource: String,
        ticket: u64,
    },
    /// Ends the leases whose term has passed.
    Expire,
    /// Agent `agent` crashed or was stopped: its leases and queue places go; a stopped agent's
    /// subscriptions go too.
    AgentGone {
        agent: String,
        stopped: bool,
    },
    /// A message was delivered to `agent` (written to its durable inbox): the next pulse that
    /// merges the agent includes it.
    Perceived {
        agent: String,
        perception: Contribution,
    },
    /// The next pulse's number, each agent's turn count at its last pulse, and what each agent
    /// was delivered since.
    BeginPulse(RpcReplyPort<PulseStart>),
    /// A pulse's record, the turn count of each participant it merged, and how many of each
    /// one's perceptions it merged (they are dropped).
    RecordPulse {
        record: PulseRecord,
        marks: BTreeMap<String, u64>,
        merged: BTreeMap<String, usize>,
        reply: Reply<()>,
    },
    RecordDrift(DriftSample),
    /// The digest vector each of `agents` holds: that of the last pulse that merged it (agents
    /// never merged, or merged by a pulse that merged nothing, are left out).
    HeldDigests {
        agents: Vec<String>,
        reply: RpcReplyPort<BTreeMap<String, Vec<f32>>>,
    },
    Pulses(RpcReplyPort<Vec<PulseRecord>>),
    Samples(RpcReplyPort<Vec<DriftSample>>),
    Leases(RpcReplyPort<Vec<Lease>>),
    Subscriptions(RpcReplyPort<Vec<Subscription>>),
    Stats(RpcReplyPort<SyncStats>),
}

/// Counters of the coherence layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStats {
    pub board: BoardStats,
    pub subscriptions: usize,
    pub publications: u64,
    pub leases: usize,
    pub lease_waiters: usize,
    pub pulses: usize,
    pub drift_samples: usize,
    /// Tokens of digests put into agents' contexts, over every pulse.
    pub tokens_injected: u64,
}

/// Where the next pulse starts from.
pub(crate) struct PulseStart {
    pub id: u64,
    pub marks: BTreeMap<String, u64>,
    pub perceived: BTreeMap<String, Vec<Contribution>>,
}

#[derive(Clone)]
pub(crate) struct SyncArgs {
    pub path: PathBuf,
    pub changes: broadcast::Sender<Change>,
    pub events: broadcast::Sender<SupervisorEvent>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncActor;

pub(crate) struct SyncState {
    store: Arc<SyncStore>,
    board: Blackboard,
    topics: TopicTable,
    leases: LeaseTable,
    /// Callers waiting for a lease, by ticket.
    waiters: HashMap<u64, Reply<Lease>>,
    /// Each agent's turn count at the last pulse that merged it.
    marks: BTreeMap<String, u64>,
    /// Messages delivered to each agent since the last pulse that merged it.
    perceived: BTreeMap<String, Vec<Contribution>>,
    pulses: Vec<PulseRecord>,
    samples: Vec<DriftSample>,
    publications: u64,
    changes: broadcast::Sender<Change>,
    watcher: tokio::task::JoinHandle<()>,
    /// When the expiry timer set last fires (one timer at a time: a later lease needs none).
    armed_ms: Option<u64>,
}

const LEASES: &str = "leases";
const TOPICS: &str = "topics";
const MARKS: &str = "marks";
/// Perceptions kept per agent between pulses (the oldest go first).
const MAX_PERCEIVED: usize = 256;

#[ractor::async_trait]
impl Actor for SyncActor {
    type Msg = SyncMsg;
    type State = SyncState;
    type Arguments = SyncArgs;

    async fn pre_start(&self, myself: ActorRef<SyncMsg>, args: SyncArgs) -> Result<SyncState, ActorProcessingErr> {
        let path = args.path.clone();
        let store = tokio::task::spawn_blocking(move || SyncStore::open(&path)).await??;
        let store = Arc::new(store);
        let board = Blackboard::open(store.clone())?;
        let topics = TopicTable::from_snapshot(store.get::<TopicSnapshot>(TOPICS)?.unwrap_or_default());
        let leases = LeaseTable::from_leases(store.get::<Vec<Lease>>(LEASES)?.unwrap_or_default());
        let marks = store.get::<BTreeMap<String, u64>>(MARKS)?.unwrap_or_default();
        let pulses: Vec<PulseRecord> = store.scan("pulse/")?.into_iter().map(|(_, p)| p).collect();
        let samples: Vec<DriftSample> = store.scan("drift/")?.into_iter().map(|(_, s)| s).collect();
        let publications = topics.snapshot().sequences.iter().map(|(_, n)| n).sum();
        let mut events = args.events.subscribe();
        let me = myself.clone();
        let watcher = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SupervisorEvent::Restarted { supervisor, child, .. }) if supervisor == "agents" => {
                        let _ = me.cast(SyncMsg::AgentGone {
                            agent: child,
                            stopped: false,
                        });
                    }
                    Ok(SupervisorEvent::Removed { supervisor, child, .. }) if supervisor == "agents" => {
                        let _ = me.cast(SyncMsg::AgentGone {
                            agent: child,
                            stopped: true,
                        });
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let state = SyncState {
            store,
            board,
            topics,
            leases,
            waiters: HashMap::new(),
            marks,
            perceived: BTreeMap::new(),
            pulses,
            samples,
            publications,
            changes: args.changes,
            watcher,
            armed_ms: None,
        };
        let mut state = state;
        state.arm_expiry(&myself);
        Ok(state)
    }

    async fn post_stop(&self, _: ActorRef<SyncMsg>, state: &mut SyncState) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SyncMsg>,
        msg: SyncMsg,
        state: &mut SyncState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        match msg {
            SyncMsg::Get {
                area,
                key,
                reader,
                reply,
            } => {
                let _ = reply.send(state.board.get(&area, &key, &reader));
            }
            SyncMsg::List { area, prefix, reply } => {
                let r = match area {
                    Some((area, reader)) => state.board.list(&area, &prefix, &reader),
                    None => Ok(state.board.list_all(&prefix)),
                };
                let _ = reply.send(r);
            }
            SyncMsg::Put {
                area,
                key,
                value,
                author,
                reply,
            } => {
                let r = state.board.put(&area, &key, value, &author, now);
                if let Ok(put) = &r {
                    state.announce(put.entry(), matches!(put, Put::Conflict(_)));
                }
                let _ = reply.send(r);
            }
            SyncMsg::Cas {
                area,
                key,
                expected,
                value,
                author,
                reply,
            } => {
                let r = state.board.compare_and_swap(&area, &key, expected, value, &author, now);
                if let Ok(Cas::Swapped(entry)) = &r {
                    state.announce(entry, false);
                }
                let _ = reply.send(r);
            }
            SyncMsg::Join { group, agent, reply } => {
                let _ = reply.send(state.board.join(&group, &agent));
            }
            SyncMsg::Subscribe {
                subscriber,
                filter,
                reply,
            } => {
                let id = state.topics.subscribe(&subscriber, filter);
                let _ = reply.send(state.save_topics().map(|_| id));
            }
            SyncMsg::Unsubscribe { subscriber, id, reply } => {
                let removed = state.topics.unsubscribe(&subscriber, id);
                let _ = reply.send(state.save_topics().map(|_| removed));
            }
            SyncMsg::Publish {
                publisher,
                topic,
                text,
                reply,
            } => {
                let r = state.topics.publish(&publisher, &topic, &text);
                // The sequence number is durable before anyone is told it.
                let r = match r {
                    Ok(published) => state.save_topics().map(|_| published),
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    state.publications += 1;
                }
                let _ = reply.send(r);
            }
            SyncMsg::Acquire {
                resource,
                holder,
                term_ms,
                ticket,
                reply,
            } => match state.leases.acquire(&resource, &holder, term_ms, ticket, now) {
                Ok(Acquire::Granted(lease)) => {
                    let r = state.save_leases().map(|_| lease);
                    let _ = reply.send(r);
                    state.arm_expiry(&myself);
                }
                Ok(Acquire::Queued { .. }) => {
                    state.waiters.insert(ticket, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            SyncMsg::Release {
                resource,
                id,
                holder,
                reply,
            } => {
                let r = state.leases.release(&resource, id, &holder, now);
                match r {
                    Ok(grant) => {
                        let saved = state.save_leases();
                        let _ = reply.send(saved);
                        state.grant(grant.into_iter().collect(), &myself);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            SyncMsg::CancelWait { resource, ticket } => {
                state.leases.cancel_wait(&resource, ticket);
                state.waiters.remove(&ticket);
            }
            SyncMsg::Expire => {
                state.armed_ms = None;
                let grants = state.leases.expire(now);
                if let Err(e) = state.save_leases() {
                    tracing::warn!(error = %e, "could not record expired leases");
                }
                state.grant(grants, &myself);
            }
            SyncMsg::AgentGone { agent, stopped } => {
                let grants = state.leases.release_holder(&agent, now);
                if stopped {
                    state.perceived.remove(&agent);
                    if state.topics.unsubscribe_all(&agent) > 0 {
                        let _ = state.save_topics();
                    }
                }
                if let Err(e) = state.save_leases() {
                    tracing::warn!(error = %e, "could not record released leases");
                }
                tracing::debug!(%agent, stopped, "leases of a gone agent released");
                state.grant(grants, &myself);
            }
            SyncMsg::Perceived { agent, perception } => {
                let list = state.perceived.entry(agent.clone()).or_default();
                list.push(perception);
                if list.len() > MAX_PERCEIVED {
                    list.remove(0);
                }
            }
            SyncMsg::BeginPulse(reply) => {
                let _ = reply.send(PulseStart {
                    id: state.pulses.last().map_or(1, |p| p.id + 1),
                    marks: state.marks.clone(),
                    perceived: state.perceived.clone(),
                });
            }
            SyncMsg::RecordPulse {
                record,
                marks,
                merged,
                reply,
            } => {
                for (agent, n) in merged {
                    if let Some(list) = state.perceived.get_mut(&agent) {
                        list.drain(..n.min(list.len()));
                        if list.is_empty() {
                            state.perceived.remove(&agent);
                        }
                    }
                }
                let r = state
                    .store
                    .put(&format!("pulse/{:012}", record.id), &record)
                    .and_then(|_| {
                        let mut all = state.marks.clone();
                        all.extend(marks);
                        state.store.put(MARKS, &all).map(|_| all)
                    });
                match r {
                    Ok(all) => {
                        state.marks = all;
                        state.pulses.push(record);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            SyncMsg::RecordDrift(sample) => {
                let key = format!("drift/{:016}-{:08}", sample.at_ms, state.samples.len());
                if let Err(e) = state.store.put(&key, &sample) {
                    tracing::warn!(error = %e, "could not record a drift sample");
                }
                state.samples.push(sample);
                if state.samples.len() > MAX_SAMPLES {
                    state.samples.remove(0);
                }
            }
            SyncMsg::HeldDigests { agents, reply } => {
                let mut held = BTreeMap::new();
                for agent in agents {
                    let last = state.pulses.iter().rev().find(|p| p.participants.contains(&agent));
                    if let Some(p) = last.filter(|p| !p.digest_vector.is_empty()) {
                        held.insert(agent, p.digest_vector.clone());
                    }
                }
                let _ = reply.send(held);
            }
            SyncMsg::Pulses(reply) => {
                let _ = reply.send(state.pulses.clone());
            }
            SyncMsg::Samples(reply) => {
                let _ = reply.send(state.samples.clone());
            }
            SyncMsg::Leases(reply) => {
                let _ = reply.send(state.leases.leases());
            }
            SyncMsg::Subscriptions(reply) => {
                let _ = reply.send(state.topics.subscriptions());
            }
            SyncMsg::Stats(reply) => {
                let _ = reply.send(SyncStats {
                    board: state.board.stats(),
                    subscriptions: state.topics.subscriptions().len(),
                    publications: state.publications,
                    leases: state.leases.leases().len(),
                    lease_waiters: state.waiters.len(),
                    pulses: state.pulses.len(),
                    drift_samples: state.samples.len(),
                    tokens_injected: state.pulses.iter().map(|p| p.tokens_injected).sum(),
                });
            }
        }
        Ok(())
    }
}

impl SyncState {
    fn announce(&self, entry: &Entry, conflict: bool) {
        // Nobody watching is not an error.
        let _ = self.changes.send(Change {
            area: entry.area.clone(),
            key: entry.key.clone(),
            author: entry.author.clone(),
            lamport: entry.lamport,
            conflict,
        });
    }

    fn save_topics(&self) -> Result<(), SyncError> {
        self.store.put(TOPICS, &self.topics.snapshot())
    }

    fn save_leases(&self) -> Result<(), SyncError> {
        self.store.put(LEASES, &self.leases.leases())
    }

    /// Tells the waiters their leases are granted (a waiter that gave up meanwhile lets its
    /// lease go again).
    fn grant(&mut self, grants: Vec<Grant>, myself: &ActorRef<SyncMsg>) {
        let mut pending = grants;
        while let Some(grant) = pending.pop() {
            let told = match self.waiters.remove(&grant.ticket) {
                Some(reply) => reply.send(Ok(grant.lease.clone())).is_ok(),
                None => false,
            };
            match told {
                true => {}
                false => {
                    let next =
                        self.leases
                            .release(&grant.lease.resource, grant.lease.id, &grant.lease.holder, now_ms());
                    pending.extend(next.ok().flatten());
                }
            }
        }
        if let Err(e) = self.save_leases() {
            tracing::warn!(error = %e, "could not record granted leases");
        }
        self.arm_expiry(myself);
    }

    /// Wakes the actor when the earliest lease expires.
    fn arm_expiry(&mut self, myself: &ActorRef<SyncMsg>) {
        let Some(at) = self.leases.next_expiry() else {
            return;
        };
        if self.armed_ms.is_some_and(|armed| armed <= at) {
            return;
        }
        self.armed_ms = Some(at);
        let wait = Duration::from_millis(at.saturating_sub(now_ms()).max(1));
        myself.send_after(wait, || SyncMsg::Expire);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn call<T: Send + 'static>(actor: &ActorRef<SyncMsg>, msg: impl FnOnce(RpcReplyPort<T>) -> SyncMsg) -> T {
        match actor.call(msg, Some(Duration::from_secs(10))).await.unwrap() {
            ractor::rpc::CallResult::Success(v) => v,
            _ => panic!("the sync actor did not answer"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_sync_actor_has_the_board_subscriptions_leases_and_pulses_back() {
        let dir = tempfile::tempdir().unwrap();
        let args = SyncArgs {
            path: dir.path().join("sync.redb"),
            changes: broadcast::channel(16).0,
            events: broadcast::channel(16).0,
        };
        let (first, join) = Actor::spawn(None, SyncActor, args.clone()).await.unwrap();
        let put = |reply| SyncMsg::Put {
            area: Area::Public,
            key: "fact".into(),
            value: serde_json::json!("Paris"),
            author: "a".into(),
            reply,
        };
        assert!(matches!(call(&first, put).await, Ok(Put::Written(_))));
        let filter = TopicFilter::new("news.*").unwrap();
        call(&first, |reply| SyncMsg::Subscribe {
            subscriber: "b".into(),
            filter,
            reply,
        })
        .await
        .unwrap();
        let lease = call(&first, |reply| SyncMsg::Acquire {
            resource: "printer".into(),
            holder: "a".into(),
            term_ms: 60_000,
            ticket: 1,
            reply,
        })
        .await
        .unwrap();
        // Killed, as a panic would end it: nothing is flushed on the way out.
        first.kill();
        join.await.unwrap();

        let (second, join) = Actor::spawn(None, SyncActor, args).await.unwrap();
        let get = |reply| SyncMsg::Get {
            area: Area::Public,
            key: "fact".into(),
            reader: "c".into(),
            reply,
        };
        let entry = call(&second, get).await.unwrap().unwrap();
        assert_eq!(entry.value, serde_json::json!("Paris"));
        assert_eq!(call(&second, SyncMsg::Subscriptions).await.len(), 1);
        assert_eq!(call(&second, SyncMsg::Leases).await, vec![lease]);
        second.stop(None);
        join.await.unwrap();
    }
}
