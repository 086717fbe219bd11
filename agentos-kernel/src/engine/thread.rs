//! The engine on its own OS thread: commands in over a crossbeam channel, results out over
//! tokio channels, so async code never blocks on burn compute.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender, TryRecvError};

use super::generate::{Batcher, EventSink, Job, JobOutput, PreparedRequest, RequestId};
use super::{Embeddings, Engine, EngineConfig, EngineStats, ModelInfo, TextAttention};
use crate::chat::ChatTemplate;
use crate::error::{KernelError, Result};
use crate::grammar::Constraint;
use crate::model_spec::ModelSpec;
use crate::tokenizer::Tokenizer;

/// Receives the embeddings of an `Embed` command.
pub type EmbedReply = Box<dyn FnOnce(Result<Embeddings>) + Send>;

/// A request to the engine thread.
pub enum EngineCommand {
    Generate {
        request: PreparedRequest,
        sink: Box<dyn EventSink>,
        queued: Box<dyn FnOnce(RequestId) + Send>,
    },
    Cancel(RequestId),
    /// Memory work, run by the batcher as a job at class `priority`.
    Embed {
        texts: Vec<String>,
        priority: u8,
        reply: EmbedReply,
    },
    Analyze {
        text: String,
        with_attention: bool,
        priority: u8,
        reply: Box<dyn FnOnce(Result<TextAttention>) + Send>,
    },
    Stats {
        reply: Box<dyn FnOnce(EngineStats) + Send>,
    },
    /// Whether `constraint`'s grammar compiles against the model's tokenizer.
    CheckGrammar {
        constraint: Constraint,
        reply: Box<dyn FnOnce(Result<()>) + Send>,
    },
    Shutdown,
}

/// A running engine thread. Dropping it shuts the thread down and waits for it.
pub struct EngineThread {
    commands: Sender<EngineCommand>,
    handle: Option<JoinHandle<()>>,
    pub info: ModelInfo,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
}

impl EngineThread {
    /// Loads the model on a new thread and returns once it is ready (or failed to load).
    /// `on_exit` runs on the engine thread when it stops, with `true` if it panicked.
    pub fn spawn(spec: ModelSpec, config: EngineConfig, on_exit: Box<dyn FnOnce(bool) + Send>) -> Result<Self> {
        let (commands, rx) = crossbeam::channel::unbounded();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("agentos-engine".into())
            .spawn(move || {
                let guard = ExitGuard(Some(on_exit));
                match Engine::load(&spec, config) {
                    Ok(engine) => {
                        let _ = ready_tx.send(Ok((
                            engine.info().clone(),
                            engine.tokenizer().clone(),
                            engine.template().clone(),
                        )));
                        run(engine, rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                drop(guard);
            })
            .map_err(|e| KernelError::EngineStopped(format!("cannot start the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok((info, tokenizer, template))) => Ok(EngineThread {
                commands,
                handle: Some(handle),
                info,
                tokenizer,
                template,
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(KernelError::EngineStopped(
                    "the engine thread died while loading the model".into(),
                ))
            }
        }
    }

    /// Sends a command; fails if the thread is gone.
    pub fn send(&self, command: EngineCommand) -> Result<()> {
        self.commands
            .send(command)
            .map_err(|_| KernelError::EngineStopped("the engine thread has stopped".into()))
    }

    /// Whether the engine thread is still running.
    pub fn is_alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        let _ = self.commands.send(EngineCommand::Shutdown);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct ExitGuard(Option<Box<dyn FnOnce(bool) + Send>>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(std::thread::panicking());
        }
    }
}

fn run(mut engine: Engine, rx: Receiver<EngineCommand>) {
    let mut batcher = Batcher::new();
    loop {
        // Block when idle; otherwise drain what arrived and take a step.
        let mut next = if batcher.is_idle() {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        } else {
            None
        };
        loop {
            let command = match next.take() {
                Some(c) => c,
                None => match rx.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                },
            };
            match command {
                EngineCommand::Generate { request, sink, queued } => {
                    let id = batcher.submit(request, sink);
                    queued(id);
                }
                EngineCommand::Cancel(id) => batcher.cancel(&mut engine, id),
                EngineCommand::Embed { texts, priority, reply } => match Job::embed(&engine, &texts) {
                    Ok(job) => {
                        batcher.submit_job(
                            job,
                            priority,
                            Box::new(move |r| {
                                reply(r.map(|out| match out {
                                    JobOutput::Embeddings(e) => e,
                                    JobOutput::Analysis(_) => unreachable!("an embedding job returns embeddings"),
                                }))
                            }),
                        );
                    }
                    Err(e) => reply(Err(e)),
                },
                EngineCommand::Analyze {
                    text,
                    with_attention,
                    priority,
                    reply,
                } => match Job::analyze(&engine, &text, with_attention) {
                    Ok(job) => {
                        batcher.submit_job(
                            job,
                            priority,
                            Box::new(move |r| {
                                reply(r.map(|out| match out {
                                    JobOutput::Analysis(a) => a,
                                    JobOutput::Embeddings(_) => unreachable!("an analysis job returns an analysis"),
                                }))
                            }),
                        );
                    }
                    Err(e) => reply(Err(e)),
                },
                EngineCommand::Stats { reply } => {
                    let batched = batcher.stats();
                    reply(EngineStats {
                        waiting_requests: batcher.waiting(),
                        running_sequences: batcher.running(),
                        generated_tokens: batched.generated_tokens,
                        preemptions: batched.preemptions,
                        ..engine.stats()
                    })
                }
                EngineCommand::CheckGrammar { constraint, reply } => reply(engine.grammar(&constraint).map(drop)),
                EngineCommand::Shutdown => return,
            }
        }
        batcher.step(&mut engine);
    }
}
