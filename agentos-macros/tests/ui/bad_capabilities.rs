use agentos_macros::agent;

/// You are helpful.
#[agent(name = "A", exec = ["ls"], approve = ["exec", "everything"])]
struct A;

/// You are helpful.
#[agent(name = "B", read = ["=/srv"])]
struct B;

/// You are helpful.
#[agent(name = "C", read = ["/srv/a"], write = ["/srv/b"])]
struct C;

fn main() {}
