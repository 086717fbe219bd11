//! The durable side of the coherence layer: one redb file of checksummed JSON records.
//!
//! Records are keyed by a string whose first segment names the kind (`bb/…` blackboard entries,
//! `group/…` group members, `leases`, `topics`, `pulse/…`). Each record is the SHA-256 of its
//! JSON body followed by the body, so damage outside redb is found when it is read. Every write
//! is its own committed (fsynced) transaction: what a call acknowledged survives `kill -9`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::{Result, SyncError};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// redb's page cache: the coherence data is small (entries, subscriptions, pulse records).
const CACHE_BYTES: usize = 16 << 20;

/// The sync store: checksummed records in one redb file.
pub struct SyncStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for SyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncStore").field("path", &self.path).finish()
    }
}

impl SyncStore {
    /// Opens the store at `path`, creating it (and its directory) when missing. A file that is
    /// not a redb database, or fails its integrity check, is a [`SyncError::Corrupt`].
    pub fn open(path: &Path) -> Result<SyncStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| SyncError::Store {
                path: path.to_path_buf(),
                detail: format!("cannot create its directory: {e}"),
            })?;
        }
        // redb documents that opening a file damaged outside redb may panic: catch_unwind turns
        // that into an error.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut db = Database::builder().set_cache_size(CACHE_BYTES).create(path)?;
            let intact = db.check_integrity()?;
            Ok::<_, redb::Error>((db, intact))
        }));
        let db = match opened {
            Ok(Ok((db, true))) => db,
            Ok(Ok((_, false))) => {
                return Err(SyncError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "pages failed their checksums".into(),
                });
            }
            Ok(Err(e)) => {
                return Err(SyncError::Store {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(SyncError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the database engine rejected the file".into(),
                });
            }
        };
        let store = SyncStore {
            db,
            path: path.to_path_buf(),
        };
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `value` under `key`, replacing what was there; durable when this returns.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let body = serde_json::to_vec(value).map_err(|e| self.error(format!("cannot encode {key}: {e}")))?;
        let mut sealed = Sha256::digest(&body).to_vec();
        sealed.extend_from_slice(&body);
        self.write(|table| table.insert(key, sealed.as_slice()).map(|_| ()))
    }

    /// Removes `key`; durable when this returns. Removing a missing key is not an error.
    pub fn remove(&self, key: &str) -> Result<()> {
        self.write(|table| table.remove(key).map(|_| ()))
    }

    /// The record under `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| self.error(e.to_string()))?;
        let table = txn.open_table(RECORDS).map_err(|e| self.error(e.to_string()))?;
        match table.get(key).map_err(|e| self.error(e.to_string()))? {
            Some(value) => self.unseal(key, value.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let txn = self.db.begin_read().map_err(|e| self.error(e.to_string()))?;
        let table = txn.open_table(RECORDS).map_err(|e| self.error(e.to_string()))?;
        let mut out = Vec::new();
        for row in table.range(prefix..).map_err(|e| self.error(e.to_string()))? {
            let (key, value) = row.map_err(|e| self.error(e.to_string()))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_string(), self.unseal(key, value.value())?));
        }
        Ok(out)
    }

    fn write(&self, f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<(), redb::StorageError>) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.error(e.to_string()))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| self.error(e.to_string()))?;
            f(&mut table).map_err(|e| self.error(e.to_string()))?;
        }
        txn.commit().map_err(|e| self.error(e.to_string()))
    }

    fn unseal<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T> {
        let corrupt = |detail: String| SyncError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        if bytes.len() < 32 {
            return Err(corrupt(format!("{key} is shorter than its checksum")));
        }
        let (sum, body) = bytes.split_at(32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(corrupt(format!("{key} fails its checksum")));
        }
        serde_json::from_slice(body).map_err(|e| corrupt(format!("{key} cannot be decoded: {e}")))
    }

    fn error(&self, detail: String) -> SyncError {
        SyncError::Store {
            path: self.path.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_scan_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        {
            let store = SyncStore::open(&path).unwrap();
            store.put("bb/a", &1u32).unwrap();
            store.put("bb/b", &2u32).unwrap();
            store.put("bc/c", &3u32).unwrap();
            store.put("leases", &vec!["x".to_string()]).unwrap();
            store.remove("bb/b").unwrap();
            store.remove("missing").unwrap();
        }
        let store = SyncStore::open(&path).unwrap();
        let bb: Vec<(String, u32)> = store.scan("bb/").unwrap();
        assert_eq!(bb, vec![("bb/a".to_string(), 1)]);
        assert_eq!(store.get::<Vec<String>>("leases").unwrap(), Some(vec!["x".to_string()]));
        assert_eq!(store.get::<u32>("nothing").unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        std::fs::write(&path, b"definitely not a database").unwrap();
        let err = SyncStore::open(&path).unwrap_err();
        assert!(
            matches!(err, SyncError::Corrupt { .. } | SyncError::Store { .. }),
            "{err:?}"
        );
    }
}
