//! The batcher under pressure: a KV cache too small for the offered load, aging between
//! priority classes, and memory work sharing steps with generations.

use std::time::Duration;

use agentos_kernel::engine::generate::{Batcher, Job, JobOutput};
use agentos_kernel::{GenerateRequest, GenerationEvent, Prompt};

use crate::kernel_engine::{finished, generate, submit};
use crate::support::{engine_f16, engine_f32_small_kv};

#[test]
fn a_kv_cache_too_small_for_the_load_swaps_sequences_and_every_output_equals_its_solo_run() {
    let mut engine = engine_f32_small_kv();
    assert_eq!(engine.max_kv_blocks(), 24);
    let openings = [
        "The history of the lighthouse",
        "A recipe for bread",
        "Notes on the migration of birds",
        "How a steam engine works",
        "The rules of chess",
        "A letter to a friend",
    ];
    // About 7 blocks each by the end; six of them need 42 of the 24 blocks.
    let request = |text: &str| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::new(Prompt::Text(text.to_string())).max_tokens(44)
    };
    let alone: Vec<_> = openings
        .iter()
        .map(|t| generate(&mut engine, vec![request(t)]).remove(0).1)
        .collect();

    let mut batcher = Batcher::new().with_max_running(6);
    let receivers: Vec<_> = openings
        .iter()
        .map(|t| submit(&engine, &mut batcher, request(t)))
        .collect();
    let mut summaries = vec![None; receivers.len()];
    while !batcher.is_idle() {
        batcher.step(&mut engine);
        for (rx, summary) in receivers.iter().zip(summaries.iter_mut()) {
            if let Some(s) = finished(rx) {
                *summary = Some(s);
            }
        }
    }
    for ((summary, solo), opening) in summaries.into_iter().zip(&alone).zip(openings) {
        let summary = summary.unwrap_or_else(|| panic!("{opening:?} did not finish"));
        assert_eq!(
            summary.tokens, solo.tokens,
            "{opening:?}: swapped and resumed equals the solo run"
        );
    }
    let stats = batcher.stats();
    assert!(
        stats.swaps > 0,
        "the cache was too small, so sequences were swapped out: {stats:?}"
    );
    assert!(stats.recomputed_tokens > 0, "{stats:?}");
    assert_eq!(engine.stats().sequences, 0, "every sequence let go of its blocks");
}

#[test]
fn a_request_that_cannot_fit_even_alone_fails_and_the_others_go_on() {
    let mut engine = engine_f32_small_kv();
    let mut batcher = Batcher::new();
    let long = "word ".repeat(400);
    let too_big = submit(
        &engine,
        &mut batcher,
        GenerateRequest::new(Prompt::Text(long)).max_tokens(4),
    );
    let fine = submit(
        &engine,
        &mut batcher,
        GenerateRequest::new(Prompt::Text("A short one".into())).max_tokens(4),
    );
    while !batcher.is_idle() {
        batcher.step(&mut engine);
    }
    let failed = too_big.try_iter().any(|e| matches!(e, GenerationEvent::Failed(_)));
    assert!(failed, "a 400-token prompt cannot fit in 192 tokens of cache");
    assert!(finished(&fine).is_some());
}

/// How many high-class requests finish before one low-class request that was queued first, with
/// one slot and two high requests always waiting (at most `highs`).
fn highs_before_low(aging: Option<Duration>, highs: usize) -> usize {
    let mut engine = engine_f16();
    let mut batcher = Batcher::new().with_max_running(1).with_time_slice(0).with_aging(aging);
    let request = |text: &str, priority: u8| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::new(Prompt::Text(text.to_string()))
            .max_tokens(4)
            .priority(priority)
    };
    let low = submit(&engine, &mut batcher, request("Low priority work", 3));
    let mut waiting: Vec<_> = (0..2)
        .map(|i| submit(&engine, &mut batcher, request(&format!("High priority work {i}"), 1)))
        .collect();
    let (mut submitted, mut done) = (2, 0);
    loop {
        batcher.step(&mut engine);
        if finished(&low).is_some() {
            return done;
        }
        let before = waiting.len();
        waiting.retain(|rx| finished(rx).is_none());
        done += before - waiting.len();
        while waiting.len() < 2 && submitted < highs {
            waiting.push(submit(
                &engine,
                &mut batcher,
                request(&format!("High priority work {submitted}"), 1),
            ));
            submitted += 1;
        }
        assert!(!batcher.is_idle(), "the low request is still queued");
    }
}

#[test]
fn aging_lets_a_waiting_request_in_ahead_of_a_stream_of_more_urgent_ones() {
    let without = highs_before_low(None, 20);
    assert_eq!(
        without, 20,
        "strict priorities: the low request waits behind every high one"
    );
    let with = highs_before_low(Some(Duration::from_millis(20)), 20);
    assert!(
        with < 5,
        "aged two classes in 40 ms, it goes ahead of later high requests: {with}"
    );
}

#[test]
fn memory_work_shares_steps_and_never_holds_an_urgent_generation_back() {
    let mut engine = engine_f16();
    let mut batcher = Batcher::new();
    let text = "A long note about the harbour, the boats and the weather. ".repeat(60);
    let job = Job::analyze(&engine, &text, true).unwrap();
    let job_tokens = job.tokens();
    assert!(job_tokens > 600, "{job_tokens}");
    let (tx, job_rx) = std::sync::mpsc::channel();
    batcher.submit_job(
        job,
        agentos_kernel::DEFAULT_JOB_PRIORITY,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    batcher.step(&mut engine);
    let urgent = submit(
        &engine,
        &mut batcher,
        GenerateRequest::new(Prompt::Text("Quick: what is two and two?".into()))
            .max_tokens(8)
            .priority(0),
    );
    let mut order = Vec::new();
    let mut analysis = None;
    while !batcher.is_idle() {
        batcher.step(&mut engine);
        if finished(&urgent).is_some() {
            order.push("urgent");
        }
        if let Ok(result) = job_rx.try_recv() {
            analysis = Some(result.unwrap());
            order.push("memory");
        }
    }
    assert_eq!(
        order,
        vec!["urgent", "memory"],
        "the generation did not wait for the memory work"
    );
    let Some(JobOutput::Analysis(analysis)) = analysis else {
        panic!("an analysis");
    };
    assert_eq!(analysis.entropy.iter().map(|e| e.n_tokens).sum::<usize>(), job_tokens);
    assert_eq!(batcher.stats().job_tokens, job_tokens as u64);
}
