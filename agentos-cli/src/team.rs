//! Teams: who answers a task, declared in TOML or the default researcher, critic and writer.
//!
//! A team has workers and at most one synthesiser. Every worker answers the task at the same
//! time (their generations share the kernel's batched steps); the synthesiser then reads the
//! task with every worker's answer and writes the final one. Without a synthesiser the answer
//! is the workers' answers, labelled.
//!
//! ```toml
//! [[agent]]
//! name = "Researcher"
//! system = "You are a researcher. Answer with the facts you know, briefly."
//! priority = "high"        # realtime, high, normal (default), low, background
//! temperature = 0.7        # 0 (default) is greedy; also top_p, top_k, repetition_penalty, seed
//! max_tokens = 160         # per generation (default 256)
//! memory = false           # an S-MMU memory instead of the last turns
//! tools = ["fs_read"]      # system calls and tools it may call (default none)
//! read = ["./notes"]       # capabilities (any of these keys declares the agent's own; what
//! write = ["out=./out"]    #   is not named is denied): directories to read, to read and write
//! exec = ["grep"]          #   ("dir" is the work directory, "mount=dir" is reached as mount/...),
//! net = ["*.example.com"]  #   programs, hosts, agents to message (peers, ["*"] for any),
//! peers = ["Writer"]       #   children = N and the gates that ask you first in `agentos chat`:
//! approve = ["exec"]       #   approve = ["exec", "write", "fetch", "spawn"]
//!
//! [[agent]]
//! name = "Writer"
//! system = "Combine the notes you are given into one clear answer."
//! synthesizer = true
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use agentos_kernel::SamplingParams;
use agentos_runtime::security::{Capabilities, Declaration, declare};
use agentos_runtime::{AgentHandle, AgentOS, AgentSpec, Priority, Response, RuntimeError, StreamEvent, TaskId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{CliError, Result};

/// A team file: `[[agent]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamFile {
    #[serde(rename = "agent")]
    pub agents: Vec<MemberFile>,
}

/// One `[[agent]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    pub name: String,
    /// Default: the name in lower case.
    pub role: Option<String>,
    pub system: String,
    pub priority: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub memory: bool,
    #[serde(default)]
    pub tools: Vec<String>,
    /// Capabilities (see the module docs); any of them makes the agent declare its own.
    pub read: Option<Vec<String>>,
    pub write: Option<Vec<String>>,
    pub exec: Option<Vec<String>>,
    pub net: Option<Vec<String>>,
    pub peers: Option<Vec<String>>,
    pub children: Option<u32>,
    pub approve: Option<Vec<String>>,
    /// Writes the final answer from the workers' answers (at most one per team).
    #[serde(default)]
    pub synthesizer: bool,
}

/// A member ready to spawn.
#[derive(Debug, Clone)]
pub struct Member {
    pub spec: AgentSpec,
    pub synthesizer: bool,
}

/// A validated team declaration.
#[derive(Debug, Clone)]
pub struct TeamSpec {
    pub members: Vec<Member>,
}

impl TeamSpec {
    /// Reads and checks a team file.
    pub fn load(path: &Path) -> Result<TeamSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::new(format!("cannot read the team file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| CliError::new(format!("team file {}: {e}", path.display())))
    }

    /// Parses and checks a team declaration.
    pub fn parse(text: &str) -> Result<TeamSpec> {
        let file: TeamFile = toml::from_str(text).map_err(|e| CliError::new(e.message().to_string()))?;
        let mut names = BTreeSet::new();
        let mut members = Vec::with_capacity(file.agents.len());
        for entry in file.agents {
            if entry.name.trim().is_empty() {
                return Err(CliError::new("an agent has an empty name"));
            }
            if !names.insert(entry.name.clone()) {
                return Err(CliError::new(format!("two agents are named `{}`", entry.name)));
            }
            members.push(entry.into_member()?);
        }
        let synthesizers = members.iter().filter(|m| m.synthesizer).count();
        if synthesizers > 1 {
            return Err(CliError::new("more than one agent says `synthesizer = true`"));
        }
        if members.len() == synthesizers {
            return Err(CliError::new(
                "the team needs at least one [[agent]] that is not the synthesizer",
            ));
        }
        Ok(TeamSpec { members })
    }

    /// A researcher and a critic who answer at the same time, and a writer who combines them.
    pub fn default_team() -> TeamSpec {
        let member = |name: &str, system: &str, max_tokens: usize, synthesizer: bool| {
            let mut spec = AgentSpec::new(name, system);
            spec.max_tokens = max_tokens;
            Member { spec, synthesizer }
        };
        TeamSpec {
            members: vec![
                member(
                    "Researcher",
                    "You are a helpful researcher. Answer the user's question with the facts you know. Be brief.",
                    96,
                    false,
                ),
                member(
                    "Critic",
                    "You are a careful critic. Say briefly what a good answer to the user's question must include.",
                    96,
                    false,
                ),
                member(
                    "Writer",
                    "You are a helpful writer. Answer the user's question in a few clear sentences.",
                    128,
                    true,
                ),
            ],
        }
    }
}

impl MemberFile {
    fn into_member(self) -> Result<Member> {
        let mut spec = AgentSpec::new(self.name, self.system);
        if let Some(role) = self.role {
            spec.role = role;
        }
        if let Some(priority) = self.priority {
            spec.priority = priority.parse::<Priority>().map_err(CliError::new)?;
        }
        let mut sampling = SamplingParams::default();
        if let Some(t) = self.temperature {
            sampling.temperature = t;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = p;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = k;
        }
        if let Some(penalty) = self.repetition_penalty {
            sampling.repetition_penalty = penalty;
        }
        if let Some(seed) = self.seed {
            sampling.seed = seed;
        }
        sampling
            .validate()
            .map_err(|e| CliError::new(format!("agent `{}`: {e}", spec.name)))?;
        spec.sampling = sampling;
        if let Some(max_tokens) = self.max_tokens {
            if max_tokens == 0 {
                return Err(CliError::new(format!(
                    "agent `{}`: max_tokens must be at least 1",
                    spec.name
                )));
            }
            spec.max_tokens = max_tokens;
        }
        spec.memory = self.memory;
        spec.tools = self.tools;
        spec.capabilities = capabilities(
            &spec.name,
            Declared {
                read: self.read,
                write: self.write,
                exec: self.exec,
                net: self.net,
                peers: self.peers,
                children: self.children,
                approve: self.approve,
            },
        )?;
        Ok(Member {
            spec,
            synthesizer: self.synthesizer,
        })
    }
}

/// The capability keys of one `[[agent]]` table.
struct Declared {
    read: Option<Vec<String>>,
    write: Option<Vec<String>>,
    exec: Option<Vec<String>>,
    net: Option<Vec<String>>,
    peers: Option<Vec<String>>,
    children: Option<u32>,
    approve: Option<Vec<String>>,
}

/// The capabilities an `[[agent]]` table declares; `None` when it names none (the runtime's
/// policy decides then). Relative directories are taken from the current directory.
fn capabilities(agent: &str, d: Declared) -> Result<Option<Capabilities>> {
    let any = d.read.is_some()
        || d.write.is_some()
        || d.exec.is_some()
        || d.net.is_some()
        || d.peers.is_some()
        || d.children.is_some()
        || d.approve.is_some();
    if !any {
        return Ok(None);
    }
    fn strs(list: &Option<Vec<String>>) -> Vec<&str> {
        list.iter().flatten().map(String::as_str).collect()
    }
    let (read, write, exec, net, peers, approve) = (
        strs(&d.read),
        strs(&d.write),
        strs(&d.exec),
        strs(&d.net),
        strs(&d.peers),
        strs(&d.approve),
    );
    let declaration = Declaration {
        read: &read,
        write: &write,
        exec: &exec,
        net: &net,
        peers: &peers,
        children: d.children.unwrap_or(0),
        child_roles: None,
        approve: &approve,
    };
    declare(&declaration)
        .map(Some)
        .map_err(|reason| CliError::new(format!("agent `{agent}`: {reason}")))
}

/// What a team run reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum TeamEvent {
    /// Text an agent generated (final unless a `Restarted` of that agent follows).
    Text { agent: String, text: String },
    /// The agent failed and was restarted: its reply starts over, the text so far is void.
    Restarted { agent: String },
    /// An agent called a tool.
    ToolCall {
        agent: String,
        name: String,
        arguments: String,
    },
    /// An agent finished its part (`error` when it failed or was cancelled).
    Done { agent: String, error: Option<String> },
}

/// One agent's part of a team's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Contribution {
    pub agent: String,
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub seconds: f64,
}

/// A team's answer to one task.
#[derive(Debug, Clone, Serialize)]
pub struct TeamAnswer {
    pub task: String,
    pub contributions: Vec<Contribution>,
    /// The synthesiser's part, when the team has one.
    pub synthesis: Option<Contribution>,
    /// The synthesis, or the workers' answers labelled.
    pub answer: String,
}

/// A spawned team.
pub struct Team {
    workers: Vec<AgentHandle>,
    synthesizer: Option<AgentHandle>,
}

impl Team {
    /// Spawns every member of `spec` in `os`.
    pub async fn spawn(os: &AgentOS, spec: &TeamSpec) -> Result<Team> {
        let mut team = Team {
            workers: Vec::new(),
            synthesizer: None,
        };
        for member in &spec.members {
            let handle = os.spawn_spec(member.spec.name.clone(), member.spec.clone()).await?;
            match member.synthesizer {
                true => team.synthesizer = Some(handle),
                false => team.workers.push(handle),
            }
        }
        Ok(team)
    }

    pub fn workers(&self) -> &[AgentHandle] {
        &self.workers
    }

    pub fn synthesizer(&self) -> Option<&AgentHandle> {
        self.synthesizer.as_ref()
    }

    /// Adds a running agent as a worker.
    pub fn add_worker(&mut self, handle: AgentHandle) {
        self.workers.push(handle);
    }

    /// Takes the agent called `name` out of the team; `None` when it is not a member.
    pub fn remove(&mut self, name: &str) -> Option<AgentHandle> {
        if self.synthesizer.as_ref().is_some_and(|s| s.name() == name) {
            return self.synthesizer.take();
        }
        let at = self.workers.iter().position(|w| w.name() == name)?;
        Some(self.workers.remove(at))
    }

    /// Every worker answers `task` at once, then the synthesiser combines their answers.
    /// `on_event` sees every piece of text as it is generated. When `cancel` fires, every
    /// generation in flight is cancelled (its KV freed) and this returns
    /// [`RuntimeError::Cancelled`].
    pub async fn ask(
        &self,
        task: &str,
        cancel: &CancellationToken,
        on_event: &mut (dyn FnMut(TeamEvent) + Send),
    ) -> Result<TeamAnswer> {
        if self.workers.is_empty() {
            return Err(CliError::new("the team has no workers: /spawn ROLE adds one"));
        }
        let round = self.workers.iter().map(|w| (w.clone(), task.to_string())).collect();
        let results = run_round(round, cancel, on_event).await?;
        let mut contributions = Vec::new();
        let mut failures = Vec::new();
        for (agent, result) in results {
            match result {
                Ok(response) => contributions.push(contribution(&agent, &response)),
                Err(e) => failures.push(format!("{agent}: {e}")),
            }
        }
        if contributions.is_empty() {
            return Err(CliError::new(format!("no agent answered ({})", failures.join("; "))));
        }
        let synthesis = match &self.synthesizer {
            None => None,
            Some(writer) => {
                let prompt = synthesis_prompt(task, &contributions);
                let mut results = run_round(vec![(writer.clone(), prompt)], cancel, on_event).await?;
                match results.pop() {
                    Some((agent, Ok(response))) => Some(contribution(&agent, &response)),
                    Some((agent, Err(e))) => return Err(CliError::new(format!("{agent}: {e}"))),
                    None => None,
                }
            }
        };
        let answer = match &synthesis {
            Some(s) => s.text.clone(),
            None => contributions
                .iter()
                .map(|c| format!("{}: {}", c.agent, c.text.trim()))
                .collect::<Vec<_>>()
                .join("\n\n"),
        };
        Ok(TeamAnswer {
            task: task.to_string(),
            contributions,
            synthesis,
            answer,
        })
    }
}

/// What the synthesiser is asked: the task and every worker's answer.
fn synthesis_prompt(task: &str, contributions: &[Contribution]) -> String {
    let mut prompt = format!("Question: {task}\n\nNotes:\n");
    for c in contributions {
        let note = c.text.trim().replace('\n', " ");
        prompt.push_str(&format!("- {}: {note}\n", c.agent));
    }
    prompt.push_str("\nAnswer the question in a few sentences, using what is right in the notes.");
    prompt
}

fn contribution(agent: &str, response: &Response) -> Contribution {
    Contribution {
        agent: agent.to_string(),
        text: response.text.clone(),
        prompt_tokens: response.prompt_tokens,
        completion_tokens: response.completion_tokens,
        seconds: response.total_time.as_secs_f64(),
    }
}

type RoundResult = Vec<(String, std::result::Result<Response, RuntimeError>)>;

/// Asks every `(agent, prompt)` at once and streams their events as they come. A cancel
/// cancels every task still running; the round then returns `RuntimeError::Cancelled`.
async fn run_round(
    asks: Vec<(AgentHandle, String)>,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(TeamEvent) + Send),
) -> Result<RoundResult> {
    let mut streams = Vec::with_capacity(asks.len());
    let mut running: Vec<(AgentHandle, TaskId)> = Vec::with_capacity(asks.len());
    for (handle, prompt) in asks {
        match handle.stream(prompt).await {
            Ok(stream) => {
                running.push((handle.clone(), stream.task_id()));
                let agent = handle.name().to_string();
                streams.push(stream.map(move |event| (agent.clone(), event)).boxed());
            }
            Err(e) => {
                for (h, task) in &running {
                    let _ = h.cancel(*task).await;
                }
                return Err(e.into());
            }
        }
    }
    let mut merged = futures::stream::select_all(streams);
    let mut results: RoundResult = Vec::new();
    let mut cancelled = false;
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                for (handle, task) in &running {
                    let _ = handle.cancel(*task).await;
                }
                continue;
            }
            next = merged.next() => next,
        };
        let Some((agent, event)) = next else { break };
        match event {
            StreamEvent::Token(text) => on_event(TeamEvent::Text { agent, text }),
            StreamEvent::ToolCall { name, arguments } => on_event(TeamEvent::ToolCall { agent, name, arguments }),
            StreamEvent::Restarted => on_event(TeamEvent::Restarted { agent }),
            StreamEvent::ToolResult { .. } => {}
            StreamEvent::Done(outcome) => {
                let error = outcome.as_ref().as_ref().err().map(|e| e.to_string());
                on_event(TeamEvent::Done {
                    agent: agent.clone(),
                    error,
                });
                results.push((agent, *outcome));
            }
        }
    }
    if cancelled {
        let agent = results.first().map(|(a, _)| a.clone()).unwrap_or_default();
        return Err(RuntimeError::Cancelled { agent }.into());
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentos_runtime::security::{Access, FileGrant, Gate, Peers};

    #[test]
    fn a_team_file_becomes_specs() {
        let team = TeamSpec::parse(
            r#"
            [[agent]]
            name = "Scout"
            system = "Look around."
            priority = "HIGH"
            temperature = 0.5
            seed = 7
            max_tokens = 32
            tools = ["fs_read"]

            [[agent]]
            name = "Editor"
            role = "editing"
            system = "Combine."
            synthesizer = true
            "#,
        )
        .unwrap();
        let scout = &team.members[0];
        assert_eq!(scout.spec.role, "scout");
        assert_eq!(scout.spec.priority, Priority::High);
        assert_eq!(scout.spec.sampling.temperature, 0.5);
        assert_eq!(scout.spec.sampling.seed, 7);
        assert_eq!(scout.spec.max_tokens, 32);
        assert_eq!(scout.spec.tools, vec!["fs_read".to_string()]);
        assert!(!scout.synthesizer);
        assert_eq!(team.members[1].spec.role, "editing");
        assert!(team.members[1].synthesizer);
        // No capability keys: the runtime's policy decides.
        assert!(scout.spec.capabilities.is_none());
    }

    #[test]
    fn capability_keys_declare_the_agents_own() {
        let team = TeamSpec::parse(
            r#"
            [[agent]]
            name = "Clerk"
            system = "Keep the files."
            tools = ["fs_read", "fs_write", "exec"]
            read = ["/srv/notes"]
            write = ["out=/tmp/clerk"]
            exec = ["grep"]
            peers = ["*"]
            approve = ["exec", "write"]
            "#,
        )
        .unwrap();
        let caps = team.members[0].spec.capabilities.clone().expect("declared");
        assert_eq!(caps.files.len(), 2);
        assert_eq!(caps.files[0], FileGrant::work_dir("/srv/notes", Access::Read));
        assert_eq!(caps.files[1].mount, "out");
        assert_eq!(caps.files[1].access, Access::ReadWrite);
        assert_eq!(caps.exec.iter().collect::<Vec<_>>(), vec!["grep"]);
        assert!(caps.net.hosts.is_empty());
        assert_eq!(caps.message, Peers::Any);
        assert_eq!(caps.spawn.max_children, 0);
        assert_eq!(caps.approval, [Gate::Exec, Gate::Write].into());
        let bad = TeamSpec::parse("[[agent]]\nname = \"A\"\nsystem = \"s\"\napprove = [\"all\"]\n").unwrap_err();
        assert!(bad.to_string().contains("not `all`"), "{bad}");
        let bad = TeamSpec::parse("[[agent]]\nname = \"A\"\nsystem = \"s\"\nread = [\"/a\", \"/b\"]\n").unwrap_err();
        assert!(bad.to_string().contains("one work directory"), "{bad}");
        let bad = TeamSpec::parse("[[agent]]\nname = \"A\"\nsystem = \"s\"\nread = [\"=/x\"]\n").unwrap_err();
        assert!(bad.to_string().contains("mount=directory"), "{bad}");
    }

    #[test]
    fn a_bad_team_file_says_what_is_wrong() {
        let cases = [
            (
                "[[agent]]\nname = \"A\"\nsystem = \"s\"\nmodel = \"x\"\n",
                "unknown field `model`",
            ),
            (
                "[[agent]]\nname = \"A\"\nsystem = \"s\"\n[[agent]]\nname = \"A\"\nsystem = \"t\"\n",
                "two agents are named `A`",
            ),
            (
                "[[agent]]\nname = \"A\"\nsystem = \"s\"\nsynthesizer = true\n",
                "at least one [[agent]]",
            ),
            (
                "[[agent]]\nname = \"A\"\nsystem = \"s\"\n[[agent]]\nname = \"B\"\nsystem = \"s\"\nsynthesizer = true\n[[agent]]\nname = \"C\"\nsystem = \"s\"\nsynthesizer = true\n",
                "more than one agent",
            ),
            (
                "[[agent]]\nname = \"A\"\nsystem = \"s\"\ntemperature = -2.0\n",
                "agent `A`",
            ),
            (
                "[[agent]]\nname = \"A\"\nsystem = \"s\"\nmax_tokens = 0\n",
                "max_tokens must be at least 1",
            ),
            ("[[agent]]\nname = \"A\"\n", "missing field `system`"),
            ("agent = 3", "invalid type"),
        ];
        for (text, expected) in cases {
            let error = TeamSpec::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
