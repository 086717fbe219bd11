//! The generic supervisor: each restart strategy, restart policies, intensity and escalation,
//! ordered shutdown. Children are small counting actors, no model involved.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentos_runtime::supervisor::{
    ActorSlot, ChildSpec, Restart, RestartIntensity, Strategy, Supervisor, SupervisorArgs, SupervisorEvent,
    SupervisorMsg,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::broadcast;

/// A child that counts its starts and fails (or stops) on request.
#[derive(Clone)]
struct Worker {
    starts: Arc<AtomicUsize>,
    stop_log: Arc<std::sync::Mutex<Vec<&'static str>>>,
    name: &'static str,
}

enum WorkerMsg {
    Fail,
    Panic,
    Stop,
}

#[ractor::async_trait]
impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<WorkerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<WorkerMsg>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        self.stop_log.lock().unwrap().push(self.name);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<WorkerMsg>, msg: WorkerMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Fail => Err("asked to fail".into()),
            WorkerMsg::Panic => panic!("asked to panic"),
            WorkerMsg::Stop => {
                myself.stop(None);
                Ok(())
            }
        }
    }
}

struct Tree {
    supervisor: ActorRef<SupervisorMsg>,
    join: ractor::concurrency::JoinHandle<()>,
    starts: Vec<Arc<AtomicUsize>>,
    slots: Vec<ActorSlot<WorkerMsg>>,
    stop_log: Arc<std::sync::Mutex<Vec<&'static str>>>,
    events: broadcast::Receiver<SupervisorEvent>,
}

async fn tree(strategy: Strategy, restarts: &[Restart], intensity: RestartIntensity) -> Tree {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    let (events_tx, events) = broadcast::channel(64);
    let stop_log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut args = SupervisorArgs::new("test", strategy)
        .intensity(intensity)
        .events(events_tx);
    let (mut starts, mut slots) = (Vec::new(), Vec::new());
    for (i, restart) in restarts.iter().enumerate() {
        let worker = Worker {
            starts: Arc::new(AtomicUsize::new(0)),
            stop_log: stop_log.clone(),
            name: NAMES[i],
        };
        let slot = ActorSlot::new();
        starts.push(worker.starts.clone());
        slots.push(slot.clone());
        args = args.child(ChildSpec::actor_in_slot(NAMES[i], *restart, worker, (), slot));
    }
    let (supervisor, join) = Supervisor::spawn(args).await.unwrap();
    Tree {
        supervisor,
        join,
        starts,
        slots,
        stop_log,
        events,
    }
}

fn counts(tree: &Tree) -> Vec<usize> {
    tree.starts.iter().map(|s| s.load(Ordering::SeqCst)).collect()
}

/// Waits for the next `Restarted` (or `Removed`) event.
async fn next_event(tree: &mut Tree) -> SupervisorEvent {
    tokio::time::timeout(Duration::from_secs(10), tree.events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the channel is open")
}

const LENIENT: RestartIntensity = RestartIntensity {
    max_restarts: 10,
    within: Duration::from_secs(60),
};

runtime_test! {
    async fn one_for_one_restarts_only_the_failed_child() {
        let mut t = tree(Strategy::OneForOne, &[Restart::Permanent; 3], LENIENT).await;
        t.slots[1].get().unwrap().cast(WorkerMsg::Panic).unwrap();
        assert!(matches!(next_event(&mut t).await, SupervisorEvent::Restarted { ref child, .. } if child == "b"));
        assert_eq!(counts(&t), vec![1, 2, 1]);
        // The slot holds the new instance, which works.
        t.slots[1].get().unwrap().cast(WorkerMsg::Fail).unwrap();
        next_event(&mut t).await;
        assert_eq!(counts(&t), vec![1, 3, 1]);
        t.supervisor.stop_and_wait(None, None).await.unwrap();
    }
}

runtime_test! {
    async fn one_for_all_restarts_every_child() {
        let mut t = tree(Strategy::OneForAll, &[Restart::Permanent; 3], LENIENT).await;
        t.slots[1].get().unwrap().cast(WorkerMsg::Fail).unwrap();
        for _ in 0..3 {
            assert!(matches!(next_event(&mut t).await, SupervisorEvent::Restarted { .. }));
        }
        assert_eq!(counts(&t), vec![2, 2, 2]);
        // The siblings were stopped newest first before the restart.
        assert_eq!(*t.stop_log.lock().unwrap(), vec!["c", "a"]);
        t.supervisor.stop_and_wait(None, None).await.unwrap();
    }
}

runtime_test! {
    async fn rest_for_one_restarts_the_child_and_those_started_after_it() {
        let mut t = tree(Strategy::RestForOne, &[Restart::Permanent; 4], LENIENT).await;
        t.slots[1].get().unwrap().cast(WorkerMsg::Panic).unwrap();
        for _ in 0..3 {
            next_event(&mut t).await;
        }
        assert_eq!(counts(&t), vec![1, 2, 2, 2]);
        assert_eq!(*t.stop_log.lock().unwrap(), vec!["d", "c"]);
        t.supervisor.stop_and_wait(None, None).await.unwrap();
    }
}

runtime_test! {
    async fn restart_policies_decide_what_comes_back() {
        let mut t = tree(
            Strategy::OneForOne,
            &[Restart::Permanent, Restart::Transient, Restart::Temporary],
            LENIENT,
        )
        .await;
        // Permanent: back even after a normal stop.
        t.slots[0].get().unwrap().cast(WorkerMsg::Stop).unwrap();
        assert!(matches!(next_event(&mut t).await, SupervisorEvent::Restarted { ref child, .. } if child == "a"));
        // Transient: a normal stop removes it...
        t.slots[1].get().unwrap().cast(WorkerMsg::Stop).unwrap();
        assert!(matches!(next_event(&mut t).await, SupervisorEvent::Removed { ref child, .. } if child == "b"));
        // ...and temporary never comes back, even after a failure.
        t.slots[2].get().unwrap().cast(WorkerMsg::Panic).unwrap();
        assert!(matches!(next_event(&mut t).await, SupervisorEvent::Removed { ref child, .. } if child == "c"));
        assert_eq!(counts(&t), vec![2, 1, 1]);
        let children = ractor::call!(t.supervisor, SupervisorMsg::Children).unwrap();
        assert_eq!(
            children.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        t.supervisor.stop_and_wait(None, None).await.unwrap();
    }
}

runtime_test! {
    async fn passing_the_intensity_limit_stops_the_children_and_fails_the_supervisor() {
        let intensity = RestartIntensity {
            max_restarts: 2,
            within: Duration::from_secs(60),
        };
        let mut t = tree(Strategy::OneForOne, &[Restart::Permanent; 2], intensity).await;
        for _ in 0..2 {
            t.slots[0].get().unwrap().cast(WorkerMsg::Fail).unwrap();
            assert!(matches!(next_event(&mut t).await, SupervisorEvent::Restarted { .. }));
        }
        t.slots[0].get().unwrap().cast(WorkerMsg::Fail).unwrap();
        let SupervisorEvent::GaveUp { reason, .. } = next_event(&mut t).await else {
            panic!("expected GaveUp");
        };
        assert!(reason.contains("gave up after 2 restarts"), "{reason}");
        tokio::time::timeout(Duration::from_secs(10), t.join)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t.supervisor.get_status(), ractor::ActorStatus::Stopped);
        // The healthy sibling was stopped (gracefully) before the supervisor failed.
        assert_eq!(*t.stop_log.lock().unwrap(), vec!["b"]);
    }
}

runtime_test! {
    async fn a_supervisor_that_gives_up_escalates_to_its_parent() {
        let starts = Arc::new(AtomicUsize::new(0));
        let worker_slot = ActorSlot::new();
        let worker = Worker {
            starts: starts.clone(),
            stop_log: Arc::new(std::sync::Mutex::new(Vec::new())),
            name: "w",
        };
        let inner_slot = ActorSlot::new();
        let (events_tx, mut events) = broadcast::channel(64);
        let inner_events = events_tx.clone();
        let inner_worker_slot = worker_slot.clone();
        let inner = Supervisor::child_spec(
            "inner",
            move || {
                SupervisorArgs::new("inner", Strategy::OneForOne)
                    .intensity(RestartIntensity {
                        max_restarts: 1,
                        within: Duration::from_secs(60),
                    })
                    .events(inner_events.clone())
                    .child(ChildSpec::actor_in_slot(
                        "w",
                        Restart::Permanent,
                        worker.clone(),
                        (),
                        inner_worker_slot.clone(),
                    ))
            },
            inner_slot.clone(),
        );
        let outer = SupervisorArgs::new("outer", Strategy::OneForOne)
            .intensity(LENIENT)
            .events(events_tx)
            .child(inner);
        let (outer, _join) = Supervisor::spawn(outer).await.unwrap();
        let first_inner = inner_slot.get().unwrap().get_id();

        let worker_ref = || worker_slot.get().unwrap();
        worker_ref().cast(WorkerMsg::Fail).unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(event, SupervisorEvent::Restarted { ref supervisor, .. } if supervisor == "inner"));
        worker_ref().cast(WorkerMsg::Fail).unwrap();
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|e| matches!(e, SupervisorEvent::Restarted { supervisor, .. } if supervisor == "outer"))
        {
            seen.push(
                tokio::time::timeout(Duration::from_secs(10), events.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert!(
            seen.iter()
                .any(|e| matches!(e, SupervisorEvent::GaveUp { supervisor, .. } if supervisor == "inner"))
        );
        // The outer supervisor started a fresh inner supervisor, which started a fresh worker.
        assert_ne!(inner_slot.get().unwrap().get_id(), first_inner);
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        outer.stop_and_wait(None, None).await.unwrap();
    }
}

runtime_test! {
    async fn stopping_a_supervisor_stops_children_newest_first() {
        let t = tree(Strategy::OneForOne, &[Restart::Permanent; 3], LENIENT).await;
        t.supervisor.stop_and_wait(None, None).await.unwrap();
        assert_eq!(*t.stop_log.lock().unwrap(), vec!["c", "b", "a"]);
    }
}

runtime_test! {
    async fn children_can_be_added_and_removed_at_run_time() {
        let t = tree(Strategy::OneForOne, &[Restart::Permanent], LENIENT).await;
        let extra = Worker {
            starts: Arc::new(AtomicUsize::new(0)),
            stop_log: t.stop_log.clone(),
            name: "extra",
        };
        let spec = ChildSpec::actor("extra", Restart::Transient, extra.clone(), ());
        let started = ractor::call!(t.supervisor, SupervisorMsg::StartChild, spec).unwrap();
        assert!(started.is_ok());
        let again = ChildSpec::actor("extra", Restart::Transient, extra, ());
        let duplicate = ractor::call!(t.supervisor, SupervisorMsg::StartChild, again).unwrap();
        assert!(duplicate.unwrap_err().contains("already has a child `extra`"));
        assert!(ractor::call!(t.supervisor, SupervisorMsg::StopChild, "extra".to_string()).unwrap());
        assert_eq!(*t.stop_log.lock().unwrap(), vec!["extra"]);
        assert!(!ractor::call!(t.supervisor, SupervisorMsg::StopChild, "extra".to_string()).unwrap());
        t.supervisor.stop_and_wait(None, None).await.unwrap();
    }
}

runtime_test! {
    /// Intensity counts failure events, as OTP does: one failure that makes a one-for-all
    /// supervisor restart four children is one restart, not four.
    async fn one_failure_counts_once_however_many_children_it_restarts() {
        let intensity = RestartIntensity {
            max_restarts: 2,
            within: Duration::from_secs(60),
        };
        let mut t = tree(Strategy::OneForAll, &[Restart::Permanent; 4], intensity).await;
        for round in 1..=2 {
            t.slots[1].get().unwrap().cast(WorkerMsg::Fail).unwrap();
            for _ in 0..4 {
                let event = next_event(&mut t).await;
                assert!(matches!(event, SupervisorEvent::Restarted { restarts, .. } if restarts == round as u32), "{event:?}");
            }
            assert_eq!(counts(&t), vec![round + 1; 4]);
        }
        // A third failure within the window passes the limit of two.
        t.slots[1].get().unwrap().cast(WorkerMsg::Fail).unwrap();
        assert!(matches!(next_event(&mut t).await, SupervisorEvent::GaveUp { .. }));
    }
}
