//! The jailed file driver: every path an agent names is resolved beneath the agent's root by the
//! kernel at open time (`openat2` with `RESOLVE_BENEATH`), so there is no gap between a check and
//! the use of the file. Where `openat2` is unavailable the driver walks the path one component at
//! a time with `O_NOFOLLOW`, following no symbolic link at all.

use std::collections::{BTreeMap, BinaryHeap};
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libc::c_int;

use crate::common::{DriverError, Trial};

/// What an agent may do beneath a root: `Read` allows `read` and `list`, `ReadWrite` also
/// `write` (the capability's own type).
pub use crate::capability::Access;

/// Size limits applied to each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsLimits {
    /// Largest file `read` returns; larger files are denied.
    pub max_read_bytes: usize,
    /// Largest content `write` accepts.
    pub max_write_bytes: usize,
    /// Most entries `list` returns; the listing is marked truncated beyond it.
    pub max_list_entries: usize,
}

impl Default for FsLimits {
    /// 1 MiB reads, 1 MiB writes, 1000 listed entries.
    fn default() -> Self {
        FsLimits {
            max_read_bytes: 1 << 20,
            max_write_bytes: 1 << 20,
            max_list_entries: 1000,
        }
    }
}

/// How paths are resolved beneath the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: the kernel
    /// refuses any resolution that leaves the root; symbolic links that stay beneath it are followed.
    Openat2Beneath,
    /// One `openat(O_NOFOLLOW)` per component from the root: no symbolic link is followed at all.
    NoFollowWalk,
}

impl fmt::Display for Resolution {
    /// A short human description of the mechanism.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolution::Openat2Beneath => {
                f.write_str("kernel openat2 RESOLVE_BENEATH (links that stay inside the work directory are followed)")
            }
            Resolution::NoFollowWalk => f.write_str("component walk with O_NOFOLLOW (no symbolic link is followed)"),
        }
    }
}

/// What kind of filesystem object a listed entry is (the entry itself, links not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (reported as itself, not followed).
    Symlink,
    /// Device, FIFO, socket or anything else.
    Other,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ListEntry {
    /// The entry's name; bytes that are not UTF-8 are replaced by U+FFFD.
    pub name: String,
    /// What the entry is, links not followed.
    pub kind: EntryKind,
}

/// The entries of a directory, sorted by name, without `.` and `..`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listing {
    /// The returned entries, sorted by name.
    pub entries: Vec<ListEntry>,
    /// True when the directory holds more entries than were returned.
    pub truncated: bool,
}

/// An agent's work directory: an open handle on the root through which every path is resolved.
#[derive(Debug)]
pub struct Jail {
    root_fd: OwnedFd,
    root: PathBuf,
    access: Access,
    resolution: Resolution,
}

/// Longest path accepted, in bytes (Linux `PATH_MAX` less the terminating NUL).
const MAX_PATH_BYTES: usize = 4095;

/// Longest path shown in an error message, in characters.
const MAX_SHOWN_PATH_CHARS: usize = 200;

/// How many times an `openat2` interrupted by a concurrent rename (`EAGAIN`) or a signal is retried.
#[cfg(target_os = "linux")]
const OPEN_RETRIES: usize = 16;

const LEXICAL_HINT: &str = "paths are relative to the work directory, e.g. `notes/todo.txt`";

#[cfg(target_os = "linux")]
const RESOLVE_FLAGS: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;

/// A handle on a directory that is only resolved through, never read.
#[cfg(target_os = "linux")]
const DIR_HANDLE_FLAGS: c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
// Without O_PATH a search handle has to be a read handle.
#[cfg(not(target_os = "linux"))]
const DIR_HANDLE_FLAGS: c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

const READ_FLAGS: c_int = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
// No O_TRUNC: the file is truncated only after fstat shows it is a plain file with one link.
const WRITE_FLAGS: c_int =
    libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
const LIST_FLAGS: c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
const NEW_FILE_MODE: libc::mode_t = 0o644;
const NEW_DIR_MODE: libc::mode_t = 0o755;

impl Jail {
    /// Opens `root` (an existing directory) as a jail, using `openat2` when the kernel allows it and
    /// the no-follow component walk otherwise.
    pub fn open(root: &Path, access: Access) -> Result<Jail, DriverError> {
        let (root_fd, root) = open_root(root)?;
        let resolution = match probe_openat2(root_fd.as_fd()) {
            Ok(()) => Resolution::Openat2Beneath,
            Err(err) if openat2_unavailable(&err) => {
                tracing::warn!(
                    root = %root.display(),
                    error = %err,
                    "openat2 unavailable; file jail falls back to a no-follow walk (symbolic links refused)"
                );
                Resolution::NoFollowWalk
            }
            Err(err) => {
                return Err(DriverError::Io(format!(
                    "probing openat2 on `{}`: {err}",
                    root.display()
                )));
            }
        };
        Ok(Jail {
            root_fd,
            root,
            access,
            resolution,
        })
    }

    /// Opens `root` as a jail with the given mechanism; `Openat2Beneath` fails where `openat2`
    /// cannot be used.
    pub fn open_with(root: &Path, access: Access, resolution: Resolution) -> Result<Jail, DriverError> {
        let (root_fd, root) = open_root(root)?;
        if resolution == Resolution::Openat2Beneath {
            probe_openat2(root_fd.as_fd()).map_err(|err| {
                DriverError::Io(format!(
                    "openat2 with RESOLVE_BENEATH is not usable on `{}`: {err}",
                    root.display()
                ))
            })?;
        }
        Ok(Jail {
            root_fd,
            root,
            access,
            resolution,
        })
    }

    /// The mechanism in force.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// The canonical path of the root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The access this jail grants.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Reads the regular file at `path` as UTF-8 text, at most `limits.max_read_bytes` long.
    pub fn read(&self, path: &str, limits: &FsLimits) -> Result<String, DriverError> {
        let components = lexical_components(path)?;
        if components.is_empty() {
            return Err(DriverError::Denied(format!(
                "`{}` is the work directory itself; use list to see its entries",
                shown(path)
            )));
        }
        // Look at the object through a handle that does not open it first, so a device node is
        // never opened (opening one can have effects of its own).
        #[cfg(target_os = "linux")]
        {
            let handle = self
                .open_beneath(&components, libc::O_PATH | libc::O_CLOEXEC)
                .map_err(|e| self.os_error(e, path))?;
            let stat = fstat(handle.as_fd()).map_err(|e| self.os_error(e, path))?;
            require_single_regular_file(&stat, path, self.symlink_refusal())?;
        }
        let fd = self
            .open_beneath(&components, READ_FLAGS)
            .map_err(|e| self.os_error(e, path))?;
        // Checked again on the opened file: the name may have been replaced since the look above.
        let stat = fstat(fd.as_fd()).map_err(|e| self.os_error(e, path))?;
        require_single_regular_file(&stat, path, self.symlink_refusal())?;

        let cap = limits.max_read_bytes.saturating_add(1);
        let expected = usize::try_from(stat.st_size).unwrap_or(0).min(cap);
        let mut bytes = Vec::with_capacity(expected);
        File::from(fd)
            .take(u64::try_from(cap).unwrap_or(u64::MAX))
            .read_to_end(&mut bytes)
            .map_err(|e| self.os_error(e, path))?;
        if bytes.len() > limits.max_read_bytes {
            return Err(DriverError::Denied(format!(
                "`{}` is larger than the read limit of {} bytes",
                shown(path),
                limits.max_read_bytes
            )));
        }
        String::from_utf8(bytes).map_err(|err| {
            DriverError::Failed(format!(
                "`{}` is not UTF-8 text (invalid byte at offset {})",
                shown(path),
                err.utf8_error().valid_up_to()
            ))
        })
    }

    /// Writes `content` to the regular file at `path`, creating it and its missing parent
    /// directories beneath the root, replacing what it held; returns the number of bytes written.
    pub fn write(&self, path: &str, content: &str, limits: &FsLimits) -> Result<usize, DriverError> {
        let components = lexical_components(path)?;
        if self.access == Access::Read {
            return Err(DriverError::Denied(format!(
                "the work directory is read-only for this agent; `{}` was not written",
                shown(path)
            )));
        }
        if content.len() > limits.max_write_bytes {
            return Err(DriverError::Denied(format!(
                "content of {} bytes is over the write limit of {} bytes",
                content.len(),
                limits.max_write_bytes
            )));
        }
        let Some((name, parents)) = components.split_last() else {
            return Err(DriverError::Denied(format!(
                "`{}` is the work directory itself, not a file",
                shown(path)
            )));
        };
        let parent = self.open_parent_creating(parents).map_err(|e| self.os_error(e, path))?;
        let c_name = c_string(name).map_err(|e| self.os_error(e, path))?;

        // Refuse links, directories and special files without opening them.
        match fstatat_nofollow(parent.as_fd(), &c_name) {
            Ok(stat) => require_single_regular_file(&stat, path, "writes never go through symbolic links")?,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) => return Err(self.os_error(err, path)),
        }
        let fd = self
            .open_in_dir(parent.as_fd(), &c_name, WRITE_FLAGS, NEW_FILE_MODE)
            .map_err(|e| self.os_error(e, path))?;
        // Before truncating: the name may have been replaced since the look above.
        let stat = fstat(fd.as_fd()).map_err(|e| self.os_error(e, path))?;
        require_single_regular_file(&stat, path, "writes never go through symbolic links")?;
        // SAFETY: `fd` is an open file descriptor owned by this function; ftruncate only changes
        // the file's length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), 0) } != 0 {
            return Err(self.os_error(io::Error::last_os_error(), path));
        }
        let mut file = File::from(fd);
        file.write_all(content.as_bytes()).map_err(|e| self.os_error(e, path))?;
        Ok(content.len())
    }

    /// Lists the directory at `path` (`.` is the root), sorted by name, at most
    /// `limits.max_list_entries` entries (the alphabetically first ones).
    pub fn list(&self, path: &str, limits: &FsLimits) -> Result<Listing, DriverError> {
        let components = lexical_components(path)?;
        let fd = self
            .open_beneath(&components, LIST_FLAGS)
            .map_err(|e| self.os_error(e, path))?;
        let stream = DirStream::from_fd(fd).map_err(|e| self.os_error(e, path))?;

        // Keep only the `max_list_entries` smallest names, so a huge directory costs bounded memory.
        let mut kept: BinaryHeap<ListEntry> = BinaryHeap::new();
        let mut total: usize = 0;
        while let Some(entry) = stream.next_entry().map_err(|e| self.os_error(e, path))? {
            if entry.name.as_bytes() == b"." || entry.name.as_bytes() == b".." {
                continue;
            }
            total = total.saturating_add(1);
            let name = String::from_utf8_lossy(entry.name.as_bytes()).into_owned();
            let keep = kept.len() < limits.max_list_entries || kept.peek().is_some_and(|largest| name < largest.name);
            if !keep {
                continue;
            }
            let kind = match entry.kind {
                Some(kind) => kind,
                None => stream.kind_of(&entry.name),
            };
            if kept.len() >= limits.max_list_entries {
                kept.pop();
            }
            kept.push(ListEntry { name, kind });
        }
        let entries = kept.into_sorted_vec();
        let truncated = total > entries.len();
        Ok(Listing { entries, truncated })
    }

    /// The reason given when a symbolic link is met where it is not followed.
    fn symlink_refusal(&self) -> &'static str {
        match self.resolution {
            Resolution::Openat2Beneath => "it is not followed here",
            Resolution::NoFollowWalk => "this jail follows no symbolic link",
        }
    }

    /// Opens the object named by `components` beneath the root (the root itself when empty).
    fn open_beneath(&self, components: &[&str], flags: c_int) -> io::Result<OwnedFd> {
        match self.resolution {
            Resolution::Openat2Beneath => {
                let joined = if components.is_empty() {
                    ".".to_string()
                } else {
                    components.join("/")
                };
                openat2(self.root_fd.as_fd(), &c_string(&joined)?, flags, 0)
            }
            Resolution::NoFollowWalk => {
                let Some((last, parents)) = components.split_last() else {
                    return openat(self.root_fd.as_fd(), c".", flags, 0);
                };
                let mut current = openat(self.root_fd.as_fd(), c".", DIR_HANDLE_FLAGS, 0)?;
                for name in parents {
                    current = walk_step(current.as_fd(), &c_string(name)?, DIR_HANDLE_FLAGS, 0)?;
                }
                walk_step(current.as_fd(), &c_string(last)?, flags, 0)
            }
        }
    }

    /// Opens the single component `name` in the directory `dir` (itself opened beneath the root).
    fn open_in_dir(&self, dir: BorrowedFd<'_>, name: &CStr, flags: c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        match self.resolution {
            Resolution::Openat2Beneath => openat2(dir, name, flags, mode),
            Resolution::NoFollowWalk => walk_step(dir, name, flags, mode),
        }
    }

    /// Opens the directory named by `parents` beneath the root, creating missing directories one
    /// by one, each with `mkdirat` on a parent handle that was itself opened beneath the root.
    fn open_parent_creating(&self, parents: &[&str]) -> io::Result<OwnedFd> {
        match self.resolution {
            Resolution::Openat2Beneath => {
                match self.open_beneath(parents, DIR_HANDLE_FLAGS) {
                    Ok(fd) => return Ok(fd),
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(err) => return Err(err),
                }
                // Each prefix is resolved from the root again, so links inside that stay inside work
                // the same as for reads; the kernel keeps every step beneath the root.
                let mut current = self.open_beneath(&[], DIR_HANDLE_FLAGS)?;
                for depth in 1..=parents.len() {
                    let prefix = &parents[..depth];
                    current = match self.open_beneath(prefix, DIR_HANDLE_FLAGS) {
                        Ok(fd) => fd,
                        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                            mkdirat(current.as_fd(), &c_string(parents[depth - 1])?, NEW_DIR_MODE)?;
                            self.open_beneath(prefix, DIR_HANDLE_FLAGS)?
                        }
                        Err(err) => return Err(err),
                    };
                }
                Ok(current)
            }
            Resolution::NoFollowWalk => {
                let mut current = openat(self.root_fd.as_fd(), c".", DIR_HANDLE_FLAGS, 0)?;
                for name in parents {
                    let c_name = c_string(name)?;
                    current = match walk_step(current.as_fd(), &c_name, DIR_HANDLE_FLAGS, 0) {
                        Ok(fd) => fd,
                        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                            mkdirat(current.as_fd(), &c_name, NEW_DIR_MODE)?;
                            walk_step(current.as_fd(), &c_name, DIR_HANDLE_FLAGS, 0)?
                        }
                        Err(err) => return Err(err),
                    };
                }
                Ok(current)
            }
        }
    }

    /// Maps an OS error met while handling `path` onto a driver error.
    fn os_error(&self, err: io::Error, path: &str) -> DriverError {
        let path = shown(path);
        match err.raw_os_error() {
            Some(libc::ENOENT) => DriverError::NotFound(path.to_string()),
            Some(libc::ENOTDIR) => {
                DriverError::NotFound(format!("{path} (a component of the path is not a directory)"))
            }
            Some(libc::EACCES) | Some(libc::EPERM) => DriverError::Denied(format!("permission denied for `{path}`")),
            Some(libc::EXDEV) => DriverError::Denied(format!(
                "`{path}` leads outside the work directory (through a symbolic link or a mount point); {LEXICAL_HINT}"
            )),
            Some(libc::ELOOP) => match self.resolution {
                Resolution::Openat2Beneath => DriverError::Denied(format!(
                    "`{path}` cannot be resolved safely: a symbolic link loop, a /proc magic link, \
                     or a symbolic link where none is followed"
                )),
                Resolution::NoFollowWalk => DriverError::Denied(format!(
                    "`{path}` goes through a symbolic link; this jail follows no symbolic link"
                )),
            },
            Some(libc::ENAMETOOLONG) => DriverError::Denied(format!("`{path}` is too long (a name or the whole path)")),
            Some(libc::EISDIR) => DriverError::Denied(format!("`{path}` is a directory")),
            Some(libc::ENXIO) => DriverError::Denied(format!("`{path}` is not a regular file")),
            _ => DriverError::Io(format!("`{path}`: {err}")),
        }
    }
}

/// Opens and canonicalises the root directory.
fn open_root(root: &Path) -> Result<(OwnedFd, PathBuf), DriverError> {
    let canonical = std::fs::canonicalize(root).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => DriverError::NotFound(format!("work directory `{}`", root.display())),
        _ => DriverError::Io(format!("work directory `{}`: {err}", root.display())),
    })?;
    let c_root = CString::new(canonical.as_os_str().as_bytes())
        .map_err(|_| DriverError::Failed(format!("work directory `{}` contains a NUL byte", root.display())))?;
    let fd = open_absolute(&c_root, DIR_HANDLE_FLAGS).map_err(|err| match err.raw_os_error() {
        Some(libc::ENOTDIR) => DriverError::Failed(format!("work directory `{}` is not a directory", root.display())),
        Some(libc::ENOENT) => DriverError::NotFound(format!("work directory `{}`", root.display())),
        _ => DriverError::Io(format!("work directory `{}`: {err}", root.display())),
    })?;
    // What was opened, as the kernel names it: a symlink swapped in for a component of the
    // root between `canonicalize` and `open` shows here, and callers compare it with the root
    // they meant (`Jail::root`).
    #[cfg(target_os = "linux")]
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        return Ok((fd, opened));
    }
    Ok((fd, canonical))
}

/// `open` of an operator-given absolute path, retried on EINTR.
fn open_absolute(path: &CStr, flags: c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `path` is NUL-terminated and outlives the call; no O_CREAT, so no mode is read.
        let fd = unsafe { libc::open(path.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: open just returned this descriptor; nothing else owns it.
            return Ok(unsafe { owned_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Opens the root through `openat2` once, to learn whether the kernel and policy allow it.
fn probe_openat2(root: BorrowedFd<'_>) -> io::Result<()> {
    openat2(root, c".", DIR_HANDLE_FLAGS, 0).map(drop)
}

/// Whether a probe error means "openat2 cannot be used here" rather than a broken root:
/// ENOSYS (old kernel, or seccomp denying it), EPERM (seccomp policies that answer EPERM),
/// EINVAL/E2BIG (a kernel without some of the RESOLVE flags).
fn openat2_unavailable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EINVAL) | Some(libc::E2BIG)
    )
}

/// Lexical checks that touch nothing; returns the path's components without empty and `.` ones.
fn lexical_components(path: &str) -> Result<Vec<&str>, DriverError> {
    if path.is_empty() {
        return Err(DriverError::Denied(format!("empty path; {LEXICAL_HINT}")));
    }
    if path.contains('\0') {
        return Err(DriverError::Denied(format!(
            "the path contains a NUL byte; {LEXICAL_HINT}"
        )));
    }
    if path.starts_with('/') {
        return Err(DriverError::Denied(format!(
            "absolute path `{}` is not allowed; {LEXICAL_HINT}",
            shown(path)
        )));
    }
    if path.split('/').any(|component| component == "..") {
        return Err(DriverError::Denied(format!(
            "`..` is not allowed in `{}`; {LEXICAL_HINT}",
            shown(path)
        )));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(DriverError::Denied(format!(
            "the path is {} bytes long, over the limit of {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    Ok(path
        .split('/')
        .filter(|component| !component.is_empty() && *component != ".")
        .collect())
}

/// `path` cut to a length fit for an error message.
fn shown(path: &str) -> std::borrow::Cow<'_, str> {
    if path.chars().count() <= MAX_SHOWN_PATH_CHARS {
        std::borrow::Cow::Borrowed(path)
    } else {
        let head: String = path.chars().take(MAX_SHOWN_PATH_CHARS).collect();
        std::borrow::Cow::Owned(format!("{head}…"))
    }
}

/// Accepts a regular file with exactly one link; denies everything else with the reason.
fn require_single_regular_file(stat: &libc::stat, path: &str, symlink_reason: &str) -> Result<(), DriverError> {
    let path = shown(path);
    let what = match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            if stat.st_nlink > 1 {
                return Err(DriverError::Denied(format!(
                    "`{path}` has {} hard links; a hard link may name a file outside the work directory, \
                     so files with more than one link are refused",
                    stat.st_nlink
                )));
            }
            return Ok(());
        }
        libc::S_IFDIR => "a directory (use list)",
        libc::S_IFLNK => {
            return Err(DriverError::Denied(format!(
                "`{path}` is a symbolic link; {symlink_reason}"
            )));
        }
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        _ => "not a regular file",
    };
    Err(DriverError::Denied(format!(
        "`{path}` is {what}; only regular files can be read or written"
    )))
}

fn c_string(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A raw fd returned by a successful open, as an owned handle.
///
/// # Safety
/// `raw` must be an open descriptor that nothing else owns or closes.
unsafe fn owned_fd(raw: c_int) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// `openat`, retried on EINTR.
fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open descriptor or
        // AT_FDCWD; the mode argument is read only with O_CREAT.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(mode)) };
        if fd >= 0 {
            // SAFETY: openat just returned this descriptor; nothing else owns it.
            return Ok(unsafe { owned_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive, so it cannot be built literally).
#[cfg(target_os = "linux")]
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dir, path)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`,
/// retried on EAGAIN (a concurrent rename seen by the kernel) and EINTR.
#[cfg(target_os = "linux")]
fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // The kernel rejects a non-zero mode unless a file may be created.
    let mode = if flags & libc::O_CREAT != 0 { u64::from(mode) } else { 0 };
    let how = OpenHow {
        flags: u64::from(flags.cast_unsigned()),
        mode,
        resolve: RESOLVE_FLAGS,
    };
    let mut last_err = io::Error::from_raw_os_error(libc::EAGAIN);
    for _ in 0..OPEN_RETRIES {
        // SAFETY: `how` is a live, correctly laid out open_how whose size is passed; `path` is
        // NUL-terminated and outlives the call; `dir` is an open descriptor.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if ret >= 0 {
            let raw = c_int::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            // SAFETY: openat2 just returned this descriptor; nothing else owns it.
            return Ok(unsafe { owned_fd(raw) });
        }
        last_err = io::Error::last_os_error();
        if !matches!(last_err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
            return Err(last_err);
        }
    }
    Err(last_err)
}

/// openat2 is a Linux system call; elsewhere it is reported as not implemented, which makes
/// `Jail::open` choose the no-follow walk.
#[cfg(not(target_os = "linux"))]
fn openat2(_dir: BorrowedFd<'_>, _path: &CStr, _flags: c_int, _mode: libc::mode_t) -> io::Result<OwnedFd> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// One step of the no-follow walk: opens `name` in `dir` with O_NOFOLLOW; a symbolic link is
/// reported as ELOOP whichever error the open gave for it.
fn walk_step(dir: BorrowedFd<'_>, name: &CStr, flags: c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    match openat(dir, name, flags | libc::O_NOFOLLOW, mode) {
        Ok(fd) => Ok(fd),
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
            match fstatat_nofollow(dir, name) {
                Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    Err(io::Error::from_raw_os_error(libc::ELOOP))
                }
                _ => Err(err),
            }
        }
        Err(err) => Err(err),
    }
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` points to writable memory the size of a `struct stat`; `fd` is open.
    if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    Ok(unsafe { stat.assume_init() })
}

fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` points to writable memory the size of a `struct stat`; `name` is
    // NUL-terminated and outlives the call; `dir` is open.
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat returned 0, so it filled the whole struct.
    Ok(unsafe { stat.assume_init() })
}

/// `mkdirat`; an existing entry is not an error (the caller opens it next and checks what it is).
fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is open. mkdirat never
    // follows a symbolic link at the final name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    Ok(())
}

/// An open directory stream (`fdopendir`), closed on drop.
struct DirStream {
    dir: std::ptr::NonNull<libc::DIR>,
}

/// One raw directory entry.
struct RawEntry {
    name: CString,
    /// The kind from `d_type`, when the filesystem reports it.
    kind: Option<EntryKind>,
}

impl DirStream {
    fn from_fd(fd: OwnedFd) -> io::Result<DirStream> {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open directory descriptor we own; on success the stream owns it.
        let dir = unsafe { libc::fdopendir(raw) };
        match std::ptr::NonNull::new(dir) {
            Some(dir) => Ok(DirStream { dir }),
            None => {
                let err = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so the descriptor is still ours alone; it is closed here.
                drop(unsafe { owned_fd(raw) });
                Err(err)
            }
        }
    }

    /// The next entry, or `None` at the end of the directory.
    fn next_entry(&self) -> io::Result<Option<RawEntry>> {
        clear_errno();
        // SAFETY: `self.dir` is a live stream from fdopendir, used by one thread (DirStream is !Sync).
        let entry = unsafe { libc::readdir(self.dir.as_ptr()) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(0) | None => Ok(None),
                Some(_) if !ERRNO_CLEARABLE => Ok(None),
                Some(_) => Err(err),
            };
        }
        // SAFETY: readdir returned a non-null pointer to an entry valid until the next readdir on
        // this stream; d_name is NUL-terminated. The name is copied before returning.
        let (name, d_type) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()).to_owned(), (*entry).d_type) };
        let kind = match d_type {
            libc::DT_REG => Some(EntryKind::File),
            libc::DT_DIR => Some(EntryKind::Dir),
            libc::DT_LNK => Some(EntryKind::Symlink),
            libc::DT_UNKNOWN => None,
            _ => Some(EntryKind::Other),
        };
        Ok(Some(RawEntry { name, kind }))
    }

    /// The kind of `name` in this directory, from fstatat without following links.
    fn kind_of(&self, name: &CStr) -> EntryKind {
        // SAFETY: `self.dir` is a live stream; dirfd returns its descriptor, still owned by it.
        let raw = unsafe { libc::dirfd(self.dir.as_ptr()) };
        // SAFETY: the descriptor stays open while `self` lives, which outlasts this borrow.
        let dir = unsafe { BorrowedFd::borrow_raw(raw) };
        match fstatat_nofollow(dir, name) {
            Ok(stat) => match stat.st_mode & libc::S_IFMT {
                libc::S_IFREG => EntryKind::File,
                libc::S_IFDIR => EntryKind::Dir,
                libc::S_IFLNK => EntryKind::Symlink,
                _ => EntryKind::Other,
            },
            Err(_) => EntryKind::Other,
        }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: `self.dir` came from fdopendir and is closed exactly once, here.
        unsafe { libc::closedir(self.dir.as_ptr()) };
    }
}

/// Whether `clear_errno` can reset errno here, which `readdir` needs to tell its end from an error.
const ERRNO_CLEARABLE: bool = cfg!(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "dragonfly"
));

fn clear_errno() {
    #[cfg(any(target_os = "linux", target_os = "dragonfly"))]
    // SAFETY: __errno_location returns the calling thread's errno, valid for writes.
    unsafe {
        *libc::__errno_location() = 0;
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    // SAFETY: __error returns the calling thread's errno, valid for writes.
    unsafe {
        *libc::__error() = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// Self-test: escape attempts against a jail built in a scratch directory.
// ---------------------------------------------------------------------------------------------

/// Content of the file outside the root that no attack may read or change.
const SECRET_MARKER: &str = "SECRET-OUTSIDE";
const INSIDE_CONTENT: &str = "INSIDE-OK";
const RACE_DURATION: Duration = Duration::from_millis(300);

/// Builds, under `scratch`, a root directory and beside it a secret file and a secret directory,
/// then runs escape attempts against a jail on that root (the mechanism `Jail::open` chooses and,
/// when that is openat2, the no-follow walk too, with names prefixed `walk_`). Each trial is
/// contained when it neither read outside content nor changed anything outside the root, and the
/// driver answered as the trial expects. The files made are removed afterwards.
pub fn escape_trials(scratch: &Path) -> Vec<Trial> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let base = scratch.join(format!("agentos-fs-trials-{}-{run}", std::process::id()));
    let mut trials = Vec::new();
    if let Err(err) = std::fs::create_dir(&base) {
        trials.push(Trial {
            name: "setup".to_string(),
            contained: false,
            detail: format!("could not create `{}`: {err}", base.display()),
        });
        return trials;
    }
    let auto = run_trial_set(&base.join("auto"), None, "", &mut trials);
    if auto != Some(Resolution::NoFollowWalk) {
        run_trial_set(&base.join("walk"), Some(Resolution::NoFollowWalk), "walk_", &mut trials);
    }
    if let Err(err) = std::fs::remove_dir_all(&base) {
        tracing::warn!(dir = %base.display(), error = %err, "could not remove the escape-trial scratch directory");
    }
    trials
}

/// The directory tree of one trial set: `dir/root` is jailed; `dir/secret` and `dir/secret_dir`
/// are outside it, so `../secret` from the root names the secret.
struct Arena {
    dir: PathBuf,
    root: PathBuf,
    secret: PathBuf,
    secret_dir: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
enum NodeState {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Other,
}

impl Arena {
    fn build(dir: &Path) -> io::Result<Arena> {
        let root = dir.join("root");
        let secret = dir.join("secret");
        let secret_dir = dir.join("secret_dir");
        std::fs::create_dir(dir)?;
        std::fs::create_dir(&root)?;
        std::fs::write(&secret, SECRET_MARKER)?;
        std::fs::create_dir(&secret_dir)?;
        std::fs::write(
            secret_dir.join("file"),
            format!("{SECRET_MARKER} (in the secret directory)"),
        )?;
        std::fs::write(secret_dir.join(format!("{SECRET_MARKER}-listed")), "")?;
        Ok(Arena {
            dir: canonical(dir)?,
            root: canonical(&root)?,
            secret: canonical(&secret)?,
            secret_dir: canonical(&secret_dir)?,
        })
    }

    /// Everything under `dir` except the root, links not followed.
    fn snapshot_outside(&self) -> io::Result<BTreeMap<PathBuf, NodeState>> {
        let mut nodes = BTreeMap::new();
        let mut pending = vec![self.dir.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path == self.root {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path)?;
                let state = if meta.file_type().is_symlink() {
                    NodeState::Symlink(std::fs::read_link(&path)?)
                } else if meta.is_dir() {
                    pending.push(path.clone());
                    NodeState::Dir
                } else if meta.is_file() {
                    NodeState::File(std::fs::read(&path)?)
                } else {
                    NodeState::Other
                };
                nodes.insert(path, state);
            }
        }
        Ok(nodes)
    }

    fn symlink(&self, name: &str, target: impl AsRef<Path>) -> Result<(), Setup> {
        std::os::unix::fs::symlink(target.as_ref(), self.root.join(name))
            .map_err(|err| Setup::Failed(format!("symlink {name} -> {}: {err}", target.as_ref().display())))
    }

    /// `path` (absolute) without its leading `/`, to append after a link to `/`.
    fn relative_to_slash(path: &Path) -> String {
        path.to_string_lossy().trim_start_matches('/').to_string()
    }
}

fn canonical(path: &Path) -> io::Result<PathBuf> {
    std::fs::canonicalize(path)
}

/// Why an attack could not be staged.
enum Setup {
    /// Staging failed unexpectedly: the trial cannot show containment.
    Failed(String),
    /// The attack needs something this host does not allow (e.g. `mknod` without privilege), so
    /// no agent could stage it either.
    NotPossible(String),
}

/// What an attack observed: whether the driver answered as expected, and what happened.
struct Observation {
    held: bool,
    detail: String,
}

type Attempt = Result<String, DriverError>;

fn describe(result: &Attempt) -> String {
    match result {
        Ok(text) => {
            let preview: String = text.chars().take(80).collect();
            let leak = if text.contains(SECRET_MARKER) {
                " (LEAKED the outside secret)"
            } else {
                ""
            };
            format!("succeeded{leak}: {preview:?}")
        }
        Err(err) => shown(&err.to_string()).into_owned(),
    }
}

/// The attempt must have been refused (any error).
fn expect_refused(result: Attempt) -> Observation {
    Observation {
        held: result.is_err(),
        detail: describe(&result),
    }
}

/// The attempt must have found nothing (a name that only looks like an escape).
fn expect_not_found(result: Attempt) -> Observation {
    Observation {
        held: matches!(result, Err(DriverError::NotFound(_))),
        detail: describe(&result),
    }
}

/// The attempt must have returned exactly `wanted`.
fn expect_content(result: Attempt, wanted: &str) -> Observation {
    Observation {
        held: matches!(&result, Ok(text) if text == wanted),
        detail: describe(&result),
    }
}

fn read_attempt(jail: &Jail, path: &str) -> Attempt {
    jail.read(path, &FsLimits::default())
}

fn write_attempt(jail: &Jail, path: &str, content: &str) -> Attempt {
    jail.write(path, content, &FsLimits::default())
        .map(|written| format!("wrote {written} bytes"))
}

fn list_attempt(jail: &Jail, path: &str) -> Attempt {
    jail.list(path, &FsLimits::default()).map(|listing| {
        listing
            .entries
            .iter()
            .map(|entry| entry.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The attempt must have been refused and `must_not_exist` must not exist afterwards (it is
/// removed when it does, and the trial fails).
fn expect_refused_and_absent(result: Attempt, must_not_exist: &Path) -> Observation {
    let mut observation = expect_refused(result);
    if std::fs::symlink_metadata(must_not_exist).is_ok() {
        observation.held = false;
        observation.detail = format!("{}; CREATED `{}`", observation.detail, must_not_exist.display());
        if let Err(err) = std::fs::remove_file(must_not_exist).or_else(|_| std::fs::remove_dir_all(must_not_exist)) {
            observation.detail = format!("{} (and could not remove it: {err})", observation.detail);
        }
    }
    observation
}

type Attack = Box<dyn Fn(&Arena, &Jail) -> Result<Observation, Setup>>;

/// Runs every attack against a fresh arena under `dir`; returns the mechanism that was attacked.
fn run_trial_set(dir: &Path, forced: Option<Resolution>, prefix: &str, trials: &mut Vec<Trial>) -> Option<Resolution> {
    let arena = match Arena::build(dir) {
        Ok(arena) => arena,
        Err(err) => {
            trials.push(Trial {
                name: format!("{prefix}setup"),
                contained: false,
                detail: format!("building the arena in `{}`: {err}", dir.display()),
            });
            return None;
        }
    };
    let opened = match forced {
        Some(resolution) => Jail::open_with(&arena.root, Access::ReadWrite, resolution),
        None => Jail::open(&arena.root, Access::ReadWrite),
    };
    let jail = match opened {
        Ok(jail) => jail,
        Err(err) => {
            trials.push(Trial {
                name: format!("{prefix}setup"),
                contained: false,
                detail: format!("opening the jail: {err}"),
            });
            return None;
        }
    };
    for (name, attack) in attacks(jail.resolution()) {
        let name = format!("{prefix}{name}");
        let before = arena.snapshot_outside();
        let outcome = attack(&arena, &jail);
        let after = arena.snapshot_outside();
        let changed = match (&before, &after) {
            (Ok(before), Ok(after)) => outside_changes(before, after),
            (Err(err), _) | (_, Err(err)) => vec![format!("could not inspect the outside tree: {err}")],
        };
        let (contained, mut detail) = match outcome {
            Ok(observation) => (observation.held, observation.detail),
            Err(Setup::Failed(why)) => (false, format!("setup failed: {why}")),
            Err(Setup::NotPossible(why)) => (true, format!("attack not possible on this host: {why}")),
        };
        if !changed.is_empty() {
            detail = format!("{detail}; OUTSIDE CHANGED: {}", changed.join(", "));
        }
        trials.push(Trial {
            name,
            contained: contained && changed.is_empty(),
            detail,
        });
    }
    Some(jail.resolution())
}

fn outside_changes(before: &BTreeMap<PathBuf, NodeState>, after: &BTreeMap<PathBuf, NodeState>) -> Vec<String> {
    let mut changes = Vec::new();
    for (path, state) in after {
        match before.get(path) {
            None => changes.push(format!("created {}", path.display())),
            Some(old) if old != state => changes.push(format!("modified {}", path.display())),
            Some(_) => {}
        }
    }
    for path in before.keys().filter(|path| !after.contains_key(*path)) {
        changes.push(format!("removed {}", path.display()));
    }
    changes
}

/// Every attack, by name. `resolution` decides what the inside-link trials expect: followed with
/// openat2, refused by the no-follow walk.
fn attacks(resolution: Resolution) -> Vec<(String, Attack)> {
    let mut list: Vec<(String, Attack)> = Vec::new();
    let mut add = |name: &str, attack: Attack| list.push((name.to_string(), attack));

    // Relative `..` forms, refused lexically.
    for (name, path) in [
        ("dotdot_read_secret", "../secret"),
        ("dotdot_after_subdir", "a/../../secret"),
        ("dot_then_dotdot", "./../secret"),
        ("dotdot_deep", "a/b/../../../secret"),
        ("dotdot_alone", ".."),
        ("dotdot_trailing", "a/.."),
        ("dotdot_double_slash", "a//..//..//secret"),
    ] {
        add(
            name,
            Box::new(move |_, jail| Ok(expect_refused(read_attempt(jail, path)))),
        );
    }
    // Names that only look like escapes: ordinary names that do not exist.
    for (name, path) in [
        ("encoded_slash_dotdot_not_found", "..%2fsecret"),
        ("percent_encoded_dots_not_found", "%2e%2e/secret"),
        ("backslash_dotdot_not_found", "..\\secret"),
        ("triple_dot_not_found", ".../secret"),
    ] {
        add(
            name,
            Box::new(move |_, jail| Ok(expect_not_found(read_attempt(jail, path)))),
        );
    }
    add(
        "write_dotdot_overwrite_secret",
        Box::new(|_, jail| Ok(expect_refused(write_attempt(jail, "../secret", "PWNED")))),
    );
    add(
        "write_dotdot_create",
        Box::new(|arena, jail| {
            let result = write_attempt(jail, "../created_by_dotdot", "PWNED");
            Ok(expect_refused_and_absent(result, &arena.dir.join("created_by_dotdot")))
        }),
    );
    add(
        "list_dotdot",
        Box::new(|_, jail| Ok(expect_refused(list_attempt(jail, "..")))),
    );
    add(
        "list_nested_dotdot",
        Box::new(|_, jail| Ok(expect_refused(list_attempt(jail, "a/../..")))),
    );

    // Absolute paths, refused lexically.
    add(
        "absolute_etc_passwd",
        Box::new(|_, jail| Ok(expect_refused(read_attempt(jail, "/etc/passwd")))),
    );
    add(
        "absolute_secret_path",
        Box::new(|arena, jail| Ok(expect_refused(read_attempt(jail, &arena.secret.to_string_lossy())))),
    );
    add(
        "double_slash_etc_passwd",
        Box::new(|_, jail| Ok(expect_refused(read_attempt(jail, "//etc/passwd")))),
    );
    add(
        "absolute_write",
        Box::new(|arena, jail| {
            let target = arena.dir.join("created_by_absolute");
            Ok(expect_refused_and_absent(
                write_attempt(jail, &target.to_string_lossy(), "PWNED"),
                &target,
            ))
        }),
    );
    add(
        "absolute_list_slash",
        Box::new(|_, jail| Ok(expect_refused(list_attempt(jail, "/")))),
    );

    // Symbolic links inside the root that point outside.
    add(
        "symlink_absolute_to_secret",
        Box::new(|arena, jail| {
            arena.symlink("abs_secret_link", &arena.secret)?;
            Ok(expect_refused(read_attempt(jail, "abs_secret_link")))
        }),
    );
    add(
        "symlink_relative_dotdot_to_secret",
        Box::new(|arena, jail| {
            arena.symlink("rel_secret_link", "../secret")?;
            Ok(expect_refused(read_attempt(jail, "rel_secret_link")))
        }),
    );
    add(
        "symlink_chain_of_3_to_secret",
        Box::new(|arena, jail| {
            arena.symlink("chain_1", "chain_2")?;
            arena.symlink("chain_2", "chain_3")?;
            arena.symlink("chain_3", "../secret")?;
            Ok(expect_refused(read_attempt(jail, "chain_1")))
        }),
    );
    add(
        "symlink_dir_outside_read_through",
        Box::new(|arena, jail| {
            arena.symlink("out_dir_read", &arena.secret_dir)?;
            Ok(expect_refused(read_attempt(jail, "out_dir_read/file")))
        }),
    );
    add(
        "symlink_dir_outside_write_new_file",
        Box::new(|arena, jail| {
            arena.symlink("out_dir_new", &arena.secret_dir)?;
            let result = write_attempt(jail, "out_dir_new/created_through_link", "PWNED");
            Ok(expect_refused_and_absent(
                result,
                &arena.secret_dir.join("created_through_link"),
            ))
        }),
    );
    add(
        "symlink_dir_outside_overwrite_file",
        Box::new(|arena, jail| {
            arena.symlink("out_dir_over", &arena.secret_dir)?;
            Ok(expect_refused(write_attempt(jail, "out_dir_over/file", "PWNED")))
        }),
    );
    add(
        "symlink_to_slash_read",
        Box::new(|arena, jail| {
            arena.symlink("slash_read", "/")?;
            let path = format!("slash_read/{}", Arena::relative_to_slash(&arena.secret));
            Ok(expect_refused(read_attempt(jail, &path)))
        }),
    );
    add(
        "symlink_to_slash_write",
        Box::new(|arena, jail| {
            arena.symlink("slash_write", "/")?;
            let target = arena.dir.join("created_through_slash");
            let path = format!("slash_write/{}", Arena::relative_to_slash(&target));
            Ok(expect_refused_and_absent(write_attempt(jail, &path, "PWNED"), &target))
        }),
    );
    add(
        "symlink_proc_self_root_read",
        Box::new(|arena, jail| {
            arena.symlink("proc_root", "/proc/self/root")?;
            let path = format!("proc_root/{}", Arena::relative_to_slash(&arena.secret));
            Ok(expect_refused(read_attempt(jail, &path)))
        }),
    );
    add(
        "symlink_proc_self_root_write",
        Box::new(|arena, jail| {
            arena.symlink("proc_root_w", "/proc/self/root")?;
            let target = arena.dir.join("created_through_proc_root");
            let path = format!("proc_root_w/{}", Arena::relative_to_slash(&target));
            Ok(expect_refused_and_absent(write_attempt(jail, &path, "PWNED"), &target))
        }),
    );
    add(
        "symlink_proc_pid1_root_read",
        Box::new(|arena, jail| {
            arena.symlink("pid1_root", "/proc/1/root")?;
            let path = format!("pid1_root/{}", Arena::relative_to_slash(&arena.secret));
            Ok(expect_refused(read_attempt(jail, &path)))
        }),
    );
    add(
        "symlink_proc_self_cwd_list",
        Box::new(|arena, jail| {
            arena.symlink("cwd_list", "/proc/self/cwd")?;
            Ok(expect_refused(list_attempt(jail, "cwd_list")))
        }),
    );
    add(
        "symlink_proc_self_cwd_write",
        Box::new(|arena, jail| {
            arena.symlink("cwd_write", "/proc/self/cwd")?;
            let probe = format!("agentos-fs-escape-probe-{}", std::process::id());
            let cwd = std::env::current_dir().map_err(|err| Setup::Failed(format!("current dir: {err}")))?;
            let result = write_attempt(jail, &format!("cwd_write/{probe}"), "PWNED");
            Ok(expect_refused_and_absent(result, &cwd.join(probe)))
        }),
    );
    add(
        "magic_link_proc_self_fd_read",
        Box::new(|arena, jail| {
            let outside = File::open(&arena.secret).map_err(|err| Setup::Failed(format!("open secret: {err}")))?;
            arena.symlink("magic_fd_read", format!("/proc/self/fd/{}", outside.as_raw_fd()))?;
            let result = read_attempt(jail, "magic_fd_read");
            drop(outside);
            Ok(expect_refused(result))
        }),
    );
    add(
        "magic_link_proc_self_fd_write",
        Box::new(|arena, jail| {
            let outside = File::open(&arena.secret).map_err(|err| Setup::Failed(format!("open secret: {err}")))?;
            arena.symlink("magic_fd_write", format!("/proc/self/fd/{}", outside.as_raw_fd()))?;
            let result = write_attempt(jail, "magic_fd_write", "PWNED");
            drop(outside);
            Ok(expect_refused(result))
        }),
    );
    add(
        "magic_link_proc_self_fd_dir_read",
        Box::new(|arena, jail| {
            let outside = File::open(&arena.secret_dir).map_err(|err| Setup::Failed(format!("open dir: {err}")))?;
            arena.symlink("magic_fd_dir", format!("/proc/self/fd/{}", outside.as_raw_fd()))?;
            let result = read_attempt(jail, "magic_fd_dir/file");
            drop(outside);
            Ok(expect_refused(result))
        }),
    );

    // Devices and special files.
    for (name, link, target) in [
        ("symlink_dev_zero_read", "dev_zero", "/dev/zero"),
        ("symlink_dev_random_read", "dev_random", "/dev/random"),
        ("symlink_dev_stdin_read", "dev_stdin", "/dev/stdin"),
    ] {
        add(
            name,
            Box::new(move |arena, jail| {
                arena.symlink(link, target)?;
                Ok(expect_refused(read_attempt(jail, link)))
            }),
        );
    }
    add(
        "symlink_dev_null_write",
        Box::new(|arena, jail| {
            arena.symlink("dev_null", "/dev/null")?;
            Ok(expect_refused(write_attempt(jail, "dev_null", "PWNED")))
        }),
    );
    add(
        "device_node_inside_read",
        Box::new(|arena, jail| {
            make_char_device(&arena.root.join("zero_node"), 1, 5)?;
            Ok(expect_refused(read_attempt(jail, "zero_node")))
        }),
    );
    add(
        "device_node_inside_write",
        Box::new(|arena, jail| {
            make_char_device(&arena.root.join("null_node"), 1, 3)?;
            Ok(expect_refused(write_attempt(jail, "null_node", "PWNED")))
        }),
    );
    add(
        "fifo_inside_read",
        Box::new(|arena, jail| {
            make_fifo(&arena.root.join("fifo_read"))?;
            Ok(expect_refused(read_attempt(jail, "fifo_read")))
        }),
    );
    add(
        "fifo_inside_write",
        Box::new(|arena, jail| {
            make_fifo(&arena.root.join("fifo_write"))?;
            Ok(expect_refused(write_attempt(jail, "fifo_write", "PWNED")))
        }),
    );
    add(
        "socket_inside_read",
        Box::new(|arena, jail| {
            let listener = std::os::unix::net::UnixListener::bind(arena.root.join("sock"))
                .map_err(|err| Setup::Failed(format!("bind socket: {err}")))?;
            let result = read_attempt(jail, "sock");
            drop(listener);
            Ok(expect_refused(result))
        }),
    );

    // Hard links to the outside secret.
    add(
        "hardlink_to_secret_read",
        Box::new(|arena, jail| {
            hard_link(&arena.secret, &arena.root.join("hard_read"))?;
            Ok(expect_refused(read_attempt(jail, "hard_read")))
        }),
    );
    add(
        "hardlink_to_secret_write",
        Box::new(|arena, jail| {
            hard_link(&arena.secret, &arena.root.join("hard_write"))?;
            Ok(expect_refused(write_attempt(jail, "hard_write", "PWNED")))
        }),
    );

    // Creating things through links.
    add(
        "dangling_symlink_absolute_write",
        Box::new(|arena, jail| {
            let target = arena.dir.join("created_by_dangling_abs");
            arena.symlink("dangling_abs", &target)?;
            Ok(expect_refused_and_absent(
                write_attempt(jail, "dangling_abs", "PWNED"),
                &target,
            ))
        }),
    );
    add(
        "dangling_symlink_relative_write",
        Box::new(|arena, jail| {
            arena.symlink("dangling_rel", "../created_by_dangling_rel")?;
            let target = arena.dir.join("created_by_dangling_rel");
            Ok(expect_refused_and_absent(
                write_attempt(jail, "dangling_rel", "PWNED"),
                &target,
            ))
        }),
    );
    add(
        "mkdir_under_symlink_to_outside_dir",
        Box::new(|arena, jail| {
            arena.symlink("out_parent", &arena.secret_dir)?;
            let result = write_attempt(jail, "out_parent/new_dir/file", "PWNED");
            Ok(expect_refused_and_absent(result, &arena.secret_dir.join("new_dir")))
        }),
    );
    add(
        "mkdir_under_dangling_symlink",
        Box::new(|arena, jail| {
            let target = arena.dir.join("created_parent");
            arena.symlink("dangling_parent", &target)?;
            let result = write_attempt(jail, "dangling_parent/sub/file", "PWNED");
            Ok(expect_refused_and_absent(result, &target))
        }),
    );
    add(
        "write_through_inside_symlink_refused",
        Box::new(|arena, jail| {
            std::fs::write(arena.root.join("link_target.txt"), INSIDE_CONTENT)
                .map_err(|err| Setup::Failed(format!("write inside file: {err}")))?;
            arena.symlink("write_link", "link_target.txt")?;
            let mut observation = expect_refused(write_attempt(jail, "write_link", "CHANGED"));
            if std::fs::read_to_string(arena.root.join("link_target.txt"))
                .ok()
                .as_deref()
                != Some(INSIDE_CONTENT)
            {
                observation.held = false;
                observation.detail = format!("{}; the link's target was changed", observation.detail);
            }
            Ok(observation)
        }),
    );

    // Malformed paths.
    add(
        "nul_byte_in_path",
        Box::new(|_, jail| Ok(expect_refused(read_attempt(jail, "secret\0/../../secret")))),
    );
    add(
        "very_long_path",
        Box::new(|_, jail| {
            Ok(expect_refused(read_attempt(
                jail,
                &format!("{}secret", "a/".repeat(3000)),
            )))
        }),
    );
    add(
        "very_long_component_write",
        Box::new(|_, jail| Ok(expect_refused(write_attempt(jail, &"n".repeat(300), "PWNED")))),
    );
    add(
        "symlink_loop_pair",
        Box::new(|arena, jail| {
            arena.symlink("loop_a", "loop_b")?;
            arena.symlink("loop_b", "loop_a")?;
            Ok(expect_refused(read_attempt(jail, "loop_a")))
        }),
    );
    add(
        "symlink_self_loop",
        Box::new(|arena, jail| {
            arena.symlink("loop_self", "loop_self")?;
            Ok(expect_refused(read_attempt(jail, "loop_self/file")))
        }),
    );

    // Links that stay inside: followed by openat2, refused by the walk.
    let (inside_name, inside_dotdot_name) = match resolution {
        Resolution::Openat2Beneath => (
            "symlink_inside_stays_inside_works",
            "symlink_inside_via_dotdot_target_works",
        ),
        Resolution::NoFollowWalk => (
            "symlink_inside_refused_by_walk",
            "symlink_inside_via_dotdot_target_refused_by_walk",
        ),
    };
    add(
        inside_name,
        Box::new(move |arena, jail| {
            std::fs::create_dir(arena.root.join("inside_dir"))
                .and_then(|()| std::fs::write(arena.root.join("inside_dir/real.txt"), INSIDE_CONTENT))
                .map_err(|err| Setup::Failed(format!("inside file: {err}")))?;
            arena.symlink("inside_link", "inside_dir/real.txt")?;
            let result = read_attempt(jail, "inside_link");
            Ok(match resolution {
                Resolution::Openat2Beneath => expect_content(result, INSIDE_CONTENT),
                Resolution::NoFollowWalk => expect_refused(result),
            })
        }),
    );
    add(
        inside_dotdot_name,
        Box::new(move |arena, jail| {
            std::fs::create_dir(arena.root.join("sub"))
                .and_then(|()| std::fs::write(arena.root.join("inside.txt"), INSIDE_CONTENT))
                .map_err(|err| Setup::Failed(format!("inside file: {err}")))?;
            std::os::unix::fs::symlink("../inside.txt", arena.root.join("sub/up_link"))
                .map_err(|err| Setup::Failed(format!("symlink sub/up_link: {err}")))?;
            let result = read_attempt(jail, "sub/up_link");
            Ok(match resolution {
                Resolution::Openat2Beneath => expect_content(result, INSIDE_CONTENT),
                Resolution::NoFollowWalk => expect_refused(result),
            })
        }),
    );

    // Listing outside.
    add(
        "list_symlink_to_outside_dir",
        Box::new(|arena, jail| {
            arena.symlink("out_dir_list", &arena.secret_dir)?;
            Ok(expect_refused(list_attempt(jail, "out_dir_list")))
        }),
    );
    add(
        "list_symlink_to_slash",
        Box::new(|arena, jail| {
            arena.symlink("slash_list", "/")?;
            Ok(expect_refused(list_attempt(jail, "slash_list")))
        }),
    );
    add(
        "list_symlink_relative_dotdot",
        Box::new(|arena, jail| {
            arena.symlink("up_list", "..")?;
            Ok(expect_refused(list_attempt(jail, "up_list")))
        }),
    );

    // Limits.
    add(
        "read_over_size_limit",
        Box::new(|arena, jail| {
            let limits = FsLimits::default();
            std::fs::write(arena.root.join("big.txt"), "a".repeat(limits.max_read_bytes + 1))
                .map_err(|err| Setup::Failed(format!("big file: {err}")))?;
            Ok(expect_refused(jail.read("big.txt", &limits)))
        }),
    );
    add(
        "write_over_size_limit",
        Box::new(|arena, jail| {
            let limits = FsLimits::default();
            let result = write_attempt(jail, "too_big.txt", &"a".repeat(limits.max_write_bytes + 1));
            Ok(expect_refused_and_absent(result, &arena.root.join("too_big.txt")))
        }),
    );
    add(
        "read_only_jail_write",
        Box::new(|arena, _| {
            let read_only =
                Jail::open(&arena.root, Access::Read).map_err(|err| Setup::Failed(format!("read-only jail: {err}")))?;
            let result = write_attempt(&read_only, "read_only_probe.txt", "PWNED");
            Ok(expect_refused_and_absent(
                result,
                &arena.root.join("read_only_probe.txt"),
            ))
        }),
    );

    // Races: a directory inside is swapped with a link to outside while the driver uses it.
    add(
        "race_read_dir_swapped_with_outside_link",
        Box::new(|arena, jail| race(arena, jail, "race_read", false)),
    );
    add(
        "race_write_dir_swapped_with_outside_link",
        Box::new(|arena, jail| race(arena, jail, "race_write", true)),
    );

    list
}

fn make_fifo(path: &Path) -> Result<(), Setup> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|err| Setup::Failed(err.to_string()))?;
    // SAFETY: `c_path` is NUL-terminated and outlives the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(Setup::Failed(format!(
            "mkfifo {}: {}",
            path.display(),
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn make_char_device(path: &Path, major: u32, minor: u32) -> Result<(), Setup> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|err| Setup::Failed(err.to_string()))?;
    // SAFETY: `c_path` is NUL-terminated and outlives the call.
    if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor)) } != 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Setup::NotPossible(format!("mknod {}: {err}", path.display())),
            _ => Setup::Failed(format!("mknod {}: {err}", path.display())),
        });
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn make_char_device(path: &Path, major: u32, minor: u32) -> Result<(), Setup> {
    Err(Setup::NotPossible(format!(
        "device node {major}:{minor} at {} is only staged on Linux",
        path.display()
    )))
}

fn hard_link(original: &Path, link: &Path) -> Result<(), Setup> {
    std::fs::hard_link(original, link).map_err(|err| match err.raw_os_error() {
        // A different filesystem, or protected_hardlinks: an agent could not make this link either.
        Some(libc::EXDEV) | Some(libc::EPERM) => Setup::NotPossible(format!("hard link: {err}")),
        _ => Setup::Failed(format!("hard link {}: {err}", link.display())),
    })
}

/// Swaps two names atomically where the kernel allows it (renameat2 RENAME_EXCHANGE), otherwise
/// with three renames.
fn swap_names(first: &CStr, second: &CStr, parked: &CStr) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the paths are NUL-terminated and outlive the call; renameat2 takes no pointers
        // besides them.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                first.as_ptr(),
                libc::AT_FDCWD,
                second.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if ret == 0 {
            return true;
        }
    }
    // SAFETY (all three): the paths are NUL-terminated and outlive the calls.
    unsafe {
        libc::rename(first.as_ptr(), parked.as_ptr()) == 0
            && libc::rename(second.as_ptr(), first.as_ptr()) == 0
            && libc::rename(parked.as_ptr(), second.as_ptr()) == 0
    }
}

#[derive(Default)]
struct RaceCounts {
    attempts: u64,
    inside: u64,
    leaked: u64,
    refused: u64,
    last_error: Option<DriverError>,
}

/// Swaps `root/name` (a directory holding `file`) with a link to the secret directory for
/// `RACE_DURATION` while the main thread reads or writes `name/file` through the jail.
fn race(arena: &Arena, jail: &Jail, name: &str, write: bool) -> Result<Observation, Setup> {
    let real = arena.root.join(name);
    let swap = arena.root.join(format!("{name}_swap"));
    let parked = arena.root.join(format!("{name}_parked"));
    std::fs::create_dir(&real)
        .and_then(|()| std::fs::write(real.join("file"), INSIDE_CONTENT))
        .map_err(|err| Setup::Failed(format!("race dir: {err}")))?;
    std::os::unix::fs::symlink(&arena.secret_dir, &swap).map_err(|err| Setup::Failed(format!("race link: {err}")))?;
    let to_c = |path: &Path| CString::new(path.as_os_str().as_bytes()).map_err(|err| Setup::Failed(err.to_string()));
    let (c_real, c_swap, c_parked) = (to_c(&real)?, to_c(&swap)?, to_c(&parked)?);

    let target = format!("{name}/file");
    let stop = AtomicBool::new(false);
    let limits = FsLimits::default();
    let (swaps, counts) = std::thread::scope(|scope| {
        let swapper = scope.spawn(|| {
            let mut swaps: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if swap_names(&c_real, &c_swap, &c_parked) {
                    swaps += 1;
                }
            }
            swaps
        });
        let mut counts = RaceCounts::default();
        let deadline = Instant::now() + RACE_DURATION;
        while Instant::now() < deadline {
            counts.attempts += 1;
            let result = if write {
                jail.write(&target, "RACE-WRITE", &limits).map(|_| String::new())
            } else {
                jail.read(&target, &limits)
            };
            match result {
                Ok(text) if text.contains(SECRET_MARKER) => counts.leaked += 1,
                Ok(_) => counts.inside += 1,
                Err(err) => {
                    counts.refused += 1;
                    counts.last_error = Some(err);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        (swapper.join().unwrap_or(0), counts)
    });
    if swaps == 0 {
        return Err(Setup::Failed("the swapping thread never swapped the names".to_string()));
    }
    let verb = if write { "writes" } else { "reads" };
    let last = counts
        .last_error
        .map(|err| format!(" (last: {err})"))
        .unwrap_or_default();
    Ok(Observation {
        held: counts.leaked == 0,
        detail: format!(
            "{} {verb} during {swaps} swaps: {} reached the inside file, {} returned outside content, {} refused{last}",
            counts.attempts, counts.inside, counts.leaked, counts.refused
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::mpsc;

    fn rw_jail(dir: &Path) -> Jail {
        Jail::open(dir, Access::ReadWrite).expect("open jail on a temp dir")
    }

    fn limits() -> FsLimits {
        FsLimits::default()
    }

    fn assert_denied(result: Result<impl fmt::Debug, DriverError>, needle: &str) {
        match result {
            Err(DriverError::Denied(message)) => {
                assert!(message.contains(needle), "message {message:?} lacks {needle:?}")
            }
            other => panic!("expected Denied containing {needle:?}, got {other:?}"),
        }
    }

    /// Both mechanisms where openat2 is available; only the walk where it is not.
    fn jails(dir: &Path) -> Vec<Jail> {
        let mut jails = vec![Jail::open_with(dir, Access::ReadWrite, Resolution::NoFollowWalk).expect("walk jail")];
        if let Ok(jail) = Jail::open_with(dir, Access::ReadWrite, Resolution::Openat2Beneath) {
            jails.push(jail);
        }
        jails
    }

    #[test]
    fn jail_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Jail>();
    }

    #[test]
    fn default_limits() {
        assert_eq!(
            FsLimits::default(),
            FsLimits {
                max_read_bytes: 1024 * 1024,
                max_write_bytes: 1024 * 1024,
                max_list_entries: 1000
            }
        );
    }

    #[test]
    fn open_picks_openat2_when_the_kernel_allows_it() {
        let dir = tempfile::tempdir().unwrap();
        let jail = rw_jail(dir.path());
        let openat2_works = Jail::open_with(dir.path(), Access::ReadWrite, Resolution::Openat2Beneath).is_ok();
        let expected = if openat2_works {
            Resolution::Openat2Beneath
        } else {
            Resolution::NoFollowWalk
        };
        assert_eq!(jail.resolution(), expected);
        assert_eq!(jail.root(), std::fs::canonicalize(dir.path()).unwrap());
        assert_eq!(jail.access(), Access::ReadWrite);
    }

    #[test]
    fn resolution_display_is_distinct() {
        let a = Resolution::Openat2Beneath.to_string();
        let b = Resolution::NoFollowWalk.to_string();
        assert!(a.contains("openat2") && b.contains("O_NOFOLLOW"));
        assert_ne!(a, b);
    }

    #[test]
    fn open_requires_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Jail::open(&dir.path().join("missing"), Access::Read),
            Err(DriverError::NotFound(_))
        ));
        std::fs::write(dir.path().join("file"), "x").unwrap();
        assert!(matches!(
            Jail::open(&dir.path().join("file"), Access::Read),
            Err(DriverError::Failed(_))
        ));
    }

    #[test]
    fn lexical_checks_deny_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let jail = rw_jail(dir.path());
        for bad in ["", "a\0b", "/etc/passwd", "//x", "..", "../x", "a/../b", "a/..", "./.."] {
            assert_denied(jail.read(bad, &limits()), "relative to the work directory");
            assert_denied(jail.write(bad, "x", &limits()), "relative to the work directory");
            assert_denied(jail.list(bad, &limits()), "relative to the work directory");
        }
        // Nothing was created by the refused writes.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn overlong_path_is_denied() {
        let dir = tempfile::tempdir().unwrap();
        let jail = rw_jail(dir.path());
        assert_denied(jail.read(&"a/".repeat(3000), &limits()), "over the limit");
        assert_denied(jail.write(&"n".repeat(300), "x", &limits()), "too long");
    }

    #[test]
    fn read_plain_and_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("top.txt"), "top").unwrap();
        std::fs::write(dir.path().join("a/b/deep.txt"), "deep").unwrap();
        for jail in jails(dir.path()) {
            assert_eq!(jail.read("top.txt", &limits()).unwrap(), "top");
            assert_eq!(jail.read("./a//b/./deep.txt", &limits()).unwrap(), "deep");
        }
    }

    #[test]
    fn read_missing_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        for jail in jails(dir.path()) {
            assert_eq!(
                jail.read("missing.txt", &limits()),
                Err(DriverError::NotFound("missing.txt".to_string()))
            );
            assert!(matches!(
                jail.read("..%2fsecret", &limits()),
                Err(DriverError::NotFound(_))
            ));
            assert!(matches!(
                jail.read("file/inner", &limits()),
                Err(DriverError::NotFound(_))
            ));
        }
    }

    #[test]
    fn read_refuses_directories_and_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for jail in jails(dir.path()) {
            assert_denied(jail.read("sub", &limits()), "directory");
            assert_denied(jail.read(".", &limits()), "work directory itself");
        }
    }

    #[test]
    fn read_enforces_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ten.txt"), "0123456789").unwrap();
        let jail = rw_jail(dir.path());
        let exact = FsLimits {
            max_read_bytes: 10,
            ..FsLimits::default()
        };
        assert_eq!(jail.read("ten.txt", &exact).unwrap(), "0123456789");
        let smaller = FsLimits {
            max_read_bytes: 9,
            ..FsLimits::default()
        };
        assert_denied(jail.read("ten.txt", &smaller), "larger than the read limit of 9 bytes");
    }

    #[test]
    fn read_non_utf8_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bin"), [b'o', b'k', 0xff, 0xfe]).unwrap();
        let jail = rw_jail(dir.path());
        match jail.read("bin", &limits()) {
            Err(DriverError::Failed(message)) => assert!(message.contains("not UTF-8") && message.contains("offset 2")),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn read_refuses_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir_in(dir.path()).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(outside.path().join("secret"), "SECRET").unwrap();
        std::fs::hard_link(outside.path().join("secret"), root.join("link")).unwrap();
        for jail in jails(&root) {
            assert_denied(jail.read("link", &limits()), "hard link");
        }
    }

    #[test]
    fn read_fifo_is_denied_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        make_fifo(&dir.path().join("fifo")).map_err(|_| "mkfifo").unwrap();
        let root = dir.path().to_path_buf();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let results: Vec<_> = jails(&root).iter().map(|jail| jail.read("fifo", &limits())).collect();
            let _ = sender.send(results);
        });
        // Generous: a blocked open would never answer.
        let results = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("read of a FIFO blocked");
        for result in results {
            assert_denied(result, "FIFO");
        }
    }

    #[test]
    fn read_socket_is_denied() {
        let dir = tempfile::tempdir().unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        for jail in jails(dir.path()) {
            assert_denied(jail.read("sock", &limits()), "socket");
        }
    }

    #[test]
    fn device_files_are_classified_as_devices() {
        // A device node needs privilege to create inside a root; /dev/null shows the check itself.
        let stat = fstat(File::open("/dev/null").unwrap().as_fd()).unwrap();
        assert_denied(require_single_regular_file(&stat, "null", "-"), "a device");
    }

    #[test]
    fn symlink_inside_is_followed_with_openat2() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(jail) = Jail::open_with(dir.path(), Access::ReadWrite, Resolution::Openat2Beneath) else {
            // This kernel has no openat2: the walk tests cover the jail in force.
            assert_eq!(rw_jail(dir.path()).resolution(), Resolution::NoFollowWalk);
            return;
        };
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("real.txt"), "real").unwrap();
        symlink("real.txt", dir.path().join("link")).unwrap();
        symlink("../real.txt", dir.path().join("sub/up")).unwrap();
        symlink("sub", dir.path().join("sub_link")).unwrap();
        assert_eq!(jail.read("link", &limits()).unwrap(), "real");
        assert_eq!(jail.read("sub/up", &limits()).unwrap(), "real");
        assert_eq!(jail.read("sub_link/up", &limits()).unwrap(), "real");
        // Parent links that stay inside work for writes too.
        assert_eq!(jail.write("sub_link/new.txt", "new", &limits()).unwrap(), 3);
        assert_eq!(std::fs::read_to_string(dir.path().join("sub/new.txt")).unwrap(), "new");
    }

    #[test]
    fn symlink_outside_is_denied_as_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("secret"), "SECRET").unwrap();
        symlink(dir.path().join("secret"), root.join("abs")).unwrap();
        symlink("../secret", root.join("rel")).unwrap();
        for jail in jails(&root) {
            for link in ["abs", "rel"] {
                let expected = match jail.resolution() {
                    Resolution::Openat2Beneath => "leads outside the work directory",
                    Resolution::NoFollowWalk => "symbolic link",
                };
                assert_denied(jail.read(link, &limits()), expected);
            }
        }
    }

    #[test]
    fn symlink_loop_is_denied() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        for jail in jails(dir.path()) {
            assert_denied(jail.read("a", &limits()), "symbolic link");
        }
    }

    #[test]
    fn write_requires_read_write_access() {
        let dir = tempfile::tempdir().unwrap();
        let jail = Jail::open(dir.path(), Access::Read).unwrap();
        assert_denied(jail.write("x.txt", "x", &limits()), "read-only");
        assert!(!dir.path().join("x.txt").exists());
    }

    #[test]
    fn write_enforces_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let jail = rw_jail(dir.path());
        let small = FsLimits {
            max_write_bytes: 4,
            ..FsLimits::default()
        };
        assert_eq!(jail.write("ok.txt", "four", &small).unwrap(), 4);
        assert_denied(
            jail.write("big.txt", "fives", &small),
            "over the write limit of 4 bytes",
        );
        assert!(!dir.path().join("big.txt").exists());
    }

    #[test]
    fn write_creates_parents_and_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        for (index, jail) in jails(dir.path()).iter().enumerate() {
            let path = format!("m{index}/a/b/c.txt");
            assert_eq!(jail.write(&path, "a longer first text", &limits()).unwrap(), 19);
            assert_eq!(jail.write(&path, "short", &limits()).unwrap(), 5);
            assert_eq!(std::fs::read_to_string(dir.path().join(&path)).unwrap(), "short");
            assert_eq!(jail.read(&path, &limits()).unwrap(), "short");
            let mode = std::fs::metadata(dir.path().join(&path)).unwrap().permissions();
            // Created 0o644 less the umask: never executable, never writable by group or others.
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o133, 0);
        }
    }

    #[test]
    fn write_refuses_a_symlink_at_the_final_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target.txt"), "original").unwrap();
        symlink("target.txt", dir.path().join("link")).unwrap();
        for jail in jails(dir.path()) {
            assert_denied(jail.write("link", "changed", &limits()), "symbolic link");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("target.txt")).unwrap(),
            "original"
        );
    }

    #[test]
    fn write_through_dangling_symlink_creates_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink(dir.path().join("created"), root.join("dangling")).unwrap();
        symlink("missing_inside", root.join("dangling_inside")).unwrap();
        for jail in jails(&root) {
            assert_denied(jail.write("dangling", "x", &limits()), "symbolic link");
            assert_denied(jail.write("dangling_inside", "x", &limits()), "symbolic link");
        }
        assert!(!dir.path().join("created").exists());
        assert!(!root.join("missing_inside").exists());
    }

    #[test]
    fn write_refuses_hard_links_without_truncating() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("secret"), "SECRET").unwrap();
        std::fs::hard_link(dir.path().join("secret"), root.join("link")).unwrap();
        for jail in jails(&root) {
            assert_denied(jail.write("link", "x", &limits()), "hard link");
        }
        assert_eq!(std::fs::read_to_string(dir.path().join("secret")).unwrap(), "SECRET");
    }

    #[test]
    fn write_refuses_directories_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        make_fifo(&dir.path().join("fifo")).map_err(|_| "mkfifo").unwrap();
        for jail in jails(dir.path()) {
            assert_denied(jail.write("sub", "x", &limits()), "directory");
            assert_denied(jail.write(".", "x", &limits()), "work directory itself");
            assert_denied(jail.write("fifo", "x", &limits()), "FIFO");
        }
    }

    #[test]
    fn write_parent_symlink_to_outside_is_denied_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        symlink(dir.path().join("outside"), root.join("out")).unwrap();
        for jail in jails(&root) {
            assert!(matches!(
                jail.write("out/new/file.txt", "x", &limits()),
                Err(DriverError::Denied(_))
            ));
        }
        assert_eq!(std::fs::read_dir(dir.path().join("outside")).unwrap().count(), 0);
    }

    #[test]
    fn list_is_sorted_with_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "").unwrap();
        std::fs::create_dir(dir.path().join("a_dir")).unwrap();
        symlink("b.txt", dir.path().join("c_link")).unwrap();
        make_fifo(&dir.path().join("d_fifo")).map_err(|_| "mkfifo").unwrap();
        for jail in jails(dir.path()) {
            let listing = jail.list(".", &limits()).unwrap();
            assert!(!listing.truncated);
            let got: Vec<(&str, EntryKind)> = listing.entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
            assert_eq!(
                got,
                vec![
                    ("a_dir", EntryKind::Dir),
                    ("b.txt", EntryKind::File),
                    ("c_link", EntryKind::Symlink),
                    ("d_fifo", EntryKind::Other)
                ]
            );
        }
    }

    #[test]
    fn list_subdirectory_and_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x/empty")).unwrap();
        std::fs::write(dir.path().join("x/f"), "").unwrap();
        for jail in jails(dir.path()) {
            let names: Vec<String> = jail
                .list("x", &limits())
                .unwrap()
                .entries
                .into_iter()
                .map(|e| e.name)
                .collect();
            assert_eq!(names, vec!["empty", "f"]);
            assert_eq!(
                jail.list("x/empty", &limits()).unwrap(),
                Listing {
                    entries: vec![],
                    truncated: false
                }
            );
            assert!(matches!(jail.list("x/f", &limits()), Err(DriverError::NotFound(_))));
            assert!(matches!(jail.list("nope", &limits()), Err(DriverError::NotFound(_))));
        }
    }

    #[test]
    fn list_caps_entries_keeping_the_first_names() {
        let dir = tempfile::tempdir().unwrap();
        for index in (0..50).rev() {
            std::fs::write(dir.path().join(format!("f{index:02}")), "").unwrap();
        }
        let jail = rw_jail(dir.path());
        let capped = FsLimits {
            max_list_entries: 5,
            ..FsLimits::default()
        };
        let listing = jail.list(".", &capped).unwrap();
        assert!(listing.truncated);
        let names: Vec<String> = listing.entries.into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["f00", "f01", "f02", "f03", "f04"]);
        let exact = FsLimits {
            max_list_entries: 50,
            ..FsLimits::default()
        };
        let listing = jail.list(".", &exact).unwrap();
        assert!(!listing.truncated);
        assert_eq!(listing.entries.len(), 50);
        let none = FsLimits {
            max_list_entries: 0,
            ..FsLimits::default()
        };
        assert_eq!(
            jail.list(".", &none).unwrap(),
            Listing {
                entries: vec![],
                truncated: true
            }
        );
    }

    #[test]
    fn list_of_dotdot_and_outside_link_is_denied() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink(dir.path(), root.join("up")).unwrap();
        for jail in jails(&root) {
            assert_denied(jail.list("..", &limits()), "relative to the work directory");
            assert!(matches!(jail.list("up", &limits()), Err(DriverError::Denied(_))));
        }
    }

    #[test]
    fn list_entry_serializes_kind_in_lowercase() {
        let entry = ListEntry {
            name: "a".to_string(),
            kind: EntryKind::Symlink,
        };
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"name":"a","kind":"symlink"}"#
        );
    }

    #[test]
    fn walk_refuses_every_symlink_and_handles_plain_paths() {
        let dir = tempfile::tempdir().unwrap();
        let jail = Jail::open_with(dir.path(), Access::ReadWrite, Resolution::NoFollowWalk).unwrap();
        assert_eq!(jail.resolution(), Resolution::NoFollowWalk);
        assert_eq!(jail.write("a/b/c/file.txt", "nested", &limits()).unwrap(), 6);
        assert_eq!(jail.read("a/b/c/file.txt", &limits()).unwrap(), "nested");
        let names: Vec<String> = jail
            .list("a/b", &limits())
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["c"]);

        symlink("a", dir.path().join("dir_link")).unwrap();
        symlink("a/b/c/file.txt", dir.path().join("file_link")).unwrap();
        let refusal = "follows no symbolic link";
        assert_denied(jail.read("file_link", &limits()), "symbolic link");
        assert_denied(jail.read("dir_link/b/c/file.txt", &limits()), refusal);
        assert_denied(jail.list("dir_link", &limits()), refusal);
        assert_denied(jail.write("dir_link/b/new.txt", "x", &limits()), refusal);
        assert!(!dir.path().join("a/b/new.txt").exists());
    }

    /// Installs, on the calling thread only (no TSYNC, so it ends with the thread), a seccomp
    /// filter that fails openat2 with `errno`, as container runtimes that do not know it do.
    #[cfg(target_os = "linux")]
    fn deny_openat2_in_this_thread(errno: c_int) {
        let load_nr = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        let jump_eq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let mut filter = [
            // seccomp_data.nr is at offset 0.
            libc::sock_filter {
                code: load_nr,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: jump_eq,
                jt: 0,
                jf: 1,
                k: libc::SYS_openat2 as u32,
            },
            libc::sock_filter {
                code: ret,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
            },
            libc::sock_filter {
                code: ret,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: plain prctl calls; `program` points to a filter that lives across the call, and
        // the kernel copies it.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0, "no_new_privs");
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog
                ),
                0,
                "seccomp: {}",
                io::Error::last_os_error()
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn open_falls_back_to_the_walk_when_seccomp_denies_openat2() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/file.txt"), "plain").unwrap();
        symlink("sub/file.txt", dir.path().join("link")).unwrap();
        for errno in [libc::ENOSYS, libc::EPERM] {
            let root = dir.path().to_path_buf();
            let (resolution, plain, through_link, forced) = std::thread::spawn(move || {
                deny_openat2_in_this_thread(errno);
                let jail = Jail::open(&root, Access::ReadWrite).expect("open falls back");
                let forced = Jail::open_with(&root, Access::ReadWrite, Resolution::Openat2Beneath);
                (
                    jail.resolution(),
                    jail.read("sub/file.txt", &limits()),
                    jail.read("link", &limits()),
                    forced,
                )
            })
            .join()
            .expect("seccomp thread");
            assert_eq!(resolution, Resolution::NoFollowWalk, "errno {errno}");
            assert_eq!(plain.unwrap(), "plain");
            assert_denied(through_link, "symbolic link");
            assert!(matches!(forced, Err(DriverError::Io(m)) if m.contains("openat2")));
        }
    }

    #[test]
    fn error_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let jail = rw_jail(dir.path());
        let map = |errno| jail.os_error(io::Error::from_raw_os_error(errno), "p");
        assert_eq!(map(libc::ENOENT), DriverError::NotFound("p".to_string()));
        assert!(matches!(map(libc::EACCES), DriverError::Denied(_)));
        assert!(matches!(map(libc::EPERM), DriverError::Denied(_)));
        assert!(matches!(map(libc::EXDEV), DriverError::Denied(m) if m.contains("leads outside the work directory")));
        assert!(matches!(map(libc::ELOOP), DriverError::Denied(_)));
        assert!(matches!(map(libc::ENOTDIR), DriverError::NotFound(_)));
        assert!(matches!(map(libc::EIO), DriverError::Io(m) if m.contains("`p`")));
        let long = "x".repeat(1000);
        match jail.os_error(io::Error::from_raw_os_error(libc::EIO), &long) {
            DriverError::Io(message) => assert!(message.len() < 400),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn escape_trials_are_all_contained() {
        let scratch = tempfile::tempdir().unwrap();
        let trials = escape_trials(scratch.path());
        let escaped: Vec<&Trial> = trials.iter().filter(|trial| !trial.contained).collect();
        assert!(escaped.is_empty(), "escapes: {escaped:#?}");
        assert!(trials.len() >= 45, "only {} trials", trials.len());
        let mut names: Vec<&str> = trials.iter().map(|trial| trial.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), trials.len(), "trial names are not distinct");
        if Jail::open(scratch.path(), Access::Read).unwrap().resolution() == Resolution::Openat2Beneath {
            assert!(names.contains(&"symlink_inside_stays_inside_works"));
            assert!(names.contains(&"walk_symlink_inside_refused_by_walk"));
        }
        // The arena was removed afterwards.
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }

    #[test]
    fn escape_trials_report_a_setup_failure() {
        let dir = tempfile::tempdir().unwrap();
        let trials = escape_trials(&dir.path().join("missing"));
        assert_eq!(trials.len(), 1);
        assert!(!trials[0].contained);
        assert_eq!(trials[0].name, "setup");
    }
}
