use agentos_macros::tool;

/// Shouts a text.
#[tool]
async fn shout(text: &str) -> String {
    text.to_uppercase()
}

fn main() {}
