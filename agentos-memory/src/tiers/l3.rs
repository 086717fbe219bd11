//! L3: the durable knowledge base, one redb file.
//!
//! It holds every page body, embedding and page-table entry, and for every page an index record
//! (owner, words, f16 embedding: what [`PageIndex`] needs, under half a body's bytes), written in
//! the same transaction as the page, so L2 builds its index at start without reading a body, in
//! chunks of [`LOAD_CHUNK_PAGES`] pages ([`L3Msg::LoadIndex`]): each request is a bounded piece
//! of work, so the tier timeout keeps meaning "L3 is stuck" whatever the store's size. A
//! store written before it had index records gets them built from the pages once, at open, in one
//! transaction ([`OpenReport::indexed`]); one written with a newer index format is an error that
//! says so.
//!
//! A write is acknowledged only after its transaction is committed with `Durability::Immediate`
//! (fsynced), so an acknowledged page survives `kill -9` and power loss. Every commit uses redb's
//! quick-repair mode (2-phase commit plus the allocator state saved in the commit), so reopening
//! after a crash needs no repair scan; [`L3Store::open`] reports whether one ran. Records carry a
//! SHA-256 of their bytes, and the file's integrity is checked on open: damage is a
//! [`MemoryError::Corrupt`] that names the file, never a panic.

use std::ops::Bound;
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
use crate::index::{PageIndex, embedding_to_f16, words};
use crate::page::{CognitivePage, PageEntry, PageId};

const PAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("pages");
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("page_table");
/// Page id → the page's index record ([`index_record`]).
const INDEX: TableDefinition<u64, &[u8]> = TableDefinition::new("page_index");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INDEX_FORMAT_KEY: &str = "index_format";
/// Version of the index records: their layout and the word rule of [`words`]. Records of an older
/// version (or none) are rebuilt from the pages at open.
const INDEX_FORMAT: u64 = 1;

/// redb's page cache. Its default (1 GiB) would grow to the whole file as the integrity check at
/// open and L2's start read it once; pages are read again only on faults and duplicate lookups,
/// which the operating system's file cache serves as well.
const CACHE_BYTES: usize = 64 << 20;

/// Pages per [`L3Msg::LoadIndex`] request: tens of milliseconds of work in an optimised build,
/// seconds in an unoptimised one, far from the tier timeout in both, whatever the store's size.
pub const LOAD_CHUNK_PAGES: usize = 8192;

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
    /// Index records built from the pages at this open (0 unless the store was written before
    /// it had them, or by an older index format).
    pub indexed: usize,
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
                .set_cache_size(CACHE_BYTES)
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
        store.write(|_| Ok(()))?;
        let indexed = store.build_index()?;
        let pages = store.count_entries()?;
        Ok((
            store,
            OpenReport {
                repaired: repaired.load(Ordering::Relaxed),
                pages,
                indexed,
            },
        ))
    }

    /// Builds the index records that are missing (all of them when their format is older), in one
    /// transaction; returns how many.
    fn build_index(&self) -> Result<usize> {
        let (format, complete) = {
            let txn = self.db.begin_read().map_err(|e| self.store_error(e))?;
            let meta = txn.open_table(META).map_err(|e| self.store_error(e))?;
            let format = meta
                .get(INDEX_FORMAT_KEY)
                .map_err(|e| self.store_error(e))?
                .map(|v| v.value());
            let pages = txn.open_table(PAGES).map_err(|e| self.store_error(e))?;
            let index = txn.open_table(INDEX).map_err(|e| self.store_error(e))?;
            let complete =
                pages.len().map_err(|e| self.store_error(e))? == index.len().map_err(|e| self.store_error(e))?;
            (format, complete)
        };
        match format {
            Some(v) if v > INDEX_FORMAT => {
                return Err(MemoryError::Store {
                    path: self.path.clone(),
                    detail: format!(
                        "its page index has format {v}, newer than this build of agentos reads ({INDEX_FORMAT}); open it with the newer agentos that wrote it"
                    ),
                });
            }
            Some(INDEX_FORMAT) if complete => return Ok(0),
            _ => {}
        }
        let rebuild = format != Some(INDEX_FORMAT);
        let mut txn = self.db.begin_write().map_err(|e| self.store_error(e))?;
        txn.set_quick_repair(true);
        let mut built = 0;
        {
            let pages = txn.open_table(PAGES).map_err(|e| self.store_error(e))?;
            let mut index = txn.open_table(INDEX).map_err(|e| self.store_error(e))?;
            if rebuild {
                index.retain(|_, _| false).map_err(|e| self.store_error(e))?;
            }
            for row in pages.iter().map_err(|e| self.store_error(e))? {
                let (id, value) = row.map_err(|e| self.store_error(e))?;
                if !rebuild && index.get(id.value()).map_err(|e| self.store_error(e))?.is_some() {
                    continue;
                }
                let page: CognitivePage = self.unseal(value.value(), "a page body")?;
                index
                    .insert(page.id.0, index_record(&page).as_slice())
                    .map_err(|e| self.store_error(e))?;
                built += 1;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.store_error(e))?;
            meta.insert(INDEX_FORMAT_KEY, INDEX_FORMAT)
                .map_err(|e| self.store_error(e))?;
        }
        txn.commit().map_err(|e| self.store_error(e))?;
        if built > 0 {
            tracing::info!(path = %self.path.display(), records = built, "memory store: index records built from the pages");
        }
        Ok(built)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes pages (with their index records) and entries in one durable transaction; returns
    /// once it is on disk.
    pub fn write_pages(&self, pages: &[CognitivePage], entries: &[PageEntry]) -> Result<()> {
        self.write(|tables| {
            for p in pages {
                tables.pages.insert(p.id.0, seal(p).as_slice())?;
                tables.index.insert(p.id.0, index_record(p).as_slice())?;
            }
            for e in entries {
                tables.entries.insert(e.id.0, seal(e).as_slice())?;
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

    /// Every page-table entry, and every page's index record added to `index` (in id order),
    /// without reading a page body: [`L3Store::read_index_chunk`] until the last chunk.
    pub fn read_index(&self, mut index: PageIndex) -> Result<(Vec<PageEntry>, PageIndex)> {
        let mut entries = Vec::new();
        let mut after = None;
        loop {
            let chunk = self.read_index_chunk(index, after, LOAD_CHUNK_PAGES)?;
            entries.extend(chunk.entries);
            index = chunk.index;
            match chunk.next {
                Some(next) => after = Some(next),
                None => return Ok((entries, index)),
            }
        }
    }

    /// The index records of the next `limit` pages after `after` (from the first page when
    /// `None`) added to `index` in id order, and the page-table entries of the same id range,
    /// without reading a page body. Chunks read in turn, from `None` until `next` is `None`,
    /// give what one pass over the whole store gives, as long as nothing is written between them
    /// (L2, the store's only writer, loads before it writes). An entry without a record is
    /// corruption (they are written with the page, in one transaction).
    pub fn read_index_chunk(&self, mut index: PageIndex, after: Option<PageId>, limit: usize) -> Result<IndexChunk> {
        let limit = limit.max(1);
        let txn = self.db.begin_read().map_err(|e| self.store_error(e))?;
        let records = txn.open_table(INDEX).map_err(|e| self.store_error(e))?;
        if after.is_none() {
            index.reserve(records.len().map_err(|e| self.store_error(e))? as usize);
        }
        let lower = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.0));
        let (mut read, mut last) = (0usize, None);
        let range = records
            .range::<u64>((lower, Bound::Unbounded))
            .map_err(|e| self.store_error(e))?;
        for row in range.take(limit) {
            let (id, value) = row.map_err(|e| self.store_error(e))?;
            let id = PageId(id.value());
            let record = self.read_index_record(value.value(), id)?;
            index.insert_words(id, record.owner, &record.words, &record.embedding);
            read += 1;
            last = Some(id);
        }
        // Fewer records than asked for: this was the last chunk, and its entries run to the end.
        let next = if read == limit { last } else { None };
        let upper = next.map_or(Bound::Unbounded, |id| Bound::Included(id.0));
        let table = txn.open_table(ENTRIES).map_err(|e| self.store_error(e))?;
        let mut entries = Vec::new();
        for row in table.range::<u64>((lower, upper)).map_err(|e| self.store_error(e))? {
            let (_, value) = row.map_err(|e| self.store_error(e))?;
            let entry: PageEntry = self.unseal(value.value(), "a page-table entry")?;
            if !index.contains(entry.id) {
                return Err(self.corrupt(format!("{} is in the page table but its page is missing", entry.id)));
            }
            entries.push(entry);
        }
        Ok(IndexChunk { entries, index, next })
    }

    fn read_index_record<'a>(&self, bytes: &'a [u8], id: PageId) -> Result<IndexRecord<'a>> {
        let bad = |detail: &str| self.corrupt(format!("the index record of {id} {detail}"));
        if bytes.len() < 32 {
            return Err(bad("is shorter than its checksum"));
        }
        let (sum, body) = bytes.split_at(32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(bad("fails its checksum"));
        }
        let mut r = Reader { bytes: body };
        let decode = |r: &mut Reader<'a>| -> Option<IndexRecord<'a>> {
            let owner = r.str()?;
            let n = r.u32()? as usize;
            let words = (0..n).map(|_| r.str()).collect::<Option<Vec<_>>>()?;
            let dim = r.u32()? as usize;
            let embedding = r
                .take(dim.checked_mul(2)?)?
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            r.bytes.is_empty().then_some(IndexRecord {
                owner,
                words,
                embedding,
            })
        };
        decode(&mut r).ok_or_else(|| bad("cannot be decoded"))
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

    fn write(&self, f: impl FnOnce(&mut Tables<'_>) -> Result<(), redb::StorageError>) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(|e| self.store_error(e))?;
        txn.set_quick_repair(true);
        {
            let mut tables = Tables {
                pages: txn.open_table(PAGES).map_err(|e| self.store_error(e))?,
                entries: txn.open_table(ENTRIES).map_err(|e| self.store_error(e))?,
                index: txn.open_table(INDEX).map_err(|e| self.store_error(e))?,
            };
            txn.open_table(META).map_err(|e| self.store_error(e))?;
            f(&mut tables).map_err(|e| self.store_error(e))?;
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

/// One chunk of L2's start-up load ([`L3Store::read_index_chunk`]).
pub struct IndexChunk {
    /// The page-table entries of the chunk's id range.
    pub entries: Vec<PageEntry>,
    /// The index passed in, with the chunk's pages added.
    pub index: PageIndex,
    /// The id the next chunk starts after; `None` when this was the last chunk.
    pub next: Option<PageId>,
}

/// The tables a write changes.
struct Tables<'txn> {
    pages: redb::Table<'txn, u64, &'static [u8]>,
    entries: redb::Table<'txn, u64, &'static [u8]>,
    index: redb::Table<'txn, u64, &'static [u8]>,
}

/// A decoded index record, borrowing the stored bytes.
struct IndexRecord<'a> {
    owner: &'a str,
    words: Vec<&'a str>,
    embedding: Vec<u16>,
}

/// Bytes of a page's index record: SHA-256 of the payload, then the payload: the owner, every
/// word of the text ([`words`]: stopwords included, so changing the stopword list needs no
/// migration), the embedding in f16. Strings are a little-endian `u32` byte length and UTF-8,
/// the embedding a `u32` dimension and little-endian f16 values. Not bincode: decoding borrows
/// the strings, which keeps loading 100,000 records under a second.
fn index_record(page: &CognitivePage) -> Vec<u8> {
    let words = words(&page.text);
    let embedding = embedding_to_f16(&page.embedding);
    let mut body = Vec::with_capacity(16 + page.owner.len() + page.text.len() + words.len() * 4 + embedding.len() * 2);
    let put_str = |body: &mut Vec<u8>, s: &str| {
        body.extend_from_slice(&(s.len() as u32).to_le_bytes());
        body.extend_from_slice(s.as_bytes());
    };
    put_str(&mut body, &page.owner);
    body.extend_from_slice(&(words.len() as u32).to_le_bytes());
    for w in &words {
        put_str(&mut body, w);
    }
    body.extend_from_slice(&(embedding.len() as u32).to_le_bytes());
    for h in embedding {
        body.extend_from_slice(&h.to_le_bytes());
    }
    let mut out = Vec::with_capacity(32 + body.len());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    out
}

/// Reads the fields of an index record in order; `None` when they run past its end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
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
    /// The next [`LOAD_CHUNK_PAGES`] pages after `after` (from the first when `None`) added to
    /// `index`, and their entries, without reading a body: [`L3Store::read_index_chunk`]. L2
    /// loads the whole store at start by asking until `next` is `None`.
    LoadIndex {
        /// Boxed: an index is large beside the other messages.
        index: Box<PageIndex>,
        after: Option<PageId>,
        reply: RpcReplyPort<Result<IndexChunk>>,
    },
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
        tracing::info!(
            path = %path.display(),
            pages = report.pages,
            repaired = report.repaired,
            indexed = report.indexed,
            "memory store opened"
        );
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
            L3Msg::LoadIndex { index, after, reply } => {
                let _ = reply.send(store.read_index_chunk(*index, after, LOAD_CHUNK_PAGES));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

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
                pages: 2,
                indexed: 0,
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
            let read = |s: L3Store| {
                s.read_all_pages()?;
                s.read_index(PageIndex::new(0.4)).map(|_| ())
            };
            match L3Store::open(&damaged).and_then(|(s, _)| read(s)) {
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

    /// A store as the previous format wrote it: pages and entries, no index records.
    fn write_previous_format(path: &Path, pages: &[CognitivePage]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut page_table = txn.open_table(PAGES).unwrap();
            let mut entry_table = txn.open_table(ENTRIES).unwrap();
            for p in pages {
                page_table.insert(p.id.0, seal(p).as_slice()).unwrap();
                entry_table
                    .insert(p.id.0, seal(&PageEntry::new(p, Tier::L3)).as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn numbered_pages(n: u64) -> Vec<CognitivePage> {
        (1..=n)
            .map(|i| {
                let mut p = page(i, &format!("note {i} about subject{} and more", i % 7));
                p.embedding = (0..8).map(|d| ((i * 8 + d) % 11) as f32).collect();
                p
            })
            .collect()
    }

    #[test]
    fn a_store_of_the_previous_format_gets_its_index_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.redb");
        let pages = numbered_pages(40);
        write_previous_format(&path, &pages);

        let (store, report) = L3Store::open(&path).unwrap();
        assert_eq!((report.pages, report.indexed), (40, 40));
        let (entries, index) = store.read_index(PageIndex::new(0.4)).unwrap();
        assert_eq!((entries.len(), index.len()), (40, 40));
        // The index built from the records scores as one built from the pages themselves.
        let mut direct = PageIndex::new(0.4);
        for p in &pages {
            direct.insert(p.id, &p.owner, &p.text, p.embedding.clone());
        }
        let none = HashSet::new();
        let q = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let hits = index.search(&q, "subject3 note", Some("a"), &none, 5, 0.0);
        assert_eq!(hits, direct.search(&q, "subject3 note", Some("a"), &none, 5, 0.0));
        assert!(!hits.is_empty());
        drop(store);

        let (store, report) = L3Store::open(&path).unwrap();
        assert_eq!((report.pages, report.indexed), (40, 0));
        // Pages written now come with their records.
        let more = page(41, "a new page");
        store
            .write_pages(std::slice::from_ref(&more), &[PageEntry::new(&more, Tier::L2)])
            .unwrap();
        assert_eq!(store.read_index(PageIndex::new(0.4)).unwrap().1.len(), 41);
        drop(store);
        assert_eq!(L3Store::open(&path).unwrap().1.indexed, 0);
    }

    #[test]
    fn a_load_in_chunks_gives_what_one_pass_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.redb");
        let (store, _) = L3Store::open(&path).unwrap();
        let pages = numbered_pages(40);
        let entries: Vec<PageEntry> = pages.iter().map(|p| PageEntry::new(p, Tier::L2)).collect();
        store.write_pages(&pages, &entries).unwrap();
        let none = HashSet::new();
        let q = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let (_, whole) = store.read_index(PageIndex::new(0.4)).unwrap();
        let expected = whole.search(&q, "subject3 note", Some("a"), &none, 5, 0.0);
        // Chunks that divide the store, that do not, of one page, and of more than the store.
        for limit in [1, 7, 8, 40, 41] {
            let (mut index, mut after, mut loaded, mut chunks) = (PageIndex::new(0.4), None, Vec::new(), 0);
            loop {
                let chunk = store.read_index_chunk(index, after, limit).unwrap();
                loaded.extend(chunk.entries);
                index = chunk.index;
                chunks += 1;
                match chunk.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(loaded, entries, "limit {limit}");
            assert_eq!(index.len(), 40, "limit {limit}");
            assert_eq!(chunks, 40 / limit + 1, "limit {limit}");
            assert_eq!(
                index.search(&q, "subject3 note", Some("a"), &none, 5, 0.0),
                expected,
                "limit {limit}"
            );
        }
    }

    #[test]
    fn a_newer_index_format_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.redb");
        drop(L3Store::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(INDEX_FORMAT_KEY, INDEX_FORMAT + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        match L3Store::open(&path) {
            Err(MemoryError::Store { path: p, detail }) => {
                assert_eq!(p, path);
                assert!(detail.contains("newer"), "{detail}");
            }
            other => panic!("expected a store error, got {:?}", other.map(|(_, r)| r)),
        }
    }

    #[test]
    fn a_damaged_index_record_is_corruption_naming_the_file() {
        let pages = numbered_pages(3);
        let mut flipped = index_record(&pages[1]);
        *flipped.last_mut().unwrap() ^= 1;
        // A record whose checksum holds but whose fields run past its end.
        let body = vec![9u8, 0, 0, 0, b'a'];
        let mut short = Sha256::digest(&body).to_vec();
        short.extend_from_slice(&body);
        for (record, what) in [(flipped, "fails its checksum"), (short, "cannot be decoded")] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kb.redb");
            {
                let (store, _) = L3Store::open(&path).unwrap();
                let entries: Vec<PageEntry> = pages.iter().map(|p| PageEntry::new(p, Tier::L2)).collect();
                store.write_pages(&pages, &entries).unwrap();
                store
                    .write(|tables| tables.index.insert(2, record.as_slice()).map(|_| ()))
                    .unwrap();
            }
            let (store, _) = L3Store::open(&path).unwrap();
            match store.read_index(PageIndex::new(0.4)) {
                Err(MemoryError::Corrupt { path: p, detail }) => {
                    assert_eq!(p, path);
                    assert!(detail.contains("page#2") && detail.contains(what), "{detail}");
                }
                other => panic!("expected corruption, got {:?}", other.map(|(e, _)| e.len())),
            }
        }
    }
}
