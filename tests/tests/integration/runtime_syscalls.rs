//! System calls without a model: the dispatcher's checkpoint, the file and exec drivers, user
//! tools, messages between agents, and the call parser under arbitrary input.

use std::time::Duration;

use agentos_runtime::prelude::*;
use agentos_runtime::syscall::wire::{parse_call, split_call};
use agentos_runtime::{FnTool, Syscall, SyscallConfig};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use serde_json::{Value, json};

/// You work with files.
#[agent(name = "Filer", tools = ["fs_read", "fs_write", "fs_list", "exec", "send_msg", "add", "mem_read", "sleep"])]
#[derive(Default, Serialize, Deserialize)]
struct Filer;

/// You only talk.
#[agent(name = "Talker")]
#[derive(Default, Serialize, Deserialize)]
struct Talker;

/// You count words.
#[agent(name = "Counter", tools = ["count_words"])]
#[derive(Default, Serialize, Deserialize)]
struct Counter;

/// Counts the words of `text` that have at least `minimum_length` characters (default 1).
#[tool]
async fn count_words(text: String, minimum_length: Option<usize>) -> Result<usize, String> {
    let minimum = minimum_length.unwrap_or(1);
    if minimum > 100 {
        return Err(format!("minimum_length {minimum} is more than any word here"));
    }
    Ok(text.split_whitespace().filter(|w| w.chars().count() >= minimum).count())
}

/// You use a tool nobody registered.
#[agent(name = "Dreamer", tools = ["teleport"])]
#[derive(Default, Serialize, Deserialize)]
struct Dreamer;

fn add_tool() -> impl Tool {
    FnTool::new(
        "add",
        "Adds two integers.",
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
               "required": ["a", "b"], "additionalProperties": false}),
        |args: Value| async move {
            let (a, b) = (args["a"].as_i64().unwrap_or(0), args["b"].as_i64().unwrap_or(0));
            a.checked_add(b)
                .map(|sum| json!(sum))
                .ok_or_else(|| "the sum overflows".to_string())
        },
    )
}

async fn start(work: &std::path::Path) -> AgentOS {
    AgentOS::builder()
        .without_kernel()
        .syscalls(SyscallConfig {
            fs_root: Some(work.to_path_buf()),
            exec_allow: vec!["echo".into(), "sleep".into()],
            exec_timeout: Duration::from_secs(5),
            max_file_bytes: 64,
            ..SyscallConfig::default()
        })
        .tool(add_tool())
        .start()
        .await
        .unwrap()
}

fn call(name: &str, arguments: Value) -> Syscall {
    Syscall::from_call(name, arguments).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_calls_stay_inside_the_work_directory() {
    let work = tempfile::tempdir().unwrap();
    let os = start(work.path()).await;
    let filer = os.spawn(Filer).await.unwrap();

    let written = filer
        .call(call("fs_write", json!({"path": "notes/a.txt", "content": "forty-two"})))
        .await
        .unwrap();
    assert_eq!(written["bytes"], 9);
    assert_eq!(
        std::fs::read_to_string(work.path().join("notes/a.txt")).unwrap(),
        "forty-two"
    );
    let read = filer
        .call(call("fs_read", json!({"path": "notes/a.txt"})))
        .await
        .unwrap();
    assert_eq!(read, json!("forty-two"));
    let listed = filer.call(call("fs_list", json!({"path": "."}))).await.unwrap();
    assert_eq!(listed["entries"], json!([{"name": "notes", "type": "dir"}]));

    for escape in ["../outside.txt", "/etc/passwd", "notes/../../x"] {
        let e = filer.call(call("fs_read", json!({"path": escape}))).await.unwrap_err();
        assert!(matches!(e, SyscallError::Denied(_)), "{escape}: {e:?}");
    }
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(outside.path(), work.path().join("link")).unwrap();
    let e = filer
        .call(call("fs_read", json!({"path": "link/secret"})))
        .await
        .unwrap_err();
    assert!(matches!(e, SyscallError::Denied(_)), "{e:?}");
    let e = filer
        .call(call("fs_write", json!({"path": "link/new", "content": "x"})))
        .await
        .unwrap_err();
    assert!(matches!(e, SyscallError::Denied(_)), "{e:?}");
    assert!(!outside.path().join("new").exists());

    let e = filer
        .call(call("fs_read", json!({"path": "missing.txt"})))
        .await
        .unwrap_err();
    assert_eq!(e, SyscallError::NotFound("missing.txt".into()));
    std::fs::write(work.path().join("big.txt"), "x".repeat(65)).unwrap();
    let e = filer
        .call(call("fs_read", json!({"path": "big.txt"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("64 bytes"), "{e}");
    let e = filer
        .call(call("fs_write", json!({"path": "big2.txt", "content": "y".repeat(65)})))
        .await
        .unwrap_err();
    assert!(matches!(e, SyscallError::Denied(_)), "{e:?}");
    assert!(!work.path().join("big2.txt").exists());
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_refuses_calls_an_agent_was_not_given() {
    let work = tempfile::tempdir().unwrap();
    let os = start(work.path()).await;
    let talker = os.spawn(Talker).await.unwrap();
    let e = talker.call(call("fs_read", json!({"path": "a"}))).await.unwrap_err();
    assert_eq!(e, SyscallError::NotAllowed("fs_read".into()));
    let e = talker.call(call("add", json!({"a": 1, "b": 2}))).await.unwrap_err();
    assert_eq!(e, SyscallError::NotAllowed("add".into()));
    let e = talker.call(call("teleport", json!({}))).await.unwrap_err();
    assert_eq!(e, SyscallError::Unknown("teleport".into()));

    // An agent naming a tool that does not exist is refused at spawn, by name.
    let e = os.spawn(Dreamer).await.unwrap_err();
    assert!(
        matches!(&e, RuntimeError::UnknownTool { tool, .. } if tool == "teleport"),
        "{e:?}"
    );
    os.shutdown().await.unwrap();

    // A tool may not take a system call's name.
    let clash = FnTool::new("exec", "x", json!({"type": "object"}), |_| async { Ok(json!(null)) });
    let e = AgentOS::builder()
        .without_kernel()
        .tool(clash)
        .start()
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("system call's name"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_allowed_programs_within_their_timeout() {
    let work = tempfile::tempdir().unwrap();
    let os = start(work.path()).await;
    let filer = os.spawn(Filer).await.unwrap();
    let out = filer
        .call(call("exec", json!({"program": "echo", "args": ["hello", "world"]})))
        .await
        .unwrap();
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "hello world\n");
    let e = filer
        .call(call("exec", json!({"program": "sh", "args": ["-c", "id"]})))
        .await
        .unwrap_err();
    assert!(matches!(e, SyscallError::Denied(_)), "{e:?}");
    let started = std::time::Instant::now();
    let e = filer
        .call(call(
            "exec",
            json!({"program": "sleep", "args": ["30"], "timeout_ms": 200}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e, SyscallError::Timeout(200));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the program was killed at its timeout"
    );
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_exec_kills_what_its_program_started() {
    let work = tempfile::tempdir().unwrap();
    let os = AgentOS::builder()
        .without_kernel()
        .syscalls(SyscallConfig {
            fs_root: Some(work.path().to_path_buf()),
            exec_allow: vec!["sh".into()],
            ..SyscallConfig::default()
        })
        .tool(add_tool())
        .start()
        .await
        .unwrap();
    let filer = os.spawn(Filer).await.unwrap();
    // A background grandchild that would write a file after the call has timed out.
    let e = filer
        .call(call(
            "exec",
            json!({"program": "sh", "args": ["-c", "(sleep 1; echo late > late.txt) & sleep 30"], "timeout_ms": 300}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e, SyscallError::Timeout(300));
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        !work.path().join("late.txt").exists(),
        "a process the timed-out program started outlived the call"
    );
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_messages_and_memory_calls_answer_with_typed_results() {
    let work = tempfile::tempdir().unwrap();
    let os = start(work.path()).await;
    let filer = os.spawn(Filer).await.unwrap();
    let talker = os.spawn(Talker).await.unwrap();

    assert_eq!(
        filer.call(call("add", json!({"a": 2, "b": 40}))).await.unwrap(),
        json!(42)
    );
    let e = filer.call(call("add", json!({"a": "two", "b": 40}))).await.unwrap_err();
    assert!(
        matches!(&e, SyscallError::Arguments { reason, .. } if reason.contains("arguments.a")),
        "{e:?}"
    );
    let e = filer
        .call(call("add", json!({"a": i64::MAX, "b": 1})))
        .await
        .unwrap_err();
    assert_eq!(e, SyscallError::Failed("the sum overflows".into()));

    let sent = filer
        .call(call("send_msg", json!({"to": "Talker", "text": "the build is green"})))
        .await
        .unwrap();
    let task = TaskId(sent["task"].as_u64().unwrap());
    let status = os.wait_for_task(task, Duration::from_secs(10)).await.unwrap();
    assert!(
        matches!(status, TaskStatus::Done { ref agent, outcome: TaskOutcome::Delivered } if agent == "Talker"),
        "{status:?}"
    );
    let e = filer
        .call(call("send_msg", json!({"to": "Nobody", "text": "hi"})))
        .await
        .unwrap_err();
    assert!(matches!(e, SyscallError::NotFound(_)), "{e:?}");
    let e = filer
        .call(call("send_msg", json!({"to": "Filer", "text": "hi"})))
        .await
        .unwrap_err();
    assert!(matches!(e, SyscallError::Denied(_)), "{e:?}");

    // Without memory, a memory call fails cleanly with the reason.
    let e = filer
        .call(call("mem_read", json!({"query": "build"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("has no memory"), "{e}");
    let slept = filer.call(call("sleep", json!({"ms": 5}))).await.unwrap();
    assert_eq!(slept["slept_ms"], 5);
    drop(talker);
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_fn_becomes_a_typed_tool() {
    let tool = CountWordsTool;
    assert_eq!(tool.name(), "count_words");
    assert_eq!(
        tool.description(),
        "Counts the words of `text` that have at least `minimum_length` characters (default 1)."
    );
    assert_eq!(
        tool.parameters(),
        json!({"type": "object",
               "properties": {"text": {"type": "string"}, "minimum_length": {"type": "integer", "minimum": 0}},
               "required": ["text"], "additionalProperties": false})
    );

    let work = tempfile::tempdir().unwrap();
    let os = AgentOS::builder()
        .without_kernel()
        .work_dir(work.path())
        .tool(CountWordsTool)
        .start()
        .await
        .unwrap();
    let counter = os.spawn(Counter).await.unwrap();
    let count = |arguments: Value| counter.call(call("count_words", arguments));
    assert_eq!(count(json!({"text": "a bb ccc"})).await.unwrap(), json!(3));
    assert_eq!(
        count(json!({"text": "a bb ccc", "minimum_length": 2})).await.unwrap(),
        json!(2)
    );
    let e = count(json!({"text": "a", "minimum_length": 500})).await.unwrap_err();
    assert_eq!(
        e,
        SyscallError::Failed("minimum_length 500 is more than any word here".into())
    );
    let e = count(json!({"minimum_length": 2})).await.unwrap_err();
    assert!(
        matches!(&e, SyscallError::Arguments { reason, .. } if reason.contains("lacks `text`")),
        "{e:?}"
    );
    let e = count(json!({"text": "a", "minimum_length": -1})).await.unwrap_err();
    assert!(matches!(e, SyscallError::Arguments { .. }), "{e:?}");
    let e = count(json!({"text": "a", "language": "en"})).await.unwrap_err();
    assert!(matches!(e, SyscallError::Arguments { .. }), "{e:?}");
    os.shutdown().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary text after `<tool_call>` never panics the parser: it is a call or a typed error.
    #[test]
    fn the_call_parser_never_panics(body in any::<String>(), prefix in "[ -~]{0,20}") {
        let reply = format!("{prefix}<tool_call>{body}");
        let (_, call_body) = split_call(&reply).expect("the reply has a call");
        if let Ok((name, arguments)) = parse_call(call_body) {
            let _ = Syscall::from_call(&name, arguments);
        }
    }

    /// JSON-shaped bodies with any name and argument values: parsed or refused, never a panic,
    /// and a parsed system call always has the name the model wrote.
    #[test]
    fn json_calls_are_parsed_or_refused(
        name in prop_oneof![Just("fs_read".to_string()), Just("exec".to_string()), Just("sleep".to_string()), "[a-z_]{0,12}"],
        key in "[a-z_]{1,10}",
        value in prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            any::<String>().prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(json!(null)),
            Just(json!([1, "a"])),
        ],
    ) {
        let body = json!({"name": name, "arguments": {key.clone(): value}}).to_string();
        match parse_call(&body) {
            Ok((parsed, arguments)) => {
                prop_assert_eq!(&parsed, name.trim());
                if let Ok(call) = Syscall::from_call(&parsed, arguments) {
                    prop_assert_eq!(call.name(), parsed.as_str());
                }
            }
            Err(e) => prop_assert!(name.trim().is_empty(), "{body} refused: {e}"),
        }
    }
}
