//! # agentos-macros: `#[agent]`
//!
//! Use it through `agentos_runtime::prelude::*`; the expansion refers to `::agentos_runtime`.
//!
//! ```ignore
//! /// You are a meticulous researcher. Cite what you rely on.
//! #[agent(name = "Researcher", role = "researcher", priority = High, temperature = 0.7, max_tokens = 256)]
//! #[derive(Default, Serialize, Deserialize)]
//! struct Researcher { notes: Vec<String> }
//! ```
//!
//! Keys (only `name` is required; the system prompt is required too, as the doc comment or `system`):
//!
//! | key | value | default |
//! |-----|-------|---------|
//! | `name` | string | — |
//! | `role` | string | the name in lower case |
//! | `system` | string (instead of a doc comment) | the doc comment |
//! | `priority` | `Realtime`, `High`, `Normal`, `Low`, `Background` | `Normal` |
//! | `temperature`, `top_p`, `repetition_penalty` | number | greedy sampling |
//! | `top_k`, `seed` | whole number | 0 |
//! | `max_tokens` | whole number ≥ 1 (tokens per turn) | 256 |
//! | `history` | whole number (recent turns in each prompt) | 4 |
//! | `tools` | list of strings | none |
//! | `custom_hooks` | flag: you implement `AgentHooks` yourself | empty `AgentHooks` impl |
//!
//! It implements `agentos_runtime::Agent` (and `AgentHooks`, unless `custom_hooks`). Misuse
//! (unknown keys, values of the wrong type, a missing name or system prompt, an enum, a tuple
//! struct, generics) is a compile error pointing at the offending token.

use proc_macro::TokenStream;

mod agent;

/// Declares a struct as an agent role. See the crate documentation.
#[proc_macro_attribute]
pub fn agent(attr: TokenStream, item: TokenStream) -> TokenStream {
    agent::expand(attr.into(), item.into()).into()
}
