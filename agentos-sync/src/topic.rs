//! Publish/subscribe matching with per-publisher sequence numbers.
//!
//! A [`TopicTable`] holds subscriptions and, for each publisher, the last sequence number it
//! stamped. `publish` only decides who receives a message; the runtime writes one copy per
//! recipient into that agent's durable inbox.
//!
//! ```
//! use agentos_sync::topic::{TopicFilter, TopicTable};
//!
//! let mut table = TopicTable::new();
//! table.subscribe("bob", TopicFilter::new("news.*").unwrap());
//! let (publication, recipients) = table.publish("alice", "news.sports", "3-1").unwrap();
//! assert_eq!(publication.seq, 1);
//! assert_eq!(recipients, ["bob"]);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};

/// The longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Which topics a subscription takes: exact (`"news.sports"`), or a prefix ending in `".*"`
/// (`"news.*"` takes `"news"` and everything under `"news."`), or `"*"` for all; optionally only
/// messages whose text contains every one of `keywords` (case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicFilter {
    pub pattern: String,
    pub keywords: Vec<String>,
}

impl TopicFilter {
    /// A filter on `pattern` with no keywords.
    ///
    /// Errors: [`SyncError::InvalidName`] (`what: "topic"`) unless `pattern` is `"*"`, a topic
    /// name, or a topic name followed by `".*"`.
    pub fn new(pattern: &str) -> Result<Self> {
        if pattern != "*" {
            let name = pattern.strip_suffix(".*").unwrap_or(pattern);
            validate_topic(name).map_err(|reason| invalid_topic(pattern, reason))?;
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            keywords: Vec::new(),
        })
    }

    /// This filter, taking only texts that contain every one of `keywords`. Keywords are stored
    /// lower-cased, sorted and without duplicates or empty ones, so that two filters that take
    /// the same messages compare equal.
    pub fn with_keywords<I, S>(mut self, keywords: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut keywords: Vec<String> = keywords
            .into_iter()
            .map(|k| k.as_ref().to_lowercase())
            .filter(|k| !k.is_empty())
            .collect();
        keywords.sort();
        keywords.dedup();
        self.keywords = keywords;
        self
    }

    /// Whether a message on `topic` with `text` is taken by this filter.
    pub fn matches(&self, topic: &str, text: &str) -> bool {
        self.matches_topic(topic) && self.matches_text(text)
    }

    fn matches_topic(&self, topic: &str) -> bool {
        if self.pattern == "*" {
            return true;
        }
        match self.pattern.strip_suffix(".*") {
            // Checking the '.' after the prefix keeps "news.*" from taking "newsroom".
            Some(prefix) => topic == prefix || topic.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.')),
            None => topic == self.pattern,
        }
    }

    fn matches_text(&self, text: &str) -> bool {
        if self.keywords.is_empty() {
            return true;
        }
        let text = text.to_lowercase();
        // Keywords are lower-cased again because the fields are public and may be set directly.
        self.keywords
            .iter()
            .all(|keyword| text.contains(&keyword.to_lowercase()))
    }
}

/// One subscriber's interest in the topics its filter takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: u64,
    pub subscriber: String,
    pub filter: TopicFilter,
}

/// A message to deliver: the runtime writes one per recipient into that agent's durable inbox, in
/// `seq` order per publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub topic: String,
    pub publisher: String,
    pub seq: u64,
    pub text: String,
}

/// The durable form of a [`TopicTable`]: its subscriptions and each publisher's last sequence
/// number.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TopicSnapshot {
    pub subscriptions: Vec<Subscription>,
    pub sequences: Vec<(String, u64)>,
}

/// Subscriptions and per-publisher sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct TopicTable {
    subscriptions: BTreeMap<u64, Subscription>,
    sequences: BTreeMap<String, u64>,
    next_id: u64,
}

impl TopicTable {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            subscriptions: BTreeMap::new(),
            sequences: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// Subscribes `subscriber` to what `filter` takes; returns the subscription's id. Subscribing
    /// the same filter twice returns the same id and adds nothing.
    pub fn subscribe(&mut self, subscriber: &str, filter: TopicFilter) -> u64 {
        let existing = self
            .subscriptions
            .values()
            .find(|s| s.subscriber == subscriber && s.filter == filter);
        if let Some(subscription) = existing {
            return subscription.id;
        }
        let id = self.next_id;
        // 2^64 subscriptions cannot happen; only a forged id of u64::MAX in a snapshot gets here.
        self.next_id = self.next_id.saturating_add(1);
        tracing::debug!(subscriber, pattern = filter.pattern.as_str(), id, "subscribed");
        self.subscriptions.insert(
            id,
            Subscription {
                id,
                subscriber: subscriber.to_owned(),
                filter,
            },
        );
        id
    }

    /// Removes subscription `id` if it belongs to `subscriber`; returns whether it did.
    pub fn unsubscribe(&mut self, subscriber: &str, id: u64) -> bool {
        let owned = self.subscriptions.get(&id).is_some_and(|s| s.subscriber == subscriber);
        if owned {
            self.subscriptions.remove(&id);
        }
        owned
    }

    /// Removes every subscription of `subscriber`; returns how many there were.
    pub fn unsubscribe_all(&mut self, subscriber: &str) -> usize {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|_, s| s.subscriber != subscriber);
        before - self.subscriptions.len()
    }

    /// Stamps the next sequence number of `publisher` (1 for its first) and returns the
    /// publication with its recipients: the subscribers whose filter matches, each once even when
    /// several of its filters match, in name order, never the publisher itself.
    ///
    /// Errors: [`SyncError::InvalidName`] (`what: "topic"`) for a topic that is empty, over 256
    /// bytes, or has an empty segment, whitespace, a control character or `'*'`; no sequence
    /// number is used then.
    pub fn publish(&mut self, publisher: &str, topic: &str, text: &str) -> Result<(Publication, Vec<String>)> {
        validate_topic(topic).map_err(|reason| invalid_topic(topic, reason))?;
        let last = self.sequences.entry(publisher.to_owned()).or_insert(0);
        // Reaching u64::MAX takes a forged snapshot; saturating keeps that from panicking.
        *last = last.saturating_add(1);
        let seq = *last;

        let recipients: BTreeSet<&str> = self
            .subscriptions
            .values()
            .filter(|s| s.subscriber != publisher && s.filter.matches(topic, text))
            .map(|s| s.subscriber.as_str())
            .collect();
        let recipients: Vec<String> = recipients.into_iter().map(str::to_owned).collect();
        tracing::debug!(publisher, topic, seq, recipients = recipients.len(), "published");
        let publication = Publication {
            topic: topic.to_owned(),
            publisher: publisher.to_owned(),
            seq,
            text: text.to_owned(),
        };
        Ok((publication, recipients))
    }

    /// The subscriptions, in id order.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.subscriptions.values().cloned().collect()
    }

    /// The durable form: subscriptions (in id order) and each publisher's last sequence number
    /// (in publisher order).
    pub fn snapshot(&self) -> TopicSnapshot {
        TopicSnapshot {
            subscriptions: self.subscriptions(),
            sequences: self
                .sequences
                .iter()
                .map(|(publisher, seq)| (publisher.clone(), *seq))
                .collect(),
        }
    }

    /// Rebuilds a table from a [`TopicSnapshot`]: sequence numbers continue after the saved ones
    /// and new subscription ids above the largest. Of two subscriptions with one id the later is
    /// kept; of two sequence numbers for one publisher, the larger.
    pub fn from_snapshot(snapshot: TopicSnapshot) -> Self {
        let mut table = Self::new();
        for subscription in snapshot.subscriptions {
            table.next_id = table.next_id.max(subscription.id.saturating_add(1));
            table.subscriptions.insert(subscription.id, subscription);
        }
        for (publisher, seq) in snapshot.sequences {
            let last = table.sequences.entry(publisher).or_insert(0);
            *last = (*last).max(seq);
        }
        table
    }
}

fn invalid_topic(name: &str, reason: &'static str) -> SyncError {
    SyncError::InvalidName {
        what: "topic",
        name: name.to_owned(),
        reason,
    }
}

/// Checks a topic name; the reason it is refused otherwise.
fn validate_topic(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err("over 256 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    if name.contains('*') {
        return Err("contains '*'");
    }
    if name.split('.').any(str::is_empty) {
        return Err("has an empty segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pattern: &str) -> TopicFilter {
        TopicFilter::new(pattern).unwrap()
    }

    #[test]
    fn exact_pattern_takes_only_that_topic() {
        let f = filter("news.sports");
        assert!(f.matches("news.sports", ""));
        assert!(!f.matches("news", ""));
        assert!(!f.matches("news.sports.live", ""));
        assert!(!f.matches("news.sportsball", ""));
    }

    #[test]
    fn prefix_pattern_takes_the_topic_and_everything_under_it() {
        let f = filter("news.*");
        assert!(f.matches("news", ""));
        assert!(f.matches("news.sports", ""));
        assert!(f.matches("news.sports.live", ""));
        assert!(!f.matches("newsroom", ""));
        assert!(!f.matches("newsroom.x", ""));
        assert!(!f.matches("weather", ""));
        let nested = filter("a.b.*");
        assert!(nested.matches("a.b.c", ""));
        assert!(!nested.matches("a", ""));
        assert!(!nested.matches("a.bc", ""));
    }

    #[test]
    fn star_takes_every_topic() {
        let f = filter("*");
        for topic in ["a", "news.sports", "x.y.z"] {
            assert!(f.matches(topic, "anything"));
        }
    }

    #[test]
    fn keywords_must_all_appear_ignoring_case() {
        let f = filter("*").with_keywords(["Goal", "FINAL"]);
        assert_eq!(f.keywords, ["final", "goal"]);
        assert!(f.matches("news", "A late GOAL in the final"));
        assert!(!f.matches("news", "a late goal"));
        assert!(!f.matches("news", ""));
        let empty_only = filter("news").with_keywords([""]);
        assert!(empty_only.keywords.is_empty());
        assert!(empty_only.matches("news", "x"));
        // Set by hand, with upper case: still case-insensitive.
        let by_hand = TopicFilter {
            pattern: "news".into(),
            keywords: vec!["GOAL".into()],
        };
        assert!(by_hand.matches("news", "goal!"));
    }

    #[test]
    fn invalid_topics_and_patterns_are_refused() {
        let long = "t".repeat(257);
        let bad = [
            "",
            ".",
            "news.",
            ".news",
            "news..sports",
            "news sports",
            "news\tsports",
            "news\u{7}",
            "news*",
            "news.*.x",
            "*.news",
            long.as_str(),
        ];
        let mut table = TopicTable::new();
        for topic in bad {
            match table.publish("alice", topic, "x") {
                Err(SyncError::InvalidName { what, .. }) => assert_eq!(what, "topic"),
                other => panic!("topic {topic:?} gave {other:?}"),
            }
        }
        for pattern in bad.iter().chain(&["news.**", "**", ".*", "news.*.*"]) {
            assert!(
                matches!(
                    TopicFilter::new(pattern),
                    Err(SyncError::InvalidName { what: "topic", .. })
                ),
                "pattern {pattern:?} was taken"
            );
        }
        assert!(table.publish("alice", &"t".repeat(256), "x").is_ok());
        assert!(table.publish("alice", "ünï.côde", "x").is_ok());
        // The refused ones used no sequence numbers.
        assert_eq!(table.publish("alice", "ok", "x").unwrap().0.seq, 3);
    }

    #[test]
    fn publish_reaches_matching_subscribers_in_name_order() {
        let mut table = TopicTable::new();
        table.subscribe("zoe", filter("news.*"));
        table.subscribe("bob", filter("news.sports"));
        table.subscribe("carl", filter("weather"));
        table.subscribe("amy", filter("*").with_keywords(["goal"]));
        let (publication, recipients) = table.publish("alice", "news.sports", "Goal!").unwrap();
        assert_eq!(
            publication,
            Publication {
                topic: "news.sports".into(),
                publisher: "alice".into(),
                seq: 1,
                text: "Goal!".into()
            }
        );
        assert_eq!(recipients, ["amy", "bob", "zoe"]);
        let (_, recipients) = table.publish("alice", "news.sports", "rain").unwrap();
        assert_eq!(recipients, ["bob", "zoe"]);
    }

    #[test]
    fn publisher_does_not_receive_its_own_publication() {
        let mut table = TopicTable::new();
        table.subscribe("alice", filter("*"));
        table.subscribe("bob", filter("*"));
        let (_, recipients) = table.publish("alice", "news", "x").unwrap();
        assert_eq!(recipients, ["bob"]);
        let (_, recipients) = table.publish("bob", "news", "x").unwrap();
        assert_eq!(recipients, ["alice"]);
    }

    #[test]
    fn subscriber_with_several_matching_filters_receives_once() {
        let mut table = TopicTable::new();
        table.subscribe("bob", filter("*"));
        table.subscribe("bob", filter("news.*"));
        table.subscribe("bob", filter("news.sports"));
        let (_, recipients) = table.publish("alice", "news.sports", "x").unwrap();
        assert_eq!(recipients, ["bob"]);
    }

    #[test]
    fn subscribing_the_same_filter_twice_returns_the_same_id() {
        let mut table = TopicTable::new();
        let first = table.subscribe("bob", filter("news.*").with_keywords(["a", "B"]));
        let again = table.subscribe("bob", filter("news.*").with_keywords(["b", "A"]));
        assert_eq!(first, again);
        let other_subscriber = table.subscribe("carl", filter("news.*").with_keywords(["a", "b"]));
        let other_filter = table.subscribe("bob", filter("news.*"));
        assert_ne!(other_subscriber, first);
        assert_ne!(other_filter, first);
        assert_ne!(other_filter, other_subscriber);
        assert_eq!(table.subscriptions().len(), 3);
    }

    #[test]
    fn unsubscribe_removes_only_the_subscribers_own() {
        let mut table = TopicTable::new();
        let bob = table.subscribe("bob", filter("news"));
        let carl = table.subscribe("carl", filter("news"));
        assert!(!table.unsubscribe("carl", bob), "not carl's subscription");
        assert!(table.unsubscribe("bob", bob));
        assert!(!table.unsubscribe("bob", bob));
        let (_, recipients) = table.publish("alice", "news", "x").unwrap();
        assert_eq!(recipients, ["carl"]);
        assert_eq!(table.subscriptions().iter().map(|s| s.id).collect::<Vec<_>>(), [carl]);
    }

    #[test]
    fn unsubscribe_all_counts_and_removes_every_subscription() {
        let mut table = TopicTable::new();
        table.subscribe("bob", filter("news"));
        table.subscribe("bob", filter("weather.*"));
        table.subscribe("carl", filter("news"));
        assert_eq!(table.unsubscribe_all("bob"), 2);
        assert_eq!(table.unsubscribe_all("bob"), 0);
        let (_, recipients) = table.publish("alice", "news", "x").unwrap();
        assert_eq!(recipients, ["carl"]);
    }

    #[test]
    fn sequence_numbers_start_at_one_per_publisher_and_increase() {
        let mut table = TopicTable::new();
        let seqs: Vec<u64> = ["alice", "bob", "alice", "alice", "bob"]
            .iter()
            .map(|publisher| table.publish(publisher, "t", "x").unwrap().0.seq)
            .collect();
        assert_eq!(seqs, [1, 1, 2, 3, 2]);
    }

    #[test]
    fn sequences_and_subscriptions_survive_a_snapshot_round_trip() {
        let mut table = TopicTable::new();
        let bob = table.subscribe("bob", filter("news.*").with_keywords(["goal"]));
        table.subscribe("carl", filter("*"));
        for _ in 0..3 {
            table.publish("alice", "news", "x").unwrap();
        }
        table.publish("dora", "news", "x").unwrap();
        let snapshot = table.snapshot();
        assert_eq!(snapshot.sequences, [("alice".to_owned(), 3), ("dora".to_owned(), 1)]);
        let json = serde_json::to_string(&snapshot).unwrap();

        let mut restored = TopicTable::from_snapshot(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.snapshot(), snapshot);
        let (publication, recipients) = restored.publish("alice", "news.x", "GOAL").unwrap();
        assert_eq!(publication.seq, 4);
        assert_eq!(recipients, ["bob", "carl"]);
        assert_eq!(restored.publish("dora", "news", "x").unwrap().0.seq, 2);
        assert_eq!(restored.publish("erin", "news", "x").unwrap().0.seq, 1);
        // New subscription ids do not reuse saved ones.
        let dave = restored.subscribe("dave", filter("news"));
        assert!(dave > bob && snapshot.subscriptions.iter().all(|s| s.id != dave));
    }

    #[test]
    fn from_snapshot_with_duplicates_keeps_the_largest_sequence() {
        let snapshot = TopicSnapshot {
            subscriptions: Vec::new(),
            sequences: vec![("alice".into(), 9), ("alice".into(), 4), ("bob".into(), u64::MAX)],
        };
        let mut table = TopicTable::from_snapshot(snapshot);
        assert_eq!(table.publish("alice", "t", "x").unwrap().0.seq, 10);
        // A forged maximum does not panic.
        assert_eq!(table.publish("bob", "t", "x").unwrap().0.seq, u64::MAX);
    }
}
