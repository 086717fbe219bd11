use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A", priority = Urgent)]
struct A {
    notes: Vec<String>,
}

fn main() {}
