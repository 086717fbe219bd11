//! What the host can enforce, probed once per process.

#[cfg(target_os = "linux")]
use std::path::PathBuf;
use std::sync::OnceLock;

use super::{Layers, ProcessLimit};

/// The host's layers plus what the parent needs to prepare them.
pub(super) struct Host {
    pub(super) layers: Layers,
    /// The `agentos` pids cgroup, parent of every run's cgroup.
    #[cfg(target_os = "linux")]
    pub(super) cgroup_parent: Option<PathBuf>,
    #[cfg(target_os = "linux")]
    pub(super) capability_drop: Option<super::caps::CapabilityDrop>,
}

static HOST: OnceLock<Host> = OnceLock::new();

/// The host, probed on first use; each warning is logged once then.
pub(super) fn host() -> &'static Host {
    HOST.get_or_init(|| {
        let host = probe_host();
        for warning in &host.layers.warnings {
            tracing::warn!("exec sandbox: {warning}");
        }
        host
    })
}

/// Whether RLIMIT_NPROC would be enforced: the kernel exempts processes whose real uid is 0.
fn nproc_rlimit_enforced() -> bool {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() != 0 }
}

/// The process limit to use when there is no pids cgroup, with the warning that says so.
fn process_limit_without_cgroup(why: &str) -> (ProcessLimit, String) {
    if nproc_rlimit_enforced() {
        (
            ProcessLimit::Rlimit,
            format!(
                "{why}; falling back to RLIMIT_NPROC, which counts every process of this uid, not only the sandbox's"
            ),
        )
    } else {
        (
            ProcessLimit::None,
            format!(
                "{why}, and RLIMIT_NPROC is not enforced for uid 0: the number of processes is not limited (only \
                 the wall-clock timeout ends a fork loop)"
            ),
        )
    }
}

#[cfg(target_os = "linux")]
fn probe_host() -> Host {
    let mut warnings = Vec::new();

    // SAFETY: PR_GET_NO_NEW_PRIVS takes integers only.
    let no_new_privs = unsafe {
        libc::prctl(
            libc::PR_GET_NO_NEW_PRIVS,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } >= 0;
    if !no_new_privs {
        warnings.push(format!(
            "PR_SET_NO_NEW_PRIVS is not supported (Linux < 3.5): {}; Landlock and seccomp need it",
            std::io::Error::last_os_error()
        ));
    }

    let capability_drop = match super::caps::probe() {
        Ok(drop) => Some(drop),
        Err(why) => {
            warnings.push(why);
            None
        }
    };

    let (landlock, landlock_abi) = if !no_new_privs {
        (false, 0)
    } else {
        match super::landlock::abi_version() {
            Ok(abi) => {
                warnings.extend(super::landlock::abi_warnings(abi));
                (true, abi)
            }
            Err(why) => {
                warnings.push(format!(
                    "{why}: the filesystem is not restricted beyond file permissions"
                ));
                (false, 0)
            }
        }
    };

    let seccomp = no_new_privs && probe_seccomp(&mut warnings);

    let ipc_namespace = match probe_ipc_namespace() {
        Ok(()) => true,
        Err(why) => {
            warnings.push(format!(
                "no private IPC namespace ({why}): System V shared memory and message queues the program creates \
                 outlive it"
            ));
            false
        }
    };

    let (process_limit, cgroup_parent) = match super::cgroup::prepare_parent() {
        Ok(parent) => (ProcessLimit::Cgroup, Some(parent)),
        Err(why) => {
            let (limit, warning) = process_limit_without_cgroup(&format!("no pids cgroup ({why})"));
            warnings.push(warning);
            (limit, None)
        }
    };

    Host {
        layers: Layers {
            rlimits: true,
            no_new_privs,
            seccomp,
            landlock,
            landlock_abi,
            capabilities_dropped: capability_drop.is_some(),
            ipc_namespace,
            process_limit,
            warnings,
        },
        cgroup_parent,
        capability_drop,
    }
}

/// Whether a child may unshare its IPC namespace (it needs CAP_SYS_ADMIN, and container seccomp profiles
/// often refuse unshare): tried in a forked child, which then exits.
#[cfg(target_os = "linux")]
fn probe_ipc_namespace() -> Result<(), String> {
    // SAFETY: the forked child only calls unshare(2) and _exit(2), both async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork failed: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: unshare takes flags only; reading errno does not allocate; _exit ends the child without
        // running anything of the parent's.
        unsafe {
            let code = if libc::unshare(libc::CLONE_NEWIPC) == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(255)
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status of our own child into `status`.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("waitpid failed: {err}"));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(format!(
            "unshare(CLONE_NEWIPC) failed: {}",
            std::io::Error::from_raw_os_error(libc::WEXITSTATUS(status))
        ))
    } else {
        Err(format!("the unshare test child ended with wait status {status}"))
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_endian = "little"
))]
fn probe_seccomp(warnings: &mut Vec<String>) -> bool {
    match super::seccomp::probe() {
        Ok(()) => true,
        Err(why) => {
            warnings.push(format!("{why}: the network and setsid/setpgid are not denied"));
            false
        }
    }
}

#[cfg(all(
    target_os = "linux",
    not(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_endian = "little"))
))]
fn probe_seccomp(warnings: &mut Vec<String>) -> bool {
    warnings.push(format!(
        "seccomp filter not built for {}: the network and setsid/setpgid are not denied",
        std::env::consts::ARCH
    ));
    false
}

#[cfg(not(target_os = "linux"))]
fn probe_host() -> Host {
    let os = std::env::consts::OS;
    let mut warnings = vec![
        format!(
            "no_new_privs, capability dropping, IPC namespaces, Landlock and seccomp are Linux-only; on {os} the \
             program runs with rlimits and its own process group only"
        ),
        "without seccomp the network is not denied and the program may leave its process group".to_string(),
    ];
    let (process_limit, warning) = process_limit_without_cgroup(&format!("no pids cgroup on {os}"));
    warnings.push(warning);
    Host {
        layers: Layers {
            rlimits: true,
            no_new_privs: false,
            seccomp: false,
            landlock: false,
            landlock_abi: 0,
            capabilities_dropped: false,
            ipc_namespace: false,
            process_limit,
            warnings,
        },
    }
}
