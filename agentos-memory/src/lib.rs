//! agentos-memory: the S-MMU, semantic memory for agents.
//!
//! - [`slicing`]: contextual information density from the model's attention, and the slice
//!   boundaries where it changes sharply;
//! - [`page`]: cognitive pages, the page table's entries and the importance that orders eviction;
//! - [`index`]: similarity search (embeddings and keywords) behind page faults;
//! - [`tiers`]: the L1 / L2 / L3 actors.
//!
//! The crate does not depend on burn: the model reaches it through the [`Embedder`] and
//! [`AttentionSource`] traits, which the runtime implements with the kernel.
//!
//! Slicing needs only attention probabilities (here: tokens that attend to themselves, then
//! tokens that attend to everything before them; the change of regime is a boundary):
//!
//! ```
//! use agentos_memory::slicing::{boundaries, density, slice_boundaries, AttentionSpan, SliceConfig};
//!
//! let n = 24;
//! let mut probs = vec![0f32; n * n];
//! for t in 0..n {
//!     let from = if t < 12 { t } else { 0 }; // focused, then spread
//!     for j in from..=t {
//!         probs[t * n + j] = 1.0 / (t + 1 - from) as f32;
//!     }
//! }
//! let span = AttentionSpan { n_layers: 1, n_heads: 1, n_tokens: n, context: n, start_pos: 0, probs };
//! let config = SliceConfig { min_tokens: 4, ..SliceConfig::default() };
//! let d = density(&span, &config)?;
//! let pieces: Vec<String> = (0..n).map(|i| format!(" w{i}")).collect();
//! let slices = slice_boundaries(&d, &boundaries(&pieces), &config);
//! assert!(slices.iter().any(|s| (11..=14).contains(&s.start)));
//! # Ok::<(), String>(())
//! ```

pub mod config;
pub mod error;
pub mod index;
pub mod model;
pub mod page;
pub mod slicing;
pub mod tiers;

pub use config::{MemoryConfig, Slicing};
pub use error::{MemoryError, Result};
pub use model::{AttentionSource, Embedder, TextAnalysis};
pub use page::{CognitivePage, ContentHash, PageEntry, PageId, PageView, Tier};
pub use slicing::{AttentionSpan, EntropySpan, SliceConfig};
pub use tiers::l1::{ActiveContext, L1Actor, L1Args, L1Msg, L1Stats};
pub use tiers::l2::{L2Actor, L2Args, L2Msg, L2Stats, Locate};
pub use tiers::l3::{IndexChunk, L3Actor, L3Msg, L3Store, OpenReport};
