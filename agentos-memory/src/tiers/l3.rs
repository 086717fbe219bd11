//! L3: the durable knowledge base, one redb file.
//!
//! It holds every page body, embedding and page-table entry. A write is acknowledged only after
//! its transaction is committed with `Durability::Immediate` (fsynced), so an acknowledged page
//! survives `kill -9` and power loss. Every commit uses redb's quick-repair mode (2-phase commit
//! plus the allocator state saved in the commit), so reopening after a crash needs no repair
//! scan; [`L3Store::open`] reports whether one ran. Records carry a SHA-256 of their bytes, and
//! the file's integrity is checked on open: damage is a [`MemoryError::Corrupt`] that names the
//! file, never a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::{MemoryError, Result};
use crate::page::{CognitivePage, PageEntry, PageId};

const PAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("pages");
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("page_table");

/// The knowledge base file.
pub struct L3Store {
    db: Database,
    path: PathBuf,
}

/// What opening the store found.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenReport {
    /// Whether redb had to run a repair scan (it should not after a crash: see the module docs).
    pub repaired: bool,
    pub pages: usize,
}

impl L3Store {
    /// Opens the store at `path`, creating it (and its directory) when missing.
    pub fn open(path: &Path) -> Result<(L3Store, OpenReport)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| MemoryError::Store {
                path: path.to_path_buf(),
                detail: format!("cannot create its directory: {e}"),
            })?;
        }
        let repaired = Arc::new(AtomicBool::new(false));
        let flag = repaired.clone();
        // redb documents that a plain open may panic on a file damaged outside redb: catch_unwind
        // turns that into an error, and the integrity check below (every page's checksum) catches
        // the damage a plain open does not look at.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut db = Database::builder()
                .set_repair_callback(move |_| flag.store(true, Ordering::Relaxed))
                .create(path)?;
            let intact = db.check_integrity()?;
            Ok::<_, redb::Error>((db, intact))
        }));
        let db = match opened {
            Ok(Ok((db, true))) => db,
            Ok(Ok((_, false))) => {
                return Err(MemoryError::Corrupt {
                    path: path.to_path_buf(),
                    detail:
                        "pages failed their checksums (the database engine repaired what it could; data may be missing)"
                            .into(),
                });
            }
            Ok(Err(e)) => return Err(open_error(path, e)),
            Err(_) => {
                return Err(MemoryError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the database engine rejected the file".into(),
                });
            }
        };
        let store = L3Store {
            db,
            path: path.to_path_buf(),
        };
        // Create the tables so later reads find them.
        store.write(|_, _| Ok(()))?;
        let pages = store.count_entries()?;
        Ok((
            store,
            OpenReport {
                repaired: repaired.load(Ordering::Relaxed),
                pages,
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes pages and entries in one durable transaction; returns once it is on disk.
    pub fn write_pages(&self, pages: &[CognitivePage], entries: &[PageEntry]) -> Result<()> {
        self.write(|page_table, entry_table| {
            for p in pages {
                page_table.insert(p.id.0, seal(p).as_slice())?;
            }
            for e in entries {
                entry_table.insert(e.id.0, seal(e).as_slice())?;
            }
            Ok(())
        })
    }

    /// Updates page-table entries (tier moves, access counts) in one durable transaction.
    pub fn write_entries(&self, entries: &[PageEntry]) -> Result<()> {
        self.write_pages(&[], entries)
    }

    /// The bodies of the given pages; a missing id is an error (the page table said it exists).
    pub fn read_pages(&self, ids: &[PageId]) -> Result<Vec<CognitivePage>> {
        let txn = self.db.begin_read().map_err(|e| self.store_error(e))?;
        let table = txn.open_table(PAGES).map_err(|e| self.store_error(e))?;
        ids.iter()
            .map(|id| {
                let value = table
                    .get(id.0)
                    .map_err(|e| self.store_error(e))?
                    .ok_or_else(|| self.corrupt(format!("{id} is in the page table but its body is missing")))?;
                self.unseal(value.value(), &format!("the body of {id}"))
            })
            .collect()
    }

    /// How many page-table entries there are (without decoding them).
    fn count_entries(&self) -> Result<usize> {
        let txn = self.db.begin_read().map_err(|e| self.store_error(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.store_error(e))?;
        Ok(table.len().map_err(|e| self.store_error(e))? as usize)
    }

    /// Every page-table entry.
    pub fn read_entries(&self) -> Result<Vec<PageEntry>> {
        self.read_all(ENTRIES, "a page-table entry")
    }

    /// Every page body.
    pub fn read_all_pages(&self) -> Result<Vec<CognitivePage>> {
        self.read_all(PAGES, "a page body")
    }

    fn read_all<T: DeserializeOwned>(&self, def: TableDefinition<u64, &[u8]>, what: &str) -> Result<Vec<T>> {
        let txn = self.db.begin_read().map_err(|e| self.store_error(e))?;
        let table = txn.open_table(def).map_err(|e| self.store_error(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.store_error(e))? {
            let (_, value) = row.map_err(|e| self.store_error(e))?;
            out.push(self.unseal(value.value(), what)?);
        }
        Ok(out)
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<u64, &[u8]>, &mut redb::Table<u64, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(|e| self.store_error(e))?;
        txn.set_quick_repair(true);
        {
            let mut pages = txn.open_table(PAGES).map_err(|e| self.store_error(e))?;
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.store_error(e))?;
            f(&mut pages, &mut entries).map_err(|e| self.store_error(e))?;
        }
        txn.commit().map_err(|e| self.store_error(e))
    }

    fn unseal<T: DeserializeOwned>(&self, bytes: &[u8], what: &str) -> Result<T> {
        if bytes.len() < 32 {
            return Err(self.corrupt(format!("{what} is {} bytes, shorter than its checksum", bytes.len())));
        }
        let (sum, body) = bytes.split_at(32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(self.corrupt(format!("{what} fails its checksum")));
        }
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| self.corrupt(format!("{what} cannot be decoded: {e}")))
    }

    fn store_error(&self, e: impl Into<redb::Error>) -> MemoryError {
        open_error(&self.path, e.into())
    }

    fn corrupt(&self, detail: String) -> MemoryError {
        MemoryError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }
}

/// Bytes of a record: SHA-256 of the payload, then the bincode payload.
fn seal<T: Serialize>(value: &T) -> Vec<u8> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("pages are serialisable");
    let mut out = Vec::with_capacity(32 + body.len());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    out
}

fn open_error(path: &Path, e: impl Into<redb::Error>) -> MemoryError {
    let e: redb::Error = e.into();
    let corrupt = match &e {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) | redb::Error::RepairAborted => true,
        redb::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::InvalidData || io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    };
    if corrupt {
        MemoryError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    } else {
        MemoryError::Store {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    }
}

/// Messages of the [`L3Actor`].
pub enum L3Msg {
    /// Persist pages and their entries; the reply comes after the commit is durable.
    Write {
        pages: Vec<CognitivePage>,
        entries: Vec<PageEntry>,
        reply: RpcReplyPort<Result<()>>,
    },
    /// Persist entry updates (tier moves, access counts).
    WriteEntries {
        entries: Vec<PageEntry>,
        reply: RpcReplyPort<Result<()>>,
    },
    Read {
        ids: Vec<PageId>,
        reply: RpcReplyPort<Result<Vec<CognitivePage>>>,
    },
    /// Every entry and body (L2 loads them at start).
    LoadAll(RpcReplyPort<Result<(Vec<PageEntry>, Vec<CognitivePage>)>>),
}

/// Owns the [`L3Store`]. A failed open fails the actor's start, so its supervisor sees it.
#[derive(Debug, Clone, Copy)]
pub struct L3Actor;

#[ractor::async_trait]
impl Actor for L3Actor {
    type Msg = L3Msg;
    type State = L3Store;
    type Arguments = PathBuf;

    async fn pre_start(&self, _myself: ActorRef<L3Msg>, path: PathBuf) -> Result<L3Store, ActorProcessingErr> {
        let (store, report) = L3Store::open(&path)?;
        tracing::info!(path = %path.display(), pages = report.pages, repaired = report.repaired, "memory store opened");
        Ok(store)
    }

    async fn handle(
        &self,
        _myself: ActorRef<L3Msg>,
        msg: L3Msg,
        store: &mut L3Store,
    ) -> Result<(), ActorProcessingErr> {
        // A commit blocks this actor for one fsync (about a millisecond on an SSD); it is the
        // acknowledgement the callers wait for, so there is nothing to overlap it with.
        match msg {
            L3Msg::Write { pages, entries, reply } => {
                let r = store.write_pages(&pages, &entries);
                let _ = reply.send(r);
            }
            L3Msg::WriteEntries { entries, reply } => {
                let r = store.write_entries(&entries);
                let _ = reply.send(r);
            }
            L3Msg::Read { ids, reply } => {
                let _ = reply.send(store.read_pages(&ids));
            }
            L3Msg::LoadAll(reply) => {
                let r = store.read_entries().and_then(|e| Ok((e, store.read_all_pages()?)));
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{ContentHash, Tier};

    pub(crate) fn page(id: u64, text: &str) -> CognitivePage {
        CognitivePage {
            id: PageId(id),
            owner: "a".into(),
            text: text.into(),
            tokens: 3,
            span: (0, 3),
            density: 0.5,
            created_turn: 1,
            hash: ContentHash::of("a", text),
            embedding: vec![0.25; 8],
        }
    }

    #[test]
    fn pages_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.redb");
        {
            let (store, report) = L3Store::open(&path).unwrap();
            assert_eq!(report.pages, 0);
            let pages = [page(1, "one"), page(2, "two")];
            let entries: Vec<PageEntry> = pages.iter().map(|p| PageEntry::new(p, Tier::L2)).collect();
            store.write_pages(&pages, &entries).unwrap();
        }
        let (store, report) = L3Store::open(&path).unwrap();
        assert_eq!(
            report,
            OpenReport {
                repaired: false,
                pages: 2
            }
        );
        assert_eq!(store.read_pages(&[PageId(2)]).unwrap()[0].text, "two");
        assert!(matches!(
            store.read_pages(&[PageId(9)]),
            Err(MemoryError::Corrupt { .. })
        ));
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.redb");
        {
            let (store, _) = L3Store::open(&path).unwrap();
            let pages: Vec<CognitivePage> = (0..50)
                .map(|i| page(i, &format!("page number {i} ").repeat(20)))
                .collect();
            let entries: Vec<PageEntry> = pages.iter().map(|p| PageEntry::new(p, Tier::L2)).collect();
            store.write_pages(&pages, &entries).unwrap();
        }
        let original = std::fs::read(&path).unwrap();
        let damaged = dir.path().join("damaged.redb");
        let mut outcomes = (0, 0);
        // Truncations at many lengths, and bytes flipped across the file.
        let mut cases: Vec<Vec<u8>> = (1..24).map(|i| original[..original.len() * i / 24].to_vec()).collect();
        for i in 1..24 {
            let mut bytes = original.clone();
            let at = bytes.len() * i / 24;
            for b in &mut bytes[at..(at + 64).min(original.len())] {
                *b ^= 0xA5;
            }
            cases.push(bytes);
        }
        for bytes in cases {
            std::fs::write(&damaged, &bytes).unwrap();
            match L3Store::open(&damaged).and_then(|(s, _)| s.read_all_pages().map(|_| ())) {
                Ok(()) => outcomes.0 += 1,
                Err(MemoryError::Corrupt { path, .. }) => {
                    assert_eq!(path, damaged);
                    outcomes.1 += 1;
                }
                Err(other) => panic!("damage must read as corruption, got {other}"),
            }
        }
        // Flips in unused space may go unnoticed; damage to the data must not.
        assert!(outcomes.1 >= 23, "{outcomes:?}");
    }
}
