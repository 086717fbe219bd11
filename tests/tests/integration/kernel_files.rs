//! Bad model files give typed errors that name the problem, never a panic.

pub(crate) mod crafted;

use std::io::Write;

use agentos_kernel::gguf::GgufFile;
use agentos_kernel::model::weights::{GgufWeights, SafetensorsWeights, Weight, WeightSource};
use agentos_kernel::{DeviceChoice, Engine, EngineConfig, GgufError, KernelError, ModelConfig, ModelSpec};

use self::crafted::{
    F16, F32, GgufWriter, Meta, Q4_0, Q8_0, TINY_HF_CONFIG, raw_safetensors, tiny_config, tiny_gguf, tiny_gguf_where,
    tiny_gguf_with, tiny_safetensors, write_hf_dir,
};
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
    // Within every bound the config checks (SmolLM2-135M: 30 layers, 9 heads of 64, 3 kv heads).
    let config = ModelConfig::from_gguf(&g).unwrap();
    assert_eq!((config.n_layers, config.n_heads, config.n_kv_heads), (30, 9, 3));
    assert_eq!((config.head_dim, config.context_length), (64, 8192));
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

fn tiny_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn load_gguf(bytes: &[u8]) -> agentos_kernel::Result<Engine> {
    let f = tiny_file(bytes);
    let config = EngineConfig {
        device: DeviceChoice::Flex,
        ..EngineConfig::default()
    };
    Engine::load(&ModelSpec::Gguf(f.path().into()), config)
}

#[test]
fn the_tiny_crafted_model_loads() {
    // The base the crafted and fuzzed files are made from is a model the engine runs.
    let engine = load_gguf(&tiny_gguf()).unwrap();
    assert_eq!(engine.model_config(), &tiny_config());
}

#[test]
fn absurd_hyper_parameters_are_rejected_before_loading() {
    // Each used to load (a context of 2^60 made `Rope::new` panic on capacity overflow, 2^28
    // allocated 8 GiB of tables) or gave a config the engine cannot run.
    for (key, value, expected) in [
        (
            "llama.context_length",
            Meta::U64(1 << 60),
            "context length 1152921504606846976",
        ),
        ("llama.context_length", Meta::U32(1 << 28), "context length 268435456"),
        ("llama.context_length", Meta::U32(0), "context length 0"),
        ("llama.attention.head_count", Meta::U32(0), "attention head count 0"),
        (
            "llama.attention.head_count",
            Meta::U32(u32::MAX),
            "attention head count 4294967295",
        ),
        (
            "llama.attention.head_count_kv",
            Meta::U32(3),
            "not a multiple of 3 key/value heads",
        ),
        (
            "llama.attention.head_count_kv",
            Meta::Str("one"),
            "head_count_kv has type string",
        ),
        (
            "llama.rope.dimension_count",
            Meta::U64(1 << 40),
            "head dimension 1099511627776",
        ),
        (
            "llama.rope.dimension_count",
            Meta::U32(3),
            "head dimension 3 must be even",
        ),
        (
            "llama.embedding_length",
            Meta::U64(1 << 40),
            "hidden size 1099511627776",
        ),
        ("llama.feed_forward_length", Meta::U32(0), "feed-forward size 0"),
        ("llama.block_count", Meta::U32(1 << 20), "layer count 1048576"),
        (
            "llama.context_length",
            Meta::Str("long"),
            "context_length has type string",
        ),
        ("llama.rope.freq_base", Meta::F32(f32::NAN), "RoPE base NaN"),
        ("llama.rope.freq_base", Meta::F32(-1.0), "RoPE base -1"),
        ("llama.rope.freq_base", Meta::F32(f32::INFINITY), "RoPE base inf"),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Meta::F32(-1.0),
            "RMS norm epsilon -1",
        ),
    ] {
        let err = load_gguf(&tiny_gguf_where(key, Some(value))).err();
        let err = err.unwrap_or_else(|| panic!("{key} = {value:?} loaded"));
        assert!(
            matches!(err, KernelError::ModelFormat(_) | KernelError::Gguf { .. }),
            "{key} = {value:?}: {err:?}"
        );
        assert!(err.to_string().contains(expected), "{key} = {value:?}: {err}");
    }
}

#[test]
fn absurd_hf_configs_are_rejected() {
    let with = |changes: &[(&str, serde_json::Value)]| {
        let mut v: serde_json::Value = serde_json::from_str(TINY_HF_CONFIG).unwrap();
        for (k, x) in changes {
            v[*k] = x.clone();
        }
        ModelConfig::from_hf_json(&v.to_string())
    };
    assert_eq!(with(&[]).unwrap(), tiny_config());
    for (changes, expected) in [
        (vec![("max_position_embeddings", (1u64 << 60).into())], "context length"),
        (vec![("max_position_embeddings", 0.into())], "context length 0"),
        (vec![("num_attention_heads", u32::MAX.into())], "attention head count"),
        (vec![("num_attention_heads", 0.into())], "attention head count 0"),
        (vec![("head_dim", (1u64 << 40).into())], "head dimension"),
        // Each within its own bound, but RoPE tables of 2^30 entries (4 GiB each).
        (
            vec![("head_dim", 1024.into()), ("max_position_embeddings", (1 << 20).into())],
            "RoPE table entries",
        ),
        (vec![("intermediate_size", 0.into())], "feed-forward size 0"),
        (vec![("num_hidden_layers", 100_000.into())], "layer count"),
        (vec![("hidden_size", (1u64 << 40).into())], "hidden size"),
        (vec![("vocab_size", (1u64 << 40).into())], "vocabulary size"),
        (vec![("rope_theta", 1e300.into())], "RoPE base inf"),
        (vec![("rms_norm_eps", (-1.0).into())], "RMS norm epsilon"),
    ] {
        let err = with(&changes).err();
        let err = err.unwrap_or_else(|| panic!("{changes:?} was accepted"));
        assert!(err.to_string().contains(expected), "{changes:?}: {err}");
    }
}

#[test]
fn tensor_sizes_that_overflow_are_typed_errors() {
    let one = |dims: &[u64], ty: u32| GgufWriter::new().tensor("t", dims, ty, &[]).build();
    // Element counts that overflow, and counts that fit but whose byte size overflows
    // (2^62 F32 elements; 2^59 - 1 Q8_0 blocks of 34 bytes): the latter used to panic on
    // multiply overflow (and in release builds wrapped to a small size that passed the bounds
    // check, then panicked allocating the output).
    for dims in [&[1 << 32, 1 << 32][..], &[1 << 62][..]] {
        let err = gguf_error(&one(dims, F32));
        assert_eq!(
            err,
            GgufError::TensorTooLarge {
                name: "t".into(),
                dims: dims.to_vec()
            }
        );
    }
    assert!(matches!(
        gguf_error(&one(&[u64::MAX - 31], Q8_0)),
        GgufError::TensorTooLarge { .. }
    ));
    // 2^62 bytes of F16 is representable: it is simply not in the file.
    assert!(matches!(
        gguf_error(&one(&[1 << 61], F16)),
        GgufError::TensorOutOfBounds { end, .. } if end > 1 << 62
    ));
}

#[test]
fn quantised_rows_hold_whole_blocks() {
    // 32 elements are one Q4_0 block, but as two rows of 16 each row would hold half a block.
    let bytes = GgufWriter::new().tensor("t", &[16, 2], Q4_0, &[0; 18]).build();
    assert!(matches!(
        gguf_error(&bytes),
        GgufError::PartialBlock {
            elements: 16,
            block: 32,
            ..
        }
    ));
}

#[test]
fn duplicate_metadata_keys_are_rejected() {
    // The second block count would silently have won.
    let bytes = tiny_gguf_with(|w| w.u32("llama.block_count", 2));
    assert_eq!(gguf_error(&bytes), GgufError::DuplicateKey("llama.block_count".into()));
}

#[test]
fn metadata_arrays_are_bounded() {
    // 2^21 + 1 one-byte items fit in the file but would take 64 MiB as metadata values; an
    // array at the bound (2^21) reads.
    for (len, ok) in [((1 << 21) + 1, false), (1 << 21, true)] {
        let bytes = GgufWriter::new().raw_array("x", 0, len, &vec![7; len as usize]).build();
        let f = tiny_file(&bytes);
        match GgufFile::open(f.path()) {
            Ok(_) => assert!(ok, "an array of {len} items was accepted"),
            Err(KernelError::Gguf {
                source: GgufError::AbsurdCount { count, .. },
                ..
            }) => assert!(!ok && count == len, "{count}"),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn weights_for_a_config_with_no_heads_are_an_error() {
    // The Q/K row permutation divided by the head count (a panic for a hand-made config).
    let f = tiny_file(&tiny_gguf());
    let gguf = GgufFile::open(f.path()).unwrap();
    let config = ModelConfig {
        n_heads: 0,
        n_kv_heads: 3,
        ..tiny_config()
    };
    let weights = GgufWeights {
        gguf: &gguf,
        config: &config,
    };
    for w in [Weight::Q(0), Weight::K(0)] {
        let err = weights.get(w).err().unwrap();
        assert!(err.to_string().contains("do not divide evenly"), "{err}");
    }
}

#[test]
fn safetensors_shapes_are_checked() {
    let file = |header: &str, data: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        write_hf_dir(dir.path(), TINY_HF_CONFIG, &raw_safetensors(header, data));
        SafetensorsWeights::open_dir(dir.path()).err().map(|e| e.to_string())
    };
    let tensor = |shape: &str, end: usize| {
        format!(r#"{{"model.norm.weight":{{"dtype":"F32","shape":{shape},"data_offsets":[0,{end}]}}}}"#)
    };
    // The tiny model's weights read back with their shapes; a well-formed tensor opens.
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), TINY_HF_CONFIG, &tiny_safetensors());
    let weights = SafetensorsWeights::open_dir(dir.path()).unwrap();
    let down = weights.require(Weight::Down(0)).unwrap();
    assert_eq!((down.shape, down.values.len()), (vec![8, 16], 128));
    assert_eq!(file(&tensor("[4]", 16), &[0; 16]), None);
    // 2^64 elements: used to panic on multiply overflow (in release, wrap to 0 and pass).
    let err = file(&tensor("[4294967296,4294967296]", 0), &[]).unwrap();
    assert!(err.contains("overflows"), "{err}");
    // Entries that are not non-negative integers used to be dropped: [4, -1] read as [4].
    for shape in ["[4,-1]", "[4,1.5]", "[\"4\"]", "4", "null"] {
        let err = file(&tensor(shape, 16), &[0; 16]).unwrap_or_else(|| panic!("{shape} accepted"));
        assert!(err.contains("shape must be a list"), "{shape}: {err}");
    }
}
