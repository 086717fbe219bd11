//! The task journal: every task, every outcome and every agent checkpoint, durable on disk.
//!
//! One redb file (`journal.redb` in the checkpoint directory) holds:
//!
//! | table         | key                 | value                                              |
//! |---------------|---------------------|----------------------------------------------------|
//! | `tasks`       | task id             | an accepted task not finished yet (agent, input, attempts) |
//! | `outcomes`    | task id             | how a finished task ended (reply, delivery or error) |
//! | `checkpoints` | agent name          | the agent's state: role, recent turns (checksummed) |
//! | `inbox`       | (agent name, task)  | messages delivered to it and not yet shown to its model |
//! | `history`     | (agent name, turn)  | every completed turn, append-only                  |
//! | `quarantine`  | (agent name, time)  | checkpoints that could not be read, with the reason |
//! | `steps`       | (task, step)        | the calls a running turn has made, with their results |
//!
//! **Write-ahead.** A task is appended (and fsynced) before `ask`, `stream` or `send` returns, so
//! an acknowledged task survives `kill -9`. A task ends in one transaction that writes its
//! outcome, removes it from `tasks` and writes the checkpoint and history its turn produced: the
//! state an outcome describes and the outcome itself are never on disk one without the other, so
//! a task's outcome is recorded exactly once and no recorded task runs again. A completion for a
//! task that already has an outcome is refused (and its checkpoint not applied).
//!
//! **Steps.** Each call a turn makes is written (and fsynced) with its result before the turn
//! goes on, so a task redelivered after a crash replays the calls already made instead of making
//! them again; its completion removes them (the turn's history entry keeps them).
//!
//! **Group commit.** One writer thread owns the write side. It takes every operation queued
//! while the previous commit was being synced and applies them all in one transaction, so many
//! agents acknowledging tasks at once share one fsync instead of paying one each. Reads run on
//! the callers' blocking threads against redb's snapshots and never wait for the writer.
//!
//! Outcomes are kept for the most recent `outcomes_kept` tasks (the oldest are pruned); history
//! and quarantined checkpoints are kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, Sender, TryRecvError};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::agent::{TaskInput, TaskOutcome, TaskStatus, Turn};
use crate::error::{Result, RuntimeError};
use crate::syscall::Step;
use crate::types::TaskId;

const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
const OUTCOMES: TableDefinition<u64, &[u8]> = TableDefinition::new("outcomes");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const QUARANTINE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("quarantine");
const INBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("inbox");
const STEPS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("steps");

/// Most operations one group commit takes.
const MAX_GROUP: usize = 256;
/// redb's page cache for the journal: it is written far more than read, so a small cache does
/// (the default would let a busy journal keep up to a gigabyte resident).
const JOURNAL_CACHE_BYTES: usize = 4 << 20;

/// A checkpoint is `MAGIC (8) | format version (u32 LE) | payload length (u64 LE) | SHA-256 of
/// the payload (32) | payload (bincode, standard config)`.
const MAGIC: &[u8; 8] = b"AGOSCKPT";
const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// A task accepted and not finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskRecord {
    pub agent: String,
    pub input: TaskInput,
    /// Times an actor started it (a start cut short by a supervisor's stop is given back).
    pub attempts: u32,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub accepted_ms: u64,
}

/// A finished task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutcomeRecord {
    pub agent: String,
    pub finished_ms: u64,
    pub outcome: TaskOutcome,
}

/// A checkpoint moved aside because it could not be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuarantineRecord {
    reason: String,
    bytes: Vec<u8>,
}

/// Whether a completion was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Yes,
    /// The task already had an outcome: nothing was written.
    AlreadyRecorded,
}

/// The state a task's end leaves behind, written in the same transaction as its outcome.
pub(crate) struct Completion {
    pub checkpoint: Option<Vec<u8>>,
    pub turn: Option<(u64, Vec<u8>)>,
    pub inbox: InboxChange,
}

/// What a task's end does to its agent's inbox. Messages are kept one record each, so taking a
/// message costs the message, not a rewrite of everything waiting.
pub(crate) enum InboxChange {
    Keep,
    /// The task delivered this message (encoded [`Delivered`](crate::agent::Delivered)).
    Add(Vec<u8>),
    /// The turn showed every waiting message to the model.
    Clear,
}

impl Completion {
    /// A task end that changes no state (a failure).
    pub fn none() -> Self {
        Completion {
            checkpoint: None,
            turn: None,
            inbox: InboxChange::Keep,
        }
    }
}

enum Op {
    Append {
        id: TaskId,
        record: Vec<u8>,
    },
    /// `delta` is +1 when an actor starts the task, -1 when a supervisor's stop cut it short.
    Attempt {
        id: TaskId,
        delta: i32,
    },
    Complete {
        id: TaskId,
        agent: String,
        outcome: Vec<u8>,
        completion: Completion,
    },
    Quarantine {
        agent: String,
        reason: String,
    },
    Step {
        id: TaskId,
        index: u32,
        step: Vec<u8>,
    },
    Flush,
}

struct Queued {
    op: Op,
    done: Option<oneshot::Sender<std::result::Result<Applied, String>>>,
}

/// The journal of one AgentOS. Cheap to share (`Arc`).
pub(crate) struct Journal {
    path: PathBuf,
    /// `None` once closed (the file is then free for another process or journal).
    db: std::sync::Mutex<Option<Arc<Database>>>,
    ops: std::sync::Mutex<Option<Sender<Queued>>>,
    next_task: AtomicU64,
    /// Bumped after every commit that finished a task (waiters re-read then).
    completions: watch::Receiver<u64>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, keeping the outcomes of the latest
    /// `outcomes_kept` tasks.
    pub fn open(dir: &Path, outcomes_kept: usize) -> Result<Arc<Journal>> {
        let path = dir.join("journal.redb");
        let error = |reason: String| RuntimeError::Journal {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| error(format!("cannot create its directory: {e}")))?;
        let existed = path.exists();
        // redb documents that opening a file damaged outside redb may panic: make that an error.
        let opened = std::panic::catch_unwind(|| Database::builder().set_cache_size(JOURNAL_CACHE_BYTES).create(&path));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(error(format!("cannot open: {e}"))),
            Err(_) => return Err(error("the database engine rejected the file (damaged?)".into())),
        };
        if !existed {
            // The new file's directory entry must be durable too.
            sync_dir(dir).map_err(|e| error(format!("cannot sync its directory: {e}")))?;
        }
        let db = Arc::new(db);
        let (next, outcomes) = {
            let mut txn = db.begin_write().map_err(|e| error(e.to_string()))?;
            txn.set_quick_repair(true);
            let last = {
                let tasks = txn.open_table(TASKS).map_err(|e| error(e.to_string()))?;
                let outcomes = txn.open_table(OUTCOMES).map_err(|e| error(e.to_string()))?;
                txn.open_table(CHECKPOINTS).map_err(|e| error(e.to_string()))?;
                txn.open_table(HISTORY).map_err(|e| error(e.to_string()))?;
                txn.open_table(QUARANTINE).map_err(|e| error(e.to_string()))?;
                txn.open_table(INBOX).map_err(|e| error(e.to_string()))?;
                txn.open_table(STEPS).map_err(|e| error(e.to_string()))?;
                let last_key = |t: &redb::Table<u64, &[u8]>| -> std::result::Result<u64, redb::StorageError> {
                    Ok(t.last()?.map(|(k, _)| k.value()).unwrap_or(0))
                };
                let last_task = last_key(&tasks).map_err(|e| error(e.to_string()))?;
                let last_outcome = last_key(&outcomes).map_err(|e| error(e.to_string()))?;
                let count = outcomes.len().map_err(|e| error(e.to_string()))?;
                (last_task.max(last_outcome), count)
            };
            txn.commit().map_err(|e| error(e.to_string()))?;
            last
        };
        let (ops, rx) = crossbeam::channel::unbounded();
        let (completed_tx, completions) = watch::channel(0);
        let writer = Writer {
            db: db.clone(),
            path: path.clone(),
            outcomes: outcomes as usize,
            outcomes_kept: outcomes_kept.max(1),
            completed: completed_tx,
        };
        let handle = std::thread::Builder::new()
            .name("agentos-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| error(format!("cannot start its writer thread: {e}")))?;
        Ok(Arc::new(Journal {
            path,
            db: std::sync::Mutex::new(Some(db)),
            ops: std::sync::Mutex::new(Some(ops)),
            next_task: AtomicU64::new(next + 1),
            completions,
            writer: std::sync::Mutex::new(Some(handle)),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new task id (never handed out before in this journal).
    pub fn next_id(&self) -> TaskId {
        TaskId(self.next_task.fetch_add(1, Ordering::Relaxed))
    }

    /// Appends an accepted task; returns once it is on disk.
    pub async fn append(&self, id: TaskId, agent: &str, input: &TaskInput) -> Result<()> {
        let record = TaskRecord {
            agent: agent.to_string(),
            input: input.clone(),
            attempts: 0,
            accepted_ms: unix_ms(),
        };
        let record = self.encode(&record)?;
        self.submit(Op::Append { id, record }).await.map(drop)
    }

    /// Counts a start of task `id` (durable before it runs, so a task that keeps crashing the
    /// process is eventually failed instead of run forever).
    pub async fn started(&self, id: TaskId) -> Result<()> {
        self.submit(Op::Attempt { id, delta: 1 }).await.map(drop)
    }

    /// Gives back a start that a supervisor's stop cut short (not waiting for the disk).
    pub fn refund(&self, id: TaskId) {
        self.submit_detached(Op::Attempt { id, delta: -1 });
    }

    /// Ends task `id` of `agent` with `outcome`, writing `completion` in the same transaction;
    /// writes nothing when the task already has an outcome.
    pub async fn complete(
        &self,
        id: TaskId,
        agent: &str,
        outcome: &TaskOutcome,
        completion: Completion,
    ) -> Result<Applied> {
        let outcome = self.encode(&OutcomeRecord {
            agent: agent.to_string(),
            finished_ms: unix_ms(),
            outcome: outcome.clone(),
        })?;
        self.submit(Op::Complete {
            id,
            agent: agent.to_string(),
            outcome,
            completion,
        })
        .await
    }

    /// Moves `agent`'s checkpoint to the quarantine table with `reason`.
    pub async fn quarantine(&self, agent: &str, reason: &str) -> Result<()> {
        self.submit(Op::Quarantine {
            agent: agent.to_string(),
            reason: reason.to_string(),
        })
        .await
        .map(drop)
    }

    /// Records the `index`th call (0-based) of task `id`'s turn; returns once it is on disk.
    pub async fn record_step(&self, id: TaskId, index: usize, step: &Step) -> Result<()> {
        let step = self.encode(step)?;
        let index = u32::try_from(index).map_err(|_| self.error("too many steps in one turn".into()))?;
        self.submit(Op::Step { id, index, step }).await.map(drop)
    }

    /// The calls task `id`'s turn has recorded so far, in order.
    pub async fn steps(self: &Arc<Self>, id: TaskId) -> Result<Vec<Step>> {
        let journal = self.clone();
        self.blocking(move || {
            let txn = journal.database()?.begin_read()?;
            let table = txn.open_table(STEPS)?;
            let mut out = Vec::new();
            for row in table.range((id.0, 0)..=(id.0, u32::MAX))? {
                let (_, value) = row?;
                out.push(decode(value.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// Waits until everything submitted before is on disk.
    pub async fn flush(&self) -> Result<()> {
        self.submit(Op::Flush).await.map(drop)
    }

    /// `agent`'s checkpoint, `None` when it has none, or why it cannot be read.
    pub async fn load_checkpoint<T: DeserializeOwned + Send + 'static>(
        self: &Arc<Self>,
        agent: &str,
    ) -> Result<Option<std::result::Result<T, String>>> {
        let (journal, agent) = (self.clone(), agent.to_string());
        self.blocking(move || {
            let txn = journal.database()?.begin_read()?;
            let table = txn.open_table(CHECKPOINTS)?;
            Ok(table.get(agent.as_str())?.map(|v| decode_checkpoint(v.value())))
        })
        .await
    }

    /// The messages waiting in `agent`'s inbox, oldest first.
    pub async fn inbox<T: DeserializeOwned + Send + 'static>(self: &Arc<Self>, agent: &str) -> Result<Vec<T>> {
        let (journal, agent) = (self.clone(), agent.to_string());
        self.blocking(move || {
            let db = journal.database()?;
            let txn = db.begin_read()?;
            let table = txn.open_table(INBOX)?;
            let mut out = Vec::new();
            for row in table.range((agent.as_str(), 0)..=(agent.as_str(), u64::MAX))? {
                let (_, value) = row?;
                out.push(decode(value.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// The tasks of `agent` not finished yet, oldest first, with their attempts.
    pub async fn pending(self: &Arc<Self>, agent: &str) -> Result<Vec<(TaskId, TaskRecord)>> {
        let (journal, agent) = (self.clone(), agent.to_string());
        self.blocking(move || {
            let txn = journal.database()?.begin_read()?;
            let table = txn.open_table(TASKS)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (id, value) = row?;
                let record: TaskRecord = decode(value.value())?;
                if record.agent == agent {
                    out.push((TaskId(id.value()), record));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Where task `id` stands.
    pub async fn status(self: &Arc<Self>, id: TaskId) -> Result<TaskStatus> {
        let journal = self.clone();
        self.blocking(move || {
            let txn = journal.database()?.begin_read()?;
            if let Some(v) = txn.open_table(OUTCOMES)?.get(id.0)? {
                let record: OutcomeRecord = decode(v.value())?;
                return Ok(TaskStatus::Done {
                    agent: record.agent,
                    outcome: record.outcome,
                });
            }
            if let Some(v) = txn.open_table(TASKS)?.get(id.0)? {
                let record: TaskRecord = decode(v.value())?;
                return Ok(TaskStatus::Pending {
                    agent: record.agent,
                    attempts: record.attempts,
                });
            }
            Ok(TaskStatus::Unknown)
        })
        .await
    }

    /// Waits (up to `timeout`) until task `id` has an outcome; returns where it stands then.
    pub async fn wait(self: &Arc<Self>, id: TaskId, timeout: Duration) -> Result<TaskStatus> {
        let mut completions = self.completions.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            completions.borrow_and_update();
            let status = self.status(id).await?;
            if !matches!(status, TaskStatus::Pending { .. }) {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, completions.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the writer is gone: report the last state.
                _ => return self.status(id).await,
            }
        }
    }

    /// `agent`'s completed turns numbered `from..to`, oldest first.
    pub async fn history(self: &Arc<Self>, agent: &str, from: u64, to: u64) -> Result<Vec<Turn>> {
        let (journal, agent) = (self.clone(), agent.to_string());
        self.blocking(move || {
            let txn = journal.database()?.begin_read()?;
            let table = txn.open_table(HISTORY)?;
            let mut out = Vec::new();
            for row in table.range((agent.as_str(), from)..(agent.as_str(), to))? {
                let (_, value) = row?;
                out.push(decode(value.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// The quarantined checkpoints of `agent`: when (ms since the epoch) and why.
    pub async fn quarantined(self: &Arc<Self>, agent: &str) -> Result<Vec<(u64, String)>> {
        let (journal, agent) = (self.clone(), agent.to_string());
        self.blocking(move || {
            let txn = journal.database()?.begin_read()?;
            let table = txn.open_table(QUARANTINE)?;
            let mut out = Vec::new();
            for row in table.range((agent.as_str(), 0)..=(agent.as_str(), u64::MAX))? {
                let (key, value) = row?;
                let record: QuarantineRecord = decode(value.value())?;
                out.push((key.value().1, record.reason));
            }
            Ok(out)
        })
        .await
    }

    /// Encodes a checkpoint (see [`FORMAT_VERSION`]) for [`Completion::checkpoint`].
    pub fn encode_checkpoint<T: Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        let payload =
            bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| RuntimeError::Journal {
                path: self.path.clone(),
                reason: format!("cannot encode a checkpoint: {e}"),
            })?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(&payload));
        bytes.extend_from_slice(&payload);
        Ok(bytes)
    }

    /// Encodes a record for the journal's tables.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| RuntimeError::Journal {
            path: self.path.clone(),
            reason: format!("cannot encode a record: {e}"),
        })
    }

    /// Writes raw bytes as `agent`'s checkpoint (tests damage checkpoints with it).
    #[cfg(test)]
    pub(crate) fn put_raw_checkpoint(&self, agent: &str, bytes: &[u8]) -> Result<()> {
        let db = self.database().map_err(|e| self.error(e.0))?;
        let write = || -> std::result::Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(CHECKPOINTS)?.insert(agent, bytes)?;
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| self.error(e.to_string()))
    }

    async fn submit(&self, op: Op) -> Result<Applied> {
        let (tx, rx) = oneshot::channel();
        self.send(Queued { op, done: Some(tx) })
            .map_err(|_| self.error("it is closed (its writer thread has stopped)".into()))?;
        match rx.await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(reason)) => Err(self.error(reason)),
            Err(_) => Err(self.error("its writer thread stopped before the write was committed".into())),
        }
    }

    fn submit_detached(&self, op: Op) {
        if self.send(Queued { op, done: None }).is_err() {
            tracing::warn!(path = %self.path.display(), "journal writer stopped; an attempt count was not updated");
        }
    }

    fn send(&self, queued: Queued) -> std::result::Result<(), ()> {
        match &*self.ops.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(ops) => ops.send(queued).map_err(drop),
            None => Err(()),
        }
    }

    /// The database, while the journal is open.
    fn database(&self) -> std::result::Result<Arc<Database>, ReadError> {
        self.db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| ReadError("the journal is closed".into()))
    }

    /// Commits what was submitted and closes the file; later calls fail with a journal error.
    pub fn close(&self) {
        // Dropping the sender ends the writer's loop once it has committed what it has.
        drop(self.ops.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
        drop(self.db.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> std::result::Result<T, ReadError> + Send + 'static,
    ) -> Result<T> {
        match tokio::task::spawn_blocking(read).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(e.0)),
            Err(e) => Err(self.error(format!("a read panicked: {e}"))),
        }
    }

    fn error(&self, reason: String) -> RuntimeError {
        RuntimeError::Journal {
            path: self.path.clone(),
            reason,
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// A read failure, as text (redb has several error types).
struct ReadError(String);

impl<E: std::fmt::Display> From<E> for ReadError {
    fn from(e: E) -> Self {
        ReadError(e.to_string())
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, ReadError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| ReadError(format!("a journal record cannot be decoded: {e}")))
}

/// Decodes a checkpoint, or says why it cannot be.
fn decode_checkpoint<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
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
            "truncated or padded: the header promises {len} payload bytes, the record has {}",
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The write side, on its own thread.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    /// Outcome records in the table (pruned past `outcomes_kept`).
    outcomes: usize,
    outcomes_kept: usize,
    completed: watch::Sender<u64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Queued>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(q) => group.push(q),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let results = self.commit(&group);
            let finished = group.iter().any(|q| matches!(q.op, Op::Complete { .. }));
            for (queued, result) in group.into_iter().zip(results) {
                if let Some(done) = queued.done {
                    let _ = done.send(result);
                } else if let Err(reason) = result {
                    tracing::warn!(path = %self.path.display(), %reason, "journal write failed");
                }
            }
            if finished {
                self.completed.send_modify(|n| *n += 1);
            }
        }
    }

    /// Applies a group in one transaction: one result per operation. A failure of the
    /// transaction itself fails every operation in it.
    fn commit(&mut self, group: &[Queued]) -> Vec<std::result::Result<Applied, String>> {
        let outcomes_before = self.outcomes;
        let attempt = (|| -> std::result::Result<Vec<std::result::Result<Applied, String>>, redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_quick_repair(true);
            let mut results = Vec::with_capacity(group.len());
            {
                let mut tasks = txn.open_table(TASKS)?;
                let mut outcomes = txn.open_table(OUTCOMES)?;
                let mut checkpoints = txn.open_table(CHECKPOINTS)?;
                let mut history = txn.open_table(HISTORY)?;
                let mut quarantine = txn.open_table(QUARANTINE)?;
                let mut inbox = txn.open_table(INBOX)?;
                let mut steps = txn.open_table(STEPS)?;
                for queued in group {
                    let result = match &queued.op {
                        Op::Append { id, record } => {
                            tasks.insert(id.0, record.as_slice())?;
                            Ok(Applied::Yes)
                        }
                        Op::Attempt { id, delta } => {
                            let current = tasks.get(id.0)?.map(|v| v.value().to_vec());
                            if let Some(bytes) = current
                                && let Ok(mut record) = decode::<TaskRecord>(&bytes)
                            {
                                record.attempts = record.attempts.saturating_add_signed(*delta);
                                let bytes = bincode::serde::encode_to_vec(&record, bincode::config::standard())
                                    .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
                                tasks.insert(id.0, bytes.as_slice())?;
                            }
                            Ok(Applied::Yes)
                        }
                        Op::Complete {
                            id,
                            agent,
                            outcome,
                            completion,
                        } => {
                            if outcomes.get(id.0)?.is_some() {
                                Ok(Applied::AlreadyRecorded)
                            } else {
                                outcomes.insert(id.0, outcome.as_slice())?;
                                self.outcomes += 1;
                                tasks.remove(id.0)?;
                                steps.retain_in((id.0, 0)..=(id.0, u32::MAX), |_, _| false)?;
                                if let Some(bytes) = &completion.checkpoint {
                                    checkpoints.insert(agent.as_str(), bytes.as_slice())?;
                                }
                                if let Some((number, bytes)) = &completion.turn {
                                    history.insert((agent.as_str(), *number), bytes.as_slice())?;
                                }
                                match &completion.inbox {
                                    InboxChange::Keep => {}
                                    InboxChange::Add(bytes) => {
                                        inbox.insert((agent.as_str(), id.0), bytes.as_slice())?;
                                    }
                                    InboxChange::Clear => {
                                        let keys: Vec<u64> = inbox
                                            .range((agent.as_str(), 0)..=(agent.as_str(), u64::MAX))?
                                            .map(|row| row.map(|(k, _)| k.value().1))
                                            .collect::<std::result::Result<_, _>>()?;
                                        for key in keys {
                                            inbox.remove((agent.as_str(), key))?;
                                        }
                                    }
                                }
                                Ok(Applied::Yes)
                            }
                        }
                        Op::Quarantine { agent, reason } => {
                            let bytes = checkpoints.remove(agent.as_str())?.map(|v| v.value().to_vec());
                            if let Some(bytes) = bytes {
                                let record = QuarantineRecord {
                                    reason: reason.clone(),
                                    bytes,
                                };
                                let value = bincode::serde::encode_to_vec(&record, bincode::config::standard())
                                    .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
                                // A unique key even for two quarantines in one millisecond.
                                let mut at = unix_ms();
                                while quarantine.get((agent.as_str(), at))?.is_some() {
                                    at += 1;
                                }
                                quarantine.insert((agent.as_str(), at), value.as_slice())?;
                            }
                            Ok(Applied::Yes)
                        }
                        Op::Step { id, index, step } => {
                            // A step of a task that has ended (its turn was cut short after
                            // the outcome was recorded) is dropped: nothing will replay it.
                            if outcomes.get(id.0)?.is_none() {
                                steps.insert((id.0, *index), step.as_slice())?;
                            }
                            Ok(Applied::Yes)
                        }
                        Op::Flush => Ok(Applied::Yes),
                    };
                    results.push(result);
                }
                while self.outcomes > self.outcomes_kept {
                    if outcomes.pop_first()?.is_none() {
                        break;
                    }
                    self.outcomes -= 1;
                }
            }
            txn.commit()?;
            Ok(results)
        })();
        match attempt {
            Ok(results) => results,
            Err(e) => {
                self.outcomes = outcomes_before;
                let reason = format!("commit failed: {e}");
                tracing::error!(path = %self.path.display(), %reason, "journal");
                group.iter().map(|_| Err(reason.clone())).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{FailureKind, TaskFailure};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_task_is_pending_until_completed_once_and_ids_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let journal = Journal::open(dir.path(), 100).unwrap();
            let id = journal.next_id();
            journal.append(id, "a", &TaskInput::Ask("hi".into())).await.unwrap();
            journal.started(id).await.unwrap();
            assert!(matches!(
                journal.status(id).await.unwrap(),
                TaskStatus::Pending { attempts: 1, .. }
            ));
            let done = TaskOutcome::Delivered;
            let completion = || Completion {
                checkpoint: Some(b"state".to_vec()),
                turn: None,
                inbox: InboxChange::Keep,
            };
            assert_eq!(
                journal.complete(id, "a", &done, completion()).await.unwrap(),
                Applied::Yes
            );
            assert!(matches!(journal.status(id).await.unwrap(), TaskStatus::Done { .. }));
            let again = journal.complete(id, "a", &done, completion()).await.unwrap();
            assert_eq!(again, Applied::AlreadyRecorded, "a second completion writes nothing");
            assert!(journal.pending("a").await.unwrap().is_empty());
            drop(journal);

            let reopened = Journal::open(dir.path(), 100).unwrap();
            assert!(reopened.next_id() > id, "ids are never handed out twice");
            assert!(matches!(reopened.status(id).await.unwrap(), TaskStatus::Done { .. }));
        });
    }

    #[test]
    fn a_turns_steps_are_kept_until_its_task_completes() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let journal = Journal::open(dir.path(), 100).unwrap();
            let (id, other) = (journal.next_id(), journal.next_id());
            for task in [id, other] {
                journal
                    .append(task, "a", &TaskInput::Ask("read it".into()))
                    .await
                    .unwrap();
            }
            let step = |n: u64| Step {
                text: String::new(),
                name: "fs_read".into(),
                arguments: format!("{{\"path\":\"{n}.txt\"}}"),
                result: Ok(format!("\"contents of {n}\"")),
                duration_ms: n,
                prompt_tokens: 10,
            };
            for n in 0..3 {
                journal.record_step(id, n as usize, &step(n)).await.unwrap();
            }
            journal.record_step(other, 0, &step(9)).await.unwrap();
            drop(journal);

            // A new process replays them in order, each task its own.
            let journal = Journal::open(dir.path(), 100).unwrap();
            assert_eq!(journal.steps(id).await.unwrap(), vec![step(0), step(1), step(2)]);
            assert_eq!(journal.steps(other).await.unwrap(), vec![step(9)]);
            journal
                .complete(id, "a", &TaskOutcome::Delivered, Completion::none())
                .await
                .unwrap();
            assert!(journal.steps(id).await.unwrap().is_empty(), "completion removes them");
            assert_eq!(journal.steps(other).await.unwrap(), vec![step(9)]);
            // A late step of a finished task is dropped: nothing would ever replay it.
            journal.record_step(id, 3, &step(3)).await.unwrap();
            assert!(journal.steps(id).await.unwrap().is_empty());
        });
    }

    #[test]
    fn concurrent_appends_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let journal = Journal::open(dir.path(), 10_000).unwrap();
            let mut tasks = Vec::new();
            for i in 0..500 {
                let journal = journal.clone();
                tasks.push(tokio::spawn(async move {
                    let id = journal.next_id();
                    journal
                        .append(id, &format!("agent-{}", i % 7), &TaskInput::Ask(format!("q{i}")))
                        .await
                        .unwrap();
                    id
                }));
            }
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap());
            }
            let mut pending = 0;
            for a in 0..7 {
                pending += journal.pending(&format!("agent-{a}")).await.unwrap().len();
            }
            assert_eq!(pending, 500);
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 500);
        });
    }

    #[test]
    fn old_outcomes_are_pruned_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let journal = Journal::open(dir.path(), 3).unwrap();
            let mut ids = Vec::new();
            for _ in 0..5 {
                let id = journal.next_id();
                journal.append(id, "a", &TaskInput::Ask("x".into())).await.unwrap();
                let failed = TaskOutcome::Failed(TaskFailure {
                    kind: FailureKind::ShuttingDown,
                    message: "bye".into(),
                });
                journal.complete(id, "a", &failed, Completion::none()).await.unwrap();
                ids.push(id);
            }
            assert!(matches!(journal.status(ids[0]).await.unwrap(), TaskStatus::Unknown));
            assert!(matches!(journal.status(ids[4]).await.unwrap(), TaskStatus::Done { .. }));
        });
    }

    #[test]
    fn damaged_checkpoints_say_why_and_can_be_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let journal = Journal::open(dir.path(), 10).unwrap();
            let good = journal.encode_checkpoint(&vec![1u32, 2, 3]).unwrap();
            for (len, flip) in [(good.len() - 1, false), (good.len(), true), (10, false)] {
                let mut bad = good[..len].to_vec();
                if flip {
                    *bad.last_mut().unwrap() ^= 0x40;
                }
                journal.put_raw_checkpoint("a", &bad).unwrap();
                let read = journal.load_checkpoint::<Vec<u32>>("a").await.unwrap().unwrap();
                let reason = read.unwrap_err();
                assert!(reason.contains("truncated") || reason.contains("SHA-256"), "{reason}");
            }
            journal.quarantine("a", "damaged").await.unwrap();
            assert!(journal.load_checkpoint::<Vec<u32>>("a").await.unwrap().is_none());
            let quarantined = journal.quarantined("a").await.unwrap();
            assert_eq!(quarantined.len(), 1);
            assert_eq!(quarantined[0].1, "damaged");
            journal.put_raw_checkpoint("a", &good).unwrap();
            let restored = journal.load_checkpoint::<Vec<u32>>("a").await.unwrap().unwrap();
            assert_eq!(restored.unwrap(), vec![1, 2, 3]);
        });
    }
}
