//! What the memory system needs from a language model, as two small traits.
//!
//! The kernel implements them (through the runtime, which owns both crates), so this crate never
//! builds burn and its logic is testable without a model.

use crate::error::Result;
use crate::slicing::EntropySpan;

/// Sentence embeddings and token counts.
#[ractor::async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// One vector per text, all of the same dimension.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>>;
    /// How many tokens `text` is in the model's tokenizer.
    async fn count_tokens(&self, text: String) -> Result<usize>;
}

/// The model's attention over a text.
#[ractor::async_trait]
pub trait AttentionSource: Send + Sync + 'static {
    /// The text's tokens (as text pieces that concatenate to it) and, when `with_attention`, the
    /// entropy of every token's attention over the text before it: spans in order that together
    /// cover all the pieces.
    async fn analyze(&self, text: String, with_attention: bool) -> Result<TextAnalysis>;
}

/// A text cut into its tokens, with the entropy of their attention.
#[derive(Debug, Clone, Default)]
pub struct TextAnalysis {
    pub pieces: Vec<String>,
    pub entropy: Vec<EntropySpan>,
}
