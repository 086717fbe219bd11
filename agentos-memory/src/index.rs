//! The similarity index behind page faults: embeddings plus keywords.
//!
//! Relevance of a page to a query is `alpha * cos⁺ + (1 - alpha) * keywords`:
//! - `cos⁺` is the cosine of the query and page embeddings after subtracting the mean embedding
//!   of the index (mean-pooled states of a decoder share a large common direction, which makes
//!   raw cosines all close to 1), clamped at 0;
//! - `keywords` is the idf-weighted fraction of the query's content words found in the page, so
//!   names and numbers (what facts hinge on, and what a small model's embedding blurs) count.
//!
//! Search is exact (a scan): per query it costs `pages * dim` multiply-adds, about 2 ms for
//! 10,000 pages of 576 dimensions, well under one decode step.

use std::collections::{HashMap, HashSet};

use crate::page::PageId;

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

/// Lower-cased content words of a text (alphanumeric runs of two or more characters, stopwords
/// removed).
pub fn content_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(|w| w.to_lowercase())
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

struct Entry {
    owner: String,
    embedding: Vec<f32>,
    words: HashSet<String>,
}

/// Embeddings and content words of every page, for similarity search.
pub struct PageIndex {
    entries: HashMap<PageId, Entry>,
    /// Sum of all embeddings (for the mean that is subtracted).
    embedding_sum: Vec<f64>,
    /// In how many pages each word occurs.
    document_frequency: HashMap<String, u32>,
    /// Weight of the embedding cosine against the keyword score.
    alpha: f32,
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
            entries: HashMap::new(),
            embedding_sum: Vec::new(),
            document_frequency: HashMap::new(),
            alpha: alpha.clamp(0.0, 1.0),
        }
    }

    pub fn insert(&mut self, id: PageId, owner: &str, text: &str, embedding: Vec<f32>) {
        if self.entries.contains_key(&id) {
            return;
        }
        if self.embedding_sum.len() < embedding.len() {
            self.embedding_sum.resize(embedding.len(), 0.0);
        }
        for (s, e) in self.embedding_sum.iter_mut().zip(&embedding) {
            *s += *e as f64;
        }
        let words = content_words(text);
        for w in &words {
            *self.document_frequency.entry(w.clone()).or_default() += 1;
        }
        self.entries.insert(
            id,
            Entry {
                owner: owner.to_string(),
                embedding,
                words,
            },
        );
    }

    /// The `k` most relevant pages of `owner` (all owners when `None`), excluding `exclude`,
    /// with relevance at least `min_relevance`, best first.
    pub fn search(
        &self,
        query_embedding: &[f32],
        query_text: &str,
        owner: Option<&str>,
        exclude: &HashSet<PageId>,
        k: usize,
        min_relevance: f32,
    ) -> Vec<Hit> {
        let query_words = content_words(query_text);
        let mean = self.mean();
        let query_centered = centered(query_embedding, &mean);
        let mut hits: Vec<Hit> = self
            .entries
            .iter()
            .filter(|(id, e)| !exclude.contains(id) && owner.is_none_or(|o| o == e.owner))
            .map(|(&id, e)| Hit {
                id,
                relevance: self.score(&query_centered, &query_words, &mean, e),
            })
            .filter(|h| h.relevance >= min_relevance)
            .collect();
        hits.sort_by(|a, b| b.relevance.total_cmp(&a.relevance).then(a.id.cmp(&b.id)));
        hits.truncate(k);
        hits
    }

    fn score(&self, query_centered: &[f32], query_words: &HashSet<String>, mean: &[f32], e: &Entry) -> f32 {
        let cos = cosine(query_centered, &centered(&e.embedding, mean)).max(0.0);
        let n = self.entries.len() as f32;
        let idf = |w: &String| (1.0 + n / (1.0 + *self.document_frequency.get(w).unwrap_or(&0) as f32)).ln();
        let total: f32 = query_words.iter().map(idf).sum();
        let keywords = if total > 0.0 {
            query_words
                .iter()
                .filter(|w| e.words.contains(*w) || e.words.iter().any(|p| same_stem(w, p)))
                .map(idf)
                .sum::<f32>()
                / total
        } else {
            0.0
        };
        self.alpha * cos + (1.0 - self.alpha) * keywords
    }

    fn mean(&self) -> Vec<f32> {
        let n = self.entries.len().max(1) as f64;
        self.embedding_sum.iter().map(|s| (s / n) as f32).collect()
    }
}

/// Whether two words share a stem: one is the other plus a short suffix ("name" / "named",
/// "tree" / "trees"). Crude next to a real stemmer, and enough for query-page overlap.
fn same_stem(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= 4 && long.len() - short.len() <= 3 && long.starts_with(short)
}

fn centered(v: &[f32], mean: &[f32]) -> Vec<f32> {
    v.iter()
        .enumerate()
        .map(|(i, x)| x - mean.get(i).copied().unwrap_or(0.0))
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
