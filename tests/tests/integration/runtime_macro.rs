//! `#[agent]` as a user sees it: the spec it produces and hooks it leaves to the user.

use agentos_runtime::prelude::*;

/// You are a meticulous researcher.
/// Cite what you rely on.
#[agent(name = "Researcher", role = "researcher", priority = High, temperature = 0.7, top_p = 0.9,
        top_k = 40, repetition_penalty = 1.1, seed = 9, max_tokens = 128, history = 2,
        tools = ["fs_read", "mem_read"], max_steps = 3)]
#[derive(Default, Serialize, Deserialize)]
struct Researcher {
    notes: Vec<String>,
}

#[agent(name = "Critic", system = "You find flaws.", custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Critic {
    prepared: u32,
}

impl AgentHooks for Critic {
    fn prepare(&mut self, prompt: &mut TurnPrompt) {
        self.prepared += 1;
        prompt.max_tokens = 1;
    }
}

#[test]
fn the_attributes_and_doc_comment_become_the_spec() {
    let spec = Researcher::spec();
    assert_eq!(spec.name, "Researcher");
    assert_eq!(spec.role, "researcher");
    assert_eq!(spec.system, "You are a meticulous researcher.\nCite what you rely on.");
    assert_eq!(spec.priority, Priority::High);
    assert_eq!(spec.sampling.temperature, 0.7);
    assert_eq!(spec.sampling.top_p, 0.9);
    assert_eq!(spec.sampling.top_k, 40);
    assert_eq!(spec.sampling.repetition_penalty, 1.1);
    assert_eq!(spec.sampling.seed, 9);
    assert_eq!(spec.max_tokens, 128);
    assert_eq!(spec.history_turns, 2);
    assert_eq!(spec.tools, vec!["fs_read", "mem_read"]);
    assert_eq!(spec.max_steps, 3);
}

/// You guard the archive.
#[agent(name = "Archivist", tools = ["fs_read", "fs_write", "exec", "send_msg", "spawn_agent"],
        read = ["/srv/archive"], write = ["scratch=/tmp/archivist"], exec = ["grep"], net = ["*.example.com"],
        peers = ["Critic"], children = 2, child_roles = ["helper"], approve = ["exec", "spawn"])]
#[derive(Default, Serialize, Deserialize)]
struct Archivist;

#[test]
fn capability_keys_declare_the_roles_own_capabilities() {
    use agentos_runtime::security::{Access, FileGrant, Gate, Peers};
    let caps = Archivist::spec().capabilities.expect("declared");
    assert_eq!(
        caps.files,
        vec![
            FileGrant::work_dir("/srv/archive", Access::Read),
            FileGrant {
                mount: "scratch".into(),
                path: "/tmp/archivist".into(),
                access: Access::ReadWrite,
                scratch: false,
            },
        ]
    );
    assert_eq!(caps.exec.iter().collect::<Vec<_>>(), vec!["grep"]);
    assert_eq!(caps.net.hosts, vec!["*.example.com".to_string()]);
    assert!(!caps.net.allow_private);
    assert_eq!(caps.message, Peers::Only(["Critic".to_string()].into()));
    assert_eq!(caps.spawn.max_children, 2);
    assert_eq!(caps.spawn.roles, Some(["helper".to_string()].into()));
    assert_eq!(caps.approval, [Gate::Exec, Gate::Spawn].into());
    // Without capability keys the runtime's policy decides.
    assert!(Researcher::spec().capabilities.is_none());
}

#[test]
fn left_out_attributes_take_their_defaults() {
    let spec = Critic::spec();
    assert_eq!(spec.system, "You find flaws.");
    assert_eq!(spec.role, "critic");
    assert_eq!(spec.priority, Priority::Normal);
    assert_eq!(spec.sampling, SamplingParams::default());
    assert_eq!(spec.max_tokens, AgentSpec::DEFAULT_MAX_TOKENS);
    assert_eq!(spec.history_turns, AgentSpec::DEFAULT_HISTORY_TURNS);
    assert!(spec.tools.is_empty());
    assert_eq!(spec.max_steps, AgentSpec::DEFAULT_MAX_STEPS);

    let mut critic = Critic::default();
    let mut prompt = TurnPrompt {
        messages: vec![ChatMessage::user("hi")],
        max_tokens: 99,
        sampling: SamplingParams::default(),
        stop: vec![],
        continue_last: false,
    };
    critic.prepare(&mut prompt);
    assert_eq!((critic.prepared, prompt.max_tokens), (1, 1));
}

#[tokio::test]
async fn declared_roles_spawn_under_their_names() {
    let os = AgentOS::builder().without_kernel().start().await.unwrap();
    let researcher = os.spawn(Researcher::default()).await.unwrap();
    let critic = os.spawn(Critic::default()).await.unwrap();
    assert_eq!(researcher.name(), "Researcher");
    let listed: Vec<_> = os.agents().into_iter().map(|a| (a.name, a.role, a.priority)).collect();
    assert_eq!(
        listed,
        vec![
            ("Researcher".to_string(), "researcher".to_string(), Priority::High),
            ("Critic".to_string(), "critic".to_string(), Priority::Normal),
        ]
    );
    researcher.send(&critic, "check this").await.unwrap();
    os.shutdown().await.unwrap();
}
