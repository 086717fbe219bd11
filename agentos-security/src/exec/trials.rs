//! Containment self-test: real attacks with base-system programs, each checked from the outside afterwards.
//!
//! Every sandboxed process of a trial carries a unique marker, both in the environment
//! (`AGENTOS_EXEC_TRIAL`) and, where a program takes one, in its arguments (a `sleep` duration such as
//! `1000.0012345000700123456789`); after the run, `/proc` is scanned for it: any live process that carries
//! it escaped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ExecLimits, ExecOutcome, ExecRequest, ProcessLimit};
use crate::common::{DriverError, Trial};

/// Name of the environment variable that marks a trial's processes.
const MARKER_VARIABLE: &str = "AGENTOS_EXEC_TRIAL";
/// How long killed processes may take to disappear from `/proc`.
const LEFTOVER_GRACE: Duration = Duration::from_secs(2);

static NEXT_MARKER: AtomicU64 = AtomicU64::new(0);

/// A unique marker that is also a valid `sleep` duration (fixed width, so no marker contains another).
fn new_marker() -> String {
    let number = NEXT_MARKER.fetch_add(1, Ordering::Relaxed) % 10_000;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!("1000.{:07}{number:04}{nanos:09}", std::process::id() % 10_000_000)
}

/// Short limits so all trials together take well under a minute.
fn trial_limits() -> ExecLimits {
    ExecLimits {
        timeout: Duration::from_secs(3),
        cpu_seconds: 1,
        max_file_bytes: 1024 * 1024,
        max_open_files: 64,
        max_processes: 16,
        max_memory_bytes: 256 * 1024 * 1024,
        max_output_bytes: 64 * 1024,
        allow_network: false,
    }
}

/// Runs every trial in a fresh directory under `scratch`.
pub(super) async fn run_all(scratch: &Path) -> Vec<Trial> {
    let base = scratch.join(format!("exec-trials-{}", new_marker()));
    let workdir = base.join("work");
    if let Err(err) = std::fs::create_dir_all(&workdir) {
        return vec![Trial {
            name: "setup".to_string(),
            contained: false,
            detail: format!("cannot create the trial workdir {}: {err}", workdir.display()),
        }];
    }
    let trials = vec![
        fork_bomb(&workdir).await,
        infinite_loop(&workdir).await,
        memory_hog(&workdir).await,
        output_flood(&workdir).await,
        network_access(&workdir).await,
        write_outside_workdir(&workdir, &base).await,
        device_node(&workdir).await,
        raise_rlimit(&workdir).await,
        setsid_escape(&workdir).await,
        sleeper_outlives_timeout(&workdir).await,
        signal_host_process(&workdir).await,
        read_agentos_environment(&workdir).await,
        sysv_shared_memory(&workdir).await,
    ];
    let _ = std::fs::remove_dir_all(&base);
    trials
}

/// One sandboxed run of a trial, with its marker in the environment.
async fn run_marked(
    program: &str,
    args: &[String],
    workdir: &Path,
    limits: &ExecLimits,
    marker: &str,
) -> Result<ExecOutcome, DriverError> {
    let request = ExecRequest {
        program,
        args,
        workdir: Some(workdir),
        writable: true,
        limits,
    };
    super::run_with_env(request, &[(MARKER_VARIABLE, marker)]).await
}

/// Live processes (zombies have neither cmdline nor environment) whose cmdline or environment holds `marker`.
#[cfg(target_os = "linux")]
fn marked_processes(marker: &str) -> Result<Vec<i32>, String> {
    let entries = std::fs::read_dir("/proc").map_err(|err| format!("cannot scan /proc: {err}"))?;
    let own_pid = std::process::id();
    let needle = marker.as_bytes();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        let holds_marker = ["cmdline", "environ"].iter().any(|file| {
            std::fs::read(entry.path().join(file))
                .is_ok_and(|content| content.windows(needle.len()).any(|window| window == needle))
        });
        if holds_marker && let Ok(pid) = i32::try_from(pid) {
            found.push(pid);
        }
    }
    Ok(found)
}

#[cfg(not(target_os = "linux"))]
fn marked_processes(_marker: &str) -> Result<Vec<i32>, String> {
    Err("leftover processes cannot be found without /proc".to_string())
}

/// `None` when no marked process is alive (after a short grace for killed ones), else what is left.
async fn leftovers(marker: &str) -> Option<String> {
    let deadline = tokio::time::Instant::now() + LEFTOVER_GRACE;
    loop {
        match marked_processes(marker) {
            Ok(pids) if pids.is_empty() => return None,
            Ok(pids) if tokio::time::Instant::now() >= deadline => {
                for pid in &pids {
                    // SAFETY: kill(2) on a process that carries this trial's marker: it escaped the sandbox
                    // and must not stay on the host.
                    unsafe {
                        libc::kill(*pid, libc::SIGKILL);
                    }
                }
                return Some(format!("processes survived the run (now killed): {pids:?}"));
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(why) => return Some(why),
        }
    }
}

/// The first of `tools` found on `PATH`.
fn find_tool(tools: &[&'static str]) -> Option<&'static str> {
    let path = std::env::var_os("PATH")?;
    tools
        .iter()
        .copied()
        .find(|tool| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn skipped(name: &str, missing: &str) -> Trial {
    Trial {
        name: name.to_string(),
        contained: false,
        detail: format!("skipped: {missing} not found on PATH; this attack was not tried, so nothing is proven"),
    }
}

/// What a run ended with, for details.
fn describe(result: &Result<ExecOutcome, DriverError>) -> String {
    match result {
        Ok(outcome) => format!(
            "exit {:?}, signal {:?}, limit_hit {:?}, truncated {}, stderr {:?}",
            outcome.exit_code,
            outcome.signal,
            outcome.limit_hit,
            outcome.truncated,
            outcome.stderr.chars().take(200).collect::<String>()
        ),
        Err(err) => format!("error: {err}"),
    }
}

/// Builds the trial: contained iff `held` and nothing marked survived.
async fn verdict(name: &str, marker: &str, held: bool, what: String) -> Trial {
    match leftovers(marker).await {
        None => Trial {
            name: name.to_string(),
            contained: held,
            detail: what,
        },
        Some(left) => Trial {
            name: name.to_string(),
            contained: false,
            detail: format!("{what}; {left}"),
        },
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// A bounded fork loop (200 background sleeps; a real `:(){ :|:& };:` would take the host down if the
/// limit failed): contained iff the process limit refused forks and nothing survived.
async fn fork_bomb(workdir: &Path) -> Trial {
    let name = "fork_bomb";
    let marker = new_marker();
    let limits = trial_limits();
    let script = "i=0; while [ $i -lt 200 ]; do sleep \"$0\" & i=$((i+1)); done; wait";
    let result = run_marked("sh", &strings(&["-c", script, &marker]), workdir, &limits, &marker).await;
    let (held, what) = match &result {
        Ok(outcome) if outcome.layers.process_limit == ProcessLimit::None => (
            false,
            format!("no process limit on this host ({})", outcome.layers.warnings.join("; ")),
        ),
        Ok(outcome) => (
            outcome.limit_hit.as_deref() == Some("processes"),
            format!(
                "process limit {:?} of {}: {}",
                outcome.layers.process_limit,
                limits.max_processes,
                describe(&result)
            ),
        ),
        Err(_) => (false, format!("the process limit did not show: {}", describe(&result))),
    };
    verdict(name, &marker, held, what).await
}

/// A busy loop: contained iff RLIMIT_CPU or the timeout ended it and nothing survived.
async fn infinite_loop(workdir: &Path) -> Trial {
    let name = "infinite_loop";
    let marker = new_marker();
    let result = run_marked(
        "sh",
        &strings(&["-c", "while :; do :; done", &marker]),
        workdir,
        &trial_limits(),
        &marker,
    )
    .await;
    let held = match &result {
        Ok(outcome) => outcome.limit_hit.as_deref() == Some("cpu"),
        Err(DriverError::Timeout(_)) => true,
        Err(_) => false,
    };
    let what = describe(&result);
    verdict(name, &marker, held, what).await
}

/// Buffers 2 GB in `tail` (a line without newline): contained iff RLIMIT_AS made it fail.
async fn memory_hog(workdir: &Path) -> Trial {
    let name = "memory_hog";
    let marker = new_marker();
    let limits = trial_limits();
    let script = "head -c 2000000000 /dev/zero | tail -n 1 >/dev/null";
    let result = run_marked("sh", &strings(&["-c", script, &marker]), workdir, &limits, &marker).await;
    let held = matches!(&result, Ok(outcome) if outcome.limit_hit.as_deref() == Some("memory"));
    let what = format!("RLIMIT_AS {} bytes: {}", limits.max_memory_bytes, describe(&result));
    verdict(name, &marker, held, what).await
}

/// 50 MB of `yes`: contained iff the kept output is capped and flagged truncated.
async fn output_flood(workdir: &Path) -> Trial {
    let name = "output_flood";
    let marker = new_marker();
    let limits = trial_limits();
    let script = "yes \"$0\" | head -c 50000000";
    let result = run_marked("sh", &strings(&["-c", script, &marker]), workdir, &limits, &marker).await;
    let (held, what) = match &result {
        Ok(outcome) => (
            outcome.truncated && outcome.stdout.len() <= limits.max_output_bytes,
            format!(
                "kept {} of 50000000 bytes (cap {}), {}",
                outcome.stdout.len(),
                limits.max_output_bytes,
                describe(&result)
            ),
        ),
        Err(_) => (false, describe(&result)),
    };
    verdict(name, &marker, held, what).await
}

/// A TCP connection to a listener this test opens on 127.0.0.1: contained iff the listener saw nothing.
async fn network_access(workdir: &Path) -> Trial {
    let name = "network_access";
    let Some(tool) = find_tool(&["bash", "python3"]) else {
        return skipped(name, "bash or python3");
    };
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(err) => {
            return Trial {
                name: name.to_string(),
                contained: false,
                detail: format!("cannot listen: {err}"),
            };
        }
    };
    let port = match listener.local_addr() {
        Ok(address) => address.port().to_string(),
        Err(err) => {
            return Trial {
                name: name.to_string(),
                contained: false,
                detail: format!("no local address: {err}"),
            };
        }
    };
    let marker = new_marker();
    let args = if tool == "bash" {
        strings(&["-c", "echo x > /dev/tcp/127.0.0.1/$1", &marker, &port])
    } else {
        strings(&[
            "-c",
            "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2)",
            &port,
            &marker,
        ])
    };
    let result = run_marked(tool, &args, workdir, &trial_limits(), &marker).await;
    // A connection the program made is already queued on the listener by the time the run ended.
    let connected = tokio::time::timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_ok();
    let what = format!(
        "{tool} to 127.0.0.1:{port}: listener connected: {connected}; {}",
        describe(&result)
    );
    verdict(name, &marker, !connected, what).await
}

/// `echo x > <outside the workdir>`: contained iff the file does not exist.
async fn write_outside_workdir(workdir: &Path, base: &Path) -> Trial {
    let name = "write_outside_workdir";
    let marker = new_marker();
    let target: PathBuf = base.join("outside.txt");
    let target_arg = target.to_string_lossy().into_owned();
    let result = run_marked(
        "sh",
        &strings(&["-c", "echo x > \"$1\"", &marker, &target_arg]),
        workdir,
        &trial_limits(),
        &marker,
    )
    .await;
    let written = target.exists();
    let what = format!(
        "{} exists afterwards: {written}; {}",
        target.display(),
        describe(&result)
    );
    verdict(name, &marker, !written, what).await
}

/// `mknod` of a block device inside the workdir (raw disk access as root): contained iff it was refused.
async fn device_node(workdir: &Path) -> Trial {
    let name = "device_node_in_workdir";
    if find_tool(&["mknod"]).is_none() {
        return skipped(name, "mknod");
    }
    let marker = new_marker();
    let node = workdir.join("loop0");
    let node_arg = node.to_string_lossy().into_owned();
    let result = run_marked(
        "sh",
        &strings(&["-c", "mknod \"$1\" b 7 0", &marker, &node_arg]),
        workdir,
        &trial_limits(),
        &marker,
    )
    .await;
    let created = node.symlink_metadata().is_ok();
    let what = format!("block device node created: {created}; {}", describe(&result));
    verdict(name, &marker, !created, what).await
}

/// `ulimit -n 4096` above the hard limit: contained iff the shell could not raise it.
async fn raise_rlimit(workdir: &Path) -> Trial {
    let name = "raise_rlimit";
    let marker = new_marker();
    let limits = trial_limits();
    let result = run_marked(
        "sh",
        &strings(&["-c", "ulimit -n 4096 && ulimit -n", &marker]),
        workdir,
        &limits,
        &marker,
    )
    .await;
    let held = matches!(&result, Ok(outcome) if outcome.exit_code != Some(0) && !outcome.stdout.contains("4096"));
    let what = format!("hard RLIMIT_NOFILE {}: {}", limits.max_open_files, describe(&result));
    verdict(name, &marker, held, what).await
}

/// `setsid -w sleep`: a new session would leave the process group the sandbox kills; `-w` keeps the
/// sandbox's leader waiting, so an escaped sleeper is still there when the timeout kills the group (without
/// it, the group kill can win the race against the forked child's setsid and hide an escape). Contained iff
/// the run ended (refused or timed out) and nothing survived it.
async fn setsid_escape(workdir: &Path) -> Trial {
    let name = "setsid_escape";
    if find_tool(&["setsid"]).is_none() {
        return skipped(name, "setsid");
    }
    let marker = new_marker();
    let result = run_marked(
        "setsid",
        &strings(&["-w", "sleep", &marker]),
        workdir,
        &trial_limits(),
        &marker,
    )
    .await;
    // A usage error would prove nothing: the attempt must have been refused or have run into the timeout.
    let held = match &result {
        Ok(outcome) => outcome.stderr.contains("Operation not permitted"),
        Err(DriverError::Timeout(_)) => true,
        Err(_) => false,
    };
    let what = describe(&result);
    verdict(name, &marker, held, what).await
}

/// `sleep & sleep` past the timeout: contained iff the run timed out and no sleeper survived.
async fn sleeper_outlives_timeout(workdir: &Path) -> Trial {
    let name = "sleeper_outlives_timeout";
    let marker = new_marker();
    let limits = ExecLimits {
        timeout: Duration::from_secs(2),
        ..trial_limits()
    };
    let result = run_marked(
        "sh",
        &strings(&["-c", "sleep \"$0\" & sleep \"$0\"", &marker]),
        workdir,
        &limits,
        &marker,
    )
    .await;
    let held = matches!(result, Err(DriverError::Timeout(_)));
    let what = describe(&result);
    verdict(name, &marker, held, what).await
}

/// `kill -KILL <host process>` (the sandbox runs as the same uid): contained iff the host process lives.
async fn signal_host_process(workdir: &Path) -> Trial {
    let name = "signal_host_process";
    let host_marker = new_marker();
    let mut host_process = match tokio::process::Command::new("sleep")
        .arg(&host_marker)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            return Trial {
                name: name.to_string(),
                contained: false,
                detail: format!("cannot start the host process: {err}"),
            };
        }
    };
    let Some(host_pid) = host_process.id() else {
        return Trial {
            name: name.to_string(),
            contained: false,
            detail: "host process has no pid".to_string(),
        };
    };
    let marker = new_marker();
    let result = run_marked(
        "sh",
        &strings(&["-c", "kill -KILL \"$1\"", &marker, &host_pid.to_string()]),
        workdir,
        &trial_limits(),
        &marker,
    )
    .await;
    // Give a delivered SIGKILL time to take effect before looking.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alive = matches!(host_process.try_wait(), Ok(None));
    let _ = host_process.start_kill();
    let _ = host_process.wait().await;
    let what = format!(
        "host process {host_pid} alive afterwards: {alive}; {}",
        describe(&result)
    );
    verdict(name, &marker, alive, what).await
}

/// The sandbox reads agentos' own environment (API keys...) through `/proc/<pid>/environ`: contained iff
/// it got nothing.
async fn read_agentos_environment(workdir: &Path) -> Trial {
    let name = "read_agentos_environment";
    let marker = new_marker();
    let environ = format!("/proc/{}/environ", std::process::id());
    let result = run_marked(
        "sh",
        &strings(&["-c", "cat \"$1\"", &marker, &environ]),
        workdir,
        &trial_limits(),
        &marker,
    )
    .await;
    let held = matches!(&result, Ok(outcome) if outcome.exit_code != Some(0) && outcome.stdout.is_empty());
    let what = format!("cat {environ}: {}", describe(&result));
    verdict(name, &marker, held, what).await
}

/// A System V shared memory segment with a unique key: contained iff the host's IPC namespace does not have
/// it after the run (a leftover one is removed).
async fn sysv_shared_memory(workdir: &Path) -> Trial {
    let name = "sysv_shared_memory_outlives_run";
    if find_tool(&["python3"]).is_none() {
        return skipped(name, "python3");
    }
    let marker = new_marker();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let key = i32::try_from((u64::from(std::process::id()) * 7919 + u64::from(nanos)) % 0x7fff_0000 + 1).unwrap_or(1);
    let code = "import ctypes, sys\n\
                libc = ctypes.CDLL(None, use_errno=True)\n\
                shmid = libc.shmget(int(sys.argv[1]), 1 << 20, 0o1600)\n\
                print(shmid if shmid >= 0 else 'errno %d' % ctypes.get_errno())\n";
    let result = run_marked(
        "python3",
        &strings(&["-c", code, &key.to_string(), &marker]),
        workdir,
        &trial_limits(),
        &marker,
    )
    .await;
    let created = matches!(&result, Ok(outcome) if outcome.stdout.trim().parse::<i32>().is_ok_and(|id| id >= 0));
    let leftover = host_shared_memory_with_key(key);
    if let Some(shmid) = leftover {
        // SAFETY: IPC_RMID on the segment this trial created; the buffer argument is unused for IPC_RMID.
        unsafe {
            libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
    let what = format!(
        "segment created inside: {created}; on the host afterwards: {}; {}",
        leftover.is_some(),
        describe(&result)
    );
    verdict(name, &marker, created && leftover.is_none(), what).await
}

/// The id of the host's System V shared memory segment with `key`, from `/proc/sysvipc/shm`.
fn host_shared_memory_with_key(key: i32) -> Option<i32> {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").ok()?;
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let found_key = fields.next()?.parse::<i64>().ok()?;
        let shmid = fields.next()?.parse::<i32>().ok()?;
        (found_key == i64::from(key)).then_some(shmid)
    })
}
