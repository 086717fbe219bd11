//! The three tiers started for tests, with a stand-in model: words hashed into 64 buckets as the
//! embedding, words with their leading space as the tokens, uniform causal attention.

use std::path::Path;
use std::sync::Arc;

use ractor::{Actor, ActorRef};

use crate::config::MemoryConfig;
use crate::error::MemoryError;
use crate::model::{AttentionSource, Embedder, TextAnalysis};
use crate::slicing::EntropySpan;
use crate::tiers::l1::{L1Actor, L1Args, L1Msg};
use crate::tiers::l2::{L2Actor, L2Args, L2Msg};
use crate::tiers::l3::{L3Actor, L3Msg};

pub(crate) struct WordModel;

pub(crate) fn pieces(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .map(|(i, w)| if i == 0 { w.to_string() } else { format!(" {w}") })
        .collect()
}

/// The stand-in embedding: word counts in 64 hashed buckets.
pub(crate) fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 64];
    for w in text.split_whitespace() {
        let h = w
            .to_lowercase()
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        v[(h % 64) as usize] += 1.0;
    }
    v
}

#[ractor::async_trait]
impl Embedder for WordModel {
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, MemoryError> {
        Ok(texts.iter().map(|t| embed(t)).collect())
    }

    async fn count_tokens(&self, text: String) -> Result<usize, MemoryError> {
        Ok(pieces(&text).len())
    }
}

#[ractor::async_trait]
impl AttentionSource for WordModel {
    async fn analyze(&self, text: String, with_attention: bool) -> Result<TextAnalysis, MemoryError> {
        let pieces = pieces(&text);
        let n = pieces.len();
        let mut entropy = Vec::new();
        if with_attention {
            // Uniform causal attention: token t's entropy is ln(t + 1).
            entropy.push(EntropySpan {
                n_layers: 1,
                n_heads: 1,
                n_tokens: n,
                start_pos: 0,
                values: (0..n).map(|t| ((t + 1) as f32).ln()).collect(),
            });
        }
        Ok(TextAnalysis { pieces, entropy })
    }
}

pub(crate) struct Tiers {
    pub l3: ActorRef<L3Msg>,
    pub l2: ActorRef<L2Msg>,
    pub l1: ActorRef<L1Msg>,
}

impl Tiers {
    pub async fn start(path: &Path, config: MemoryConfig) -> Tiers {
        let (l3, _) = Actor::spawn(None, L3Actor, path.to_path_buf()).await.unwrap();
        let l3_ref = l3.clone();
        let l2_args = L2Args {
            config: config.clone(),
            l3: Arc::new(move || Some(l3_ref.clone())),
        };
        let (l2, _) = Actor::spawn(None, L2Actor, l2_args).await.unwrap();
        let l2_ref = l2.clone();
        let model = Arc::new(WordModel);
        let l1_args = L1Args {
            owner: "agent".into(),
            config,
            l2: Arc::new(move || Some(l2_ref.clone())),
            embedder: model.clone(),
            attention: model,
        };
        let (l1, _) = Actor::spawn(None, L1Actor, l1_args).await.unwrap();
        Tiers { l3, l2, l1 }
    }

    pub async fn stop(self) {
        self.l1.stop_and_wait(None, None).await.unwrap();
        self.l2.stop_and_wait(None, None).await.unwrap();
        self.l3.stop_and_wait(None, None).await.unwrap();
    }
}
