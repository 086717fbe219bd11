//! `CheckpointStore`: agent state on disk, one file per agent, written atomically.
//!
//! A checkpoint file is `MAGIC (8) | format version (u32 LE) | payload length (u64 LE) |
//! SHA-256 of the payload (32) | payload (bincode, standard config)`. It is written to a temporary
//! file, synced and renamed over the old one, so a crash (even `kill -9`) leaves either the old
//! or the new checkpoint, never a torn one. Truncated or corrupted files are reported as
//! [`RuntimeError::Checkpoint`] with the reason, and left in place for inspection.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::{Result, RuntimeError};

const MAGIC: &[u8; 8] = b"AGOSCKPT";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// A directory of agent checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    /// Opens (creating if needed) a checkpoint directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| RuntimeError::Checkpoint {
            path: dir.clone(),
            reason: format!("cannot create the directory: {e}"),
        })?;
        Ok(CheckpointStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `name`'s checkpoint. Names are hex-escaped where they are not plain
    /// `[A-Za-z0-9_-]`, so any agent name maps to one safe file name.
    pub fn path_of(&self, name: &str) -> PathBuf {
        let mut file = String::with_capacity(name.len() + 5);
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                file.push(b as char);
            } else {
                file.push_str(&format!("%{b:02x}"));
            }
        }
        file.push_str(".ckpt");
        self.dir.join(file)
    }

    /// Writes `value` as `name`'s checkpoint, replacing the previous one atomically.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.path_of(name);
        let error = |reason: String| RuntimeError::Checkpoint {
            path: path.clone(),
            reason,
        };
        let payload = bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|e| error(format!("cannot encode the state: {e}")))?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(&payload));
        bytes.extend_from_slice(&payload);

        let tmp = path.with_extension("ckpt.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| error(format!("cannot write: {e}")))
    }

    /// Reads `name`'s checkpoint; `Ok(None)` when there is none.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.path_of(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RuntimeError::Checkpoint {
                    path,
                    reason: format!("cannot read: {e}"),
                });
            }
        };
        decode(&bytes)
            .map(Some)
            .map_err(|reason| RuntimeError::Checkpoint { path, reason })
    }

    /// Deletes `name`'s checkpoint if there is one.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.path_of(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::Checkpoint {
                path,
                reason: format!("cannot delete: {e}"),
            }),
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "truncated: {} bytes, a checkpoint header alone is {HEADER_LEN}",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("not an agentos checkpoint (bad magic)".to_string());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads version {FORMAT_VERSION}"
        ));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(format!(
            "truncated or padded: the header promises {len} payload bytes, the file has {}",
            payload.len()
        ));
    }
    if Sha256::digest(payload).as_slice() != &bytes[20..52] {
        return Err("corrupted: the payload does not match its SHA-256".to_string());
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|e| format!("cannot decode the state (did the agent's struct change?): {e}"))?;
    if used != payload.len() {
        return Err(format!(
            "cannot decode the state: {} trailing bytes (did the agent's struct change?)",
            payload.len() - used
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        notes: Vec<String>,
        turns: u64,
    }

    fn state() -> State {
        State {
            notes: vec!["one".into(), "two".into()],
            turns: 7,
        }
    }

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(store.load::<State>("a").unwrap(), None);
        store.save("a", &state()).unwrap();
        assert_eq!(store.load::<State>("a").unwrap(), Some(state()));
        let newer = State {
            notes: vec![],
            turns: 8,
        };
        store.save("a", &newer).unwrap();
        assert_eq!(store.load::<State>("a").unwrap(), Some(newer));
        store.remove("a").unwrap();
        assert_eq!(store.load::<State>("a").unwrap(), None);
    }

    #[test]
    fn every_truncation_and_a_flipped_byte_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.save("a", &state()).unwrap();
        let path = store.path_of("a");
        let bytes = fs::read(&path).unwrap();
        for len in 0..bytes.len() {
            fs::write(&path, &bytes[..len]).unwrap();
            let err = store.load::<State>("a").unwrap_err();
            assert!(matches!(err, RuntimeError::Checkpoint { .. }), "len {len}: {err}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        let err = store.load::<State>("a").unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");
    }

    #[test]
    fn names_map_to_distinct_safe_files() {
        let store = CheckpointStore {
            dir: PathBuf::from("/x"),
        };
        assert_eq!(store.path_of("Researcher-1"), PathBuf::from("/x/Researcher-1.ckpt"));
        assert_eq!(store.path_of("../etc"), PathBuf::from("/x/%2e%2e%2fetc.ckpt"));
        assert_ne!(store.path_of("a b"), store.path_of("a_b"));
    }
}
