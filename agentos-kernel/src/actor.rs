//! `KernelActor`: the Reasoning Kernel as a ractor actor.
//!
//! The actor owns an [`EngineThread`]; it validates and tokenizes requests itself (cheap, and
//! a malformed request gets an error reply without ever reaching the engine), then hands them
//! to the engine thread. If the engine thread dies, the actor fails so its supervisor can
//! restart it; a bad request never takes it down.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc::UnboundedSender;

use crate::chat::ChatMessage;
use crate::engine::generate::{GenerateRequest, GenerationEvent, RequestId, prepare};
use crate::engine::thread::{EngineCommand, EngineThread};
use crate::engine::{EngineConfig, EngineStats, ModelInfo, TextAttention};
use crate::error::{KernelError, Result};
use crate::model_spec::ModelSpec;
use crate::tokenizer::TokenId;

/// Messages the kernel understands.
pub enum KernelMsg {
    /// Start a generation; tokens stream to `events`, the reply carries its id once queued.
    Generate {
        request: GenerateRequest,
        events: UnboundedSender<GenerationEvent>,
        reply: RpcReplyPort<Result<RequestId>>,
    },
    /// Stop a generation early (its stream ends with `Finished` / `Cancelled`).
    Cancel(RequestId),
    /// Mean-pooled final hidden states, one vector per text.
    Embed {
        texts: Vec<String>,
        reply: RpcReplyPort<Result<Vec<Vec<f32>>>>,
    },
    /// A text's tokens as text pieces and, when asked, their attention probabilities
    /// (see [`Engine::analyze`](crate::Engine::analyze)).
    Analyze {
        text: String,
        with_attention: bool,
        reply: RpcReplyPort<Result<TextAttention>>,
    },
    Tokenize {
        text: String,
        reply: RpcReplyPort<Result<Vec<TokenId>>>,
    },
    Detokenize {
        tokens: Vec<TokenId>,
        reply: RpcReplyPort<Result<String>>,
    },
    /// Render messages with the model's chat template (with an open assistant turn).
    RenderChat {
        messages: Vec<ChatMessage>,
        reply: RpcReplyPort<Result<String>>,
    },
    Info(RpcReplyPort<ModelInfo>),
    Stats(RpcReplyPort<Result<EngineStats>>),
    /// Sent by the engine thread when it stops unexpectedly.
    EngineExited {
        panicked: bool,
    },
}

/// How to start the kernel.
#[derive(Debug, Clone, Default)]
pub struct KernelArgs {
    pub model: ModelSpec,
    pub config: EngineConfig,
}

#[derive(Debug, Clone, Copy)]
pub struct KernelActor;

pub struct KernelState {
    engine: EngineThread,
}

#[ractor::async_trait]
impl Actor for KernelActor {
    type Msg = KernelMsg;
    type State = KernelState;
    type Arguments = KernelArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<KernelMsg>,
        args: KernelArgs,
    ) -> Result<KernelState, ActorProcessingErr> {
        let notify = myself.clone();
        let on_exit = Box::new(move |panicked: bool| {
            let _ = notify.cast(KernelMsg::EngineExited { panicked });
        });
        // Loading takes seconds of blocking I/O and compute: keep it off the async workers.
        let engine = tokio::task::spawn_blocking(move || EngineThread::spawn(args.model, args.config, on_exit))
            .await
            .map_err(|e| ActorProcessingErr::from(format!("engine loader panicked: {e}")))??;
        Ok(KernelState { engine })
    }

    async fn handle(
        &self,
        _myself: ActorRef<KernelMsg>,
        message: KernelMsg,
        state: &mut KernelState,
    ) -> Result<(), ActorProcessingErr> {
        let engine = &state.engine;
        match message {
            KernelMsg::Generate { request, events, reply } => {
                let prepared = prepare(request, &engine.tokenizer, &engine.template, &engine.info.config);
                match prepared {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(request) => {
                        let command = EngineCommand::Generate {
                            request,
                            sink: Box::new(events),
                            queued: Box::new(move |id| {
                                let _ = reply.send(Ok(id));
                            }),
                        };
                        engine.send(command)?;
                    }
                }
            }
            KernelMsg::Cancel(id) => engine.send(EngineCommand::Cancel(id))?,
            KernelMsg::Embed { texts, reply } => {
                if let Some(i) = texts.iter().position(|t| t.is_empty()) {
                    let _ = reply.send(Err(KernelError::InvalidRequest(format!("text {i} is empty"))));
                } else {
                    engine.send(EngineCommand::Embed {
                        texts,
                        reply: Box::new(move |r| {
                            let _ = reply.send(r);
                        }),
                    })?;
                }
            }
            KernelMsg::Analyze {
                text,
                with_attention,
                reply,
            } => {
                engine.send(EngineCommand::Analyze {
                    text,
                    with_attention,
                    reply: Box::new(move |r| {
                        let _ = reply.send(r);
                    }),
                })?;
            }
            KernelMsg::Tokenize { text, reply } => {
                let _ = reply.send(engine.tokenizer.encode(&text));
            }
            KernelMsg::Detokenize { tokens, reply } => {
                let _ = reply.send(engine.tokenizer.decode(&tokens));
            }
            KernelMsg::RenderChat { messages, reply } => {
                let _ = reply.send(engine.template.render(&messages, true));
            }
            KernelMsg::Info(reply) => {
                let _ = reply.send(engine.info.clone());
            }
            KernelMsg::Stats(reply) => {
                let result = engine.send(EngineCommand::Stats {
                    reply: Box::new(move |s| {
                        let _ = reply.send(Ok(s));
                    }),
                });
                result?;
            }
            KernelMsg::EngineExited { panicked } => {
                return Err(ActorProcessingErr::from(format!(
                    "the engine thread stopped ({})",
                    if panicked { "it panicked" } else { "its channel closed" }
                )));
            }
        }
        Ok(())
    }
}

/// Starts a generation and returns its event stream.
pub async fn generate(
    kernel: &ActorRef<KernelMsg>,
    request: GenerateRequest,
) -> Result<(RequestId, tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let id = ractor::call!(kernel, |reply| KernelMsg::Generate {
        request,
        events: tx,
        reply
    })
    .map_err(|e| KernelError::EngineStopped(format!("kernel actor unreachable: {e}")))??;
    Ok((id, rx))
}
