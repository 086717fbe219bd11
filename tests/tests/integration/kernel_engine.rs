//! Batched forwards, the paged KV cache, attention maps, embeddings and generation semantics.

use agentos_kernel::engine::generate::{Batcher, GenerationEvent, prepare};
use agentos_kernel::engine::sampling::argmax;
use agentos_kernel::{
    ChatMessage, Engine, FinishReason, ForwardItem, GenerateRequest, GenerationSummary, KvStorage, LogitsWanted,
    Prompt, SamplingParams,
};

use crate::support::{engine_f16, engine_f32, engine_f32_burn_only};

fn tokens(engine: &Engine, text: &str) -> Vec<u32> {
    engine.tokenizer().encode(text).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits of the last token after feeding `chunks` one forward at a time.
fn last_logits(engine: &mut Engine, chunks: &[&[u32]]) -> Vec<f32> {
    let seq = engine.create_sequence();
    let mut last = Vec::new();
    for c in chunks {
        last = engine
            .forward(&[ForwardItem::new(seq, c.to_vec())])
            .unwrap()
            .remove(0)
            .logits
            .remove(0);
    }
    engine.release_sequence(seq);
    last
}

#[test]
fn chunked_prefill_equals_one_prefill() {
    let mut engine = engine_f32();
    let t = tokens(
        &engine,
        "The paged KV cache keeps every sequence in blocks of sixteen tokens, so this prompt spans several blocks.",
    );
    assert!(t.len() > 17, "prompt must cross a block boundary");
    let whole = last_logits(&mut engine, &[&t]);
    let chunked = last_logits(&mut engine, &[&t[..5], &t[5..17], &t[17..]]);
    assert!(
        max_abs_diff(&whole, &chunked) < 1e-3,
        "diff {}",
        max_abs_diff(&whole, &chunked)
    );
}

#[test]
fn batched_forward_equals_separate_forwards() {
    let mut engine = engine_f32();
    let a = tokens(&engine, "Agents share one model like processes share a CPU.");
    let b = tokens(&engine, "Hello");
    let c = tokens(
        &engine,
        "A third sequence with a different length and position entirely, longer than the rest.",
    );
    let alone_a = last_logits(&mut engine, &[&a[..4], &a[4..]]);
    let alone_b = last_logits(&mut engine, &[&b]);
    let alone_c = last_logits(&mut engine, &[&c]);

    // a is mid-sequence (a decode-like chunk at position 4), b and c are fresh prefills.
    let (sa, sb, sc) = (
        engine.create_sequence(),
        engine.create_sequence(),
        engine.create_sequence(),
    );
    engine.forward(&[ForwardItem::new(sa, a[..4].to_vec())]).unwrap();
    let outs = engine
        .forward(&[
            ForwardItem::new(sa, a[4..].to_vec()),
            ForwardItem::new(sb, b.clone()),
            ForwardItem::new(sc, c.clone()),
        ])
        .unwrap();
    for s in [sa, sb, sc] {
        engine.release_sequence(s);
    }
    assert!(max_abs_diff(&outs[0].logits[0], &alone_a) < 1e-3);
    assert!(max_abs_diff(&outs[1].logits[0], &alone_b) < 1e-3);
    assert!(max_abs_diff(&outs[2].logits[0], &alone_c) < 1e-3);
}

/// Host KV pools with the host decode attention (the CPU default), and burn tensor pools with
/// the padded batched attention (the GPU path).
#[test]
fn batched_decode_steps_equal_separate_steps() {
    let mut engine = engine_f32();
    assert_eq!(engine.kv_storage(), KvStorage::HostF32);
    batched_decode_equals_separate(&mut engine, 1e-3);
    drop(engine);
    let mut engine = engine_f32_burn_only();
    assert_eq!(engine.kv_storage(), KvStorage::DeviceF32);
    batched_decode_equals_separate(&mut engine, 1e-3);
    drop(engine);
    // f16 pools round every key and value: a last-bit difference in a row computed alone or in
    // a batch (the matmul sums in another order) can move a stored value by one f16 step.
    let mut engine = engine_f16();
    assert_eq!(engine.kv_storage(), KvStorage::HostF16);
    batched_decode_equals_separate(&mut engine, 2e-2);
}

fn batched_decode_equals_separate(engine: &mut Engine, tolerance: f32) {
    let prompts = [
        tokens(engine, "Short one."),
        tokens(
            engine,
            "A much longer prompt, so that decode contexts differ and padding is needed.",
        ),
        tokens(engine, "Medium length prompt here."),
    ];
    let next = [42u32, 7, 1000];
    let fresh = tokens(engine, "A prefill that comes first in the batch.");
    // Reference: every sequence on its own.
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .zip(next)
        .map(|(p, t)| last_logits(engine, &[p, &[t]]))
        .collect();
    let alone_fresh = last_logits(engine, &[&fresh]);

    let seqs: Vec<_> = prompts.iter().map(|_| engine.create_sequence()).collect();
    for (s, p) in seqs.iter().zip(&prompts) {
        engine.forward(&[ForwardItem::new(*s, p.clone())]).unwrap();
    }
    let f = engine.create_sequence();
    let mut items = vec![ForwardItem::new(f, fresh.clone())];
    items.extend(seqs.iter().zip(next).map(|(&s, t)| {
        let mut item = ForwardItem::new(s, vec![t]);
        item.attention = true;
        item
    }));
    let outs = engine.forward(&items).unwrap();
    for s in seqs.iter().chain([&f]) {
        engine.release_sequence(*s);
    }
    let diff = max_abs_diff(&outs[0].logits[0], &alone_fresh);
    assert!(diff < tolerance, "prefill differs by {diff}");
    for (i, reference) in alone.iter().enumerate() {
        let out = &outs[i + 1];
        let diff = max_abs_diff(&out.logits[0], reference);
        assert!(diff < tolerance, "decode {i} differs by {diff}");
        let maps = out.attention.as_ref().unwrap();
        assert_eq!((maps.n_new, maps.context), (1, prompts[i].len() + 1));
        let sum: f32 = maps.row(0, 0, 0).iter().sum();
        assert!((sum - 1.0).abs() < 1e-3, "padding must get no attention (sum {sum})");
    }
}

#[test]
fn attention_maps_are_causal_probabilities() {
    let mut engine = engine_f32();
    let t = tokens(&engine, "Attention tells the memory system where ideas begin and end.");
    let seq = engine.create_sequence();
    engine.forward(&[ForwardItem::new(seq, t[..3].to_vec())]).unwrap();
    let mut item = ForwardItem::new(seq, t[3..].to_vec());
    item.attention = true;
    item.logits = LogitsWanted::None;
    let out = engine.forward(&[item]).unwrap().remove(0);
    engine.release_sequence(seq);
    let maps = out.attention.expect("attention was requested");
    let cfg = engine.model_config();
    assert_eq!(
        (maps.n_layers, maps.n_heads, maps.start_pos),
        (cfg.n_layers, cfg.n_heads, 3)
    );
    assert_eq!(maps.n_new, t.len() - 3);
    assert_eq!(maps.context, t.len());
    for layer in [0, maps.n_layers - 1] {
        for head in [0, maps.n_heads - 1] {
            for i in 0..maps.n_new {
                let row = maps.row(layer, head, i);
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-3, "row sums to {sum}");
                // New token i sits at position 3 + i and must not see later keys.
                assert!(row[3 + i + 1..].iter().all(|&p| p == 0.0), "causal mask violated");
            }
        }
    }
    assert!(out.logits.is_empty(), "no logits were requested");
}

#[test]
fn embeddings_are_deterministic_and_distinguish_texts() {
    let mut engine = engine_f32();
    let a = engine.embed("The cat sat on the mat.").unwrap();
    let a2 = engine.embed("The cat sat on the mat.").unwrap();
    let b = engine.embed("Quarterly revenue grew by twelve percent.").unwrap();
    assert_eq!(a.len(), engine.model_config().hidden_size);
    assert!(max_abs_diff(&a, &a2) < 1e-5);
    assert!(max_abs_diff(&a, &b) > 1e-2);
    assert!(engine.embed("").is_err());
}

#[test]
fn batched_embeddings_equal_one_text_at_a_time() {
    let mut engine = engine_f32();
    let texts: Vec<String> = [
        "a short one",
        "a somewhat longer text about memory pages and tiers",
        "x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let batched = engine.embed_many(&texts).unwrap().vectors;
    assert_eq!(batched.len(), 3);
    for (text, vector) in texts.iter().zip(&batched) {
        let single = engine.embed(text).unwrap();
        assert!(max_abs_diff(&single, vector) < 1e-3, "{text}");
    }
    let err = engine.embed_many(&["fine".to_string(), String::new()]).unwrap_err();
    assert!(err.to_string().contains("text 1"), "{err}");
}

pub(crate) fn generate(engine: &mut Engine, requests: Vec<GenerateRequest>) -> Vec<(String, GenerationSummary)> {
    let mut batcher = Batcher::new();
    let mut receivers = Vec::new();
    for r in requests {
        let prepared = prepare(r, engine.tokenizer(), engine.template(), engine.model_config()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        batcher.submit(prepared, Box::new(tx));
        receivers.push(rx);
    }
    while !batcher.is_idle() {
        batcher.step(engine);
    }
    receivers
        .into_iter()
        .map(|rx| {
            let mut streamed = String::new();
            let mut summary = None;
            for event in rx.try_iter() {
                match event {
                    GenerationEvent::Token { text, .. } => streamed.push_str(&text),
                    GenerationEvent::Finished { tail, summary: s } => {
                        streamed.push_str(&tail);
                        summary = Some(s);
                    }
                    GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
                }
            }
            (streamed, summary.expect("finished"))
        })
        .collect()
}

#[test]
fn continuous_batching_matches_single_greedy_runs() {
    let mut engine = engine_f32();
    let prompts = ["Name a color.", "What is 2 + 2?", "Write a haiku about Rust."];
    let request = |p: &str| GenerateRequest::chat(vec![ChatMessage::user(p)]).max_tokens(12);
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| generate(&mut engine, vec![request(p)]).remove(0))
        .collect();
    let together = generate(&mut engine, prompts.iter().map(|p| request(p)).collect());
    for ((sa, a), (st, t)) in alone.iter().zip(&together) {
        assert_eq!(a.tokens, t.tokens, "batched greedy output differs from the single run");
        assert_eq!(sa, &a.text, "streamed text must equal the summary text");
        assert_eq!(st, &t.text);
    }
    assert_eq!(
        engine.stats().sequences,
        0,
        "finished sequences release their KV blocks"
    );
}

#[test]
fn greedy_decode_continues_the_teacher_forced_argmax() {
    greedy_continues_teacher_forcing(
        &mut engine_f32(),
        "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n",
    );
}

/// With f16 weights on flex, decode steps run on the host matmul and a long teacher-forced
/// forward (more than 16 rows) on burn's gemm: the two must pick the same tokens.
#[test]
fn host_matmul_decode_agrees_with_the_gemm_forward_on_f16_weights() {
    let mut engine = engine_f16();
    assert!(engine.uses_host_matmul());
    greedy_continues_teacher_forcing(
        &mut engine,
        "<|im_start|>system\nYou are a helpful assistant who answers in full sentences.<|im_end|>\n\
         <|im_start|>user\nExplain why the sky is blue.<|im_end|>\n<|im_start|>assistant\n",
    );
}

fn greedy_continues_teacher_forcing(engine: &mut Engine, text: &str) {
    let prompt = tokens(engine, text);
    let (_, summary) = generate(
        engine,
        vec![GenerateRequest {
            ignore_eos: true,
            ..GenerateRequest::new(Prompt::Tokens(prompt.clone())).max_tokens(6)
        }],
    )
    .remove(0);
    // Teacher-force prompt + generated tokens: each generated token is the argmax at its position.
    let seq = engine.create_sequence();
    let mut fed = prompt.clone();
    fed.extend(&summary.tokens[..5]);
    let mut item = ForwardItem::new(seq, fed);
    item.logits = LogitsWanted::All;
    let out = engine.forward(&[item]).unwrap().remove(0);
    engine.release_sequence(seq);
    for (k, &t) in summary.tokens.iter().enumerate() {
        assert_eq!(argmax(&out.logits[prompt.len() - 1 + k]), t, "position {k}");
    }
}

#[test]
fn sampling_is_reproducible_and_limits_are_honoured() {
    let mut engine = engine_f32();
    let sampled = |seed| {
        GenerateRequest::chat(vec![ChatMessage::user("Tell me a story.")])
            .max_tokens(16)
            .sampling(SamplingParams {
                temperature: 1.0,
                top_k: 40,
                top_p: 0.95,
                seed,
                ..Default::default()
            })
    };
    let a = generate(&mut engine, vec![sampled(1), sampled(1), sampled(2)]);
    assert_eq!(a[0].1.tokens, a[1].1.tokens, "same seed, same output");
    assert_ne!(a[0].1.tokens, a[2].1.tokens, "different seeds should differ");
    assert!(a.iter().all(|(_, s)| s.tokens.len() <= 16));
    let limited = &a[0].1;
    if limited.tokens.len() == 16 {
        assert_eq!(limited.finish_reason, FinishReason::MaxTokens);
    }
}

#[test]
fn stop_strings_end_generation_before_the_string() {
    let mut engine = engine_f32();
    let base =
        GenerateRequest::chat(vec![ChatMessage::user("Count from 1 to 20, separated by commas.")]).max_tokens(40);
    let (_, free) = generate(&mut engine, vec![base.clone()]).remove(0);
    // Stop on a piece of text that the unconstrained run produced after its start.
    let stop = free.text.chars().skip(3).take(2).collect::<String>();
    assert!(!stop.is_empty(), "the model produced text: {:?}", free.text);
    let (streamed, s) = generate(
        &mut engine,
        vec![GenerateRequest {
            stop: vec![stop.clone()],
            ..base
        }],
    )
    .remove(0);
    assert_eq!(s.finish_reason, FinishReason::StopString);
    assert!(!s.text.contains(&stop), "{:?} contains {stop:?}", s.text);
    assert!(free.text.starts_with(&s.text));
    assert_eq!(streamed, s.text);
}

#[test]
fn malformed_requests_are_rejected_with_reasons() {
    let engine = engine_f32();
    let check = |r: GenerateRequest, needle: &str| {
        let e = prepare(r, engine.tokenizer(), engine.template(), engine.model_config()).unwrap_err();
        assert!(e.to_string().contains(needle), "{e} should mention {needle:?}");
    };
    let ok = || GenerateRequest::new(Prompt::Text("hi".into()));
    check(GenerateRequest { max_tokens: 0, ..ok() }, "max_tokens");
    check(
        GenerateRequest::new(Prompt::Tokens(vec![10_000_000])),
        "outside the vocabulary",
    );
    check(GenerateRequest::new(Prompt::Tokens(vec![])), "empty");
    check(GenerateRequest::chat(vec![]), "at least one message");
    check(
        ok().sampling(SamplingParams {
            temperature: -0.5,
            ..Default::default()
        }),
        "temperature",
    );
    check(
        GenerateRequest {
            stop: vec![String::new()],
            ..ok()
        },
        "stop strings",
    );
    check(GenerateRequest::new(Prompt::Tokens(vec![1; 9000])), "context length");
}

/// Submits `request` to `batcher` and returns a receiver of its events.
pub(crate) fn submit(
    engine: &Engine,
    batcher: &mut Batcher,
    request: GenerateRequest,
) -> std::sync::mpsc::Receiver<GenerationEvent> {
    let prepared = prepare(request, engine.tokenizer(), engine.template(), engine.model_config()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    batcher.submit(prepared, Box::new(tx));
    rx
}

pub(crate) fn finished(rx: &std::sync::mpsc::Receiver<GenerationEvent>) -> Option<GenerationSummary> {
    rx.try_iter().find_map(|e| match e {
        GenerationEvent::Finished { summary, .. } => Some(summary),
        GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
        GenerationEvent::Token { .. } => None,
    })
}

#[test]
fn a_more_urgent_request_preempts_and_the_resumed_generation_is_unchanged() {
    let mut engine = engine_f32();
    let low = GenerateRequest::chat(vec![ChatMessage::user("Tell me about cats.")])
        .max_tokens(24)
        .priority(3);
    let urgent = GenerateRequest::chat(vec![ChatMessage::user("What is 2 + 2?")])
        .max_tokens(8)
        .priority(1);
    let (_, alone) = generate(
        &mut engine,
        vec![GenerateRequest {
            ignore_eos: true,
            ..low.clone()
        }],
    )
    .remove(0);

    let mut batcher = Batcher::new().with_max_running(1);
    let low_rx = submit(
        &engine,
        &mut batcher,
        GenerateRequest {
            ignore_eos: true,
            ..low
        },
    );
    for _ in 0..6 {
        batcher.step(&mut engine);
    }
    let urgent_rx = submit(&engine, &mut batcher, urgent);
    let mut order = Vec::new();
    let (mut low_summary, mut urgent_summary) = (None, None);
    while !batcher.is_idle() {
        batcher.step(&mut engine);
        if let Some(s) = finished(&urgent_rx) {
            urgent_summary = Some(s);
            order.push("urgent");
        }
        if let Some(s) = finished(&low_rx) {
            low_summary = Some(s);
            order.push("low");
        }
    }
    assert_eq!(
        order,
        vec!["urgent", "low"],
        "the urgent request ran while the other waited"
    );
    let low_summary = low_summary.unwrap();
    assert_eq!(
        low_summary.tokens, alone.tokens,
        "preempted and resumed greedy equals uninterrupted"
    );
    let stats = batcher.stats();
    assert_eq!((stats.preemptions, stats.resumptions), (1, 1));
    // Resuming recomputed nothing: every prompt token went through the model once (or came
    // from the prefix cache, which earlier tests on this shared engine may have filled).
    let prompts = low_summary.prompt_tokens + urgent_summary.unwrap().prompt_tokens;
    assert_eq!(stats.prefill_tokens + stats.prefix_cached_tokens, prompts as u64);
}

#[test]
fn a_step_decodes_at_most_its_cap_and_every_sequence_advances_in_turn() {
    let mut engine = engine_f32();
    let request = |p: &str| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::chat(vec![ChatMessage::user(p)]).max_tokens(8)
    };
    let prompts = ["Name a colour.", "Name a city.", "Name a fruit."];
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| generate(&mut engine, vec![request(p)]).remove(0).1.tokens)
        .collect();

    let mut batcher = Batcher::new().with_step_decodes(2);
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| submit(&engine, &mut batcher, request(p)))
        .collect();
    let mut outputs = vec![Vec::new(); 3];
    let mut steps_with_tokens = Vec::new();
    while !batcher.is_idle() {
        batcher.step(&mut engine);
        let mut advanced = Vec::new();
        for (i, rx) in receivers.iter().enumerate() {
            for e in rx.try_iter() {
                match e {
                    GenerationEvent::Token { id, .. } => {
                        outputs[i].push(id);
                        advanced.push(i);
                    }
                    GenerationEvent::Finished { .. } => {}
                    GenerationEvent::Failed(e) => panic!("{e}"),
                }
            }
        }
        steps_with_tokens.push(advanced);
    }
    assert_eq!(outputs, alone, "greedy outputs equal the solo runs");
    // The first token comes from prefill; every later step decodes at most two sequences.
    let decode_steps: Vec<&Vec<usize>> = steps_with_tokens.iter().skip(1).filter(|a| !a.is_empty()).collect();
    assert!(decode_steps.iter().all(|a| a.len() <= 2), "{steps_with_tokens:?}");
    // Rotation: a sequence never sits out two decode steps in a row.
    for i in 0..3 {
        let at: Vec<usize> = (0..decode_steps.len())
            .filter(|&s| decode_steps[s].contains(&i))
            .collect();
        assert!(
            at.windows(2).all(|w| w[1] - w[0] <= 2),
            "sequence {i} decoded in steps {at:?}"
        );
    }
}

/// A long prompt that arrives while another sequence decodes is prefilled a few tokens per step,
/// each step still advancing the decode, and the outputs are those of each request run alone.
#[test]
fn a_step_that_decodes_prefills_at_most_its_prompt_cap() {
    let mut engine = engine_f32();
    let short = GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::chat(vec![ChatMessage::user("Count to twenty.")]).max_tokens(24)
    };
    let long = GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::chat(vec![ChatMessage::user(
            "Here is a long request, so that its prompt needs several steps to prefill when only \
             a few of its tokens may join each step: describe, in order, how a letter travels \
             from the writer's desk through the post office, the sorting centre and the van to \
             the reader's door.",
        )])
        .max_tokens(4)
    };
    let cap = 8;
    let mut batcher = Batcher::new().with_step_prefill_with_decodes(cap);
    let short_rx = submit(&engine, &mut batcher, short.clone());
    batcher.step(&mut engine); // the short prompt's prefill: nothing decodes yet
    let long_rx = submit(&engine, &mut batcher, long.clone());
    let (mut short_out, mut long_out) = (Vec::new(), Vec::new());
    let mut prefill_steps = 0;
    while !batcher.is_idle() {
        let before = batcher.stats().prefill_tokens;
        batcher.step(&mut engine);
        let fed = batcher.stats().prefill_tokens - before;
        let decoded = short_rx
            .try_iter()
            .filter(|e| matches!(e, GenerationEvent::Token { .. }));
        let decoded: Vec<_> = decoded.collect();
        if fed > 0 && !decoded.is_empty() {
            assert!(fed <= cap as u64, "a step that decodes prefilled {fed} tokens");
            prefill_steps += 1;
        }
        for e in decoded {
            if let GenerationEvent::Token { id, .. } = e {
                short_out.push(id);
            }
        }
        for e in long_rx.try_iter() {
            if let GenerationEvent::Token { id, .. } = e {
                long_out.push(id);
            }
        }
    }
    assert!(prefill_steps >= 3, "the long prompt took {prefill_steps} shared steps");
    // The references run after: run first, they would leave the long prompt in the prefix cache.
    let alone_short = generate(&mut engine, vec![short]).remove(0).1.tokens;
    let alone_long = generate(&mut engine, vec![long]).remove(0).1.tokens;
    assert_eq!(short_out, alone_short);
    assert_eq!(long_out, alone_long);
}

#[test]
fn requests_of_one_class_take_turns_by_time_slice() {
    let mut engine = engine_f32();
    let request = |p: &str| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::chat(vec![ChatMessage::user(p)]).max_tokens(16)
    };
    let alone: Vec<_> = ["Name a colour.", "Name a city."]
        .iter()
        .map(|p| generate(&mut engine, vec![request(p)]).remove(0).1)
        .collect();

    let mut batcher = Batcher::new().with_max_running(1).with_time_slice(4);
    let first = submit(&engine, &mut batcher, request("Name a colour."));
    let second = submit(&engine, &mut batcher, request("Name a city."));
    let mut tokens_by_step = Vec::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while !batcher.is_idle() {
        batcher.step(&mut engine);
        for (rx, out, tag) in [(&first, &mut a, 'a'), (&second, &mut b, 'b')] {
            for e in rx.try_iter() {
                match e {
                    GenerationEvent::Token { id, .. } => {
                        out.push(id);
                        tokens_by_step.push(tag);
                    }
                    GenerationEvent::Finished { .. } => {}
                    GenerationEvent::Failed(e) => panic!("{e}"),
                }
            }
        }
    }
    assert_eq!(a, alone[0].tokens);
    assert_eq!(b, alone[1].tokens);
    // Neither waited for the other to finish: the second started before the first was done.
    let first_b = tokens_by_step.iter().position(|t| *t == 'b').unwrap();
    let last_a = tokens_by_step.iter().rposition(|t| *t == 'a').unwrap();
    assert!(first_b < last_a, "turns interleave: {tokens_by_step:?}");
    assert!(batcher.stats().preemptions >= 3);
}

#[test]
fn a_shared_system_prompt_is_computed_once_and_changes_nothing() {
    let mut engine = engine_f32();
    // A system prompt no other test uses, so the first run below finds it uncached.
    let system = format!(
        "You are agent {} of a research team. Answer briefly, cite your sources, and never invent \
         facts you cannot support. Prefer plain words over jargon.",
        std::process::id()
    );
    let request = |question: &str| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::chat(vec![ChatMessage::system(system.clone()), ChatMessage::user(question)]).max_tokens(8)
    };
    let mut cold = Batcher::new();
    let rx = submit(&engine, &mut cold, request("Name a colour."));
    while !cold.is_idle() {
        cold.step(&mut engine);
    }
    let cold_summary = finished(&rx).unwrap();
    assert_eq!(cold.stats().prefix_cached_tokens, 0);

    // Another question under the same system prompt, then the first one again.
    let mut warm = Batcher::new();
    let other = submit(&engine, &mut warm, request("Name a city."));
    while !warm.is_idle() {
        warm.step(&mut engine);
    }
    assert!(finished(&other).is_some());
    let again = submit(&engine, &mut warm, request("Name a colour."));
    while !warm.is_idle() {
        warm.step(&mut engine);
    }
    let warm_summary = finished(&again).unwrap();
    assert_eq!(
        warm_summary.tokens, cold_summary.tokens,
        "cached KV gives the same greedy tokens"
    );
    let stats = warm.stats();
    // The system prompt spans many KV blocks; both warm requests reused them, and the
    // repeated request reused its whole prompt but the last block.
    assert!(stats.prefix_cached_tokens >= 48 + 32, "{stats:?}");
    assert!(
        stats.prefix_cached_tokens as usize >= warm_summary.prompt_tokens - 16,
        "{stats:?}"
    );
    assert!(engine.stats().kv_cached_blocks > 0);
}

#[test]
fn a_burst_of_requests_with_one_system_prompt_computes_it_about_once() {
    let mut engine = engine_f32();
    let system = format!(
        "Burst {}. {}",
        std::process::id(),
        "You are one of many agents that share this long system prompt. Read each question \
         carefully, answer in one short sentence, and say when you do not know. "
            .repeat(7)
    );
    let questions = ["Name a colour.", "Name a city.", "Name a fruit.", "Name a planet."];
    let request =
        |q: &str| GenerateRequest::chat(vec![ChatMessage::system(system.clone()), ChatMessage::user(q)]).max_tokens(4);
    let mut batcher = Batcher::new();
    let receivers: Vec<_> = questions
        .iter()
        .map(|q| submit(&engine, &mut batcher, request(q)))
        .collect();
    while !batcher.is_idle() {
        batcher.step(&mut engine);
    }
    let summaries: Vec<GenerationSummary> = receivers.iter().map(|rx| finished(rx).unwrap()).collect();
    let prompt = summaries[0].prompt_tokens;
    assert!(prompt > 200, "the shared prompt is long: {prompt}");
    let stats = batcher.stats();
    let total: usize = summaries.iter().map(|s| s.prompt_tokens).sum();
    assert_eq!(stats.prefill_tokens + stats.prefix_cached_tokens, total as u64);
    // At least the last two requests adopted the system prompt computed by the first.
    assert!(
        stats.prefix_cached_tokens as usize >= 2 * (prompt - 32),
        "{stats:?}, prompt {prompt}"
    );
    assert!(summaries[3].cached_prompt_tokens > 0);
}
