use std::path::Path;
use std::time::Duration;

use super::*;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

async fn run_in(workdir: &Path, program: &str, args: &[&str], limits: &ExecLimits) -> Result<ExecOutcome, DriverError> {
    let args = strings(args);
    run(ExecRequest {
        program,
        args: &args,
        workdir: Some(workdir),
        writable: true,
        limits,
    })
    .await
}

async fn run_sh(workdir: &Path, script: &str, limits: &ExecLimits) -> ExecOutcome {
    match run_in(workdir, "sh", &["-c", script], limits).await {
        Ok(outcome) => outcome,
        Err(err) => panic!("sh -c {script:?} failed to run: {err}"),
    }
}

fn short_limits() -> ExecLimits {
    ExecLimits {
        timeout: Duration::from_secs(5),
        ..ExecLimits::default()
    }
}

/// The value of `field` in /proc/<pid>/status text.
fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':').map(str::trim))
}

#[test]
fn default_limits_are_the_documented_ones() {
    let limits = ExecLimits::default();
    assert_eq!(limits.timeout, Duration::from_secs(10));
    assert_eq!(limits.cpu_seconds, 10);
    assert_eq!(limits.max_file_bytes, 16 * 1024 * 1024);
    assert_eq!(limits.max_open_files, 64);
    assert_eq!(limits.max_processes, 32);
    assert_eq!(limits.max_memory_bytes, 1024 * 1024 * 1024);
    assert_eq!(limits.max_output_bytes, 64 * 1024);
    assert!(!limits.allow_network);
}

#[tokio::test]
async fn runs_a_program_and_captures_both_streams() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_sh(dir.path(), "echo out; echo err >&2; exit 3", &short_limits()).await;
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.signal, None);
    assert_eq!(outcome.stdout, "out\n");
    assert_eq!(outcome.stderr, "err\n");
    assert!(!outcome.truncated);
    assert_eq!(outcome.limit_hit, None);
    assert_eq!(outcome.layers.process_limit, probe().process_limit);
}

#[tokio::test]
async fn invalid_requests_are_refused_before_spawning() {
    let dir = tempfile::tempdir().unwrap();
    let limits = short_limits();
    let empty = run_in(dir.path(), "", &[], &limits).await;
    assert!(matches!(empty, Err(DriverError::Denied(_))), "{empty:?}");
    let nul = run_in(dir.path(), "echo", &["a\0b"], &limits).await;
    assert!(matches!(nul, Err(DriverError::Denied(_))), "{nul:?}");
    let zero = ExecLimits {
        max_processes: 0,
        ..short_limits()
    };
    let zero_processes = run_in(dir.path(), "true", &[], &zero).await;
    assert!(matches!(zero_processes, Err(DriverError::Denied(ref why)) if why.contains("max_processes")));
    let missing = run_in(dir.path(), "agentos-no-such-program-xyz", &[], &limits).await;
    assert!(matches!(missing, Err(DriverError::NotFound(_))), "{missing:?}");
    let gone = dir.path().join("gone");
    let args: Vec<String> = Vec::new();
    let no_workdir = run(ExecRequest {
        program: "true",
        args: &args,
        workdir: Some(&gone),
        writable: true,
        limits: &limits,
    })
    .await;
    assert!(matches!(no_workdir, Err(DriverError::NotFound(_))), "{no_workdir:?}");
}

#[tokio::test]
async fn rlimits_are_visible_to_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ExecLimits {
        cpu_seconds: 7,
        max_open_files: 37,
        max_file_bytes: 512 * 1000,
        max_memory_bytes: 300 * 1024 * 1024,
        ..short_limits()
    };
    // dash and bash print -f in 512-byte blocks and -v in KiB.
    let outcome = run_sh(
        dir.path(),
        "ulimit -n; ulimit -t; ulimit -f; ulimit -v; ulimit -c; ulimit -H -n",
        &limits,
    )
    .await;
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(
        lines,
        ["37", "7", "1000", "307200", "0", "37"],
        "stderr: {}",
        outcome.stderr
    );
}

#[tokio::test]
async fn file_size_limit_stops_a_large_write() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ExecLimits {
        max_file_bytes: 64 * 1024,
        ..short_limits()
    };
    let outcome = run_sh(dir.path(), "head -c 1000000 /dev/zero > big", &limits).await;
    assert_eq!(outcome.limit_hit.as_deref(), Some("file size"), "{outcome:?}");
    let written = std::fs::metadata(dir.path().join("big")).unwrap().len();
    assert!(written <= 64 * 1024, "wrote {written} bytes");
}

#[tokio::test]
async fn cpu_limit_ends_a_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ExecLimits {
        cpu_seconds: 1,
        timeout: Duration::from_secs(30),
        ..ExecLimits::default()
    };
    let outcome = run_sh(dir.path(), "while :; do :; done", &limits).await;
    assert_eq!(outcome.signal, Some(libc::SIGXCPU), "{outcome:?}");
    assert_eq!(outcome.limit_hit.as_deref(), Some("cpu"));
}

#[tokio::test]
async fn output_is_capped_per_stream_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ExecLimits {
        max_output_bytes: 1000,
        ..short_limits()
    };
    let outcome = run_sh(
        dir.path(),
        "head -c 300000 /dev/zero | tr '\\0' a; echo small >&2",
        &limits,
    )
    .await;
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.stdout, "a".repeat(1000));
    assert_eq!(outcome.stderr, "small\n");
    assert!(outcome.truncated);
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "1000.424242424201";
    let limits = ExecLimits {
        timeout: Duration::from_millis(800),
        ..ExecLimits::default()
    };
    let result = run_in(
        dir.path(),
        "sh",
        &["-c", "sleep \"$0\" & sleep \"$0\" & wait", marker],
        &limits,
    )
    .await;
    assert_eq!(result, Err(DriverError::Timeout(800)));
    // Killed processes vanish asynchronously; give them a generous moment.
    let mut left = Vec::new();
    for _ in 0..40 {
        left = processes_with(marker);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "survivors: {left:?}");
}

#[tokio::test]
async fn dropping_the_run_kills_everything() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "1000.424242424202";
    let limits = ExecLimits {
        timeout: Duration::from_secs(60),
        ..ExecLimits::default()
    };
    let args = strings(&["-c", "sleep \"$0\" & sleep \"$0\"", marker]);
    let request = ExecRequest {
        program: "sh",
        args: &args,
        workdir: Some(dir.path()),
        writable: true,
        limits: &limits,
    };
    let cancelled = tokio::time::timeout(Duration::from_millis(700), run(request)).await;
    assert!(
        cancelled.is_err(),
        "the run should still have been going: {cancelled:?}"
    );
    let mut left = Vec::new();
    for _ in 0..40 {
        left = processes_with(marker);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "survivors: {left:?}");
}

/// Pids whose cmdline contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .windows(marker.len())
                .any(|window| window == marker.as_bytes())
                .then_some(pid)
        })
        .collect()
}

#[tokio::test]
async fn child_has_its_own_session_and_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_sh(dir.path(), "cat /proc/self/stat", &short_limits()).await;
    // /proc/<pid>/stat: pid (comm) state ppid pgrp session ...
    let after_comm = outcome
        .stdout
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let (pgrp, session) = (fields[2], fields[3]);
    let own_session = std::fs::read_to_string("/proc/self/stat").unwrap();
    let own_fields: Vec<&str> = own_session.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    assert_eq!(pgrp, session, "the child leads its own session: {}", outcome.stdout);
    assert_ne!(session, own_fields[3], "the child left the test's session");
}

#[tokio::test]
async fn write_outside_is_denied_and_inside_works() {
    if !probe().landlock {
        // Without Landlock the host's file permissions are the only barrier; nothing to verify here.
        assert!(probe().warnings.iter().any(|warning| warning.contains("Landlock")));
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let workdir = scratch.path().join("work");
    std::fs::create_dir(&workdir).unwrap();
    let outside = scratch.path().join("outside.txt");
    let script = format!(
        "echo inside > inside.txt && mkdir sub && echo deeper > sub/f && mv sub/f moved && echo ok; \
         echo outside > '{}'; echo x > /tmp/agentos-exec-test-$$; echo x > /dev/null && echo devnull",
        outside.display()
    );
    let outcome = run_sh(&workdir, &script, &short_limits()).await;
    assert_eq!(outcome.stdout, "ok\ndevnull\n", "stderr: {}", outcome.stderr);
    assert_eq!(std::fs::read_to_string(workdir.join("inside.txt")).unwrap(), "inside\n");
    assert_eq!(std::fs::read_to_string(workdir.join("moved")).unwrap(), "deeper\n");
    assert!(!outside.exists());
    assert!(
        outcome.stderr.contains("Permission denied"),
        "stderr: {}",
        outcome.stderr
    );
}

#[tokio::test]
async fn a_read_only_workdir_is_not_writable() {
    if !probe().landlock {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("data.txt"), "keep").unwrap();
    let args = strings(&["-c", "cat data.txt; echo x > data.txt; echo y > new.txt"]);
    let limits = short_limits();
    let outcome = run(ExecRequest {
        program: "sh",
        args: &args,
        workdir: Some(scratch.path()),
        writable: false,
        limits: &limits,
    })
    .await
    .unwrap();
    assert_eq!(outcome.stdout, "keep");
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("data.txt")).unwrap(),
        "keep"
    );
    assert!(!scratch.path().join("new.txt").exists());
}

#[tokio::test]
async fn a_unix_socket_outside_cannot_be_reached_without_network() {
    if !which("python3") || !probe().seccomp {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let workdir = scratch.path().join("work");
    std::fs::create_dir(&workdir).unwrap();
    let path = scratch.path().join("daemon.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let code = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); print('connected')",
        path.to_string_lossy()
    );
    let outcome = run_in(&workdir, "python3", &["-c", &code], &short_limits())
        .await
        .unwrap();
    assert_ne!(outcome.stdout, "connected\n", "stderr: {}", outcome.stderr);
    assert!(listener.accept().is_err(), "the daemon saw a connection");
}

#[tokio::test]
async fn nothing_is_writable_without_a_workdir() {
    if !probe().landlock {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("f");
    let args = strings(&["-c", "echo x > \"$0\"", &target.to_string_lossy()]);
    let limits = short_limits();
    let outcome = run(ExecRequest {
        program: "sh",
        args: &args,
        workdir: None,
        writable: true,
        limits: &limits,
    })
    .await
    .unwrap();
    assert_ne!(outcome.exit_code, Some(0));
    assert!(!target.exists());
    assert!(
        outcome
            .layers
            .warnings
            .iter()
            .any(|warning| warning.contains("no workdir"))
    );
}

/// A bash `/dev/tcp` connection (or python3's) to a listener of the test; `true` if it connected.
async fn try_connect(workdir: &Path, limits: &ExecLimits) -> Option<(bool, ExecOutcome)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let outcome = if which("bash") {
        run_in(
            workdir,
            "bash",
            &["-c", "echo hello > /dev/tcp/127.0.0.1/$0", &port],
            limits,
        )
        .await
        .unwrap()
    } else if which("python3") {
        let code = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2).sendall(b'hello')";
        run_in(workdir, "python3", &["-c", code, &port], limits).await.unwrap()
    } else {
        return None;
    };
    let connected = tokio::time::timeout(Duration::from_secs(1), listener.accept())
        .await
        .is_ok();
    Some((connected, outcome))
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

#[tokio::test]
async fn network_is_denied_by_default() {
    let layers = probe();
    let network_layer = layers.seccomp || (layers.landlock && layers.landlock_abi >= 4);
    if !network_layer {
        assert!(layers.warnings.iter().any(|warning| warning.contains("network")));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((connected, outcome)) = try_connect(dir.path(), &short_limits()).await else {
        panic!("neither bash nor python3 on PATH");
    };
    assert!(!connected, "the sandbox reached the listener: {outcome:?}");
    assert_ne!(outcome.exit_code, Some(0));
    assert!(
        outcome.stderr.contains("Permission denied"),
        "stderr: {}",
        outcome.stderr
    );
}

#[tokio::test]
async fn network_is_allowed_when_requested() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ExecLimits {
        allow_network: true,
        ..short_limits()
    };
    let Some((connected, outcome)) = try_connect(dir.path(), &limits).await else {
        panic!("neither bash nor python3 on PATH");
    };
    assert!(connected, "no connection: {outcome:?}");
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
}

#[tokio::test]
async fn socketpairs_stay_usable_without_network() {
    if !which("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let code = "import socket; a, b = socket.socketpair(); a.sendall(b'ping'); print(b.recv(4).decode())";
    let outcome = run_in(dir.path(), "python3", &["-c", code], &short_limits())
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "ping\n", "stderr: {}", outcome.stderr);
}

#[tokio::test]
async fn setsid_and_setpgid_are_refused() {
    if !probe().seccomp {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_in(dir.path(), "setsid", &["-w", "true"], &short_limits())
        .await
        .unwrap();
    assert_ne!(outcome.exit_code, Some(0), "{outcome:?}");
    assert!(
        outcome.stderr.contains("Operation not permitted"),
        "stderr: {}",
        outcome.stderr
    );
}

#[tokio::test]
async fn process_limit_refuses_forks() {
    if probe().process_limit == ProcessLimit::None {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let limits = ExecLimits {
        max_processes: 8,
        ..short_limits()
    };
    let outcome = run_sh(
        dir.path(),
        "i=0; while [ $i -lt 50 ]; do sleep 30 & i=$((i+1)); done; wait",
        &limits,
    )
    .await;
    assert_eq!(outcome.limit_hit.as_deref(), Some("processes"), "{outcome:?}");
}

#[tokio::test]
async fn memory_limit_makes_allocation_fail() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ExecLimits {
        max_memory_bytes: 128 * 1024 * 1024,
        ..short_limits()
    };
    let outcome = run_sh(
        dir.path(),
        "head -c 1000000000 /dev/zero | tail -n 1 > /dev/null",
        &limits,
    )
    .await;
    assert_eq!(outcome.limit_hit.as_deref(), Some("memory"), "{outcome:?}");
}

#[tokio::test]
async fn environment_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_in(dir.path(), "env", &[], &short_limits()).await.unwrap();
    let names: Vec<&str> = outcome
        .stdout
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    for name in &names {
        assert!(
            ["PATH", "LANG", "HOME", "TMPDIR"].contains(name),
            "unexpected variable {name}: {}",
            outcome.stdout
        );
    }
    assert!(outcome.stdout.contains(&format!("HOME={}\n", dir.path().display())));
}

/// Every layer probe() reports is in force in the child, as the kernel itself shows it.
#[tokio::test]
async fn reported_layers_are_in_force_in_the_child() {
    let layers = probe();
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_in(
        dir.path(),
        "cat",
        &["/proc/self/status", "/proc/self/cgroup"],
        &short_limits(),
    )
    .await
    .unwrap();
    let status = outcome.stdout.as_str();
    if layers.no_new_privs {
        assert_eq!(status_field(status, "NoNewPrivs"), Some("1"), "{status}");
    }
    if layers.seccomp {
        assert_eq!(status_field(status, "Seccomp"), Some("2"), "{status}");
    }
    if layers.capabilities_dropped {
        for field in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(
                status_field(status, field),
                Some("0000000000000000"),
                "{field}: {status}"
            );
        }
    }
    let own_status = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_setpcap = status_field(&own_status, "CapEff")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|caps| caps & (1 << 8) != 0);
    if layers.capabilities_dropped && own_setpcap {
        assert_eq!(status_field(status, "CapBnd"), Some("0000000000000000"), "{status}");
    }
    if layers.process_limit == ProcessLimit::Cgroup {
        let in_run_cgroup = status
            .lines()
            .any(|line| (line.contains(":pids:") || line.starts_with("0::")) && line.contains("/agentos/exec-"));
        assert!(in_run_cgroup, "{status}");
    }
}

/// probe() says Landlock and seccomp are enforced exactly when the kernel, asked independently, can do it.
#[test]
fn probe_matches_independent_kernel_checks() {
    let layers = probe();

    // Landlock: ask the kernel for its ABI version directly.
    // SAFETY: null attr, size 0, LANDLOCK_CREATE_RULESET_VERSION: returns the ABI, reads no memory.
    let abi = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    assert_eq!(layers.landlock, abi >= 1, "kernel says {abi}, probe says {layers:?}");
    assert_eq!(i64::from(layers.landlock_abi), abi.max(0), "{layers:?}");

    // seccomp: install an allow-all filter in a forked child and see it take effect.
    let seccomp_works = {
        let mut command = std::process::Command::new("grep");
        command.args(["-q", "^Seccomp:\t2", "/proc/self/status"]);
        // SAFETY: the closure only calls prctl on a stack-allocated filter.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                let mut allow = [libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                }];
                let program = libc::sock_fprog {
                    len: 1,
                    filter: allow.as_mut_ptr(),
                };
                if libc::prctl(
                    libc::PR_SET_NO_NEW_PRIVS,
                    1 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        2 as libc::c_ulong,
                        &program as *const libc::sock_fprog,
                        0 as libc::c_ulong,
                        0 as libc::c_ulong,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.status().is_ok_and(|status| status.success())
    };
    assert_eq!(layers.seccomp, seccomp_works, "{layers:?}");

    // Process limit: a cgroup exactly when a pids hierarchy is mounted and lets us create a child in it.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let pids_mount = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.len() > 3 && fields[2] == "cgroup" && fields[3].split(',').any(|option| option == "pids"))
            .then(|| fields[1].to_string())
    });
    if let Some(mount) = pids_mount {
        let probe_dir = Path::new(&mount)
            .join("agentos")
            .join(format!("test-{}", std::process::id()));
        let creatable = std::fs::create_dir(&probe_dir).is_ok();
        let _ = std::fs::remove_dir(&probe_dir);
        assert_eq!(layers.process_limit == ProcessLimit::Cgroup, creatable, "{layers:?}");
    }
    // Whatever is missing is explained.
    if !layers.landlock || !layers.seccomp || layers.process_limit != ProcessLimit::Cgroup {
        assert!(!layers.warnings.is_empty(), "{layers:?}");
    }
}

#[test]
fn layers_serialize_for_the_runtime() {
    let json = serde_json::to_value(probe()).unwrap();
    for key in [
        "rlimits",
        "no_new_privs",
        "seccomp",
        "landlock",
        "landlock_abi",
        "capabilities_dropped",
        "process_limit",
        "warnings",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
}

#[tokio::test]
async fn every_containment_trial_holds() {
    let scratch = tempfile::tempdir().unwrap();
    let trials = containment_trials(scratch.path()).await;
    for trial in &trials {
        eprintln!("{}: contained {} — {}", trial.name, trial.contained, trial.detail);
    }
    assert!(trials.len() >= 7, "{trials:#?}");
    let escaped: Vec<&Trial> = trials.iter().filter(|trial| !trial.contained).collect();
    assert!(escaped.is_empty(), "not contained: {escaped:#?}");
    // Nothing was left behind outside the (removed) trial directory.
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn seccomp_refuses_io_uring_clone3_unshare_and_kill_all() {
    if !probe().seccomp || !which("python3") {
        assert!(probe().seccomp || !probe().warnings.is_empty());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Each call prints the errno name it got ("OK" if the kernel ran it). clone3 gets an invalid size, so
    // an unfiltered kernel answers EINVAL instead of forking; unshare(CLONE_NEWUSER) is harmless if allowed.
    let code = "import ctypes, errno, sys\n\
                libc = ctypes.CDLL(None, use_errno=True)\n\
                def call(nr, *args):\n    \
                    r = libc.syscall(nr, *args)\n    \
                    return 'OK' if r >= 0 else errno.errorcode[ctypes.get_errno()]\n\
                buf = ctypes.create_string_buffer(256)\n\
                print(call(int(sys.argv[1]), 8, buf))\n\
                print(call(int(sys.argv[2]), buf, 1))\n\
                print(call(int(sys.argv[3]), 0x10000000))\n";
    let numbers = [libc::SYS_io_uring_setup, libc::SYS_clone3, libc::SYS_unshare].map(|nr| nr.to_string());
    let outcome = run_in(
        dir.path(),
        "python3",
        &["-c", code, &numbers[0], &numbers[1], &numbers[2]],
        &short_limits(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stdout, "EPERM\nENOSYS\nEPERM\n", "stderr: {}", outcome.stderr);
    // kill(-1, 0) only probes, so it is harmless even if it were allowed.
    let outcome = run_sh(dir.path(), "kill -0 -1", &short_limits()).await;
    assert_ne!(outcome.exit_code, Some(0), "{outcome:?}");
    assert!(outcome.stderr.contains("Operation not permitted"), "{outcome:?}");
}

#[test]
fn run_cgroup_limits_kills_and_is_removed() {
    let Some(parent) = super::probe::host().cgroup_parent.as_ref() else {
        assert_ne!(probe().process_limit, ProcessLimit::Cgroup);
        return;
    };
    let mut cgroup = super::cgroup::ExecCgroup::create(parent, 3).unwrap();
    assert_eq!(
        std::fs::read_to_string(cgroup.path().join("pids.max")).unwrap().trim(),
        "3"
    );
    let procs = cgroup.take_procs_fd().unwrap();
    let mut command = std::process::Command::new("sh");
    // Three background sleeps plus sh itself: the third sleep exceeds pids.max = 3.
    command.args(["-c", "sleep 60 & sleep 60 & sleep 60 & wait"]);
    let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    // SAFETY: join_in_child is one write(2) on an fd that stays open until exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || super::cgroup::join_in_child(procs_fd));
    }
    let mut child = command.spawn().unwrap();
    drop(procs);
    let mut members = 0;
    for _ in 0..100 {
        members = std::fs::read_to_string(cgroup.path().join("cgroup.procs"))
            .unwrap()
            .lines()
            .count();
        if cgroup.limit_was_hit() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cgroup.limit_was_hit(), "pids.max was never hit ({members} members)");
    assert!(members <= 3, "{members} members");
    assert!(cgroup.remove().is_err(), "a populated cgroup cannot be removed");
    let killed = cgroup.kill_members().unwrap();
    assert!(killed >= 1);
    let _ = child.wait();
    let path = cgroup.path().to_path_buf();
    for _ in 0..100 {
        if cgroup.remove().is_ok() {
            break;
        }
        let _ = cgroup.kill_members();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!path.exists());
}
