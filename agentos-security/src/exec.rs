//! Sandboxed `exec` driver: runs one program (no shell is added) so that nothing it does may harm the host.
//!
//! Everything that allocates is prepared in the parent before spawning; the child, between fork and exec,
//! only makes async-signal-safe syscalls (`child::ChildSetup::apply`). Layers applied in the child, in
//! this order:
//!
//! 1. `setsid()`: a new session, hence its own process group (pgid = pid) and no controlling terminal, so
//!    the program can neither read from nor inject into the operator's terminal. The timeout and every
//!    other ending kill this whole group.
//! 2. A private IPC namespace (as root): System V shared memory is neither bounded by RLIMIT_AS once detached
//!    nor freed when its creator exits, so without this a program could leave host memory behind.
//! 3. The pids cgroup (`<pids mount>/agentos/exec-<pid>-<n>`, `pids.max = max_processes`): the child joins
//!    it itself by writing `0` to the `cgroup.procs` fd the parent opened. Joining before exec means no
//!    process of the sandbox ever runs outside the cgroup; had the parent written the child's pid after
//!    spawn, anything the program forked in between would stay outside (cgroup membership is inherited at
//!    fork, moving a process later does not move its children).
//! 4. rlimits: CPU (soft = `cpu_seconds`, hard one second later), FSIZE, NOFILE, AS, CORE = 0, and NPROC
//!    only when no pids cgroup is available (it counts every process of the real uid and is not enforced
//!    at all for uid 0).
//! 5. `PR_SET_NO_NEW_PRIVS`.
//! 6. Every capability is dropped (bounding set where the parent holds `CAP_SETPCAP`, ambient, effective,
//!    permitted, inheritable): agentos runs as root, and a root child without capabilities cannot mount,
//!    load modules, reboot, set the clock, `mknod`, override file permissions or ptrace the host.
//! 7. Landlock (ABI detected at run time): read + execute beneath `/`; every right except creating
//!    character/block devices and device ioctls beneath the workdir; read + write on `/dev/null`; nothing
//!    else writable, `/tmp` included (`TMPDIR` and `HOME` point at the workdir instead). With ABI ≥ 4 and
//!    no network, TCP bind/connect are denied as well; with ABI ≥ 6, signals and abstract unix sockets are
//!    scoped to the sandbox, so the program cannot signal host processes even though it runs as uid 0.
//! 8. seccomp, last (module `seccomp`): wrong architecture → kill; `socket()` for any family but `AF_UNIX`
//!    → `EACCES` unless `allow_network`; `setsid`/`setpgid` → `EPERM` (the group stays killable);
//!    io_uring (would bypass the socket filter), `unshare`/`setns`/`clone` with namespace flags/`clone3`,
//!    and `kill(-1, …)` are refused too; everything else is allowed.
//!
//! A layer the host lacks is skipped and named in [`Layers::warnings`] (and logged once); a layer the host
//! supports that fails for one run makes that run fail (`DriverError::Failed`), never run weaker.
//! The child gets a cleared environment: `PATH` (the parent's, so lookup matches), `LANG` if set, and
//! `HOME`/`TMPDIR` = the workdir; secrets in agentos' environment are not passed on.
//!
//! Not enforced, even with every layer (verified on Linux 6.18, Landlock ABI 7, running as root):
//! - connecting to a pathname `AF_UNIX` socket anywhere (e.g. a root-owned daemon socket): Landlock up to
//!   ABI 7 does not mediate it and seccomp cannot read the address;
//! - `chmod`/`utime`/user xattrs on root-owned files outside the workdir (Landlock does not mediate file
//!   metadata and uid 0 owns them; `chown` needs `CAP_CHOWN`, which is dropped);
//! - reading: everything uid 0 may read beneath `/` is readable (by design), and can end up in the output;
//! - total memory and disk: RLIMIT_AS is per process (up to `max_processes` × `max_memory_bytes`), and the
//!   workdir's size is bounded only per file (RLIMIT_FSIZE);
//! - `/dev/shm` is not writable, so POSIX semaphores (Python multiprocessing locks) fail inside;
//! - if agentos itself dies without unwinding, its `exec-*` cgroups and their processes are left behind.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{DriverError, Trial};

mod child;
mod containment;
mod output;
mod probe;
mod trials;

#[cfg(target_os = "linux")]
mod caps;
#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_endian = "little"
))]
mod seccomp;

// The tests check the kernel's view of the child through /proc and Linux-only syscalls.
#[cfg(all(test, target_os = "linux"))]
mod tests;

/// Resource limits and permissions of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLimits {
    /// Wall clock; when it passes, the whole process group (and cgroup) is killed.
    pub timeout: Duration,
    /// `RLIMIT_CPU` (soft limit; the hard limit, one second later, sends `SIGKILL`).
    pub cpu_seconds: u64,
    /// `RLIMIT_FSIZE`.
    pub max_file_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// `pids.max` of the run's pids cgroup where available (counts threads too), `RLIMIT_NPROC` otherwise.
    pub max_processes: u64,
    /// `RLIMIT_AS` of each process.
    pub max_memory_bytes: u64,
    /// Bytes kept of each of stdout and stderr; the rest is read and dropped.
    pub max_output_bytes: usize,
    /// `false`: seccomp denies `socket()` for every family but `AF_UNIX` (and Landlock denies TCP).
    pub allow_network: bool,
}

impl Default for ExecLimits {
    /// 10 s wall clock, 10 s CPU, 16 MiB files, 64 open files, 32 processes, 1 GiB memory, 64 KiB output,
    /// no network.
    fn default() -> Self {
        ExecLimits {
            timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            max_file_bytes: 16 * 1024 * 1024,
            max_open_files: 64,
            max_processes: 32,
            max_memory_bytes: 1024 * 1024 * 1024,
            max_output_bytes: 64 * 1024,
            allow_network: false,
        }
    }
}

/// One program to run: looked up on `PATH` unless it contains a `/`; no shell is involved.
#[derive(Debug, Clone, Copy)]
pub struct ExecRequest<'a> {
    /// Program name or path, as the model named it.
    pub program: &'a str,
    /// Arguments, passed as they are.
    pub args: &'a [String],
    /// Working directory and the only writable tree; `None` keeps the current directory and makes nothing
    /// writable (except `/dev/null`).
    pub workdir: Option<&'a Path>,
    /// Whether the program may write beneath `workdir` (Landlock); `false` leaves the whole
    /// file system read-only to it, the workdir included.
    pub writable: bool,
    /// Limits of this run.
    pub limits: &'a ExecLimits,
}

/// How the number of processes of a run is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ProcessLimit {
    /// A pids cgroup per run with `pids.max`.
    Cgroup,
    /// `RLIMIT_NPROC`, which counts every process of the real uid, not only this run's.
    Rlimit,
    /// Not bounded (only the wall-clock timeout ends a fork loop).
    None,
}

/// Which isolation layers are enforced; `warnings` say what is missing and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layers {
    /// CPU, file size, open files, address space and core rlimits.
    pub rlimits: bool,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// The seccomp filter.
    pub seccomp: bool,
    /// Landlock filesystem rules.
    pub landlock: bool,
    /// Landlock ABI version used (0 when Landlock is not enforced).
    pub landlock_abi: u32,
    /// All capabilities dropped before exec.
    pub capabilities_dropped: bool,
    /// A private IPC namespace: System V IPC objects and POSIX message queues the program creates die with it.
    pub ipc_namespace: bool,
    /// How the number of processes is bounded.
    pub process_limit: ProcessLimit,
    /// What is missing and why, one sentence each.
    pub warnings: Vec<String>,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecOutcome {
    /// Exit code, when the program exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, when a signal ended it.
    pub signal: Option<i32>,
    /// Kept stdout (at most `max_output_bytes`, lossily decoded as UTF-8).
    pub stdout: String,
    /// Kept stderr (at most `max_output_bytes`, lossily decoded as UTF-8).
    pub stderr: String,
    /// Whether stdout or stderr had more bytes than were kept.
    pub truncated: bool,
    /// Layers enforced for this run.
    pub layers: Layers,
    /// The limit the ending shows was hit: `"cpu"`, `"file size"`, `"memory"`, `"processes"`, `"open files"`.
    pub limit_hit: Option<String>,
}

/// What this host can enforce. Probed once per process (the first call also prepares the `agentos` pids
/// cgroup); a missing layer is logged once with `tracing::warn!`.
pub fn probe() -> Layers {
    probe::host().layers.clone()
}

/// Runs `request.program` inside every available layer, waits for it (at most `limits.timeout`), then kills
/// its whole process group and cgroup, whatever the ending (exit, timeout, or this future being dropped).
/// Errors: `Denied` for an invalid request, `NotFound` for a missing program or workdir, `Timeout(ms)` after
/// the timeout killed everything, `Failed` when sandbox setup failed.
pub async fn run(request: ExecRequest<'_>) -> Result<ExecOutcome, DriverError> {
    run_with_env(request, &[]).await
}

/// Runs a fixed set of attacks with real base-system programs in a fresh directory under `scratch` and says
/// for each whether the sandbox held.
pub async fn containment_trials(scratch: &Path) -> Vec<Trial> {
    trials::run_all(scratch).await
}

/// How long output readers may go on after the sandbox was killed (a pipe kept open by a process that
/// escaped every layer must not hang the call).
const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long the killed leader may take to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// [`run`], with extra environment variables for the child (the trials mark their processes this way).
async fn run_with_env(request: ExecRequest<'_>, extra_env: &[(&str, &str)]) -> Result<ExecOutcome, DriverError> {
    validate(&request)?;
    let limits = request.limits;
    if let Some(dir) = request.workdir
        && !dir.is_dir()
    {
        return Err(DriverError::NotFound(format!(
            "workdir {} is not an existing directory",
            dir.display()
        )));
    }
    let host = probe::host();
    let mut layers = host.layers.clone();
    if request.workdir.is_none() && layers.landlock {
        layers
            .warnings
            .push("no workdir given: nothing is writable except /dev/null".to_string());
    }

    let (failure_reader, failure_writer) =
        std::io::pipe().map_err(|err| DriverError::Io(format!("cannot create the setup-failure pipe: {err}")))?;
    let writable = request.workdir.filter(|_| request.writable);
    let (setup, mut containment) = child::prepare(host, limits, writable, failure_writer)?;

    let mut command = tokio::process::Command::new(request.program);
    command
        .args(request.args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(lang) = std::env::var_os("LANG") {
        command.env("LANG", lang);
    }
    if let Some(dir) = request.workdir {
        command.current_dir(dir).env("HOME", dir).env("TMPDIR", dir);
    }
    for (name, value) in extra_env {
        command.env(name, value);
    }
    // SAFETY: `ChildSetup::apply` runs between fork and exec and only makes async-signal-safe syscalls
    // (setsid, unshare, write, getrlimit/setrlimit, prctl, capset, landlock_restrict_self) on data prepared
    // before the fork; it neither allocates nor takes locks.
    unsafe {
        command.pre_exec(move || setup.apply());
    }
    let spawned = command.spawn();
    // Dropping the command drops the closure and with it the parent's copy of the failure pipe's write end,
    // so the read below sees end-of-file once the child is gone.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return Err(spawn_error(request.program, err, failure_reader)),
    };
    drop(failure_reader);
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        return Err(DriverError::Failed(format!(
            "`{}` started but has no process id",
            request.program
        )));
    };
    // setsid() in the child made its pid the id of its process group.
    containment.set_process_group(pid);

    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(DriverError::Failed("the child's output pipes are missing".to_string()));
    };
    let mut stdout_reader = tokio::spawn(output::read_capped(stdout, limits.max_output_bytes));
    let mut stderr_reader = tokio::spawn(output::read_capped(stderr, limits.max_output_bytes));

    let waited = tokio::time::timeout(limits.timeout, child.wait()).await;
    // Whatever happened, nothing of the group may outlive the leader.
    containment.kill_process_group();
    let status = match waited {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(err)) => Err(DriverError::Io(format!(
            "waiting for `{}` failed: {err}",
            request.program
        ))),
        Err(_elapsed) => {
            // The group kill above already hit the leader; reap it so it does not linger as a zombie.
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
            Err(DriverError::Timeout(
                u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            ))
        }
    };
    let process_limit_hit = containment.process_limit_hit();
    // Killing the cgroup and removing its directory may wait (briefly) for dying processes; the blocking
    // pool keeps that off the async workers, and finishes even if this future is dropped meanwhile.
    match tokio::task::spawn_blocking(move || containment.finish()).await {
        Ok(cleanup_warnings) => layers.warnings.extend(cleanup_warnings),
        Err(err) => layers.warnings.push(format!("cleanup task failed: {err}")),
    }
    let status = status?;

    let (stdout, stdout_truncated) =
        output::collect(&mut stdout_reader, OUTPUT_DRAIN_GRACE, &mut layers.warnings).await;
    let (stderr, stderr_truncated) =
        output::collect(&mut stderr_reader, OUTPUT_DRAIN_GRACE, &mut layers.warnings).await;
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();

    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code();
    let signal = status.signal();
    let limit_hit = output::limit_hit(exit_code, signal, &stderr, process_limit_hit).map(str::to_string);
    Ok(ExecOutcome {
        exit_code,
        signal,
        stdout,
        stderr,
        truncated: stdout_truncated || stderr_truncated,
        layers,
        limit_hit,
    })
}

/// Refuses requests that cannot be run as asked.
fn validate(request: &ExecRequest<'_>) -> Result<(), DriverError> {
    if request.program.is_empty() {
        return Err(DriverError::Denied("the program name is empty".to_string()));
    }
    if request.program.contains('\0') || request.args.iter().any(|arg| arg.contains('\0')) {
        return Err(DriverError::Denied(
            "the program name or an argument contains a NUL byte".to_string(),
        ));
    }
    let limits = request.limits;
    if limits.timeout.is_zero() {
        return Err(DriverError::Denied(
            "limits.timeout must be greater than zero".to_string(),
        ));
    }
    for (name, value) in [
        ("cpu_seconds", limits.cpu_seconds),
        ("max_file_bytes", limits.max_file_bytes),
        ("max_open_files", limits.max_open_files),
        ("max_processes", limits.max_processes),
        ("max_memory_bytes", limits.max_memory_bytes),
    ] {
        if value == 0 {
            return Err(DriverError::Denied(format!("limits.{name} must be at least 1")));
        }
    }
    Ok(())
}

/// Turns a failed spawn into a driver error, naming the sandbox step when the child reported one.
fn spawn_error(program: &str, err: std::io::Error, mut failure_reader: std::io::PipeReader) -> DriverError {
    let mut step = [0u8; 1];
    // The child has exited (spawn waits for it when exec did not happen) and the parent's write end is
    // closed, so this read returns at once: one byte if a sandbox step failed, end-of-file otherwise.
    if let Ok(1) = failure_reader.read(&mut step)
        && let Some(step) = child::Step::from_byte(step[0])
    {
        return DriverError::Failed(format!(
            "sandbox setup failed in the child before `{program}` started, at {}: {err}",
            step.describe()
        ));
    }
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            DriverError::NotFound(format!("program `{program}` was not found on PATH (or is not a file)"))
        }
        std::io::ErrorKind::PermissionDenied => DriverError::Denied(format!("`{program}` cannot be executed: {err}")),
        _ => DriverError::Failed(format!("could not start `{program}`: {err}")),
    }
}
