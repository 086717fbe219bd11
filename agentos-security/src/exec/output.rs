//! Capped output capture, and what the ending of a run says about the limit it hit.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

/// Read chunk size.
const CHUNK: usize = 64 * 1024;

/// Reads `reader` to its end, keeping the first `cap` bytes and dropping the rest (reading on, so the
/// writer never blocks on a full pipe). Returns the kept bytes and whether any were dropped.
pub(super) async fn read_capped<R: AsyncRead + Unpin>(mut reader: R, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let room = cap.saturating_sub(kept.len());
        let keep = read.min(room);
        kept.extend_from_slice(&chunk[..keep]);
        if keep < read {
            truncated = true;
        }
    }
    (kept, truncated)
}

/// Waits (at most `grace`) for a reader task; a reader still blocked then (its pipe held open by a process
/// that escaped) is aborted and named in `warnings`.
pub(super) async fn collect(
    reader: &mut JoinHandle<(Vec<u8>, bool)>,
    grace: Duration,
    warnings: &mut Vec<String>,
) -> (Vec<u8>, bool) {
    match tokio::time::timeout(grace, &mut *reader).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            warnings.push(format!("output reader failed: {err}"));
            (Vec::new(), false)
        }
        Err(_elapsed) => {
            reader.abort();
            warnings.push(
                "an output pipe was still open after the sandbox was killed (a process escaped); output dropped"
                    .to_string(),
            );
            (Vec::new(), false)
        }
    }
}

/// Messages programs print when an allocation fails under RLIMIT_AS.
const MEMORY_MESSAGES: [&str; 7] = [
    "Cannot allocate memory",
    "memory exhausted",
    "MemoryError",
    "out of memory",
    "Out of memory",
    "std::bad_alloc",
    "memory allocation of",
];
/// Messages shells and libc print when fork fails under a process limit.
const FORK_MESSAGES: [&str; 3] = ["Cannot fork", "can't fork", "fork: Resource temporarily unavailable"];

/// The limit the ending shows was hit. Signals and the cgroup's own count are certain; otherwise the error
/// message of a failed run (a shell's report of a child's signal, a failed allocation or fork) is the sign.
pub(super) fn limit_hit(
    exit_code: Option<i32>,
    signal: Option<i32>,
    stderr: &str,
    process_limit_hit: bool,
) -> Option<&'static str> {
    match signal {
        Some(libc::SIGXCPU) => return Some("cpu"),
        Some(libc::SIGXFSZ) => return Some("file size"),
        _ => {}
    }
    if process_limit_hit {
        return Some("processes");
    }
    if exit_code == Some(0) {
        return None;
    }
    // A shell reports a child killed by SIGXCPU/SIGXFSZ with the signal's description.
    if stderr.contains("CPU time limit exceeded") {
        Some("cpu")
    } else if stderr.contains("File size limit exceeded") || stderr.contains("File too large") {
        Some("file size")
    } else if MEMORY_MESSAGES.iter().any(|message| stderr.contains(message)) {
        Some("memory")
    } else if FORK_MESSAGES.iter().any(|message| stderr.contains(message)) {
        Some("processes")
    } else if stderr.contains("Too many open files") {
        Some("open files")
    } else {
        None
    }
}
