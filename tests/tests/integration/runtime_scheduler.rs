//! The scheduler's semantics through the whole runtime, on the real model: urgent agents go
//! first, agents over their fair share are throttled (not killed), and everyone finishes.

use std::time::Duration;

use agentos_kernel::{EngineConfig, KernelArgs};
use agentos_runtime::prelude::*;

use crate::support::kernel_args;

/// You are a helpful assistant. Answer briefly.
#[agent(name = "Worker", max_tokens = 12)]
#[derive(Default, Serialize, Deserialize)]
struct Worker;

/// You are a storyteller. Tell long, detailed stories.
#[agent(name = "Talker", max_tokens = 48)]
#[derive(Default, Serialize, Deserialize)]
struct Talker;

/// One engine slot: requests run one at a time, so the order they run in is the scheduler's.
fn one_slot() -> KernelArgs {
    let base = kernel_args();
    KernelArgs {
        config: EngineConfig {
            max_running: 1,
            time_slice_tokens: 0,
            ..base.config
        },
        ..base
    }
}

#[tokio::test]
async fn an_urgent_agent_overtakes_queued_normal_work() {
    let os = AgentOS::builder().kernel(one_slot()).start().await.unwrap();
    let normals: Vec<AgentHandle> =
        futures::future::try_join_all((0..3).map(|i| os.spawn_named(format!("n{i}"), Talker)))
            .await
            .unwrap();
    let urgent = os.spawn_named("urgent", Worker).await.unwrap();
    urgent.set_priority(Priority::Realtime);

    let mut streams = Vec::new();
    for n in &normals {
        streams.push(
            n.stream("Tell me a long story about a dragon who learns to fly.")
                .await
                .unwrap(),
        );
    }
    // Once the first normal request is generating, the urgent one arrives behind the others.
    let mut first_text = String::new();
    while first_text.is_empty() {
        match streams[0].next().await.expect("the first normal request streams") {
            StreamEvent::Token(t) => first_text.push_str(&t),
            StreamEvent::Restarted | StreamEvent::ToolCall { .. } | StreamEvent::ToolResult { .. } => {}
            StreamEvent::Done(outcome) => panic!("the first normal request ended before generating: {outcome:?}"),
        }
    }
    let started = std::time::Instant::now();
    let urgent_reply = urgent.ask("Say yes.").await.unwrap();
    let urgent_done = started.elapsed();
    let mut normal_done = Vec::new();
    for stream in streams {
        let response = stream.response().await.unwrap();
        normal_done.push(response.total_time);
    }
    assert!(urgent_reply.completion_tokens > 0);
    let stats = os.scheduler_stats().await.unwrap();
    // The urgent request preempted the running normal one (KV kept) instead of waiting for all.
    assert!(stats.total().preemptions >= 1, "{stats:?}");
    assert!(stats.by_agent[&urgent.pid()].preemptions == 0);
    // At least one normal request was still unfinished when the urgent one completed.
    let slowest_normal = normal_done.iter().max().unwrap();
    assert!(*slowest_normal > urgent_done, "{normal_done:?} vs {urgent_done:?}");
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn agents_over_their_fair_share_are_throttled_not_killed() {
    let os = AgentOS::builder()
        .kernel(kernel_args())
        .scheduler(SchedulerConfig {
            window: Duration::from_secs(600),
            tokens_per_weight: 4,
        })
        .start()
        .await
        .unwrap();
    let a = os.spawn_named("a", Worker).await.unwrap();
    let b = os.spawn_named("b", Worker).await.unwrap();
    // Each first turn spends far more than 16 tokens: every later request is over budget and
    // runs only when the other agent leaves the model idle.
    let (ra, rb) = tokio::join!(
        async {
            let mut replies = Vec::new();
            for q in ["Name a colour.", "Name a city.", "Name a fruit."] {
                replies.push(a.ask(q).await.unwrap());
            }
            replies
        },
        async {
            let mut replies = Vec::new();
            for q in ["Name a planet.", "Name a tree.", "Name a river."] {
                replies.push(b.ask(q).await.unwrap());
            }
            replies
        }
    );
    assert_eq!((ra.len(), rb.len()), (3, 3));
    let stats = os.scheduler_stats().await.unwrap();
    let total = stats.total();
    assert!(total.throttled >= 1, "{stats:?}");
    assert_eq!((total.completed, total.failed), (6, 0));
    assert!(stats.by_agent.values().all(|s| s.budget_used > s.budget_tokens));
    assert_eq!(os.agents().iter().map(|a| a.turns).sum::<u64>(), 6);
    os.shutdown().await.unwrap();
}
