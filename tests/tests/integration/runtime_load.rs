//! Load without a model: 1,000 agents each send 100 messages (100,000 journaled deliveries);
//! none is dropped, every delivery's outcome is recorded, and once the agents stop, resident
//! memory is back within 10% of where it was before they were spawned (measured over two
//! rounds, after two others have brought the allocator's heap and the caches to their working
//! size). Runs in a child process so that other tests' memory (loaded models) stays out of it.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentos_runtime::prelude::*;

const CHILD_ENV: &str = "AGENTOS_TEST_LOAD_CHILD";
const AGENTS: usize = 1000;
const MESSAGES: usize = 100;

static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// Counts what it is told.
#[agent(name = "Counter", custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    told: u32,
}

impl AgentHooks for Counter {
    fn on_message(&mut self, _from: &str, _text: &str) {
        self.told += 1;
        DELIVERED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Resident set size of this process, in bytes, after returning freed heap pages to the
/// system (so the allocator's free lists do not count as memory in use).
fn resident_bytes() -> u64 {
    // SAFETY: malloc_trim only releases free memory of the C allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// One round: `AGENTS` agents each send `MESSAGES` messages, then all stop. Returns the
/// messages acknowledged, delivered (seen by `on_message`) and recorded as delivered, and the
/// resident size at the round's peak.
async fn round(os: &AgentOS, tag: &str) -> (usize, u64, usize, u64, Duration) {
    DELIVERED.store(0, Ordering::Relaxed);
    let mut agents = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        agents.push(os.spawn_named(format!("{tag}-{i}"), Counter::default()).await.unwrap());
    }
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..AGENTS {
        let from = agents[i].clone();
        let to: Vec<AgentHandle> = (1..=MESSAGES).map(|k| agents[(i + k) % AGENTS].clone()).collect();
        senders.spawn(async move {
            let mut ids = Vec::with_capacity(MESSAGES);
            for (k, to) in to.iter().enumerate() {
                ids.push(
                    from.send(to, format!("message {k} from {i}"))
                        .await
                        .expect("acknowledged"),
                );
            }
            ids
        });
    }
    let mut ids = Vec::with_capacity(AGENTS * MESSAGES);
    while let Some(sent) = senders.join_next().await {
        ids.extend(sent.unwrap());
    }
    while DELIVERED.load(Ordering::Relaxed) < (AGENTS * MESSAGES) as u64 && started.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let peak = resident_bytes();
    let mut recorded = 0;
    for id in &ids {
        if let TaskStatus::Done {
            outcome: TaskOutcome::Delivered,
            ..
        } = os.task_result(*id).await.unwrap()
        {
            recorded += 1;
        }
    }
    for agent in &agents {
        agent.stop().await.unwrap();
    }
    drop(agents);
    while os.live_agent_actors() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ids.len(), DELIVERED.load(Ordering::Relaxed), recorded, peak, took)
}

#[test]
#[ignore = "run by a_thousand_agents_exchange_a_hundred_thousand_messages as its child process"]
fn load_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let os = AgentOS::builder().without_kernel().start().await.unwrap();
        // Two rounds bring thread pools, caches and the allocator's heap to their working size
        // (measured: resident size grows over the first two rounds, then stays within 1 MB);
        // the start is measured after them, so the next two show what load leaves behind.
        let before_first = resident_bytes();
        for warm in 0..2 {
            round(&os, &format!("warm-{warm}")).await;
        }
        let start = resident_bytes();
        round(&os, "first").await;
        let (sent, delivered, recorded, peak, took) = round(&os, "second").await;
        let end = resident_bytes();
        os.shutdown().await.unwrap();
        println!(
            "LOAD sent={sent} delivered={delivered} recorded={recorded} before_first={before_first} start={start} peak={peak} end={end} seconds={:.1}",
            took.as_secs_f64()
        );
    });
}

#[test]
fn a_thousand_agents_exchange_a_hundred_thousand_messages() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "runtime_load::load_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, "1")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        // libtest may print its "test ... " prefix on the same line.
        .find_map(|l| l.find("LOAD ").map(|at| &l[at + 5..]))
        .unwrap_or_else(|| panic!("the child reported nothing:\n{stdout}"));
    eprintln!("{line}");
    let value = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let total = (AGENTS * MESSAGES) as u64;
    assert_eq!(value("sent"), total, "every send was acknowledged");
    assert_eq!(value("delivered"), total, "every message reached its agent, once");
    assert_eq!(value("recorded"), total, "every delivery's outcome is recorded");
    let (start, end) = (value("start"), value("end"));
    assert!(
        end as f64 <= start as f64 * 1.10,
        "resident memory after the agents stopped: {end} bytes, {start} at the start"
    );
}
