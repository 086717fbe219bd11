//! The kernel computes what the model computes: tokenization and teacher-forced greedy argmax
//! equal llama.cpp's on the shared reference, in one forward per case and one token per step
//! as the Batcher serves (single and batched decodes, chunked prefill mixed with decodes).

use agentos_kernel::KvStorage;
use agentos_kernel::parity::{ParitySummary, Schedule, StepwiseParity, check_case, check_stepwise, read_reference};

use crate::support::{
    engine_f16, engine_f16_burn_only, engine_f32, engine_f32_burn_only, engine_quantized, reference_file,
};

fn run(engine: &mut agentos_kernel::Engine) -> ParitySummary {
    let cases = read_reference(&reference_file()).expect("reference parses");
    assert!(!cases.is_empty());
    let cases = cases
        .iter()
        .map(|c| check_case(engine, c).expect("case runs"))
        .collect();
    ParitySummary { cases }
}

#[test]
fn parity_f32_weights_on_flex() {
    let summary = run(&mut engine_f32());
    println!("{}", summary.line());
    assert_eq!(summary.tokens_identical(), summary.cases.len(), "{}", summary.line());
    assert!(summary.passes(97.0), "{}", summary.line());
}

#[test]
fn parity_f16_weights_on_flex() {
    let summary = run(&mut engine_f16());
    println!("{}", summary.line());
    assert!(summary.passes(97.0), "{}", summary.line());
}

#[test]
fn parity_quantized_weights_on_flex() {
    let mut engine = engine_quantized();
    // The file's own blocks are what the kernel multiplies, not a float copy.
    assert_eq!(engine.info().weights, "Q4_1 x210, Q8_0 x1");
    let summary = run(&mut engine);
    println!("{}", summary.line());
    assert!(summary.passes(97.0), "{}", summary.line());
}

fn stepwise(engine: &mut agentos_kernel::Engine, schedule: Schedule) -> StepwiseParity {
    let cases = read_reference(&reference_file()).expect("reference parses");
    let report = check_stepwise(engine, &cases, schedule).expect("cases run");
    println!(
        "{schedule:?}: {} in {} steps ({} mixed, up to {} decodes per step, {} continued chunks)",
        report.summary.line(),
        report.steps,
        report.mixed_steps,
        report.most_decodes,
        report.continued_chunks
    );
    assert_eq!(report.summary.cases.len(), cases.len());
    report
}

/// One sequence at a time: the prompt in one forward, then one reference token per step
/// through the single-sequence decode path.
#[test]
fn stepwise_single_sequence_decode_quantized() {
    let mut engine = engine_quantized();
    let report = stepwise(
        &mut engine,
        Schedule {
            prefill_chunk: 512,
            concurrent: 1,
        },
    );
    assert_eq!(report.most_decodes, 1);
    assert!(report.summary.passes(97.0), "{}", report.summary.line());
}

/// Every case in every forward: eight single-token decodes batched in each step.
#[test]
fn stepwise_batched_decode_quantized() {
    let mut engine = engine_quantized();
    let report = stepwise(
        &mut engine,
        Schedule {
            prefill_chunk: 512,
            concurrent: 8,
        },
    );
    assert_eq!(report.most_decodes, 8);
    assert!(report.summary.passes(97.0), "{}", report.summary.line());
}

/// Prompts fed five tokens per step while other cases decode in the same forwards.
#[test]
fn stepwise_chunked_prefill_among_decodes_quantized() {
    let mut engine = engine_quantized();
    let report = stepwise(
        &mut engine,
        Schedule {
            prefill_chunk: 5,
            concurrent: 3,
        },
    );
    assert!(report.mixed_steps > 0 && report.continued_chunks > 0, "{report:?}");
    assert!(report.summary.passes(97.0), "{}", report.summary.line());
}

/// Prompts fed 7 tokens per step among up to 4 batched decodes, checked on `engine`.
fn chunked_and_batched(engine: &mut agentos_kernel::Engine) {
    let report = stepwise(
        engine,
        Schedule {
            prefill_chunk: 7,
            concurrent: 4,
        },
    );
    assert!(report.mixed_steps > 0 && report.most_decodes > 1, "{report:?}");
    assert!(report.summary.passes(97.0), "{}", report.summary.line());
}

/// f32 weights through the host kernels.
#[test]
fn stepwise_chunked_and_batched_f32() {
    chunked_and_batched(&mut engine_f32());
}

/// f32 weights with the host kernels off: decodes attend through burn's padded batch, as on a
/// GPU.
#[test]
fn stepwise_chunked_and_batched_through_burn() {
    chunked_and_batched(&mut engine_f32_burn_only());
}

/// f16 weights with the host kernels off: burn's f16 matmuls, f16 device KV pools, causal and
/// padding masks built on the device (the GPU's default configuration, computed on flex).
#[test]
fn stepwise_chunked_and_batched_through_burn_f16() {
    let mut engine = engine_f16_burn_only();
    assert_eq!(engine.kv_storage(), KvStorage::DeviceF16);
    chunked_and_batched(&mut engine);
}
