//! System calls between agents and to the network, without a model: `spawn_agent` (a
//! registered role, the child's answer forwarded to its parent), `recv_msg` (taking a queued
//! message inside a turn, and its timeout) and `net_fetch` (the host list, redirects checked
//! host by host, the byte cap) against a local HTTP server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentos_runtime::prelude::*;
use agentos_runtime::{Syscall, SyscallConfig};
use serde_json::{Value, json};

/// Messages the Boss role was given through `on_message`, in order.
static BOSS_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// You delegate.
#[agent(name = "Boss", tools = ["spawn_agent", "recv_msg"], custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Boss;

impl AgentHooks for Boss {
    fn on_message(&mut self, from: &str, text: &str) {
        BOSS_SEEN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{from}: {text}"));
        // Holds the agent busy, as a turn would: messages sent meanwhile wait in its queue.
        if text == "hold" {
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
}

/// You help.
#[agent(name = "Helper", role = "helper")]
#[derive(Default, Serialize, Deserialize)]
struct Helper;

/// You write to others.
#[agent(name = "Sender")]
#[derive(Default, Serialize, Deserialize)]
struct Sender;

/// You read the web.
#[agent(name = "Browser", tools = ["net_fetch"])]
#[derive(Default, Serialize, Deserialize)]
struct Browser;

fn call(name: &str, arguments: Value) -> Syscall {
    Syscall::from_call(name, arguments).unwrap()
}

fn boss_seen() -> Vec<String> {
    BOSS_SEEN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// You plan.
#[agent(name = "Planner", tools = ["spawn_agent"])]
#[derive(Default, Serialize, Deserialize)]
struct Planner;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_may_spawn_is_refused_when_no_role_is_registered() {
    let os = AgentOS::builder().without_kernel().start().await.unwrap();
    let e = os.spawn(Planner).await.unwrap_err();
    assert!(
        matches!(&e, RuntimeError::NoRoles { agent } if agent == "Planner"),
        "{e:?}"
    );
    os.shutdown().await.unwrap();
}

/// One test owns the Boss role (its hook records into a static).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spawned_children_answer_their_parent_and_recv_msg_takes_queued_messages() {
    let os = AgentOS::builder()
        .without_kernel()
        .role::<Helper>()
        .syscalls(SyscallConfig {
            recv_timeout: Duration::from_millis(100),
            ..SyscallConfig::default()
        })
        .start()
        .await
        .unwrap();
    let boss = os.spawn(Boss).await.unwrap();
    let sender = os.spawn(Sender).await.unwrap();

    // spawn_agent: the child runs under the agent supervisor like any agent; without a kernel
    // its task fails, and that outcome comes back to the parent as a message from the child.
    let spawned = boss
        .call(call(
            "spawn_agent",
            json!({"role": "helper", "name": "helper-1", "task": "sum 2 and 3"}),
        ))
        .await
        .unwrap();
    assert_eq!(spawned["spawned"], "helper-1");
    assert_eq!(spawned["role"], "helper");
    let child = os.agent("helper-1").expect("the child is registered");
    assert_eq!(child.info().role, "helper");
    wait_until("the child's answer reaches its parent", || {
        boss_seen().iter().any(|m| m.starts_with("helper-1: (the task failed:"))
    })
    .await;
    let task = TaskId(spawned["task"].as_u64().unwrap());
    let status = os.task_result(task).await.unwrap();
    assert!(
        matches!(&status, TaskStatus::Done { agent, outcome: TaskOutcome::Failed(_) } if agent == "helper-1"),
        "{status:?}"
    );

    let e = boss
        .call(call(
            "spawn_agent",
            json!({"role": "helper", "name": "helper-1", "task": "again"}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, SyscallError::Denied(_)), "{e:?}");
    let e = boss
        .call(call(
            "spawn_agent",
            json!({"role": "wizard", "name": "merlin", "task": "magic"}),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SyscallError::NotFound(reason) if reason.contains("helper")),
        "{e:?}"
    );

    // recv_msg: while the agent is busy (its hook holds it, as a turn would), a message sent
    // to it waits in its queue; the call takes it, so it is not delivered a second time.
    sender.send(&boss, "hold").await.unwrap();
    wait_until("the agent is busy", || boss_seen().iter().any(|m| m == "Sender: hold")).await;
    sender.send(&boss, "the numbers are 2 and 3").await.unwrap();
    let received = boss.call(call("recv_msg", json!({"timeout_ms": 5000}))).await.unwrap();
    assert_eq!(received, json!({"from": "Sender", "text": "the numbers are 2 and 3"}));
    let e = boss.call(call("recv_msg", json!({}))).await.unwrap_err();
    assert_eq!(e, SyscallError::Timeout(100));
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(
        !boss_seen().iter().any(|m| m.contains("the numbers are")),
        "a message recv_msg took was delivered again: {:?}",
        boss_seen()
    );
    os.shutdown().await.unwrap();
}

/// A tiny HTTP/1.1 server on 127.0.0.1: `/page` answers a short text, `/big` 100,000 bytes,
/// `/hop` redirects to `/page`, `/away` redirects to a host that is not allowed.
fn serve_http() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut header = String::new();
            while reader.read_line(&mut header).map(|n| n > 2).unwrap_or(false) {
                header.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let response = match path.as_str() {
                "/page" => {
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world"
                        .to_string()
                }
                "/big" => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\nconnection: close\r\n\r\n{}",
                    "x".repeat(100_000)
                ),
                "/hop" => "HTTP/1.1 302 Found\r\nlocation: /page\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                "/away" => "HTTP/1.1 302 Found\r\nlocation: http://elsewhere.invalid/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_string(),
                _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_fetch_reads_allowed_hosts_only_and_caps_what_it_reads() {
    let port = serve_http();
    let os = AgentOS::builder()
        .without_kernel()
        .syscalls(SyscallConfig {
            net_allow: vec!["127.0.0.1".into()],
            net_allow_private: true,
            max_fetch_bytes: 1000,
            ..SyscallConfig::default()
        })
        .start()
        .await
        .unwrap();
    let browser = os.spawn(Browser).await.unwrap();
    let fetch = |url: String| browser.call(call("net_fetch", json!({ "url": url })));

    let page = fetch(format!("http://127.0.0.1:{port}/page")).await.unwrap();
    assert_eq!(page["status"], 200);
    assert_eq!(page["body"], "hello world");
    assert_eq!(page["content_type"], "text/plain");
    assert_eq!(page["truncated"], false);

    let big = fetch(format!("http://127.0.0.1:{port}/big")).await.unwrap();
    assert_eq!(big["body"].as_str().unwrap().len(), 1000);
    assert_eq!(big["truncated"], true);

    let hop = fetch(format!("http://127.0.0.1:{port}/hop")).await.unwrap();
    assert_eq!(hop["body"], "hello world");
    assert_eq!(hop["url"], format!("http://127.0.0.1:{port}/page"));

    let missing = fetch(format!("http://127.0.0.1:{port}/nothing")).await.unwrap();
    assert_eq!(missing["status"], 404);

    // A redirect to a host off the list is refused before it is followed.
    let e = fetch(format!("http://127.0.0.1:{port}/away")).await.unwrap_err();
    assert!(
        matches!(&e, SyscallError::Denied(reason) if reason.contains("elsewhere.invalid")),
        "{e:?}"
    );
    for url in [
        "http://localhost:1/",
        "https://example.com/",
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
    ] {
        let e = fetch(url.to_string()).await.unwrap_err();
        assert!(matches!(e, SyscallError::Denied(_)), "{url}: {e:?}");
    }
    let e = fetch("http://bad host/".to_string()).await.unwrap_err();
    assert!(matches!(e, SyscallError::Arguments { .. }), "{e:?}");
    os.shutdown().await.unwrap();
}
