use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A")]
struct A(Vec<String>);

fn main() {}
