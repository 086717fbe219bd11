//! The engine: a loaded model, its tokenizer and template, a KV cache, and the sequences in it.
//!
//! [`Engine::forward`] advances any mix of sequences (prefill chunks and single-token decode
//! steps) in one batched pass. [`generate::Batcher`] builds continuous batching on top of it,
//! and [`thread::EngineThread`] runs it on a dedicated thread (burn compute is blocking).

pub mod generate;
pub mod sampling;
pub mod thread;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{DType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::chat::{CHATML_TEMPLATE, ChatTemplate};
use crate::device::{DeviceChoice, SelectedDevice, select_device};
use crate::error::{KernelError, Result};
use crate::gguf::GgufFile;
use crate::grammar::{Constraint, GrammarCompiler, SequenceGrammar};
use crate::kv_cache::{BlockTable, KvCache, KvCacheConfig, KvStorage, PrefixParent};
use crate::model::transformer::{AttentionWanted, SequenceSlice};
use crate::model::weights::{GgufWeights, SafetensorsWeights, WeightSource};
use crate::model::{ModelConfig, Transformer, WeightDtype};
use crate::model_spec::ModelSpec;
use crate::tokenizer::{TokenId, Tokenizer};

/// Everything that tunes the engine, with documented defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineConfig {
    /// How weights are kept (default `Auto`: a GGUF file's quantised blocks computed on
    /// directly on the CPU, f16 elsewhere).
    pub dtype: WeightDtype,
    /// Device to run on (default: `AGENTOS_DEVICE`, else auto).
    pub device: DeviceChoice,
    pub kv_cache: KvCacheConfig,
    /// Most tokens one batched forward processes; long prompts are prefilled in chunks of at
    /// most this size so decodes of other sequences keep flowing (default 256).
    pub max_batch_tokens: usize,
    /// Most sequences generating at once; further requests wait (default 32).
    pub max_running: usize,
    /// When every running slot is taken and a request of the same priority waits, a sequence
    /// that has generated this many tokens since it was (re)admitted is paused, keeping its KV
    /// blocks, to let the other in: round-robin within a class. 0 turns rotation off (default 32).
    #[serde(default = "default_time_slice")]
    pub time_slice_tokens: usize,
    /// On the CPU (flex), run the hot paths with the kernel's own host code instead of burn's:
    /// the KV pools are host memory and decode attention reads them in place (no per-layer
    /// gather), and with `auto` or f16 weights every matmul uses a host kernel instead of burn's
    /// gemm (which converts and repacks the weights on every call): the quantised kernel on a
    /// GGUF file's own blocks, else the f16 kernel. Default true. (Called
    /// `host_matmul` before it covered attention; that name is still read.)
    #[serde(default = "default_host_kernels", alias = "host_matmul")]
    pub host_kernels: bool,
    /// Most decoding sequences one step advances; more take turns across steps. `None`
    /// (default): 8 when the host matmul runs the decodes, where a step's time grows with its
    /// rows past about 8 (so smaller steps cost little throughput and bound how long an urgent
    /// request waits for the step in flight), otherwise no limit beyond `max_running`.
    #[serde(default)]
    pub max_step_decodes: Option<usize>,
    /// Most prompt tokens a step that also advances decodes may prefill; a step with no decodes
    /// (an idle engine, an urgent request's own step) still takes `max_batch_tokens`. `None`
    /// (default): 32 when the host matmul runs the steps, where a step's time grows with every
    /// row (256 prompt rows take about 0.6 s on two cores, 15 times a decode step, and both the
    /// decodes and an urgent request that arrives meanwhile wait that long), otherwise
    /// `max_batch_tokens`.
    #[serde(default)]
    pub max_step_prefill_with_decodes: Option<usize>,
    /// Jinja source that replaces the chat template the model ships (as llama.cpp's
    /// `--chat-template-file`): for a file whose template is missing, wrong, or lacks the tools
    /// branch its model was trained with. `None` (default): the model's own.
    #[serde(default)]
    pub chat_template: Option<String>,
}

fn default_time_slice() -> usize {
    32
}

fn default_host_kernels() -> bool {
    true
}

impl EngineConfig {
    /// The decodes one step takes (see `max_step_decodes`).
    pub fn step_decodes(&self, host_matmul: bool) -> usize {
        match (self.max_step_decodes, host_matmul) {
            (Some(n), _) => n,
            (None, true) => 8,
            (None, false) => self.max_running,
        }
    }

    /// The prompt tokens a step with decodes may prefill (see `max_step_prefill_with_decodes`).
    pub fn step_prefill_with_decodes(&self, host_matmul: bool) -> usize {
        match (self.max_step_prefill_with_decodes, host_matmul) {
            (Some(n), _) => n,
            (None, true) => 32,
            (None, false) => self.max_batch_tokens,
        }
    }

    /// Whether the host kernels (f16, or quantised for `Auto`) run the matmuls on the device
    /// named `device`.
    pub fn uses_host_matmul(&self, device: &str) -> bool {
        self.uses_host_kv(device) && self.dtype != WeightDtype::F32
    }

    /// Whether the KV pools are host memory read in place by the host decode attention.
    pub fn uses_host_kv(&self, device: &str) -> bool {
        self.host_kernels && device == "flex"
    }

    /// Where the KV pools live on the device named `device`: host memory with the host
    /// kernels, else device tensors; f16 unless the weights are f32.
    pub fn kv_storage(&self, device: &str) -> KvStorage {
        match (self.uses_host_kv(device), self.dtype) {
            (false, WeightDtype::F16 | WeightDtype::Auto) => KvStorage::DeviceF16,
            (false, WeightDtype::F32) => KvStorage::DeviceF32,
            (true, WeightDtype::F16 | WeightDtype::Auto) => KvStorage::HostF16,
            (true, WeightDtype::F32) => KvStorage::HostF32,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            dtype: WeightDtype::default(),
            device: DeviceChoice::from_env().unwrap_or_default(),
            kv_cache: KvCacheConfig::default(),
            max_batch_tokens: 256,
            max_running: 32,
            time_slice_tokens: default_time_slice(),
            host_kernels: default_host_kernels(),
            max_step_decodes: None,
            max_step_prefill_with_decodes: None,
            chat_template: None,
        }
    }
}

/// Identifies a sequence in the engine's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SequenceId(pub u64);

/// Which logits a forward should return for a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    None,
    /// Only for the last new token (generation).
    Last,
    /// For every new token (scoring, teacher forcing).
    All,
}

/// One sequence's part of a batched forward.
#[derive(Debug, Clone)]
pub struct ForwardItem {
    pub sequence: SequenceId,
    pub tokens: Vec<TokenId>,
    pub logits: LogitsWanted,
    /// Return attention probabilities of the new tokens (costs a read-back; free when false).
    pub attention: bool,
    /// Return the entropy of every attention row of the new tokens (a small read-back: one
    /// value per layer, head and token, whatever the context length).
    pub entropy: bool,
    /// Return the mean-pooled final hidden state of the new tokens.
    pub embedding: bool,
}

impl ForwardItem {
    pub fn new(sequence: SequenceId, tokens: Vec<TokenId>) -> Self {
        ForwardItem {
            sequence,
            tokens,
            logits: LogitsWanted::Last,
            attention: false,
            entropy: false,
            embedding: false,
        }
    }
}

/// Attention probabilities of `n_new` tokens over their `context` (all tokens up to and
/// including each new token's position; later keys have probability 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionMaps {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_new: usize,
    pub context: usize,
    /// Absolute position of the first new token.
    pub start_pos: usize,
    /// `[layer][head][new token][context]`, row-major.
    pub probs: Vec<f32>,
}

impl AttentionMaps {
    /// The row of attention probabilities of new token `i` for one layer and head.
    pub fn row(&self, layer: usize, head: usize, i: usize) -> &[f32] {
        let at = ((layer * self.n_heads + head) * self.n_new + i) * self.context;
        &self.probs[at..at + self.context]
    }
}

/// The entropy `-Σ p ln p` of the attention rows of `n_tokens` consecutive tokens, token `i`
/// at absolute position `start_pos + i` attending to the `start_pos + i + 1` positions up to
/// and including itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionEntropy {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_tokens: usize,
    pub start_pos: usize,
    /// `[layer][head][token]`, row-major.
    pub values: Vec<f32>,
}

impl AttentionEntropy {
    /// The entropy of token `i`'s attention in one layer and head.
    pub fn get(&self, layer: usize, head: usize, i: usize) -> f32 {
        self.values[(layer * self.n_heads + head) * self.n_tokens + i]
    }
}

/// A text's tokens, their text pieces and the entropy of their attention (see
/// [`Engine::analyze`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextAttention {
    pub tokens: Vec<TokenId>,
    /// One piece per token; together they are the text (a character split across tokens is in
    /// the piece of its last token).
    pub pieces: Vec<String>,
    /// Spans in order that together cover every token; each token attended to the whole text
    /// before it (the text is one sequence, read in chunks). Empty without attention.
    pub entropy: Vec<AttentionEntropy>,
}

/// Embeddings of texts and the tokens it took to compute them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embeddings {
    /// One mean-pooled final hidden state per text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens run through the model for them.
    pub tokens: usize,
}

/// What a forward returns for one sequence.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    /// One row of `vocab` logits per requested position.
    pub logits: Vec<Vec<f32>>,
    pub attention: Option<AttentionMaps>,
    pub entropy: Option<AttentionEntropy>,
    pub embedding: Option<Vec<f32>>,
}

/// Counters the engine keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineStats {
    pub forwards: u64,
    pub tokens_processed: u64,
    pub forward_seconds: f64,
    pub sequences: usize,
    pub kv_used_blocks: usize,
    pub kv_max_blocks: usize,
    pub kv_allocated_bytes: usize,
    /// Blocks kept only by the prefix cache.
    pub kv_cached_blocks: usize,
    /// Prompt tokens served from the prefix cache instead of computed.
    pub prefix_cached_tokens: u64,
    /// The batcher's figures, filled in by the engine thread (zero from [`Engine::stats`]):
    /// requests waiting for a slot, sequences running, tokens generated, and running
    /// sequences paused for a more urgent request.
    #[serde(default)]
    pub waiting_requests: usize,
    #[serde(default)]
    pub running_sequences: usize,
    #[serde(default)]
    pub generated_tokens: u64,
    #[serde(default)]
    pub preemptions: u64,
}

/// Where a sequence's prefix chain stands.
#[derive(Debug, Clone)]
struct PrefixChain {
    /// The parent of its next full block (the block holding the prefix before it).
    parent: PrefixParent,
    full_blocks: usize,
    /// Tokens of its partly filled last block.
    pending: Vec<TokenId>,
}

impl Default for PrefixChain {
    fn default() -> Self {
        PrefixChain {
            parent: PrefixParent::Root,
            full_blocks: 0,
            pending: Vec::new(),
        }
    }
}

/// Facts about the loaded model and device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub config: ModelConfig,
    pub dtype: WeightDtype,
    pub device: String,
    pub device_description: String,
    pub device_reason: String,
    /// The chat template has a tools branch with `<tool_call>` calls
    /// ([`ChatTemplate::has_tools_branch`]): callers pass tools to it
    /// ([`Prompt::ChatWithTools`](crate::Prompt::ChatWithTools)) instead of writing their own.
    #[serde(default)]
    pub template_has_tools_branch: bool,
    /// How the weight matrices are held, e.g. `Q4_1 x210, Q8_0 x1` (quantised blocks computed on
    /// directly) or `f16`.
    #[serde(default)]
    pub weights: String,
}

pub struct Engine {
    model: Transformer,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    kv: KvCache,
    sequences: HashMap<SequenceId, BlockTable>,
    /// Per sequence: where its prefix hash chain stands, for registering its full blocks.
    chains: HashMap<SequenceId, PrefixChain>,
    next_sequence: u64,
    config: EngineConfig,
    info: ModelInfo,
    stats: EngineStats,
    /// Built on the first constrained request (it indexes the whole vocabulary).
    grammars: std::sync::OnceLock<std::result::Result<Arc<GrammarCompiler>, String>>,
}

impl Engine {
    /// Loads a model (fetching the default one if needed) onto the configured device.
    pub fn load(spec: &ModelSpec, config: EngineConfig) -> Result<Self> {
        let path = spec.resolve()?;
        let device = select_device(config.device)?;
        let config = with_dtype_the_device_computes(config, &device)?;
        let started = Instant::now();
        let (model_config, tokenizer, template, model) = if path.is_dir() {
            load_hf_dir(&path, &config, &device)?
        } else {
            load_gguf(&path, &config, &device)?
        };
        let weights = model.weight_summary();
        tracing::info!(
            model = %spec.name(),
            dtype = config.dtype.name(),
            weights = %weights,
            device = %device.name,
            seconds = started.elapsed().as_secs_f64(),
            "model loaded"
        );
        give_back_freed_heap();
        let kv = KvCache::new(
            config.kv_cache,
            &model_config,
            &device.device,
            config.kv_storage(&device.name),
        )?;
        let info = ModelInfo {
            name: spec.name(),
            config: model_config,
            dtype: config.dtype,
            device: device.name.clone(),
            device_description: device.description.clone(),
            device_reason: device.reason.clone(),
            template_has_tools_branch: template.has_tools_branch(),
            weights,
        };
        Ok(Engine {
            model,
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            kv,
            sequences: HashMap::new(),
            chains: HashMap::new(),
            next_sequence: 0,
            config,
            info,
            stats: EngineStats::default(),
            grammars: std::sync::OnceLock::new(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The state of a new sequence constrained by `constraint`, or why its grammar does not
    /// compile.
    pub fn grammar(&self, constraint: &Constraint) -> Result<SequenceGrammar> {
        let compiler = self
            .grammars
            .get_or_init(|| {
                GrammarCompiler::new(self.tokenizer.clone())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| KernelError::InvalidRequest(e.clone()))?;
        compiler.start(constraint)
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn template(&self) -> &Arc<ChatTemplate> {
        &self.template
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.model.config
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            sequences: self.sequences.len(),
            kv_used_blocks: self.kv.used_blocks(),
            kv_max_blocks: self.kv.max_blocks(),
            kv_allocated_bytes: self.kv.allocated_bytes(),
            kv_cached_blocks: self.kv.cached_blocks(),
            ..self.stats.clone()
        }
    }

    /// Starts an empty sequence.
    pub fn create_sequence(&mut self) -> SequenceId {
        self.create_sequence_with_prefix(&[]).0
    }

    /// Starts a sequence for `prompt`, reusing the KV blocks of the longest cached prefix of it
    /// (whole blocks, always leaving at least the last prompt token to compute so its logits
    /// exist). Returns the sequence and how many prompt tokens are already in its cache: feed
    /// the rest.
    pub fn create_sequence_with_prefix(&mut self, prompt: &[TokenId]) -> (SequenceId, usize) {
        let id = SequenceId(self.next_sequence);
        self.next_sequence += 1;
        let (table, parent) = self.kv.lookup_prefix(&prompt[..prompt.len().saturating_sub(1)]);
        let cached = table.len;
        self.chains.insert(
            id,
            PrefixChain {
                parent,
                full_blocks: table.blocks.len(),
                pending: Vec::new(),
            },
        );
        self.sequences.insert(id, table);
        self.stats.prefix_cached_tokens += cached as u64;
        (id, cached)
    }

    /// Whether small batches run on the host matmul (flex with f16 weights, see
    /// `EngineConfig::host_kernels`).
    pub fn uses_host_matmul(&self) -> bool {
        self.config.uses_host_matmul(&self.info.device)
    }

    /// Where and in which precision the KV pools are kept (see `EngineConfig::host_kernels`).
    pub fn kv_storage(&self) -> KvStorage {
        self.kv.storage()
    }

    /// Tokens per KV block (the prefix cache shares whole blocks).
    pub fn kv_block_size(&self) -> usize {
        self.kv.block_size()
    }

    /// Takes cached blocks that continue `id`'s cache with more of `prompt` (blocks another
    /// sequence finished since `id` was created). Only a sequence that stands on a block boundary
    /// of its prompt can adopt; never the prompt's last token. Returns its cached length.
    pub fn adopt_cached_prefix(&mut self, id: SequenceId, prompt: &[TokenId]) -> usize {
        let block_size = self.kv.block_size();
        let (Some(table), Some(chain)) = (self.sequences.get_mut(&id), self.chains.get_mut(&id)) else {
            return 0;
        };
        let limit = prompt.len().saturating_sub(1);
        let on_boundary = chain.pending.is_empty()
            && table.blocks.len() == chain.full_blocks
            && table.len == chain.full_blocks * block_size;
        if !on_boundary || table.len >= limit {
            return table.len;
        }
        let before = table.len;
        chain.parent = self.kv.extend_prefix(table, chain.parent, &prompt[table.len..limit]);
        chain.full_blocks = table.blocks.len();
        self.stats.prefix_cached_tokens += (table.len - before) as u64;
        table.len
    }

    /// Frees a sequence's KV blocks (registered full blocks stay in the prefix cache).
    pub fn release_sequence(&mut self, id: SequenceId) {
        self.chains.remove(&id);
        if let Some(mut table) = self.sequences.remove(&id) {
            self.kv.release(&mut table);
        }
    }

    /// Tokens cached for a sequence.
    pub fn sequence_len(&self, id: SequenceId) -> Option<usize> {
        self.sequences.get(&id).map(|t| t.len)
    }

    /// New KV blocks sequence `id` needs to grow by `extra` tokens (`None`: no such sequence).
    pub fn blocks_to_extend(&self, id: SequenceId, extra: usize) -> Option<usize> {
        self.sequences.get(&id).map(|t| self.kv.blocks_needed(t, t.len + extra))
    }

    /// KV blocks new tokens could still take (free, evictable prefix-cache blocks, and growth
    /// left within the budget).
    pub fn available_kv_blocks(&self) -> usize {
        self.kv.available_blocks()
    }

    /// The most KV blocks the budget allows.
    pub fn max_kv_blocks(&self) -> usize {
        self.kv.max_blocks()
    }

    /// Tokens sequence `id` could add with `blocks` more KV blocks than it holds, within the
    /// model's context length.
    pub fn room_with(&self, id: SequenceId, blocks: usize) -> usize {
        let Some(table) = self.sequences.get(&id) else {
            return 0;
        };
        let room = (table.blocks.len() + blocks) * self.kv.block_size() - table.len;
        room.min(self.model.config.context_length.saturating_sub(table.len))
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn kv_blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.kv.block_size())
    }

    /// Whether a sequence could grow by `extra` tokens within the KV budget and context length.
    pub fn can_extend(&self, id: SequenceId, extra: usize) -> bool {
        self.sequences
            .get(&id)
            .is_some_and(|t| t.len + extra <= self.model.config.context_length && self.kv.can_grow(t, t.len + extra))
    }

    /// Advances every item's sequence by its tokens in one batched forward.
    ///
    /// Either every item advances or, on error, none does (no sequence length changes).
    pub fn forward(&mut self, items: &[ForwardItem]) -> Result<Vec<ForwardOutput>> {
        let cfg = self.model.config.clone();
        let mut seen = std::collections::HashSet::new();
        for item in items {
            if item.tokens.is_empty() {
                return Err(KernelError::InvalidRequest(format!(
                    "{:?}: no tokens to process",
                    item.sequence
                )));
            }
            if !seen.insert(item.sequence) {
                return Err(KernelError::InvalidRequest(format!(
                    "{:?} appears twice in one batch",
                    item.sequence
                )));
            }
            if let Some(&bad) = item.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(KernelError::InvalidRequest(format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    cfg.vocab_size
                )));
            }
            let table = self
                .sequences
                .get(&item.sequence)
                .ok_or_else(|| KernelError::InvalidRequest(format!("unknown {:?}", item.sequence)))?;
            if item.attention && item.entropy {
                return Err(KernelError::InvalidRequest(format!(
                    "{:?}: ask for attention probabilities or their entropy, not both",
                    item.sequence
                )));
            }
            if table.len + item.tokens.len() > cfg.context_length {
                return Err(KernelError::InvalidRequest(format!(
                    "{:?} would reach {} tokens, past the model's context length {}",
                    item.sequence,
                    table.len + item.tokens.len(),
                    cfg.context_length
                )));
            }
        }
        if items.is_empty() {
            return Ok(vec![]);
        }
        let started = Instant::now();
        for item in items {
            let table = self.sequences.get_mut(&item.sequence).expect("checked above");
            let new_len = table.len + item.tokens.len();
            self.kv.reserve(table, new_len)?;
        }

        let tokens: Vec<TokenId> = items.iter().flat_map(|i| i.tokens.iter().copied()).collect();
        let tables: Vec<BlockTable> = items.iter().map(|i| self.sequences[&i.sequence].clone()).collect();
        let slices: Vec<SequenceSlice<'_>> = items
            .iter()
            .zip(&tables)
            .map(|(item, table)| SequenceSlice {
                table,
                start_pos: table.len,
                n_new: item.tokens.len(),
                attention: match (item.attention, item.entropy) {
                    (true, _) => AttentionWanted::Probabilities,
                    (false, true) => AttentionWanted::Entropy,
                    (false, false) => AttentionWanted::None,
                },
            })
            .collect();
        // Rows of the flat batch whose logits are wanted.
        let mut logit_rows: Vec<i64> = Vec::new();
        let mut offset = 0;
        for item in items {
            let n = item.tokens.len();
            match item.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => logit_rows.push((offset + n - 1) as i64),
                LogitsWanted::All => logit_rows.extend((offset..offset + n).map(|r| r as i64)),
            }
            offset += n;
        }
        // The forward and its logits in one stay on the pool.
        let on_host = self.uses_host_matmul();
        let (model, kv) = (&self.model, &mut self.kv);
        let (out, logit_tensor) = on_pool_if(on_host, || {
            let out = model.forward(&tokens, &slices, kv);
            let logits = (!logit_rows.is_empty()).then(|| {
                let wanted = logit_rows.len();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(logit_rows, [wanted]), model.device());
                model.logits(out.hidden.clone().select(0, idx))
            });
            (out, logits)
        });
        let logits: Vec<f32> = match logit_tensor {
            Some(rows) => read_f32(rows)?,
            None => Vec::new(),
        };

        let vocab = cfg.vocab_size;
        let mut results = Vec::with_capacity(items.len());
        let mut logit_cursor = 0;
        let mut offset = 0;
        for ((item, slice), attention) in items.iter().zip(&slices).zip(out.attention) {
            let n = item.tokens.len();
            let n_rows = match item.logits {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => n,
            };
            let logits_rows = (0..n_rows)
                .map(|r| logits[(logit_cursor + r) * vocab..(logit_cursor + r + 1) * vocab].to_vec())
                .collect();
            logit_cursor += n_rows;
            let embedding = if item.embedding {
                let h = cfg.hidden_size;
                let mean = out.hidden.clone().slice([offset..offset + n, 0..h]).mean_dim(0);
                Some(read_f32(mean)?)
            } else {
                None
            };
            let (mut maps, mut entropy) = (None, None);
            if let Some(layers) = attention {
                // [layers, heads, n_new, context] (context is 1 for entropies)
                let stacked = read_f32(Tensor::stack::<4>(layers, 0))?;
                if item.entropy {
                    entropy = Some(AttentionEntropy {
                        n_layers: cfg.n_layers,
                        n_heads: cfg.n_heads,
                        n_tokens: n,
                        start_pos: slice.start_pos,
                        values: stacked,
                    });
                } else {
                    maps = Some(AttentionMaps {
                        n_layers: cfg.n_layers,
                        n_heads: cfg.n_heads,
                        n_new: n,
                        context: slice.start_pos + n,
                        start_pos: slice.start_pos,
                        probs: stacked,
                    });
                }
            }
            results.push(ForwardOutput {
                logits: logits_rows,
                attention: maps,
                entropy,
                embedding,
            });
            offset += n;
        }
        let block_size = self.kv.block_size();
        for item in items {
            let table = self.sequences.get_mut(&item.sequence).expect("checked above");
            table.len += item.tokens.len();
            // Register every block this item completed in the prefix cache.
            let chain = self.chains.entry(item.sequence).or_default();
            chain.pending.extend_from_slice(&item.tokens);
            while chain.pending.len() >= block_size {
                let block: Vec<TokenId> = chain.pending.drain(..block_size).collect();
                chain.parent = self.kv.register(table, chain.full_blocks, chain.parent, &block);
                chain.full_blocks += 1;
            }
        }
        self.stats.forwards += 1;
        self.stats.tokens_processed += tokens.len() as u64;
        self.stats.forward_seconds += started.elapsed().as_secs_f64();
        Ok(results)
    }

    /// Embeddings of several texts (mean-pooled final hidden states), computed in shared
    /// batched forwards as the engine thread computes them for memory work (see
    /// [`generate::Batcher::submit_job`]).
    pub fn embed_many(&mut self, texts: &[String]) -> Result<Embeddings> {
        let job = generate::Job::embed(self, texts)?;
        match self.run_job(job)? {
            generate::JobOutput::Embeddings(e) => Ok(e),
            generate::JobOutput::Analysis(_) => unreachable!("an embedding job returns embeddings"),
        }
    }

    /// Mean-pooled final hidden state of `text`.
    pub fn embed(&mut self, text: &str) -> Result<Vec<f32>> {
        let mut e = self.embed_many(&[text.to_string()])?;
        Ok(e.vectors.pop().expect("one text, one vector"))
    }

    /// The tokens of `text` as text pieces that concatenate to it and, when `with_attention`,
    /// the entropy of every token's attention over the whole text before it (the text is one
    /// sequence, prefilled in chunks: no token loses its context at a chunk edge).
    pub fn analyze(&mut self, text: &str, with_attention: bool) -> Result<TextAttention> {
        let job = generate::Job::analyze(self, text, with_attention)?;
        match self.run_job(job)? {
            generate::JobOutput::Analysis(a) => Ok(a),
            generate::JobOutput::Embeddings(_) => unreachable!("an analysis job returns an analysis"),
        }
    }

    /// Runs one job to its end on a batcher of its own.
    fn run_job(&mut self, job: generate::Job) -> Result<generate::JobOutput> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut batcher = generate::Batcher::new();
        batcher.submit_job(
            job,
            generate::DEFAULT_JOB_PRIORITY,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        while !batcher.is_idle() {
            batcher.step(self);
        }
        rx.recv()
            .map_err(|_| KernelError::Compute("the job ended without a result".into()))?
    }
}

/// Returns the heap memory that loading freed (the file's metadata, f32 conversions, the
/// tokenizer's intermediate tables: about 10 MB for the default model) to the operating system.
/// glibc keeps freed memory for reuse, and these sizes are never asked for again; elsewhere the
/// allocator decides.
fn give_back_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory the allocator holds; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// f16 weights and KV pools need f16 arithmetic on the device, which some Vulkan adapters lack:
/// there `auto` loads f32 weights instead (reported in [`ModelInfo::dtype`]) and an explicit
/// `f16` is refused with a clear error rather than computing garbage.
fn with_dtype_the_device_computes(mut config: EngineConfig, device: &SelectedDevice) -> Result<EngineConfig> {
    if config.dtype == WeightDtype::F32 || device.device.supports_dtype(DType::F16) {
        return Ok(config);
    }
    if config.dtype == WeightDtype::F16 {
        return Err(KernelError::InvalidRequest(format!(
            "{} ({}) has no f16 arithmetic: load with --dtype f32 (or auto, which picks f32 there)",
            device.name, device.description
        )));
    }
    tracing::warn!(
        device = %device.description,
        "the device has no f16 arithmetic: `--dtype auto` loads f32 weights and caches"
    );
    config.dtype = WeightDtype::F32;
    Ok(config)
}

fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.cast(DType::F32)
        .try_into_data()
        .map_err(|e| KernelError::Compute(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| KernelError::Compute(format!("{e:?}")))
}

type Loaded = (ModelConfig, Tokenizer, ChatTemplate, Transformer);

fn load_gguf(path: &Path, config: &EngineConfig, device: &SelectedDevice) -> Result<Loaded> {
    let gguf = GgufFile::open(path)?;
    let model_config = ModelConfig::from_gguf(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    if tokenizer.vocab_size() != model_config.vocab_size {
        return Err(KernelError::ModelFormat(format!(
            "tokenizer has {} tokens, the model {}",
            tokenizer.vocab_size(),
            model_config.vocab_size
        )));
    }
    let template = chat_template(
        config
            .chat_template
            .as_deref()
            .or(gguf.string("tokenizer.chat_template").ok()),
        &tokenizer,
    )?;
    let weights = GgufWeights {
        gguf: &gguf,
        config: &model_config,
    };
    let model = build_model(&model_config, &weights, config, device)?;
    Ok((model_config, tokenizer, template, model))
}

fn load_hf_dir(dir: &Path, config: &EngineConfig, device: &SelectedDevice) -> Result<Loaded> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|source| KernelError::Io { path: p, source })
    };
    let model_config = ModelConfig::from_hf_json(&read("config.json")?)?;
    let cfg_json: serde_json::Value =
        serde_json::from_str(&read("config.json")?).map_err(|e| KernelError::ModelFormat(e.to_string()))?;
    let ids = |v: &serde_json::Value| -> Vec<TokenId> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().map(|n| vec![n as TokenId]).unwrap_or_default(),
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64().map(|n| n as TokenId)).collect(),
            _ => vec![],
        }
    };
    let tokenizer = Tokenizer::from_tokenizer_json(
        &dir.join("tokenizer.json"),
        ids(&cfg_json["eos_token_id"]),
        ids(&cfg_json["bos_token_id"]).first().copied(),
    )?;
    let template_source = read("tokenizer_config.json")
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["chat_template"].as_str().map(str::to_string));
    let template = chat_template(
        config.chat_template.as_deref().or(template_source.as_deref()),
        &tokenizer,
    )?;
    let weights = SafetensorsWeights::open_dir(dir)?;
    let model = build_model(&model_config, &weights, config, device)?;
    Ok((model_config, tokenizer, template, model))
}

/// The transformer on the selected device, with the host matmul when the config allows it there.
fn build_model(
    model_config: &ModelConfig,
    weights: &dyn WeightSource,
    config: &EngineConfig,
    device: &SelectedDevice,
) -> Result<Transformer> {
    Transformer::load(
        model_config.clone(),
        weights,
        config.dtype,
        &device.device,
        config.uses_host_matmul(&device.name),
    )
}

fn chat_template(source: Option<&str>, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    let text = |id: Option<TokenId>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
    let source = source.unwrap_or_else(|| {
        tracing::warn!("the model ships no chat template; using ChatML");
        CHATML_TEMPLATE
    });
    ChatTemplate::new(
        source,
        &text(tokenizer.bos_token),
        &text(tokenizer.eos_tokens.first().copied()),
    )
}

/// Runs `f` on a worker of rayon's pool when `on_pool` holds (the caller waits once), else
/// here. The host kernels split every matmul and attention with rayon: called from a thread
/// outside the pool, each parallel operation of a step (several per layer) would wake the pool
/// and put this thread to sleep until it finishes (two futex round trips, and this thread's
/// core idle meanwhile); from inside, the worker computes one part itself and the other
/// workers steal the rest.
fn on_pool_if<R: Send>(on_pool: bool, f: impl FnOnce() -> R + Send) -> R {
    if !on_pool || rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}
