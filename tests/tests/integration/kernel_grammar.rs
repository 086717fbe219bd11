//! Grammar-constrained sampling with the real model: JSON Schema and Lark grammars, batched
//! sequences with different grammars in one step, lazy grammars, and grammars that do not
//! compile.

use agentos_kernel::engine::generate::Batcher;
use agentos_kernel::{ChatMessage, Constraint, GenerateRequest, GenerationEvent, Grammar, SamplingParams};
use serde_json::{Value, json};

use crate::kernel_engine::{finished, generate, submit};
use crate::support::engine_f16;

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"enum": ["pilot", "chef", "doctor"]}
        },
        "required": ["name", "age", "role"],
        "additionalProperties": false
    })
}

fn check_person(text: &str) {
    let value: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
    let object = value.as_object().unwrap_or_else(|| panic!("{text:?} is not an object"));
    assert!(
        object["name"].as_str().is_some_and(|n| n.chars().count() <= 20),
        "{text}"
    );
    assert!(object["age"].as_u64().is_some_and(|a| a <= 150), "{text}");
    assert!(
        ["pilot", "chef", "doctor"].contains(&object["role"].as_str().unwrap_or("")),
        "{text}"
    );
    assert_eq!(object.len(), 3, "{text}");
}

#[test]
fn json_schema_output_parses_and_validates_in_a_batch_with_other_grammars() {
    let mut engine = engine_f16();
    let ask = |question: &str| GenerateRequest::chat(vec![ChatMessage::user(question)]).max_tokens(60);
    let person = Constraint {
        grammar: Grammar::JsonSchema(person_schema()),
        after: None,
    };
    let yes_no = Constraint {
        grammar: Grammar::Lark("start: (\"yes\" | \"no\") \".\"".into()),
        after: None,
    };
    let sampled = SamplingParams {
        temperature: 0.9,
        seed: 11,
        ..SamplingParams::default()
    };
    let results = generate(
        &mut engine,
        vec![
            ask("Describe a person as JSON.").constraint(person.clone()),
            ask("Invent a character for a story, as JSON.")
                .sampling(sampled)
                .constraint(person),
            ask("Is the sky blue? Answer yes or no.").constraint(yes_no),
            ask("Say hello."),
        ],
    );
    check_person(&results[0].1.text);
    check_person(&results[1].1.text);
    assert!(
        ["yes.", "no."].contains(&results[2].1.text.as_str()),
        "{:?}",
        results[2].1.text
    );
    for (streamed, summary) in &results {
        assert_eq!(streamed, &summary.text, "what streamed is the output");
    }
    assert!(
        !results[3].1.text.is_empty(),
        "the free request in the same batch is unaffected"
    );
}

#[test]
fn a_lazy_grammar_constrains_only_what_follows_its_start_text() {
    let mut engine = engine_f16();
    // A Lark grammar forces the start text, so the lazy part is sure to begin.
    let forced = Constraint {
        grammar: Grammar::Lark(format!(
            "start: \"Answer: \" answer\nanswer: %json {}\n",
            json!({"type": "object", "properties": {"value": {"type": "integer"}}, "required": ["value"], "additionalProperties": false})
        )),
        after: None,
    };
    let request = GenerateRequest::chat(vec![ChatMessage::user("What is 2 + 3?")]).max_tokens(40);
    let text = generate(&mut engine, vec![request.clone().constraint(forced)])
        .remove(0)
        .1
        .text;
    let json = text.strip_prefix("Answer: ").unwrap_or_else(|| panic!("{text:?}"));
    let value: Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{json:?}: {e}"));
    assert!(value["value"].is_i64(), "{value}");

    // A start text the model does not write leaves the generation free: it equals the
    // unconstrained run token for token.
    let lazy = Constraint {
        grammar: Grammar::JsonSchema(json!({"type": "integer"})),
        after: Some("\u{1F99C}\u{1F99C}\u{1F99C}".into()),
    };
    let free = generate(&mut engine, vec![request.clone()]).remove(0).1;
    let waiting = generate(&mut engine, vec![request.constraint(lazy)]).remove(0).1;
    assert_eq!(free.tokens, waiting.tokens);
}

#[test]
fn a_grammar_that_does_not_compile_fails_its_request_only() {
    let engine = &mut *engine_f16();
    let mut batcher = Batcher::new();
    let bad = GenerateRequest::chat(vec![ChatMessage::user("hi")])
        .max_tokens(4)
        .constraint(Constraint {
            grammar: Grammar::Lark("start: missing_rule".into()),
            after: None,
        });
    let good = GenerateRequest::chat(vec![ChatMessage::user("hi")]).max_tokens(4);
    let bad_rx = submit(engine, &mut batcher, bad);
    let good_rx = submit(engine, &mut batcher, good);
    let mut good_done = None;
    while !batcher.is_idle() {
        batcher.step(engine);
        if let Some(s) = finished(&good_rx) {
            good_done = Some(s);
        }
    }
    let error = bad_rx
        .try_iter()
        .find_map(|e| match e {
            GenerationEvent::Failed(e) => Some(e),
            _ => None,
        })
        .expect("the bad grammar's request fails");
    assert!(error.to_string().contains("grammar"), "{error}");
    assert!(good_done.is_some(), "the other request completes");
    assert_eq!(batcher.stats().grammar_masks, 0);
}

#[test]
fn forced_tokens_are_appended_without_sampling_and_continue_the_same_sequence() {
    let engine = &mut *crate::support::engine_f32();
    // Everything but the digits is forced once the first token is sampled.
    let grammar = |prefix: &str| Constraint {
        grammar: Grammar::Lark(format!("start: \"{prefix}\" /[0-9]{{1,3}}/ \" degrees.\"")),
        after: None,
    };
    let messages = vec![ChatMessage::user("How hot is boiling water in Celsius?")];
    let request = GenerateRequest::chat(messages.clone()).max_tokens(40);
    let mut batcher = Batcher::new();
    let rx = submit(
        engine,
        &mut batcher,
        request.clone().constraint(grammar("The water boils at ")),
    );
    let forwards_before = engine.stats().forwards;
    while !batcher.is_idle() {
        batcher.step(engine);
    }
    let forwards = engine.stats().forwards - forwards_before;
    let summary = finished(&rx).expect("the generation finishes");
    let text = summary.text.clone();
    let digits = text
        .strip_prefix("The water boils at ")
        .and_then(|rest| rest.strip_suffix(" degrees."))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()),
        "{text:?}"
    );
    assert_eq!(engine.tokenizer().decode(&summary.tokens).unwrap(), text);
    let stats = batcher.stats();
    assert!(stats.grammar_forced_tokens >= 4, "{stats:?}");
    assert!(
        forwards < summary.tokens.len() as u64,
        "forced runs share a forward: {forwards} forwards for {} tokens",
        summary.tokens.len()
    );

    // The forced tokens went into the sequence's KV as if fed one by one: a run whose prompt
    // already holds the text before the digits picks the same digits.
    let prompt = engine.template().render(&messages, true).unwrap();
    let before_digits = &text[..text.len() - digits.len() - " degrees.".len()];
    let mut tokens = engine.tokenizer().encode(&prompt).unwrap();
    let forced_prefix_len = summary
        .tokens
        .iter()
        .scan(String::new(), |seen, &t| {
            seen.push_str(&engine.tokenizer().decode(&[t]).unwrap());
            Some(seen.len())
        })
        .position(|len| len == before_digits.len())
        .expect("the digits start on a token boundary")
        + 1;
    tokens.extend_from_slice(&summary.tokens[..forced_prefix_len]);
    let continued = GenerateRequest {
        prompt: agentos_kernel::Prompt::Tokens(tokens),
        ..request.constraint(Constraint {
            grammar: Grammar::Lark("start: /[0-9]{1,3}/ \" degrees.\"".into()),
            after: None,
        })
    };
    let (_, again) = generate(engine, vec![continued]).remove(0);
    assert_eq!(again.text, format!("{digits} degrees."));
}
