//! L2 at scale: start-up over a large store and search latency, through the real L3 and L2
//! actors, and the recall of the (approximate) search against the exact scan. Used by the
//! `l2_scale` and `memory_bench` examples:
//!
//! ```text
//! cargo run --release --example l2_scale -- --pages 100000
//!     [--queries 300] [--dim 576] [--k 4] [--l2-capacity 4096] [--owners 1]
//!     [--topic-pages 100] [--vague]
//! ```
//! Writes `pages` synthetic pages into a fresh L3 store in a temporary directory (embeddings: a
//! large direction common to all, plus a subject direction, plus one of the subject's 20 topic
//! directions (`topic-pages` pages per topic), plus noise; texts of about 30 words from the
//! topic's words, common words and stopwords, and a number), the newest
//! `l2-capacity` in L2 and the rest in L3, as a long session leaves them. Then it starts L3 and L2
//! and times until L2 answers, asks `queries` questions (a few words of a page's text, and an
//! embedding of its topic near the page; with `--vague`, the centre of a topic and no content
//! word, the hardest case for the approximate search) through `L2Msg::Search`, and checks each
//! answer against
//! `PageIndex::search_exact` over the same pages. Prints one JSON object: `l2_pages`,
//! `l2_start_seconds`, `l2_search_p50_ms`, `l2_search_p99_ms`, `recall_at_k`, `peak_rss_bytes`
//! (the process's peak from L2's start on), and the details.
//!
//! [`measure`] is the whole measurement, for another program to call.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agentos_runtime::memory::index::PageIndex;
use agentos_runtime::memory::tiers::l2::Query;
use agentos_runtime::memory::{
    CognitivePage, ContentHash, L2Actor, L2Args, L2Msg, L3Actor, L3Store, MemoryConfig, PageEntry, PageId, Tier,
};
use ractor::Actor;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ScaleSpec {
    pub pages: usize,
    pub queries: usize,
    pub dim: usize,
    pub k: usize,
    pub l2_capacity: usize,
    pub owners: usize,
    /// Pages per topic.
    pub topic_pages: usize,
    /// Queries at a topic's centre, with no content word.
    pub vague: bool,
}

impl Default for ScaleSpec {
    fn default() -> Self {
        ScaleSpec {
            pages: 100_000,
            queries: 300,
            dim: 576,
            k: 4,
            l2_capacity: MemoryConfig::default().l2_capacity_pages,
            owners: 1,
            topic_pages: 100,
            vague: false,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub l2_pages: usize,
    pub l2_resident_bodies: usize,
    pub write_seconds: f64,
    pub store_bytes: u64,
    pub l2_start_seconds: f64,
    pub l2_search_p50_ms: f64,
    pub l2_search_p99_ms: f64,
    pub l2_search_max_ms: f64,
    /// Of the exact top-k pages, the fraction the search returned.
    pub recall_at_k: f64,
    /// Queries whose best page was the exact best page.
    pub top1_agreement: f64,
    pub exact_search_p50_ms: f64,
    /// Peak resident size of the process from L2's start on (None where /proc is missing).
    pub peak_rss_bytes: Option<u64>,
}

impl ScaleReport {
    pub fn to_json(&self, spec: &ScaleSpec) -> String {
        let rss = self.peak_rss_bytes.map_or("null".to_string(), |b| b.to_string());
        format!(
            concat!(
                "{{\"l2_pages\":{},\"l2_start_seconds\":{:.3},\"l2_search_p50_ms\":{:.3},",
                "\"l2_search_p99_ms\":{:.3},\"l2_search_max_ms\":{:.3},\"recall_at_k\":{:.4},\"k\":{},",
                "\"top1_agreement\":{:.4},\"exact_search_p50_ms\":{:.3},\"queries\":{},\"dim\":{},",
                "\"owners\":{},\"topic_pages\":{},\"vague_queries\":{},\"l2_capacity_pages\":{},",
                "\"l2_resident_bodies\":{},\"peak_rss_bytes\":{},\"store_bytes\":{},\"write_seconds\":{:.3}}}"
            ),
            self.l2_pages,
            self.l2_start_seconds,
            self.l2_search_p50_ms,
            self.l2_search_p99_ms,
            self.l2_search_max_ms,
            self.recall_at_k,
            spec.k,
            self.top1_agreement,
            self.exact_search_p50_ms,
            spec.queries,
            spec.dim,
            spec.owners,
            spec.topic_pages,
            spec.vague,
            spec.l2_capacity,
            self.l2_resident_bodies,
            rss,
            self.store_bytes,
            self.write_seconds,
        )
    }
}

/// Writes the synthetic store under `dir`, starts L3 and L2 on it, and measures (see the module
/// docs).
pub async fn measure(spec: &ScaleSpec, dir: &Path) -> Result<ScaleReport, Error> {
    let corpus = Corpus::new(spec, 0xA6E7_7055);
    let path = dir.join("l2_scale.redb");

    // 1. The store, in transactions of 1,000 pages.
    let started = Instant::now();
    {
        let (store, _) = L3Store::open(&path)?;
        let first_l2 = spec.pages.saturating_sub(spec.l2_capacity);
        for batch in (0..spec.pages).collect::<Vec<_>>().chunks(1000) {
            let pages: Vec<CognitivePage> = batch.iter().map(|&i| corpus.page(i)).collect();
            let entries: Vec<PageEntry> = pages
                .iter()
                .zip(batch)
                .map(|(p, &i)| {
                    let mut e = PageEntry::new(p, if i >= first_l2 { Tier::L2 } else { Tier::L3 });
                    e.last_access_turn = p.created_turn;
                    e
                })
                .collect();
            store.write_pages(&pages, &entries)?;
        }
    }
    let write_seconds = started.elapsed().as_secs_f64();
    let store_bytes = std::fs::metadata(&path)?.len();
    reset_peak_rss();

    // 2. Start-up: until L2 answers.
    let config = MemoryConfig {
        l2_capacity_pages: spec.l2_capacity,
        ..MemoryConfig::default()
    };
    let started = Instant::now();
    let (l3, _) = Actor::spawn(None, L3Actor, path.clone()).await?;
    let l3_ref = l3.clone();
    let args = L2Args {
        config: config.clone(),
        l3: Arc::new(move || Some(l3_ref.clone())),
    };
    let (l2, _) = Actor::spawn(None, L2Actor, args).await?;
    let stats = ractor::call!(l2, L2Msg::Stats)?;
    let l2_start_seconds = started.elapsed().as_secs_f64();

    // 3. Searches through the actor.
    let queries: Vec<Query> = (0..spec.queries + WARMUP)
        .map(|q| corpus.query(q, spec.k, spec.vague))
        .collect();
    let mut latencies = Vec::with_capacity(spec.queries);
    let mut answers = Vec::with_capacity(spec.queries);
    for (i, query) in queries.iter().enumerate() {
        let query = query.clone();
        let started = Instant::now();
        let hits = ractor::call!(l2, |reply| L2Msg::Search { query, reply })??;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if i >= WARMUP {
            latencies.push(ms);
            answers.push(hits.iter().map(|(p, _, _)| p.id).collect::<Vec<_>>());
        }
    }
    let peak_rss_bytes = peak_rss_bytes();
    l2.stop_and_wait(None, None).await?;
    l3.stop_and_wait(None, None).await?;

    // 4. The exact answers, from an index of the same pages inserted in the same order.
    let mut reference = PageIndex::new(config.similarity_weight);
    for i in 0..spec.pages {
        let p = corpus.page(i);
        reference.insert(p.id, &p.owner, &p.text, p.embedding);
    }
    let (mut found, mut wanted, mut top1) = (0, 0, 0);
    let mut exact_latencies = Vec::new();
    for (query, got) in queries[WARMUP..].iter().zip(&answers) {
        let started = Instant::now();
        let exact = reference.search_exact(
            &query.embedding,
            &query.text,
            query.owner.as_deref(),
            &HashSet::new(),
            query.k,
            query.min_relevance,
        );
        exact_latencies.push(started.elapsed().as_secs_f64() * 1e3);
        wanted += exact.len();
        found += exact.iter().filter(|h| got.contains(&h.id)).count();
        top1 += usize::from(exact.first().map(|h| h.id) == got.first().copied());
    }

    latencies.sort_by(f64::total_cmp);
    exact_latencies.sort_by(f64::total_cmp);
    Ok(ScaleReport {
        l2_pages: stats.pages,
        l2_resident_bodies: stats.resident_bodies,
        write_seconds,
        store_bytes,
        l2_start_seconds,
        l2_search_p50_ms: percentile(&latencies, 0.50),
        l2_search_p99_ms: percentile(&latencies, 0.99),
        l2_search_max_ms: latencies.last().copied().unwrap_or(0.0),
        recall_at_k: found as f64 / wanted.max(1) as f64,
        top1_agreement: top1 as f64 / answers.len().max(1) as f64,
        exact_search_p50_ms: percentile(&exact_latencies, 0.50),
        peak_rss_bytes,
    })
}

/// Queries run first and not counted (caches, allocator).
const WARMUP: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Starts the process's peak resident size afresh (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `VmHWM` of `/proc/self/status`, in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The synthetic pages, each a function of its number (so nothing is held in memory).
struct Corpus {
    pages: usize,
    dim: usize,
    owners: usize,
    seed: u64,
    common: Vec<f32>,
    /// Each topic's direction: its subject's plus its own.
    topics: Vec<Vec<f32>>,
    /// Words of each topic, and words of every topic.
    topic_words: Vec<Vec<String>>,
    vocabulary: Vec<String>,
}

const STOPWORDS: &[&str] = &[
    "the", "is", "of", "and", "a", "to", "in", "my", "it", "that", "on", "was", "for",
];

impl Corpus {
    fn new(spec: &ScaleSpec, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let n_topics = (spec.pages / spec.topic_pages.max(1)).max(1);
        // A common direction much larger than what tells pages apart, as in a decoder's
        // mean-pooled states; subjects of 20 topics each, so most near pages are only near.
        let common: Vec<f32> = (0..spec.dim).map(|_| rng.normal()).collect();
        let subjects: Vec<Vec<f32>> = (0..n_topics.div_ceil(20))
            .map(|_| (0..spec.dim).map(|_| 0.3 * rng.normal()).collect())
            .collect();
        let topics: Vec<Vec<f32>> = (0..n_topics)
            .map(|t| {
                (0..spec.dim)
                    .map(|d| subjects[t / 20][d] + 0.25 * rng.normal())
                    .collect()
            })
            .collect();
        let vocabulary: Vec<String> = (0..20_000).map(|_| rng.word()).collect();
        let topic_words = (0..n_topics)
            .map(|_| {
                (0..24)
                    .map(|_| vocabulary[rng.below(vocabulary.len())].clone())
                    .collect()
            })
            .collect();
        Corpus {
            pages: spec.pages,
            dim: spec.dim,
            owners: spec.owners.max(1),
            seed,
            common,
            topics,
            topic_words,
            vocabulary,
        }
    }

    fn topic_of(&self, i: usize) -> usize {
        Rng::new(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9)).below(self.topics.len())
    }

    fn page(&self, i: usize) -> CognitivePage {
        let mut rng = Rng::new(self.seed ^ (i as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let topic = self.topic_of(i);
        let mut words = Vec::with_capacity(32);
        for _ in 0..30 {
            let w = match rng.below(10) {
                0..=4 => self.topic_words[topic][rng.below(24)].as_str(),
                5..=7 => self.vocabulary[rng.zipf(self.vocabulary.len())].as_str(),
                _ => STOPWORDS[rng.below(STOPWORDS.len())],
            };
            words.push(w.to_string());
        }
        words.push(format!("{}", rng.below(100_000)));
        let text = words.join(" ");
        let embedding: Vec<f32> = (0..self.dim)
            .map(|d| self.common[d] + self.topics[topic][d] + 0.25 * rng.normal())
            .collect();
        let owner = format!("agent{}", i % self.owners);
        let turn = (i / 10) as u64 + 1;
        CognitivePage {
            id: PageId(i as u64 + 1),
            hash: ContentHash::of(&owner, &text),
            owner,
            tokens: 40,
            span: (i as u64 * 40, i as u64 * 40 + 40),
            density: 0.5,
            created_turn: turn,
            embedding,
            text,
        }
    }

    /// A question about a random page: a few of its words among other words, and an embedding
    /// of its topic near it; or, `vague`, the centre of its topic and only stopwords.
    fn query(&self, q: usize, k: usize, vague: bool) -> Query {
        let mut rng = Rng::new(self.seed ^ 0x5151 ^ (q as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let target = self.page(rng.below(self.pages));
        let words: Vec<&str> = target.text.split(' ').collect();
        let mut text: Vec<&str> = vec!["what", "is", "the"];
        for _ in 0..4 {
            text.push(words[rng.below(words.len())]);
        }
        text.push(self.vocabulary[rng.zipf(self.vocabulary.len())].as_str());
        let topic = self.topic_of(target.id.0 as usize - 1);
        let own = if vague { 0.0 } else { 0.5 };
        let embedding = (0..self.dim)
            .map(|d| {
                let noise = target.embedding[d] - self.common[d] - self.topics[topic][d];
                self.common[d] + self.topics[topic][d] + own * noise + 0.2 * rng.normal()
            })
            .collect();
        let text = if vague {
            "what was it about".to_string()
        } else {
            text.join(" ") + "?"
        };
        Query {
            owner: Some(target.owner.clone()),
            text,
            embedding,
            k,
            min_relevance: 0.0,
            turn: 1_000_000,
            fault: false,
        }
    }
}

/// xorshift64* with the helpers the corpus needs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    /// Rank of a Zipf-like draw over `n` items (item 0 most frequent).
    fn zipf(&mut self, n: usize) -> usize {
        ((n as f64).powf(self.uniform()) as usize).saturating_sub(1).min(n - 1)
    }

    /// A pronounceable made-up word of 2 to 4 syllables.
    fn word(&mut self) -> String {
        const ONSETS: &[&str] = &[
            "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "st",
        ];
        const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou"];
        (0..2 + self.below(3))
            .map(|_| {
                format!(
                    "{}{}",
                    ONSETS[self.below(ONSETS.len())],
                    VOWELS[self.below(VOWELS.len())]
                )
            })
            .collect()
    }
}
