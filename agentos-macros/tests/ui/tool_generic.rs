use agentos_macros::tool;

/// Echoes a value.
#[tool]
async fn echo<T>(value: T) -> T {
    value
}

fn main() {}
