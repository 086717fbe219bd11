//! The coherence layer without a model: blackboard conflicts and compare-and-swap through agent
//! handles, topic delivery order and durability across a restart, leases handed over in order
//! and released when their holder stops. (The sync actor restarting without losing the board is
//! a unit test of agentos-runtime's `sync::actor`.)

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentos_runtime::prelude::*;

use crate::support::eventually;
use agentos_runtime::sync::{Cas, Put};
use agentos_runtime::{SyncError, Syscall};
use serde_json::json;

/// Messages each `Inbox` agent took, by agent name and test run (tests run at once).
static INBOXES: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());
static RUN: AtomicU64 = AtomicU64::new(1);

/// Keeps the messages it is delivered, in order.
#[agent(name = "Inbox", custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Inbox {
    key: String,
}

impl AgentHooks for Inbox {
    fn on_message(&mut self, from: &str, text: &str) {
        let mut inboxes = INBOXES.lock().unwrap_or_else(|e| e.into_inner());
        inboxes
            .entry(self.key.clone())
            .or_default()
            .push(format!("{from}: {text}"));
    }
}

fn inbox(key: &str) -> Vec<String> {
    INBOXES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .cloned()
        .unwrap_or_default()
}

async fn os_in(dir: &std::path::Path) -> AgentOS {
    AgentOS::builder()
        .without_kernel()
        .checkpoint_dir(dir)
        .start()
        .await
        .expect("the tree starts")
}

runtime_test! {
    async fn concurrent_blackboard_writes_conflict_and_compare_and_swap_needs_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let os = os_in(dir.path()).await;
        let a = os.spawn_named("a", Inbox::default()).await.unwrap();
        let b = os.spawn_named("b", Inbox::default()).await.unwrap();
        let mut changes = os.watch_blackboard();
        let public = Area::Public;

        assert!(matches!(a.write_board(&public, "plan", json!("draft 1")).await.unwrap(), Put::Written(_)));
        // b writes without having read a's value: kept beside it, not over it.
        let conflict = b.write_board(&public, "plan", json!("other draft")).await.unwrap();
        let Put::Conflict(entry) = conflict else { panic!("expected a conflict: {conflict:?}") };
        assert_eq!(entry.value, json!("draft 1"));
        assert_eq!(entry.siblings[0].value, json!("other draft"));
        // b reads both, then writes a merge: resolved.
        let seen = b.read_board(&public, "plan").await.unwrap().unwrap();
        assert!(seen.in_conflict());
        let merged = b.write_board(&public, "plan", json!("merged")).await.unwrap();
        assert!(matches!(&merged, Put::Written(e) if !e.in_conflict()), "{merged:?}");

        let version = merged.entry().lamport;
        let stale = a.cas_board(&public, "plan", Some(version - 1), json!("stale")).await.unwrap();
        assert!(matches!(stale, Cas::Failed { current: Some(ref e) } if e.value == json!("merged")));
        let swapped = a.cas_board(&public, "plan", Some(version), json!("final")).await.unwrap();
        assert!(matches!(swapped, Cas::Swapped(ref e) if e.value == json!("final")));

        // Group areas are for members.
        let group = Area::Group("reviewers".into());
        assert!(matches!(
            a.write_board(&group, "k", json!(1)).await,
            Err(RuntimeError::Sync(SyncError::NotMember { .. }))
        ));
        a.join_group("reviewers").await.unwrap();
        a.write_board(&group, "k", json!(1)).await.unwrap();
        assert!(b.read_board(&group, "k").await.is_err());

        let stats = os.sync_stats().await.unwrap();
        assert_eq!((stats.board.conflicts, stats.board.in_conflict), (1, 0));
        let mut seen = Vec::new();
        while let Ok(change) = changes.try_recv() {
            seen.push((change.key, change.author, change.conflict));
        }
        assert_eq!(seen[0], ("plan".to_string(), "a".to_string(), false));
        assert_eq!(seen[1], ("plan".to_string(), "a".to_string(), true), "a conflict keeps the entry's author");
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    async fn publications_arrive_in_order_and_survive_a_restart_with_the_subscriptions() {
        let dir = tempfile::tempdir().unwrap();
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let key = format!("reader-{run}");
        {
            let os = os_in(dir.path()).await;
            let writer = os.spawn_named("writer", Inbox::default()).await.unwrap();
            let reader = os.spawn_named("reader", Inbox { key: key.clone() }).await.unwrap();
            reader.subscribe(TopicFilter::new("news.*").unwrap()).await.unwrap();
            for i in 1..=5 {
                let published = writer.publish("news.local", format!("item {i}")).await.unwrap();
                assert_eq!(published.seq, i);
                assert_eq!(published.delivered.len(), 1);
            }
            // Not taken: another topic, and the writer's own.
            let other = writer.publish("weather", "rain").await.unwrap();
            assert!(other.delivered.is_empty());
            eventually(|| inbox(&key).len() == 5).await;
            let expected: Vec<String> = (1..=5).map(|i| format!("writer@news.local: item {i}")).collect();
            assert_eq!(inbox(&key), expected);
            os.shutdown().await.unwrap();
        }
        // A new process on the same directory: subscriptions and sequence numbers are kept.
        let os = os_in(dir.path()).await;
        let writer = os.spawn_named("writer", Inbox::default()).await.unwrap();
        let _reader = os.spawn_named("reader", Inbox { key: key.clone() }).await.unwrap();
        assert_eq!(os.subscriptions().await.unwrap().len(), 1);
        let published = writer.publish("news.world", "item 6").await.unwrap();
        assert_eq!(published.seq, 7, "the weather publication took 6");
        eventually(|| inbox(&key).len() == 6).await;
        assert_eq!(inbox(&key)[5], "writer@news.world: item 6");
        os.shutdown().await.unwrap();
    }
}

runtime_test! {
    async fn leases_are_served_in_order_expire_and_go_when_the_holder_stops() {
        let dir = tempfile::tempdir().unwrap();
        let os = os_in(dir.path()).await;
        let a = os.spawn_named("a", Inbox::default()).await.unwrap();
        let b = os.spawn_named("b", Inbox::default()).await.unwrap();
        let c = os.spawn_named("c", Inbox::default()).await.unwrap();
        let long = Duration::from_secs(60);
        let held = a.lease("printer", long, Duration::from_secs(1)).await.unwrap();
        // Another asker times out while a holds it.
        assert!(matches!(
            b.lease("printer", long, Duration::from_millis(50)).await,
            Err(RuntimeError::Timeout { .. })
        ));
        // b then c queue; a stops: b gets it, then b releases: c gets it.
        let (b2, c2) = (b.clone(), c.clone());
        let wait_b = tokio::spawn(async move { b2.lease("printer", long, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let wait_c = tokio::spawn(async move { c2.lease("printer", long, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!wait_b.is_finished() && !wait_c.is_finished());
        a.stop().await.unwrap();
        let lease_b = wait_b.await.unwrap().unwrap();
        assert_eq!(lease_b.holder, "b");
        assert!(lease_b.id > held.id);
        assert!(!wait_c.is_finished());
        assert!(matches!(c.release(&lease_b).await, Err(RuntimeError::Sync(SyncError::NotHolder { .. }))));
        b.release(&lease_b).await.unwrap();
        let lease_c = wait_c.await.unwrap().unwrap();
        assert_eq!(lease_c.holder, "c");

        // A short term expires on its own.
        let short = b.lease("scanner", Duration::from_millis(100), Duration::from_secs(1)).await.unwrap();
        let next = c.lease("scanner", long, Duration::from_secs(5)).await.unwrap();
        assert!(next.granted_ms >= short.expires_ms, "{short:?} {next:?}");
        os.shutdown().await.unwrap();
    }
}

/// Uses the coherence system calls.
#[agent(name = "Scribe", tools = ["board_read", "board_write", "publish"])]
#[derive(Default, Serialize, Deserialize)]
struct Scribe;

runtime_test! {
    async fn the_board_and_topic_system_calls_act_as_their_agent() {
        let dir = tempfile::tempdir().unwrap();
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let key = format!("listener-{run}");
        let os = os_in(dir.path()).await;
        let scribe = os.spawn(Scribe).await.unwrap();
        let other = os.spawn_named("other", Inbox::default()).await.unwrap();
        let listener = os.spawn_named("listener", Inbox { key: key.clone() }).await.unwrap();
        listener.subscribe(TopicFilter::new("plans").unwrap()).await.unwrap();
        let call = |name: &str, args: serde_json::Value| Syscall::from_call(name, args).unwrap();

        let written = scribe.call(call("board_write", json!({"key": "plan", "value": "ship on Friday"}))).await.unwrap();
        assert_eq!(written["written"], "plan");
        assert!(written.get("conflict").is_none());
        let read = scribe.call(call("board_read", json!({"key": "plan"}))).await.unwrap();
        assert_eq!((read["value"].as_str(), read["author"].as_str()), (Some("ship on Friday"), Some("Scribe")));
        // Another agent writes without reading: the scribe's next read shows both values.
        other.write_board(&Area::Public, "plan", json!("ship on Monday")).await.unwrap();
        let read = scribe.call(call("board_read", json!({"key": "plan"}))).await.unwrap();
        assert_eq!(read["conflicting_values"], json!(["ship on Monday"]));
        let missing = scribe.call(call("board_read", json!({"key": "nothing"}))).await.unwrap_err();
        assert!(matches!(missing, SyscallError::NotFound(_)), "{missing}");
        // A key the board refuses is an error the model sees, not a panic.
        let bad = scribe.call(call("board_write", json!({"key": "", "value": "x"}))).await;
        assert!(bad.is_err());

        let published = scribe.call(call("publish", json!({"topic": "plans", "text": "we ship Friday"}))).await.unwrap();
        assert_eq!((published["seq"].as_u64(), published["delivered_to"].clone()), (Some(1), json!(["listener"])));
        eventually(|| inbox(&key) == vec!["Scribe@plans: we ship Friday".to_string()]).await;
        os.shutdown().await.unwrap();
    }
}

/// Panics once when told "crash" (the fault budget is per test run), as a crashing agent does.
#[agent(name = "Crasher", custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Crasher {
    key: String,
}

static CRASHES_LEFT: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

impl AgentHooks for Crasher {
    fn on_message(&mut self, _from: &str, text: &str) {
        let mut left = CRASHES_LEFT.lock().unwrap_or_else(|e| e.into_inner());
        if text == "crash"
            && let Some(n) = left.get_mut(&self.key)
            && *n > 0
        {
            *n -= 1;
            drop(left);
            panic!("the crasher was told to crash");
        }
    }
}

runtime_test! {
    async fn a_crashed_agents_lease_goes_to_the_next_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let key = format!("crasher-{}", RUN.fetch_add(1, Ordering::Relaxed));
        CRASHES_LEFT.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), 1);
        let os = os_in(dir.path()).await;
        let crasher = os.spawn(Crasher { key }).await.unwrap();
        let waiter = os.spawn_named("waiter", Inbox::default()).await.unwrap();
        let long = Duration::from_secs(60);
        crasher.lease("printer", long, Duration::from_secs(1)).await.unwrap();
        let w = waiter.clone();
        let wait = tokio::spawn(async move { w.lease("printer", long, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!wait.is_finished(), "the crasher still holds the lease");
        // The crash restarts the agent; its supervisor's event releases what it held.
        waiter.send(&crasher, "crash").await.unwrap();
        let lease = wait.await.unwrap().unwrap();
        assert_eq!(lease.holder, "waiter");
        eventually(|| crasher.info().restarts == 1).await;
        os.shutdown().await.unwrap();
    }
}
