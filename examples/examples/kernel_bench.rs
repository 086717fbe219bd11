//! Measures the Reasoning Kernel: prefill and decode speed, batched decode throughput, memory.
//!
//! ```text
//! cargo run --release --example kernel_bench -- --json [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```
//! Prints one JSON object: device, dtype, prefill_tps (512-token prompt), decode_tps (one
//! sequence, 128 tokens), aggregate_decode_tps (keyed by sequences decoding together, one
//! `Engine::forward` per step), served_aggregate_tps (the same numbers of sequences as requests
//! through the Batcher and the sampler: generated tokens per second once every request has its
//! first token, as llama-batched-bench counts its generation phase), each the median of
//! `--repeats` runs (3; every run's figure is kept under `runs`), grammar (8 chat requests
//! through the Batcher, JSON-Schema constrained against the same requests free, in the same
//! run: tokens/s of each and the mean mask time per constrained token), sampling (µs per token
//! of the sampler on the model's own logits, partial selection against the full sort of the
//! vocabulary it replaced, in the same run),
//! single_sequence_peak_rss_bytes (the peak after the prefill and single-sequence decode runs,
//! the work llama-bench does), peak_rss_bytes (the peak of the whole run, which also holds up to
//! 16 sequences' caches and the grammar engine), plus load time.

use std::time::Instant;

use agentos_examples::{ModelArgs, init_logging, peak_rss_bytes};
use agentos_kernel::engine::generate::{Batcher, BatcherStats, prepare};
use agentos_kernel::engine::sampling::argmax;
use agentos_kernel::{
    ChatMessage, Constraint, Engine, ForwardItem, GenerateRequest, GenerationEvent, Grammar, LogitsWanted, Prompt,
    SamplingParams, SequenceId, TokenId,
};

const PREFILL_TOKENS: usize = 512;
const DECODE_TOKENS: usize = 128;
const AGGREGATE_STEPS: usize = 32;
/// Tokens each served request generates (after its first).
const SERVED_TOKENS: usize = 64;
const SEQUENCE_COUNTS: [usize; 5] = [1, 2, 4, 8, 16];

/// Kernel speed: prefill, decode, batched decode, constrained against free generation, memory.
#[derive(clap::Parser)]
struct Cli {
    /// Print one JSON object (default: pretty-printed)
    #[arg(long)]
    json: bool,
    /// Runs of each figure; the median is reported
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    #[command(flatten)]
    model: ModelArgs,
}

fn main() -> agentos_kernel::Result<()> {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    let mut config = cli.model.engine_config();
    config.max_batch_tokens = PREFILL_TOKENS;
    let load_started = Instant::now();
    let mut engine = Engine::load(&cli.model.model(), config)?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let vocab = engine.model_config().vocab_size as u32;

    // A deterministic 512-token prompt of ordinary text.
    let text = "The quick brown fox jumps over the lazy dog while the operating system schedules agents. ".repeat(64);
    let mut prompt = engine.tokenizer().encode(&text)?;
    prompt.truncate(PREFILL_TOKENS);
    assert_eq!(
        prompt.len(),
        PREFILL_TOKENS,
        "the bench prompt must tokenize to at least 512 tokens"
    );

    // Warm-up: first-touch allocations and kernel compilation (wgpu) are not what we measure.
    let warm = engine.create_sequence();
    engine.forward(&[ForwardItem::new(warm, prompt[..64].to_vec())])?;
    decode(&mut engine, &[warm], 4)?;
    engine.release_sequence(warm);

    let repeats = cli.repeats as usize;
    let mut runs = serde_json::Map::new();

    // Prefill: one 512-token forward.
    let mut prefill_tps = Vec::new();
    let mut first = 0;
    let mut sampling = serde_json::Value::Null;
    for _ in 0..repeats {
        let seq = engine.create_sequence();
        let t = Instant::now();
        let out = engine.forward(&[ForwardItem::new(seq, prompt.clone())])?;
        prefill_tps.push(PREFILL_TOKENS as f64 / t.elapsed().as_secs_f64());
        first = argmax(&out[0].logits[0]);
        if sampling.is_null() {
            sampling = sampling_cost(&out[0].logits[0], &prompt);
        }
        engine.release_sequence(seq);
    }

    // Decode: one sequence, 128 tokens after a short prompt.
    let mut decode_tps = Vec::new();
    for _ in 0..repeats {
        let seq = engine.create_sequence();
        engine.forward(&[ForwardItem::new(seq, prompt[..32].to_vec())])?;
        let t = Instant::now();
        decode_from(&mut engine, &[seq], &[first], DECODE_TOKENS)?;
        decode_tps.push(DECODE_TOKENS as f64 / t.elapsed().as_secs_f64());
        engine.release_sequence(seq);
    }

    // What llama-bench measures (a 512-token prefill and one sequence's decode) is done here:
    // the peak so far is the figure to set beside its peak RSS.
    let single_sequence_peak_rss = peak_rss_bytes();

    // Aggregate: N sequences decoding together in one batched forward per step.
    let mut aggregate = serde_json::Map::new();
    let mut aggregate_runs = serde_json::Map::new();
    for n in SEQUENCE_COUNTS {
        let mut tps = Vec::new();
        for _ in 0..repeats {
            let seqs: Vec<SequenceId> = (0..n).map(|_| engine.create_sequence()).collect();
            let items: Vec<ForwardItem> = seqs
                .iter()
                .enumerate()
                .map(|(i, &s)| ForwardItem::new(s, prompt[i..i + 16].to_vec()))
                .collect();
            let outs = engine.forward(&items)?;
            let next: Vec<TokenId> = outs.iter().map(|o| argmax(&o.logits[0]) % vocab).collect();
            let t = Instant::now();
            decode_from(&mut engine, &seqs, &next, AGGREGATE_STEPS)?;
            tps.push((n * AGGREGATE_STEPS) as f64 / t.elapsed().as_secs_f64());
            for s in seqs {
                engine.release_sequence(s);
            }
        }
        aggregate.insert(n.to_string(), serde_json::json!(round(median(&tps))));
        aggregate_runs.insert(n.to_string(), rounded(&tps));
    }

    // Served: the same sequence counts as requests through the Batcher and the sampler.
    let mut served = serde_json::Map::new();
    let mut served_runs = serde_json::Map::new();
    for n in SEQUENCE_COUNTS {
        let tps = (0..repeats)
            .map(|run| served_decode_tps(&mut engine, &prompt, n, run as u64))
            .collect::<agentos_kernel::Result<Vec<f64>>>()?;
        served.insert(n.to_string(), serde_json::json!(round(median(&tps))));
        served_runs.insert(n.to_string(), rounded(&tps));
    }
    runs.insert("prefill_tps".into(), rounded(&prefill_tps));
    runs.insert("decode_tps".into(), rounded(&decode_tps));
    runs.insert("aggregate_decode_tps".into(), aggregate_runs.into());
    runs.insert("served_aggregate_tps".into(), served_runs.into());

    let grammar = grammar_cost(&mut engine)?;

    let info = engine.info();
    let report = serde_json::json!({
        "model": info.name,
        "device": info.device,
        "device_description": info.device_description,
        "dtype": info.dtype.name(),
        "weights": info.weights,
        "load_seconds": round(load_seconds),
        "prefill_tokens": PREFILL_TOKENS,
        "prefill_tps": round(median(&prefill_tps)),
        "decode_tokens": DECODE_TOKENS,
        "decode_tps": round(median(&decode_tps)),
        "aggregate_decode_steps": AGGREGATE_STEPS,
        "aggregate_decode_tps": aggregate,
        "served_tokens": SERVED_TOKENS,
        "served_aggregate_tps": served,
        "repeats": repeats,
        "runs": runs,
        "grammar": grammar,
        "sampling": sampling,
        "single_sequence_peak_rss_bytes": single_sequence_peak_rss,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if cli.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialisable"));
    }
    Ok(())
}

/// Sampler cost per token on `logits` with `history` seen: the kernel's sampler (partial
/// selection, incremental seen set) against the algorithm it replaced (the history copied and
/// sorted, the whole vocabulary sorted: `full_copy_penalty` + `full_sort_distribution`, also
/// in the kernel, so both are compiled alike), each the mean of 200 draws, for three settings.
fn sampling_cost(logits: &[f32], history: &[TokenId]) -> serde_json::Value {
    use agentos_kernel::SamplingParams;
    use agentos_kernel::engine::sampling::{Sampler, full_copy_penalty, full_sort_distribution};
    let settings = [
        ("top_k_40_top_p_0.9_penalty_1.1", 40, 0.9, 1.1),
        ("top_p_0.95", 0, 0.95, 1.0),
        ("temperature_only", 0, 1.0, 1.0),
    ];
    let draws = 200;
    let mut report = serde_json::Map::new();
    for (name, top_k, top_p, repetition_penalty) in settings {
        let params = SamplingParams {
            temperature: 0.7,
            top_k,
            top_p,
            repetition_penalty,
            seed: 5,
        };
        let mut sampler = Sampler::new(params.clone());
        let mut generated: Vec<TokenId> = Vec::new();
        let t = Instant::now();
        for _ in 0..draws {
            let token = sampler.sample(&mut logits.to_vec(), &[history, &generated]);
            generated.push(token);
        }
        let ours = t.elapsed().as_secs_f64() * 1e6 / draws as f64;
        // The baseline draws the most likely candidate (its cost is the sort, not the draw):
        // the same number of tokens, the history growing the same way.
        let mut generated: Vec<TokenId> = Vec::new();
        let t = Instant::now();
        for _ in 0..draws {
            let mut copy = logits.to_vec();
            if repetition_penalty != 1.0 {
                full_copy_penalty(&mut copy, &[history, &generated], repetition_penalty);
            }
            let distribution = full_sort_distribution(&copy, &params);
            generated.push(distribution.first().map(|c| c.0).unwrap_or(0));
        }
        let full = t.elapsed().as_secs_f64() * 1e6 / draws as f64;
        report.insert(
            name.to_string(),
            serde_json::json!({"partial_selection_us": round(ours), "full_sort_us": round(full)}),
        );
    }
    serde_json::Value::Object(report)
}

/// Greedy-decodes `steps` tokens for every sequence, batched, starting from `next`.
fn decode_from(engine: &mut Engine, seqs: &[SequenceId], next: &[TokenId], steps: usize) -> agentos_kernel::Result<()> {
    let mut next = next.to_vec();
    for _ in 0..steps {
        let items: Vec<ForwardItem> = seqs
            .iter()
            .zip(&next)
            .map(|(&s, &t)| {
                let mut item = ForwardItem::new(s, vec![t]);
                item.logits = LogitsWanted::Last;
                item
            })
            .collect();
        let outs = engine.forward(&items)?;
        next = outs.iter().map(|o| argmax(&o.logits[0])).collect();
    }
    Ok(())
}

fn decode(engine: &mut Engine, seqs: &[SequenceId], steps: usize) -> agentos_kernel::Result<()> {
    decode_from(engine, seqs, &vec![0; seqs.len()], steps)
}

/// 8 chat requests batched through the Batcher, free and then constrained to a JSON Schema:
/// tokens/s of each, and what computing the masks cost per constrained token.
fn grammar_cost(engine: &mut Engine) -> agentos_kernel::Result<serde_json::Value> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "population": {"type": "integer", "minimum": 0},
            "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3}
        },
        "required": ["city", "population", "landmarks"],
        "additionalProperties": false
    });
    let cities = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Delhi", "Quito"];
    let run = |engine: &mut Engine, constrained: bool| -> agentos_kernel::Result<(f64, BatcherStats)> {
        let mut batcher = Batcher::new();
        let mut receivers = Vec::new();
        for city in cities {
            let mut request = GenerateRequest::chat(vec![ChatMessage::user(format!(
                "Describe {city} as JSON with its population and landmarks."
            ))])
            .max_tokens(48);
            if constrained {
                request = request.constraint(Constraint {
                    grammar: Grammar::JsonSchema(schema.clone()),
                    after: None,
                });
            }
            let prepared = prepare(request, engine.tokenizer(), engine.template(), engine.model_config())?;
            let (tx, rx) = std::sync::mpsc::channel();
            batcher.submit(prepared, Box::new(tx));
            receivers.push(rx);
        }
        let t = Instant::now();
        while !batcher.is_idle() {
            batcher.step(engine);
        }
        let seconds = t.elapsed().as_secs_f64();
        first_failure(receivers)?;
        let stats = batcher.stats();
        Ok((stats.generated_tokens as f64 / seconds, stats))
    };
    let (free_tps, _) = run(engine, false)?;
    let (constrained_tps, stats) = run(engine, true)?;
    Ok(serde_json::json!({
        "sequences": cities.len(),
        "free_tps": round(free_tps),
        "constrained_tps": round(constrained_tps),
        "masks": stats.grammar_masks,
        "forced_tokens": stats.grammar_forced_tokens,
        "mask_us_per_token": round(stats.grammar_us as f64 / stats.grammar_masks.max(1) as f64),
    }))
}

/// `n` requests of 16 prompt tokens each (different slices of `prompt`) through the Batcher,
/// sampled at temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.1, each generating
/// `1 + SERVED_TOKENS` tokens: the generated tokens per second from the step in which the last
/// request got its first token until all are done.
fn served_decode_tps(engine: &mut Engine, prompt: &[TokenId], n: usize, seed: u64) -> agentos_kernel::Result<f64> {
    let mut batcher = Batcher::new();
    let mut receivers = Vec::new();
    for i in 0..n {
        let mut request = GenerateRequest::new(Prompt::Tokens(prompt[i..i + 16].to_vec()))
            .max_tokens(1 + SERVED_TOKENS)
            .sampling(SamplingParams {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                repetition_penalty: 1.1,
                seed: seed * 1000 + i as u64,
            });
        request.ignore_eos = true;
        let prepared = prepare(request, engine.tokenizer(), engine.template(), engine.model_config())?;
        let (tx, rx) = std::sync::mpsc::channel();
        batcher.submit(prepared, Box::new(tx));
        receivers.push(rx);
    }
    // Prefill until every request has sampled its first token.
    while batcher.stats().generated_tokens < n as u64 && !batcher.is_idle() {
        batcher.step(engine);
    }
    let from = batcher.stats().generated_tokens;
    let t = Instant::now();
    while !batcher.is_idle() {
        batcher.step(engine);
    }
    let seconds = t.elapsed().as_secs_f64();
    first_failure(receivers)?;
    Ok((batcher.stats().generated_tokens - from) as f64 / seconds)
}

/// The first generation that failed, as an error.
fn first_failure(receivers: Vec<std::sync::mpsc::Receiver<GenerationEvent>>) -> agentos_kernel::Result<()> {
    for rx in receivers {
        if let Some(GenerationEvent::Failed(e)) = rx.try_iter().find(|e| matches!(e, GenerationEvent::Failed(_))) {
            return Err(e);
        }
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn rounded(values: &[f64]) -> serde_json::Value {
    values.iter().map(|&v| round(v)).collect::<Vec<f64>>().into()
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
