use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A", tools = ["search", 42])]
struct A;

fn main() {}
