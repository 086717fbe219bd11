//! The `agentos` command itself: `agentos chat` driven in a pseudo-terminal on the real default
//! model (slash commands, a streamed team answer, Ctrl-C cancelling an answer), and every
//! command's `--help`, snapshotted.

use std::path::PathBuf;

use clap::CommandFactory;
use serde_json::Value;

const AGENTOS: &str = env!("CARGO_BIN_EXE_agentos-under-test");

#[test]
fn chat_in_a_terminal_answers_runs_slash_commands_and_cancels_on_ctrl_c() {
    let python = std::env::var_os("AGENTOS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/repl_driver.py");
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    // The default model, on the CPU as in the other tests.
    let model = crate::support::default_model_path();
    let output = std::process::Command::new(python)
        .arg(driver)
        .arg(AGENTOS)
        .arg("--history")
        .arg(&history)
        .arg("--model")
        .arg(&model)
        .arg("--device")
        .arg("flex")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for step in report["steps"].as_array().unwrap() {
        assert_eq!(
            step["ok"],
            true,
            "step {} did not show what it should; the terminal showed:\n{}",
            step["name"],
            step["seen"].as_str().unwrap_or("")
        );
    }
    assert_eq!(report["exit"], 0, "{report}");
    // The line history was written where --history said.
    let kept = std::fs::read_to_string(&history).unwrap();
    assert!(kept.contains("What is the capital of France?"), "{kept}");
}

#[test]
fn every_command_has_help() {
    // What `agentos --help` and `agentos COMMAND --help` print.
    let mut cli = agentos_cli::Cli::command();
    cli.build();
    insta::assert_snapshot!("agentos_help", cli.render_long_help().to_string());
    for name in ["chat", "run", "serve", "ps", "stats", "models", "doctor"] {
        let sub = cli.find_subcommand_mut(name).unwrap();
        insta::assert_snapshot!(format!("agentos_{name}_help"), sub.render_long_help().to_string());
    }
}

#[test]
fn user_mistakes_are_one_line_errors() {
    let run = |args: &[&str]| {
        let output = std::process::Command::new(AGENTOS).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    // A misspelt flag: clap's error with a suggestion, exit status 2.
    let (code, err) = run(&["chat", "--histroy", "x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--history"), "{err}");
    // A team file that does not exist, or that is not a team: one line, exit status 1.
    let (code, err) = run(&["run", "/no/such/team.toml", "task"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("agentos: error: cannot read the team file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("team.toml");
    std::fs::write(&bad, "[[agent]]\nname = \"A\"\nsystem = \"s\"\npriority = \"urgent\"\n").unwrap();
    let (code, err) = run(&["run", bad.to_str().unwrap(), "task"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown priority `urgent`"), "{err}");
    // Nothing listens there: says so and what to do.
    let (code, err) = run(&["ps", "--url", "http://127.0.0.1:9"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is `agentos serve` running there?"), "{err}");
}

#[test]
fn serve_listens_before_the_model_is_loaded_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    let model = crate::support::default_model_path();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(AGENTOS)
        .args(["serve", "--port", "0", "--device", "flex", "--model"])
        .arg(&model)
        .env("AGENTOS_HOME", dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    // 503 while the model loads (if the first request is that early), then 200; nothing else.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut statuses = Vec::new();
    loop {
        let status = agent
            .get(format!("http://{addr}/health"))
            .call()
            .unwrap()
            .status()
            .as_u16();
        if statuses.last() != Some(&status) {
            statuses.push(status);
        }
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{statuses:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(statuses == [200] || statuses == [503, 200], "{statuses:?}");
    // SIGINT, as Ctrl-C sends: a graceful stop with exit status 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop on SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn run_answers_once_with_every_contribution_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team.toml");
    std::fs::write(
        &team,
        r#"
[[agent]]
name = "Quick"
system = "You are a helpful assistant. Answer briefly."
max_tokens = 16

[[agent]]
name = "Other"
system = "You are a careful assistant. Answer briefly."
max_tokens = 16

[[agent]]
name = "Joiner"
system = "You are a helpful writer. Answer the user's question in one sentence."
synthesizer = true
max_tokens = 24
"#,
    )
    .unwrap();
    let model = crate::support::default_model_path();
    let output = std::process::Command::new(AGENTOS)
        .arg("run")
        .arg(&team)
        .arg("What is the capital of France?")
        .args(["--json", "--device", "flex", "--model"])
        .arg(&model)
        .env("AGENTOS_HOME", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(answer["task"], "What is the capital of France?");
    let agents: Vec<&str> = answer["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 2);
    assert!(agents.contains(&"Quick") && agents.contains(&"Other"), "{agents:?}");
    for c in answer["contributions"].as_array().unwrap() {
        assert!(c["completion_tokens"].as_u64().unwrap() > 0, "{c}");
        assert!(c["completion_tokens"].as_u64().unwrap() <= 16, "{c}");
    }
    assert_eq!(answer["synthesis"]["agent"], "Joiner");
    assert_eq!(answer["answer"], answer["synthesis"]["text"]);
    assert!(!answer["answer"].as_str().unwrap().trim().is_empty(), "{answer}");
}
