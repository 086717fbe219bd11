//! Agents without a model: spawning, listing, messages, restarts with each strategy, escalation
//! to a system shutdown, and 1,000 agents spawned and stopped without leaks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agentos_runtime::prelude::*;

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

/// Panics in `prepare` on the first `PANICS` tasks of the process-wide budget, then behaves.
#[agent(name = "Fragile", custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Fragile {
    /// Which of the fault budgets below this instance draws on (one per test).
    budget_key: u8,
}

static FRAGILE_PANICS_LEFT: [AtomicU32; 4] = [
    AtomicU32::new(0),
    AtomicU32::new(0),
    AtomicU32::new(0),
    AtomicU32::new(0),
];

impl AgentHooks for Fragile {
    fn prepare(&mut self, _prompt: &mut TurnPrompt) {
        let left = &FRAGILE_PANICS_LEFT[self.budget_key as usize];
        if left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected fault in prepare");
        }
    }
}

/// Waits (up to 10 s) for `condition`: actor states are dropped just after a stop is reported.
async fn eventually(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition did not hold within 10 s");
}

async fn no_kernel_os() -> AgentOS {
    AgentOS::builder()
        .without_kernel()
        .start()
        .await
        .expect("the tree starts")
}

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn a_panicking_agent_is_restarted_and_its_message_redelivered_once() {
    let os = no_kernel_os().await;
    let mut events = os.events();
    let a = os.spawn_named("sender", Notes::default()).await.unwrap();
    let b = os.spawn_named("panicky", Notes::default()).await.unwrap();
    a.send(&b, "before").await.unwrap();
    // "panic" makes on_message panic every time: one redelivery, then the sender is told.
    let err = a.send(&b, "panic").await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::TaskFailed { ref agent, .. } if agent == "panicky"),
        "{err}"
    );
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
    a.send(&b, "after").await.unwrap();
    assert_eq!(b.info().state, AgentState::Sleeping);
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_for_all_restarts_every_agent() {
    FRAGILE_PANICS_LEFT[1].store(1, Ordering::SeqCst);
    let os = AgentOS::builder()
        .without_kernel()
        .agent_strategy(Strategy::OneForAll)
        .start()
        .await
        .unwrap();
    let calm = os.spawn_named("calm", Notes::default()).await.unwrap();
    let fragile = os.spawn_named("fragile", Fragile { budget_key: 1 }).await.unwrap();
    let calm_actor = calm.status().await.unwrap();
    // The first attempt panics; the redelivered one reaches the (absent) kernel.
    assert!(matches!(fragile.ask("go").await, Err(RuntimeError::NoKernel)));
    assert_eq!(fragile.info().restarts, 1);
    assert_eq!(calm.info().restarts, 1);
    assert_eq!(calm_actor.pid, calm.pid(), "pids are stable across restarts");
    eventually(|| os.live_agent_actors() == 2).await;
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn rest_for_one_restarts_only_later_agents() {
    FRAGILE_PANICS_LEFT[2].store(1, Ordering::SeqCst);
    let os = AgentOS::builder()
        .without_kernel()
        .agent_strategy(Strategy::RestForOne)
        .start()
        .await
        .unwrap();
    let older = os.spawn_named("older", Notes::default()).await.unwrap();
    let fragile = os.spawn_named("fragile", Fragile { budget_key: 2 }).await.unwrap();
    let younger = os.spawn_named("younger", Notes::default()).await.unwrap();
    assert!(matches!(fragile.ask("go").await, Err(RuntimeError::NoKernel)));
    assert_eq!(
        [older.info().restarts, fragile.info().restarts, younger.info().restarts],
        [0, 1, 1]
    );
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn passing_every_intensity_limit_brings_the_system_down_with_the_reason() {
    FRAGILE_PANICS_LEFT[3].store(u32::MAX, Ordering::SeqCst);
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
    let fragile = os.spawn_named("doomed", Fragile { budget_key: 3 }).await.unwrap();
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

#[tokio::test]
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

#[tokio::test]
async fn a_corrupt_checkpoint_is_reported_at_spawn_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let os = AgentOS::builder()
        .without_kernel()
        .checkpoint_dir(dir.path())
        .start()
        .await
        .unwrap();
    let notes = os.spawn(Notes::default()).await.unwrap();
    notes.send(&notes, "keep me").await.unwrap();
    notes.stop().await.unwrap();
    let path = agentos_runtime::CheckpointStore::open(dir.path())
        .unwrap()
        .path_of("Notes");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();

    let err = os.spawn(Notes::default()).await.unwrap_err().to_string();
    assert!(
        err.contains("could not start agent `Notes`") && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        bytes.len() - 3,
        "the file is kept for inspection"
    );
    assert!(os.agents().is_empty());
    // The intact checkpoint restores: put it back and the same name resumes.
    std::fs::write(&path, &bytes).unwrap();
    let resumed = os.spawn(Notes::default()).await.unwrap();
    assert_eq!(resumed.info().state, AgentState::Sleeping);
    os.shutdown().await.unwrap();
}
