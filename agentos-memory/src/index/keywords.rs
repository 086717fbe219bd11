//! The keyword side of the index: an inverted index from each content word to the pages that hold
//! it, and the sorted vocabulary that finds the words sharing a stem with a query word by range
//! and prefix lookups instead of comparing it with every word of every page.

use std::collections::{BTreeSet, HashMap};

pub(crate) struct Keywords {
    /// Content word → the slots of the pages that hold it, ascending, each once.
    postings: HashMap<String, Vec<u32>>,
    /// Every word of `postings`, in order, for the stem ranges.
    vocabulary: BTreeSet<String>,
}

impl Keywords {
    pub(crate) fn new() -> Self {
        Keywords {
            postings: HashMap::new(),
            vocabulary: BTreeSet::new(),
        }
    }

    /// Records that page `slot` (higher than every slot before) holds `words` (distinct).
    pub(crate) fn insert<'a>(&mut self, slot: u32, words: impl IntoIterator<Item = &'a str>) {
        for w in words {
            match self.postings.get_mut(w) {
                Some(slots) => slots.push(slot),
                None => {
                    self.postings.insert(w.to_string(), vec![slot]);
                    self.vocabulary.insert(w.to_string());
                }
            }
        }
    }

    /// In how many pages `word` occurs (exactly).
    pub(crate) fn document_frequency(&self, word: &str) -> usize {
        self.postings.get(word).map_or(0, Vec::len)
    }

    /// Calls `f` with the postings of `word` and of every word that shares its stem
    /// ([`same_stem`]); a page may come in more than one of them.
    pub(crate) fn for_each_match(&self, word: &str, mut f: impl FnMut(&[u32])) {
        if let Some(slots) = self.postings.get(word) {
            f(slots);
        }
        // Longer words: `word` plus up to 3 bytes, a contiguous range of the sorted vocabulary.
        if word.len() >= STEM_MIN {
            let longer = self
                .vocabulary
                .range::<str, _>((std::ops::Bound::Excluded(word), std::ops::Bound::Unbounded))
                .take_while(|w| w.starts_with(word));
            for w in longer.filter(|w| same_stem(word, w)) {
                f(&self.postings[w.as_str()]);
            }
        }
        // Shorter words: prefixes of `word` of at least STEM_MIN bytes, up to 3 shorter.
        for len in word.len().saturating_sub(STEM_SUFFIX).max(STEM_MIN)..word.len() {
            if let Some(prefix) = word.get(..len)
                && let Some(slots) = self.postings.get(prefix)
            {
                f(slots);
            }
        }
    }
}

/// Shortest stem (in bytes) that a suffix may be added to.
const STEM_MIN: usize = 4;
/// Longest suffix (in bytes).
const STEM_SUFFIX: usize = 3;

/// Whether two words share a stem: one is the other plus a short suffix ("name" / "named",
/// "tree" / "trees"). Crude next to a real stemmer, and enough for query-page overlap.
pub(crate) fn same_stem(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= STEM_MIN && long.len() - short.len() <= STEM_SUFFIX && long.starts_with(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of `vocabulary` that `for_each_match` reaches, found by comparing with each.
    fn matches_by_scan(vocabulary: &[&str], word: &str) -> Vec<String> {
        let mut out: Vec<String> = vocabulary
            .iter()
            .filter(|w| **w == word || same_stem(word, w))
            .map(|w| w.to_string())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn stem_lookups_find_what_comparing_with_every_word_finds() {
        let vocabulary = [
            "name",
            "named",
            "names",
            "namesake",
            "nam",
            "tree",
            "trees",
            "treehouse",
            "tre",
            "launch",
            "launched",
            "launches",
            "launc",
            "laun",
            "code",
            "codes",
            "coded",
            "codex",
            "codecs",
            "cod",
            "naïve",
            "naïvely",
            "naïv",
            "12",
            "123",
            "1234",
            "12345",
            "123456",
            "1234567",
        ];
        let mut keywords = Keywords::new();
        // Page i holds word i only, so the postings name the words.
        for (i, w) in vocabulary.iter().enumerate() {
            keywords.insert(i as u32, [*w]);
        }
        let queries = vocabulary
            .iter()
            .copied()
            .chain(["namesakes", "treehouses", "laun", "co", "naïves", "xyz"]);
        for q in queries {
            let mut found = Vec::new();
            keywords.for_each_match(q, |slots| {
                found.extend(slots.iter().map(|&s| vocabulary[s as usize].to_string()))
            });
            found.sort();
            assert_eq!(found, matches_by_scan(&vocabulary, q), "query {q}");
        }
    }

    #[test]
    fn postings_count_documents() {
        let mut keywords = Keywords::new();
        keywords.insert(0, ["falcon", "code"]);
        keywords.insert(1, ["falcon"]);
        assert_eq!(keywords.document_frequency("falcon"), 2);
        assert_eq!(keywords.document_frequency("code"), 1);
        assert_eq!(keywords.document_frequency("codes"), 0);
    }
}
