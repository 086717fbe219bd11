use agentos_macros::agent;

#[agent(name = "A")]
struct A {
    notes: Vec<String>,
}

fn main() {}
