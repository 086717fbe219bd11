//! System calls: what an agent's model asks the runtime to do, and what it gets back.
//!
//! An agent declared with `tools = [...]` may call the system calls and user tools named there.
//! Its system prompt then lists them (see [`wire`] for the format), and each turn becomes a
//! bounded loop: generate; when the reply ends in a `<tool_call>`, parse it into a [`Syscall`],
//! run it through the dispatcher's checkpoint (`agent/dispatch.rs`: one place every call passes,
//! where the capability policy sits), feed the result back to the model, and generate again, until
//! the model answers without a call, calls `exit`, or the agent's `max_steps` is reached.
//!
//! Every failure is a [`SyscallError`] that goes back to the model as the call's result:
//! malformed JSON, an unknown name, wrong argument types, a call outside the agent's
//! capabilities ([`security`](crate::security)), a path outside its file roots, a program that
//! is not allowed, a timeout. Nothing a model writes can panic the runtime or abort the task.
//! Every call, allowed or denied, is written to the audit log.
//!
//! The calls available today are listed in [`SYSCALLS`]; each has a JSON Schema
//! ([`schema`]) that the prompt shows and that the arguments are checked against.

pub(crate) mod drivers;
pub mod mcp;
pub mod tool;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use mcp::{McpServer, McpServerInfo};
pub use tool::{FnTool, Tool, ToolArgument, ToolFuture, ToolSet};

/// Limits and resources of the system calls (part of [`RuntimeConfig`](crate::RuntimeConfig)).
#[derive(Debug, Clone)]
pub struct SyscallConfig {
    /// The work directory that `fs_read`, `fs_write` and `fs_list` resolve paths under, and
    /// that `exec` runs in, for agents given no capabilities of their own (see
    /// [`security`](crate::security)). Default `None`: file calls are denied.
    pub fs_root: Option<PathBuf>,
    /// Programs `exec` may run, exactly as the model names them (no shell is involved), for
    /// agents given no capabilities of their own. Default empty: `exec` is denied.
    pub exec_allow: Vec<String>,
    /// The longest an `exec` may run (also the default when the call gives no timeout); the
    /// program is killed then. Default 10 s.
    pub exec_timeout: Duration,
    /// Largest file `fs_read` reads or `fs_write` writes. Default 1 MiB.
    pub max_file_bytes: usize,
    /// Bytes kept of each of a program's stdout and stderr. Default 64 KiB.
    pub max_output_bytes: usize,
    /// Characters of a call's result shown to the model (the rest is cut, and the result says
    /// so). Default 4,000.
    pub max_result_chars: usize,
    /// Longest `sleep`. Default 60 s.
    pub max_sleep: Duration,
    /// Longest any one call may take (a tool, a memory lookup, a send); past it the call's
    /// result is a timeout error. Default 60 s.
    pub call_timeout: Duration,
    /// Hosts `net_fetch` may fetch from, for agents given no capabilities of their own: exact
    /// names (`"example.com"`, `"127.0.0.1"`) or `"*.example.com"` for its subdomains. Default
    /// empty: `net_fetch` is denied.
    pub net_allow: Vec<String>,
    /// Whether hosts on `net_allow` may resolve to loopback, private or link-local addresses
    /// (every resolved address is checked before connecting). Default `false`: a name that
    /// resolves to `127.0.0.1` or `10.x` is denied even when listed.
    pub net_allow_private: bool,
    /// Bytes of a fetched body kept (read while it streams; the rest is not read). Default 256 KiB.
    pub max_fetch_bytes: usize,
    /// Longest a fetch may take, redirects included. Default 20 s.
    pub fetch_timeout: Duration,
    /// How long `recv_msg` waits when the call gives no timeout (at most `max_sleep`). Default 10 s.
    pub recv_timeout: Duration,
    /// Whether the kernel's grammar constrains calls (default `true`). Off, the model writes
    /// calls freely (they are parsed and checked all the same) and `tool_choice` cannot force
    /// one: for models that write valid calls on their own, or to measure what the grammar buys.
    pub constrained_calls: bool,
    /// Under constrained calls, the path of an `fs_read` (`fs_list`) call is one of the files
    /// (directories) that exist beneath `fs_root` when the step starts, if there are at most
    /// this many of each ([`wire::narrow_paths`]); with more, the path is free text. `0`:
    /// always free. Default 256. (The tool list offers `exec` only the programs of
    /// `exec_allow`, and `spawn_agent` only registered roles, whatever this says.)
    pub max_path_choices: usize,
}

impl Default for SyscallConfig {
    fn default() -> Self {
        SyscallConfig {
            fs_root: None,
            exec_allow: Vec::new(),
            exec_timeout: Duration::from_secs(10),
            max_file_bytes: 1 << 20,
            max_output_bytes: 64 << 10,
            max_result_chars: 4000,
            max_sleep: Duration::from_secs(60),
            call_timeout: Duration::from_secs(60),
            net_allow: Vec::new(),
            net_allow_private: false,
            max_fetch_bytes: 256 << 10,
            fetch_timeout: Duration::from_secs(20),
            recv_timeout: Duration::from_secs(10),
            constrained_calls: true,
            max_path_choices: 256,
        }
    }
}

/// A system call, parsed and with arguments of the right types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscall {
    /// End the turn with `result` as the reply.
    Exit { result: String },
    /// Start an agent of a role registered with the AgentOS, named `name`, and give it `task`.
    /// The call returns at once; the child's answer is delivered to the caller as a message
    /// from the child (see `recv_msg`).
    SpawnAgent { role: String, name: String, task: String },
    /// Send `text` to the agent named `to` (delivered through its durable inbox).
    SendMsg { to: String, text: String },
    /// Wait for the next message delivered to this agent (at most `timeout_ms`, capped by the
    /// configuration) and take it.
    RecvMsg { timeout_ms: Option<u64> },
    /// Read a UTF-8 text file under the agent's file root.
    FsRead { path: String },
    /// Create or replace a text file under the agent's file root.
    FsWrite { path: String, content: String },
    /// List a directory under the agent's file root (`"."` is the root itself).
    FsList { path: String },
    /// Run an allowed program with arguments (no shell), with a wall-clock timeout.
    Exec {
        program: String,
        args: Vec<String>,
        timeout_ms: Option<u64>,
    },
    /// Write `text` into the agent's memory (S-MMU pages).
    MemWrite { text: String },
    /// The `k` pages of the agent's memory most relevant to `query`.
    MemRead { query: String, k: Option<usize> },
    /// Wait `ms` milliseconds (capped by the configuration).
    Sleep { ms: u64 },
    /// GET an http(s) URL from an allowed host.
    NetFetch { url: String },
    /// Read the entry under `key` of the shared blackboard's public area.
    BoardRead { key: String },
    /// Write `value` under `key` of the shared blackboard's public area (a write concurrent
    /// with one this agent has not read is kept as a conflict).
    BoardWrite { key: String, value: String },
    /// Publish `text` on `topic` to the agents subscribed to it.
    Publish { topic: String, text: String },
    /// A user tool registered with the AgentOS, by name, with JSON arguments (kept as JSON
    /// text so the call stays serialisable in every format).
    Tool { name: String, arguments: String },
}

/// When an agent with tools must make a call (`#[agent(tool_choice = "...")]`). With
/// [`SyscallConfig::constrained_calls`] on (the default), every call made within `max_steps`
/// is constrained to the grammar of the agent's tools (name and arguments). After the last
/// allowed step the generation is free (constrained to a call under `Required`), and a call
/// there ends the turn unrun (`Response::step_limit_reached`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides at every step whether to call (a call, once opened, is constrained).
    #[default]
    Auto,
    /// The first step of every turn is a call; later steps are as `Auto`. For small models
    /// that seldom open a call on their own.
    First,
    /// Every generation is a call: the agent answers through `exit` (give it that call). After
    /// `max_steps` calls the next one is not run and the turn ends with
    /// `Response::step_limit_reached`.
    Required,
}

/// The system calls an agent can be given (by name in `#[agent(tools = [...])]`).
pub const SYSCALLS: &[&str] = &[
    "exit",
    "spawn_agent",
    "send_msg",
    "recv_msg",
    "fs_read",
    "fs_write",
    "fs_list",
    "exec",
    "mem_write",
    "mem_read",
    "sleep",
    "net_fetch",
    "board_read",
    "board_write",
    "publish",
];

impl Syscall {
    /// The name the model calls it by (a user tool's own name for [`Syscall::Tool`]).
    pub fn name(&self) -> &str {
        match self {
            Syscall::Exit { .. } => "exit",
            Syscall::SpawnAgent { .. } => "spawn_agent",
            Syscall::SendMsg { .. } => "send_msg",
            Syscall::RecvMsg { .. } => "recv_msg",
            Syscall::FsRead { .. } => "fs_read",
            Syscall::FsWrite { .. } => "fs_write",
            Syscall::FsList { .. } => "fs_list",
            Syscall::Exec { .. } => "exec",
            Syscall::MemWrite { .. } => "mem_write",
            Syscall::MemRead { .. } => "mem_read",
            Syscall::Sleep { .. } => "sleep",
            Syscall::NetFetch { .. } => "net_fetch",
            Syscall::BoardRead { .. } => "board_read",
            Syscall::BoardWrite { .. } => "board_write",
            Syscall::Publish { .. } => "publish",
            Syscall::Tool { name, .. } => name,
        }
    }

    /// Builds the call named `name` from the model's `arguments`. Names in [`SYSCALLS`] are
    /// system calls, any other name is a user tool (the dispatcher says whether it exists).
    /// Unknown fields and wrong types are errors, so the model learns the schema.
    pub fn from_call(name: &str, arguments: Value) -> Result<Syscall, SyscallError> {
        fn args<T: serde::de::DeserializeOwned>(name: &str, arguments: Value) -> Result<T, SyscallError> {
            // A model often writes `"arguments": null` or leaves them out for calls without any.
            let arguments = if arguments.is_null() { json!({}) } else { arguments };
            serde_json::from_value(arguments).map_err(|e| SyscallError::Arguments {
                name: name.to_string(),
                reason: e.to_string(),
            })
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Exit {
            result: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SendMsg {
            to: String,
            text: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SpawnAgent {
            role: String,
            name: String,
            task: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RecvMsg {
            timeout_ms: Option<u64>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NetFetch {
            url: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Path {
            path: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FsWrite {
            path: String,
            content: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Exec {
            program: String,
            #[serde(default)]
            args: Vec<String>,
            timeout_ms: Option<u64>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MemWrite {
            text: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MemRead {
            query: String,
            k: Option<usize>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Sleep {
            ms: u64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct BoardRead {
            key: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct BoardWrite {
            key: String,
            value: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Publish {
            topic: String,
            text: String,
        }
        if let Some(schema) = schema(name) {
            let given = if arguments.is_null() {
                json!({})
            } else {
                arguments.clone()
            };
            wire::check_schema(&schema, &given).map_err(|reason| SyscallError::Arguments {
                name: name.to_string(),
                reason,
            })?;
        }
        Ok(match name {
            "exit" => {
                let a: Exit = args(name, arguments)?;
                Syscall::Exit { result: a.result }
            }
            "spawn_agent" => {
                let a: SpawnAgent = args(name, arguments)?;
                Syscall::SpawnAgent {
                    role: a.role,
                    name: a.name,
                    task: a.task,
                }
            }
            "send_msg" => {
                let a: SendMsg = args(name, arguments)?;
                Syscall::SendMsg { to: a.to, text: a.text }
            }
            "recv_msg" => Syscall::RecvMsg {
                timeout_ms: args::<RecvMsg>(name, arguments)?.timeout_ms,
            },
            "net_fetch" => Syscall::NetFetch {
                url: args::<NetFetch>(name, arguments)?.url,
            },
            "fs_read" => Syscall::FsRead {
                path: args::<Path>(name, arguments)?.path,
            },
            "fs_write" => {
                let a: FsWrite = args(name, arguments)?;
                Syscall::FsWrite {
                    path: a.path,
                    content: a.content,
                }
            }
            "fs_list" => Syscall::FsList {
                path: args::<Path>(name, arguments)?.path,
            },
            "exec" => {
                let a: Exec = args(name, arguments)?;
                Syscall::Exec {
                    program: a.program,
                    args: a.args,
                    timeout_ms: a.timeout_ms,
                }
            }
            "mem_write" => Syscall::MemWrite {
                text: args::<MemWrite>(name, arguments)?.text,
            },
            "mem_read" => {
                let a: MemRead = args(name, arguments)?;
                Syscall::MemRead { query: a.query, k: a.k }
            }
            "sleep" => Syscall::Sleep {
                ms: args::<Sleep>(name, arguments)?.ms,
            },
            "board_read" => Syscall::BoardRead {
                key: args::<BoardRead>(name, arguments)?.key,
            },
            "board_write" => {
                let a: BoardWrite = args(name, arguments)?;
                Syscall::BoardWrite {
                    key: a.key,
                    value: a.value,
                }
            }
            "publish" => {
                let a: Publish = args(name, arguments)?;
                Syscall::Publish {
                    topic: a.topic,
                    text: a.text,
                }
            }
            _ => {
                if !arguments.is_object() && !arguments.is_null() {
                    return Err(SyscallError::Arguments {
                        name: name.to_string(),
                        reason: "the arguments must be a JSON object".into(),
                    });
                }
                let arguments = if arguments.is_null() { json!({}) } else { arguments };
                Syscall::Tool {
                    name: name.to_string(),
                    arguments: arguments.to_string(),
                }
            }
        })
    }
}

/// One call made during a turn, as recorded in the turn's history entry and, while the turn
/// runs, in the journal (a redelivered task replays recorded steps instead of running them
/// again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// What the model wrote before the call.
    pub text: String,
    /// The call's name; empty when its body could not be parsed.
    pub name: String,
    /// The arguments as JSON text, or the raw body when it could not be parsed.
    pub arguments: String,
    /// The result as JSON text, or the error the model was shown.
    pub result: Result<String, SyscallError>,
    /// How long the call took.
    pub duration_ms: u64,
    /// Prompt tokens of the generation that wrote the call (each step's prompt holds every
    /// earlier call and result).
    pub prompt_tokens: u32,
}

/// What a call returns to the model when it fails. Serialisable: a step's result is recorded
/// in the journal with the turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SyscallError {
    /// The text inside `<tool_call>` is not a JSON object with a string `name`.
    #[error("malformed call: {0}")]
    Malformed(String),
    /// No system call or tool of this name exists.
    #[error("there is no call named `{0}`")]
    Unknown(String),
    /// The arguments do not match the call's schema.
    #[error("bad arguments for `{name}`: {reason}")]
    Arguments { name: String, reason: String },
    /// The agent may not use this call (it is not in its `tools`).
    #[error("`{0}` is not among this agent's tools")]
    NotAllowed(String),
    /// The call is allowed but this use of it is not (a path outside the file root, a program
    /// not on the exec list, a message to an unknown agent).
    #[error("denied: {0}")]
    Denied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("i/o: {0}")]
    Io(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The call ran and failed (a tool's own error, a program that could not start, memory
    /// that is unavailable).
    #[error("{0}")]
    Failed(String),
}

/// Longest name or path a call may give (agent names, file paths, programs).
pub const MAX_NAME_CHARS: usize = 256;

/// The JSON Schema of a system call's arguments (`None` for names not in [`SYSCALLS`]).
pub fn schema(name: &str) -> Option<Value> {
    let string = |description: &str| json!({"type": "string", "description": description});
    // Names and paths are short: the bound also ends a call whose string the model would
    // otherwise repeat until it runs out of tokens (greedy decoding loops).
    let short = |description: &str| json!({"type": "string", "description": description, "maxLength": MAX_NAME_CHARS});
    let object = |properties: Value, required: &[&str]| json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false});
    Some(match name {
        "exit" => object(json!({"result": string("the final answer")}), &["result"]),
        "spawn_agent" => object(
            json!({
                "role": short("the role of the new agent"),
                "name": short("a name for the new agent"),
                "task": string("what the new agent should do")
            }),
            &["role", "name", "task"],
        ),
        "send_msg" => object(
            json!({"to": short("the name of the receiving agent"), "text": string("the message")}),
            &["to", "text"],
        ),
        "recv_msg" => object(
            json!({"timeout_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000, "description": "how long to wait, in milliseconds"}}),
            &[],
        ),
        "net_fetch" => object(
            json!({"url": {"type": "string", "description": "an http or https URL", "maxLength": 2048}}),
            &["url"],
        ),
        "fs_read" => object(
            json!({"path": short("a relative path under the work directory")}),
            &["path"],
        ),
        "fs_write" => object(
            json!({"path": short("a relative path under the work directory"), "content": string("the whole new text of the file")}),
            &["path", "content"],
        ),
        "fs_list" => object(
            json!({"path": short("a relative directory path; \".\" is the work directory")}),
            &["path"],
        ),
        "exec" => object(
            json!({
                "program": short("the program to run"),
                "args": {"type": "array", "items": {"type": "string"}, "description": "its arguments"},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000, "description": "wall-clock limit in milliseconds"}
            }),
            &["program"],
        ),
        "mem_write" => object(json!({"text": string("what to remember")}), &["text"]),
        "mem_read" => object(
            json!({"query": string("what to look for"), "k": {"type": "integer", "minimum": 1, "maximum": 8, "description": "how many notes"}}),
            &["query"],
        ),
        "sleep" => object(
            json!({"ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000, "description": "milliseconds to wait"}}),
            &["ms"],
        ),
        "board_read" => object(json!({"key": short("the entry's key")}), &["key"]),
        "board_write" => object(
            json!({"key": short("the entry's key"), "value": string("what to write")}),
            &["key", "value"],
        ),
        "publish" => object(
            json!({"topic": short("the topic, words separated by dots"), "text": string("the message")}),
            &["topic", "text"],
        ),
        _ => return None,
    })
}

/// One line saying what a system call does, for the prompt.
pub fn description(name: &str) -> Option<&'static str> {
    Some(match name {
        "exit" => "Finish the task and give the final answer.",
        "spawn_agent" => "Start a helper agent of a given role on a task; its answer arrives as a message.",
        "send_msg" => "Send a message to another agent.",
        "recv_msg" => "Wait for the next message from another agent.",
        "net_fetch" => "Fetch a web page or file by URL.",
        "fs_read" => "Read a text file.",
        "fs_write" => "Write a text file (replaces it).",
        "fs_list" => "List the entries of a directory.",
        "exec" => "Run a program with arguments and get its exit code and output.",
        "mem_write" => "Store a note in long-term memory.",
        "mem_read" => "Look up notes in long-term memory.",
        "sleep" => "Wait for some milliseconds.",
        "board_read" => "Read an entry of the team's shared blackboard.",
        "board_write" => "Write an entry of the team's shared blackboard.",
        "publish" => "Send a message to every agent subscribed to a topic.",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syscall_has_a_schema_and_a_description() {
        for name in SYSCALLS {
            let schema = schema(name).unwrap_or_else(|| panic!("{name} has no schema"));
            assert_eq!(schema["type"], "object");
            assert!(description(name).is_some(), "{name} has no description");
        }
        assert!(schema("calculator").is_none());
    }

    #[test]
    fn arguments_are_checked_against_the_call() {
        let call = Syscall::from_call("fs_read", json!({"path": "a.txt"})).unwrap();
        assert_eq!(call, Syscall::FsRead { path: "a.txt".into() });
        assert_eq!(call.name(), "fs_read");
        let wrong_type = Syscall::from_call("sleep", json!({"ms": "soon"})).unwrap_err();
        assert!(matches!(wrong_type, SyscallError::Arguments { .. }), "{wrong_type:?}");
        let extra = Syscall::from_call("fs_read", json!({"path": "a", "mode": "r"})).unwrap_err();
        assert!(extra.to_string().contains("mode"), "{extra}");
        let missing = Syscall::from_call("fs_write", json!({"path": "a"})).unwrap_err();
        assert!(missing.to_string().contains("content"), "{missing}");
        let long = Syscall::from_call("fs_read", json!({"path": "a".repeat(MAX_NAME_CHARS + 1)})).unwrap_err();
        assert!(matches!(long, SyscallError::Arguments { .. }), "{long:?}");
        let exec = Syscall::from_call("exec", json!({"program": "echo"})).unwrap();
        assert_eq!(
            exec,
            Syscall::Exec {
                program: "echo".into(),
                args: vec![],
                timeout_ms: None
            }
        );
    }

    #[test]
    fn other_names_are_user_tools_with_object_arguments() {
        let call = Syscall::from_call("calculator", json!({"expression": "2+2"})).unwrap();
        assert_eq!(
            call,
            Syscall::Tool {
                name: "calculator".into(),
                arguments: r#"{"expression":"2+2"}"#.into()
            }
        );
        assert_eq!(call.name(), "calculator");
        let bad = Syscall::from_call("calculator", json!([1, 2])).unwrap_err();
        assert!(matches!(bad, SyscallError::Arguments { .. }));
        let none = Syscall::from_call("clock", Value::Null).unwrap();
        assert_eq!(
            none,
            Syscall::Tool {
                name: "clock".into(),
                arguments: "{}".into()
            }
        );
    }
}
