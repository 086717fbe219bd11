//! # agentos-security: what an agent may touch, and the record of what it did
//!
//! Every system call an agent makes is a request from an untrusted process: its text was
//! written by a language model that may have read a hostile page or file. This crate holds the
//! mechanisms the runtime enforces (plain code: no model, no actors):
//!
//! - [`capability`]: what one agent may do ([`Capabilities`](capability::Capabilities)),
//!   attenuation for children, and the one policy check every call passes;
//! - [`fs`]: the file driver, which resolves every path beneath its root inside the kernel
//!   (`openat2` with `RESOLVE_BENEATH`);
//! - [`exec`]: programs run under rlimits, a pids cgroup, no-new-privileges, Landlock and a
//!   seccomp filter where the host has them, with a report of which layers were in force;
//! - [`net`]: HTTP fetches under a host allowlist, with every resolved address checked,
//!   redirects re-checked, timeouts and a byte cap;
//! - [`audit`]: the hash-chained, durable audit log and its verifier.
//!
//! Each driver module also has a self-test (`escape_trials`, `containment_trials`,
//! `tamper_trials`) that runs real attacks against it on this host and reports each as a
//! [`Trial`]; the integration tests and `security_bench` run them.

pub mod audit;
pub mod capability;
mod common;
pub mod exec;
pub mod fs;
pub mod net;

pub use common::{DriverError, Trial};
