//! The S-MMU's tiers as actors, without a model: a word-hashing embedder and a whitespace
//! "tokenizer" stand in for the kernel, so these tests check the memory logic alone (budgets,
//! page faults, eviction, demotion to disk, deduplication, restart, bad input).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentos_runtime::memory::{
    AttentionSource, Embedder, EntropySpan, L1Actor, L1Args, L1Msg, L2Actor, L2Args, L2Msg, L3Actor, L3Msg,
    MemoryConfig, MemoryError, Slicing, TextAnalysis, Tier,
};
use ractor::{Actor, ActorRef};

/// Words hashed into 64 buckets; pieces are words with their leading space.
struct WordModel {
    malformed_attention: AtomicBool,
}

impl WordModel {
    fn new() -> Arc<Self> {
        Arc::new(WordModel {
            malformed_attention: AtomicBool::new(false),
        })
    }
}

fn pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        out.push(if i == 0 { word.to_string() } else { format!(" {word}") });
    }
    out
}

#[ractor::async_trait]
impl Embedder for WordModel {
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, MemoryError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; 64];
                for w in t.split_whitespace() {
                    let h = w
                        .to_lowercase()
                        .bytes()
                        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                    v[(h % 64) as usize] += 1.0;
                }
                v
            })
            .collect())
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
            // Uniform causal attention (entropy ln(t + 1)): density is flat, so only max_tokens
            // cuts.
            let mut values: Vec<f32> = (0..n).map(|t| ((t + 1) as f32).ln()).collect();
            if self.malformed_attention.load(Ordering::Relaxed) {
                values.truncate(n / 2);
            }
            entropy.push(EntropySpan {
                n_layers: 1,
                n_heads: 1,
                n_tokens: n,
                start_pos: 0,
                values,
            });
        }
        Ok(TextAnalysis { pieces, entropy })
    }
}

struct Tiers {
    l3: ActorRef<L3Msg>,
    l2: ActorRef<L2Msg>,
    l1: ActorRef<L1Msg>,
}

impl Tiers {
    async fn start(path: &Path, config: MemoryConfig, model: Arc<WordModel>) -> Tiers {
        let (l3, _) = Actor::spawn(None, L3Actor, path.to_path_buf()).await.unwrap();
        let l3_ref = l3.clone();
        let l2_args = L2Args {
            config: config.clone(),
            l3: Arc::new(move || Some(l3_ref.clone())),
        };
        let (l2, _) = Actor::spawn(None, L2Actor, l2_args).await.unwrap();
        let l2_ref = l2.clone();
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

    async fn stop(self) {
        self.l1.stop_and_wait(None, None).await.unwrap();
        self.l2.stop_and_wait(None, None).await.unwrap();
        self.l3.stop_and_wait(None, None).await.unwrap();
    }

    async fn ingest(&self, text: &str) -> Result<Vec<agentos_runtime::PageId>, MemoryError> {
        let text = text.to_string();
        ractor::call!(self.l1, |reply| L1Msg::Ingest { text, reply }).unwrap()
    }

    async fn assemble(&self, query: &str, reserved: usize) -> agentos_runtime::ActiveContext {
        let query = query.to_string();
        ractor::call!(self.l1, |reply| L1Msg::Assemble {
            query,
            reserved_tokens: reserved,
            reply
        })
        .unwrap()
        .unwrap()
    }
}

fn small_config() -> MemoryConfig {
    let mut config = MemoryConfig {
        l1_budget_tokens: 64,
        slicing: Slicing::Fixed(8),
        ..MemoryConfig::default()
    };
    config.slice.max_tokens = 16;
    config
}

/// A filler sentence of `words` words about topic `i`.
fn filler(i: usize) -> String {
    format!("Small talk number {i} about weather and lunch and the traffic on the road today")
}

#[tokio::test]
async fn the_window_never_exceeds_its_budget_and_faults_relevant_pages_back() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = Tiers::start(&dir.path().join("kb.redb"), small_config(), WordModel::new()).await;

    tiers
        .ingest("The launch code of project Falcon is 7731 remember it")
        .await
        .unwrap();
    for i in 0..12 {
        let context = tiers.assemble(&format!("more small talk {i}"), 10).await;
        assert!(context.tokens <= 64 - 10, "turn {i}: {} tokens", context.tokens);
        assert!(context.tokens <= context.page_budget);
        tiers.ingest(&filler(i)).await.unwrap();
    }
    let stats = ractor::call!(tiers.l1, L1Msg::Stats).unwrap();
    assert!(stats.tokens_max <= 64, "{stats:?}");
    assert!(stats.context_full_interrupts > 0 && stats.evictions > 0, "{stats:?}");

    // The fact was evicted long ago; a question about it pages it back in.
    let before = ractor::call!(tiers.l1, L1Msg::Stats).unwrap().page_faults;
    let context = tiers.assemble("What is the launch code of project Falcon?", 10).await;
    assert!(
        context.pages.iter().any(|p| p.text.contains("7731")),
        "the fact's page was faulted in: {:?}",
        context.pages.iter().map(|p| &p.text).collect::<Vec<_>>()
    );
    assert!(context.faults >= 1);
    assert!(ractor::call!(tiers.l1, L1Msg::Stats).unwrap().page_faults > before);
    assert!(context.tokens <= 54);
    tiers.stop().await;
}

#[tokio::test]
async fn l2_overflow_demotes_to_disk_and_a_fault_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = MemoryConfig {
        l2_capacity_pages: 3,
        ..small_config()
    };
    let tiers = Tiers::start(&dir.path().join("kb.redb"), config, WordModel::new()).await;
    tiers
        .ingest("Grandmother's secret ingredient is cardamom")
        .await
        .unwrap();
    for i in 0..10 {
        tiers.assemble("chat", 0).await;
        // Distinct words every turn, so nothing deduplicates.
        let text: Vec<String> = (0..12).map(|w| format!("word{i}x{w}")).collect();
        tiers.ingest(&text.join(" ")).await.unwrap();
    }
    let stats = ractor::call!(tiers.l2, L2Msg::Stats).unwrap();
    assert!(stats.in_l2 <= 3, "{stats:?}");
    assert!(stats.in_l3_only > 0 && stats.demotions_to_l3 > 0, "{stats:?}");
    assert_eq!(stats.pages, stats.in_l1 + stats.in_l2 + stats.in_l3_only);
    let query = "secret ingredient".to_string();
    let found = ractor::call!(tiers.l1, |reply| L1Msg::Recall { query, k: 1, reply })
        .unwrap()
        .unwrap();
    assert_eq!(found[0].tier, Tier::L3, "the old page is on disk only: {found:?}");

    let context = tiers.assemble("What is grandmother's secret ingredient?", 0).await;
    assert!(context.pages.iter().any(|p| p.text.contains("cardamom")));
    let after = ractor::call!(tiers.l2, L2Msg::Stats).unwrap();
    assert!(after.faults_from_l3 > 0, "the page came back from disk: {after:?}");
    tiers.stop().await;
}

#[tokio::test]
async fn duplicate_text_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = Tiers::start(&dir.path().join("kb.redb"), small_config(), WordModel::new()).await;
    let first = tiers.ingest("The same sentence said twice").await.unwrap();
    let second = tiers.ingest("The same sentence said twice").await.unwrap();
    assert_eq!(first, second);
    let stats = ractor::call!(tiers.l2, L2Msg::Stats).unwrap();
    assert_eq!(stats.pages, first.len());
    assert!(stats.duplicates >= 1);
    tiers.stop().await;
}

#[tokio::test]
async fn pages_and_the_window_survive_a_restart_of_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kb.redb");
    let tiers = Tiers::start(&path, small_config(), WordModel::new()).await;
    let ids = tiers.ingest("Durable fact: the vault opens with 2468").await.unwrap();
    tiers.ingest(&filler(1)).await.unwrap();
    let window: Vec<String> = tiers
        .assemble("anything", 0)
        .await
        .pages
        .into_iter()
        .map(|p| p.text)
        .collect();
    tiers.stop().await;

    let tiers = Tiers::start(&path, small_config(), WordModel::new()).await;
    let stats = ractor::call!(tiers.l1, L1Msg::Stats).unwrap();
    assert_eq!(stats.pages, window.len(), "the L1 window was reloaded");
    let query = "vault opens".to_string();
    let found = ractor::call!(tiers.l1, |reply| L1Msg::Recall { query, k: 2, reply })
        .unwrap()
        .unwrap();
    assert_eq!(found[0].id, ids[0]);
    assert!(found[0].text.contains("2468"));
    // New pages get new ids (no reuse of ids already on disk).
    let more = tiers.ingest("A later note about something else").await.unwrap();
    assert!(more.iter().all(|id| id.0 > ids.iter().map(|i| i.0).max().unwrap()));
    tiers.stop().await;
}

#[tokio::test]
async fn malformed_attention_is_an_error_and_the_tier_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let model = WordModel::new();
    let config = MemoryConfig {
        slicing: Slicing::Attention,
        ..small_config()
    };
    let tiers = Tiers::start(&dir.path().join("kb.redb"), config, model.clone()).await;
    tiers.ingest("A well formed turn of text").await.unwrap();
    model.malformed_attention.store(true, Ordering::Relaxed);
    let err = tiers
        .ingest("This one comes back with broken attention")
        .await
        .unwrap_err();
    assert!(
        matches!(err, MemoryError::Kernel { .. }) && err.to_string().contains("does not match"),
        "{err}"
    );
    model.malformed_attention.store(false, Ordering::Relaxed);
    assert!(!tiers.ingest("And the next one works again").await.unwrap().is_empty());
    tiers.stop().await;
}

#[tokio::test]
async fn a_bad_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.l1_budget_tokens = 4; // smaller than one page
    assert!(config.validate().is_err());
    let l3 = Actor::spawn(None, L3Actor, dir.path().join("kb.redb")).await.unwrap().0;
    let l3_ref = l3.clone();
    let (l2, _) = Actor::spawn(
        None,
        L2Actor,
        L2Args {
            config: config.clone(),
            l3: Arc::new(move || Some(l3_ref.clone())),
        },
    )
    .await
    .unwrap();
    let l2_ref = l2.clone();
    let model = WordModel::new();
    let started = Actor::spawn(
        None,
        L1Actor,
        L1Args {
            owner: "a".into(),
            config,
            l2: Arc::new(move || Some(l2_ref.clone())),
            embedder: model.clone(),
            attention: model,
        },
    )
    .await;
    assert!(started.is_err());
    l2.stop(None);
    l3.stop(None);
}
