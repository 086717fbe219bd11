//! The tamper-evident audit log: one JSON line per system call an agent makes (allowed, denied,
//! approved or refused), each line carrying the SHA-256 of the line before it.
//!
//! Format: a record is one line of JSON ([`AuditRecord`]) followed by `'\n'`. The hash of a
//! record is the SHA-256 of its exact line bytes (without the `'\n'`); the next record's `prev`
//! is that hash in lowercase hex, and the first record's `prev` is 64 zeros. `seq` counts
//! 0, 1, 2, ... So editing a byte of a record, deleting, duplicating, inserting or reordering
//! records breaks the chain, and [`verify`] reports the first line where it breaks.
//!
//! Limits of the chain (what it cannot see on its own):
//! - Deleting the last record(s) leaves a shorter chain that is still whole. Rewriting a record
//!   and recomputing every following record's `prev` also leaves a whole chain (anyone who can
//!   write the file can compute SHA-256). Both are caught only by [`verify_against`] with the
//!   [`Head`] the writer holds ([`AuditLog::head`]); that head must be kept where the attacker
//!   cannot change it (the writer's memory, another machine, a signed checkpoint).
//! - The hash is not keyed or signed: the chain proves the file is internally consistent, not
//!   who wrote it.
//!
//! Crashes: [`AuditLog::append`] writes the whole line with one `write(2)` and then
//! `fdatasync`s (unless opened with [`Durability::Buffered`]), and returns only after both, so
//! every record it acknowledged survives `kill -9` of the process. A write cut short by a crash
//! leaves bytes after the last `'\n'` (a torn tail): [`verify`] reports it as `torn_tail`, not as
//! a break, and [`AuditLog::open`] truncates it (with a warning) before appending, so the chain
//! continues from the last whole record. A torn tail was never acknowledged by `append`.
//!
//! Damage: [`AuditLog::open`] refuses a log whose chain is broken ([`AuditError::Corrupt`]) and
//! never appends after damage; the caller may move the damaged file aside (keep it as evidence)
//! and open a new log at the path.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::common::Trial;

/// The `prev` of the first record: 64 hex zeros.
pub const FIRST_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What was decided about a call: by the capability check (`Allowed`, `Denied`) or by an
/// approver of a gated call (`Approved`, `Refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Denied,
    Approved,
    Refused,
}

/// One system call as the caller reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The agent that made the call.
    pub agent: String,
    /// The system call's name.
    pub call: String,
    /// [`digest_args`] of the call's arguments (the arguments themselves are not stored).
    pub args_sha256: String,
    pub decision: Decision,
    /// Why it was decided so (the check's or the approver's reason).
    pub reason: String,
    /// Short summary of what happened: `"ok"`, `"error: ..."`, `"not run"`.
    pub outcome: String,
    /// How long the call took, in microseconds.
    pub duration_us: u64,
}

/// One stored line: the entry plus its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log: 0, 1, 2, ...
    pub seq: u64,
    /// When the record was appended, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Lowercase hex SHA-256 of the previous record's line bytes; [`FIRST_PREV`] for the first.
    pub prev: String,
}

/// Where the writer stands: the next `seq` and the hash of the last record's line
/// ([`FIRST_PREV`] when the log is empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq_next: u64,
    pub last_hash: String,
}

impl Head {
    /// The head of an empty log.
    pub fn empty() -> Head {
        Head {
            seq_next: 0,
            last_hash: FIRST_PREV.to_string(),
        }
    }
}

/// The first place where a log's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broken {
    /// 1-based line number of the offending line (for a cut tail: the line where the first
    /// missing record should be).
    pub line: u64,
    /// The `seq` written on that line, when the line parses as a record.
    pub seq: Option<u64>,
    pub reason: String,
}

/// The result of checking a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Whole records whose chain checks out before the first chain break (all of them when
    /// the chain is whole; a break found only against the writer's head does not lower it).
    pub records: u64,
    pub first_broken: Option<Broken>,
    /// The file ends with bytes after its last `'\n'` (a write cut short by a crash). Those
    /// bytes are not checked and not counted.
    pub torn_tail: bool,
    /// The head after the last good record.
    pub head: Head,
}

impl Verification {
    /// No break was found (a torn tail is not a break).
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Whether [`AuditLog::append`] waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fdatasync` after every record: an acknowledged record survives a crash of the process
    /// and of the machine.
    #[default]
    Sync,
    /// No `fdatasync`: an acknowledged record survives a crash of the process (it is in the
    /// kernel's page cache) but may be lost if the machine goes down. For measuring the cost.
    Buffered,
}

/// Why an audit log operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The file could not be read or written.
    #[error("audit log i/o: {0}")]
    Io(String),
    /// The log's chain is broken at `line`; it is not read or appended to. Move the file aside
    /// (keep it as evidence) to start a new log at this path.
    #[error("audit log is damaged at line {line}: {reason}")]
    Corrupt { line: u64, reason: String },
    /// Another [`AuditLog`] (in this or another process) holds the file open for appending.
    #[error("audit log is in use: {0}")]
    Locked(String),
    /// An earlier append failed and could not be undone, so the file may no longer match this
    /// writer's head; nothing more is appended through it. Reopen the log to continue.
    #[error("audit log writer stopped after a failed append: {0}")]
    Poisoned(String),
}

/// Lowercase hex SHA-256 of the canonical JSON text of `arguments`: object keys sorted by
/// their UTF-8 bytes at every depth, no whitespace, strings and numbers as `serde_json` writes
/// them. Two values that differ only in key order give the same digest.
pub fn digest_args(arguments: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_canonical_json(arguments, &mut canonical);
    sha256_hex(canonical.as_bytes())
}

/// Appends the canonical text of `value` to `out`. Keys are sorted here rather than relying on
/// `serde_json::Map`'s order, which follows insertion when its `preserve_order` feature is on.
fn write_canonical_json(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_canonical_json(item, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Lowercase hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

fn io_error(context: &str, path: &Path, error: &io::Error) -> AuditError {
    AuditError::Io(format!("{context} {}: {error}", path.display()))
}

/// The writer of one audit log file. It holds an exclusive lock on the file (where the
/// platform supports file locks) so a second writer cannot interleave lines.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    durability: Durability,
    head: Head,
    /// Bytes in the file (all whole lines), so a failed append can be cut off again.
    len: u64,
    /// Set when a failed append could not be undone.
    poisoned: Option<String>,
}

impl AuditLog {
    /// Opens the log at `path` with [`Durability::Sync`]; see [`AuditLog::open_with`].
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(path, Durability::Sync)
    }

    /// Creates the log at `path` or continues it: takes the file's lock, checks the whole
    /// chain, truncates a torn tail (logging a warning) and continues from the last whole
    /// record. Returns [`AuditError::Corrupt`] without changing the file when the chain is
    /// broken, and [`AuditError::Locked`] when another writer holds it.
    pub fn open_with(path: &Path, durability: Durability) -> Result<AuditLog, AuditError> {
        let (file, created) = match OpenOptions::new().read(true).append(true).create_new(true).open(path) {
            Ok(file) => (file, true),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(path)
                    .map_err(|error| io_error("cannot open", path, &error))?;
                (file, false)
            }
            Err(error) => return Err(io_error("cannot create", path, &error)),
        };
        lock_exclusive(&file, path)?;
        if created && durability == Durability::Sync {
            // The new file's directory entry must reach the disk too, or a machine crash could
            // lose the whole file along with records acknowledged as durable.
            sync_parent_dir(path)?;
        }

        (&file)
            .seek(SeekFrom::Start(0))
            .map_err(|error| io_error("cannot read", path, &error))?;
        let scan =
            scan_chain(BufReader::new(&file), None, |_| {}).map_err(|error| io_error("cannot read", path, &error))?;
        if let Some(broken) = scan.first_broken {
            return Err(AuditError::Corrupt {
                line: broken.line,
                reason: broken.reason,
            });
        }
        if scan.torn_tail {
            tracing::warn!(
                path = %path.display(),
                whole_bytes = scan.whole_len,
                "audit log ends in a torn record (a write cut short by a crash); truncating it"
            );
            file.set_len(scan.whole_len)
                .map_err(|error| io_error("cannot truncate the torn tail of", path, &error))?;
            if durability == Durability::Sync {
                file.sync_data()
                    .map_err(|error| io_error("cannot sync", path, &error))?;
            }
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            durability,
            head: scan.head,
            len: scan.whole_len,
            poisoned: None,
        })
    }

    /// Appends `entry` as the next record (stamped with the current time) and returns it. The
    /// line and its `'\n'` go out in one `write(2)`, followed by `fdatasync` under
    /// [`Durability::Sync`]; it returns only after both. When either fails, the partial line is
    /// cut off again so the file still ends at the previous record, and the error is returned
    /// (the record is not in the log); if that cut fails too, the writer is poisoned.
    pub fn append(&mut self, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
        if let Some(why) = &self.poisoned {
            return Err(AuditError::Poisoned(why.clone()));
        }
        let seq_after = self
            .head
            .seq_next
            .checked_add(1)
            .ok_or_else(|| AuditError::Io(format!("{} has no sequence numbers left", self.path.display())))?;
        let record = AuditRecord {
            seq: self.head.seq_next,
            time_ms: unix_time_ms(),
            entry,
            prev: self.head.last_hash.clone(),
        };
        let mut line = serde_json::to_vec(&record)
            .map_err(|error| AuditError::Io(format!("cannot encode an audit record: {error}")))?;
        let hash = sha256_hex(&line);
        line.push(b'\n');

        let written = write_whole_line(&self.file, &line).and_then(|()| match self.durability {
            Durability::Sync => self.file.sync_data(),
            Durability::Buffered => Ok(()),
        });
        if let Err(error) = written {
            let failure = io_error("cannot append to", &self.path, &error);
            let undone = self.file.set_len(self.len).and_then(|()| match self.durability {
                Durability::Sync => self.file.sync_data(),
                Durability::Buffered => Ok(()),
            });
            if let Err(undo_error) = undone {
                let why = format!("{failure}; then cutting the partial record off failed: {undo_error}");
                self.poisoned = Some(why.clone());
                return Err(AuditError::Poisoned(why));
            }
            return Err(failure);
        }

        self.len += line.len() as u64;
        self.head = Head {
            seq_next: seq_after,
            last_hash: hash,
        };
        Ok(record)
    }

    /// The next `seq` and the hash of the last record written.
    pub fn head(&self) -> Head {
        self.head.clone()
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability this log was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }
}

/// Writes `line` with a single `write(2)` (retried only when interrupted before writing
/// anything). A short write is an error: the caller cuts the partial line off.
fn write_whole_line(mut file: &File, line: &[u8]) -> io::Result<()> {
    loop {
        match file.write(line) {
            Ok(written) if written == line.len() => return Ok(()),
            Ok(written) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {written} of {} bytes", line.len()),
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Takes the file's exclusive lock without waiting. Where the platform has no file locks the
/// log is opened unlocked (logged), since refusing to audit would be worse.
fn lock_exclusive(file: &File, path: &Path) -> Result<(), AuditError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked(format!(
            "{} is open for appending by another writer",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) if error.kind() == io::ErrorKind::Unsupported => {
            tracing::warn!(path = %path.display(), "file locks are not supported here; the audit log is not locked");
            Ok(())
        }
        Err(std::fs::TryLockError::Error(error)) => Err(io_error("cannot lock", path, &error)),
    }
}

fn sync_parent_dir(path: &Path) -> Result<(), AuditError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error("cannot sync the directory", parent, &error))
}

fn unix_time_ms() -> u64 {
    // A clock set before 1970 gives 0 rather than failing the call being audited.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// What one pass over a log found.
struct ChainScan {
    records: u64,
    head: Head,
    first_broken: Option<Broken>,
    torn_tail: bool,
    /// Bytes through the file's last `'\n'`.
    whole_len: u64,
    /// Hash of the good record whose seq was asked for, if it was reached.
    checkpoint_hash: Option<String>,
}

/// Reads `reader` line by line and checks the chain, handing each good record to
/// `on_record`. After the first break, lines are only counted (to find a torn tail).
fn scan_chain(
    mut reader: impl BufRead,
    checkpoint_seq: Option<u64>,
    mut on_record: impl FnMut(AuditRecord),
) -> io::Result<ChainScan> {
    let mut scan = ChainScan {
        records: 0,
        head: Head::empty(),
        first_broken: None,
        torn_tail: false,
        whole_len: 0,
        checkpoint_hash: None,
    };
    let mut line = Vec::new();
    let mut line_number = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            scan.torn_tail = true;
            break;
        }
        scan.whole_len += read as u64;
        line_number += 1;
        if scan.first_broken.is_some() {
            continue;
        }
        let bytes = &line[..line.len() - 1];
        match check_line(bytes, line_number, &scan.head) {
            Ok(record) => {
                let hash = sha256_hex(bytes);
                if checkpoint_seq == Some(record.seq) {
                    scan.checkpoint_hash = Some(hash.clone());
                }
                scan.records += 1;
                scan.head = Head {
                    seq_next: record.seq.saturating_add(1),
                    last_hash: hash,
                };
                on_record(record);
            }
            Err(broken) => scan.first_broken = Some(broken),
        }
    }
    Ok(scan)
}

/// Checks one line against the head of the good records before it.
fn check_line(bytes: &[u8], line: u64, head: &Head) -> Result<AuditRecord, Broken> {
    let record: AuditRecord = serde_json::from_slice(bytes).map_err(|error| Broken {
        line,
        seq: None,
        reason: format!("line {line} is not an audit record ({error}): edited or corrupted"),
    })?;
    let expected_seq = head.seq_next;
    if record.seq != expected_seq {
        let reason = if expected_seq == 0 {
            format!(
                "the first record has seq {}, expected 0: the first record(s) were deleted or reordered",
                record.seq
            )
        } else if record.seq > expected_seq {
            format!(
                "line {line} holds record {}, expected record {expected_seq}: record(s) deleted or reordered",
                record.seq
            )
        } else {
            format!(
                "line {line} holds record {}, expected record {expected_seq}: a record was duplicated, inserted \
                 or reordered",
                record.seq
            )
        };
        return Err(Broken {
            line,
            seq: Some(record.seq),
            reason,
        });
    }
    if record.prev != head.last_hash {
        let reason = match expected_seq.checked_sub(1) {
            None => "record 0's prev is not 64 zeros: the log does not start at its first record".to_string(),
            Some(previous) => format!(
                "record {}'s prev does not match the hash of record {previous}: edited, deleted or reordered",
                record.seq
            ),
        };
        return Err(Broken {
            line,
            seq: Some(record.seq),
            reason,
        });
    }
    Ok(record)
}

fn open_for_reading(path: &Path) -> Result<BufReader<File>, AuditError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|error| io_error("cannot open", path, &error))
}

/// Reads every whole record of the log at `path`, checking the chain as it goes. Returns
/// [`AuditError::Corrupt`] at the first break (use [`verify`] for a report); a torn tail is
/// left out.
pub fn read(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let mut records = Vec::new();
    let scan = scan_chain(open_for_reading(path)?, None, |record| records.push(record))
        .map_err(|error| io_error("cannot read", path, &error))?;
    match scan.first_broken {
        Some(broken) => Err(AuditError::Corrupt {
            line: broken.line,
            reason: broken.reason,
        }),
        None => Ok(records),
    }
}

/// Checks the chain of the log at `path` line by line: each line is a record, its `seq` is one
/// more than the previous (0 first), its `prev` is the hash of the previous line. A damaged
/// log is `Ok` with `first_broken` set; `Err` only when the file cannot be read. Cannot see
/// deleted last records or a rewritten suffix: see [`verify_against`].
pub fn verify(path: &Path) -> Result<Verification, AuditError> {
    let scan =
        scan_chain(open_for_reading(path)?, None, |_| {}).map_err(|error| io_error("cannot read", path, &error))?;
    Ok(Verification {
        records: scan.records,
        first_broken: scan.first_broken,
        torn_tail: scan.torn_tail,
        head: scan.head,
    })
}

/// [`verify`], and also checks the log against `expected`, a head the writer held at some
/// point: the log must reach record `expected.seq_next - 1` and that record's hash must be
/// `expected.last_hash`. This catches deleted last records and a suffix rewritten with
/// recomputed hashes. Records appended after `expected` was taken are accepted.
pub fn verify_against(path: &Path, expected: &Head) -> Result<Verification, AuditError> {
    let checkpoint_seq = expected.seq_next.checked_sub(1);
    let scan = scan_chain(open_for_reading(path)?, checkpoint_seq, |_| {})
        .map_err(|error| io_error("cannot read", path, &error))?;
    let mut first_broken = scan.first_broken;
    if first_broken.is_none()
        && let Some(checkpoint) = checkpoint_seq
    {
        if scan.records < expected.seq_next {
            let missing = expected.seq_next - scan.records;
            first_broken = Some(Broken {
                line: scan.records + 1,
                seq: None,
                reason: format!(
                    "the log ends after {} record(s) but the writer's head is at {}: the last {missing} \
                     record(s) were deleted",
                    scan.records, expected.seq_next
                ),
            });
        } else if scan.checkpoint_hash.as_deref() != Some(expected.last_hash.as_str()) {
            first_broken = Some(Broken {
                line: checkpoint + 1,
                seq: Some(checkpoint),
                reason: format!(
                    "record {checkpoint}'s hash does not match the writer's head: the log was rewritten up to \
                     this record with recomputed hashes (or the head belongs to another log)"
                ),
            });
        }
    }
    Ok(Verification {
        records: scan.records,
        first_broken,
        torn_tail: scan.torn_tail,
        head: scan.head,
    })
}

/// One way to tamper with a log, applied to its lines (without their `'\n'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    /// Flip one bit of the first byte of record `seq`'s agent name.
    FlipValueByte {
        seq: usize,
    },
    /// Flip one bit of a hex digit of record `seq`'s `prev`.
    FlipPrevByte {
        seq: usize,
    },
    /// Flip one bit of record `seq`'s opening `{` (the line is no longer JSON).
    FlipStructuralByte {
        seq: usize,
    },
    DeleteRecord {
        seq: usize,
    },
    SwapRecords {
        first: usize,
        second: usize,
    },
    /// Insert a copy of record `seq` right after it.
    DuplicateRecord {
        seq: usize,
    },
    /// Insert after record `after` a forged record numbered `after + 1` whose `prev` is the
    /// correct hash of record `after`.
    InsertForged {
        after: usize,
    },
    /// Edit record `seq` and fix record `seq + 1`'s `prev` to the edited line's hash.
    RewriteOneLink {
        seq: usize,
    },
    /// Edit record `seq` and recompute the `prev` of every record after it.
    RewriteSuffix {
        seq: usize,
    },
    /// Delete the last `count` records (whole lines).
    CutLastRecords {
        count: usize,
    },
    /// Cut the file in the middle of its last line.
    CutMidLine,
}

impl Tamper {
    /// The tampered file's bytes, from the original lines.
    fn apply(self, lines: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let mut lines = lines.to_vec();
        let line_at = |lines: &[Vec<u8>], seq: usize| -> Result<Vec<u8>, String> {
            lines
                .get(seq)
                .cloned()
                .ok_or_else(|| format!("the log has no record {seq}"))
        };
        match self {
            Tamper::FlipValueByte { seq } => {
                let mut line = line_at(&lines, seq)?;
                let at = value_offset(&line, "agent")?;
                line[at] ^= 0x01;
                lines[seq] = line;
            }
            Tamper::FlipPrevByte { seq } => {
                let mut line = line_at(&lines, seq)?;
                let at = value_offset(&line, "prev")? + 10;
                let byte = line.get_mut(at).ok_or("prev is too short")?;
                *byte ^= 0x01;
                lines[seq] = line;
            }
            Tamper::FlipStructuralByte { seq } => {
                let mut line = line_at(&lines, seq)?;
                let first = line.first_mut().ok_or("empty line")?;
                *first ^= 0x01;
                lines[seq] = line;
            }
            Tamper::DeleteRecord { seq } => {
                line_at(&lines, seq)?;
                lines.remove(seq);
            }
            Tamper::SwapRecords { first, second } => {
                line_at(&lines, first)?;
                line_at(&lines, second)?;
                lines.swap(first, second);
            }
            Tamper::DuplicateRecord { seq } => {
                let line = line_at(&lines, seq)?;
                lines.insert(seq + 1, line);
            }
            Tamper::InsertForged { after } => {
                let previous_line = line_at(&lines, after)?;
                let previous = parse_record(&previous_line)?;
                let forged = AuditRecord {
                    seq: previous.seq.saturating_add(1),
                    time_ms: previous.time_ms,
                    entry: AuditEntry {
                        agent: previous.entry.agent.clone(),
                        call: "fs_write".to_string(),
                        args_sha256: digest_args(&serde_json::json!({ "path": "/etc/forged" })),
                        decision: Decision::Allowed,
                        reason: "granted by capability".to_string(),
                        outcome: "ok".to_string(),
                        duration_us: 120,
                    },
                    prev: sha256_hex(&previous_line),
                };
                lines.insert(after + 1, encode_record(&forged)?);
            }
            Tamper::RewriteOneLink { seq } => {
                let edited = edit_record(&line_at(&lines, seq)?)?;
                let mut next = parse_record(&line_at(&lines, seq + 1)?)?;
                next.prev = sha256_hex(&edited);
                lines[seq] = edited;
                lines[seq + 1] = encode_record(&next)?;
            }
            Tamper::RewriteSuffix { seq } => {
                lines[seq] = edit_record(&line_at(&lines, seq)?)?;
                for later in seq + 1..lines.len() {
                    let mut record = parse_record(&lines[later])?;
                    record.prev = sha256_hex(&lines[later - 1]);
                    lines[later] = encode_record(&record)?;
                }
            }
            Tamper::CutLastRecords { count } => {
                let keep = lines
                    .len()
                    .checked_sub(count)
                    .ok_or_else(|| format!("the log has fewer than {count} records"))?;
                lines.truncate(keep);
            }
            Tamper::CutMidLine => {
                let last = lines.pop().ok_or("the log is empty")?;
                let mut bytes = join_lines(&lines);
                bytes.extend_from_slice(&last[..last.len() / 2]);
                return Ok(bytes);
            }
        }
        Ok(join_lines(&lines))
    }
}

/// Offset of the first byte of the string value of `"key"` in a record line.
fn value_offset(line: &[u8], key: &str) -> Result<usize, String> {
    let needle = format!("\"{key}\":\"");
    line.windows(needle.len())
        .position(|window| window == needle.as_bytes())
        .map(|start| start + needle.len())
        .filter(|&at| at < line.len())
        .ok_or_else(|| format!("no string field {key} in the record"))
}

fn parse_record(line: &[u8]) -> Result<AuditRecord, String> {
    serde_json::from_slice(line).map_err(|error| format!("cannot parse a record to tamper with: {error}"))
}

fn encode_record(record: &AuditRecord) -> Result<Vec<u8>, String> {
    serde_json::to_vec(record).map_err(|error| format!("cannot encode a tampered record: {error}"))
}

/// The record on `line` with its decision turned into `Allowed` and its reason rewritten: what
/// an attacker hiding a denied call would do.
fn edit_record(line: &[u8]) -> Result<Vec<u8>, String> {
    let mut record = parse_record(line)?;
    record.entry.decision = Decision::Allowed;
    record.entry.reason = "granted by capability".to_string();
    record.entry.outcome = "ok".to_string();
    let edited = encode_record(&record)?;
    if edited == line {
        return Err("the edit changed nothing".to_string());
    }
    Ok(edited)
}

fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    bytes
}

/// What a tamper trial counts as caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// [`verify`] reports the first break at this 1-based line.
    BreakAt { line: u64 },
    /// [`verify`] alone cannot see it; [`verify_against`] with the writer's head reports the
    /// first break at this line.
    BreakAgainstHeadAt { line: u64 },
    /// [`verify`] reports a torn tail and no break, with this many whole records.
    TornTail { records: u64 },
}

/// Records in the log the tamper trials work on.
const TRIAL_RECORDS: u64 = 20;

/// The tamper trials: name, tampering, and where it must be caught in a log of
/// [`TRIAL_RECORDS`] records (record `seq` is on line `seq + 1`).
fn tamper_cases() -> Vec<(&'static str, Tamper, Expect)> {
    vec![
        (
            "flip_byte_in_agent_name",
            Tamper::FlipValueByte { seq: 10 },
            Expect::BreakAt { line: 12 },
        ),
        (
            "flip_byte_in_prev",
            Tamper::FlipPrevByte { seq: 10 },
            Expect::BreakAt { line: 11 },
        ),
        (
            "flip_byte_breaking_json",
            Tamper::FlipStructuralByte { seq: 10 },
            Expect::BreakAt { line: 11 },
        ),
        (
            "delete_middle_record",
            Tamper::DeleteRecord { seq: 10 },
            Expect::BreakAt { line: 11 },
        ),
        (
            "delete_first_record",
            Tamper::DeleteRecord { seq: 0 },
            Expect::BreakAt { line: 1 },
        ),
        (
            "swap_adjacent_records",
            Tamper::SwapRecords { first: 10, second: 11 },
            Expect::BreakAt { line: 11 },
        ),
        (
            "swap_distant_records",
            Tamper::SwapRecords { first: 3, second: 16 },
            Expect::BreakAt { line: 4 },
        ),
        (
            "duplicate_record",
            Tamper::DuplicateRecord { seq: 10 },
            Expect::BreakAt { line: 12 },
        ),
        (
            "insert_forged_record_with_correct_prev",
            Tamper::InsertForged { after: 10 },
            Expect::BreakAt { line: 13 },
        ),
        (
            "edit_record_and_fix_next_prev",
            Tamper::RewriteOneLink { seq: 10 },
            Expect::BreakAt { line: 13 },
        ),
        (
            "edit_record_and_recompute_all_later_prevs",
            Tamper::RewriteSuffix { seq: 15 },
            Expect::BreakAgainstHeadAt { line: 20 },
        ),
        (
            "truncate_last_record",
            Tamper::CutLastRecords { count: 1 },
            Expect::BreakAgainstHeadAt { line: 20 },
        ),
        (
            "truncate_all_records",
            Tamper::CutLastRecords { count: 20 },
            Expect::BreakAgainstHeadAt { line: 1 },
        ),
        (
            "truncate_mid_line_torn_tail",
            Tamper::CutMidLine,
            Expect::TornTail { records: 19 },
        ),
    ]
}

/// The entry for record `index` of the trial log (varied agents, calls and decisions).
fn trial_entry(index: u64) -> AuditEntry {
    let (decision, reason, outcome) = match index % 4 {
        0 => (Decision::Allowed, "granted by capability", "ok"),
        1 => (Decision::Denied, "path outside the work directory", "not run"),
        2 => (Decision::Approved, "approved by the operator", "ok"),
        _ => (Decision::Refused, "refused by the operator", "not run"),
    };
    AuditEntry {
        agent: format!("agent-{}", index % 3),
        call: if index.is_multiple_of(2) { "fs_read" } else { "fs_write" }.to_string(),
        args_sha256: digest_args(&serde_json::json!({ "path": format!("notes/{index}.md") })),
        decision,
        reason: reason.to_string(),
        outcome: outcome.to_string(),
        duration_us: 100 + index,
    }
}

/// Writes the trial log (`original.log`, [`TRIAL_RECORDS`] records) into `dir` and returns its
/// lines and the writer's head.
fn write_trial_log(dir: &Path) -> Result<(Vec<Vec<u8>>, Head), String> {
    let original = dir.join("original.log");
    match std::fs::remove_file(&original) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot remove the old {}: {error}", original.display())),
    }
    let head = {
        // Buffered: the trials need no durability, only the bytes.
        let mut log = AuditLog::open_with(&original, Durability::Buffered).map_err(|error| error.to_string())?;
        for index in 0..TRIAL_RECORDS {
            log.append(trial_entry(index)).map_err(|error| error.to_string())?;
        }
        log.head()
    };
    let bytes = std::fs::read(&original).map_err(|error| format!("cannot read {}: {error}", original.display()))?;
    let lines = bytes
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok((lines, head))
}

fn describe(verification: &Verification) -> String {
    let broken = match &verification.first_broken {
        Some(broken) => format!(
            "break at line {} (seq {:?}): {}",
            broken.line, broken.seq, broken.reason
        ),
        None => "no break".to_string(),
    };
    format!(
        "{broken}; {} good record(s); torn tail: {}",
        verification.records, verification.torn_tail
    )
}

/// Runs one tamper case on a copy of the trial log and judges it.
fn run_tamper_case(dir: &Path, name: &str, tamper: Tamper, expect: Expect, lines: &[Vec<u8>], head: &Head) -> Trial {
    let outcome = (|| -> Result<(bool, String), String> {
        let bytes = tamper.apply(lines)?;
        let copy = dir.join(format!("{name}.log"));
        std::fs::write(&copy, bytes).map_err(|error| format!("cannot write {}: {error}", copy.display()))?;
        let plain = verify(&copy).map_err(|error| error.to_string())?;
        Ok(match expect {
            Expect::BreakAt { line } => {
                let found_at = plain.first_broken.as_ref().map(|broken| broken.line);
                (
                    found_at == Some(line),
                    format!("verify: {} (expected a break at line {line})", describe(&plain)),
                )
            }
            Expect::BreakAgainstHeadAt { line } => {
                let against = verify_against(&copy, head).map_err(|error| error.to_string())?;
                let found_at = against.first_broken.as_ref().map(|broken| broken.line);
                (
                    found_at == Some(line),
                    format!(
                        "verify alone: {}; verify_against the writer's head: {} (expected a break at line {line})",
                        describe(&plain),
                        describe(&against)
                    ),
                )
            }
            Expect::TornTail { records } => (
                plain.torn_tail && plain.first_broken.is_none() && plain.records == records,
                format!(
                    "verify: {} (expected a torn tail after {records} records)",
                    describe(&plain)
                ),
            ),
        })
    })();
    match outcome {
        Ok((contained, detail)) => Trial {
            name: name.to_string(),
            contained,
            detail,
        },
        Err(why) => Trial {
            name: name.to_string(),
            contained: false,
            detail: format!("trial could not run: {why}"),
        },
    }
}

/// Writes a log of 20 records under `scratch/audit-tamper-trials/`, then for each way of
/// tampering works on a copy and checks that the verifier finds it at the right line (with
/// the writer's head for a cut tail or a rewritten suffix; as a torn tail for a cut mid-line).
/// `contained` is true only when it was found where expected; a trial that could not run is
/// reported as not contained.
pub fn tamper_trials(scratch: &Path) -> Vec<Trial> {
    let dir = scratch.join("audit-tamper-trials");
    let cases = tamper_cases();
    let prepared = std::fs::create_dir_all(&dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))
        .and_then(|()| write_trial_log(&dir));
    match prepared {
        Ok((lines, head)) => cases
            .into_iter()
            .map(|(name, tamper, expect)| run_tamper_case(&dir, name, tamper, expect, &lines, &head))
            .collect(),
        Err(why) => cases
            .into_iter()
            .map(|(name, _, _)| Trial {
                name: name.to_string(),
                contained: false,
                detail: format!("trial could not run: {why}"),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    fn entry(agent: &str, decision: Decision) -> AuditEntry {
        AuditEntry {
            agent: agent.to_string(),
            call: "fs_read".to_string(),
            args_sha256: digest_args(&serde_json::json!({ "path": "a.txt" })),
            decision,
            reason: "test".to_string(),
            outcome: "ok".to_string(),
            duration_us: 7,
        }
    }

    fn file_lines(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'), "log must end with a newline");
        bytes[..bytes.len() - 1]
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn audit_log_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AuditLog>();
    }

    #[test]
    fn append_then_read_round_trips_and_chains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), Head::empty());
        assert_eq!(log.path(), path.as_path());
        let appended: Vec<AuditRecord> = [
            entry("a", Decision::Allowed),
            entry("b", Decision::Denied),
            entry("c", Decision::Approved),
            entry("d", Decision::Refused),
        ]
        .into_iter()
        .map(|e| log.append(e).unwrap())
        .collect();

        let records = read(&path).unwrap();
        assert_eq!(records, appended);
        let lines = file_lines(&path);
        assert_eq!(lines.len(), 4);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.seq, index as u64);
            let expected_prev = if index == 0 {
                FIRST_PREV.to_string()
            } else {
                sha256_hex(&lines[index - 1])
            };
            assert_eq!(record.prev, expected_prev);
            assert!(record.time_ms > 0);
        }
        assert_eq!(records[1].entry.decision, Decision::Denied);
        assert_eq!(
            log.head(),
            Head {
                seq_next: 4,
                last_hash: sha256_hex(&lines[3])
            }
        );
        // The stored line is flat: entry fields sit beside seq and prev.
        let value: serde_json::Value = serde_json::from_slice(&lines[1]).unwrap();
        assert_eq!(value["agent"], "b");
        assert_eq!(value["decision"], "denied");
        assert_eq!(value["seq"], 1);

        let verification = verify(&path).unwrap();
        assert!(verification.is_intact());
        assert_eq!(verification.records, 4);
        assert!(!verification.torn_tail);
        assert_eq!(verification.head, log.head());
    }

    #[test]
    fn buffered_log_writes_the_same_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open_with(&path, Durability::Buffered).unwrap();
        assert_eq!(log.durability(), Durability::Buffered);
        for agent in ["a", "b", "c"] {
            log.append(entry(agent, Decision::Allowed)).unwrap();
        }
        let verification = verify(&path).unwrap();
        assert!(verification.is_intact());
        assert_eq!(verification.head, log.head());
        assert_eq!(verification.records, 3);
    }

    #[test]
    fn reopen_continues_seq_and_prev() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let head_before = {
            let mut log = AuditLog::open(&path).unwrap();
            log.append(entry("a", Decision::Allowed)).unwrap();
            log.append(entry("a", Decision::Denied)).unwrap();
            log.head()
        };
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), head_before);
        let record = log.append(entry("a", Decision::Allowed)).unwrap();
        assert_eq!(record.seq, 2);
        assert_eq!(record.prev, head_before.last_hash);
        assert_eq!(record.prev, sha256_hex(&file_lines(&path)[1]));
        let verification = verify(&path).unwrap();
        assert!(verification.is_intact(), "{verification:?}");
        assert_eq!(verification.records, 3);
    }

    #[test]
    fn second_writer_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let _first = AuditLog::open(&path).unwrap();
        match AuditLog::open(&path) {
            Err(AuditError::Locked(_)) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn torn_tail_is_reported_then_truncated_on_open_and_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        {
            let mut log = AuditLog::open(&path).unwrap();
            for agent in ["a", "b", "c"] {
                log.append(entry(agent, Decision::Allowed)).unwrap();
            }
        }
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"seq":3,"time_ms":17000"#);
        std::fs::write(&path, &torn).unwrap();

        let verification = verify(&path).unwrap();
        assert!(verification.is_intact(), "a torn tail is not a break: {verification:?}");
        assert!(verification.torn_tail);
        assert_eq!(verification.records, 3);
        assert_eq!(read(&path).unwrap().len(), 3);

        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "open cuts the torn tail off exactly"
        );
        assert_eq!(log.head().seq_next, 3);
        let record = log.append(entry("d", Decision::Denied)).unwrap();
        assert_eq!(record.seq, 3);
        assert_eq!(record.prev, sha256_hex(&file_lines(&path)[2]));
        let verification = verify(&path).unwrap();
        assert!(verification.is_intact(), "{verification:?}");
        assert!(!verification.torn_tail);
        assert_eq!(verification.records, 4);
    }

    #[test]
    fn broken_chain_refuses_to_open_and_is_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        {
            let mut log = AuditLog::open(&path).unwrap();
            for agent in ["alice", "bob", "carol", "dave"] {
                log.append(entry(agent, Decision::Allowed)).unwrap();
            }
        }
        // "bob" -> "bnb" in record 1: record 2's prev no longer matches (line 3).
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(5).position(|w| w == b"\"bob\"").unwrap() + 2;
        bytes[at] = b'n';
        // And a torn tail, which open must not touch either.
        bytes.extend_from_slice(b"{\"seq\":4");
        std::fs::write(&path, &bytes).unwrap();

        match AuditLog::open(&path) {
            Err(AuditError::Corrupt { line, reason }) => {
                assert_eq!(line, 3);
                assert!(reason.contains("record 2's prev"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "a damaged log is not modified");
        assert!(matches!(read(&path), Err(AuditError::Corrupt { line: 3, .. })));
        let verification = verify(&path).unwrap();
        assert_eq!(verification.records, 2);
        assert!(verification.torn_tail);
    }

    #[test]
    fn verify_of_a_missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(verify(&dir.path().join("absent.log")), Err(AuditError::Io(_))));
    }

    /// The trial log's lines and head, written by the same code the trials use.
    fn trial_log() -> (tempfile::TempDir, Vec<Vec<u8>>, Head) {
        let dir = tempfile::tempdir().unwrap();
        let (lines, head) = write_trial_log(dir.path()).unwrap();
        assert_eq!(lines.len(), 20);
        (dir, lines, head)
    }

    #[test]
    fn each_tamper_kind_is_detected_at_its_line() {
        let (dir, lines, _head) = trial_log();
        // (tampering, line of the first break, seq written on that line); record k is on line k + 1.
        let cases = [
            (Tamper::FlipValueByte { seq: 10 }, 12, Some(11)),
            (Tamper::FlipPrevByte { seq: 10 }, 11, Some(10)),
            (Tamper::FlipStructuralByte { seq: 10 }, 11, None),
            (Tamper::DeleteRecord { seq: 10 }, 11, Some(11)),
            (Tamper::DeleteRecord { seq: 0 }, 1, Some(1)),
            (Tamper::SwapRecords { first: 10, second: 11 }, 11, Some(11)),
            (Tamper::SwapRecords { first: 3, second: 16 }, 4, Some(16)),
            (Tamper::DuplicateRecord { seq: 10 }, 12, Some(10)),
            (Tamper::InsertForged { after: 10 }, 13, Some(11)),
            (Tamper::RewriteOneLink { seq: 10 }, 13, Some(12)),
        ];
        for (index, (tamper, line, seq)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("case-{index}.log"));
            std::fs::write(&path, tamper.apply(&lines).unwrap()).unwrap();
            let verification = verify(&path).unwrap();
            let broken = verification
                .first_broken
                .unwrap_or_else(|| panic!("{tamper:?} not detected"));
            assert_eq!((broken.line, broken.seq), (line, seq), "{tamper:?}: {}", broken.reason);
            assert_eq!(verification.records, line - 1, "{tamper:?}");
            assert!(matches!(AuditLog::open(&path), Err(AuditError::Corrupt { line: l, .. }) if l == line));
        }
    }

    #[test]
    fn cut_tail_and_rewritten_suffix_need_the_writers_head() {
        let (dir, lines, head) = trial_log();
        let cases = [
            (Tamper::CutLastRecords { count: 1 }, 20, 19),
            (Tamper::CutLastRecords { count: 3 }, 18, 17),
            (Tamper::CutLastRecords { count: 20 }, 1, 0),
            (Tamper::RewriteSuffix { seq: 15 }, 20, 20),
        ];
        for (index, (tamper, line, records)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("case-{index}.log"));
            std::fs::write(&path, tamper.apply(&lines).unwrap()).unwrap();
            let plain = verify(&path).unwrap();
            assert!(plain.is_intact(), "the chain alone cannot see {tamper:?}");
            assert_eq!(plain.records, records);
            let against = verify_against(&path, &head).unwrap();
            let broken = against
                .first_broken
                .unwrap_or_else(|| panic!("{tamper:?} not detected"));
            assert_eq!(broken.line, line, "{tamper:?}: {}", broken.reason);
        }
        // The untouched log matches the head.
        let original = dir.path().join("original.log");
        assert!(verify_against(&original, &head).unwrap().is_intact());
    }

    #[test]
    fn verify_against_accepts_an_older_head_of_a_growing_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).unwrap();
        assert!(verify_against(&path, &log.head()).unwrap().is_intact());
        log.append(entry("a", Decision::Allowed)).unwrap();
        log.append(entry("a", Decision::Allowed)).unwrap();
        let older = log.head();
        log.append(entry("a", Decision::Denied)).unwrap();
        assert!(verify_against(&path, &older).unwrap().is_intact());
        assert!(verify_against(&path, &log.head()).unwrap().is_intact());
        // A head from another log with the same length does not match.
        let foreign = Head {
            seq_next: 2,
            last_hash: sha256_hex(b"another log"),
        };
        let broken = verify_against(&path, &foreign).unwrap().first_broken.unwrap();
        assert_eq!((broken.line, broken.seq), (2, Some(1)));
    }

    #[test]
    fn torn_tail_trial_is_reported_as_torn() {
        let (dir, lines, _head) = trial_log();
        let path = dir.path().join("torn.log");
        std::fs::write(&path, Tamper::CutMidLine.apply(&lines).unwrap()).unwrap();
        let verification = verify(&path).unwrap();
        assert!(verification.is_intact());
        assert!(verification.torn_tail);
        assert_eq!(verification.records, 19);
    }

    #[test]
    fn tamper_trials_are_all_contained() {
        let scratch = tempfile::tempdir().unwrap();
        let trials = tamper_trials(scratch.path());
        assert!(trials.len() >= 10, "only {} trials", trials.len());
        let mut names: Vec<&str> = trials.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), trials.len(), "trial names must be unique");
        for trial in &trials {
            assert!(trial.contained, "{}: {}", trial.name, trial.detail);
        }
        // Running again in the same scratch starts from a fresh log.
        assert!(tamper_trials(scratch.path()).iter().all(|t| t.contained));
    }

    #[test]
    fn tamper_trials_report_a_scratch_that_cannot_be_used() {
        let scratch = tempfile::tempdir().unwrap();
        let not_a_dir = scratch.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let trials = tamper_trials(&not_a_dir);
        assert!(!trials.is_empty());
        assert!(
            trials
                .iter()
                .all(|t| !t.contained && t.detail.starts_with("trial could not run"))
        );
    }

    #[test]
    fn digest_args_ignores_key_order_but_not_values() {
        let one: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[1,{"y":true,"x":null}],"c":"s"}}"#).unwrap();
        let two: serde_json::Value =
            serde_json::from_str(r#"{"a":{"c":"s","z":[1,{"x":null,"y":true}]},"b":1}"#).unwrap();
        assert_eq!(digest_args(&one), digest_args(&two));
        let canonical = r#"{"a":{"c":"s","z":[1,{"x":null,"y":true}]},"b":1}"#;
        assert_eq!(digest_args(&one), sha256_hex(canonical.as_bytes()));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let array_order: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":true,"x":null},1],"c":"s"}}"#).unwrap();
        assert_ne!(digest_args(&one), digest_args(&array_order));
        let other_value: serde_json::Value =
            serde_json::from_str(r#"{"b":2,"a":{"z":[1,{"y":true,"x":null}],"c":"s"}}"#).unwrap();
        assert_ne!(digest_args(&one), digest_args(&other_value));
    }

    const CRASH_CHILD_LOG_ENV: &str = "AGENTOS_AUDIT_CRASH_CHILD_LOG";
    const CRASH_CHILD_TEST: &str = "crash_child_appends_until_killed";
    /// What the child prints after each append; found anywhere in a line, because the test
    /// harness prints `test <name> ... ` on the same line before the first one.
    const APPENDED_MARKER: &str = "audit-crash-child appended ";

    /// The seq in a line of the child's output, if the line reports an append.
    fn acknowledged_seq(line: &str) -> Option<u64> {
        let at = line.find(APPENDED_MARKER)? + APPENDED_MARKER.len();
        line[at..].trim_end().parse().ok()
    }

    /// Run only as the child of `kill_9_loses_no_acknowledged_record`: appends records until
    /// killed, printing [`APPENDED_MARKER`] and the seq after each `append` returns.
    #[cfg(unix)]
    #[test]
    #[ignore = "helper process of kill_9_loses_no_acknowledged_record; does nothing when run directly"]
    fn crash_child_appends_until_killed() {
        let Some(path) = std::env::var_os(CRASH_CHILD_LOG_ENV) else {
            return;
        };
        let mut log = AuditLog::open(Path::new(&path)).unwrap();
        let mut stdout = std::io::stdout().lock();
        // Records span several pages so that a kill can land inside one write(2).
        let long_reason = "r".repeat(12_000);
        for index in 0..1_000_000u64 {
            let mut record = entry(&format!("agent-{index}"), Decision::Allowed);
            record.reason = long_reason.clone();
            let appended = log.append(record).unwrap();
            // Printed only after append returned: the parent holds us to every printed seq.
            writeln!(stdout, "{APPENDED_MARKER}{}", appended.seq).unwrap();
            stdout.flush().unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn kill_9_loses_no_acknowledged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.log");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([CRASH_CHILD_TEST, "--ignored", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_LOG_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut acknowledged: Vec<u64> = Vec::new();
        let mut line = String::new();
        while acknowledged.len() < 150 {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(seq) = acknowledged_seq(&line) {
                acknowledged.push(seq);
            }
        }
        // SIGKILL while the child is in the middle of its appends.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        for line in rest.lines() {
            if let Some(seq) = acknowledged_seq(line) {
                acknowledged.push(seq);
            }
        }
        assert!(
            acknowledged.len() >= 150,
            "child stopped after {} records ({status})",
            acknowledged.len()
        );
        {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(status.signal(), Some(libc::SIGKILL), "child was not killed: {status}");
        }
        let expected: Vec<u64> = (0..acknowledged.len() as u64).collect();
        assert_eq!(acknowledged, expected);

        let verification = verify(&path).unwrap();
        assert!(verification.is_intact(), "{verification:?}");
        let records = read(&path).unwrap();
        assert!(
            records.len() >= acknowledged.len(),
            "{} < {}",
            records.len(),
            acknowledged.len()
        );
        for seq in &acknowledged {
            let record = &records[*seq as usize];
            assert_eq!(record.seq, *seq);
            assert_eq!(record.entry.agent, format!("agent-{seq}"));
        }

        // The log continues after the crash (a torn tail, if any, is cut off).
        let mut log = AuditLog::open(&path).unwrap();
        let next = log.append(entry("after-crash", Decision::Allowed)).unwrap();
        assert_eq!(next.seq, records.len() as u64);
        let after = verify(&path).unwrap();
        assert!(after.is_intact() && !after.torn_tail, "{after:?}");
        assert_eq!(after.records, records.len() as u64 + 1);
    }
}
