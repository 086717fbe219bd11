//! The seccomp-BPF filter: built in the parent, installed by the child with `prctl(PR_SET_SECCOMP)`.
//!
//! Program, in order: a syscall from another architecture (i386 via `int 0x80`, arm32 compat...) or an x32
//! syscall → kill the process; `setsid`/`setpgid` → `EPERM` (the process group the timeout kills stays
//! whole); `unshare`/`setns` → `EPERM`, `clone` with a namespace flag → `EPERM`, `clone3` → `ENOSYS` (its
//! flags sit behind a pointer the filter cannot read; libc falls back to `clone`); io_uring → `EPERM` (its
//! socket/connect operations would bypass this filter); `kill(-1, …)` → `EPERM`; without network,
//! `socket` (any family, unless the network is allowed) → `EACCES`; everything else → allow.

use std::io;

use libc::sock_filter;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E; // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7; // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE

/// x32 syscalls have the native audit arch but this bit set in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets into `struct seccomp_data` (nr: u32, arch: u32, instruction_pointer: u64, args: [u64; 6]).
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// Low 32 bits of args[0] (little endian only; this module is not built for big-endian targets).
const OFFSET_ARG0_LOW: u32 = 16;

/// Namespace flags of clone(2) (arg 0). CLONE_NEWTIME is left out: clone(2) has no room for it (it is only
/// accepted by clone3 and unshare, both refused).
const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn load(offset: u32) -> sock_filter {
    statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(action: u32) -> sock_filter {
    statement(libc::BPF_RET | libc::BPF_K, action)
}

fn errno(code: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (code as u32 & libc::SECCOMP_RET_DATA)
}

/// `if nr == syscall { return action }`. Expects the syscall number in the accumulator.
fn refuse(program: &mut Vec<sock_filter>, syscall: libc::c_long, action: u32) {
    program.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, syscall as u32, 0, 1));
    program.push(ret(action));
}

/// `if nr == syscall { return if arg0_low <test> k { action } else { ALLOW } }`, where `test` is a BPF jump
/// opcode (JEQ, JSET...). Expects the syscall number in the accumulator; leaves it there when `nr` differs.
fn refuse_when_arg0(program: &mut Vec<sock_filter>, syscall: libc::c_long, test: u32, k: u32, action: u32) {
    program.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, syscall as u32, 0, 4));
    program.push(load(OFFSET_ARG0_LOW));
    program.push(jump(libc::BPF_JMP | test | libc::BPF_K, k, 0, 1));
    program.push(ret(action));
    program.push(ret(libc::SECCOMP_RET_ALLOW));
}

/// The filter program (see the module doc).
pub(super) fn build_filter(allow_network: bool) -> Vec<sock_filter> {
    let mut program = vec![
        load(OFFSET_ARCH),
        jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, AUDIT_ARCH_NATIVE, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        load(OFFSET_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        program.push(jump(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, X32_SYSCALL_BIT, 0, 1));
        program.push(ret(libc::SECCOMP_RET_KILL_PROCESS));
    }
    refuse(&mut program, libc::SYS_setsid, errno(libc::EPERM));
    refuse(&mut program, libc::SYS_setpgid, errno(libc::EPERM));
    refuse(&mut program, libc::SYS_unshare, errno(libc::EPERM));
    refuse(&mut program, libc::SYS_setns, errno(libc::EPERM));
    refuse(&mut program, libc::SYS_clone3, errno(libc::ENOSYS));
    refuse(&mut program, libc::SYS_io_uring_setup, errno(libc::EPERM));
    refuse(&mut program, libc::SYS_io_uring_enter, errno(libc::EPERM));
    refuse(&mut program, libc::SYS_io_uring_register, errno(libc::EPERM));
    refuse_when_arg0(
        &mut program,
        libc::SYS_clone,
        libc::BPF_JSET,
        CLONE_NAMESPACE_FLAGS,
        errno(libc::EPERM),
    );
    // kill(2) takes an int pid: -1 ("every process we may signal") is 0xffffffff in the low half.
    refuse_when_arg0(
        &mut program,
        libc::SYS_kill,
        libc::BPF_JEQ,
        u32::MAX,
        errno(libc::EPERM),
    );
    if !allow_network {
        // No socket at all: AF_UNIX too, since a path socket outside the workdir (a root-owned
        // daemon's, docker.sock) can be connected to whatever Landlock allows. socketpair(2), a
        // separate call, stays: it reaches nothing outside the sandbox.
        refuse(&mut program, libc::SYS_socket, errno(libc::EACCES));
    }
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    program
}

/// Whether this kernel can enforce the filter: seccomp is built in, the filter actions used exist.
pub(super) fn probe() -> Result<(), String> {
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    if unsafe {
        libc::prctl(
            libc::PR_GET_SECCOMP,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } < 0
    {
        return Err(format!(
            "seccomp is not supported: PR_GET_SECCOMP failed: {}",
            io::Error::last_os_error()
        ));
    }
    for (action, name) in [
        (libc::SECCOMP_RET_KILL_PROCESS, "SECCOMP_RET_KILL_PROCESS"),
        (libc::SECCOMP_RET_ERRNO, "SECCOMP_RET_ERRNO"),
        (libc::SECCOMP_RET_ALLOW, "SECCOMP_RET_ALLOW"),
    ] {
        // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which points at `action`.
        let available = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0u32,
                &action as *const u32,
            )
        };
        if available != 0 {
            return Err(format!(
                "seccomp is not supported: the kernel lacks {name} (or SECCOMP_GET_ACTION_AVAIL, Linux < 4.14): {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Installs `filter` on the calling process. Async-signal-safe: one prctl on memory prepared before fork.
/// Needs `PR_SET_NO_NEW_PRIVS` (or `CAP_SYS_ADMIN`).
pub(super) fn install(filter: &[sock_filter]) -> io::Result<()> {
    let len = u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let program = libc::sock_fprog {
        len,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `program` points at `filter`, which lives (in the closure) until exec; the kernel copies it.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::c_ulong::from(libc::SECCOMP_MODE_FILTER),
            &program as *const libc::sock_fprog,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
