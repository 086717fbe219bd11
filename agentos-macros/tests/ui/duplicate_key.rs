use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A", max_tokens = 64, max_tokens = 128)]
struct A;

fn main() {}
