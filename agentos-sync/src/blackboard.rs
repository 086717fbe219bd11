//! The blackboard: shared memory between agents, keyed entries with vector clocks.
//!
//! Each entry carries a vector clock (writes per author) and a Lamport number (a total order of
//! writes across the board, for compare-and-swap and for display). A write names the clock it was
//! based on, its *context*: the clock of the entry as the writer last read it. When the context
//! has seen everything the entry holds (it dominates or equals the entry's clock), the write
//! supersedes the entry. Otherwise the two writes are concurrent: the new value is kept beside
//! the current one as a *sibling* and the outcome is [`Put::Conflict`], so no write is ever
//! silently lost. A later write whose context has seen every sibling (the writer read the entry
//! after the conflict) resolves it.
//!
//! [`Blackboard::put`] takes the writer's context from what the board saw that writer read or
//! write last (its session); [`Blackboard::put_with_context`] takes it explicitly. A blind write
//! to an existing key by an author who never read it is therefore a conflict, not an overwrite.
//! Sessions are kept in memory only: after a restart an author's first write to an existing key
//! conflicts until it reads the key again.
//!
//! Areas: [`Area::Public`] is open to every agent; [`Area::Group`] only to the group's members
//! (joined with [`Blackboard::join`]). Everything is written through to the [`SyncStore`] before
//! a call returns, when the board has one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};
use crate::store::SyncStore;

/// The largest value (its JSON text) one entry may hold.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Where the Lamport counter is kept when the entry that held it is removed.
const LAMPORT_KEY: &str = "bb-lamport";
/// The longest key.
pub const MAX_KEY_BYTES: usize = 256;

/// Which part of the board an entry lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Area {
    /// Readable and writable by every agent.
    Public,
    /// Readable and writable by the group's members only.
    Group(String),
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Area::Public => write!(f, "public"),
            Area::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// A vector clock: how many writes of each author a value has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VClock(pub BTreeMap<String, u64>);

impl VClock {
    /// Whether this clock has seen every write `other` has.
    pub fn dominates(&self, other: &VClock) -> bool {
        other
            .0
            .iter()
            .all(|(author, n)| self.0.get(author).is_some_and(|m| m >= n))
    }

    /// The least clock that has seen both.
    pub fn merge(&mut self, other: &VClock) {
        for (author, n) in &other.0 {
            let m = self.0.entry(author.clone()).or_insert(0);
            *m = (*m).max(*n);
        }
    }

    fn tick(&mut self, author: &str) {
        *self.0.entry(author.to_string()).or_insert(0) += 1;
    }
}

/// A value written concurrently with the entry's current one, kept until a write resolves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sibling {
    pub value: serde_json::Value,
    pub author: String,
    pub lamport: u64,
    pub written_ms: u64,
}

/// One key's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub area: Area,
    pub key: String,
    pub value: serde_json::Value,
    pub author: String,
    /// Position of the latest write to this entry in the board's total order of writes.
    pub lamport: u64,
    /// Every write this entry (its value and its siblings) has seen.
    pub clock: VClock,
    pub written_ms: u64,
    /// Concurrent values not yet resolved: non-empty means the key is in conflict.
    pub siblings: Vec<Sibling>,
}

impl Entry {
    pub fn in_conflict(&self) -> bool {
        !self.siblings.is_empty()
    }

    /// The value as text: a JSON string's content, any other value's JSON.
    pub fn text(&self) -> String {
        match &self.value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Put {
    /// The value superseded what the writer had seen (or the key was new).
    Written(Entry),
    /// The write was concurrent with the entry's value: it is kept as a sibling.
    Conflict(Entry),
}

impl Put {
    pub fn entry(&self) -> &Entry {
        match self {
            Put::Written(e) | Put::Conflict(e) => e,
        }
    }
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cas {
    Swapped(Entry),
    /// The entry was not at the expected version (or was in conflict): nothing changed.
    Failed {
        current: Option<Entry>,
    },
}

/// A change to announce to watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub area: Area,
    pub key: String,
    pub author: String,
    pub lamport: u64,
    pub conflict: bool,
}

/// Counters of the board.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardStats {
    pub entries: usize,
    pub writes: u64,
    pub conflicts: u64,
    pub cas_failures: u64,
    pub in_conflict: usize,
}

/// The blackboard (see the module docs).
#[derive(Debug, Default)]
pub struct Blackboard {
    entries: BTreeMap<(Area, String), Entry>,
    groups: BTreeMap<String, BTreeSet<String>>,
    /// The clock each author last read or wrote per entry.
    sessions: HashMap<(String, Area, String), VClock>,
    lamport: u64,
    stats: BoardStats,
    store: Option<Arc<SyncStore>>,
}

impl Blackboard {
    /// A board kept in memory only.
    pub fn in_memory() -> Self {
        Blackboard::default()
    }

    /// The board kept in `store`, with every entry and group it holds.
    pub fn open(store: Arc<SyncStore>) -> Result<Self> {
        let mut board = Blackboard::default();
        for (_, entry) in store.scan::<Entry>("bb/")? {
            board.lamport = board
                .lamport
                .max(entry.lamport)
                .max(entry.siblings.iter().map(|s| s.lamport).max().unwrap_or(0));
            board.entries.insert((entry.area.clone(), entry.key.clone()), entry);
        }
        board.lamport = board.lamport.max(store.get::<u64>(LAMPORT_KEY)?.unwrap_or(0));
        for (key, members) in store.scan::<BTreeSet<String>>("group/")? {
            board.groups.insert(key["group/".len()..].to_string(), members);
        }
        board.store = Some(store);
        board.stats.entries = board.entries.len();
        board.stats.in_conflict = board.entries.values().filter(|e| e.in_conflict()).count();
        Ok(board)
    }

    /// Adds `agent` to `group` (creating it).
    pub fn join(&mut self, group: &str, agent: &str) -> Result<()> {
        check_name("group", group)?;
        let mut members = self.groups.get(group).cloned().unwrap_or_default();
        if !members.insert(agent.to_string()) {
            return Ok(());
        }
        if let Some(store) = &self.store {
            store.put(&format!("group/{group}"), &members)?;
        }
        self.groups.insert(group.to_string(), members);
        Ok(())
    }

    /// Removes `agent` from `group`.
    pub fn leave(&mut self, group: &str, agent: &str) -> Result<bool> {
        let Some(mut members) = self.groups.get(group).cloned() else {
            return Ok(false);
        };
        if !members.remove(agent) {
            return Ok(false);
        }
        if let Some(store) = &self.store {
            store.put(&format!("group/{group}"), &members)?;
        }
        self.groups.insert(group.to_string(), members);
        Ok(true)
    }

    pub fn members(&self, group: &str) -> Vec<String> {
        self.groups
            .get(group)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The entry under `key`, read by `reader` (which becomes the reader's context for its next
    /// write there).
    pub fn get(&mut self, area: &Area, key: &str, reader: &str) -> Result<Option<Entry>> {
        self.check_access(area, reader)?;
        let entry = self.entries.get(&(area.clone(), key.to_string())).cloned();
        if let Some(e) = &entry {
            self.sessions
                .insert((reader.to_string(), area.clone(), key.to_string()), e.clock.clone());
        }
        Ok(entry)
    }

    /// Entries of `area` whose key starts with `prefix`, in key order, as `reader` may see them.
    pub fn list(&self, area: &Area, prefix: &str, reader: &str) -> Result<Vec<Entry>> {
        self.check_access(area, reader)?;
        Ok(self
            .entries
            .range((area.clone(), prefix.to_string())..)
            .take_while(|((a, k), _)| a == area && k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect())
    }

    /// Entries of every area whose key starts with `prefix`, in area then key order: the
    /// operator's view (no membership check, no session recorded).
    pub fn list_all(&self, prefix: &str) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|((_, k), _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Writes `value` under `key` as `author`, based on what the author last read or wrote there
    /// (see the module docs).
    pub fn put(&mut self, area: &Area, key: &str, value: serde_json::Value, author: &str, now_ms: u64) -> Result<Put> {
        let context = self
            .sessions
            .get(&(author.to_string(), area.clone(), key.to_string()))
            .cloned();
        self.put_with_context(area, key, value, author, context.as_ref(), now_ms)
    }

    /// Writes `value` under `key` as `author`, based on `context` (the entry's clock as the author
    /// read it; `None`: the author has not seen the key).
    pub fn put_with_context(
        &mut self,
        area: &Area,
        key: &str,
        value: serde_json::Value,
        author: &str,
        context: Option<&VClock>,
        now_ms: u64,
    ) -> Result<Put> {
        self.check_write(area, key, &value, author)?;
        let lamport = self.lamport + 1;
        let slot = (area.clone(), key.to_string());
        let empty = VClock::default();
        let context = context.unwrap_or(&empty);
        let (entry, conflict) = match self.entries.get(&slot) {
            Some(current) if !context.dominates(&current.clock) => {
                // Concurrent: keep the new value beside the current one.
                let mut entry = current.clone();
                entry.siblings.push(Sibling {
                    value,
                    author: author.to_string(),
                    lamport,
                    written_ms: now_ms,
                });
                entry.clock.merge(context);
                entry.clock.tick(author);
                (entry, true)
            }
            current => {
                let mut clock = current.map(|c| c.clock.clone()).unwrap_or_default();
                clock.merge(context);
                clock.tick(author);
                let entry = Entry {
                    area: area.clone(),
                    key: key.to_string(),
                    value,
                    author: author.to_string(),
                    lamport,
                    clock,
                    written_ms: now_ms,
                    siblings: Vec::new(),
                };
                (entry, false)
            }
        };
        self.commit(entry.clone())?;
        self.lamport = lamport;
        self.stats.writes += 1;
        // The author has seen its own write: a conflict it caused stays until someone reads
        // the entry and writes with that context (a deliberate resolution).
        let mut seen = context.clone();
        seen.tick_to(author, entry.clock.0.get(author).copied().unwrap_or(0));
        self.sessions
            .insert((author.to_string(), area.clone(), key.to_string()), seen);
        if conflict {
            self.stats.conflicts += 1;
            tracing::debug!(%area, key, author, "concurrent blackboard write kept as a sibling");
            Ok(Put::Conflict(entry))
        } else {
            Ok(Put::Written(entry))
        }
    }

    /// Writes `value` under `key` only if the entry's Lamport number is `expected` (`None`: only
    /// if the key is absent) and the entry is not in conflict.
    pub fn compare_and_swap(
        &mut self,
        area: &Area,
        key: &str,
        expected: Option<u64>,
        value: serde_json::Value,
        author: &str,
        now_ms: u64,
    ) -> Result<Cas> {
        self.check_write(area, key, &value, author)?;
        let current = self.entries.get(&(area.clone(), key.to_string())).cloned();
        let matches = match (&current, expected) {
            (None, None) => true,
            (Some(e), Some(v)) => e.lamport == v && !e.in_conflict(),
            _ => false,
        };
        if !matches {
            self.stats.cas_failures += 1;
            return Ok(Cas::Failed { current });
        }
        let context = current.map(|e| e.clock);
        match self.put_with_context(area, key, value, author, context.as_ref(), now_ms)? {
            Put::Written(e) => Ok(Cas::Swapped(e)),
            Put::Conflict(_) => unreachable!("a write with the entry's own clock supersedes it"),
        }
    }

    /// Removes `key` when `author` may write `area`; returns the entry removed.
    pub fn remove(&mut self, area: &Area, key: &str, author: &str) -> Result<Option<Entry>> {
        self.check_access(area, author)?;
        let slot = (area.clone(), key.to_string());
        if !self.entries.contains_key(&slot) {
            return Ok(None);
        }
        if let Some(store) = &self.store {
            // The newest Lamport number may have been the removed entry's: kept, so that numbers
            // never repeat after a restart.
            store.put(LAMPORT_KEY, &self.lamport)?;
            store.remove(&store_key(area, key))?;
        }
        let removed = self.entries.remove(&slot);
        self.refresh_counts();
        Ok(removed)
    }

    pub fn stats(&self) -> BoardStats {
        self.stats.clone()
    }

    /// The newest Lamport number written.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    fn commit(&mut self, entry: Entry) -> Result<()> {
        if let Some(store) = &self.store {
            store.put(&store_key(&entry.area, &entry.key), &entry)?;
        }
        self.entries.insert((entry.area.clone(), entry.key.clone()), entry);
        self.refresh_counts();
        Ok(())
    }

    fn refresh_counts(&mut self) {
        self.stats.entries = self.entries.len();
        self.stats.in_conflict = self.entries.values().filter(|e| e.in_conflict()).count();
    }

    fn check_write(&self, area: &Area, key: &str, value: &serde_json::Value, author: &str) -> Result<()> {
        self.check_access(area, author)?;
        check_name("key", key)?;
        let bytes = value.to_string().len();
        if bytes > MAX_VALUE_BYTES {
            return Err(SyncError::TooLarge {
                bytes,
                limit: MAX_VALUE_BYTES,
            });
        }
        Ok(())
    }

    fn check_access(&self, area: &Area, agent: &str) -> Result<()> {
        match area {
            Area::Public => Ok(()),
            Area::Group(group) if self.groups.get(group).is_some_and(|m| m.contains(agent)) => Ok(()),
            Area::Group(group) => Err(SyncError::NotMember {
                agent: agent.to_string(),
                group: group.clone(),
            }),
        }
    }
}

impl VClock {
    fn tick_to(&mut self, author: &str, n: u64) {
        let m = self.0.entry(author.to_string()).or_insert(0);
        *m = (*m).max(n);
    }
}

fn store_key(area: &Area, key: &str) -> String {
    match area {
        Area::Public => format!("bb/public/{key}"),
        Area::Group(g) => format!("bb/group/{g}/{key}"),
    }
}

/// Names (keys, groups) are non-empty, bounded, and free of control characters.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_KEY_BYTES {
        "it is over 256 bytes"
    } else if name.chars().any(char::is_control) {
        "it holds a control character"
    } else if what == "group" && name.contains('/') {
        "a group name cannot hold '/'"
    } else {
        return Ok(());
    };
    Err(SyncError::InvalidName {
        what,
        name: name.chars().take(64).collect(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: Area = Area::Public;

    #[test]
    fn a_writer_that_read_the_entry_supersedes_it() {
        let mut bb = Blackboard::in_memory();
        assert!(matches!(
            bb.put(&P, "plan", json!("v1"), "a", 1).unwrap(),
            Put::Written(_)
        ));
        // a wrote it, so a has seen it: its next write supersedes.
        assert!(matches!(
            bb.put(&P, "plan", json!("v2"), "a", 2).unwrap(),
            Put::Written(_)
        ));
        // b reads, then writes: supersedes too.
        assert_eq!(bb.get(&P, "plan", "b").unwrap().unwrap().value, json!("v2"));
        let e = bb.put(&P, "plan", json!("v3"), "b", 3).unwrap();
        assert!(matches!(e, Put::Written(_)));
        assert_eq!(e.entry().clock.0, BTreeMap::from([("a".into(), 2), ("b".into(), 1)]));
        assert_eq!(bb.stats().conflicts, 0);
    }

    #[test]
    fn concurrent_writes_are_kept_as_a_conflict_and_a_later_read_resolves_it() {
        let mut bb = Blackboard::in_memory();
        bb.put(&P, "answer", json!("42"), "a", 1).unwrap();
        bb.get(&P, "answer", "b").unwrap();
        bb.get(&P, "answer", "c").unwrap();
        // b and c both write on top of what they read: the second is concurrent with the first.
        assert!(matches!(
            bb.put(&P, "answer", json!("41"), "b", 2).unwrap(),
            Put::Written(_)
        ));
        let conflict = bb.put(&P, "answer", json!("43"), "c", 3).unwrap();
        let Put::Conflict(entry) = conflict else {
            panic!("expected a conflict: {conflict:?}")
        };
        assert_eq!(entry.value, json!("41"));
        assert_eq!(entry.siblings.len(), 1);
        assert_eq!(entry.siblings[0].value, json!("43"));
        assert_eq!(bb.stats().in_conflict, 1);
        // A blind writer (never read the key) cannot resolve it either.
        assert!(matches!(
            bb.put(&P, "answer", json!("x"), "d", 4).unwrap(),
            Put::Conflict(_)
        ));
        // Reading the entry with its siblings, then writing, resolves the conflict.
        bb.get(&P, "answer", "a").unwrap();
        let resolved = bb.put(&P, "answer", json!("42 (agreed)"), "a", 5).unwrap();
        assert!(
            matches!(resolved, Put::Written(ref e) if e.siblings.is_empty()),
            "{resolved:?}"
        );
        assert_eq!(bb.stats().in_conflict, 0);
        assert_eq!(bb.stats().conflicts, 2);
    }

    #[test]
    fn compare_and_swap_needs_the_expected_version() {
        let mut bb = Blackboard::in_memory();
        assert!(matches!(
            bb.compare_and_swap(&P, "lock", None, json!("a"), "a", 1).unwrap(),
            Cas::Swapped(_)
        ));
        // Absent expected but the key exists.
        let Cas::Failed { current } = bb.compare_and_swap(&P, "lock", None, json!("b"), "b", 2).unwrap() else {
            panic!("the key exists")
        };
        let version = current.unwrap().lamport;
        assert!(matches!(
            bb.compare_and_swap(&P, "lock", Some(version + 7), json!("b"), "b", 3)
                .unwrap(),
            Cas::Failed { .. }
        ));
        let Cas::Swapped(e) = bb
            .compare_and_swap(&P, "lock", Some(version), json!("b"), "b", 4)
            .unwrap()
        else {
            panic!("the version matched")
        };
        assert_eq!((e.value, e.author.as_str()), (json!("b"), "b"));
        assert_eq!(bb.stats().cas_failures, 2);
    }

    #[test]
    fn group_areas_are_for_members_only() {
        let mut bb = Blackboard::in_memory();
        let team = Area::Group("red".into());
        let err = bb.put(&team, "k", json!(1), "a", 1).unwrap_err();
        assert_eq!(
            err,
            SyncError::NotMember {
                agent: "a".into(),
                group: "red".into()
            }
        );
        bb.join("red", "a").unwrap();
        bb.put(&team, "k", json!(1), "a", 1).unwrap();
        assert!(bb.get(&team, "k", "b").is_err());
        assert_eq!(bb.get(&team, "k", "a").unwrap().unwrap().value, json!(1));
        assert!(
            bb.list(&P, "", "b").unwrap().is_empty(),
            "the group's key is not public"
        );
    }

    #[test]
    fn bad_keys_and_oversize_values_are_refused() {
        let mut bb = Blackboard::in_memory();
        for key in ["", "a\nb", &"k".repeat(300)] {
            assert!(matches!(
                bb.put(&P, key, json!(1), "a", 1),
                Err(SyncError::InvalidName { .. })
            ));
        }
        let big = json!("x".repeat(MAX_VALUE_BYTES + 1));
        assert!(matches!(bb.put(&P, "k", big, "a", 1), Err(SyncError::TooLarge { .. })));
        assert_eq!(bb.stats().entries, 0);
    }

    #[test]
    fn the_board_survives_reopening_with_conflicts_groups_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        {
            let store = Arc::new(SyncStore::open(&path).unwrap());
            let mut bb = Blackboard::open(store).unwrap();
            bb.join("g", "a").unwrap();
            bb.put(&Area::Group("g".into()), "secret", json!("s"), "a", 1).unwrap();
            bb.put(&P, "x", json!(1), "a", 2).unwrap();
            bb.put(&P, "x", json!(2), "b", 3).unwrap(); // blind: conflict
            bb.put(&P, "gone", json!(0), "a", 4).unwrap();
            bb.remove(&P, "gone", "a").unwrap();
        }
        let store = Arc::new(SyncStore::open(&path).unwrap());
        let mut bb = Blackboard::open(store).unwrap();
        assert_eq!(bb.members("g"), vec!["a".to_string()]);
        let x = bb.get(&P, "x", "c").unwrap().unwrap();
        assert!(x.in_conflict());
        assert!(bb.get(&P, "gone", "c").unwrap().is_none());
        assert_eq!(bb.lamport(), 4);
        let next = bb.put(&P, "y", json!(3), "c", 5).unwrap();
        assert_eq!(next.entry().lamport, 5, "the order continues after a restart");
        assert_eq!(bb.stats().in_conflict, 1);
    }
}
