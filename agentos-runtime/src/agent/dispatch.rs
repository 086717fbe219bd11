//! The dispatcher: the one checkpoint every system call passes, then its driver.
//!
//! [`admit`] decides whether the calling agent may make the call at all; today that is its
//! declared `tools` list (a call it was not given is refused, whatever the model writes). The
//! capability policy of the isolation work sits in the same function, so no call can reach a
//! driver around it. Then the driver runs under `SyscallConfig::call_timeout`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use agentos_kernel::KernelMsg;
use serde_json::{Value, json};

use crate::agent::handle::AgentHandle;
use crate::agent::journal::{Completion, InboxChange};
use crate::agent::record::SharedRecord;
use crate::agent::{AgentSpec, Delivered, TaskOutcome};
use crate::error::RuntimeError;
use crate::rpc;
use crate::sync::{Area, Put};
use crate::syscall::wire::{ToolDescription, call_grammar, check_schema};
use crate::syscall::{SYSCALLS, Syscall, SyscallError, description, drivers, schema};
use crate::system::System;

/// Most pages `mem_read` returns.
const MAX_RECALL: usize = 8;
/// Pages `mem_read` returns when the call does not say.
const DEFAULT_RECALL: usize = 3;

/// Who is calling: the agent's record (its name and tools) and the system it runs in.
pub(crate) struct Caller<'a> {
    pub record: &'a SharedRecord,
    pub system: &'a Arc<System>,
}

/// The tools `spec` names, as its prompt shows them; an error names the first that is neither
/// a system call nor a tool registered with the system.
pub(crate) fn describe_tools(spec: &AgentSpec, system: &System) -> Result<Vec<ToolDescription>, RuntimeError> {
    spec.tools
        .iter()
        .map(|name| {
            if let (Some(mut parameters), Some(text)) = (schema(name), description(name)) {
                if name == "spawn_agent" {
                    // The grammar then lets the model name only roles that exist (an empty
                    // list would be a grammar nothing matches).
                    let roles = system.roles.names();
                    if roles.is_empty() {
                        return Err(RuntimeError::NoRoles {
                            agent: spec.name.clone(),
                        });
                    }
                    parameters["properties"]["role"]["enum"] = json!(roles);
                }
                if name == "exec" && !system.syscalls.exec_allow.is_empty() {
                    // Only these may run: offering others would let the model write a call
                    // that is always denied.
                    parameters["properties"]["program"]["enum"] = json!(system.syscalls.exec_allow);
                }
                return Ok(ToolDescription {
                    name: name.clone(),
                    description: text.to_string(),
                    parameters,
                });
            }
            match system.tools.get(name) {
                Some(tool) => Ok(ToolDescription {
                    name: name.clone(),
                    description: tool.description().to_string(),
                    parameters: tool.parameters(),
                }),
                None => Err(RuntimeError::UnknownTool {
                    agent: spec.name.clone(),
                    tool: name.clone(),
                }),
            }
        })
        .collect()
}

/// Compiles an agent's call grammars once with the kernel, so that a tool whose schema the
/// grammar engine cannot follow (an MCP server's, say) is an error at spawn instead of a failed
/// generation at every turn. Without a kernel (or while it restarts) nothing is checked.
pub(crate) async fn check_call_grammar(
    system: &System,
    agent: &str,
    tools: &[ToolDescription],
) -> Result<(), RuntimeError> {
    if tools.is_empty() || !system.syscalls.constrained_calls {
        return Ok(());
    }
    let Some(kernel) = system.kernel() else {
        return Ok(());
    };
    // Lazy (free text until `<tool_call>`) and forced: the two forms a turn uses.
    for forced in [false, true] {
        let constraint = call_grammar(tools, forced);
        let check = |reply| KernelMsg::CheckGrammar { constraint, reply };
        rpc::call(
            &kernel,
            "the kernel (grammar check)",
            system.call_timeout,
            check,
            || RuntimeError::KernelLost,
        )
        .await?
        .map_err(|e| RuntimeError::ToolGrammar {
            agent: agent.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Runs `call` for `caller`: the policy check, then the driver, within the call timeout.
pub(crate) async fn dispatch(caller: &Caller<'_>, call: &Syscall) -> Result<Value, SyscallError> {
    admit(caller, call)?;
    let limit = caller.system.syscalls.call_timeout;
    match tokio::time::timeout(limit, run(caller, call)).await {
        Ok(result) => result,
        Err(_) => Err(SyscallError::Timeout(limit.as_millis() as u64)),
    }
}

/// The checkpoint: may this agent make this call?
fn admit(caller: &Caller<'_>, call: &Syscall) -> Result<(), SyscallError> {
    let name = call.name();
    if !caller.record.tools.iter().any(|tool| tool == name) {
        return Err(
            match SYSCALLS.contains(&name) || caller.system.tools.contains_key(name) {
                true => SyscallError::NotAllowed(name.to_string()),
                false => SyscallError::Unknown(name.to_string()),
            },
        );
    }
    Ok(())
}

async fn run(caller: &Caller<'_>, call: &Syscall) -> Result<Value, SyscallError> {
    let config = &caller.system.syscalls;
    let handle = || AgentHandle::new(caller.record.clone(), caller.system.clone());
    match call {
        Syscall::Exit { result } => Ok(json!({ "result": result })),
        Syscall::SpawnAgent { role, name, task } => spawn(caller, role, name, task).await,
        Syscall::RecvMsg { timeout_ms } => {
            let wait = timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(config.recv_timeout)
                .min(config.max_sleep);
            receive(caller, wait).await
        }
        Syscall::NetFetch { url } => drivers::net_fetch(config, url).await,
        Syscall::SendMsg { to, text } => {
            let target = caller
                .system
                .record(to)
                .ok_or_else(|| SyscallError::NotFound(format!("no agent named `{to}`")))?;
            let target = AgentHandle::new(target, caller.system.clone());
            if target.name() == caller.record.name {
                return Err(SyscallError::Denied("an agent cannot send a message to itself".into()));
            }
            let task = handle().send(&target, text.clone()).await.map_err(failed)?;
            Ok(json!({ "sent_to": to, "task": task.0 }))
        }
        Syscall::FsRead { path } => drivers::fs_read(config, path).await,
        Syscall::FsWrite { path, content } => drivers::fs_write(config, path, content).await,
        Syscall::FsList { path } => drivers::fs_list(config, path).await,
        Syscall::Exec {
            program,
            args,
            timeout_ms,
        } => drivers::exec(config, program, args, *timeout_ms).await,
        Syscall::MemWrite { text } => {
            let pages = handle().remember(text.clone()).await.map_err(failed)?;
            Ok(json!({ "pages": pages.len() }))
        }
        Syscall::MemRead { query, k } => {
            let k = k.unwrap_or(DEFAULT_RECALL).clamp(1, MAX_RECALL);
            let pages = handle().recall(query.clone(), k).await.map_err(failed)?;
            let notes: Vec<&str> = pages.iter().map(|page| page.text.trim()).collect();
            Ok(json!({ "notes": notes }))
        }
        Syscall::BoardRead { key } => {
            let entry = handle().read_board(&Area::Public, key).await.map_err(failed)?;
            let entry = entry.ok_or_else(|| SyscallError::NotFound(format!("no blackboard entry `{key}`")))?;
            let others: Vec<String> = entry
                .siblings
                .iter()
                .map(|s| match &s.value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect();
            Ok(json!({
                "key": key,
                "value": entry.text(),
                "author": entry.author,
                "version": entry.lamport,
                "conflicting_values": others,
            }))
        }
        Syscall::BoardWrite { key, value } => {
            let value = Value::String(value.clone());
            match handle().write_board(&Area::Public, key, value).await.map_err(failed)? {
                Put::Written(e) => Ok(json!({ "written": key, "version": e.lamport })),
                Put::Conflict(e) => Ok(json!({
                    "written": key,
                    "conflict": "another agent wrote this entry since you last read it: both values are kept; read it, then write the merged value",
                    "version": e.lamport,
                })),
            }
        }
        Syscall::Publish { topic, text } => {
            let published = handle().publish(topic, text.clone()).await.map_err(failed)?;
            let delivered: Vec<&str> = published.delivered.iter().map(|(name, _)| name.as_str()).collect();
            Ok(json!({ "topic": topic, "seq": published.seq, "delivered_to": delivered }))
        }
        Syscall::Sleep { ms } => {
            let wait = Duration::from_millis(*ms).min(config.max_sleep);
            tokio::time::sleep(wait).await;
            Ok(json!({ "slept_ms": wait.as_millis() as u64 }))
        }
        Syscall::Tool { name, arguments } => {
            let tool = caller
                .system
                .tools
                .get(name)
                .ok_or_else(|| SyscallError::Unknown(name.clone()))?;
            let arguments: Value =
                serde_json::from_str(arguments).map_err(|e| SyscallError::Malformed(format!("arguments: {e}")))?;
            check_schema(&tool.parameters(), &arguments).map_err(|reason| SyscallError::Arguments {
                name: name.clone(),
                reason,
            })?;
            tool.call(arguments).await.map_err(SyscallError::Failed)
        }
    }
}

/// `spawn_agent`: starts the child (supervised like every agent), journals its task, and
/// forwards its answer to the caller as a message from the child once it is done.
async fn spawn(caller: &Caller<'_>, role: &str, name: &str, task: &str) -> Result<Value, SyscallError> {
    let system = caller.system;
    let start = system.roles.spawn(system, role, name.to_string()).ok_or_else(|| {
        SyscallError::NotFound(format!(
            "no role `{role}`; the roles are: {}",
            system.roles.names().join(", ")
        ))
    })?;
    let child = start.await.map_err(|e| match e {
        RuntimeError::NameTaken(name) => SyscallError::Denied(format!("an agent named `{name}` exists already")),
        other => failed(other),
    })?;
    let stream = child.stream(task.to_string()).await.map_err(failed)?;
    let task_id = stream.task_id();
    let parent = AgentHandle::new(caller.record.clone(), system.clone());
    tokio::spawn(async move {
        let answer = match stream.response().await {
            Ok(response) => response.text,
            Err(e) => format!("(the task failed: {e})"),
        };
        if let Err(e) = child.send(&parent, answer).await {
            tracing::warn!(child = %child.name(), error = %e, "could not deliver a spawned agent's answer");
        }
    });
    Ok(json!({ "spawned": name, "role": role, "task": task_id.0 }))
}

/// `recv_msg`: takes the oldest message waiting for the caller, waiting up to `wait` for one.
/// Taking it records the delivery in the journal with the message in the agent's inbox, so a
/// crash before the step is recorded shows it again (as an earlier message) instead of losing it.
/// The record is written by a task of its own: a call cut off by the dispatcher's timeout while
/// it waits for the disk still records the message it took out of the queue.
async fn receive(caller: &Caller<'_>, wait: Duration) -> Result<Value, SyscallError> {
    let record = caller.record;
    let journal = &caller.system.journal;
    let deadline = Instant::now() + wait;
    let mut queued = record.watch_queue();
    loop {
        if let Some((id, from, text)) = record.take_delivery() {
            let delivered = Delivered { from, text };
            let inbox = journal.encode(&delivered).map_err(failed)?;
            let completion = Completion {
                checkpoint: None,
                turn: None,
                inbox: InboxChange::Add(inbox),
            };
            let (journal, agent) = (journal.clone(), record.name.clone());
            let write =
                tokio::spawn(async move { journal.complete(id, &agent, &TaskOutcome::Delivered, completion).await });
            match write.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(SyscallError::Io(format!("the message could not be recorded: {e}"))),
                Err(e) => return Err(SyscallError::Failed(format!("recording the message failed: {e}"))),
            }
            return Ok(json!({ "from": delivered.from, "text": delivered.text }));
        }
        match tokio::time::timeout_at(deadline, queued.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(SyscallError::Failed("the agent is stopping".into())),
            Err(_) => return Err(SyscallError::Timeout(wait.as_millis() as u64)),
        }
    }
}

fn failed(e: RuntimeError) -> SyscallError {
    SyscallError::Failed(e.to_string())
}
