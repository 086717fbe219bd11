//! Agents on the real default model: the prompt an agent sends, streaming, checkpoint restore
//! with exactly-once redelivery, and graceful shutdown with work in flight.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use agentos_kernel::{ChatMessage, GenerateRequest, GenerationEvent};
use agentos_runtime::prelude::*;

use crate::support::{kernel_args, model_os};

/// You are a helpful assistant.
#[agent(name = "Plain", max_tokens = 12)]
#[derive(Default, Serialize, Deserialize)]
struct Plain;

#[tokio::test]
async fn an_agent_asks_the_model_what_the_kernel_would_answer_and_streams_it() {
    // Without the prefix cache the agent's prompt is computed as the direct request's was (one
    // forward over all of it), not continued from cached blocks: the texts must then be equal.
    // A cached prefix is computed in other forwards, whose float sums differ in the last bits;
    // through the 8-bit activations of the quantised kernel, that can flip a near-tied greedy
    // choice.
    let mut args = kernel_args();
    args.config.kv_cache.prefix_cache = false;
    let os = AgentOS::builder().kernel(args).start().await.unwrap();
    let agent = os.spawn(Plain).await.unwrap();

    // The same question straight to the kernel, with the prompt the agent must assemble.
    let request = GenerateRequest::chat(vec![
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("What is the capital of France?"),
    ])
    .max_tokens(12);
    let (_, mut events) = agentos_kernel::actor::generate(&os.kernel().unwrap(), request)
        .await
        .unwrap();
    let expected = loop {
        match events.recv().await.unwrap() {
            GenerationEvent::Finished { summary, .. } => break summary.text,
            GenerationEvent::Failed(e) => panic!("{e}"),
            GenerationEvent::Token { .. } => {}
        }
    };

    let mut stream = agent.stream("What is the capital of France?").await.unwrap();
    let mut streamed = String::new();
    let response = loop {
        match stream.next().await.expect("the stream ends with Done") {
            StreamEvent::Token(text) => streamed.push_str(&text),
            StreamEvent::Restarted => panic!("no restart expected"),
            StreamEvent::ToolCall { .. } | StreamEvent::ToolResult { .. } => {
                panic!("an agent without tools made a call")
            }
            StreamEvent::Done(outcome) => break (*outcome).unwrap(),
        }
    };
    assert_eq!(response.text, expected);
    assert_eq!(streamed, response.text);
    assert_eq!((response.turn, response.attempts), (1, 1));
    assert!(response.completion_tokens > 0 && response.prompt_tokens > 10);

    let info = &os.agents()[0];
    assert_eq!((info.turns, info.state), (1, AgentState::Sleeping));
    assert_eq!(
        info.tokens_used as usize,
        response.prompt_tokens + response.completion_tokens
    );
    let stats = os.scheduler_stats().await.unwrap();
    assert_eq!(stats.submitted, 1);
    let mine = &stats.by_agent[&agent.pid()];
    assert_eq!((mine.submitted, mine.completed, mine.failed), (1, 1, 0));
    assert_eq!(mine.generated_tokens as usize, response.completion_tokens);
    assert_eq!(mine.prompt_tokens as usize, response.prompt_tokens);
    assert!(mine.mean_ttft().is_some() && mine.tokens_per_second() > 0.0);
    assert_eq!(
        mine.budget_used,
        mine.prompt_tokens - mine.cached_prompt_tokens + mine.generated_tokens
    );

    // The second turn carries the first in its prompt.
    let second = agent.ask("And of Italy?").await.unwrap();
    assert_eq!(second.turn, 2);
    assert!(second.prompt_tokens > response.prompt_tokens + response.completion_tokens);
    os.shutdown().await.unwrap();
}

static RECORDER_FAULTS: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
static RECORDER_SEEN: Mutex<Vec<Vec<String>>> = Mutex::new(Vec::new());

/// You are a helpful assistant. Answer in a few words.
#[agent(name = "Recorder", max_tokens = 6, custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Recorder {
    tasks: Vec<String>,
}

impl AgentHooks for Recorder {
    fn after_turn(&mut self, turn: &Turn) -> Result<(), String> {
        let first = RECORDER_FAULTS
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(turn.number);
        if turn.number == 2 && first {
            panic!("injected fault after the model answered turn 2");
        }
        self.tasks.push(turn.task.clone());
        RECORDER_SEEN.lock().unwrap().push(self.tasks.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_restarted_agent_resumes_from_its_checkpoint_and_runs_the_task_once_more() {
    let os = model_os().await;
    let agent = os.spawn(Recorder::default()).await.unwrap();
    let first = agent.ask("Name a colour.").await.unwrap();
    assert_eq!(first.attempts, 1);

    let mut stream = agent.stream("Name an animal.").await.unwrap();
    let mut restarted = 0;
    let second = loop {
        match stream.next().await.unwrap() {
            StreamEvent::Restarted => restarted += 1,
            StreamEvent::Token(_) | StreamEvent::ToolCall { .. } | StreamEvent::ToolResult { .. } => {}
            StreamEvent::Done(outcome) => break (*outcome).unwrap(),
        }
    };
    assert_eq!(restarted, 1);
    assert_eq!((second.turn, second.attempts), (2, 2));
    assert_eq!(agent.info().restarts, 1);

    let third = agent.ask("Name a fruit.").await.unwrap();
    assert_eq!((third.turn, third.attempts), (3, 1));
    // The state after the restart was the checkpoint of turn 1 (not empty, not turn 2 twice):
    // each task was recorded exactly once, in order.
    let seen = RECORDER_SEEN.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            vec!["Name a colour.".to_string()],
            vec!["Name a colour.".to_string(), "Name an animal.".to_string()],
            vec![
                "Name a colour.".to_string(),
                "Name an animal.".to_string(),
                "Name a fruit.".to_string()
            ],
        ]
    );
    assert_eq!(agent.status().await.unwrap().turns, 3);
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_work_in_flight() {
    let os = model_os().await;
    let a = os.spawn_named("a", Plain).await.unwrap();
    let b = os.spawn_named("b", Plain).await.unwrap();
    let in_flight = vec![
        a.stream("Say hello.").await.unwrap(),
        b.stream("Say goodbye.").await.unwrap(),
        a.stream("Count to three.").await.unwrap(),
    ];
    let late = a.clone();
    os.shutdown().await.unwrap();
    for stream in in_flight {
        let response = stream.response().await.expect("in-flight work finishes");
        assert!(response.completion_tokens > 0);
    }
    assert!(matches!(
        late.ask("too late").await,
        Err(RuntimeError::SystemDown { .. } | RuntimeError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_left_at_the_end_of_the_grace_period_is_answered_and_never_run_later() {
    let dir = tempfile::tempdir().unwrap();
    let os = AgentOS::builder()
        .kernel(kernel_args())
        .checkpoint_dir(dir.path())
        .shutdown_grace(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let agent = os.spawn(Plain).await.unwrap();
    let mut streams = Vec::new();
    for q in ["One.", "Two.", "Three."] {
        streams.push(agent.stream(q).await.unwrap());
    }
    let ids: Vec<TaskId> = streams.iter().map(|s| s.task_id()).collect();
    // Let the first task start, then shut down at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    os.shutdown().await.unwrap();
    let mut done = 0;
    for stream in streams {
        match stream.response().await {
            Ok(_) => done += 1,
            Err(RuntimeError::ShuttingDown) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(done < 3, "a zero grace period cannot finish three turns");

    // A new AgentOS over the same directory resumes the agent; what was answered with
    // ShuttingDown stays answered: it is recorded as failed and does not run.
    let os = AgentOS::builder()
        .kernel(kernel_args())
        .checkpoint_dir(dir.path())
        .start()
        .await
        .unwrap();
    let agent = os.spawn(Plain).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.info().queued_tasks, 0, "nothing was left to run");
    assert_eq!(agent.info().turns, done as u64, "no task ran behind its caller's back");
    let mut failed = 0;
    for id in ids {
        match os.task_result(id).await.unwrap() {
            TaskStatus::Done {
                outcome: TaskOutcome::Replied(_),
                ..
            } => {}
            TaskStatus::Done {
                outcome: TaskOutcome::Failed(f),
                ..
            } => {
                assert_eq!(f.kind, agentos_runtime::FailureKind::ShuttingDown);
                failed += 1;
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(failed, 3 - done);
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_kernel_is_restarted_and_agents_keep_working() {
    let os = model_os().await;
    let mut events = os.events();
    let agent = os.spawn(Plain).await.unwrap();
    let before = agent.ask("Say yes.").await.unwrap();
    let first_kernel = os.kernel().unwrap();
    first_kernel.kill();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(event, SupervisorEvent::Restarted { ref supervisor, ref child, .. } if supervisor == "kernel" && child == "kernel-actor")
        {
            break;
        }
    }
    assert_ne!(os.kernel().unwrap().get_id(), first_kernel.get_id());
    let after = agent.ask("Say yes.").await.unwrap();
    assert_eq!(after.turn, before.turn + 1);
    assert_eq!(agent.info().restarts, 0, "the agent itself never failed");
    os.shutdown().await.unwrap();
}

/// Tell stories.
#[agent(name = "Storyteller", max_tokens = 48)]
#[derive(Default, Serialize, Deserialize)]
struct Storyteller;

static FLAKY_PANICS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Panics in `prepare` while `FLAKY_PANICS` lasts.
#[agent(name = "Flaky", custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Flaky;

impl AgentHooks for Flaky {
    fn prepare(&mut self, _prompt: &mut TurnPrompt) {
        use std::sync::atomic::Ordering;
        if FLAKY_PANICS
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected fault in prepare");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sibling_stopped_mid_turn_for_a_restart_loses_no_attempt_and_holds_nothing_up() {
    FLAKY_PANICS.store(2, std::sync::atomic::Ordering::SeqCst);
    let os = AgentOS::builder()
        .kernel(kernel_args())
        .agent_strategy(Strategy::OneForAll)
        .start()
        .await
        .unwrap();
    let steady = os.spawn_named("steady", Storyteller).await.unwrap();
    let flaky = os.spawn_named("flaky", Flaky).await.unwrap();
    let mut story = steady
        .stream("Tell me a long story about a lighthouse keeper.")
        .await
        .unwrap();
    loop {
        match story.next().await.unwrap() {
            StreamEvent::Token(t) if !t.is_empty() => break,
            StreamEvent::Done(outcome) => panic!("the story ended before the fault: {outcome:?}"),
            _ => {}
        }
    }
    // Two panics, each a one-for-all restart that stops the storyteller in the middle of its
    // turn; the flaky task then fails for good (two starts is the default limit).
    let failed = flaky.ask("Say hi.").await.unwrap_err();
    assert!(matches!(failed, RuntimeError::TaskFailed { .. }), "{failed}");
    assert_eq!(steady.info().restarts, 2);
    assert_ne!(
        steady.info().state,
        AgentState::Sleeping,
        "the restarts did not wait for the storyteller's turn to end"
    );
    let mut restarted = 0;
    let response = loop {
        match story.next().await.unwrap() {
            StreamEvent::Restarted => restarted += 1,
            StreamEvent::Token(_) | StreamEvent::ToolCall { .. } | StreamEvent::ToolResult { .. } => {}
            StreamEvent::Done(outcome) => break (*outcome).expect("the healthy agent's task completes"),
        }
    };
    assert_eq!(restarted, 2, "stopped mid-turn twice, restarted twice");
    assert_eq!(
        response.attempts, 1,
        "starts cut short by a sibling's restart are given back"
    );
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_turn_is_kept_in_the_history_while_prompts_show_the_recent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let os = AgentOS::builder()
        .kernel(kernel_args())
        .checkpoint_dir(dir.path())
        .start()
        .await
        .unwrap();
    let agent = os.spawn(Plain).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(agent.ask(format!("Say the number {i}.")).await.unwrap().task);
    }
    let history = agent.history(1, 100).await.unwrap();
    assert_eq!(
        history.iter().map(|t| t.number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(history.iter().map(|t| t.task_id).collect::<Vec<_>>(), ids);
    assert_eq!(history[0].task, "Say the number 0.");
    os.shutdown().await.unwrap();
    // The history outlives the process, the agent resumes at turn 7.
    let os = AgentOS::builder()
        .kernel(kernel_args())
        .checkpoint_dir(dir.path())
        .start()
        .await
        .unwrap();
    assert_eq!(os.history("Plain", 1, 100).await.unwrap(), history);
    let agent = os.spawn(Plain).await.unwrap();
    assert_eq!(agent.ask("Again.").await.unwrap().turn, 7);
    os.shutdown().await.unwrap();
}

/// Writes at length (for the cancellation test).
#[agent(name = "Novelist", max_tokens = 400, temperature = 0.8)]
#[derive(Default, Serialize, Deserialize)]
/// You are a storyteller. Tell long stories.
struct Novelist;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_task_stops_at_once_frees_its_kv_and_is_recorded_as_cancelled() {
    let os = model_os().await;
    let agent = os.spawn(Novelist).await.unwrap();
    let mut running = agent.stream("Tell me a long story about a lighthouse.").await.unwrap();
    let queued = agent.stream("Tell me another one.").await.unwrap();
    // Wait for the first token of the running task.
    loop {
        match running.next().await.unwrap() {
            StreamEvent::Token(t) if !t.is_empty() => break,
            StreamEvent::Done(outcome) => panic!("ended before it was cancelled: {outcome:?}"),
            _ => {}
        }
    }
    // The queued one first: it is taken out of the queue and never runs.
    assert!(agent.cancel(queued.task_id()).await.unwrap());
    let queued_id = queued.task_id();
    let err = queued.response().await.unwrap_err();
    assert!(matches!(err, RuntimeError::Cancelled { .. }), "{err}");

    let running_id = running.task_id();
    assert!(agent.cancel(running_id).await.unwrap());
    let mut tokens_after = 0;
    let outcome = loop {
        match running.next().await.unwrap() {
            StreamEvent::Token(_) => tokens_after += 1,
            StreamEvent::Done(outcome) => break outcome,
            _ => {}
        }
    };
    assert!(matches!(*outcome, Err(RuntimeError::Cancelled { .. })), "{outcome:?}");
    // At most the tokens already on their way when the cancel landed.
    assert!(tokens_after < 50, "{tokens_after} tokens after the cancel");
    for id in [running_id, queued_id] {
        match os.task_result(id).await.unwrap() {
            TaskStatus::Done {
                outcome: TaskOutcome::Failed(f),
                ..
            } => assert_eq!(f.kind, agentos_runtime::FailureKind::Cancelled),
            other => panic!("{other:?}"),
        }
    }
    // Finished tasks cannot be cancelled; the agent takes new work.
    assert!(!agent.cancel(running_id).await.unwrap());
    // The kernel lets go of the sequence at its next step.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = agentos_cli::client::engine_stats(&os).await.unwrap();
        if stats.sequences == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled generation still holds KV: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(os.agents()[0].turns, 0);
    os.shutdown().await.unwrap();
}
