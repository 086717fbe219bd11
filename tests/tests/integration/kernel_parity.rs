//! The kernel computes what the model computes: tokenization and teacher-forced greedy argmax
//! equal llama.cpp's on the shared reference.

use agentos_kernel::parity::{ParitySummary, check_case, read_reference};

use crate::support::{engine_f16, engine_f32, engine_quantized, reference_file};

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
