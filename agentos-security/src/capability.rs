//! Capabilities: what one agent may touch, and the one check every system call passes.
//!
//! A [`Capabilities`] value is plain data (serialisable, no closures) held by the runtime for
//! each agent. Nothing a model writes can change it: it comes from the application's
//! configuration (the role's declaration and the runtime's policy), and a spawned child gets at
//! most its parent's ([`Capabilities::attenuate`]). Anything that touches the outside world
//! (files, programs, the network, other agents, children) is denied unless granted.
//!
//! [`check`] turns a [`Request`] into a [`Verdict`]: allowed (with the file grant to use), in
//! need of an approver's decision ([`Gate`]), or denied with a reason the model is shown.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Read or read-write access to a file root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    ReadWrite,
}

/// A directory an agent may use. The grant with an empty `mount` is the agent's work directory:
/// relative paths resolve beneath it. A grant with a mount name is reached as `<mount>/...`
/// (the mount name wins over an entry of the same name in the work directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileGrant {
    pub mount: String,
    pub path: PathBuf,
    pub access: Access,
    /// Writes here never need approval, even under [`Gate::Write`] (a scratch directory).
    #[serde(default)]
    pub scratch: bool,
}

impl FileGrant {
    /// The work directory `path` with `access`.
    pub fn work_dir(path: impl Into<PathBuf>, access: Access) -> Self {
        FileGrant {
            mount: String::new(),
            path: path.into(),
            access,
            scratch: false,
        }
    }
}

/// Hosts an agent may fetch from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetGrant {
    /// Exact host names or IP literals, or `*.example.com` for its subdomains.
    pub hosts: Vec<String>,
    /// Whether names may resolve to loopback, private or link-local addresses (the fetch driver
    /// checks every resolved address). Default `false`.
    #[serde(default)]
    pub allow_private: bool,
}

/// Whom an agent may message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peers {
    /// No one.
    #[default]
    None,
    /// These agents, by name.
    Only(BTreeSet<String>),
    /// Any agent.
    Any,
}

/// How many children an agent may spawn, and of which roles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnGrant {
    /// Most children alive or not, over the agent's life in this process. `0`: none.
    pub max_children: u32,
    /// Roles it may start; `None`: any registered role.
    pub roles: Option<BTreeSet<String>>,
}

/// Calls that wait for an approver before they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    Exec,
    /// `fs_write` into a grant that is not marked `scratch`.
    Write,
    Fetch,
    Spawn,
}

/// What one agent may do. `Default` is deny-all for the outside world and every call name
/// allowed (the agent's declared `tools` still limit what it is offered and may call).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Call names (system calls and tools) it may use; `None`: every call among its `tools`.
    pub calls: Option<BTreeSet<String>>,
    pub files: Vec<FileGrant>,
    /// Programs `exec` may run, as the model names them (no shell).
    pub exec: BTreeSet<String>,
    pub net: NetGrant,
    pub message: Peers,
    pub spawn: SpawnGrant,
    /// Calls that need an approver's yes.
    pub approval: BTreeSet<Gate>,
}

/// One request, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// A call with no outside effect beyond its name (memory, board, sleep, exit, a user tool).
    Call,
    FileRead {
        path: &'a str,
    },
    FileList {
        path: &'a str,
    },
    FileWrite {
        path: &'a str,
    },
    Exec {
        program: &'a str,
    },
    /// The host is the URL's parsed host (lower case, no brackets).
    Fetch {
        host: &'a str,
    },
    Message {
        to: &'a str,
    },
    /// A publication on a topic: it reaches every subscriber, so it needs [`Peers::Any`].
    Publish,
    /// `children` is how many the agent has spawned so far.
    Spawn {
        role: &'a str,
        children: u32,
    },
}

/// The file grant a path falls under, and the path relative to the grant's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub grant: FileGrant,
    pub relative: String,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run it (`file` is set for file calls).
    Allow { file: Option<Resolved> },
    /// Run it once an approver says yes; a timeout or no approver denies.
    Approve { gate: Gate, file: Option<Resolved> },
    /// Refused; the text says why, for the model and the audit log.
    Deny(String),
}

/// Whether `host` is matched by `pattern` (`*.d` matches subdomains of `d`, not `d` itself).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => host == pattern,
    }
}

/// Whether `path` lies beneath `root` by components (no file system access: both are compared
/// as written, after removing `.` components; the runtime canonicalises roots at grant time).
fn beneath(path: &Path, root: &Path) -> bool {
    fn clean(p: &Path) -> Vec<Component<'_>> {
        p.components().filter(|c| *c != Component::CurDir).collect()
    }
    let (path, root) = (clean(path), clean(root));
    if path.contains(&Component::ParentDir) || root.contains(&Component::ParentDir) {
        return false;
    }
    path.starts_with(&root)
}

impl Capabilities {
    /// Every call name, any peer and unlimited children, no approvals, and nothing outside the
    /// system: no files, programs or hosts (add grants for those).
    pub fn unrestricted_calls() -> Self {
        Capabilities {
            calls: None,
            message: Peers::Any,
            spawn: SpawnGrant {
                max_children: u32::MAX,
                roles: None,
            },
            ..Capabilities::default()
        }
    }

    /// The work directory (the grant without a mount name), where `exec` runs.
    pub fn work_dir(&self) -> Option<&FileGrant> {
        self.files.iter().find(|g| g.mount.is_empty())
    }

    /// Whether the call named `name` is granted by name.
    pub fn allows_call(&self, name: &str) -> bool {
        self.calls.as_ref().is_none_or(|calls| calls.contains(name))
    }

    /// At most what both `self` and `ceiling` allow: a child's declared capabilities attenuated
    /// by its parent's. Never more than `ceiling` in any respect (see the tests).
    pub fn attenuate(&self, ceiling: &Capabilities) -> Capabilities {
        let calls = match (&self.calls, &ceiling.calls) {
            (None, None) => None,
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(b.clone()),
            (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
        };
        // A grant survives where it lies beneath a ceiling grant, with the lesser access; a
        // scratch mark survives only where the ceiling's grant is scratch too.
        let files = self
            .files
            .iter()
            .filter_map(|grant| {
                let within = ceiling
                    .files
                    .iter()
                    .filter(|c| beneath(&grant.path, &c.path))
                    .max_by_key(|c| c.access)?;
                Some(FileGrant {
                    mount: grant.mount.clone(),
                    path: grant.path.clone(),
                    access: grant.access.min(within.access),
                    scratch: grant.scratch && within.scratch,
                })
            })
            .collect();
        let exec = self.exec.intersection(&ceiling.exec).cloned().collect();
        let hosts = self
            .net
            .hosts
            .iter()
            .filter(|pattern| {
                ceiling.net.hosts.iter().any(|c| match pattern.strip_prefix("*.") {
                    // A wildcard survives only under a wildcard that covers it.
                    Some(domain) => {
                        c.eq_ignore_ascii_case(pattern)
                            || c.strip_prefix("*.")
                                .is_some_and(|cd| host_matches(&format!("*.{cd}"), domain))
                    }
                    None => host_matches(c, pattern),
                })
            })
            .cloned()
            .collect();
        let message = match (&self.message, &ceiling.message) {
            (Peers::None, _) | (_, Peers::None) => Peers::None,
            (Peers::Any, other) | (other, Peers::Any) => other.clone(),
            (Peers::Only(a), Peers::Only(b)) => Peers::Only(a.intersection(b).cloned().collect()),
        };
        let roles = match (&self.spawn.roles, &ceiling.spawn.roles) {
            (None, None) => None,
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(b.clone()),
            (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
        };
        Capabilities {
            calls,
            files,
            exec,
            net: NetGrant {
                hosts,
                allow_private: self.net.allow_private && ceiling.net.allow_private,
            },
            message,
            spawn: SpawnGrant {
                max_children: self.spawn.max_children.min(ceiling.spawn.max_children),
                roles,
            },
            // Gates only add up: a child waits for approval wherever either would.
            approval: self.approval.union(&ceiling.approval).copied().collect(),
        }
    }

    /// Whether `self` grants nothing beyond `other` (`self.attenuate(other) == self`).
    pub fn is_within(&self, other: &Capabilities) -> bool {
        self.attenuate(other) == *self
    }

    /// The grant `path` (relative, from the model) falls under: `<mount>/rest` for a mounted
    /// grant, otherwise the work directory. Lexical only; the driver resolves beneath the root.
    pub fn resolve_file(&self, path: &str) -> Option<Resolved> {
        let trimmed = path.trim_start_matches("./");
        let (first, rest) = match trimmed.split_once('/') {
            Some((first, rest)) => (first, rest),
            None => (trimmed, "."),
        };
        if let Some(grant) = self.files.iter().find(|g| !g.mount.is_empty() && g.mount == first) {
            let rest = if rest.is_empty() { "." } else { rest };
            return Some(Resolved {
                grant: grant.clone(),
                relative: rest.to_string(),
            });
        }
        self.files.iter().find(|g| g.mount.is_empty()).map(|grant| Resolved {
            grant: grant.clone(),
            relative: path.to_string(),
        })
    }
}

/// The check every system call passes before its driver runs. `name` is the call's name;
/// `request` what it would touch.
pub fn check(caps: &Capabilities, name: &str, request: Request<'_>) -> Verdict {
    if !caps.allows_call(name) {
        return Verdict::Deny(format!("this agent's capabilities do not include `{name}`"));
    }
    let gated = |gate: Gate, file: Option<Resolved>| match caps.approval.contains(&gate) {
        true => Verdict::Approve { gate, file },
        false => Verdict::Allow { file },
    };
    match request {
        Request::Call => Verdict::Allow { file: None },
        Request::FileRead { path } | Request::FileList { path } => match caps.resolve_file(path) {
            Some(resolved) => Verdict::Allow { file: Some(resolved) },
            None => Verdict::Deny("this agent has no file access".into()),
        },
        Request::FileWrite { path } => match caps.resolve_file(path) {
            None => Verdict::Deny("this agent has no file access".into()),
            Some(resolved) if resolved.grant.access != Access::ReadWrite => Verdict::Deny(format!(
                "`{path}` is in a read-only {}",
                match resolved.grant.mount.is_empty() {
                    true => "work directory".to_string(),
                    false => format!("mount `{}`", resolved.grant.mount),
                }
            )),
            Some(resolved) if resolved.grant.scratch => Verdict::Allow { file: Some(resolved) },
            Some(resolved) => gated(Gate::Write, Some(resolved)),
        },
        Request::Exec { program } => match caps.exec.contains(program) {
            true => gated(Gate::Exec, None),
            false => Verdict::Deny(format!("this agent may not run `{program}`")),
        },
        Request::Fetch { host } => match caps.net.hosts.iter().any(|p| host_matches(p, host)) {
            true => gated(Gate::Fetch, None),
            false => Verdict::Deny(format!("this agent may not fetch from `{host}`")),
        },
        Request::Message { to } => match &caps.message {
            Peers::Any => Verdict::Allow { file: None },
            Peers::Only(peers) if peers.contains(to) => Verdict::Allow { file: None },
            _ => Verdict::Deny(format!("this agent may not message `{to}`")),
        },
        Request::Publish => match caps.message {
            Peers::Any => Verdict::Allow { file: None },
            _ => {
                Verdict::Deny("publishing reaches every subscriber, and this agent may not message every agent".into())
            }
        },
        Request::Spawn { role, children } => {
            if children >= caps.spawn.max_children {
                return Verdict::Deny(format!(
                    "this agent may spawn at most {} agents and has spawned {children}",
                    caps.spawn.max_children
                ));
            }
            if caps.spawn.roles.as_ref().is_some_and(|roles| !roles.contains(role)) {
                return Verdict::Deny(format!("this agent may not spawn agents of role `{role}`"));
            }
            gated(Gate::Spawn, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn parent() -> Capabilities {
        Capabilities {
            calls: Some(set(&[
                "fs_read",
                "fs_write",
                "exec",
                "net_fetch",
                "send_msg",
                "spawn_agent",
            ])),
            files: vec![
                FileGrant::work_dir("/work/a", Access::ReadWrite),
                FileGrant {
                    mount: "docs".into(),
                    path: "/data/docs".into(),
                    access: Access::Read,
                    scratch: false,
                },
            ],
            exec: set(&["ls", "cat"]),
            net: NetGrant {
                hosts: vec!["*.example.com".into(), "docs.rs".into()],
                allow_private: false,
            },
            message: Peers::Only(set(&["critic", "writer"])),
            spawn: SpawnGrant {
                max_children: 2,
                roles: Some(set(&["helper"])),
            },
            approval: [Gate::Exec].into(),
        }
    }

    #[test]
    fn nothing_outside_is_allowed_by_default() {
        let caps = Capabilities::default();
        assert!(matches!(
            check(&caps, "fs_read", Request::FileRead { path: "a" }),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            check(&caps, "exec", Request::Exec { program: "ls" }),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            check(&caps, "net_fetch", Request::Fetch { host: "a.com" }),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            check(&caps, "send_msg", Request::Message { to: "b" }),
            Verdict::Deny(_)
        ));
        let spawn = Request::Spawn { role: "x", children: 0 };
        assert!(matches!(check(&caps, "spawn_agent", spawn), Verdict::Deny(_)));
        assert_eq!(check(&caps, "mem_read", Request::Call), Verdict::Allow { file: None });
    }

    #[test]
    fn grants_allow_what_they_name_and_gates_ask() {
        let caps = parent();
        assert_eq!(
            check(&caps, "exec", Request::Exec { program: "ls" }),
            Verdict::Approve {
                gate: Gate::Exec,
                file: None
            }
        );
        assert!(matches!(
            check(&caps, "exec", Request::Exec { program: "rm" }),
            Verdict::Deny(_)
        ));
        assert!(matches!(check(&caps, "sleep", Request::Call), Verdict::Deny(_)));
        let fetch = |host| check(&caps, "net_fetch", Request::Fetch { host });
        assert_eq!(fetch("api.example.com"), Verdict::Allow { file: None });
        assert!(matches!(fetch("example.com"), Verdict::Deny(_)));
        assert!(matches!(fetch("example.com.evil.net"), Verdict::Deny(_)));
        assert!(matches!(fetch("docs.rs.evil.net"), Verdict::Deny(_)));
        assert_eq!(
            check(&caps, "send_msg", Request::Message { to: "critic" }),
            Verdict::Allow { file: None }
        );
        assert!(matches!(
            check(&caps, "send_msg", Request::Message { to: "boss" }),
            Verdict::Deny(_)
        ));
        let spawn = |role, children| check(&caps, "spawn_agent", Request::Spawn { role, children });
        assert_eq!(spawn("helper", 1), Verdict::Allow { file: None });
        assert!(matches!(spawn("helper", 2), Verdict::Deny(_)));
        assert!(matches!(spawn("admin", 0), Verdict::Deny(_)));
    }

    #[test]
    fn publishing_needs_every_peer() {
        let mut open = Capabilities::unrestricted_calls();
        assert_eq!(check(&open, "publish", Request::Publish), Verdict::Allow { file: None });
        open.message = Peers::Only(set(&["critic"]));
        assert!(matches!(check(&open, "publish", Request::Publish), Verdict::Deny(_)));
        open.message = Peers::None;
        assert!(matches!(check(&open, "publish", Request::Publish), Verdict::Deny(_)));
    }

    #[test]
    fn files_resolve_to_the_work_dir_or_a_mount() {
        let caps = parent();
        let Verdict::Allow { file: Some(read) } = check(&caps, "fs_read", Request::FileRead { path: "docs/x.md" })
        else {
            panic!("a read of a mount is allowed")
        };
        assert_eq!(read.grant.path, PathBuf::from("/data/docs"));
        assert_eq!(read.relative, "x.md");
        let Verdict::Allow { file: Some(list) } = check(&caps, "fs_read", Request::FileList { path: "docs" }) else {
            panic!("a listing of a mount is allowed")
        };
        assert_eq!(list.relative, ".");
        // Writes into the read-only mount are denied; into the work dir they ask the Write
        // gate only when it is set.
        assert!(matches!(
            check(&caps, "fs_write", Request::FileWrite { path: "docs/x.md" }),
            Verdict::Deny(_)
        ));
        let Verdict::Allow { file: Some(write) } = check(&caps, "fs_write", Request::FileWrite { path: "notes/a.txt" })
        else {
            panic!("a write into the work dir is allowed")
        };
        assert_eq!(write.grant.path, PathBuf::from("/work/a"));
        assert_eq!(write.relative, "notes/a.txt");
        let mut gated = caps.clone();
        gated.approval.insert(Gate::Write);
        assert!(matches!(
            check(&gated, "fs_write", Request::FileWrite { path: "a.txt" }),
            Verdict::Approve { gate: Gate::Write, .. }
        ));
        gated.files[0].scratch = true;
        assert!(matches!(
            check(&gated, "fs_write", Request::FileWrite { path: "a.txt" }),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn a_child_never_gets_more_than_its_parent() {
        let parent = parent();
        let greedy = Capabilities {
            calls: None,
            files: vec![
                FileGrant::work_dir("/work/a/sub", Access::ReadWrite),
                FileGrant {
                    mount: "docs".into(),
                    path: "/data/docs".into(),
                    access: Access::ReadWrite,
                    scratch: true,
                },
                FileGrant {
                    mount: "etc".into(),
                    path: "/etc".into(),
                    access: Access::Read,
                    scratch: false,
                },
                FileGrant {
                    mount: "sneaky".into(),
                    path: "/work/a/../../etc".into(),
                    access: Access::Read,
                    scratch: false,
                },
            ],
            exec: set(&["ls", "rm", "sh"]),
            net: NetGrant {
                hosts: vec![
                    "*.example.com".into(),
                    "*.com".into(),
                    "a.example.com".into(),
                    "evil.net".into(),
                ],
                allow_private: true,
            },
            message: Peers::Any,
            spawn: SpawnGrant {
                max_children: 100,
                roles: None,
            },
            approval: BTreeSet::new(),
        };
        let child = greedy.attenuate(&parent);
        assert!(child.is_within(&parent));
        assert_eq!(child.calls, parent.calls);
        assert_eq!(
            child.files,
            vec![
                FileGrant::work_dir("/work/a/sub", Access::ReadWrite),
                FileGrant {
                    mount: "docs".into(),
                    path: "/data/docs".into(),
                    access: Access::Read,
                    scratch: false,
                },
            ]
        );
        assert_eq!(child.exec, set(&["ls"]));
        assert_eq!(
            child.net.hosts,
            vec!["*.example.com".to_string(), "a.example.com".to_string()]
        );
        assert!(!child.net.allow_private);
        assert_eq!(child.message, parent.message);
        assert_eq!(child.spawn, parent.spawn);
        assert_eq!(child.approval, parent.approval);
        // Attenuating again changes nothing, and the parent is within itself.
        assert_eq!(child.attenuate(&parent), child);
        assert!(parent.is_within(&parent));
        assert!(!greedy.is_within(&parent));
        // Nothing from a parent that grants nothing.
        let none = greedy.attenuate(&Capabilities::default());
        assert!(none.files.is_empty() && none.exec.is_empty() && none.net.hosts.is_empty());
        assert_eq!(none.message, Peers::None);
        assert_eq!(none.spawn.max_children, 0);
    }

    #[test]
    fn host_patterns_match_subdomains_only() {
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("Example.COM", "example.com"));
    }
}
