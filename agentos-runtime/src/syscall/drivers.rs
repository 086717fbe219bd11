//! The drivers behind the file, exec and fetch system calls: thin adapters over
//! [`agentos_security`]'s sandboxed drivers, run on the blocking pool where they block.
//!
//! - Files ([`agentos_security::fs::Jail`]): every path is resolved beneath the grant's root by
//!   the kernel at open time (`openat2` with `RESOLVE_BENEATH`), so `..`, absolute paths,
//!   symlinks that leave the root (also ones swapped in after a check), magic links and hard
//!   links to outside files cannot escape; reads and writes are capped.
//! - `exec` ([`agentos_security::exec`]): the child runs under rlimits, a pids cgroup,
//!   no-new-privileges, Landlock and a seccomp filter where the host supports them (the result
//!   says which were in force), killed with its whole group at the timeout.
//! - `net_fetch` ([`agentos_security::net`]): scheme and host allowlist, every resolved address
//!   checked (private and loopback denied unless allowed) and the checked address used, a
//!   redirect limit with each hop re-checked, connect and total timeouts, a byte cap while
//!   streaming.

use std::path::Path;

use agentos_security::capability::{Access, NetGrant, Resolved};
use agentos_security::exec::{ExecLimits, ExecRequest};
use agentos_security::fs::{FsLimits, Jail};
use agentos_security::net::FetchPolicy;
use serde_json::{Value, json};

use crate::agent::dispatch::driver_error;
use crate::syscall::wire::ExistingPaths;
use crate::syscall::{SyscallConfig, SyscallError};

fn fs_limits(config: &SyscallConfig) -> FsLimits {
    FsLimits {
        max_read_bytes: config.max_file_bytes,
        max_write_bytes: config.max_file_bytes,
        max_list_entries: MAX_LIST_ENTRIES,
    }
}

/// Runs `work` on a jail of `file`'s grant, on the blocking pool.
async fn in_jail<T: Send + 'static>(
    file: Resolved,
    work: impl FnOnce(&Jail, &str) -> Result<T, agentos_security::DriverError> + Send + 'static,
) -> Result<T, SyscallError> {
    tokio::task::spawn_blocking(move || {
        let jail = Jail::open(&file.grant.path, file.grant.access)?;
        // The grant's path was canonical when the agent got it; a root that now resolves
        // elsewhere was replaced (by a symlink, say) and is not the directory granted.
        if jail.root() != file.grant.path {
            return Err(agentos_security::DriverError::Denied(format!(
                "the granted directory `{}` now resolves to `{}`",
                file.grant.path.display(),
                jail.root().display()
            )));
        }
        work(&jail, &file.relative)
    })
    .await
    .map_err(|e| SyscallError::Failed(format!("the file call stopped: {e}")))?
    .map_err(driver_error)
}

pub(crate) async fn fs_read(config: &SyscallConfig, file: Resolved) -> Result<Value, SyscallError> {
    let limits = fs_limits(config);
    in_jail(file, move |jail, relative| jail.read(relative, &limits))
        .await
        .map(Value::String)
}

pub(crate) async fn fs_write(
    config: &SyscallConfig,
    file: Resolved,
    path: &str,
    content: &str,
) -> Result<Value, SyscallError> {
    let limits = fs_limits(config);
    let content = content.to_string();
    let bytes = in_jail(file, move |jail, relative| jail.write(relative, &content, &limits)).await?;
    Ok(json!({"path": path, "bytes": bytes}))
}

/// Most entries one listing returns.
const MAX_LIST_ENTRIES: usize = 1000;

pub(crate) async fn fs_list(config: &SyscallConfig, file: Resolved, path: &str) -> Result<Value, SyscallError> {
    let limits = fs_limits(config);
    let listing = in_jail(file, move |jail, relative| jail.list(relative, &limits)).await?;
    let entries: Vec<Value> = listing
        .entries
        .iter()
        .map(|entry| json!({"name": entry.name, "type": entry.kind}))
        .collect();
    Ok(json!({"path": path, "entries": entries, "truncated": listing.truncated}))
}

pub(crate) async fn exec(
    config: &SyscallConfig,
    limits: &ExecLimits,
    work_dir: Option<&agentos_security::capability::FileGrant>,
    program: &str,
    args: &[String],
    timeout_ms: Option<u64>,
) -> Result<Value, SyscallError> {
    let limits = ExecLimits {
        timeout: timeout_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(config.exec_timeout)
            .min(config.exec_timeout),
        max_output_bytes: config.max_output_bytes,
        ..limits.clone()
    };
    // A work directory that no longer resolves to itself was replaced (a symlink put in its
    // place): running there would grant what the agent was never given.
    if let Some(grant) = work_dir
        && std::fs::canonicalize(&grant.path).ok().as_deref() != Some(grant.path.as_path())
    {
        return Err(SyscallError::Denied(format!(
            "the work directory `{}` is missing or no longer resolves to itself",
            grant.path.display()
        )));
    }
    // A read-only work directory is not writable by the program either.
    let writable = work_dir.filter(|grant| grant.access == Access::ReadWrite);
    let request = ExecRequest {
        program,
        args,
        workdir: work_dir.map(|grant| grant.path.as_path()),
        writable: writable.is_some(),
        limits: &limits,
    };
    let outcome = agentos_security::exec::run(request).await.map_err(driver_error)?;
    Ok(json!({
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "truncated": outcome.truncated,
        "limit_hit": outcome.limit_hit,
        "sandbox": outcome.layers,
    }))
}

/// `net_fetch`: a GET of `url` under the agent's network grant and the configured limits.
pub(crate) async fn net_fetch(config: &SyscallConfig, grant: &NetGrant, url: &str) -> Result<Value, SyscallError> {
    let policy = FetchPolicy {
        allow_hosts: grant.hosts.clone(),
        allow_private: grant.allow_private,
        max_bytes: config.max_fetch_bytes,
        total_timeout: config.fetch_timeout,
        ..FetchPolicy::default()
    };
    let fetched = agentos_security::net::fetch(&policy, url).await.map_err(driver_error)?;
    Ok(json!({
        "url": fetched.url,
        "status": fetched.status,
        "content_type": fetched.content_type.unwrap_or_default(),
        "body": fetched.body,
        "truncated": fetched.truncated,
    }))
}

/// Every file and directory beneath `root`; `None` when there are more than `limit` of
/// either, when more than `16 * limit` entries would have to be looked at, or when a
/// directory cannot be read: the caller then offers no choice rather than an incomplete one.
/// A symbolic link counts when what it points to resolves beneath the root (as [`resolve`]
/// requires); a linked directory is walked under the link's name too. A loop of links ends
/// on the limits, or where the system stops resolving the path (too many links), past which
/// no call could open it either. Names that are not UTF-8 are left out: a call cannot write
/// them.
pub(crate) fn existing_paths(root: &Path, limit: usize) -> Option<ExistingPaths> {
    let root = root.canonicalize().ok()?;
    let mut found = ExistingPaths {
        files: Vec::new(),
        dirs: vec![".".to_string()],
    };
    let mut budget = limit.saturating_mul(16);
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ok()? {
            budget = budget.checked_sub(1)?;
            let path = entry.ok()?.path();
            let Some(relative) = path.strip_prefix(&root).ok().and_then(Path::to_str) else {
                continue;
            };
            let relative = relative.replace(std::path::MAIN_SEPARATOR, "/");
            // Follows links; a link whose target leaves the root is left out.
            let Ok(target) = path.canonicalize() else {
                continue;
            };
            if !target.starts_with(&root) {
                continue;
            }
            if target.is_dir() {
                pending.push(path);
                found.dirs.push(relative);
            } else if target.is_file() {
                found.files.push(relative);
            }
            if found.files.len() > limit || found.dirs.len() > limit {
                return None;
            }
        }
    }
    found.files.sort();
    found.dirs[1..].sort();
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_paths_are_every_file_and_directory_a_call_can_reach() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        for file in ["b.txt", "a.txt", "sub/c.md", "sub/deeper/d.rs"] {
            std::fs::write(root.join(file), "x").unwrap();
        }
        let mut files = vec!["a.txt", "b.txt", "sub/c.md", "sub/deeper/d.rs"];
        let mut dirs = vec![".", "sub", "sub/deeper"];
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("secret"), "x").unwrap();
            std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
            std::os::unix::fs::symlink(outside.path().join("secret"), root.join("secret")).unwrap();
            std::os::unix::fs::symlink(root.join("a.txt"), root.join("alias")).unwrap();
            std::os::unix::fs::symlink(root.join("sub"), root.join("linked")).unwrap();
            // A loop of links ends on the limits: no listing rather than an endless one.
            std::os::unix::fs::symlink(root.join("sub"), root.join("sub/loop")).unwrap();
            assert_eq!(existing_paths(root, 100), None);
            std::fs::remove_file(root.join("sub/loop")).unwrap();
            files.extend(["alias", "linked/c.md", "linked/deeper/d.rs"]);
            dirs.extend(["linked", "linked/deeper"]);
            files.sort();
            dirs[1..].sort();
        }
        let found = existing_paths(root, 100).unwrap();
        assert_eq!(found.files, files);
        assert_eq!(found.dirs, dirs);
        // More files than the limit: no choice rather than an incomplete one.
        assert_eq!(existing_paths(root, 2), None);
        assert_eq!(existing_paths(&root.join("missing"), 100), None);
    }
}
