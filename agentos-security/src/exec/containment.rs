//! Ends a run: kills the process group and every process left in the run's cgroup, then removes the cgroup.
//! Runs on every ending, including the run future being dropped.

#[cfg(target_os = "linux")]
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use super::cgroup::ExecCgroup;

/// How long cleanup waits for killed processes to leave the cgroup before giving up on removing it.
#[cfg(target_os = "linux")]
const CLEANUP_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between two passes over the cgroup's members.
#[cfg(target_os = "linux")]
const CLEANUP_PAUSE: Duration = Duration::from_millis(5);

/// The process group and cgroup of one run, killed and removed on [`Containment::finish`] or on drop.
pub(super) struct Containment {
    process_group: Option<i32>,
    #[cfg(target_os = "linux")]
    cgroup: Option<ExecCgroup>,
}

impl Containment {
    /// Containment of a run that has not started yet.
    pub(super) fn new(#[cfg(target_os = "linux")] cgroup: Option<ExecCgroup>) -> Self {
        Containment {
            process_group: None,
            #[cfg(target_os = "linux")]
            cgroup,
        }
    }

    /// Records the process group of the started child.
    pub(super) fn set_process_group(&mut self, pgid: i32) {
        self.process_group = Some(pgid);
    }

    /// Sends `SIGKILL` to the whole process group now.
    pub(super) fn kill_process_group(&self) {
        if let Some(pgid) = self.process_group {
            kill_group(pgid);
        }
    }

    /// Whether the cgroup refused a fork because of `pids.max`.
    pub(super) fn process_limit_hit(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(cgroup) = &self.cgroup {
            return cgroup.limit_was_hit();
        }
        false
    }

    /// Kills everything and removes the cgroup, waiting (at most [`CLEANUP_DEADLINE`]) for dying processes;
    /// returns what could not be done. Blocking.
    pub(super) fn finish(mut self) -> Vec<String> {
        if let Some(pgid) = self.process_group.take() {
            kill_group(pgid);
        }
        #[cfg(target_os = "linux")]
        if let Some(cgroup) = self.cgroup.take()
            && let Err(why) = kill_and_remove(&cgroup, Instant::now() + CLEANUP_DEADLINE)
        {
            tracing::warn!("{why}");
            return vec![why];
        }
        Vec::new()
    }
}

impl Drop for Containment {
    /// The run future was dropped (or spawn failed): kill at once, and finish removing the cgroup on a
    /// thread of its own if processes are still dying.
    fn drop(&mut self) {
        if let Some(pgid) = self.process_group.take() {
            kill_group(pgid);
        }
        #[cfg(target_os = "linux")]
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.kill_members();
            if cgroup.remove().is_err() {
                let spawned = std::thread::Builder::new()
                    .name("exec-cleanup".to_string())
                    .spawn(move || {
                        if let Err(why) = kill_and_remove(&cgroup, Instant::now() + CLEANUP_DEADLINE) {
                            tracing::warn!("{why}");
                        }
                    });
                if let Err(err) = spawned {
                    tracing::warn!("cannot start the cgroup cleanup thread: {err}");
                }
            }
        }
    }
}

/// `SIGKILL` to every process of the group `pgid`.
fn kill_group(pgid: i32) {
    // pgid 0 or 1 would address our own group or init's; setsid() never gives the child either.
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid only sends a signal to that process group; no memory involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Kills the cgroup's members until it is empty and removable, or the deadline passes.
#[cfg(target_os = "linux")]
fn kill_and_remove(cgroup: &ExecCgroup, deadline: Instant) -> Result<(), String> {
    loop {
        let killed = cgroup.kill_members();
        match cgroup.remove() {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(format!(
                    "cgroup {} could not be removed ({err}); last pass killed {} process(es)",
                    cgroup.path().display(),
                    killed.unwrap_or(0)
                ));
            }
            Err(_) => std::thread::sleep(CLEANUP_PAUSE),
        }
    }
}
