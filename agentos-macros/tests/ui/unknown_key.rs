use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A", colour = "blue")]
struct A {
    notes: Vec<String>,
}

fn main() {}
