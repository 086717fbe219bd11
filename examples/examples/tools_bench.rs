//! Measures agents that act: the dispatcher's own cost, what grammar masks cost next to a
//! decode step, how many calls parse and validate with and without constraints, and how many
//! single-tool tasks the default model answers correctly.
//!
//! ```text
//! cargo run --release --example tools_bench -- --json [--tasks N] [--seed S] [--set standard|other] [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```
//! Prints one JSON object:
//! - `syscall_dispatch_us`: p50 and p99 of one call through `AgentHandle::call` (checkpoint,
//!   schema check, driver), no model: a user tool (`add`) and `fs_read` of a small file.
//! - `grammar`: tool-call generations through the Batcher under the call grammar of three
//!   tools, for 1 and 8 sequences, measured over the decode steps after every prompt is
//!   prefilled: `mask_us_per_token` (grammar time per sampled constrained token: the mask,
//!   taking tokens into the grammar, finding forced tokens), `forward_us_per_step`,
//!   `forward_us_per_token` (forward time over generated tokens, forced ones included),
//!   `forced_tokens` (appended without sampling, fed with the next forward) and
//!   `mask_share_of_step` (grammar time over forward time in the same steps). Every generation
//!   must end in a call that parses. The top-level `mask_us_per_token` and
//!   `forward_us_per_token` are the 1-sequence ones.
//! - `valid_calls_constrained` / `valid_calls_unconstrained`: of the calls the agents emitted
//!   over the task set, the fraction that parsed, named one of the agent's tools and whose
//!   arguments validated (the same tasks, with `SyscallConfig::constrained_calls` on and off),
//!   with the number of calls and of tasks that made one.
//! - `task_success` (constrained) and `task_success_unconstrained`: the fraction of tasks whose
//!   final answer states the right number (as a whole number, not digits inside another).
//!   A generation that writes result markup of its own (a small
//!   model repeating the result it was shown) stops there, so such an answer is what came
//!   before it, often nothing: `empty_answers_*` counts answers with no text. The tasks are
//!   single-tool: add or multiply two numbers with a tool, or read a number from a named file;
//!   the numbers come from `--seed`. `--set other` asks the same kinds of thing with other
//!   tools, phrasings and files (subtract; a four-line markdown file in a subdirectory), to
//!   see whether a figure holds beyond the standard set's wording.

use std::collections::BTreeMap;
use std::time::Instant;

use agentos_examples::{ModelArgs, init_logging};
use agentos_kernel::engine::generate::{Batcher, prepare};
use agentos_kernel::{ChatMessage, Engine, GenerateRequest, GenerationEvent};
use agentos_runtime::prelude::*;
use agentos_runtime::syscall::wire::{
    ToolDescription, call_grammar, check_schema, parse_call, split_call, tools_prompt,
};
use agentos_runtime::syscall::{description, schema};
use agentos_runtime::{FnTool, Syscall};
use serde_json::{Value, json};

/// You are a calculator assistant. Use the add function to add the numbers in the question,
/// then state the result.
#[agent(name = "Adder", role = "adder", tools = ["add"], tool_choice = "first", max_steps = 2, max_tokens = 64)]
#[derive(Default, Serialize, Deserialize)]
struct Adder;

/// You are a calculator assistant. Use the subtract function to subtract the second number
/// from the first in the question, then state the result.
#[agent(name = "Subtractor", role = "subtractor", tools = ["subtract"], tool_choice = "first", max_steps = 2, max_tokens = 64)]
#[derive(Default, Serialize, Deserialize)]
struct Subtractor;

/// You are a calculator assistant. Use the multiply function to multiply the numbers in the
/// question, then state the result.
#[agent(name = "Multiplier", role = "multiplier", tools = ["multiply"], tool_choice = "first", max_steps = 2, max_tokens = 64)]
#[derive(Default, Serialize, Deserialize)]
struct Multiplier;

/// You are a careful assistant with access to files. Read the file the question names, then
/// answer with what it says.
#[agent(name = "FileReader", role = "reader", tools = ["fs_read"], tool_choice = "first", max_steps = 2, max_tokens = 64)]
#[derive(Default, Serialize, Deserialize)]
struct FileReader;

/// The arguments of `add` and `multiply`.
fn arithmetic_schema() -> Value {
    json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
           "required": ["a", "b"], "additionalProperties": false})
}

fn arithmetic_tool(
    name: &'static str,
    verb: &str,
    op: fn(i64, i64) -> Option<i64>,
) -> FnTool<impl Fn(Value) -> std::future::Ready<Result<Value, String>> + Send + Sync + 'static> {
    FnTool::new(
        name,
        format!("{verb} two integers a and b and return the result."),
        arithmetic_schema(),
        move |args: Value| {
            let result = match (args["a"].as_i64(), args["b"].as_i64()) {
                (Some(a), Some(b)) => op(a, b)
                    .map(|n| json!(n))
                    .ok_or_else(|| "the result overflows".to_string()),
                _ => Err("a and b must be integers".to_string()),
            };
            std::future::ready(result)
        },
    )
}

/// One task: which role answers it, the question, and the number the answer must contain.
struct Task {
    role: &'static str,
    question: String,
    expected: String,
}

/// A small deterministic generator (the task numbers are not chosen by hand).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

/// Which tasks to generate. `Standard` is the set the figures in the README are reported on;
/// `Other` asks the same kinds of thing with other tools, phrasings and files (subtract;
/// multiply phrased otherwise; a four-line markdown file in a subdirectory), to see whether a
/// figure holds beyond the standard set's wording.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum TaskSet {
    Standard,
    Other,
}

fn tasks(count: usize, seed: u64, set: TaskSet, work: &std::path::Path) -> std::io::Result<Vec<Task>> {
    let mut rng = Lcg(seed);
    let mut out = Vec::new();
    for i in 0..count {
        let (a, b) = (rng.next(10, 1000), rng.next(10, 1000));
        let variant = rng.next(0, 3) as usize;
        let task = match (i % 3, set) {
            (0, TaskSet::Standard) => Task {
                role: "adder",
                question: [
                    format!("What is {a} plus {b}?"),
                    format!("Add {a} and {b}."),
                    format!("Compute the sum of {a} and {b}."),
                ][variant]
                    .clone(),
                expected: (a + b).to_string(),
            },
            (0, TaskSet::Other) => Task {
                role: "subtractor",
                question: [
                    format!("How much is {a} minus {b}?"),
                    format!("Subtract {b} from {a}."),
                    format!("Take {b} away from {a}; what is left?"),
                ][variant]
                    .clone(),
                expected: (a as i64 - b as i64).to_string(),
            },
            (1, set) => Task {
                role: "multiplier",
                question: match set {
                    TaskSet::Standard => [
                        format!("What is {a} times {b}?"),
                        format!("Multiply {a} by {b}."),
                        format!("Compute the product of {a} and {b}."),
                    ],
                    TaskSet::Other => [
                        format!("I need {a} multiplied by {b}."),
                        format!("How much is {a} times {b}?"),
                        format!("What do you get from {a} x {b}?"),
                    ],
                }[variant]
                    .clone(),
                expected: (a * b).to_string(),
            },
            (_, TaskSet::Standard) => {
                let file = format!("report-{i}.txt");
                let total = a * 10 + b;
                std::fs::write(work.join(&file), format!("Quarterly report\ntotal: {total}\n"))?;
                Task {
                    role: "reader",
                    question: [
                        format!("What is the total in {file}?"),
                        format!("Read {file} and tell me the total."),
                        format!("Which total does the file {file} give?"),
                    ][variant]
                        .clone(),
                    expected: total.to_string(),
                }
            }
            (_, TaskSet::Other) => {
                let file = format!("stock/inventory-{i}.md");
                let count = a * 10 + b;
                std::fs::create_dir_all(work.join("stock"))?;
                std::fs::write(
                    work.join(&file),
                    format!("# Inventory\nlast checked: Monday\nwidgets in stock: {count}\nsupplier: Acme\n"),
                )?;
                Task {
                    role: "reader",
                    question: [
                        format!("How many widgets are in stock according to {file}?"),
                        format!("Check {file}: how many widgets do we have?"),
                        format!("Look at {file} and report the widget count."),
                    ][variant]
                        .clone(),
                    expected: count.to_string(),
                }
            }
        };
        out.push(task);
    }
    Ok(out)
}

/// The whole numbers a text states, digits with a leading minus sign ("1,234" is 1234, "-5"
/// is -5): an answer is right when one of them is the expected number, not when its digits
/// appear inside a longer number.
fn numbers_in(text: &str) -> Vec<String> {
    let mut numbers = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let sign = c == '-' && current.is_empty() && chars.peek().is_some_and(|n| n.is_ascii_digit());
        if c.is_ascii_digit() || sign {
            current.push(c);
        } else if c == ',' && !current.is_empty() && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            // A thousands separator inside a number.
        } else if !current.is_empty() {
            numbers.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        numbers.push(current);
    }
    numbers
}

fn percentiles(mut samples: Vec<f64>) -> Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({"p50": round(at(0.5)), "p99": round(at(0.99)), "calls": samples.len()})
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// p50/p99 of `AgentHandle::call` without a model.
async fn dispatch_cost(work: &std::path::Path) -> Result<Value, Box<dyn std::error::Error>> {
    /// You use tools.
    #[agent(name = "Caller", tools = ["add", "fs_read"])]
    #[derive(Default, Serialize, Deserialize)]
    struct Caller;

    std::fs::write(work.join("small.txt"), "servers: 37\n")?;
    let os = AgentOS::builder()
        .without_kernel()
        .work_dir(work)
        .tool(arithmetic_tool("add", "Add", i64::checked_add))
        .start()
        .await?;
    let agent = os.spawn(Caller).await?;
    let add = Syscall::from_call("add", json!({"a": 2, "b": 40}))?;
    let read = Syscall::from_call("fs_read", json!({"path": "small.txt"}))?;
    let mut out = serde_json::Map::new();
    for (label, call) in [("tool", add), ("fs_read", read)] {
        for _ in 0..200 {
            agent.call(call.clone()).await?;
        }
        let mut samples = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            agent.call(call.clone()).await?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        out.insert(label.to_string(), percentiles(samples));
    }
    os.shutdown().await?;
    Ok(Value::Object(out))
}

/// Mask and forward time of forced tool-call generations through the Batcher.
fn grammar_cost(args: &ModelArgs) -> Result<Value, Box<dyn std::error::Error>> {
    let mut engine = Engine::load(&args.model(), args.engine_config())?;
    let tools: Vec<ToolDescription> = ["fs_read", "fs_list", "exec"]
        .iter()
        .map(|name| ToolDescription {
            name: name.to_string(),
            description: description(name).unwrap_or_default().to_string(),
            parameters: schema(name).unwrap_or_default(),
        })
        .collect();
    let system = format!("You are a careful assistant.{}", tools_prompt(&tools));
    let questions = [
        "Read the file inventory.txt.",
        "List the work directory.",
        "Run the program date.",
        "What does notes.md say?",
        "Show me the files.",
        "Open config.toml.",
        "Run uname with the argument -a.",
        "Read the file report.txt.",
    ];
    let mut runs = Vec::new();
    for sequences in [1usize, 8] {
        let mut batcher = Batcher::new();
        let mut receivers = Vec::new();
        for question in questions.iter().cycle().take(sequences) {
            let request =
                GenerateRequest::chat(vec![ChatMessage::system(system.clone()), ChatMessage::user(*question)])
                    .max_tokens(48)
                    .constraint(call_grammar(&tools, true));
            let prepared = prepare(request, engine.tokenizer(), engine.template(), engine.model_config())?;
            let (tx, rx) = std::sync::mpsc::channel();
            batcher.submit(prepared, Box::new(tx));
            receivers.push(rx);
        }
        // Prefill first, unmeasured: from the step after every sequence has its first token,
        // each forward is a decode step, as in a long generation.
        let mut started = vec![false; receivers.len()];
        let mut events: Vec<Vec<GenerationEvent>> = receivers.iter().map(|_| Vec::new()).collect();
        while !started.iter().all(|s| *s) && !batcher.is_idle() {
            batcher.step(&mut engine);
            for (i, rx) in receivers.iter().enumerate() {
                for event in rx.try_iter() {
                    started[i] |= matches!(event, GenerationEvent::Token { .. } | GenerationEvent::Finished { .. });
                    events[i].push(event);
                }
            }
        }
        let (engine_before, batcher_before) = (engine.stats(), batcher.stats());
        while !batcher.is_idle() {
            batcher.step(&mut engine);
        }
        let (engine_after, stats) = (engine.stats(), batcher.stats());
        for (i, rx) in receivers.iter().enumerate() {
            events[i].extend(rx.try_iter());
            if let Some(GenerationEvent::Failed(e)) = events[i].iter().find(|e| matches!(e, GenerationEvent::Failed(_)))
            {
                return Err(e.to_string().into());
            }
            let valid = events[i].iter().any(|e| {
                matches!(e, GenerationEvent::Finished { summary, .. }
                    if split_call(&summary.text).is_some_and(|(_, body)| parse_call(body).is_ok()))
            });
            if !valid {
                return Err(format!("a constrained generation did not end in a call: {:?}", events[i].last()).into());
            }
        }
        let steps = (engine_after.forwards - engine_before.forwards).max(1) as f64;
        let forward_us = (engine_after.forward_seconds - engine_before.forward_seconds) * 1e6;
        let grammar_us = (stats.grammar_us - batcher_before.grammar_us) as f64;
        let masks = (stats.grammar_masks - batcher_before.grammar_masks).max(1) as f64;
        let tokens = (stats.generated_tokens - batcher_before.generated_tokens).max(1) as f64;
        let forced = stats.grammar_forced_tokens - batcher_before.grammar_forced_tokens;
        runs.push(json!({
            "sequences": sequences,
            "decode_steps": steps,
            "generated_tokens": tokens,
            "forced_tokens": forced,
            "masks": masks,
            "mask_us_per_token": round(grammar_us / masks),
            "forward_us_per_step": round(forward_us / steps),
            "forward_us_per_token": round(forward_us / tokens),
            "mask_share_of_step": round(grammar_us / forward_us * 100.0) / 100.0,
        }));
    }
    Ok(Value::Array(runs))
}

/// Runs every task once on its own agent (all at once, so the kernel batches them); returns
/// what the agents did.
async fn run_tasks(
    args: &ModelArgs,
    work: &std::path::Path,
    tasks: &[Task],
    constrained: bool,
) -> Result<TaskRun, Box<dyn std::error::Error>> {
    let os = AgentOS::builder()
        .kernel(args.kernel_args())
        .syscalls(SyscallConfig {
            fs_root: Some(work.to_path_buf()),
            constrained_calls: constrained,
            ..SyscallConfig::default()
        })
        .tool(arithmetic_tool("add", "Add", i64::checked_add))
        .tool(arithmetic_tool("subtract", "Subtract b from", i64::checked_sub))
        .tool(arithmetic_tool("multiply", "Multiply", i64::checked_mul))
        .start()
        .await?;
    let mut running = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        let name = format!("{}-{i}", task.role);
        let agent = match task.role {
            "adder" => os.spawn_named(name, Adder).await?,
            "subtractor" => os.spawn_named(name, Subtractor).await?,
            "multiplier" => os.spawn_named(name, Multiplier).await?,
            _ => os.spawn_named(name, FileReader).await?,
        };
        let question = task.question.clone();
        running.push(tokio::spawn(async move { agent.ask(question).await }));
    }
    let (mut valid, mut calls, mut with_call, mut correct, mut empty) = (0, 0, 0, 0, 0);
    let mut by_role: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (task, handle) in tasks.iter().zip(running) {
        let response = handle.await??;
        let allowed = match task.role {
            "adder" => "add",
            "subtractor" => "subtract",
            "multiplier" => "multiply",
            _ => "fs_read",
        };
        with_call += !response.steps.is_empty() as usize;
        for step in &response.steps {
            calls += 1;
            let parsed: Option<Value> = serde_json::from_str(&step.arguments).ok();
            let call_schema = match allowed {
                "fs_read" => schema("fs_read"),
                _ => Some(arithmetic_schema()),
            };
            let ok = step.name == allowed
                && parsed
                    .as_ref()
                    .zip(call_schema.as_ref())
                    .is_some_and(|(arguments, schema)| check_schema(schema, arguments).is_ok());
            valid += ok as usize;
        }
        let right = numbers_in(&response.text).contains(&task.expected);
        correct += right as usize;
        empty += response.text.trim().is_empty() as usize;
        let entry = by_role.entry(task.role).or_default();
        entry.0 += 1;
        entry.1 += right as usize;
        eprintln!(
            "[{}] {} -> calls {:?} answer {:?} ({})",
            if constrained { "constrained" } else { "free" },
            task.question,
            response
                .steps
                .iter()
                .map(|s| format!("{} {}", s.name, s.arguments))
                .collect::<Vec<_>>(),
            response.text,
            if right { "right" } else { "wrong" }
        );
    }
    os.shutdown().await?;
    let by_role: serde_json::Map<String, Value> = by_role
        .into_iter()
        .map(|(role, (n, right))| (role.to_string(), json!({"tasks": n, "answered_correctly": right})))
        .collect();
    Ok(TaskRun {
        valid,
        calls,
        with_call,
        correct,
        empty,
        by_role: Value::Object(by_role),
    })
}

/// What the agents did over the task set, with or without constraints.
struct TaskRun {
    /// Calls that parsed, named the agent's tool and whose arguments validated.
    valid: usize,
    calls: usize,
    /// Tasks whose agent made at least one call.
    with_call: usize,
    /// Tasks whose final answer states the right number.
    correct: usize,
    /// Tasks whose final answer has no text.
    empty: usize,
    by_role: Value,
}

/// Agents that act: dispatch cost, grammar masks against a decode step, valid calls and task
/// success with and without constrained calls.
#[derive(clap::Parser)]
struct Cli {
    /// Tasks in the set
    #[arg(long, default_value_t = 21)]
    tasks: usize,
    /// Seed of the task numbers
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Which tasks: `standard`, or `other` tools, phrasings and files
    #[arg(long, value_enum, default_value_t = TaskSet::Standard)]
    set: TaskSet,
    /// Print one JSON object (default: pretty-printed)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    let (count, seed, set, args) = (cli.tasks, cli.seed, cli.set, cli.model);
    let work = std::env::temp_dir().join(format!("agentos-tools-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let started = Instant::now();
    let dispatch = dispatch_cost(&work).await?;
    let grammar = grammar_cost(&args)?;
    let task_set = tasks(count, seed, set, &work)?;
    let constrained = run_tasks(&args, &work, &task_set, true).await?;
    let free = run_tasks(&args, &work, &task_set, false).await?;
    let fraction = |a: usize, b: usize| {
        if b == 0 {
            Value::Null
        } else {
            json!(round(a as f64 / b as f64))
        }
    };
    let result = json!({
        "syscall_dispatch_us": dispatch,
        "mask_us_per_token": grammar[0]["mask_us_per_token"],
        "forward_us_per_token": grammar[0]["forward_us_per_token"],
        "grammar": grammar,
        "task_set": if set == TaskSet::Standard { "standard" } else { "other" },
        "tasks": task_set.len(),
        "seed": seed,
        "valid_calls_constrained": fraction(constrained.valid, constrained.calls),
        "valid_calls_unconstrained": fraction(free.valid, free.calls),
        "calls_constrained": constrained.calls,
        "calls_unconstrained": free.calls,
        "tasks_with_a_call_constrained": constrained.with_call,
        "tasks_with_a_call_unconstrained": free.with_call,
        "task_success": fraction(constrained.correct, task_set.len()),
        "task_success_unconstrained": fraction(free.correct, task_set.len()),
        "empty_answers_constrained": constrained.empty,
        "empty_answers_unconstrained": free.empty,
        "by_role_constrained": constrained.by_role,
        "by_role_unconstrained": free.by_role,
        "seconds": round(started.elapsed().as_secs_f64()),
    });
    std::fs::remove_dir_all(&work)?;
    if cli.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}
