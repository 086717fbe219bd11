//! KernelActor: typed messages, streaming, and surviving malformed requests.

use agentos_kernel::{
    ChatMessage, DeviceChoice, EngineConfig, GenerateRequest, GenerationEvent, KernelActor, KernelArgs, KernelMsg,
    ModelSpec, Prompt, WeightDtype,
};
use ractor::{Actor, ActorStatus};

use crate::support::default_model_path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_actor_streams_and_survives_bad_requests() {
    let args = KernelArgs {
        model: ModelSpec::Gguf(default_model_path()),
        config: EngineConfig {
            dtype: WeightDtype::F16,
            device: DeviceChoice::Flex,
            ..EngineConfig::default()
        },
    };
    let (kernel, handle) = Actor::spawn(None, KernelActor, args).await.unwrap();

    // Malformed requests get error replies...
    let bad = GenerateRequest {
        max_tokens: 0,
        ..GenerateRequest::new(Prompt::Text("hi".into()))
    };
    assert!(agentos_kernel::actor::generate(&kernel, bad).await.is_err());
    let bad = GenerateRequest::new(Prompt::Tokens(vec![u32::MAX]));
    let err = agentos_kernel::actor::generate(&kernel, bad).await.unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let err = ractor::call!(kernel, |reply| KernelMsg::Embed {
        texts: vec![String::new()],
        priority: agentos_kernel::DEFAULT_JOB_PRIORITY,
        reply
    })
    .unwrap();
    assert!(err.is_err());
    // ...and the actor keeps running.
    assert_eq!(kernel.get_status(), ActorStatus::Running);

    let ids = ractor::call!(kernel, |reply| KernelMsg::Tokenize {
        text: "<|im_start|>user".into(),
        reply
    })
    .unwrap()
    .unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    let text = ractor::call!(kernel, |reply| KernelMsg::Detokenize { tokens: ids, reply })
        .unwrap()
        .unwrap();
    assert_eq!(text, "<|im_start|>user");

    let request = GenerateRequest::chat(vec![ChatMessage::user("Say hi.")]).max_tokens(8);
    let (_, mut events) = agentos_kernel::actor::generate(&kernel, request).await.unwrap();
    let mut streamed = String::new();
    let mut tokens = 0;
    let summary = loop {
        match events.recv().await.expect("stream ends with Finished") {
            GenerationEvent::Token { text, .. } => {
                tokens += 1;
                streamed.push_str(&text);
            }
            GenerationEvent::Finished { tail, summary } => {
                streamed.push_str(&tail);
                break summary;
            }
            GenerationEvent::Failed(e) => panic!("{e}"),
        }
    };
    assert_eq!(tokens, summary.tokens.len());
    assert!((1..=8).contains(&tokens));
    assert_eq!(streamed, summary.text);

    let embeddings = ractor::call!(kernel, |reply| KernelMsg::Embed {
        texts: vec!["a".into(), "b".into()],
        priority: agentos_kernel::DEFAULT_JOB_PRIORITY,
        reply
    })
    .unwrap()
    .unwrap();
    assert_eq!(embeddings.vectors.len(), 2);
    assert!(embeddings.tokens >= 2, "the tokens the work took are reported");
    let stats = ractor::call!(kernel, KernelMsg::Stats).unwrap().unwrap();
    assert!(stats.forwards > 0);
    assert_eq!(stats.sequences, 0);

    kernel.stop(None);
    handle.await.unwrap();
}
