//! The similarity index behind page faults: embeddings plus keywords.
//!
//! Relevance of a page to a query is `alpha * cos⁺ + (1 - alpha) * keywords`:
//! - `cos⁺` is the cosine of the query and page embeddings after subtracting the mean embedding
//!   of the index (mean-pooled states of a decoder share a large common direction, which makes
//!   raw cosines all close to 1), clamped at 0. The mean is that of every page indexed at the
//!   time of the query (a running sum);
//! - `keywords` is the idf-weighted fraction of the query's content words found in the page, a
//!   word counting as found when the page holds it or a word sharing its stem ("name" / "named"),
//!   so names and numbers (what facts hinge on, and what a small model's embedding blurs) count.
//!
//! Embeddings are kept in half precision (`index/f16.rs`): relevances differ from `f32`
//! arithmetic by about 10⁻³.
//!
//! # Search: two stages, approximate above [`CANDIDATES`] pages
//! 1. Keywords, exactly: each query word's postings, and those of the words sharing its stem
//!    (found by range in the sorted vocabulary), give the keyword score of every page with one.
//! 2. Candidates: when the pages searched (the owner's, less the excluded) are at most
//!    [`CANDIDATES`], all of them, and the search is exact. Otherwise every page searched gets
//!    `alpha * estimate⁺ + (1 - alpha) * keywords`, with the cosine estimated in a 64-dimension
//!    random projection (`index/vectors.rs`: one 64-value dot product per page, against norms
//!    precomputed for a snapshot of the mean that is retaken when the index has grown by a
//!    quarter), and the best [`CANDIDATES`] are kept.
//! 3. The candidates are scored exactly, filtered by `min_relevance`, and the best `k` returned.
//!
//! Above [`CANDIDATES`] pages the search is therefore approximate: a page whose estimate ranks
//! outside the candidates is missed even if its exact relevance would put it in the top `k`. That
//! happens when more than [`CANDIDATES`] pages are all about as near to the query as its best
//! ones (a cluster of near-duplicates, and a query with no keyword to tell them apart); a page
//! that a keyword or a clearly closer embedding sets apart is found. `cargo run --release -p
//! agentos-memory --example l2_scale -- --pages 100000` measures recall@k against
//! [`PageIndex::search_exact`] (the same scores over every page) and the latency.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use crate::page::PageId;

mod f16;
mod keywords;
mod vectors;

use keywords::Keywords;
use vectors::{Slots, Vectors};

/// Pages scored exactly per search (see the module docs). Rescoring them costs about 0.5 ms at
/// 576 dimensions. In the hardest case `l2_scale` makes (`--pages 100000 --topic-pages 1000
/// --vague`: queries at the centre of a cluster of 1,000 similar pages, with no keyword) 512
/// candidates found 83 % of the exact top 4, 1,024 found 99.4 %.
pub const CANDIDATES: usize = 1024;

/// Words that carry no topic: NLTK's English stopword list (`nltk.corpus.stopwords.words("english")`,
/// the 179 words of nltk_data's `corpora/stopwords/english`), verbatim and in its order, nothing
/// added. Entries with an apostrophe never match a word of [`content_words`] (it splits at the
/// apostrophe, and the list has the pieces, "don", "t", on their own); they are kept so that the
/// list stays the standard one.
#[rustfmt::skip]
const STOPWORDS: &[&str] = &[
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've", "you'll", "you'd", "your",
    "yours", "yourself", "yourselves", "he", "him", "his", "himself", "she", "she's", "her", "hers", "herself", "it",
    "it's", "its", "itself", "they", "them", "their", "theirs", "themselves", "what", "which", "who", "whom", "this",
    "that", "that'll", "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has",
    "had", "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as",
    "until", "while", "of", "at", "by", "for", "with", "about", "against", "between", "into", "through", "during",
    "before", "after", "above", "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under",
    "again", "further", "then", "once", "here", "there", "when", "where", "why", "how", "all", "any", "both", "each",
    "few", "more", "most", "other", "some", "such", "no", "nor", "not", "only", "own", "same", "so", "than", "too",
    "very", "s", "t", "can", "will", "just", "don", "don't", "should", "should've", "now", "d", "ll", "m", "o", "re",
    "ve", "y", "ain", "aren", "aren't", "couldn", "couldn't", "didn", "didn't", "doesn", "doesn't", "hadn", "hadn't",
    "hasn", "hasn't", "haven", "haven't", "isn", "isn't", "ma", "mightn", "mightn't", "mustn", "mustn't", "needn",
    "needn't", "shan", "shan't", "shouldn", "shouldn't", "wasn", "wasn't", "weren", "weren't", "won", "won't",
    "wouldn", "wouldn't",
];

static STOPWORD_SET: LazyLock<HashSet<&'static str>> = LazyLock::new(|| STOPWORDS.iter().copied().collect());

/// Lower-cased content words of a text (alphanumeric runs of two or more characters, stopwords
/// removed).
pub fn content_words(text: &str) -> HashSet<String> {
    words(text).into_iter().filter(|w| !is_stopword(w)).collect()
}

/// Every distinct lower-cased word of a text (alphanumeric runs of two or more characters),
/// stopwords included, sorted: what the store keeps of a page's text for its index record, so a
/// changed stopword list needs no migration of the store.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(|w| w.to_lowercase())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn is_stopword(word: &str) -> bool {
    STOPWORD_SET.contains(word)
}

/// Half-precision bits of an embedding, as the index and the store keep it.
pub(crate) fn embedding_to_f16(embedding: &[f32]) -> Vec<u16> {
    embedding.iter().map(|&x| f16::from_f32(x)).collect()
}

/// Embeddings and content words of every page, for similarity search (see the module docs).
pub struct PageIndex {
    /// Weight of the embedding cosine against the keyword score.
    alpha: f32,
    /// Pages in the order they were inserted: a page's slot is its position here.
    ids: Vec<PageId>,
    slots: std::collections::HashMap<PageId, u32>,
    owners: std::collections::HashMap<String, u32>,
    /// Each owner's slots, ascending.
    owner_slots: Vec<Vec<u32>>,
    keywords: Keywords,
    vectors: Vectors,
    /// Buffers of one search, kept so a search allocates nothing per page.
    scratch: Mutex<Scratch>,
}

#[derive(Default)]
struct Scratch {
    /// Keyword score (sum of idfs) per slot, and the query word that last added to it.
    keyword: Vec<f32>,
    stamp: Vec<u32>,
    /// Slots whose `keyword` is set.
    touched: Vec<u32>,
    /// The estimated cosine of each page searched.
    estimates: Vec<f32>,
    /// (estimate, slot) of the candidates kept so far.
    candidates: Vec<(f32, u32)>,
}

/// A search hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: PageId,
    pub relevance: f32,
}

impl PageIndex {
    pub fn new(alpha: f32) -> Self {
        PageIndex {
            alpha: alpha.clamp(0.0, 1.0),
            ids: Vec::new(),
            slots: Default::default(),
            owners: Default::default(),
            owner_slots: Vec::new(),
            keywords: Keywords::new(),
            vectors: Vectors::new(),
            scratch: Mutex::new(Scratch::default()),
        }
    }

    /// How many pages are indexed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is indexed.
    pub fn contains(&self, id: PageId) -> bool {
        self.slots.contains_key(&id)
    }

    /// Makes room for `pages` more pages (the store knows how many it holds).
    pub(crate) fn reserve(&mut self, pages: usize) {
        self.ids.reserve(pages);
        self.slots.reserve(pages);
        self.vectors.reserve(pages);
    }

    /// Indexes a page (once: a second insert of the same id changes nothing).
    pub fn insert(&mut self, id: PageId, owner: &str, text: &str, embedding: Vec<f32>) {
        let words = words(text);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        self.insert_words(id, owner, &words, &embedding_to_f16(&embedding));
    }

    /// Indexes a page from what its store record keeps: every word of [`words`] and the
    /// embedding in half precision ([`embedding_to_f16`]).
    pub(crate) fn insert_words(&mut self, id: PageId, owner: &str, words: &[&str], embedding: &[u16]) {
        if self.slots.contains_key(&id) {
            return;
        }
        let slot = self.ids.len() as u32;
        self.ids.push(id);
        self.slots.insert(id, slot);
        let owner = match self.owners.get(owner) {
            Some(&o) => o,
            None => {
                let o = self.owner_slots.len() as u32;
                self.owners.insert(owner.to_string(), o);
                self.owner_slots.push(Vec::new());
                o
            }
        };
        self.owner_slots[owner as usize].push(slot);
        self.keywords
            .insert(slot, words.iter().copied().filter(|w| !is_stopword(w)));
        self.vectors.push(embedding);
    }

    /// The `k` most relevant pages of `owner` (all owners when `None`), excluding `exclude`,
    /// with relevance at least `min_relevance`, best first (ties by id). Approximate above
    /// [`CANDIDATES`] pages (see the module docs).
    pub fn search(
        &self,
        query_embedding: &[f32],
        query_text: &str,
        owner: Option<&str>,
        exclude: &HashSet<PageId>,
        k: usize,
        min_relevance: f32,
    ) -> Vec<Hit> {
        self.search_among(
            query_embedding,
            query_text,
            owner,
            exclude,
            k,
            min_relevance,
            CANDIDATES,
        )
    }

    /// [`PageIndex::search`] with every page scored exactly: `pages * dim` work per query, the
    /// reference that the approximate search is measured against.
    pub fn search_exact(
        &self,
        query_embedding: &[f32],
        query_text: &str,
        owner: Option<&str>,
        exclude: &HashSet<PageId>,
        k: usize,
        min_relevance: f32,
    ) -> Vec<Hit> {
        self.search_among(
            query_embedding,
            query_text,
            owner,
            exclude,
            k,
            min_relevance,
            usize::MAX,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn search_among(
        &self,
        query_embedding: &[f32],
        query_text: &str,
        owner: Option<&str>,
        exclude: &HashSet<PageId>,
        k: usize,
        min_relevance: f32,
        candidates: usize,
    ) -> Vec<Hit> {
        if k == 0 || self.ids.is_empty() {
            return Vec::new();
        }
        let searched: Option<&[u32]> = match owner {
            None => None,
            Some(o) => match self.owners.get(o) {
                Some(&o) => Some(&self.owner_slots[o as usize]),
                None => return Vec::new(),
            },
        };
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let scratch = &mut *guard;
        scratch.clear();
        let n = self.ids.len();
        if scratch.keyword.len() < n {
            scratch.keyword.resize(n, 0.0);
            scratch.stamp.resize(n, 0);
        }

        // 1. Keywords: idf sums per page, over the query words the page matches.
        let mut query_words: Vec<String> = content_words(query_text).into_iter().collect();
        query_words.sort_unstable();
        let idf = |w: &str| (1.0 + n as f32 / (1.0 + self.keywords.document_frequency(w) as f32)).ln();
        let total: f32 = query_words.iter().map(|w| idf(w)).sum();
        if total > 0.0 {
            for (i, w) in query_words.iter().enumerate() {
                let (weight, stamp) = (idf(w), i as u32 + 1);
                self.keywords.for_each_match(w, |slots| {
                    for &s in slots {
                        let s = s as usize;
                        if scratch.stamp[s] != stamp {
                            if scratch.stamp[s] == 0 {
                                scratch.touched.push(s as u32);
                            }
                            scratch.stamp[s] = stamp;
                            scratch.keyword[s] += weight;
                        }
                    }
                });
            }
        }
        let keyword = |scratch: &Scratch, s: usize| if total > 0.0 { scratch.keyword[s] / total } else { 0.0 };

        // 2. Candidates.
        let query = self.vectors.query(query_embedding);
        let alpha = self.alpha;
        let eligible = |s: u32| exclude.is_empty() || !exclude.contains(&self.ids[s as usize]);
        let (slots, searched_len) = match searched {
            Some(list) => (Slots::Some(list), list.len()),
            None => (Slots::All, n),
        };
        if searched_len <= candidates {
            match slots {
                Slots::All => scratch
                    .candidates
                    .extend((0..n as u32).filter(|&s| eligible(s)).map(|s| (0.0, s))),
                Slots::Some(list) => scratch
                    .candidates
                    .extend(list.iter().copied().filter(|&s| eligible(s)).map(|s| (0.0, s))),
            }
        } else {
            self.vectors.scan(&query, slots, &mut scratch.estimates);
            let keyword_weight = if total > 0.0 { (1.0 - alpha) / total } else { 0.0 };
            let mut floor = f32::NEG_INFINITY;
            for (i, &estimate) in scratch.estimates.iter().enumerate() {
                let s = match slots {
                    Slots::All => i as u32,
                    Slots::Some(list) => list[i],
                };
                let estimate = alpha * estimate.max(0.0) + keyword_weight * scratch.keyword[s as usize];
                if estimate > floor && eligible(s) {
                    scratch.candidates.push((estimate, s));
                    if scratch.candidates.len() == 2 * candidates {
                        floor = keep_best(&mut scratch.candidates, candidates);
                    }
                }
            }
            keep_best(&mut scratch.candidates, candidates);
        }

        // 3. Exact scores of the candidates.
        let mut hits: Vec<Hit> = scratch
            .candidates
            .iter()
            .map(|&(_, s)| Hit {
                id: self.ids[s as usize],
                relevance: alpha * self.vectors.exact(&query, s as usize).max(0.0)
                    + (1.0 - alpha) * keyword(scratch, s as usize),
            })
            .filter(|h| h.relevance >= min_relevance)
            .collect();
        hits.sort_by(|a, b| b.relevance.total_cmp(&a.relevance).then(a.id.cmp(&b.id)));
        hits.truncate(k);
        hits
    }
}

impl Scratch {
    /// Undoes the last search's marks (at the start of the next, so a search that panicked
    /// leaves nothing behind).
    fn clear(&mut self) {
        for &s in &self.touched {
            self.keyword[s as usize] = 0.0;
            self.stamp[s as usize] = 0;
        }
        self.touched.clear();
        self.candidates.clear();
    }
}

/// Keeps the `n` highest estimates of `candidates` (in any order); returns the lowest kept, below
/// which no later page can enter.
fn keep_best(candidates: &mut Vec<(f32, u32)>, n: usize) -> f32 {
    if candidates.len() > n {
        candidates.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0));
        candidates.truncate(n);
    }
    candidates.iter().map(|c| c.0).fold(f32::INFINITY, f32::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The search as it was before the inverted index and the two stages (a scan of every page
    /// with per-page word sets), the reference for the results of [`PageIndex::search`].
    struct Reference {
        entries: Vec<(PageId, String, Vec<f32>, HashSet<String>)>,
        document_frequency: std::collections::HashMap<String, usize>,
        alpha: f32,
    }

    impl Reference {
        fn search(
            &self,
            query_embedding: &[f32],
            query_text: &str,
            owner: Option<&str>,
            exclude: &HashSet<PageId>,
            k: usize,
            min_relevance: f32,
        ) -> Vec<Hit> {
            let dim = query_embedding.len();
            let n = self.entries.len() as f32;
            let mut mean = vec![0f64; dim];
            for (_, _, e, _) in &self.entries {
                for (m, x) in mean.iter_mut().zip(e) {
                    *m += *x as f64;
                }
            }
            let mean: Vec<f32> = mean.iter().map(|m| (m / n as f64) as f32).collect();
            let centered = |v: &[f32]| -> Vec<f32> { v.iter().zip(&mean).map(|(x, m)| x - m).collect() };
            let cosine = |a: &[f32], b: &[f32]| {
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let (na, nb) = (
                    a.iter().map(|x| x * x).sum::<f32>(),
                    b.iter().map(|x| x * x).sum::<f32>(),
                );
                if na == 0.0 || nb == 0.0 {
                    0.0
                } else {
                    dot / (na.sqrt() * nb.sqrt())
                }
            };
            let idf = |w: &String| (1.0 + n / (1.0 + *self.document_frequency.get(w).unwrap_or(&0) as f32)).ln();
            let query_words = content_words(query_text);
            let total: f32 = query_words.iter().map(idf).sum();
            let q = centered(query_embedding);
            let mut hits: Vec<Hit> = self
                .entries
                .iter()
                .filter(|(id, o, _, _)| !exclude.contains(id) && owner.is_none_or(|owner| owner == o))
                .map(|(id, _, e, words)| {
                    let cos = cosine(&q, &centered(e)).max(0.0);
                    let keywords = if total > 0.0 {
                        query_words
                            .iter()
                            .filter(|w| words.contains(*w) || words.iter().any(|p| keywords::same_stem(w, p)))
                            .map(idf)
                            .sum::<f32>()
                            / total
                    } else {
                        0.0
                    };
                    Hit {
                        id: *id,
                        relevance: self.alpha * cos + (1.0 - self.alpha) * keywords,
                    }
                })
                .filter(|h| h.relevance >= min_relevance)
                .collect();
            hits.sort_by(|a, b| b.relevance.total_cmp(&a.relevance).then(a.id.cmp(&b.id)));
            hits.truncate(k);
            hits
        }
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Uniform in [-1, 1).
        fn signed(&mut self) -> f32 {
            (self.next() % 2_000_000) as f32 / 1_000_000.0 - 1.0
        }
    }

    const VOCABULARY: &[&str] = &[
        "falcon",
        "launch",
        "launched",
        "launches",
        "code",
        "codes",
        "garden",
        "gardens",
        "gardener",
        "tree",
        "trees",
        "name",
        "named",
        "names",
        "river",
        "rivers",
        "sister",
        "lives",
        "living",
        "password",
        "passwords",
        "meeting",
        "room",
        "rooms",
        "level",
        "garage",
        "orchard",
        "apple",
        "apples",
        "4417",
        "2300",
        "march",
        "the",
        "is",
        "of",
        "what",
        "my",
        "and",
        "user",
        "assistant",
        "please",
        "remember",
    ];

    /// `pages` pages of two owners: texts from VOCABULARY, embeddings of a common direction plus
    /// one of `topics` topic directions plus noise, rounded to f16 (what the index keeps).
    fn random_pages(rng: &mut Rng, pages: usize, topics: usize, dim: usize) -> Vec<(PageId, String, String, Vec<f32>)> {
        let common: Vec<f32> = (0..dim).map(|_| 3.0 + rng.signed()).collect();
        let directions: Vec<Vec<f32>> = (0..topics).map(|_| (0..dim).map(|_| rng.signed()).collect()).collect();
        (0..pages)
            .map(|i| {
                let owner = if rng.below(4) == 0 { "b" } else { "a" };
                let text: Vec<&str> = (0..3 + rng.below(8))
                    .map(|_| VOCABULARY[rng.below(VOCABULARY.len())])
                    .collect();
                let topic = &directions[rng.below(topics)];
                let embedding: Vec<f32> = (0..dim)
                    .map(|d| common[d] + topic[d] + 0.3 * rng.signed())
                    .map(|x| f16::to_f32(f16::from_f32(x)))
                    .collect();
                (PageId(i as u64 + 1), owner.to_string(), text.join(" "), embedding)
            })
            .collect()
    }

    fn build(pages: &[(PageId, String, String, Vec<f32>)], alpha: f32) -> (PageIndex, Reference) {
        let mut index = PageIndex::new(alpha);
        let mut reference = Reference {
            entries: Vec::new(),
            document_frequency: Default::default(),
            alpha,
        };
        for (id, owner, text, embedding) in pages {
            index.insert(*id, owner, text, embedding.clone());
            let words = content_words(text);
            for w in &words {
                *reference.document_frequency.entry(w.clone()).or_default() += 1;
            }
            reference.entries.push((*id, owner.clone(), embedding.clone(), words));
        }
        (index, reference)
    }

    /// `got` is `want` up to the order of ties: the same relevances in the same order, and each
    /// page with the relevance that `all` (every page's score) gives it. Exact ties are common
    /// (pages matching the same words), and sums of the same idfs in another order differ in
    /// the last bit, which may order such pages differently.
    fn assert_same(got: &[Hit], want: &[Hit], all: &[Hit], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
        let score: std::collections::HashMap<PageId, f32> = all.iter().map(|h| (h.id, h.relevance)).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((g.relevance - w.relevance).abs() < 1e-4, "{what}: {g:?} vs {w:?}");
            let exact = score.get(&g.id).copied();
            assert!(
                exact.is_some_and(|r| (r - g.relevance).abs() < 1e-4),
                "{what}: {g:?} scores {exact:?} in the scan"
            );
        }
        let distinct: HashSet<PageId> = got.iter().map(|h| h.id).collect();
        assert_eq!(distinct.len(), got.len(), "{what}: {got:?}");
    }

    #[test]
    fn search_equals_the_exact_scan_on_small_indexes() {
        let mut rng = Rng(0x5EED);
        for alpha in [0.0, 0.4, 1.0] {
            let pages = random_pages(&mut rng, 300, 6, 40);
            let (index, reference) = build(&pages, alpha);
            for q in 0..40 {
                let (_, _, text, embedding) = &pages[rng.below(pages.len())];
                let query_text = if q % 3 == 0 {
                    "garden trees named".to_string()
                } else {
                    text.clone()
                };
                let embedding: Vec<f32> = embedding.iter().map(|x| x + 0.2 * rng.signed()).collect();
                let owner = [None, Some("a"), Some("b"), Some("nobody")][q % 4];
                let exclude: HashSet<PageId> = (0..q % 5).map(|_| PageId(1 + rng.below(300) as u64)).collect();
                let (k, min) = (1 + q % 7, [0.0, 0.2, 0.5][q % 3]);
                let want = reference.search(&embedding, &query_text, owner, &exclude, k, min);
                let all = reference.search(&embedding, &query_text, owner, &exclude, usize::MAX, f32::MIN);
                let what = format!("alpha {alpha}, query {q}");
                let got = index.search(&embedding, &query_text, owner, &exclude, k, min);
                assert_same(&got, &want, &all, &what);
                let got = index.search_exact(&embedding, &query_text, owner, &exclude, k, min);
                assert_same(&got, &want, &all, &what);
            }
        }
    }

    #[test]
    fn above_the_candidates_the_search_finds_what_the_exact_scan_finds() {
        let mut rng = Rng(0xC0FFEE);
        let pages = random_pages(&mut rng, 4 * CANDIDATES, 40, 64);
        let (index, reference) = build(&pages, 0.4);
        let (mut found, mut wanted) = (0, 0);
        for q in 0..30 {
            let (_, _, text, embedding) = &pages[rng.below(pages.len())];
            let embedding: Vec<f32> = embedding.iter().map(|x| x + 0.2 * rng.signed()).collect();
            let owner = [None, Some("a")][q % 2];
            let none = HashSet::new();
            let exact = index.search_exact(&embedding, text, owner, &none, 4, 0.0);
            let want = reference.search(&embedding, text, owner, &none, 4, 0.0);
            let all = reference.search(&embedding, text, owner, &none, usize::MAX, f32::MIN);
            assert_same(&exact, &want, &all, "exact");
            let approx = index.search(&embedding, text, owner, &none, 4, 0.0);
            wanted += exact.len();
            found += exact.iter().filter(|h| approx.contains(h)).count();
        }
        assert!(found * 100 >= wanted * 95, "recall@4 {found}/{wanted}");
    }

    #[test]
    fn keywords_find_the_page_that_names_the_fact() {
        let mut index = PageIndex::new(0.0);
        index.insert(
            PageId(1),
            "a",
            "The launch code of project Falcon is 7731.",
            vec![1.0, 0.0],
        );
        index.insert(
            PageId(2),
            "a",
            "The weather in Lisbon was sunny all week.",
            vec![0.0, 1.0],
        );
        index.insert(PageId(3), "b", "Project Falcon launch code: 9999.", vec![1.0, 0.0]);
        let hits = index.search(
            &[0.5, 0.5],
            "What is the launch code of project Falcon?",
            Some("a"),
            &HashSet::new(),
            2,
            0.1,
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].id, PageId(1));
        let all = index.search(&[0.5, 0.5], "falcon launch code", None, &HashSet::new(), 5, 0.1);
        assert_eq!(all.len(), 2);
        let excluded = index.search(
            &[0.5, 0.5],
            "falcon launch code",
            None,
            &HashSet::from([PageId(1)]),
            5,
            0.1,
        );
        assert_eq!(excluded.iter().map(|h| h.id).collect::<Vec<_>>(), vec![PageId(3)]);
    }

    #[test]
    fn embeddings_rank_after_removing_the_common_direction() {
        let mut index = PageIndex::new(1.0);
        // Every vector shares a big common component; only the small part differs.
        index.insert(PageId(1), "a", "x", vec![10.0, 1.0, 0.0]);
        index.insert(PageId(2), "a", "y", vec![10.0, 0.0, 1.0]);
        let hits = index.search(&[10.0, 1.0, 0.0], "", None, &HashSet::new(), 2, 0.0);
        assert_eq!(hits[0].id, PageId(1));
        assert!(hits[0].relevance > 0.9);
        assert_eq!(hits[1].id, PageId(2));
        assert!(hits[1].relevance < 0.1);
    }

    #[test]
    fn stopwords_are_the_standard_list_and_nothing_else() {
        assert_eq!(STOPWORDS.len(), 179);
        // Ordinary words of requests and chat transcripts are content, whatever a script uses.
        let words = content_words("Please remember: tell the user and the assistant what you know, let it be.");
        for w in ["please", "remember", "tell", "user", "assistant", "know", "let"] {
            assert!(words.contains(w), "{w} is a content word: {words:?}");
        }
        for w in ["the", "and", "what", "you", "it", "be"] {
            assert!(!words.contains(w), "{w} is a stopword: {words:?}");
        }
    }
}
