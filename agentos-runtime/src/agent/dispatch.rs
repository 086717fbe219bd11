//! The dispatcher: the one checkpoint every system call passes, then its driver.
//!
//! [`dispatch`] runs, for every call a model (or [`AgentHandle::call`]) makes:
//! 1. the handle check: the caller is the agent registered under its name now (a handle kept
//!    past its agent's stop cannot act as the agent that took the name since);
//! 2. the tools check: the call is among the agent's declared `tools`;
//! 3. the policy check ([`agentos_security::capability::check`]) against the agent's
//!    capabilities, and for a gated call the approver's decision (a timeout or no approver
//!    denies);
//! 4. the driver, under `SyscallConfig::call_timeout`;
//! 5. one audit record: agent, call, SHA-256 of the arguments, decision and reason, outcome,
//!    duration. If the record cannot be written the call's result is an error (the call has
//!    run by then; the failure is logged).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentos_security::audit::{AuditEntry, Decision, digest_args};
use agentos_security::capability::{self, Capabilities, Request, Resolved, Verdict};
use tokio::time::Instant;

use agentos_kernel::KernelMsg;
use serde_json::{Value, json};

use crate::agent::handle::AgentHandle;
use crate::agent::journal::{Completion, InboxChange};
use crate::agent::record::SharedRecord;
use crate::agent::spawn::Lineage;
use crate::agent::{AgentSpec, Delivered, TaskOutcome};
use crate::error::RuntimeError;
use crate::rpc;
use crate::security::{Approval, ApprovalRequest};
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
/// The `exec` list shown is the agent's own (`exec` in its capabilities).
pub(crate) fn describe_tools(
    spec: &AgentSpec,
    capabilities: &Capabilities,
    system: &System,
) -> Result<Vec<ToolDescription>, RuntimeError> {
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
                if name == "exec" && !capabilities.exec.is_empty() {
                    // Only these may run: offering others would let the model write a call
                    // that is always denied.
                    parameters["properties"]["program"]["enum"] = json!(capabilities.exec);
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

/// Runs `call` for `caller`: the checks, then the driver within the call timeout, then the
/// audit record.
pub(crate) async fn dispatch(caller: &Caller<'_>, call: &Syscall) -> Result<Value, SyscallError> {
    let started = Instant::now();
    let (decision, reason, result) = match admit(caller, call).await {
        Err((decision, e)) => (decision, e.to_string(), Err(e)),
        Ok(admitted) => {
            let limit = caller.system.syscalls.call_timeout;
            let result = match tokio::time::timeout(limit, run(caller, call, admitted.file)).await {
                Ok(result) => result,
                Err(_) => Err(SyscallError::Timeout(limit.as_millis() as u64)),
            };
            (admitted.decision, admitted.reason, result)
        }
    };
    let arguments = digest_args(&serde_json::to_value(call).unwrap_or(Value::Null));
    let duration_us = started.elapsed().as_micros() as u64;
    audit(caller, call.name(), arguments, decision, reason, &result, duration_us).await?;
    result
}

/// Records a call the model wrote that could not be parsed into a system call (malformed JSON,
/// bad arguments), as denied, and returns its error: every call the model makes is audited.
pub(crate) async fn reject(
    caller: &Caller<'_>,
    name: &str,
    raw: &str,
    error: SyscallError,
) -> Result<Value, SyscallError> {
    let name = if name.is_empty() { "(malformed)" } else { name };
    let arguments = digest_args(&Value::String(raw.to_string()));
    let reason = truncate(&error.to_string(), 200);
    let result = Err(error);
    audit(caller, name, arguments, Decision::Denied, reason, &result, 0).await?;
    result
}

/// Appends the record of one call. A record that cannot be written fails the call (and is
/// logged): nothing is answered unaudited.
async fn audit(
    caller: &Caller<'_>,
    call: &str,
    args_sha256: String,
    decision: Decision,
    reason: String,
    result: &Result<Value, SyscallError>,
    duration_us: u64,
) -> Result<(), SyscallError> {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {}", truncate(&e.to_string(), 200)),
    };
    let entry = AuditEntry {
        agent: caller.record.name.clone(),
        call: call.to_string(),
        args_sha256,
        decision,
        reason,
        outcome,
        duration_us,
    };
    caller.system.audit.append(entry).await.map_err(|e| {
        tracing::error!(agent = %caller.record.name, call, error = %e, "a system call could not be audited");
        SyscallError::Io(format!("the audit log could not be written: {e}"))
    })
}

fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A call that may run: how it was decided, and the file grant it uses.
struct Admitted {
    decision: Decision,
    reason: String,
    file: Option<Resolved>,
}

/// The checkpoint: may this agent make this call? A refusal carries how it was decided
/// (`Denied` by the checks, `Refused` by an approver).
async fn admit(caller: &Caller<'_>, call: &Syscall) -> Result<Admitted, (Decision, SyscallError)> {
    let denied = |e| (Decision::Denied, e);
    let record = caller.record;
    let live = caller.system.record(&record.name);
    if !live.is_some_and(|live| Arc::ptr_eq(&live, record)) {
        return Err(denied(SyscallError::Denied(format!(
            "this handle's agent `{}` is no longer running; a handle acts only as its own agent",
            record.name
        ))));
    }
    let name = call.name();
    if !record.tools.iter().any(|tool| tool == name) {
        return Err(denied(
            match SYSCALLS.contains(&name) || caller.system.tools.contains_key(name) {
                true => SyscallError::NotAllowed(name.to_string()),
                false => SyscallError::Unknown(name.to_string()),
            },
        ));
    }
    let host;
    let request = match call {
        Syscall::FsRead { path } => Request::FileRead { path },
        Syscall::FsList { path } => Request::FileList { path },
        Syscall::FsWrite { path, .. } => Request::FileWrite { path },
        Syscall::Exec { program, .. } => Request::Exec { program },
        Syscall::NetFetch { url } => {
            host = url_host(url).map_err(denied)?;
            Request::Fetch { host: &host }
        }
        Syscall::SendMsg { to, .. } => Request::Message { to },
        Syscall::Publish { .. } => Request::Publish,
        Syscall::SpawnAgent { role, .. } => Request::Spawn {
            role,
            children: record.children.load(Ordering::SeqCst),
        },
        _ => Request::Call,
    };
    let admitted = match capability::check(&record.capabilities, name, request) {
        Verdict::Allow { file } => Ok(Admitted {
            decision: Decision::Allowed,
            reason: "granted".into(),
            file,
        }),
        Verdict::Deny(reason) => Err(denied(SyscallError::Denied(reason))),
        Verdict::Approve { gate, file } => {
            let Some(approver) = caller.system.approver() else {
                return Err(denied(SyscallError::Denied(format!(
                    "`{name}` needs approval ({gate:?}) and no approver is registered"
                ))));
            };
            let request = ApprovalRequest {
                agent: record.name.clone(),
                call: name.to_string(),
                arguments: serde_json::to_string(call).unwrap_or_default(),
                gate,
            };
            let wait = caller.system.security.approval_timeout;
            match tokio::time::timeout(wait, approver.decide(request)).await {
                Ok(Approval::Approve) => Ok(Admitted {
                    decision: Decision::Approved,
                    reason: format!("approved ({gate:?})"),
                    file,
                }),
                Ok(Approval::Deny(reason)) => Err((
                    Decision::Refused,
                    SyscallError::Denied(format!("the approver refused: {reason}")),
                )),
                Err(_) => Err((
                    Decision::Refused,
                    SyscallError::Denied(format!("no approval within {} ms", wait.as_millis())),
                )),
            }
        }
    }?;
    if let Syscall::SpawnAgent { name: child, .. } = call {
        if caller.system.name_reserved(child, record.pid) {
            return Err(denied(SyscallError::Denied(format!(
                "`{child}` is a name the policy or another agent's peers refer to; choose another"
            ))));
        }
        // Counted once allowed, before the child starts, so concurrent calls cannot both pass
        // (a start that fails later keeps its count: the limits are on attempts).
        let limit = record.capabilities.spawn.max_children;
        let mine = record
            .children
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1));
        if mine.is_err() {
            return Err(denied(SyscallError::Denied(format!(
                "this agent may spawn at most {limit} agents"
            ))));
        }
        let tree = record
            .spawn_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1));
        if tree.is_err() {
            return Err(denied(SyscallError::Denied(
                "the agents this agent's tree may spawn are used up".into(),
            )));
        }
    }
    Ok(admitted)
}

/// The host `net_fetch` would contact first (lower case, without brackets), for the policy
/// check; the fetch driver checks every hop again, resolved addresses included.
fn url_host(url: &str) -> Result<String, SyscallError> {
    let lower = url.trim_start().to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(SyscallError::Denied(format!(
            "`{url}`: only http and https URLs are fetched"
        )));
    }
    let uri: ureq::http::Uri = url.trim().parse().map_err(|e| SyscallError::Arguments {
        name: "net_fetch".into(),
        reason: format!("`{url}` is not a URL: {e}"),
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(SyscallError::Denied(format!(
            "`{url}`: only http and https URLs are fetched"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| SyscallError::Denied(format!("`{url}` names no host")))?;
    Ok(host.trim_matches(|c| c == '[' || c == ']').to_ascii_lowercase())
}

/// The model-facing form of a driver's error.
pub(crate) fn driver_error(e: agentos_security::DriverError) -> SyscallError {
    use agentos_security::DriverError;
    match e {
        DriverError::Denied(m) => SyscallError::Denied(m),
        DriverError::NotFound(m) => SyscallError::NotFound(m),
        DriverError::Io(m) => SyscallError::Io(m),
        DriverError::Timeout(ms) => SyscallError::Timeout(ms),
        DriverError::Failed(m) => SyscallError::Failed(m),
    }
}

async fn run(caller: &Caller<'_>, call: &Syscall, file: Option<Resolved>) -> Result<Value, SyscallError> {
    let config = &caller.system.syscalls;
    let caps = &caller.record.capabilities;
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
        Syscall::NetFetch { url } => drivers::net_fetch(config, &caps.net, url).await,
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
        Syscall::FsRead { path } => drivers::fs_read(config, granted(file, path)?).await,
        Syscall::FsWrite { path, content } => drivers::fs_write(config, granted(file, path)?, path, content).await,
        Syscall::FsList { path } => drivers::fs_list(config, granted(file, path)?, path).await,
        Syscall::Exec {
            program,
            args,
            timeout_ms,
        } => {
            let limits = &caller.system.security.exec;
            drivers::exec(config, limits, caps.work_dir(), program, args, *timeout_ms).await
        }
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

/// The grant the policy check resolved a file call's path to.
fn granted(file: Option<Resolved>, path: &str) -> Result<Resolved, SyscallError> {
    file.ok_or_else(|| SyscallError::Denied(format!("`{path}` is under no file grant of this agent")))
}

/// `spawn_agent`: starts the child (supervised like every agent), journals its task, and
/// forwards its answer to the caller as a message from the child once it is done.
async fn spawn(caller: &Caller<'_>, role: &str, name: &str, task: &str) -> Result<Value, SyscallError> {
    let system = caller.system;
    let parent = Lineage {
        ceiling: caller.record.capabilities.clone(),
        spawn_budget: caller.record.spawn_budget.clone(),
    };
    let start = system
        .roles
        .spawn(system, role, name.to_string(), parent)
        .ok_or_else(|| {
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
