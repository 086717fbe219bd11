use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A")]
struct A<T> {
    items: Vec<T>,
}

fn main() {}
