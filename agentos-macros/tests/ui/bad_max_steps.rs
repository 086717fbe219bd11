use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A", tools = ["fs_read"], max_steps = 0)]
struct A;

fn main() {}
