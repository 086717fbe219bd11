//! Dropping every capability in the child: agentos runs as root, and a root child keeping its capabilities
//! could mount, load modules, reboot, set the clock, create device nodes or ignore file permissions.

use std::io;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_SETPCAP: u32 = 8;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (capabilities 0–31 and 32–63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// How to drop capabilities on this host, found by [`probe`].
#[derive(Debug, Clone, Copy)]
pub(super) struct CapabilityDrop {
    /// Highest capability number the kernel knows.
    last_cap: u32,
    /// Whether the parent holds `CAP_SETPCAP`, which dropping from the bounding set needs. Without it,
    /// no_new_privs alone keeps exec from granting capabilities (gained ones are intersected with the
    /// empty permitted set).
    drop_bounding_set: bool,
}

/// Passes plain integers to prctl(2) as the `unsigned long` the kernel reads.
fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> libc::c_int {
    // SAFETY: every option used here takes integers only; unused arguments are zero as the kernel requires.
    unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) }
}

/// Finds the highest capability and whether the bounding set can be cleared.
pub(super) fn probe() -> Result<CapabilityDrop, String> {
    let mut last_cap = None;
    for cap in 0..64u32 {
        if prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0) < 0 {
            break;
        }
        last_cap = Some(cap);
    }
    let Some(last_cap) = last_cap else {
        return Err(format!(
            "capabilities cannot be dropped: PR_CAPBSET_READ failed: {}",
            io::Error::last_os_error()
        ));
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData into `data`, the size version 3 requires, and reads `header`.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(format!(
            "capabilities cannot be dropped: capget failed: {}",
            io::Error::last_os_error()
        ));
    }
    let drop_bounding_set = data[0].effective & (1 << CAP_SETPCAP) != 0;
    Ok(CapabilityDrop {
        last_cap,
        drop_bounding_set,
    })
}

impl CapabilityDrop {
    /// Clears the bounding set (when allowed), the ambient set, then effective, permitted and inheritable.
    /// Async-signal-safe: prctl and capset only, on stack memory.
    pub(super) fn apply(&self) -> io::Result<()> {
        if self.drop_bounding_set {
            for cap in 0..=self.last_cap {
                if prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0) != 0 {
            let err = io::Error::last_os_error();
            // Kernels before 4.3 have no ambient set, so there is nothing to clear.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        // SAFETY: capset reads `header` and the two CapData of version 3.
        if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
