//! Typed errors of the Reasoning Kernel.
//!
//! Every error says what was wrong and, where a user can act, what to do about it.

use std::path::PathBuf;

/// Anything the kernel can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A GGUF file is malformed or uses something this reader does not support.
    #[error("GGUF file {path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    /// A model directory or file is readable but not a model this kernel can run.
    #[error("model format: {0}")]
    ModelFormat(String),
    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// No usable compute device.
    #[error("device: {0}")]
    Device(String),
    /// The default model could not be fetched.
    #[error("fetching the default model: {0}")]
    Fetch(String),
    /// A request was rejected before it reached the model.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The KV cache has no room for the request.
    #[error("KV cache full: {0}")]
    CacheFull(String),
    /// The engine thread is gone (it panicked or was shut down).
    #[error("engine stopped: {0}")]
    EngineStopped(String),
    /// A tensor operation failed inside burn.
    #[error("compute: {0}")]
    Compute(String),
    /// An I/O error outside the model file itself.
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Errors are sent to several listeners (a generation's stream and its caller); an I/O error
/// is copied with its kind and message.
impl Clone for KernelError {
    fn clone(&self) -> Self {
        match self {
            KernelError::Gguf { path, source } => KernelError::Gguf {
                path: path.clone(),
                source: source.clone(),
            },
            KernelError::ModelFormat(m) => KernelError::ModelFormat(m.clone()),
            KernelError::Tokenizer(m) => KernelError::Tokenizer(m.clone()),
            KernelError::ChatTemplate(m) => KernelError::ChatTemplate(m.clone()),
            KernelError::Device(m) => KernelError::Device(m.clone()),
            KernelError::Fetch(m) => KernelError::Fetch(m.clone()),
            KernelError::InvalidRequest(m) => KernelError::InvalidRequest(m.clone()),
            KernelError::CacheFull(m) => KernelError::CacheFull(m.clone()),
            KernelError::EngineStopped(m) => KernelError::EngineStopped(m.clone()),
            KernelError::Compute(m) => KernelError::Compute(m.clone()),
            KernelError::Io { path, source } => KernelError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}

/// What is wrong with a GGUF file. Offsets are byte offsets from the start of the file.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum GgufError {
    #[error("cannot read the file: {0}")]
    Io(String),
    #[error("wrong magic {found:02x?} at offset 0: not a GGUF file (expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (this reader supports versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("truncated: needed {needed} bytes for {what} at offset {offset}, file has {file_len}")]
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("unknown metadata value type {value_type} at offset {offset}")]
    UnknownValueType { value_type: u32, offset: u64 },
    #[error("absurd {what} count {count} at offset {offset} (at most {max})")]
    AbsurdCount {
        what: &'static str,
        count: u64,
        max: u64,
        offset: u64,
    },
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    #[error("tensor {name}: unknown or unsupported tensor type {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },
    #[error("tensor {name}: {dims} dimensions (at most 4 supported)")]
    TooManyDims { name: String, dims: u32 },
    #[error("tensor {name}: {elements} elements is not a multiple of the block size {block}")]
    PartialBlock { name: String, elements: u64, block: u64 },
    #[error("tensor {name}: dimensions {dims:?} overflow 64-bit size arithmetic")]
    TensorTooLarge { name: String, dims: Vec<u64> },
    #[error("tensor {name}: data [{start}, {end}) lies past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned { name: String, offset: u64, alignment: u64 },
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u64),
    #[error("duplicate tensor name {0}")]
    DuplicateTensor(String),
    #[error("duplicate metadata key {0}")]
    DuplicateKey(String),
    #[error("missing metadata key {0}")]
    MissingKey(String),
    #[error("metadata key {key} has type {found}, expected {expected}")]
    WrongKeyType {
        key: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("missing tensor {0}")]
    MissingTensor(String),
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;
