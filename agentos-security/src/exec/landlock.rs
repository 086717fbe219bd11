//! Landlock through raw syscalls: the ruleset is built in the parent, the child only calls
//! `landlock_restrict_self` on its fd.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: u32 = 1;

// Filesystem access rights (include/uapi/linux/landlock.h).
const ACCESS_FS_EXECUTE: u64 = 1 << 0;
const ACCESS_FS_WRITE_FILE: u64 = 1 << 1;
const ACCESS_FS_READ_FILE: u64 = 1 << 2;
const ACCESS_FS_READ_DIR: u64 = 1 << 3;
const ACCESS_FS_REMOVE_DIR: u64 = 1 << 4;
const ACCESS_FS_REMOVE_FILE: u64 = 1 << 5;
const ACCESS_FS_MAKE_CHAR: u64 = 1 << 6;
const ACCESS_FS_MAKE_DIR: u64 = 1 << 7;
const ACCESS_FS_MAKE_REG: u64 = 1 << 8;
const ACCESS_FS_MAKE_SOCK: u64 = 1 << 9;
const ACCESS_FS_MAKE_FIFO: u64 = 1 << 10;
const ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
const ACCESS_FS_MAKE_SYM: u64 = 1 << 12;
/// ABI 2.
const ACCESS_FS_REFER: u64 = 1 << 13;
/// ABI 3.
const ACCESS_FS_TRUNCATE: u64 = 1 << 14;
/// ABI 5.
const ACCESS_FS_IOCTL_DEV: u64 = 1 << 15;

// Network access rights, ABI 4.
const ACCESS_NET_BIND_TCP: u64 = 1 << 0;
const ACCESS_NET_CONNECT_TCP: u64 = 1 << 1;

// Scopes, ABI 6.
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

/// `struct landlock_ruleset_attr` as of ABI 6. Older kernels accept the larger struct as long as the fields
/// they do not know are zero, which [`handled_rights`] ensures.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the uapi header).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel, or why there is none.
pub(super) fn abi_version() -> Result<u32, String> {
    // SAFETY: with a null attr, size 0 and the VERSION flag the syscall reads no memory and returns the ABI.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if version < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOSYS) => "Landlock is not supported: the kernel has no landlock syscalls (ENOSYS)".to_string(),
            Some(libc::EOPNOTSUPP) => {
                "Landlock is not supported: it is built in but disabled at boot (add `landlock` to lsm=)".to_string()
            }
            _ => format!("Landlock is not supported: landlock_create_ruleset failed: {err}"),
        });
    }
    u32::try_from(version).map_err(|_| format!("Landlock reported an impossible ABI version {version}"))
}

/// What Landlock of ABI `abi` cannot restrict, one warning each.
pub(super) fn abi_warnings(abi: u32) -> Vec<String> {
    let mut warnings = Vec::new();
    if abi < 2 {
        warnings.push(format!(
            "Landlock ABI {abi} < 2: renaming or linking files between directories is refused even in the workdir"
        ));
    }
    if abi < 3 {
        warnings.push(format!(
            "Landlock ABI {abi} < 3: truncate(2) of files outside the workdir is not restricted"
        ));
    }
    if abi < 4 {
        warnings.push(format!(
            "Landlock ABI {abi} < 4: no TCP rules; the network is denied by seccomp alone (when seccomp is enforced)"
        ));
    }
    if abi < 5 {
        warnings.push(format!(
            "Landlock ABI {abi} < 5: ioctl(2) on device files is not restricted"
        ));
    }
    if abi < 6 {
        warnings.push(format!(
            "Landlock ABI {abi} < 6: signals and abstract unix sockets are not scoped; as uid 0 the program may \
             signal host processes"
        ));
    }
    warnings
}

/// The rights ABI `abi` can handle: `(filesystem, network, scopes)`. Network rights are handled (and so,
/// with no rule granting them, denied) only without network access.
fn handled_rights(abi: u32, allow_network: bool) -> (u64, u64, u64) {
    let mut fs = ACCESS_FS_EXECUTE
        | ACCESS_FS_WRITE_FILE
        | ACCESS_FS_READ_FILE
        | ACCESS_FS_READ_DIR
        | ACCESS_FS_REMOVE_DIR
        | ACCESS_FS_REMOVE_FILE
        | ACCESS_FS_MAKE_CHAR
        | ACCESS_FS_MAKE_DIR
        | ACCESS_FS_MAKE_REG
        | ACCESS_FS_MAKE_SOCK
        | ACCESS_FS_MAKE_FIFO
        | ACCESS_FS_MAKE_BLOCK
        | ACCESS_FS_MAKE_SYM;
    if abi >= 2 {
        fs |= ACCESS_FS_REFER;
    }
    if abi >= 3 {
        fs |= ACCESS_FS_TRUNCATE;
    }
    if abi >= 5 {
        fs |= ACCESS_FS_IOCTL_DEV;
    }
    let net = if abi >= 4 && !allow_network {
        ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
    } else {
        0
    };
    let scoped = if abi >= 6 {
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    } else {
        0
    };
    (fs, net, scoped)
}

/// Builds the ruleset of one run: read + execute beneath `/`; everything but device creation and device
/// ioctls beneath `writable_dir`; read + write on `/dev/null`. Returns its (close-on-exec) fd.
pub(super) fn prepare_ruleset(abi: u32, writable_dir: Option<&Path>, allow_network: bool) -> io::Result<OwnedFd> {
    let (handled_fs, handled_net, scoped) = handled_rights(abi, allow_network);
    let attr = RulesetAttr {
        handled_access_fs: handled_fs,
        handled_access_net: handled_net,
        scoped,
    };
    // SAFETY: `attr` is a live, initialised landlock_ruleset_attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("landlock_create_ruleset returned an invalid fd"))?;
    // SAFETY: the kernel just returned this fd (close-on-exec) and nothing else owns it.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd) };

    let read_only = (ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR) & handled_fs;
    add_path_rule(&ruleset, Path::new("/"), read_only)?;
    if let Some(dir) = writable_dir {
        let writable = handled_fs & !(ACCESS_FS_MAKE_CHAR | ACCESS_FS_MAKE_BLOCK | ACCESS_FS_IOCTL_DEV);
        add_path_rule(&ruleset, dir, writable)?;
    }
    // Shells redirect to /dev/null all the time; it is a character device, so only file rights apply.
    match add_path_rule(
        &ruleset,
        Path::new("/dev/null"),
        (ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE) & handled_fs,
    ) {
        Ok(()) => {}
        // Without /dev/null there is simply nothing more to allow.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    Ok(ruleset)
}

/// Allows `access` beneath `path` in `ruleset`.
fn add_path_rule(ruleset: &OwnedFd, path: &Path, access: u64) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string; O_PATH opens nothing but a reference to the inode.
    let raw = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if raw < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("cannot open {} for a Landlock rule: {err}", path.display()),
        ));
    }
    // SAFETY: open just returned this fd and nothing else owns it.
    let parent = unsafe { OwnedFd::from_raw_fd(raw) };
    let rule = PathBeneathAttr {
        allowed_access: access,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: `rule` is a live landlock_path_beneath_attr; `ruleset` and `parent` are open fds.
    let added = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &rule as *const PathBeneathAttr,
            0u32,
        )
    };
    if added != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("landlock_add_rule for {} failed: {err}", path.display()),
        ));
    }
    Ok(())
}

/// Enforces `ruleset_fd` on the calling process (and everything it will exec or fork).
/// Async-signal-safe: one syscall. Needs `PR_SET_NO_NEW_PRIVS` (or `CAP_SYS_ADMIN`).
pub(super) fn restrict_self(ruleset_fd: RawFd) -> io::Result<()> {
    // SAFETY: landlock_restrict_self takes an fd and flags; no memory is passed.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset_fd, 0u32) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
