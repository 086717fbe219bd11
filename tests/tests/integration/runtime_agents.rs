//! Agents without a model: spawning, listing, messages, restarts with each strategy, escalation
//! to a system shutdown, and 1,000 agents spawned and stopped without leaks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentos_runtime::prelude::*;

use crate::support::eventually;

/// You take notes.
#[agent(name = "Notes", role = "note-taker", priority = Low, custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Notes {
    received: Vec<String>,
}

impl AgentHooks for Notes {
    fn on_message(&mut self, from: &str, text: &str) {
        self.received.push(format!("{from}: {text}"));
        if text == "panic" {
            panic!("the note-taker was told to panic");
        }
    }
}

/// Panics in `prepare` while its fault budget lasts, then behaves.
#[agent(name = "Fragile", custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Fragile {
    /// The fault budget this instance draws on (see `fault_budget`).
    budget_key: u64,
}

/// Panics left per fault budget: each test run makes its own, so tests running at once (and
/// the two runtimes of one test) never share one.
static FAULTS: Mutex<BTreeMap<u64, u32>> = Mutex::new(BTreeMap::new());
static NEXT_BUDGET: AtomicU64 = AtomicU64::new(1);

/// A fresh budget of `panics` faults for `Fragile` agents.
fn fault_budget(panics: u32) -> u64 {
    let key = NEXT_BUDGET.fetch_add(1, Ordering::Relaxed);
    FAULTS.lock().unwrap_or_else(|e| e.into_inner()).insert(key, panics);
    key
}

impl AgentHooks for Fragile {
    fn prepare(&mut self, _prompt: &mut TurnPrompt) {
        let mut faults = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(left) = faults.get_mut(&self.budget_key)
            && *left > 0
        {
            *left -= 1;
            drop(faults);
            panic!("injected fault in prepare");
        }
    }
}

async fn no_kernel_os() -> AgentOS {
    AgentOS::builder()
        .without_kernel()
        .start()
        .await
        .expect("the tree starts")
}

runtime_test! {
    async fn agents_are_listed_with_their_spec_and_state() {
        let os = no_kernel_os().await;
        let notes = os.spawn(Notes::default()).await.unwrap();
        let second = os.spawn_named("Notes-2", Notes::default()).await.unwrap();
        assert!(matches!(
            os.spawn(Notes::default()).await,
            Err(RuntimeError::NameTaken(name)) if name == "Notes"
        ));

        let agents = os.agents();
        assert_eq!(agents.len(), 2);
        assert_eq!(agents[0].pid, notes.pid());
        assert_eq!(agents[0].name, "Notes");
        assert_eq!(agents[0].role, "note-taker");
        assert_eq!(agents[0].priority, Priority::Low);
        assert_eq!(agents[0].state, AgentState::Sleeping);
        assert_eq!(agents[1].name, "Notes-2");
        assert!(agents[1].pid > agents[0].pid);

        notes.set_priority(Priority::Realtime);
        assert_eq!(notes.info().priority, Priority::Realtime);
        assert_eq!(second.status().await.unwrap().turns, 0);
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    async fn messages_between_agents_are_delivered_and_tasks_without_a_kernel_fail_clearly() {
        let os = no_kernel_os().await;
        let a = os.spawn_named("a", Notes::default()).await.unwrap();
        let b = os.spawn_named("b", Notes::default()).await.unwrap();
        a.send(&b, "hello").await.unwrap();
        a.send(&b, "again").await.unwrap();
        assert_eq!(b.status().await.unwrap().queued_tasks, 0);
        assert!(matches!(a.ask("anything").await, Err(RuntimeError::NoKernel)));
        // The failed task is answered, not retried, and the agent keeps working.
        assert_eq!(a.info().restarts, 0);
        assert_eq!(a.info().state, AgentState::Sleeping);
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    async fn a_panicking_agent_is_restarted_and_its_message_redelivered_once() {
        let os = no_kernel_os().await;
        let mut events = os.events();
        let a = os.spawn_named("sender", Notes::default()).await.unwrap();
        let b = os.spawn_named("panicky", Notes::default()).await.unwrap();
        a.send(&b, "before").await.unwrap();
        // "panic" makes on_message panic every time: one redelivery, then the delivery is recorded
        // as failed.
        let id = a.send(&b, "panic").await.unwrap();
        let status = os.wait_for_task(id, Duration::from_secs(10)).await.unwrap();
        match status {
            TaskStatus::Done {
                agent,
                outcome: TaskOutcome::Failed(failure),
            } => {
                assert_eq!(agent, "panicky");
                assert_eq!(failure.kind, agentos_runtime::FailureKind::TaskFailed, "{failure:?}");
            }
            other => panic!("{other:?}"),
        }
        for _ in 0..2 {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap();
            assert!(
                matches!(event, Ok(SupervisorEvent::Restarted { ref child, .. }) if child == "panicky"),
                "{event:?}"
            );
        }
        assert_eq!(b.info().restarts, 2);
        // It still takes messages afterwards, from its checkpointed state.
        let after = a.send(&b, "after").await.unwrap();
        let status = os.wait_for_task(after, Duration::from_secs(10)).await.unwrap();
        assert!(matches!(status, TaskStatus::Done { outcome: TaskOutcome::Delivered, .. }), "{status:?}");
        assert_eq!(b.info().state, AgentState::Sleeping);
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    async fn one_for_all_restarts_every_agent() {
        let budget_key = fault_budget(1);
        let os = AgentOS::builder()
            .without_kernel()
            .agent_strategy(Strategy::OneForAll)
            .start()
            .await
            .unwrap();
        let calm = os.spawn_named("calm", Notes::default()).await.unwrap();
        let fragile = os.spawn_named("fragile", Fragile { budget_key }).await.unwrap();
        let calm_actor = calm.status().await.unwrap();
        // The first attempt panics; the redelivered one reaches the (absent) kernel.
        assert!(matches!(fragile.ask("go").await, Err(RuntimeError::NoKernel)));
        assert_eq!(fragile.info().restarts, 1);
        assert_eq!(calm.info().restarts, 1);
        assert_eq!(calm_actor.pid, calm.pid(), "pids are stable across restarts");
        eventually(|| os.live_agent_actors() == 2).await;
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    /// More agents than the restart limit: one panic under one-for-all restarts each of them
    /// once and is one restart, so the system stays up.
    async fn one_panic_under_one_for_all_with_more_agents_than_the_limit_stays_local() {
        let budget_key = fault_budget(1);
        let os = AgentOS::builder()
            .without_kernel()
            .agent_strategy(Strategy::OneForAll)
            .start()
            .await
            .unwrap();
        let mut calm = Vec::new();
        for i in 0..3 {
            calm.push(os.spawn_named(format!("calm-{i}"), Notes::default()).await.unwrap());
        }
        let fragile = os.spawn_named("fragile", Fragile { budget_key }).await.unwrap();
        assert_eq!(RestartIntensity::default().max_restarts, 3, "four agents, a limit of three");
        assert!(matches!(fragile.ask("go").await, Err(RuntimeError::NoKernel)));
        for agent in calm.iter().chain([&fragile]) {
            assert_eq!(agent.info().restarts, 1, "{}", agent.name());
        }
        assert!(os.down_reason().is_none());
        eventually(|| os.live_agent_actors() == 4).await;
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    async fn rest_for_one_restarts_only_later_agents() {
        let budget_key = fault_budget(1);
        let os = AgentOS::builder()
            .without_kernel()
            .agent_strategy(Strategy::RestForOne)
            .start()
            .await
            .unwrap();
        let older = os.spawn_named("older", Notes::default()).await.unwrap();
        let fragile = os.spawn_named("fragile", Fragile { budget_key }).await.unwrap();
        let younger = os.spawn_named("younger", Notes::default()).await.unwrap();
        assert!(matches!(fragile.ask("go").await, Err(RuntimeError::NoKernel)));
        assert_eq!(
            [older.info().restarts, fragile.info().restarts, younger.info().restarts],
            [0, 1, 1]
        );
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    async fn passing_every_intensity_limit_brings_the_system_down_with_the_reason() {
        let budget_key = fault_budget(u32::MAX);
        let once = RestartIntensity {
            max_restarts: 1,
            within: Duration::from_secs(60),
        };
        let os = AgentOS::builder()
            .without_kernel()
            .agent_intensity(once)
            .system_intensity(once)
            .start()
            .await
            .unwrap();
        let fragile = os.spawn_named("doomed", Fragile { budget_key }).await.unwrap();
        let bystander = os.spawn_named("bystander", Notes::default()).await.unwrap();
        let first = fragile.ask("go").await.unwrap_err();
        assert!(matches!(first, RuntimeError::TaskFailed { .. }), "{first}");
        // Every later task panics at once: the agent supervisor gives up, the root restarts it (with
        // both agents, from their checkpoints), it gives up again and the root gives up.
        let mut last = None;
        for _ in 0..4 {
            match fragile.ask("again").await {
                Err(RuntimeError::SystemDown { reason }) => {
                    last = Some(reason);
                    break;
                }
                Err(_) => {}
                Ok(_) => panic!("the doomed agent cannot succeed"),
            }
        }
        let reason = last.expect("the system went down");
        assert!(reason.contains("supervisor `agentos` gave up"), "{reason}");
        let waited = tokio::time::timeout(Duration::from_secs(10), os.wait()).await.unwrap();
        assert!(matches!(waited, Err(RuntimeError::SystemDown { .. })));
        assert!(matches!(
            bystander.send(&fragile, "hi").await,
            Err(RuntimeError::SystemDown { .. })
        ));
        assert!(matches!(
            os.spawn_named("late", Notes::default()).await,
            Err(RuntimeError::SystemDown { .. })
        ));
        assert!(
            os.shutdown().await.is_err(),
            "shutdown reports that the system was already down"
        );
    }
}

runtime_test! {
    async fn a_thousand_agents_spawn_and_stop_without_leaks() {
        let os = no_kernel_os().await;
        let mut handles = Vec::new();
        for i in 0..1000 {
            handles.push(os.spawn_named(format!("agent-{i}"), Notes::default()).await.unwrap());
        }
        assert_eq!(os.agents().len(), 1000);
        assert_eq!(os.live_agent_actors(), 1000);
        handles[0].send(&handles[999], "ping").await.unwrap();
        let weak: Vec<_> = handles.iter().map(|h| h.pid()).collect();
        for handle in &handles {
            handle.stop().await.unwrap();
        }
        assert!(os.agents().is_empty());
        eventually(|| os.live_agent_actors() == 0).await;
        assert!(matches!(
            handles[5].ask("hi").await,
            Err(RuntimeError::AgentStopped { .. })
        ));
        assert!(os.agent("agent-5").is_none());
        // Names are free again.
        let again = os.spawn_named("agent-5", Notes::default()).await.unwrap();
        assert!(!weak.contains(&again.pid()), "pids are never reused");
        drop(handles);
        os.shutdown().await.unwrap();
    }
}
