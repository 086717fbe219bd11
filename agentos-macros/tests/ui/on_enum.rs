use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A")]
enum A {
    Idle,
}

fn main() {}
