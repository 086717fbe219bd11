use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A", temperature = "hot")]
struct A {
    notes: Vec<String>,
}

fn main() {}
