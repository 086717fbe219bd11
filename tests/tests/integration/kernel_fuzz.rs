//! Crafted model files, fuzzed: mutated GGUF files (the real default model's header and a tiny
//! synthetic model), mutated safetensors files and mutated `config.json`s go through the
//! readers, the config parsers, the tokenizer and the weight lookup with dequantisation. Each
//! must give a typed error or a usable result: never a panic, and never one allocation out of
//! proportion to the file (a counting allocator watches the thread while a reader runs).
//!
//! Mutations are byte flips, overwrites of the header's integer fields with extreme values
//! (0, 1, `u32::MAX`, `u64::MAX`, `i64::MIN`, lengths near the file's), truncations, and
//! splices (a range copied over or into another place). Case counts are modest so CI runs the
//! whole file in seconds; `PROPTEST_CASES=N` runs N cases of each property instead.
//!
//! A failing input is shrunk and saved as `tests/corpus/<format>/fuzz-<hash>.bin` (inputs over
//! 64 KiB go to the temp directory instead), to be committed with its fix;
//! [`corpus_replays_cleanly`] replays every file there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use agentos_kernel::gguf::GgufFile;
use agentos_kernel::model::weights::{GgufWeights, SafetensorsWeights, Weight, WeightSource};
use agentos_kernel::{KernelError, ModelConfig, Tokenizer};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::kernel_files::crafted::{
    F32, GgufWriter, Meta, Q4_0, Q8_0, TINY_HF_CONFIG, raw_safetensors, tiny_config, tiny_gguf, tiny_gguf_where,
    tiny_gguf_with, tiny_safetensors, write_hf_dir,
};
use crate::support::default_model_path;

#[test]
fn mutated_tiny_gguf_files_never_panic() {
    let base = tiny_gguf();
    let layout = gguf_layout(&base);
    assert_eq!(check_gguf(&base, None), Ok(()));
    assert_eq!(tiny_config(), ModelConfig::from_gguf(&open(&base)).unwrap());
    let len = base.len() as u64;
    fuzz(
        "gguf",
        1500,
        mutations(len),
        |m| apply(&base, &layout.fields, &layout.array_fields, m),
        |input| check_gguf(&input.bytes, None),
    );
}

#[test]
fn mutated_real_model_headers_never_panic() {
    let real = real_header();
    let file_len = real.file_len;
    // The mutated header is followed by zeros up to the real file's length (a sparse file), so
    // tensor infos that still make sense point at data and the weights path runs too.
    assert_eq!(check_gguf(&real.bytes, Some(file_len)), Ok(()));
    fuzz(
        "gguf",
        128,
        mutations(real.bytes.len() as u64),
        |m| apply(&real.bytes, &real.fields, &real.array_fields, m),
        |input| check_gguf(&input.bytes, (!input.truncated).then_some(file_len)),
    );
}

#[test]
fn mutated_safetensors_files_never_panic() {
    let base = tiny_safetensors();
    assert_eq!(check_safetensors(&base), Ok(()));
    let header_len = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    // The length prefix, then every number in the JSON header.
    let mut fields = vec![Field { at: 0, width: 8 }];
    fields.extend(json_numbers(&base[8..8 + header_len], 8));
    let len = base.len() as u64;
    fuzz(
        "safetensors",
        1500,
        mutations(len),
        |m| apply_safetensors(&base, &fields, m),
        |input| check_safetensors(&input.bytes),
    );
}

#[test]
fn mutated_hf_configs_never_yield_absurd_models() {
    let base = TINY_HF_CONFIG.as_bytes().to_vec();
    assert_eq!(check_hf_config(&base), Ok(()));
    let fields = json_numbers(&base, 0);
    fuzz(
        "hf_config",
        1000,
        mutations(base.len() as u64),
        |m| apply_json_numbers(&base, &fields, m),
        |input| check_hf_config(&input.bytes),
    );
}

/// The corpus's hand-made inputs: each broke a reader (a panic, or a config the engine would
/// have sized tables by) before it was fixed. They are kept as files so that
/// [`corpus_replays_cleanly`] covers them with what the fuzzer saved; `AGENTOS_WRITE_CORPUS=1`
/// rewrites them from these recipes.
fn crafted_corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let one = |dims: &[u64], ty: u32| GgufWriter::new().tensor("t", dims, ty, &[]).build();
    let hparam = |key: &str, v: Meta| tiny_gguf_where(key, Some(v));
    let st = |shape: &str, end: usize| {
        let header = format!(r#"{{"model.norm.weight":{{"dtype":"F32","shape":{shape},"data_offsets":[0,{end}]}}}}"#);
        raw_safetensors(&header, &vec![0; end])
    };
    let hf = |changes: &[(&str, serde_json::Value)]| {
        let mut v: serde_json::Value = serde_json::from_str(TINY_HF_CONFIG).unwrap();
        for (k, x) in changes {
            v[*k] = x.clone();
        }
        // Sorted keys, as the saved files have them, whatever order serde_json keeps.
        let sorted: std::collections::BTreeMap<String, serde_json::Value> =
            v.as_object().expect("an object").clone().into_iter().collect();
        serde_json::to_vec_pretty(&sorted).unwrap()
    };
    vec![
        ("gguf", "tensor-f32-bytes-overflow.bin", one(&[1 << 62], F32)),
        ("gguf", "tensor-q8_0-bytes-overflow.bin", one(&[u64::MAX - 31], Q8_0)),
        ("gguf", "tensor-elements-overflow.bin", one(&[1 << 32, 1 << 32], F32)),
        (
            "gguf",
            "tensor-q4_0-half-block-rows.bin",
            GgufWriter::new().tensor("t", &[16, 2], Q4_0, &[0; 18]).build(),
        ),
        (
            "gguf",
            "duplicate-block-count.bin",
            tiny_gguf_with(|w| w.u32("llama.block_count", 2)),
        ),
        (
            "gguf",
            "context-length-2e60.bin",
            hparam("llama.context_length", Meta::U64(1 << 60)),
        ),
        (
            "gguf",
            "context-length-0.bin",
            hparam("llama.context_length", Meta::U32(0)),
        ),
        (
            "gguf",
            "head-count-u32-max.bin",
            hparam("llama.attention.head_count", Meta::U32(u32::MAX)),
        ),
        (
            "gguf",
            "head-count-kv-string.bin",
            hparam("llama.attention.head_count_kv", Meta::Str("one")),
        ),
        (
            "gguf",
            "head-dim-2e40.bin",
            hparam("llama.rope.dimension_count", Meta::U64(1 << 40)),
        ),
        (
            "gguf",
            "feed-forward-0.bin",
            hparam("llama.feed_forward_length", Meta::U32(0)),
        ),
        (
            "gguf",
            "rope-base-nan.bin",
            hparam("llama.rope.freq_base", Meta::F32(f32::NAN)),
        ),
        (
            "gguf",
            "rms-eps-negative.bin",
            hparam("llama.attention.layer_norm_rms_epsilon", Meta::F32(-1.0)),
        ),
        (
            "safetensors",
            "shape-elements-overflow.bin",
            st("[4294967296,4294967296]", 0),
        ),
        (
            "safetensors",
            "shape-bytes-overflow.bin",
            st("[4611686018427387904]", 0),
        ),
        ("safetensors", "shape-negative-dim.bin", st("[4,-1]", 16)),
        (
            "hf_config",
            "context-2e60.json",
            hf(&[("max_position_embeddings", (1u64 << 60).into())]),
        ),
        ("hf_config", "heads-0.json", hf(&[("num_attention_heads", 0.into())])),
        (
            "hf_config",
            "head-dim-2e40.json",
            hf(&[("head_dim", (1u64 << 40).into())]),
        ),
        (
            "hf_config",
            "rope-tables-4gib.json",
            hf(&[("head_dim", 1024.into()), ("max_position_embeddings", (1 << 20).into())]),
        ),
        (
            "hf_config",
            "rope-theta-overflows-f32.json",
            hf(&[("rope_theta", 1e300.into())]),
        ),
    ]
}

#[test]
fn crafted_corpus_files_match_their_recipes() {
    let write = std::env::var_os("AGENTOS_WRITE_CORPUS").is_some();
    for (format, name, bytes) in crafted_corpus() {
        let path = corpus_dir(format).join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let saved = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (AGENTOS_WRITE_CORPUS=1 writes it)", path.display()));
        assert!(saved == bytes, "{} differs from its recipe", path.display());
        assert!(bytes.len() <= 16 << 10, "{name}: {} bytes", bytes.len());
    }
}

/// Every saved input (found by the properties above or made by [`crafted_corpus`]) is
/// handled cleanly.
#[test]
fn corpus_replays_cleanly() {
    let mut replayed = 0;
    for (format, check) in [
        (
            "gguf",
            (|b: &[u8]| check_gguf(b, None)) as fn(&[u8]) -> Result<(), String>,
        ),
        ("safetensors", check_safetensors),
        ("hf_config", check_hf_config),
    ] {
        let dir = corpus_dir(format);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap();
            if let Err(why) = check(&bytes) {
                panic!("{}: {why}", path.display());
            }
            replayed += 1;
        }
    }
    assert!(replayed >= crafted_corpus().len(), "only {replayed} corpus files");
}

// ---- What each input goes through -------------------------------------------------------

/// Tensors larger than this are not dequantised by the checks (a mutated header may point a
/// tensor at 90 MB of the real file's zeros, which would be a legitimate allocation).
const MAX_READ_ELEMENTS: u64 = 1 << 20;

/// The largest single allocation the readers may make for an input of `len` bytes: generous
/// for what a well-formed file of that size needs (metadata arrays are 32 bytes an item in
/// memory), far below what any unchecked count would ask for.
fn allocation_limit(len: usize) -> usize {
    (len.saturating_mul(64)).clamp(16 << 20, 128 << 20)
}

/// Runs the GGUF reader, the config and tokenizer parsers, the dequantisation of every small
/// tensor and the weight lookup over a file of `bytes` (extended with zeros to `extend_to`).
fn check_gguf(bytes: &[u8], extend_to: Option<u64>) -> Result<(), String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    if let Some(len) = extend_to {
        file.as_file().set_len(len.max(bytes.len() as u64)).unwrap();
    }
    guarded(allocation_limit(bytes.len()), || exercise_gguf(file.path()))
}

fn exercise_gguf(path: &Path) {
    let gguf = match GgufFile::open(path) {
        Ok(g) => g,
        Err(e) => return expect_error(&e, "GgufFile::open", |e| matches!(e, KernelError::Gguf { .. })),
    };
    let model_error = |e: &KernelError| matches!(e, KernelError::Gguf { .. } | KernelError::ModelFormat(_));
    let config = ModelConfig::from_gguf(&gguf);
    match &config {
        Ok(c) => assert_plausible(c),
        Err(e) => expect_error(e, "ModelConfig::from_gguf", model_error),
    }
    if let Err(e) = Tokenizer::from_gguf(&gguf) {
        expect_error(&e, "Tokenizer::from_gguf", |e| {
            matches!(e, KernelError::Gguf { .. } | KernelError::Tokenizer(_))
        });
    }
    for t in gguf.tensors() {
        if t.n_elements() > MAX_READ_ELEMENTS {
            continue;
        }
        match gguf.tensor_f32(&t.name) {
            Ok((values, dims)) => {
                assert_eq!(values.len() as u64, t.n_elements(), "{}", t.name);
                assert_eq!(dims, t.dims, "{}", t.name);
            }
            Err(e) => expect_error(&e, "GgufFile::tensor_f32", model_error),
        }
    }
    // With the file's own config when it has a valid one, else the tiny model's, so the
    // lookup (and Llama's Q/K row permutation) runs on mutated tensors either way.
    let config = config.unwrap_or_else(|_| tiny_config());
    let weights = GgufWeights {
        gguf: &gguf,
        config: &config,
    };
    for w in weights_of(config.n_layers.min(2)) {
        let small = gguf
            .tensor_info(&gguf_name(w))
            .is_some_and(|t| t.n_elements() <= MAX_READ_ELEMENTS);
        if !small {
            continue;
        }
        match weights.get(w) {
            Ok(Some(t)) => assert_consistent(&t.values, &t.shape, w),
            Ok(None) => panic!("{w:?}: the tensor is there but the lookup found none"),
            Err(e) => expect_error(&e, "GgufWeights::get", model_error),
        }
    }
}

/// Opens a directory holding `bytes` as its only safetensors file and reads every weight.
fn check_safetensors(bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), TINY_HF_CONFIG, bytes);
    guarded(allocation_limit(bytes.len()), || {
        let weights = match SafetensorsWeights::open_dir(dir.path()) {
            Ok(w) => w,
            Err(e) => {
                return expect_error(&e, "SafetensorsWeights::open_dir", |e| {
                    matches!(e, KernelError::ModelFormat(_))
                });
            }
        };
        for w in weights_of(2) {
            match weights.get(w) {
                Ok(Some(t)) => assert_consistent(&t.values, &t.shape, w),
                Ok(None) => {}
                Err(e) => expect_error(&e, "SafetensorsWeights::get", |e| {
                    matches!(e, KernelError::ModelFormat(_))
                }),
            }
        }
    })
}

fn check_hf_config(bytes: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(()); // the engine reads config.json with read_to_string, which rejects it
    };
    guarded(allocation_limit(bytes.len()), || {
        match ModelConfig::from_hf_json(text) {
            Ok(c) => assert_plausible(&c),
            Err(e) => expect_error(&e, "ModelConfig::from_hf_json", |e| {
                matches!(e, KernelError::ModelFormat(_))
            }),
        }
    })
}

/// A config the engine can be built from without an allocation the weights do not back: the
/// RoPE tables are precomputed for the whole context (two f32 tables of context × head_dim),
/// and the shapes derived from the heads must not overflow.
fn assert_plausible(c: &ModelConfig) {
    let rope_bytes = c.context_length.checked_mul(c.head_dim).and_then(|n| n.checked_mul(8));
    assert!(
        rope_bytes.is_some_and(|b| b <= 1 << 30),
        "RoPE tables of {rope_bytes:?} bytes: {c:?}"
    );
    assert!(c.context_length > 0 && c.intermediate_size > 0, "degenerate: {c:?}");
    assert!(c.n_heads.checked_mul(c.head_dim).is_some_and(|q| q <= 1 << 20), "{c:?}");
    assert!(c.n_heads.is_multiple_of(c.n_kv_heads), "{c:?}");
    assert!(c.rope_theta.is_finite() && c.rope_theta > 0.0, "RoPE base: {c:?}");
    assert!(
        c.rms_norm_eps.is_finite() && c.rms_norm_eps >= 0.0,
        "RMS norm epsilon: {c:?}"
    );
}

/// A weight's values are exactly what its shape says (the transformer indexes by the shape).
fn assert_consistent(values: &[f32], shape: &[usize], w: impl std::fmt::Debug) {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    assert_eq!(
        n,
        Some(values.len()),
        "{w:?}: shape {shape:?} for {} values",
        values.len()
    );
}

fn expect_error(e: &KernelError, what: &str, expected: impl Fn(&KernelError) -> bool) {
    assert!(expected(e), "{what} failed with an unexpected kind of error: {e:?}");
    assert!(!e.to_string().is_empty(), "{what}: an error without a message");
}

fn open(bytes: &[u8]) -> GgufFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    GgufFile::open(file.path()).unwrap()
}

/// Every weight the transformer asks for in the first `layers` layers.
fn weights_of(layers: usize) -> Vec<Weight> {
    let mut all = vec![Weight::Embedding, Weight::FinalNorm, Weight::Output];
    for i in 0..layers {
        all.extend([
            Weight::AttnNorm(i),
            Weight::Q(i),
            Weight::K(i),
            Weight::V(i),
            Weight::QBias(i),
            Weight::KBias(i),
            Weight::VBias(i),
            Weight::O(i),
            Weight::FfnNorm(i),
            Weight::Gate(i),
            Weight::Up(i),
            Weight::Down(i),
        ]);
    }
    all
}

/// The llama.cpp name of a weight in a GGUF file.
fn gguf_name(w: Weight) -> String {
    match w {
        Weight::Embedding => "token_embd.weight".into(),
        Weight::FinalNorm => "output_norm.weight".into(),
        Weight::Output => "output.weight".into(),
        Weight::AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
        Weight::Q(i) => format!("blk.{i}.attn_q.weight"),
        Weight::K(i) => format!("blk.{i}.attn_k.weight"),
        Weight::V(i) => format!("blk.{i}.attn_v.weight"),
        Weight::QBias(i) => format!("blk.{i}.attn_q.bias"),
        Weight::KBias(i) => format!("blk.{i}.attn_k.bias"),
        Weight::VBias(i) => format!("blk.{i}.attn_v.bias"),
        Weight::O(i) => format!("blk.{i}.attn_output.weight"),
        Weight::FfnNorm(i) => format!("blk.{i}.ffn_norm.weight"),
        Weight::Gate(i) => format!("blk.{i}.ffn_gate.weight"),
        Weight::Up(i) => format!("blk.{i}.ffn_up.weight"),
        Weight::Down(i) => format!("blk.{i}.ffn_down.weight"),
    }
}

/// An integer (or float) field of a GGUF header: where it is and how many bytes wide.
#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    width: usize,
}

/// Where the integer fields of a well-formed GGUF header lie.
struct GgufLayout {
    /// Counts, lengths, types, dimensions, offsets and scalar values outside arrays.
    fields: Vec<Field>,
    /// Fields inside metadata arrays (string lengths and items of the vocabulary...).
    array_fields: Vec<Field>,
    /// Where the tensor data starts (the end of the header, aligned).
    data_start: usize,
}

/// Walks a well-formed GGUF header (panics on a malformed one: only use it on files the
/// reader accepts).
fn gguf_layout(bytes: &[u8]) -> GgufLayout {
    let mut w = Walk {
        bytes,
        pos: 8,
        in_array: false,
        layout: GgufLayout {
            fields: vec![Field { at: 4, width: 4 }],
            array_fields: vec![],
            data_start: 0,
        },
    };
    let n_tensors = w.field(8);
    let n_kv = w.field(8);
    let mut alignment = 32;
    for _ in 0..n_kv {
        let key = w.string();
        let value_type = w.field(4) as u32;
        let value = w.value(value_type);
        if key == "general.alignment" {
            alignment = value as usize;
        }
    }
    for _ in 0..n_tensors {
        w.string();
        let n_dims = w.field(4);
        for _ in 0..n_dims {
            w.field(8);
        }
        w.field(4);
        w.field(8);
    }
    w.layout.data_start = w.pos.next_multiple_of(alignment);
    w.layout
}

struct Walk<'a> {
    bytes: &'a [u8],
    pos: usize,
    in_array: bool,
    layout: GgufLayout,
}

impl Walk<'_> {
    fn field(&mut self, width: usize) -> u64 {
        let f = Field { at: self.pos, width };
        if self.in_array {
            self.layout.array_fields.push(f);
        } else {
            self.layout.fields.push(f);
        }
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(&self.bytes[self.pos..self.pos + width]);
        self.pos += width;
        u64::from_le_bytes(v)
    }

    fn string(&mut self) -> String {
        let len = self.field(8) as usize;
        let s = String::from_utf8_lossy(&self.bytes[self.pos..self.pos + len]).into_owned();
        self.pos += len;
        s
    }

    /// Reads one value; returns it when it is an integer.
    fn value(&mut self, value_type: u32) -> u64 {
        match value_type {
            0 | 1 | 7 => self.field(1),
            2 | 3 => self.field(2),
            4..=6 => self.field(4),
            10..=12 => self.field(8),
            8 => {
                self.string();
                0
            }
            9 => {
                let item_type = self.field(4) as u32;
                let len = self.field(8);
                let outer = self.in_array;
                self.in_array = true;
                for _ in 0..len {
                    self.value(item_type);
                }
                self.in_array = outer;
                0
            }
            other => panic!("value type {other} in a file the reader accepted"),
        }
    }
}

// ---- Mutations ------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte.
    Flip(Index, u8),
    /// Overwrite one of the base's integer fields (little-endian, cut to its width).
    Field(Index, u64),
    /// The same inside a metadata array (the vocabulary's string lengths, token types...).
    ArrayField(Index, u64),
    /// Cut the file here.
    Truncate(Index),
    /// Copy up to `len` bytes from one place over another.
    Overwrite { from: Index, to: Index, len: usize },
    /// Copy up to `len` bytes from one place and insert them at another.
    Insert { from: Index, to: Index, len: usize },
}

/// Values that break size arithmetic: boundaries of the integer types, bit patterns of
/// infinities and NaN (for f32 fields), and lengths near the file's.
fn extreme(len: u64) -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            3,
            4,
            7,
            31,
            32,
            255,
            1 << 16,
            0x7f80_0000, // f32 +inf
            0xff80_0000, // f32 -inf
            0x7fc0_0000, // f32 NaN
            0x8000_0000,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            1 << 40,
            1 << 60,
            1 << 62,
            i64::MAX as u64,
            i64::MIN as u64,
            u64::MAX - 1,
            u64::MAX,
            len / 2,
            len.saturating_sub(8),
            len.saturating_sub(1),
            len,
            len + 1,
        ]),
        0..len.max(1),
        any::<u64>(),
    ]
}

/// One to three mutations (field overwrites of kinds the base lacks are no-ops).
fn mutations(len: u64) -> impl Strategy<Value = Vec<Mutation>> {
    let v = extreme(len);
    let one = prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        4 => (any::<Index>(), v.clone()).prop_map(|(i, v)| Mutation::Field(i, v)),
        1 => (any::<Index>(), v).prop_map(|(i, v)| Mutation::ArrayField(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1..64usize).prop_map(|(from, to, len)| Mutation::Overwrite { from, to, len }),
        1 => (any::<Index>(), any::<Index>(), 1..64usize).prop_map(|(from, to, len)| Mutation::Insert { from, to, len }),
    ];
    prop::collection::vec(one, 1..4)
}

/// A mutated file; `truncated` when a mutation cut it (so it must not be padded back out).
#[derive(Debug, Clone)]
struct Input {
    bytes: Vec<u8>,
    truncated: bool,
}

fn apply(base: &[u8], fields: &[Field], array_fields: &[Field], mutations: &[Mutation]) -> Input {
    let mut b = base.to_vec();
    let mut truncated = false;
    for m in mutations {
        match m {
            Mutation::Field(i, v) if !fields.is_empty() => write_field(&mut b, fields[i.index(fields.len())], *v),
            Mutation::ArrayField(i, v) if !array_fields.is_empty() => {
                write_field(&mut b, array_fields[i.index(array_fields.len())], *v)
            }
            Mutation::Truncate(i) => {
                b.truncate(i.index(b.len() + 1));
                truncated = true;
            }
            other => bytewise(&mut b, other),
        }
    }
    Input { bytes: b, truncated }
}

fn write_field(b: &mut [u8], f: Field, v: u64) {
    if let Some(dst) = b.get_mut(f.at..f.at + f.width) {
        dst.copy_from_slice(&v.to_le_bytes()[..f.width]);
    }
}

/// The mutations that know nothing of the format.
fn bytewise(b: &mut Vec<u8>, m: &Mutation) {
    if b.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(i, x) => {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        Mutation::Overwrite { from, to, len } => {
            let (from, to) = (from.index(b.len()), to.index(b.len()));
            let n = (*len).min(b.len() - from).min(b.len() - to);
            b.copy_within(from..from + n, to);
        }
        Mutation::Insert { from, to, len } => {
            let (from, to) = (from.index(b.len()), to.index(b.len()));
            let n = (*len).min(b.len() - from);
            let piece = b[from..from + n].to_vec();
            b.splice(to..to, piece);
        }
        Mutation::Truncate(i) => b.truncate(i.index(b.len() + 1)),
        Mutation::Field(..) | Mutation::ArrayField(..) => {}
    }
}

/// The decimal numbers of a JSON text, as fields `offset` bytes into the file.
fn json_numbers(json: &[u8], offset: usize) -> Vec<Field> {
    let mut out = vec![];
    let mut i = 0;
    while i < json.len() {
        if json[i].is_ascii_digit() || json[i] == b'-' {
            let start = i;
            while i < json.len() && (json[i].is_ascii_digit() || b".eE+-".contains(&json[i])) {
                i += 1;
            }
            out.push(Field {
                at: offset + start,
                width: i - start,
            });
        } else {
            i += 1;
        }
    }
    out
}

/// Number replacements written as JSON text: extreme integers, negatives and floats.
fn json_number_text(v: u64) -> String {
    match v % 8 {
        0 => format!("-{v}"),
        1 => format!("{v}.5"),
        2 => "1e300".into(),
        3 => format!("{v}0"), // past u64::MAX when v is large
        _ => v.to_string(),
    }
}

/// Replaces numbers inside a JSON text (`Field` mutations) and applies the others bytewise.
fn apply_json_numbers(base: &[u8], numbers: &[Field], mutations: &[Mutation]) -> Input {
    let mut b = base.to_vec();
    let picks = mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::Field(i, v) if !numbers.is_empty() => Some((numbers[i.index(numbers.len())], *v)),
            _ => None,
        })
        .collect();
    replace_numbers(&mut b, picks);
    let mut truncated = false;
    for m in mutations {
        truncated |= matches!(m, Mutation::Truncate(_));
        bytewise(&mut b, m);
    }
    Input { bytes: b, truncated }
}

fn replace_numbers(json: &mut Vec<u8>, mut picks: Vec<(Field, u64)>) {
    // From the last number backwards, so earlier offsets stay valid.
    picks.sort_by_key(|(f, _)| std::cmp::Reverse(f.at));
    picks.dedup_by_key(|(f, _)| f.at);
    for (f, v) in picks {
        json.splice(f.at..f.at + f.width, json_number_text(v).into_bytes());
    }
}

/// Safetensors: field 0 is the header length prefix (overwritten in place, last); the others
/// are JSON numbers, replaced as text with the prefix kept matching the header, so the JSON
/// still parses and the reader's own checks are what is exercised.
fn apply_safetensors(base: &[u8], fields: &[Field], mutations: &[Mutation]) -> Input {
    let header_len = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let mut prefix = None;
    let mut picks = vec![];
    for m in mutations {
        if let Mutation::Field(i, v) = m {
            match i.index(fields.len()) {
                0 => prefix = Some(*v),
                k => picks.push((
                    Field {
                        at: fields[k].at - 8,
                        width: fields[k].width,
                    },
                    *v,
                )),
            }
        }
    }
    let mut header = base[8..8 + header_len].to_vec();
    replace_numbers(&mut header, picks);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header);
    b.extend(&base[8 + header_len..]);
    let mut truncated = false;
    for m in mutations {
        truncated |= matches!(m, Mutation::Truncate(_));
        bytewise(&mut b, m);
    }
    if let Some(v) = prefix {
        write_field(&mut b, Field { at: 0, width: 8 }, v);
    }
    Input { bytes: b, truncated }
}

// ---- Running and reporting ---------------------------------------------------------------

/// Runs `cases` mutations of one base through `check`; a failure is shrunk, saved to the
/// corpus and reported with the input's first bytes.
fn fuzz<S: Strategy<Value = Vec<Mutation>>>(
    format: &str,
    cases: u32,
    strategy: S,
    input: impl Fn(&[Mutation]) -> Input,
    check: impl Fn(&Input) -> Result<(), String>,
) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    });
    let result = runner.run(&strategy, |m| check(&input(&m)).map_err(TestCaseError::fail));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, m)) => {
            let failing = input(&m);
            let saved = save_failure(format, &failing.bytes);
            panic!(
                "{format} input of {} bytes ({} bytes shown){}: {why}\nmutations: {m:?}\nsaved to {}\nstarts {}",
                failing.bytes.len(),
                failing.bytes.len().min(64),
                if failing.truncated { ", truncated" } else { "" },
                saved.display(),
                hex(&failing.bytes[..failing.bytes.len().min(64)]),
            );
        }
        Err(TestError::Abort(why)) => panic!("{format}: proptest gave up: {why}"),
    }
}

fn corpus_dir(format: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(format)
}

fn save_failure(format: &str, bytes: &[u8]) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    let dir = if bytes.len() <= 64 << 10 {
        corpus_dir(format)
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("fuzz-{:016x}.bin", h.finish()));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes)) {
        Ok(()) => path,
        Err(e) => PathBuf::from(format!("nowhere ({e})")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default model's header (everything before the tensor data) and where its fields are.
struct RealHeader {
    bytes: Vec<u8>,
    fields: Vec<Field>,
    array_fields: Vec<Field>,
    /// The whole file's length.
    file_len: u64,
}

fn real_header() -> RealHeader {
    use std::io::Read;
    let path = default_model_path();
    let file_len = std::fs::metadata(&path).unwrap().len();
    // The header (1.8 MB, most of it the vocabulary) is well within the first 8 MiB.
    let mut bytes = vec![];
    std::fs::File::open(&path)
        .unwrap()
        .take(8 << 20)
        .read_to_end(&mut bytes)
        .unwrap();
    let layout = gguf_layout(&bytes);
    bytes.truncate(layout.data_start);
    RealHeader {
        bytes,
        fields: layout.fields,
        array_fields: layout.array_fields,
        file_len,
    }
}

/// Runs `f` with the panic caught and the thread's largest allocation measured.
fn guarded(limit: usize, f: impl FnOnce()) -> Result<(), String> {
    PEAK.set(0);
    ARMED.set(true);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    ARMED.set(false);
    let peak = PEAK.get();
    match outcome {
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            Err(format!("panicked: {msg}"))
        }
        Ok(()) if peak > limit => Err(format!("allocated {peak} bytes at once (at most {limit} allowed)")),
        Ok(()) => Ok(()),
    }
}

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, noting the largest request of a thread inside [`guarded`].
struct PeakAllocator;

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; `note` only touches const-initialised
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for PeakAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakAllocator = PeakAllocator;
