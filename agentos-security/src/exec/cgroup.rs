//! The pids cgroup of a run: `<pids hierarchy>/agentos/exec-<pid>-<n>` with `pids.max`, cgroup v1 or v2.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers the cgroups of this process.
static NEXT_CGROUP: AtomicU64 = AtomicU64::new(0);
/// Names taken (e.g. by another agentos in another pid namespace) are skipped at most this many times.
const NAME_ATTEMPTS: u32 = 16;

/// Finds the hierarchy with the pids controller, creates `agentos` in it (enabling the controller for its
/// children on cgroup v2) and checks that a run cgroup can be created there; returns the `agentos` dir.
pub(super) fn prepare_parent() -> Result<PathBuf, String> {
    let (mount, version) = find_pids_hierarchy()?;
    if version == Version::V2 {
        enable_pids_for_children(&mount)?;
    }
    let parent = mount.join("agentos");
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("cannot create {}: {err}", parent.display())),
    }
    if version == Version::V2 {
        enable_pids_for_children(&parent)?;
    }
    let trial = ExecCgroup::create(&parent, 1)
        .map_err(|err| format!("cannot create a cgroup under {}: {err}", parent.display()))?;
    trial
        .remove()
        .map_err(|err| format!("cannot remove {}: {err}", trial.path().display()))?;
    Ok(parent)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The mount point of the hierarchy that has the pids controller: a v1 `cgroup` mount with the `pids`
/// option, else a `cgroup2` mount whose `cgroup.controllers` lists `pids`.
fn find_pids_hierarchy() -> Result<(PathBuf, Version), String> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").map_err(|err| format!("cannot read /proc/self/mounts: {err}"))?;
    let entries: Vec<(&str, &str, &str)> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            let options = fields.next()?;
            // Mount points with escaped characters (\040 for a space...) are not cgroup mounts worth decoding.
            (!mount_point.contains('\\')).then_some((mount_point, fs_type, options))
        })
        .collect();
    if let Some((mount_point, _, _)) = entries
        .iter()
        .find(|(_, fs_type, options)| *fs_type == "cgroup" && options.split(',').any(|option| option == "pids"))
    {
        return Ok((PathBuf::from(mount_point), Version::V1));
    }
    for (mount_point, fs_type, _) in &entries {
        if *fs_type == "cgroup2" {
            let controllers = fs::read_to_string(Path::new(mount_point).join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|controller| controller == "pids") {
                return Ok((PathBuf::from(mount_point), Version::V2));
            }
        }
    }
    Err("no cgroup hierarchy with the pids controller is mounted".to_string())
}

/// cgroup v2: children of `dir` get the pids controller only once `dir`'s `cgroup.subtree_control` has it.
fn enable_pids_for_children(dir: &Path) -> Result<(), String> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).map_err(|err| format!("cannot read {}: {err}", control.display()))?;
    if enabled.split_whitespace().any(|controller| controller == "pids") {
        return Ok(());
    }
    fs::write(&control, "+pids").map_err(|err| format!("cannot enable pids in {}: {err}", control.display()))
}

/// One run's cgroup directory. Its `cgroup.procs` fd is handed to the child, which joins by writing `0`.
pub(super) struct ExecCgroup {
    dir: PathBuf,
    procs: Option<OwnedFd>,
}

impl ExecCgroup {
    /// Creates `parent/exec-<pid>-<n>` with `pids.max = max_processes` and opens its `cgroup.procs`
    /// (close-on-exec) for writing.
    pub(super) fn create(parent: &Path, max_processes: u64) -> io::Result<ExecCgroup> {
        let mut attempts = 0;
        let dir = loop {
            let number = NEXT_CGROUP.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!("exec-{}-{number}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempts < NAME_ATTEMPTS => attempts += 1,
                Err(err) => return Err(err),
            }
        };
        let cgroup = ExecCgroup { dir, procs: None };
        // If pids.max or cgroup.procs fails, the still empty directory is removed again.
        let opened = fs::write(cgroup.dir.join("pids.max"), format!("{max_processes}\n"))
            .and_then(|()| fs::OpenOptions::new().write(true).open(cgroup.dir.join("cgroup.procs")));
        match opened {
            Ok(procs) => Ok(ExecCgroup {
                procs: Some(procs.into()),
                ..cgroup
            }),
            Err(err) => {
                let _ = cgroup.remove();
                Err(err)
            }
        }
    }

    /// The cgroup directory.
    pub(super) fn path(&self) -> &Path {
        &self.dir
    }

    /// Hands over the `cgroup.procs` fd (for the child to join with); `None` once taken.
    pub(super) fn take_procs_fd(&mut self) -> Option<OwnedFd> {
        self.procs.take()
    }

    /// Whether `pids.events` counts a fork refused because of `pids.max`.
    pub(super) fn limit_was_hit(&self) -> bool {
        let Ok(events) = fs::read_to_string(self.dir.join("pids.events")) else {
            return false;
        };
        events.lines().any(|line| {
            line.strip_prefix("max ")
                .and_then(|count| count.trim().parse::<u64>().ok())
                .is_some_and(|count| count > 0)
        })
    }

    /// Sends `SIGKILL` to every process listed in `cgroup.procs`; returns how many were listed.
    pub(super) fn kill_members(&self) -> io::Result<usize> {
        let members = fs::read_to_string(self.dir.join("cgroup.procs"))?;
        let mut count = 0;
        for pid in members
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 1)
        {
            // SAFETY: kill(2) on a pid read from this run's own cgroup; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            count += 1;
        }
        Ok(count)
    }

    /// Removes the (empty) cgroup directory; fails with `EBUSY` while a member is alive.
    pub(super) fn remove(&self) -> io::Result<()> {
        fs::remove_dir(&self.dir)
    }
}

/// Joins the cgroup whose `cgroup.procs` is `procs_fd` by writing `0` (= the calling process).
/// Async-signal-safe: one write(2).
pub(super) fn join_in_child(procs_fd: std::os::fd::RawFd) -> io::Result<()> {
    let pid_zero = b"0";
    // SAFETY: write(2) of a 1-byte static buffer to an fd the parent opened and keeps open until exec.
    let written = unsafe { libc::write(procs_fd, pid_zero.as_ptr().cast(), pid_zero.len()) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
