//! Bad model files give typed errors that name the problem, never a panic.

use std::io::Write;

use agentos_kernel::gguf::GgufFile;
use agentos_kernel::{Engine, EngineConfig, GgufError, KernelError, ModelSpec};

use crate::support::default_model_path;

fn gguf_error(bytes: &[u8]) -> GgufError {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    match GgufFile::open(f.path()) {
        Err(KernelError::Gguf { source, .. }) => source,
        other => panic!("expected a GGUF error, got {other:?}"),
    }
}

#[test]
fn the_real_model_file_parses() {
    let g = GgufFile::open(default_model_path()).unwrap();
    assert_eq!(g.string("general.architecture").unwrap(), "llama");
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap().len(), 49152);
}

#[test]
fn truncated_model_files_name_what_is_missing() {
    let bytes = std::fs::read(default_model_path()).unwrap();
    // In the header, inside the vocabulary, inside the tensor infos, and in the tensor data.
    for len in [3, 20, 1_000, 500_000, 1_785_000, 1_800_000, bytes.len() - 1] {
        let err = gguf_error(&bytes[..len]);
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. } | GgufError::AbsurdCount { .. } | GgufError::TensorOutOfBounds { .. }
            ),
            "length {len}: {err:?}"
        );
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn garbage_and_missing_files_are_errors() {
    assert!(matches!(gguf_error(b"not a model at all"), GgufError::BadMagic { .. }));
    let missing = Engine::load(
        &ModelSpec::Gguf("/nonexistent/model.gguf".into()),
        EngineConfig::default(),
    );
    assert!(missing.err().unwrap().to_string().contains("no such file"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
    let err = Engine::load(&ModelSpec::HfDir(dir.path().into()), EngineConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");
}
