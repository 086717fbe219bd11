//! What the child does between fork and exec, prepared (allocated) in the parent.

use std::io;
use std::io::PipeWriter;
use std::os::fd::AsRawFd;
#[cfg(target_os = "linux")]
use std::os::fd::OwnedFd;
use std::path::Path;

use super::containment::Containment;
use super::probe::Host;
use super::{ExecLimits, ProcessLimit};
use crate::common::DriverError;

/// A sandbox step in the child; its byte is written to the failure pipe when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Step {
    NewSession = 1,
    NewIpcNamespace = 2,
    JoinCgroup = 3,
    Rlimits = 4,
    NoNewPrivs = 5,
    DropCapabilities = 6,
    Landlock = 7,
    Seccomp = 8,
}

impl Step {
    /// The step a failure-pipe byte names.
    pub(super) fn from_byte(byte: u8) -> Option<Step> {
        [
            Step::NewSession,
            Step::NewIpcNamespace,
            Step::JoinCgroup,
            Step::Rlimits,
            Step::NoNewPrivs,
            Step::DropCapabilities,
            Step::Landlock,
            Step::Seccomp,
        ]
        .into_iter()
        .find(|step| *step as u8 == byte)
    }

    /// What the step does, for error messages.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Step::NewSession => "setsid (own session and process group)",
            Step::NewIpcNamespace => "unshare(CLONE_NEWIPC)",
            Step::JoinCgroup => "joining the pids cgroup",
            Step::Rlimits => "setrlimit",
            Step::NoNewPrivs => "PR_SET_NO_NEW_PRIVS",
            Step::DropCapabilities => "dropping capabilities",
            Step::Landlock => "landlock_restrict_self",
            Step::Seccomp => "installing the seccomp filter",
        }
    }
}

/// rlimit values (soft = hard unless said otherwise).
struct Rlimits {
    /// RLIMIT_CPU soft limit; the hard limit is one second more, so `SIGXCPU` comes before `SIGKILL`.
    cpu_seconds: u64,
    file_bytes: u64,
    open_files: u64,
    address_space_bytes: u64,
    /// RLIMIT_NPROC, set only when it is the process limit in use.
    processes: Option<u64>,
}

/// Everything the child applies, allocated before the fork.
pub(super) struct ChildSetup {
    rlimits: Rlimits,
    /// Write end of the pipe on which a failing step writes its byte (close-on-exec).
    failure_pipe: PipeWriter,
    #[cfg(target_os = "linux")]
    ipc_namespace: bool,
    #[cfg(target_os = "linux")]
    cgroup_procs: Option<OwnedFd>,
    #[cfg(target_os = "linux")]
    no_new_privs: bool,
    #[cfg(target_os = "linux")]
    capabilities: Option<super::caps::CapabilityDrop>,
    #[cfg(target_os = "linux")]
    landlock_ruleset: Option<OwnedFd>,
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        target_endian = "little"
    ))]
    seccomp_filter: Option<Vec<libc::sock_filter>>,
}

/// Prepares the child's setup and the run's containment (its cgroup, where available) for `limits`.
/// A layer the host supports that cannot be prepared for this run fails the run.
pub(super) fn prepare(
    host: &Host,
    limits: &ExecLimits,
    workdir: Option<&Path>,
    failure_pipe: PipeWriter,
) -> Result<(ChildSetup, Containment), DriverError> {
    let layers = &host.layers;
    let rlimits = Rlimits {
        cpu_seconds: limits.cpu_seconds,
        file_bytes: limits.max_file_bytes,
        open_files: limits.max_open_files,
        address_space_bytes: limits.max_memory_bytes,
        processes: (layers.process_limit == ProcessLimit::Rlimit).then_some(limits.max_processes),
    };
    #[cfg(not(target_os = "linux"))]
    {
        let _ = workdir;
        Ok((ChildSetup { rlimits, failure_pipe }, Containment::new()))
    }
    #[cfg(target_os = "linux")]
    {
        let mut cgroup = match (&host.cgroup_parent, layers.process_limit) {
            (Some(parent), ProcessLimit::Cgroup) => Some(
                super::cgroup::ExecCgroup::create(parent, limits.max_processes).map_err(|err| {
                    DriverError::Failed(format!(
                        "cannot create the pids cgroup under {}: {err}",
                        parent.display()
                    ))
                })?,
            ),
            _ => None,
        };
        let cgroup_procs = cgroup.as_mut().and_then(super::cgroup::ExecCgroup::take_procs_fd);
        // From here on the cgroup is removed again on every path, errors included.
        let containment = Containment::new(cgroup);
        let landlock_ruleset = if layers.landlock {
            Some(
                super::landlock::prepare_ruleset(layers.landlock_abi, workdir, limits.allow_network)
                    .map_err(|err| DriverError::Failed(format!("cannot prepare the Landlock ruleset: {err}")))?,
            )
        } else {
            None
        };
        let setup = ChildSetup {
            rlimits,
            failure_pipe,
            ipc_namespace: layers.ipc_namespace,
            cgroup_procs,
            no_new_privs: layers.no_new_privs,
            capabilities: host.capability_drop,
            landlock_ruleset,
            #[cfg(all(
                target_os = "linux",
                any(target_arch = "x86_64", target_arch = "aarch64"),
                target_endian = "little"
            ))]
            seccomp_filter: layers
                .seccomp
                .then(|| super::seccomp::build_filter(limits.allow_network)),
        };
        Ok((setup, containment))
    }
}

/// Sets soft and hard limit of `$resource`, never above the current hard limit (which a process without
/// `CAP_SYS_RESOURCE` cannot raise); returns the error from the enclosing function.
macro_rules! set_rlimit {
    ($resource:expr, $soft:expr, $hard:expr) => {{
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit to the stack variable.
        if unsafe { libc::getrlimit($resource, &mut current) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let hard = to_rlim($hard).min(current.rlim_max);
        let limit = libc::rlimit {
            rlim_cur: to_rlim($soft).min(hard),
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the rlimit on the stack.
        if unsafe { libc::setrlimit($resource, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }};
}

/// `value` as `rlim_t`, which is signed on some BSDs; values it cannot hold mean "unlimited".
#[allow(
    clippy::unnecessary_fallible_conversions,
    reason = "rlim_t is i64 on FreeBSD, u64 on Linux"
)]
fn to_rlim(value: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(value).unwrap_or(libc::RLIM_INFINITY)
}

impl ChildSetup {
    /// Applies every layer, in order, in the forked child. Only async-signal-safe syscalls on memory
    /// prepared before the fork: no allocation, no locks. On failure, writes the step's byte to the
    /// failure pipe and returns the error (spawn then fails with it).
    pub(super) fn apply(&self) -> io::Result<()> {
        self.step(Step::NewSession, || {
            // SAFETY: setsid takes no arguments.
            if unsafe { libc::setsid() } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })?;
        #[cfg(target_os = "linux")]
        if self.ipc_namespace {
            self.step(Step::NewIpcNamespace, || {
                // SAFETY: unshare takes flags only.
                if unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })?;
        }
        #[cfg(target_os = "linux")]
        if let Some(procs) = &self.cgroup_procs {
            self.step(Step::JoinCgroup, || super::cgroup::join_in_child(procs.as_raw_fd()))?;
        }
        self.step(Step::Rlimits, || self.set_rlimits())?;
        #[cfg(target_os = "linux")]
        {
            if self.no_new_privs {
                self.step(Step::NoNewPrivs, || {
                    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only; the unused ones must be zero.
                    let ret = unsafe {
                        libc::prctl(
                            libc::PR_SET_NO_NEW_PRIVS,
                            1 as libc::c_ulong,
                            0 as libc::c_ulong,
                            0 as libc::c_ulong,
                            0 as libc::c_ulong,
                        )
                    };
                    if ret != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                })?;
            }
            if let Some(capabilities) = &self.capabilities {
                self.step(Step::DropCapabilities, || capabilities.apply())?;
            }
            if let Some(ruleset) = &self.landlock_ruleset {
                self.step(Step::Landlock, || super::landlock::restrict_self(ruleset.as_raw_fd()))?;
            }
            #[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_endian = "little"))]
            if let Some(filter) = &self.seccomp_filter {
                self.step(Step::Seccomp, || super::seccomp::install(filter))?;
            }
        }
        Ok(())
    }

    /// Runs `action`; on error reports `step` on the failure pipe (one write(2)) and passes the error on.
    fn step(&self, step: Step, action: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        action().inspect_err(|_| {
            let byte = [step as u8];
            // SAFETY: write(2) of one byte from the stack to the pipe's open write end. Its result does not
            // matter: spawn fails with the step's own error either way.
            unsafe {
                libc::write(self.failure_pipe.as_raw_fd(), byte.as_ptr().cast(), 1);
            }
        })
    }

    fn set_rlimits(&self) -> io::Result<()> {
        let limits = &self.rlimits;
        set_rlimit!(
            libc::RLIMIT_CPU,
            limits.cpu_seconds,
            limits.cpu_seconds.saturating_add(1)
        );
        set_rlimit!(libc::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes);
        set_rlimit!(libc::RLIMIT_NOFILE, limits.open_files, limits.open_files);
        set_rlimit!(libc::RLIMIT_AS, limits.address_space_bytes, limits.address_space_bytes);
        // No core files: they would fill the workdir with the memory of a program that just hit a limit.
        set_rlimit!(libc::RLIMIT_CORE, 0, 0);
        if let Some(processes) = limits.processes {
            set_rlimit!(libc::RLIMIT_NPROC, processes, processes);
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::fs::File;

    use super::*;

    /// A setup whose cgroup join must fail: its "cgroup.procs" fd is /dev/null opened read-only.
    fn setup_failing_at_cgroup_join(failure_pipe: PipeWriter) -> ChildSetup {
        let read_only = File::open("/dev/null").unwrap();
        ChildSetup {
            rlimits: Rlimits {
                cpu_seconds: 5,
                file_bytes: 1 << 20,
                open_files: 64,
                address_space_bytes: 1 << 30,
                processes: None,
            },
            failure_pipe,
            ipc_namespace: false,
            cgroup_procs: Some(read_only.into()),
            no_new_privs: false,
            capabilities: None,
            landlock_ruleset: None,
            #[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_endian = "little"))]
            seccomp_filter: None,
        }
    }

    #[tokio::test]
    async fn a_failing_step_fails_spawn_and_is_named() {
        let (reader, writer) = std::io::pipe().unwrap();
        let setup = setup_failing_at_cgroup_join(writer);
        let mut command = tokio::process::Command::new("true");
        // SAFETY: `apply` only makes async-signal-safe syscalls (see `ChildSetup::apply`).
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        let spawned = command.spawn();
        drop(command);
        let Err(err) = spawned else {
            panic!("spawn should have failed");
        };
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
        match crate::exec::spawn_error("true", err, reader) {
            crate::common::DriverError::Failed(message) => {
                assert!(message.contains(Step::JoinCgroup.describe()), "{message}")
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn every_step_byte_maps_back_to_its_step() {
        for byte in 1..=8u8 {
            let step = Step::from_byte(byte).unwrap();
            assert_eq!(step as u8, byte);
        }
        assert_eq!(Step::from_byte(0), None);
        assert_eq!(Step::from_byte(9), None);
    }
}
