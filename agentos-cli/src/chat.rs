//! `agentos chat`: an interactive session with a team.
//!
//! Each message goes to the team ([`Team::ask`]): the workers answer at once, then the
//! synthesiser. Text streams as it is generated, one agent at a time: the first agent to
//! speak is shown live, the others' text is held until it finishes (their generations run all
//! the same), so lines never interleave. Ctrl-C during an answer cancels every generation in
//! flight (the kernel frees their KV); a second Ctrl-C before the answer ends exits. At the
//! prompt, Ctrl-C twice or Ctrl-D exits.
//!
//! When a team file gives an agent approval gates (`approve = ["exec"]`), each gated call is a
//! question at the terminal (`[approve] ... Allow? [y/N]`) while the team answers; anything
//! but `y` or `yes` refuses it, and the refusal is the call's result.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use agentos_kernel::cli::ModelArgs;
use agentos_runtime::security::{Approval, ApprovalRequest, Approver, approver_fn};
use agentos_runtime::{AgentHandle, AgentOS, PulseConfig, RuntimeConfig};
use rustyline::error::ReadlineError;
use tokio_util::sync::CancellationToken;

use crate::error::{CliError, Result};
use crate::team::{Team, TeamEvent, TeamSpec};

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// A team file (TOML, see `agentos run --help`) [default: a researcher and a critic, then a writer]
    #[arg(long, value_name = "FILE")]
    pub team: Option<PathBuf>,
    /// Where the line history is kept [default: chat_history in $AGENTOS_HOME or the user's cache]
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

const HELP: &str = "\
/help             this list
/agents           the agents, their state and tokens used
/stats            kernel and scheduler figures
/memory [AGENT]   an agent's memory window, or the shared page table
/tools            the tools each agent may call
/spawn ROLE       start another worker of a role of this team
/kill NAME        stop an agent and take it out of the team
/model            the model and the device it runs on
/sync             the sync pulses between the workers: drift before and after, contradictions
/blackboard [PREFIX]  the shared blackboard's entries (a pulse writes each answer there)
/quit             leave (also Ctrl-D, or Ctrl-C twice at the prompt)
Anything else is a message to the team. Ctrl-C during an answer cancels it.";

/// Runs the REPL until the user leaves.
pub async fn run(args: ChatArgs) -> Result<()> {
    let spec = match &args.team {
        Some(path) => TeamSpec::load(path)?,
        None => TeamSpec::default_team(),
    };
    let mut config = RuntimeConfig::default();
    let gated = spec
        .members
        .iter()
        .any(|m| m.spec.capabilities.as_ref().is_some_and(|c| !c.approval.is_empty()));
    if gated {
        config.security.approver = Some(terminal_approver());
        // The person may be reading the answer: give them time.
        config.security.approval_timeout = std::time::Duration::from_secs(600);
    }
    let os = crate::boot::start(&args.model, config).await?;
    let history = args.history.clone().or_else(default_history_path);
    let result = session(&os, &spec, history).await;
    os.shutdown().await?;
    result
}

async fn session(os: &AgentOS, spec: &TeamSpec, history: Option<PathBuf>) -> Result<()> {
    let mut team = Team::spawn(os, spec).await?;
    let names: Vec<String> = team.workers().iter().map(|w| w.name().to_string()).collect();
    println!(
        "agentos chat: {} answer{}{}. /help lists the commands.",
        names.join(" and "),
        if names.len() == 1 { "s" } else { "" },
        team.synthesizer()
            .map(|s| format!(", then {} writes the answer", s.name()))
            .unwrap_or_default()
    );
    let mut editor = new_editor(history.as_deref())?;
    let mut spawned = 0usize;
    let mut interrupted_once = false;
    loop {
        let (back, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline("you> ");
            (editor, line)
        })
        .await
        .map_err(|e| CliError::new(format!("the line editor stopped: {e}")))?;
        editor = back;
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                if interrupted_once {
                    break;
                }
                interrupted_once = true;
                println!("(Ctrl-C again or /quit to leave)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(CliError::new(format!("cannot read the terminal: {e}"))),
        };
        interrupted_once = false;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        if let Some(command) = line.strip_prefix('/') {
            match slash(os, spec, &mut team, &mut spawned, command).await {
                Flow::Continue => continue,
                Flow::Quit => break,
            }
        }
        if answer(os, &team, line).await == Flow::Quit {
            break;
        }
    }
    Ok(())
}

/// Asks the person at the terminal about each gated call, one question at a time (the line
/// editor is idle while the team answers).
fn terminal_approver() -> std::sync::Arc<dyn Approver> {
    let one_at_a_time = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    approver_fn(move |request: ApprovalRequest| {
        let one_at_a_time = one_at_a_time.clone();
        async move {
            let _turn = one_at_a_time.lock().await;
            let question = format!(
                "\n[approve] {} wants to call {} with {} (gate {:?}). Allow? [y/N] ",
                request.agent, request.call, request.arguments, request.gate
            );
            let asked = tokio::task::spawn_blocking(move || {
                print!("{question}");
                let _ = std::io::stdout().flush();
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await;
            match asked {
                Ok(Ok(line)) => terminal_decision(&line),
                Ok(Err(e)) => Approval::Deny(format!("the terminal could not be read: {e}")),
                Err(e) => Approval::Deny(format!("the question stopped: {e}")),
            }
        }
    })
}

/// `y` or `yes` (any case) approves; anything else, an empty line included, refuses.
fn terminal_decision(answer: &str) -> Approval {
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Approval::Approve,
        _ => Approval::Deny("the user said no".into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// Sends `task` to the team and prints the answer as it streams; Ctrl-C cancels it, a second
/// Ctrl-C quits.
async fn answer(os: &AgentOS, team: &Team, task: &str) -> Flow {
    let cancel = CancellationToken::new();
    let mut printer = Printer::default();
    let outcome = {
        let mut on_event = |event: TeamEvent| printer.show(event);
        let asked = team.ask(task, &cancel, &mut on_event);
        tokio::pin!(asked);
        let mut interrupts = 0;
        loop {
            tokio::select! {
                outcome = &mut asked => break outcome,
                signal = tokio::signal::ctrl_c() => {
                    if signal.is_err() {
                        continue;
                    }
                    interrupts += 1;
                    if interrupts >= 2 {
                        println!();
                        return Flow::Quit;
                    }
                    cancel.cancel();
                }
            }
        }
    };
    printer.finish();
    match outcome {
        Ok(_) if team.workers().len() >= 2 => {
            // The workers answered alone: a pulse shares what each said with the others, for
            // the next question (it waits for turn boundaries and cuts nothing).
            let config = PulseConfig {
                deadline: std::time::Duration::from_secs(5),
                ..PulseConfig::default()
            };
            if let Err(e) = os.pulse(team.workers(), &config).await {
                tracing::debug!(error = %e, "the sync pulse after the answer failed");
            }
        }
        Ok(_) => {}
        Err(_) if cancel.is_cancelled() => println!("[cancelled]"),
        Err(e) => println!("[error: {e}]"),
    }
    Flow::Continue
}

/// Prints the team's text one agent at a time: the agent speaking now is shown live, the
/// text of the others waits in order of their first word.
#[derive(Default)]
struct Printer {
    speaking: Option<String>,
    waiting: BTreeMap<String, Held>,
    /// Agents in the order they started to speak (the order the held ones are shown in).
    order: Vec<String>,
}

#[derive(Default)]
struct Held {
    text: String,
    done: Option<Option<String>>,
}

impl Printer {
    fn show(&mut self, event: TeamEvent) {
        let agent = match &event {
            TeamEvent::Text { agent, .. }
            | TeamEvent::ToolCall { agent, .. }
            | TeamEvent::Restarted { agent }
            | TeamEvent::Done { agent, .. } => agent.clone(),
        };
        if !self.order.contains(&agent) {
            self.order.push(agent.clone());
        }
        if self.speaking.is_none() {
            self.start(&agent);
        }
        if self.speaking.as_deref() == Some(agent.as_str()) {
            match event {
                TeamEvent::Text { text, .. } => print_flush(&text),
                TeamEvent::ToolCall { name, arguments, .. } => {
                    print_flush(&format!("\n  [calls {name} {arguments}]\n"))
                }
                TeamEvent::Restarted { .. } => print_flush(RESTARTED),
                TeamEvent::Done { error, .. } => {
                    end_part(error.as_deref());
                    self.speaking = None;
                    self.next_speaker();
                }
            }
            return;
        }
        let held = self.waiting.entry(agent).or_default();
        match event {
            TeamEvent::Text { text, .. } => held.text.push_str(&text),
            TeamEvent::ToolCall { name, arguments, .. } => {
                held.text.push_str(&format!("\n  [calls {name} {arguments}]\n"));
            }
            // Not shown yet: only the new attempt's text will be.
            TeamEvent::Restarted { .. } => held.text.clear(),
            TeamEvent::Done { error, .. } => held.done = Some(error),
        }
    }

    fn start(&mut self, agent: &str) {
        print_flush(&format!("\n── {agent} ──\n"));
        self.speaking = Some(agent.to_string());
    }

    /// Shows held agents in order: finished ones whole, the first unfinished one live.
    fn next_speaker(&mut self) {
        while let Some(agent) = self.order.iter().find(|a| self.waiting.contains_key(*a)).cloned() {
            let held = self.waiting.remove(&agent).expect("found above");
            self.start(&agent);
            print_flush(&held.text);
            match held.done {
                Some(error) => {
                    end_part(error.as_deref());
                    self.speaking = None;
                }
                None => return,
            }
        }
    }

    fn finish(&mut self) {
        self.next_speaker();
        if self.speaking.take().is_some() {
            println!();
        }
    }
}

/// Said when an agent shown live restarts (its text so far cannot be taken back).
const RESTARTED: &str = "\n[the agent was restarted; its answer starts over]\n";

fn end_part(error: Option<&str>) {
    match error {
        Some(e) => println!("\n[{e}]"),
        None => println!(),
    }
}

fn print_flush(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Runs a slash command.
async fn slash(os: &AgentOS, spec: &TeamSpec, team: &mut Team, spawned: &mut usize, command: &str) -> Flow {
    let mut words = command.split_whitespace();
    let name = words.next().unwrap_or("");
    let arg = words.next();
    let extra = words.next();
    let result = match (name, arg, extra) {
        ("quit" | "exit" | "q", None, _) => return Flow::Quit,
        ("help", None, _) => Ok(HELP.to_string()),
        ("agents", None, _) => Ok(agents_table(os)),
        ("stats", None, _) => stats(os).await,
        ("memory", _, None) => memory(os, arg).await,
        ("tools", None, _) => Ok(tools(team)),
        ("model", None, _) => model(os).await,
        ("sync", None, _) => sync(os).await,
        ("blackboard", _, None) => blackboard(os, arg.unwrap_or("")).await,
        ("spawn", Some(role), None) => spawn(os, spec, team, spawned, role).await,
        ("kill", Some(agent), None) => kill(team, agent).await,
        ("spawn" | "kill", _, _) => Err(format!(
            "usage: /{name} {}",
            if name == "spawn" { "ROLE" } else { "NAME" }
        )),
        ("help" | "agents" | "stats" | "tools" | "model" | "sync" | "quit", Some(_), _)
        | ("memory" | "blackboard", Some(_), Some(_)) => {
            Err(format!("/{name} takes no such argument; /help lists the commands"))
        }
        _ => Err(format!("unknown command /{name}; /help lists the commands")),
    };
    match result {
        Ok(text) => println!("{text}"),
        Err(hint) => println!("{hint}"),
    }
    Flow::Continue
}

fn agents_table(os: &AgentOS) -> String {
    let mut out = format!(
        "{:<5} {:<16} {:<12} {:<10} {:<9} {:>5} {:>7} {:>8}\n",
        "PID", "NAME", "ROLE", "PRIORITY", "STATE", "TURNS", "TOKENS", "RESTARTS"
    );
    for a in os.agents() {
        out.push_str(&format!(
            "{:<5} {:<16} {:<12} {:<10} {:<9} {:>5} {:>7} {:>8}\n",
            a.pid.0,
            a.name,
            a.role,
            format!("{:?}", a.priority),
            format!("{:?}", a.state),
            a.turns,
            a.tokens_used,
            a.restarts
        ));
    }
    out.trim_end().to_string()
}

/// The pulses so far, newest last, and the drift now.
async fn sync(os: &AgentOS) -> std::result::Result<String, String> {
    let pulses = os.pulses().await.map_err(|e| e.to_string())?;
    if pulses.is_empty() {
        return Ok("No sync pulse yet: one runs over the workers after each answer of the team.".into());
    }
    let mut out = format!(
        "{:<6} {:<22} {:>7} {:>8} {:>8} {:>7} {:>9}\n",
        "PULSE", "TRIGGER", "AGENTS", "DRIFT", "AFTER", "TOKENS", "CONFLICTS"
    );
    for p in pulses.iter().rev().take(10).rev() {
        out.push_str(&format!(
            "{:<6} {:<22} {:>7} {:>8.4} {:>8.4} {:>7} {:>9}\n",
            p.id,
            format!("{:?}", p.trigger),
            p.participants.len(),
            p.drift_before.max,
            p.drift_after.max,
            p.tokens_injected,
            p.conflicts.len()
        ));
    }
    if let Some(last) = pulses.last() {
        for x in &last.conflicts {
            out.push_str(&format!(
                "{} says \"{}\" but {} says \"{}\"\n",
                x.first.0, x.first.1, x.second.0, x.second.1
            ));
        }
        if !last.late.is_empty() {
            out.push_str(&format!("late for pulse {}: {}\n", last.id, last.late.join(", ")));
        }
    }
    Ok(out.trim_end().to_string())
}

/// The blackboard's entries under `prefix`.
async fn blackboard(os: &AgentOS, prefix: &str) -> std::result::Result<String, String> {
    let entries = os.blackboard(prefix).await.map_err(|e| e.to_string())?;
    if entries.is_empty() {
        return Ok(format!("No blackboard entry under `{prefix}`."));
    }
    let mut out = String::new();
    for e in &entries {
        let text: String = e.text().chars().take(100).collect();
        let conflict = if e.in_conflict() {
            format!(" [conflict: {} other value(s)]", e.siblings.len())
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{} {} (by {}, v{}){}: {}\n",
            e.area,
            e.key,
            e.author,
            e.lamport,
            conflict,
            text.replace('\n', " ")
        ));
    }
    Ok(out.trim_end().to_string())
}

async fn stats(os: &AgentOS) -> std::result::Result<String, String> {
    let report = crate::client::StatsReport::collect(os)
        .await
        .map_err(|e| e.to_string())?;
    Ok(report.to_text())
}

async fn memory(os: &AgentOS, agent: Option<&str>) -> std::result::Result<String, String> {
    match agent {
        Some(name) => {
            let handle = os
                .agent(name)
                .ok_or_else(|| format!("no agent named `{name}`; /agents lists them"))?;
            let l1 = handle.memory_stats().await.map_err(|e| e.to_string())?;
            Ok(format!(
                "{name}: {} tokens in {} pages in the window (most {}), {} turns written as {} pages, \
                 {} page faults, {} evictions",
                l1.tokens, l1.pages, l1.tokens_max, l1.turns, l1.pages_written, l1.page_faults, l1.evictions
            ))
        }
        None => {
            let l2 = os.memory_stats().await.map_err(|e| e.to_string())?;
            Ok(format!(
                "page table: {} pages ({} in an L1 window, {} in L2, {} only in L3), {} faults from L3, \
                 {} demotions to L3, {} duplicates merged. /memory AGENT shows an agent's window.",
                l2.pages, l2.in_l1, l2.in_l2, l2.in_l3_only, l2.faults_from_l3, l2.demotions_to_l3, l2.duplicates
            ))
        }
    }
}

fn tools(team: &Team) -> String {
    let mut out = String::new();
    for handle in team.workers().iter().chain(team.synthesizer()) {
        let tools = handle.tools();
        out.push_str(&format!(
            "{}: {}\n",
            handle.name(),
            if tools.is_empty() {
                "no tools".to_string()
            } else {
                tools.join(", ")
            }
        ));
    }
    out.trim_end().to_string()
}

async fn model(os: &AgentOS) -> std::result::Result<String, String> {
    let info = crate::client::model_info(os).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "{} ({} layers, {} hidden, vocabulary {}), weights {} ({}) on {} ({})",
        info.name,
        info.config.n_layers,
        info.config.hidden_size,
        info.config.vocab_size,
        info.dtype.name(),
        info.weights,
        info.device,
        info.device_description
    ))
}

async fn spawn(
    os: &AgentOS,
    spec: &TeamSpec,
    team: &mut Team,
    spawned: &mut usize,
    role: &str,
) -> std::result::Result<String, String> {
    let member = spec
        .members
        .iter()
        .find(|m| m.spec.role.eq_ignore_ascii_case(role) || m.spec.name.eq_ignore_ascii_case(role))
        .ok_or_else(|| {
            let roles: Vec<&str> = spec.members.iter().map(|m| m.spec.role.as_str()).collect();
            format!("no role `{role}` in this team; roles: {}", roles.join(", "))
        })?;
    *spawned += 1;
    let name = format!("{}-{}", member.spec.name, *spawned + 1);
    let mut agent = member.spec.clone();
    agent.name = name.clone();
    let handle: AgentHandle = os.spawn_spec(name.clone(), agent).await.map_err(|e| e.to_string())?;
    team.add_worker(handle);
    Ok(format!(
        "spawned {name} ({}); it answers from the next message on",
        member.spec.role
    ))
}

async fn kill(team: &mut Team, name: &str) -> std::result::Result<String, String> {
    let handle = team
        .remove(name)
        .ok_or_else(|| format!("no agent `{name}` in the team; /agents lists them"))?;
    handle.stop().await.map_err(|e| e.to_string())?;
    Ok(format!("stopped {name}"))
}

fn default_history_path() -> Option<PathBuf> {
    let home = match std::env::var_os("AGENTOS_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => dirs::cache_dir()?.join("agentos"),
    };
    std::fs::create_dir_all(&home).ok()?;
    Some(home.join("chat_history"))
}

fn new_editor(history: Option<&std::path::Path>) -> Result<rustyline::DefaultEditor> {
    let mut editor =
        rustyline::DefaultEditor::new().map_err(|e| CliError::new(format!("cannot open the terminal: {e}")))?;
    if let Some(path) = history {
        let _ = editor.load_history(path);
    }
    Ok(editor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_approves() {
        for yes in ["y\n", "Y", " yes ", "YES\r\n"] {
            assert_eq!(terminal_decision(yes), Approval::Approve, "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "sure", "y y"] {
            assert!(matches!(terminal_decision(no), Approval::Deny(_)), "{no:?}");
        }
    }
}
