//! # agentos-macros: `#[agent]` and `#[tool]`
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
//! | `tools` | list of strings: system calls and tools the agent may call | none |
//! | `max_steps` | whole number ≥ 1 (calls per turn) | 8 |
//! | `tool_choice` | `"auto"`, `"first"` (each turn's first step is a call), `"required"` (every step is) | `"auto"` |
//! | `memory` | flag: the agent has an S-MMU memory | a fixed recent history |
//! | `custom_hooks` | flag: you implement `AgentHooks` yourself | empty `AgentHooks` impl |
//! | `read`, `write` | list of directories it may read (read and write): `"dir"` is its work directory, `"mount=dir"` is reached as `mount/...` | none |
//! | `exec` | list of programs it may run | none |
//! | `net` | list of hosts it may fetch from (`"*.example.com"` for subdomains) | none |
//! | `peers` | list of agents it may message, or `["*"]` | none |
//! | `children` | whole number: agents it may spawn | 0 |
//! | `child_roles` | list of roles its children may have | any |
//! | `approve` | list of gates that wait for an approver: `"exec"`, `"write"`, `"fetch"`, `"spawn"` | none |
//!
//! Any of the capability keys (`read` … `approve`) makes the role declare its own capabilities
//! (`AgentSpec::capabilities`): what it does not name, it may not do. Without them the runtime's
//! policy decides (see `agentos_runtime::security`).
//!
//! It implements `agentos_runtime::Agent` (and `AgentHooks`, unless `custom_hooks`). Misuse
//! (unknown keys, values of the wrong type, a missing name or system prompt, an enum, a tuple
//! struct, generics) is a compile error pointing at the offending token.

use proc_macro::TokenStream;

mod agent;
mod tool;

/// Declares a struct as an agent role. See the crate documentation.
#[proc_macro_attribute]
pub fn agent(attr: TokenStream, item: TokenStream) -> TokenStream {
    agent::expand(attr.into(), item.into()).into()
}

/// Makes an async fn a tool agents can call: the fn's name is the tool's name, its doc comment
/// the description, its arguments the JSON Schema (each argument's type implements
/// `agentos_runtime::syscall::ToolArgument`); adds `<CamelCaseName>Tool`, which implements
/// `agentos_runtime::Tool`, for `AgentOsBuilder::tool`. Misuse (a plain fn, `self`, generics,
/// borrowed or patterned arguments, no doc comment) is a compile error at the token at fault.
#[proc_macro_attribute]
pub fn tool(attr: TokenStream, item: TokenStream) -> TokenStream {
    tool::expand(attr.into(), item.into()).into()
}
