//! The S-MMU with the real model: the kernel's attention analysis, an agent whose prompts stay
//! within its L1 budget while its memory pages facts in and out, the explicit memory API, and a
//! damaged store refused at start.

use agentos_kernel::KernelMsg;
use agentos_runtime::memory::MemoryError;
use agentos_runtime::prelude::*;
use agentos_runtime::{MemoryConfig, Syscall, Tier};

use crate::support::kernel_args;

/// You are a helpful assistant. Answer in one short sentence.
#[agent(name = "Keeper", max_tokens = 12, memory)]
#[derive(Default, Serialize, Deserialize)]
struct Keeper;

/// You keep notes for the team.
#[agent(name = "Librarian", max_tokens = 12, memory, tools = ["mem_write", "mem_read"])]
#[derive(Default, Serialize, Deserialize)]
struct Librarian;

/// You are a helpful assistant.
#[agent(name = "Forgetful", max_tokens = 4)]
#[derive(Default, Serialize, Deserialize)]
struct Forgetful;

async fn os_with_budget(budget: usize, dir: &std::path::Path) -> AgentOS {
    let mut config = RuntimeConfig {
        kernel: Some(kernel_args()),
        checkpoint_dir: Some(dir.to_path_buf()),
        ..RuntimeConfig::default()
    };
    config.memory = MemoryConfig {
        l1_budget_tokens: budget,
        ..MemoryConfig::default()
    };
    AgentOS::start(config).await.expect("the tree starts")
}

#[tokio::test]
async fn the_kernel_returns_pieces_that_rebuild_the_text_and_the_attention_of_every_token_over_all_before_it() {
    let os = AgentOS::builder().kernel(kernel_args()).start().await.unwrap();
    let kernel = os.kernel().unwrap();
    let text = "Memory pages: naïve café – 東京. ".repeat(24);
    let analysis = ractor::call!(kernel, |reply| KernelMsg::Analyze {
        text: text.clone(),
        with_attention: true,
        priority: agentos_kernel::DEFAULT_JOB_PRIORITY,
        reply
    })
    .unwrap()
    .unwrap();
    assert_eq!(analysis.pieces.concat(), text);
    assert_eq!(analysis.pieces.len(), analysis.tokens.len());
    let n = analysis.tokens.len();
    assert!(n > 300, "long enough to be read in several chunks: {n} tokens");
    let covered: usize = analysis.entropy.iter().map(|e| e.n_tokens).sum();
    assert_eq!(covered, n, "entropy for every token");
    assert!(analysis.entropy.len() >= 2, "read in chunks");
    // One sequence: every span continues where the last ended, so no token's context is cut.
    let mut next = 0;
    for span in &analysis.entropy {
        assert_eq!(span.start_pos, next, "spans follow each other in one sequence");
        next += span.n_tokens;
    }
    os.shutdown().await.unwrap();

    // The same entropies as one forward over the whole text, read from its probabilities.
    // The weight mode the runtime's kernel used (the default, `auto`).
    let mut engine = crate::support::engine_quantized();
    let sequence = engine.create_sequence();
    let mut item = agentos_kernel::ForwardItem::new(sequence, analysis.tokens.clone());
    item.logits = agentos_kernel::LogitsWanted::None;
    item.attention = true;
    let out = engine.forward(&[item]).unwrap().pop().unwrap();
    engine.release_sequence(sequence);
    let maps = out.attention.unwrap();
    let last = maps.n_layers - 1;
    for span in &analysis.entropy {
        for i in (0..span.n_tokens).step_by(17) {
            let t = span.start_pos + i;
            let row = maps.row(last, 0, t);
            let h: f32 = row[..=t].iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum();
            assert!(
                (h - span.get(last, 0, i)).abs() < 2e-2,
                "token {t}: entropy {} from the chunks, {h} from one forward",
                span.get(last, 0, i)
            );
        }
    }
}

#[tokio::test]
async fn prompts_stay_within_the_l1_budget_and_an_evicted_fact_is_paged_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 200;
    let os = os_with_budget(budget, dir.path()).await;
    let agent = os.spawn(Keeper).await.unwrap();

    agent
        .ask("Please remember this: my locker code is 4417.")
        .await
        .unwrap();
    let topics = [
        "volcanoes",
        "penguins",
        "jazz",
        "glaciers",
        "origami",
        "owls",
        "kites",
        "caves",
    ];
    for topic in topics {
        let reply = agent.ask(format!("Tell me one thing about {topic}.")).await.unwrap();
        assert!(
            reply.prompt_tokens <= budget,
            "the prompt ({} tokens) exceeds the L1 budget",
            reply.prompt_tokens
        );
        let context = agent.last_context().await.unwrap().unwrap();
        assert!(context.tokens <= context.page_budget);
    }
    let stats = agent.memory_stats().await.unwrap();
    assert!(stats.context_full_interrupts > 0 && stats.evictions > 0, "{stats:?}");
    assert!(stats.tokens_max <= budget, "{stats:?}");
    // Slicing and embedding the turns ran as the agent's memory work, charged to its share.
    let scheduled = os.scheduler_stats().await.unwrap();
    let memory_tokens = scheduled.by_agent[&agent.pid()].memory_tokens;
    assert!(memory_tokens > 0, "memory work is charged to the agent: {scheduled:?}");

    let reply = agent.ask("What is my locker code?").await.unwrap();
    assert!(reply.prompt_tokens <= budget);
    let context = agent.last_context().await.unwrap().unwrap();
    assert!(
        context.pages.iter().any(|p| p.text.contains("4417")),
        "the fact was paged back in: {:?}",
        context.pages.iter().map(|p| &p.text).collect::<Vec<_>>()
    );

    // A task that cannot fit the budget even without pages is a clear error, not a prompt over
    // the hard budget.
    let too_long = "Tell me about the sea. ".repeat(60);
    let err = agent.ask(too_long).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::Memory(MemoryError::OverBudget { budget: b, .. }) if b == budget),
        "{err}"
    );
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn agents_write_and_query_memory_explicitly_and_it_outlives_the_system() {
    let dir = tempfile::tempdir().unwrap();
    let os = os_with_budget(512, dir.path()).await;
    let agent = os.spawn(Keeper).await.unwrap();
    let ids = agent
        .remember("The staging database runs on host orca-7 in the Frankfurt region. The backup runs nightly at 02:00.")
        .await
        .unwrap();
    assert!(!ids.is_empty());
    let found = agent.recall("Which host runs the staging database?", 3).await.unwrap();
    assert!(found[0].text.contains("orca-7"), "{found:?}");
    assert_eq!(found[0].tier, Tier::L1);
    let l2 = os.memory_stats().await.unwrap();
    assert_eq!(l2.pages, ids.len());

    // The same through the system calls a model makes (`mem_write`, `mem_read`).
    let librarian = os.spawn(Librarian).await.unwrap();
    let call = |name: &str, arguments: serde_json::Value| Syscall::from_call(name, arguments).unwrap();
    let written = librarian
        .call(call(
            "mem_write",
            serde_json::json!({"text": "The quarterly audit is due on 14 March. Priya Raman leads it."}),
        ))
        .await
        .unwrap();
    assert!(written["pages"].as_u64().unwrap() >= 1, "{written}");
    let read = librarian
        .call(call(
            "mem_read",
            serde_json::json!({"query": "Who leads the quarterly audit?"}),
        ))
        .await
        .unwrap();
    let notes = read["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n.as_str().unwrap().contains("Priya Raman")),
        "{read}"
    );

    // An agent without memory says so.
    let plain = os.spawn(Forgetful).await.unwrap();
    assert!(matches!(
        plain.recall("anything", 1).await,
        Err(RuntimeError::NoMemory { .. })
    ));
    os.shutdown().await.unwrap();

    // A new AgentOS on the same directory finds the pages on disk.
    let os = os_with_budget(512, dir.path()).await;
    let agent = os.spawn(Keeper).await.unwrap();
    let found = agent.recall("staging database host", 1).await.unwrap();
    assert!(found[0].text.contains("orca-7"), "{found:?}");
    os.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_damaged_store_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("memory.redb"), b"definitely not a database file").unwrap();
    let err = AgentOS::builder()
        .without_kernel()
        .checkpoint_dir(dir.path())
        .start()
        .await
        .err()
        .expect("a damaged store cannot start");
    let message = err.to_string();
    assert!(message.contains("memory.redb"), "{message}");
}
