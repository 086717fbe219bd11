//! MCP servers as tool providers, against the reference filesystem server from npm
//! (`mcp/package-lock.json`): its tools are listed and offered with their schemas, calls read
//! and write real files, `isError` results come back as errors, a killed server is restarted
//! while its calls fail cleanly, and an agent on the real model reads a file through it.

use std::time::{Duration, Instant};

use agentos_examples::filesystem_mcp_server;
use agentos_runtime::prelude::*;
use agentos_runtime::syscall::wire::check_schema;
use agentos_runtime::{McpServerInfo, Syscall};
use serde_json::{Value, json};

/// You manage files.
#[agent(name = "Clerk", tools = ["write_file", "read_text_file", "list_directory"])]
#[derive(Default, Serialize, Deserialize)]
struct Clerk;

/// You answer questions about files. Read the file the question names, then answer with the
/// number it holds.
#[agent(name = "Librarian", tools = ["read_text_file"], tool_choice = "first", max_steps = 2, max_tokens = 64)]
#[derive(Default, Serialize, Deserialize)]
struct Librarian;

fn tool(name: &str, arguments: Value) -> Syscall {
    Syscall::from_call(name, arguments).unwrap()
}

fn server(os: &AgentOS) -> McpServerInfo {
    os.mcp_servers().into_iter().next().expect("one MCP server is mounted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_server_lists_its_tools_and_serves_calls_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let os = AgentOS::builder()
        .without_kernel()
        .mcp_server(filesystem_mcp_server(&root_path).unwrap())
        .start()
        .await
        .unwrap();
    let info = server(&os);
    assert_eq!(info.name, "filesystem");
    assert!(info.running && info.pid.is_some(), "{info:?}");
    for name in ["read_text_file", "write_file", "list_directory", "edit_file"] {
        assert!(
            info.tools.iter().any(|t| t == name),
            "{name} missing from {:?}",
            info.tools
        );
    }
    let clerk = os.spawn(Clerk).await.unwrap();

    // Its schemas are what the arguments are checked against before the server sees them.
    let e = clerk.call(tool("write_file", json!({"path": 7}))).await.unwrap_err();
    assert!(matches!(e, SyscallError::Arguments { .. }), "{e:?}");

    let wrote = clerk
        .call(tool(
            "write_file",
            json!({"path": "notes.txt", "content": "the answer is 42\n"}),
        ))
        .await
        .unwrap();
    assert!(wrote.to_string().contains("notes.txt"), "{wrote}");
    assert_eq!(
        std::fs::read_to_string(root_path.join("notes.txt")).unwrap(),
        "the answer is 42\n"
    );
    let read = clerk
        .call(tool("read_text_file", json!({"path": "notes.txt"})))
        .await
        .unwrap();
    assert!(read.to_string().contains("the answer is 42"), "{read}");
    let listed = clerk.call(tool("list_directory", json!({"path": "."}))).await.unwrap();
    assert!(listed.to_string().contains("notes.txt"), "{listed}");

    // The server refuses a path outside its root with an `isError` result: the call's error.
    let e = clerk
        .call(tool("read_text_file", json!({"path": "/etc/hostname"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SyscallError::Failed(reason) if reason.to_lowercase().contains("denied")),
        "{e:?}"
    );

    // Kill the server: calls fail cleanly until the watcher has started it again.
    let pid = info.pid.unwrap();
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed_meanwhile = 0;
    loop {
        match clerk.call(tool("read_text_file", json!({"path": "notes.txt"}))).await {
            Ok(read) if server(&os).restarts >= 1 => {
                assert!(read.to_string().contains("the answer is 42"), "{read}");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                assert!(matches!(e, SyscallError::Failed(_)), "{e:?}");
                failed_meanwhile += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not come back: {:?}",
            server(&os)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = server(&os);
    assert!(after.running && after.pid != Some(pid), "{after:?}");
    assert!(failed_meanwhile >= 1, "no call saw the server down");
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_the_default_model_reads_a_file_through_the_mcp_server() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    std::fs::write(root_path.join("count.txt"), "17\n").unwrap();
    let os = AgentOS::builder()
        .mcp_server(filesystem_mcp_server(&root_path).unwrap())
        .start()
        .await
        .unwrap();
    let librarian = os.spawn(Librarian).await.unwrap();
    let response = librarian.ask("What number is in the file count.txt?").await.unwrap();
    let step = response.steps.first().expect("the first step is a call");
    assert_eq!(step.name, "read_text_file", "{step:?}");
    let arguments: Value = serde_json::from_str(&step.arguments).unwrap();
    let read_schema = json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]});
    check_schema(&read_schema, &arguments).unwrap();
    match &step.result {
        // The server answered with its structured content; a plain read of the file returns it
        // whole (the model may also ask for a head or tail of it).
        Ok(result) => {
            let value: Value = serde_json::from_str(result).unwrap();
            assert!(value["content"].is_string(), "{step:?}");
            if arguments == json!({"path": "count.txt"}) {
                assert!(result.contains("17"), "{step:?}");
            }
        }
        // Another path: the server's refusal or "not found" came back as the call's error.
        Err(e) => assert!(matches!(e, SyscallError::Failed(_)), "{e:?}"),
    }
    println!(
        "mcp agent: call {} {} -> {:?}; answer {:?}",
        step.name, step.arguments, step.result, response.text
    );
    os.shutdown().await.unwrap();
}
