use agentos_macros::agent;

/// You are helpful.
#[agent(role = "helper")]
struct A {
    notes: Vec<String>,
}

fn main() {}
