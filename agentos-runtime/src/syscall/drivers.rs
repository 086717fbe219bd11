//! The drivers behind the file, exec and fetch system calls.
//!
//! Paths are resolved beneath the configured file root: absolute paths and `..` are refused
//! before anything is touched, and the deepest existing ancestor of the target is
//! canonicalised and must still lie under the root, so a symlink that points outside is
//! refused too. The check and the use are two steps (a symlink swapped in between them is not
//! caught); resolving inside the kernel with `openat2(RESOLVE_BENEATH)` is the isolation
//! issue's work.
//!
//! `net_fetch` fetches only from hosts on `SyscallConfig::net_allow`, over http or https, and
//! follows at most [`MAX_REDIRECTS`] redirects itself, checking each new host against the
//! list; the body is read up to `max_fetch_bytes` while it streams (the rest is not read).

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::syscall::wire::ExistingPaths;
use crate::syscall::{SyscallConfig, SyscallError};

/// `path` (relative, from the model) resolved under `root`.
pub(crate) fn resolve(root: &Path, path: &str) -> Result<PathBuf, SyscallError> {
    let relative = Path::new(path);
    if path.is_empty() {
        return Err(SyscallError::Denied("an empty path".into()));
    }
    for component in relative.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(SyscallError::Denied(format!("`{path}` goes up with `..`")));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(SyscallError::Denied(format!(
                    "`{path}` is absolute; paths are relative to the work directory"
                )));
            }
        }
    }
    let root = root
        .canonicalize()
        .map_err(|e| SyscallError::Io(format!("the work directory is unavailable: {e}")))?;
    let joined = root.join(relative);
    let mut existing = joined.as_path();
    while std::fs::symlink_metadata(existing).is_err() {
        existing = existing.parent().unwrap_or(&root);
    }
    let real = existing
        .canonicalize()
        .map_err(|e| SyscallError::Io(format!("cannot resolve `{path}`: {e}")))?;
    if !real.starts_with(&root) {
        return Err(SyscallError::Denied(format!(
            "`{path}` leads outside the work directory through a symlink"
        )));
    }
    Ok(joined)
}

fn io_error(path: &str, e: std::io::Error) -> SyscallError {
    match e.kind() {
        std::io::ErrorKind::NotFound => SyscallError::NotFound(path.to_string()),
        std::io::ErrorKind::PermissionDenied => SyscallError::Denied(format!("`{path}`: {e}")),
        _ => SyscallError::Io(format!("`{path}`: {e}")),
    }
}

fn root(config: &SyscallConfig) -> Result<&Path, SyscallError> {
    config
        .fs_root
        .as_deref()
        .ok_or_else(|| SyscallError::Denied("no work directory is configured for file calls".into()))
}

pub(crate) async fn fs_read(config: &SyscallConfig, path: &str) -> Result<Value, SyscallError> {
    let full = resolve(root(config)?, path)?;
    let file = tokio::fs::File::open(&full).await.map_err(|e| io_error(path, e))?;
    let metadata = file.metadata().await.map_err(|e| io_error(path, e))?;
    if !metadata.is_file() {
        return Err(SyscallError::Denied(format!("`{path}` is not a regular file")));
    }
    let mut bytes = Vec::new();
    // One byte more than the cap tells a file at the cap from a larger one.
    file.take(config.max_file_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| io_error(path, e))?;
    if bytes.len() > config.max_file_bytes {
        return Err(SyscallError::Denied(format!(
            "`{path}` is larger than {} bytes",
            config.max_file_bytes
        )));
    }
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|_| SyscallError::Failed(format!("`{path}` is not UTF-8 text")))
}

pub(crate) async fn fs_write(config: &SyscallConfig, path: &str, content: &str) -> Result<Value, SyscallError> {
    if content.len() > config.max_file_bytes {
        return Err(SyscallError::Denied(format!(
            "the content is larger than {} bytes",
            config.max_file_bytes
        )));
    }
    let full = resolve(root(config)?, path)?;
    if let Some(parent) = full.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| io_error(path, e))?;
    }
    if tokio::fs::symlink_metadata(&full).await.is_ok_and(|m| m.is_dir()) {
        return Err(SyscallError::Denied(format!("`{path}` is a directory")));
    }
    tokio::fs::write(&full, content).await.map_err(|e| io_error(path, e))?;
    Ok(json!({"path": path, "bytes": content.len()}))
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

/// Most entries one listing returns.
const MAX_LIST_ENTRIES: usize = 1000;

pub(crate) async fn fs_list(config: &SyscallConfig, path: &str) -> Result<Value, SyscallError> {
    let full = resolve(root(config)?, path)?;
    let mut dir = tokio::fs::read_dir(&full).await.map_err(|e| io_error(path, e))?;
    let mut entries = Vec::new();
    let mut more = false;
    while let Some(entry) = dir.next_entry().await.map_err(|e| io_error(path, e))? {
        if entries.len() == MAX_LIST_ENTRIES {
            more = true;
            break;
        }
        let kind = match entry.file_type().await {
            Ok(t) if t.is_dir() => "dir",
            Ok(t) if t.is_symlink() => "symlink",
            _ => "file",
        };
        entries.push((entry.file_name().to_string_lossy().into_owned(), kind));
    }
    entries.sort();
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(name, kind)| json!({"name": name, "type": kind}))
        .collect();
    Ok(json!({"path": path, "entries": entries, "truncated": more}))
}

pub(crate) async fn exec(
    config: &SyscallConfig,
    program: &str,
    args: &[String],
    timeout_ms: Option<u64>,
) -> Result<Value, SyscallError> {
    if !config.exec_allow.iter().any(|allowed| allowed == program) {
        return Err(SyscallError::Denied(format!(
            "`{program}` is not on the list of programs this system runs"
        )));
    }
    let limit = timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(config.exec_timeout)
        .min(config.exec_timeout);
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Its own process group, so that what it starts is killed with it.
    #[cfg(unix)]
    command.process_group(0);
    if let Some(root) = &config.fs_root {
        command.current_dir(root);
    }
    let mut child = command
        .spawn()
        .map_err(|e| SyscallError::Failed(format!("cannot start `{program}`: {e}")))?;
    let _group = KillGroup(child.id());
    let cap = config.max_output_bytes;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let run = async {
        let (out, err, status) = tokio::join!(read_capped(stdout, cap), read_capped(stderr, cap), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(limit, run).await {
        Ok(((stdout, out_cut), (stderr, err_cut), status)) => {
            let status = status.map_err(|e| SyscallError::Io(format!("waiting for `{program}`: {e}")))?;
            Ok(json!({
                "exit_code": status.code(),
                "stdout": stdout,
                "stderr": stderr,
                "truncated": out_cut || err_cut,
            }))
        }
        // Dropping the future drops the child, which `kill_on_drop` kills, and `_group` kills
        // whatever it started.
        Err(_) => Err(SyscallError::Timeout(limit.as_millis() as u64)),
    }
}

/// Kills an `exec` child's process group when the call ends in any way (finished, timed out,
/// or cancelled by the dispatcher's own timeout): nothing it started outlives the call.
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(leader) = self.0 {
            // SAFETY: killpg only sends a signal; a group that no longer exists is ESRCH.
            unsafe {
                libc::killpg(leader as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// Reads a pipe to its end, keeping the first `cap` bytes (the rest is read and dropped, so a
/// chatty program never blocks on a full pipe). Returns the text and whether it was cut.
async fn read_capped(mut pipe: impl AsyncRead + Unpin, cap: usize) -> (String, bool) {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    let mut cut = false;
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), cut)
}

/// Redirects `net_fetch` follows (each target is checked against the allowed hosts).
pub(crate) const MAX_REDIRECTS: usize = 5;

/// The host of `url` when its scheme is http or https and the host is allowed.
fn allowed_host(config: &SyscallConfig, url: &str) -> Result<String, SyscallError> {
    let lower = url.trim_start().to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(SyscallError::Denied(format!(
            "`{url}`: only http and https URLs are fetched"
        )));
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e| SyscallError::Arguments {
        name: "net_fetch".into(),
        reason: format!("`{url}` is not a URL: {e}"),
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(SyscallError::Denied(format!(
                "`{url}`: only http and https URLs are fetched"
            )));
        }
    }
    let host = uri
        .host()
        .ok_or_else(|| SyscallError::Denied(format!("`{url}` names no host")))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    let allowed = config.net_allow.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == pattern,
        }
    });
    match allowed {
        true => Ok(host),
        false => Err(SyscallError::Denied(format!("fetching from `{host}` is not allowed"))),
    }
}

/// `net_fetch`: a GET of `url`, its status, content type and (UTF-8, lossy) body.
pub(crate) async fn net_fetch(config: &SyscallConfig, url: &str) -> Result<Value, SyscallError> {
    allowed_host(config, url)?;
    let config = config.clone();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || fetch_blocking(&config, url))
        .await
        .map_err(|e| SyscallError::Failed(format!("the fetch stopped: {e}")))?
}

fn fetch_blocking(config: &SyscallConfig, mut url: String) -> Result<Value, SyscallError> {
    use std::io::Read;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.fetch_timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    for _ in 0..=MAX_REDIRECTS {
        let mut response = agent.get(&url).call().map_err(|e| match e {
            ureq::Error::Timeout(_) => SyscallError::Timeout(config.fetch_timeout.as_millis() as u64),
            other => SyscallError::Io(format!("fetching `{url}`: {other}")),
        })?;
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = response.headers().get("location").and_then(|l| l.to_str().ok())
        {
            let next: ureq::http::Uri = location
                .parse()
                .map_err(|e| SyscallError::Io(format!("bad redirect `{location}`: {e}")))?;
            url = match next.host() {
                Some(_) => location.to_string(),
                None => {
                    // A relative redirect stays on the same scheme and authority.
                    let base: ureq::http::Uri = url.parse().map_err(|e| SyscallError::Io(format!("{e}")))?;
                    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
                    let scheme = base.scheme_str().unwrap_or("http");
                    let path = if location.starts_with('/') {
                        location.to_string()
                    } else {
                        format!("/{location}")
                    };
                    format!("{scheme}://{authority}{path}")
                }
            };
            allowed_host(config, &url)?;
            continue;
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut body = Vec::new();
        let cap = config.max_fetch_bytes;
        response
            .body_mut()
            .as_reader()
            .take(cap as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| SyscallError::Io(format!("reading `{url}`: {e}")))?;
        let truncated = body.len() > cap;
        body.truncate(cap);
        return Ok(json!({
            "url": url,
            "status": status.as_u16(),
            "content_type": content_type,
            "body": String::from_utf8_lossy(&body),
            "truncated": truncated,
        }));
    }
    Err(SyscallError::Failed(format!("more than {MAX_REDIRECTS} redirects")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        let real_root = root.canonicalize().unwrap();
        assert_eq!(resolve(root, "sub/new.txt").unwrap(), real_root.join("sub/new.txt"));
        assert_eq!(resolve(root, "./a").unwrap(), real_root.join("a"));
        for bad in ["", "../x", "sub/../../x", "/etc/passwd", "sub/.."] {
            assert!(
                matches!(resolve(root, bad), Err(SyscallError::Denied(_))),
                "{bad} was allowed"
            );
        }
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
            assert!(matches!(resolve(root, "out/x"), Err(SyscallError::Denied(_))));
            assert!(matches!(resolve(root, "out"), Err(SyscallError::Denied(_))));
            std::os::unix::fs::symlink(root.join("sub"), root.join("inside")).unwrap();
            assert!(resolve(root, "inside/x").is_ok());
        }
    }

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

    #[test]
    fn fetches_only_from_listed_hosts() {
        let config = SyscallConfig {
            net_allow: vec!["example.com".into(), "*.docs.rs".into()],
            ..SyscallConfig::default()
        };
        assert_eq!(allowed_host(&config, "https://Example.com/a").unwrap(), "example.com");
        assert!(allowed_host(&config, "https://serde.docs.rs/x").is_ok());
        assert!(allowed_host(&config, "https://docs.rs/x").is_err());
        assert!(allowed_host(&config, "https://example.com.evil.net/").is_err());
        assert!(allowed_host(&config, "https://user@evil.net/").is_err());
        assert!(allowed_host(&config, "gopher://example.com/").is_err());
    }
}
