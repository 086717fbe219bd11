//! `KernelActor`: the Reasoning Kernel as a ractor actor.
//!
//! The actor owns an [`EngineThread`]; it validates and tokenizes requests itself (cheap, and
//! a malformed request gets an error reply without ever reaching the engine), then hands them
//! to the engine thread. If the engine thread dies, the actor fails so its supervisor can
//! restart it; a bad request never takes it down.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::chat::ChatMessage;
use crate::engine::generate::{EventSink, GenerateRequest, GenerationEvent, RequestId, prepare};
use crate::engine::thread::{EngineCommand, EngineThread};
use crate::engine::{Embeddings, EngineConfig, EngineStats, ModelInfo, TextAttention};
use crate::error::{KernelError, Result};
use crate::grammar::Constraint;
use crate::model_spec::ModelSpec;
use crate::tokenizer::TokenId;

/// Messages the kernel understands.
pub enum KernelMsg {
    /// Start a generation; its events stream to `events` (a tokio `UnboundedSender`, boxed, or
    /// any [`EventSink`]) and end with `Finished` or `Failed`, also for a request rejected before
    /// it was queued; the reply carries its id once queued, or why it was rejected.
    Generate {
        request: GenerateRequest,
        events: Box<dyn EventSink>,
        reply: RpcReplyPort<Result<RequestId>>,
    },
    /// Stop a generation early (its stream ends with `Finished` / `Cancelled`).
    Cancel(RequestId),
    /// Mean-pooled final hidden states, one vector per text, computed by the batcher at class
    /// `priority` among the generations (memory work runs at
    /// [`DEFAULT_JOB_PRIORITY`](crate::engine::generate::DEFAULT_JOB_PRIORITY), the least urgent).
    Embed {
        texts: Vec<String>,
        priority: u8,
        reply: RpcReplyPort<Result<Embeddings>>,
    },
    /// A text's tokens as text pieces and, when asked, the entropy of every token's attention
    /// over the text before it (see [`Engine::analyze`](crate::Engine::analyze)); computed like
    /// `Embed`.
    Analyze {
        text: String,
        with_attention: bool,
        priority: u8,
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
    /// Render messages with the model's chat template (with an open assistant turn); `tools`
    /// (function objects) go to its tools branch, none renders without.
    RenderChat {
        messages: Vec<ChatMessage>,
        tools: Vec<serde_json::Value>,
        reply: RpcReplyPort<Result<String>>,
    },
    /// The tokens a chat prompt of these messages and tools is made of (rendered as
    /// [`RenderChat`](KernelMsg::RenderChat), contents encoded without control tokens, exactly
    /// as a generation's prompt is).
    TokenizeChat {
        messages: Vec<ChatMessage>,
        tools: Vec<serde_json::Value>,
        reply: RpcReplyPort<Result<Vec<TokenId>>>,
    },
    Info(RpcReplyPort<ModelInfo>),
    Stats(RpcReplyPort<Result<EngineStats>>),
    /// Whether `constraint`'s grammar compiles (an error says why not), without generating.
    CheckGrammar {
        constraint: Constraint,
        reply: RpcReplyPort<Result<()>>,
    },
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
            KernelMsg::Generate {
                request,
                mut events,
                reply,
            } => {
                let prepared = prepare(request, &engine.tokenizer, &engine.template, &engine.info.config);
                match prepared {
                    Err(e) => {
                        events.send(GenerationEvent::Failed(e.clone()));
                        let _ = reply.send(Err(e));
                    }
                    Ok(request) => {
                        let command = EngineCommand::Generate {
                            request,
                            sink: events,
                            queued: Box::new(move |id| {
                                let _ = reply.send(Ok(id));
                            }),
                        };
                        engine.send(command)?;
                    }
                }
            }
            KernelMsg::Cancel(id) => engine.send(EngineCommand::Cancel(id))?,
            KernelMsg::Embed { texts, priority, reply } => {
                if let Some(i) = texts.iter().position(|t| t.is_empty()) {
                    let _ = reply.send(Err(KernelError::InvalidRequest(format!("text {i} is empty"))));
                } else {
                    engine.send(EngineCommand::Embed {
                        texts,
                        priority,
                        reply: Box::new(move |r| {
                            let _ = reply.send(r);
                        }),
                    })?;
                }
            }
            KernelMsg::Analyze {
                text,
                with_attention,
                priority,
                reply,
            } => {
                engine.send(EngineCommand::Analyze {
                    text,
                    with_attention,
                    priority,
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
            KernelMsg::RenderChat { messages, tools, reply } => {
                let _ = reply.send(engine.template.render_with_tools(&messages, &tools, true));
            }
            KernelMsg::TokenizeChat { messages, tools, reply } => {
                let tokens = engine
                    .template
                    .render_segments(&messages, &tools, true)
                    .and_then(|segments| engine.tokenizer.encode_chat(&segments));
                let _ = reply.send(tokens);
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
            KernelMsg::CheckGrammar { constraint, reply } => {
                engine.send(EngineCommand::CheckGrammar {
                    constraint,
                    reply: Box::new(move |r| {
                        let _ = reply.send(r);
                    }),
                })?;
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

/// How long [`generate`] waits for the kernel to queue a request.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a generation and returns its event stream (waiting up to [`QUEUE_TIMEOUT`] for the
/// kernel to queue it).
pub async fn generate(
    kernel: &ActorRef<KernelMsg>,
    request: GenerateRequest,
) -> Result<(RequestId, tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let call = kernel
        .call(
            |reply| KernelMsg::Generate {
                request,
                events: Box::new(tx),
                reply,
            },
            Some(QUEUE_TIMEOUT),
        )
        .await;
    let id = match call {
        Ok(CallResult::Success(result)) => result?,
        Ok(CallResult::Timeout) => {
            return Err(KernelError::EngineStopped(format!(
                "the kernel did not queue the request within {QUEUE_TIMEOUT:?}"
            )));
        }
        Ok(CallResult::SenderError) | Err(_) => {
            return Err(KernelError::EngineStopped("the kernel actor is not running".into()));
        }
    };
    Ok((id, rx))
}
