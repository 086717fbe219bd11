//! The decoder stack: embedding, `n_layers` × (attention + SwiGLU), final norm, output head.
//!
//! One forward advances a *ragged batch*: the new tokens of every sequence are concatenated
//! into one `[total_tokens, hidden]` matrix, so every projection is a single matmul over the
//! whole batch; only attention runs per sequence, against that sequence's own cached context.

use std::sync::Arc;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::attention::{attend, attend_decode_batch, causal_mask, padding_mask};
use super::config::ModelConfig;
use super::host_attention::{HeadShape, pool_attention};
use super::mlp::Mlp;
use super::quant_matmul::QuantMatrix;
use super::rms_norm::RmsNorm;
use super::rope::Rope;
use super::weights::{Weight, WeightSource};
use super::{Linear, WeightDtype, upload};
use crate::error::{KernelError, Result};
use crate::kv_cache::{BlockTable, HostLayer, KvCache, PoolRows, host_values};

struct DecoderLayer {
    attn_norm: RmsNorm,
    /// `[hidden, q_dim + 2 * kv_dim]`: q, k and v projections fused.
    qkv: Linear,
    /// `[1, q_dim + 2 * kv_dim]` (Qwen2).
    qkv_bias: Option<Tensor<2>>,
    /// `[q_dim, hidden]`
    out: Linear,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

/// What one sequence contributes to a batched forward.
pub struct SequenceSlice<'a> {
    pub table: &'a BlockTable,
    /// Absolute position of the first new token (= tokens already cached).
    pub start_pos: usize,
    pub n_new: usize,
    pub attention: AttentionWanted,
}

/// What a sequence wants to know of its attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionWanted {
    None,
    /// The probabilities, `[heads, n_new, context]` per layer.
    Probabilities,
    /// The entropy of each probability row, `[heads, n_new, 1]` per layer: what the memory
    /// system reads, reduced inside each layer so long contexts cost no big maps.
    Entropy,
}

/// Result of a batched forward before any host read-back.
pub struct ForwardTensors {
    /// Final-normed hidden states of every new token, `[total_tokens, hidden]`.
    pub hidden: Tensor<2>,
    /// Per sequence (in batch order), per layer, as its [`AttentionWanted`] asked.
    pub attention: Vec<Option<Vec<Tensor<3>>>>,
}

/// `-Σ p ln p` of each row of `probs` (zeros contribute nothing).
///
/// # Shapes
/// probs: `[heads, n, context]` → `[heads, n, 1]`
fn row_entropy(probs: Tensor<3>) -> Tensor<3> {
    probs.clone().mul(probs.add_scalar(1e-30).log()).sum_dim(2).neg()
}

/// Keeps what `wanted` asks of one layer's probabilities.
fn keep(wanted: AttentionWanted, probs: Tensor<3>) -> Tensor<3> {
    match wanted {
        AttentionWanted::Entropy => row_entropy(probs),
        _ => probs,
    }
}

/// The token embedding table, `[vocab, hidden]`.
enum Embedding {
    Tensor(Box<Tensor<2>>),
    /// The file's quantised rows, dequantised per lookup (shared with a tied output head).
    Quant(Arc<QuantMatrix>),
}

pub struct Transformer {
    pub config: ModelConfig,
    pub dtype: WeightDtype,
    device: Device,
    /// `[vocab, hidden]`
    embedding: Embedding,
    /// `[hidden, vocab]` (a copy of the embedding when tied).
    output: Linear,
    final_norm: RmsNorm,
    layers: Vec<DecoderLayer>,
    rope: Rope,
}

impl Transformer {
    /// Builds the model from any weight source, uploading weights to `device` in `dtype`. With
    /// `host_matmul`, weight matrices are packed for the host kernel instead (see
    /// [`super::host_matmul`]).
    pub fn load(
        config: ModelConfig,
        source: &dyn WeightSource,
        dtype: WeightDtype,
        device: &Device,
        host_matmul: bool,
    ) -> Result<Self> {
        let wd = dtype.burn_dtype();
        let (h, q, kv, inter) = (
            config.hidden_size,
            config.q_dim(),
            config.kv_dim(),
            config.intermediate_size,
        );
        let vector = |w: Weight, len: usize| -> Result<Vec<f32>> {
            let t = source.require(w)?;
            check_shape(w, &t.shape, &[len])?;
            Ok(t.values)
        };
        // PyTorch order [out, in] → transposed host copy [in, out] for `x @ w`.
        let matrix_t = |w: Weight, out: usize, inp: usize| -> Result<Vec<f32>> {
            let t = source.require(w)?;
            check_shape(w, &t.shape, &[out, inp])?;
            Ok(transpose(&t.values, out, inp))
        };

        // `x @ w` over several matrices whose outputs are placed side by side, each given as
        // (weight, outputs): quantised when asked and every part is quantised in the file,
        // else packed or uploaded from f32.
        let quantized = dtype == WeightDtype::Auto && host_matmul;
        let fused = |parts: &[(Weight, usize)], inputs: usize| -> Result<Linear> {
            if quantized {
                let mut mats = Vec::with_capacity(parts.len());
                for &(w, out) in parts {
                    match source.get_quantized(w)? {
                        Some(m) => {
                            check_shape(w, &[m.outputs(), m.inputs()], &[out, inputs])?;
                            mats.push(Arc::new(m));
                        }
                        None => break,
                    }
                }
                if mats.len() == parts.len() {
                    return Ok(Linear::Quant {
                        parts: mats,
                        device: device.clone(),
                    });
                }
            }
            let mut columns = Vec::with_capacity(parts.len());
            for &(w, out) in parts {
                columns.push((matrix_t(w, out, inputs)?, out));
            }
            let width = parts.iter().map(|p| p.1).sum();
            let values = if columns.len() == 1 {
                columns.pop().expect("one").0
            } else {
                let refs: Vec<(&Vec<f32>, usize)> = columns.iter().map(|(v, w)| (v, *w)).collect();
                concat_columns(&refs, inputs)
            };
            Ok(Linear::new(values, inputs, width, wd, host_matmul, device))
        };

        let vocab = config.vocab_size;
        let quantized_embedding = match quantized {
            true => source.get_quantized(Weight::Embedding)?.map(Arc::new),
            false => None,
        };
        let (embedding, output) = match quantized_embedding {
            Some(table) => {
                check_shape(Weight::Embedding, &[table.outputs(), table.inputs()], &[vocab, h])?;
                let separate_head = !config.tie_embeddings && source.has(Weight::Output)?;
                let output = if separate_head {
                    fused(&[(Weight::Output, vocab)], h)?
                } else {
                    // Tied: the head multiplies the embedding's own blocks.
                    Linear::Quant {
                        parts: vec![table.clone()],
                        device: device.clone(),
                    }
                };
                (Embedding::Quant(table), output)
            }
            None => {
                let emb = source.require(Weight::Embedding)?;
                check_shape(Weight::Embedding, &emb.shape, &[vocab, h])?;
                // The output head is kept as its own contiguous [hidden, vocab] matrix even when
                // tied: gemm over a transposed (strided) view of the embedding is several times
                // slower for small batches, and this is the largest matmul of a decode step.
                let separate_head = !config.tie_embeddings && source.has(Weight::Output)?;
                let output = if separate_head {
                    fused(&[(Weight::Output, vocab)], h)?
                } else {
                    Linear::new(transpose(&emb.values, vocab, h), h, vocab, wd, host_matmul, device)
                };
                (
                    Embedding::Tensor(Box::new(upload(emb.values, [vocab, h], wd, device))),
                    output,
                )
            }
        };

        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let qkv_bias = if config.qkv_bias {
                let mut b = vector(Weight::QBias(i), q)?;
                b.extend(vector(Weight::KBias(i), kv)?);
                b.extend(vector(Weight::VBias(i), kv)?);
                Some(upload(b, [1, q + 2 * kv], DType::F32, device))
            } else {
                None
            };
            layers.push(DecoderLayer {
                attn_norm: RmsNorm::new(vector(Weight::AttnNorm(i), h)?, config.rms_norm_eps, device),
                qkv: fused(&[(Weight::Q(i), q), (Weight::K(i), kv), (Weight::V(i), kv)], h)?,
                qkv_bias,
                out: fused(&[(Weight::O(i), h)], q)?,
                ffn_norm: RmsNorm::new(vector(Weight::FfnNorm(i), h)?, config.rms_norm_eps, device),
                mlp: Mlp {
                    gate_up: fused(&[(Weight::Gate(i), inter), (Weight::Up(i), inter)], h)?,
                    down: fused(&[(Weight::Down(i), h)], inter)?,
                    intermediate: inter,
                },
            });
        }
        let final_norm = RmsNorm::new(vector(Weight::FinalNorm, h)?, config.rms_norm_eps, device);
        let rope = Rope::new(config.head_dim, config.rope_theta, config.context_length, device);
        Ok(Transformer {
            config,
            dtype,
            device: device.clone(),
            embedding,
            output,
            final_norm,
            layers,
            rope,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How the weight matrices are held: the quantised formats computed on directly with their
    /// matrix counts (`Q4_1 x210, Q8_0 x1`), then any float matrices by dtype (`f16 x3`).
    pub fn weight_summary(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut count = |name: String| match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        };
        let linears = self
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.out, &l.mlp.gate_up, &l.mlp.down])
            .chain([&self.output]);
        for linear in linears {
            match linear {
                Linear::Quant { parts, .. } => parts.iter().for_each(|p| count(format!("{:?}", p.format()))),
                _ => count(if self.dtype == WeightDtype::F32 { "f32" } else { "f16" }.to_string()),
            }
        }
        counts
            .iter()
            .map(|(n, c)| format!("{n} x{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs the new tokens of every sequence through the stack, writing their keys and values
    /// into `kv` (the caller has reserved the blocks).
    ///
    /// # Shapes
    /// tokens: `[total_tokens]` (sequences concatenated in `slices` order)
    pub fn forward(&self, tokens: &[u32], slices: &[SequenceSlice<'_>], kv: &mut KvCache) -> ForwardTensors {
        let cfg = &self.config;
        let total = tokens.len();
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());

        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [total]), &self.device);
        let positions: Vec<i64> = slices
            .iter()
            .flat_map(|s| (s.start_pos..s.start_pos + s.n_new).map(|p| p as i64))
            .collect();
        let positions = Tensor::<1, Int>::from_data(TensorData::new(positions, [total]), &self.device);
        let (cos, sin) = self.rope.tables(positions);

        let plan = BatchPlan::new(slices, kv, &self.device);

        // [total, hidden]
        let mut x = match &self.embedding {
            Embedding::Tensor(table) => (**table).clone().select(0, ids).cast(DType::F32),
            Embedding::Quant(table) => {
                let hidden = table.inputs();
                let mut rows = vec![0f32; total * hidden];
                for (row, &t) in rows.chunks_exact_mut(hidden).zip(tokens) {
                    table.dequantize_row(t as usize, row);
                }
                Tensor::from_data(TensorData::new(rows, [total, hidden]), &self.device)
            }
        };
        let mut attention: Vec<Option<Vec<Tensor<3>>>> = slices
            .iter()
            .map(|s| (s.attention != AttentionWanted::None).then(|| Vec::with_capacity(cfg.n_layers)))
            .collect();

        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(x.clone());
            // [total, q + 2 kv]
            let mut qkv = layer.qkv.forward(h);
            if let Some(b) = &layer.qkv_bias {
                qkv = qkv.add(b.clone());
            }
            // [total, heads, d] and [total, kv_heads, d], rotated.
            let q = qkv
                .clone()
                .slice([0..total, 0..q_dim])
                .reshape([total, cfg.n_heads, cfg.head_dim]);
            let k = qkv
                .clone()
                .slice([0..total, q_dim..q_dim + kv_dim])
                .reshape([total, cfg.n_kv_heads, cfg.head_dim]);
            let v = qkv.slice([0..total, q_dim + kv_dim..q_dim + 2 * kv_dim]);
            let q = self.rope.apply(q, &cos, &sin);
            let k = self.rope.apply(k, &cos, &sin).reshape([total, kv_dim]);
            kv.write(li, &plan.new_rows, k, v);

            // Attention outputs in plan order (the decode group first), `[n, q_dim]` each.
            let mut outs = Vec::with_capacity(plan.others.len() + 1);
            if let Some(group) = &plan.decode {
                let q_g = q.clone().select(0, group.token_rows.clone());
                let want = group
                    .members
                    .iter()
                    .any(|&m| slices[m].attention != AttentionWanted::None);
                // `[batch, q_dim]`, and when asked `[batch][heads, 1, context_b]` per member.
                let (out, probs): (Tensor<2>, Option<Vec<Tensor<3>>>) = match &group.contexts {
                    DecodeContexts::Padded(padded) => {
                        let (keys, values) = kv.gather(li, &padded.rows);
                        let (out, probs) =
                            attend_decode_batch(q_g, keys, values, padded.mask.clone(), cfg.n_kv_heads, want);
                        let probs = probs.map(|probs| {
                            group
                                .members
                                .iter()
                                .enumerate()
                                .map(|(b, &m)| {
                                    // [1, heads, L] → [heads, 1, context]
                                    let context = slices[m].start_pos + 1;
                                    let p = probs.clone().slice([b..b + 1, 0..cfg.n_heads, 0..context]);
                                    p.reshape([cfg.n_heads, 1, context])
                                })
                                .collect()
                        });
                        (out, probs)
                    }
                    DecodeContexts::Host(contexts) => {
                        let rows: Vec<&[usize]> = contexts.iter().map(Vec::as_slice).collect();
                        let (out, probs) = self.attend_in_pools(kv, li, &host_values(q_g), &rows, want);
                        let out = Tensor::from_data(TensorData::new(out, [contexts.len(), q_dim]), &self.device);
                        let probs = probs.map(|probs| {
                            probs
                                .into_iter()
                                .zip(contexts)
                                .map(|(p, c)| {
                                    Tensor::from_data(TensorData::new(p, [cfg.n_heads, 1, c.len()]), &self.device)
                                })
                                .collect()
                        });
                        (out, probs)
                    }
                };
                outs.push(out);
                if let Some(probs) = probs {
                    for (&m, p) in group.members.iter().zip(probs) {
                        if let Some(maps) = attention[m].as_mut() {
                            maps.push(keep(slices[m].attention, p));
                        }
                    }
                }
            }
            for other in &plan.others {
                let s = &slices[other.member];
                let start = plan.offsets[other.member];
                let q_s = q
                    .clone()
                    .slice([start..start + s.n_new, 0..cfg.n_heads, 0..cfg.head_dim]);
                let want = s.attention != AttentionWanted::None;
                let (out, probs) = if kv.storage().on_device() {
                    let (keys, values) = kv.gather(li, &other.context_rows);
                    attend(q_s, keys, values, other.mask.as_ref(), cfg.n_kv_heads, want)
                } else {
                    self.attend_chunk_in_pools(kv, li, q_s, s, other.context_rows.rows(), want)
                };
                outs.push(out);
                if let (Some(p), Some(maps)) = (probs, attention[other.member].as_mut()) {
                    maps.push(keep(s.attention, p));
                }
            }
            // [total, q_dim] in plan order, then back to token order if they differ.
            let mut attn = if outs.len() == 1 {
                outs.pop().expect("one")
            } else {
                Tensor::cat(outs, 0)
            };
            if let Some(order) = &plan.to_token_order {
                attn = attn.select(0, order.clone());
            }
            x = x.add(layer.out.forward(attn));
            let h = layer.ffn_norm.forward(x.clone());
            x = x.add(layer.mlp.forward(h));
        }

        ForwardTensors {
            hidden: self.final_norm.forward(x),
            attention,
        }
    }

    /// The host attention ([`pool_attention`]) of `queries.len()` queries over their own context
    /// rows in layer `layer`'s host pools.
    ///
    /// # Shapes
    /// q: `[queries, q_dim]` → `[queries, q_dim]`; probabilities, when asked,
    /// `[queries][heads * context_i]`
    fn attend_in_pools(
        &self,
        kv: &KvCache,
        layer: usize,
        q: &[f32],
        queries: &[&[usize]],
        want_probs: bool,
    ) -> (Vec<f32>, Option<Vec<Vec<f32>>>) {
        let cfg = &self.config;
        let shape = HeadShape {
            heads: cfg.n_heads,
            kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
        };
        match kv.host_pools(layer).expect("attention in pools needs host pools") {
            HostLayer::F32 { keys, values } => pool_attention(q, keys, values, queries, shape, want_probs),
            HostLayer::F16 { keys, values } => pool_attention(q, keys, values, queries, shape, want_probs),
        }
    }

    /// A prompt chunk's causal attention in the host pools: query `i` of the slice reads the
    /// rows of positions `0..=start_pos + i` (of `context_rows`, the slice's whole context).
    ///
    /// # Shapes
    /// q: `[n_new, heads, head_dim]` → `[n_new, q_dim]`; probabilities, when asked,
    /// `[heads, n_new, start_pos + n_new]` (zero past each query's position)
    fn attend_chunk_in_pools(
        &self,
        kv: &KvCache,
        layer: usize,
        q: Tensor<3>,
        slice: &SequenceSlice<'_>,
        context_rows: &[usize],
        want_probs: bool,
    ) -> (Tensor<2>, Option<Tensor<3>>) {
        let (heads, n_new, context) = (self.config.n_heads, slice.n_new, slice.start_pos + slice.n_new);
        let queries: Vec<&[usize]> = (0..n_new).map(|i| &context_rows[..slice.start_pos + i + 1]).collect();
        let (out, probs) = self.attend_in_pools(kv, layer, &host_values(q), &queries, want_probs);
        let out = Tensor::from_data(TensorData::new(out, [n_new, self.config.q_dim()]), &self.device);
        let probs = probs.map(|per_query| {
            let mut full = vec![0f32; heads * n_new * context];
            for (i, p) in per_query.iter().enumerate() {
                let seen = queries[i].len();
                for h in 0..heads {
                    full[(h * n_new + i) * context..][..seen].copy_from_slice(&p[h * seen..(h + 1) * seen]);
                }
            }
            Tensor::from_data(TensorData::new(full, [heads, n_new, context]), &self.device)
        });
        (out, probs)
    }

    /// Output logits for the given final-normed hidden rows.
    ///
    /// # Shapes
    /// hidden: `[rows, hidden]` → `[rows, vocab]`
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.output.forward(hidden)
    }
}

/// Row indices for one batched forward, built once and reused by every layer.
struct BatchPlan {
    /// Pool rows of every new token, in token order: `[total]`.
    new_rows: PoolRows,
    /// First token row of each slice.
    offsets: Vec<usize>,
    /// Single-token slices attended together: every one with host pools, at least two otherwise.
    decode: Option<DecodeGroup>,
    /// The remaining slices, each attended alone.
    others: Vec<OtherSlice>,
    /// Maps token order to plan order when the decode group is not already first.
    to_token_order: Option<Tensor<1, Int>>,
}

struct DecodeGroup {
    members: Vec<usize>,
    /// Token rows of the members in the flat batch: `[batch]`.
    token_rows: Tensor<1, Int>,
    contexts: DecodeContexts,
}

/// A slice attended alone (a prompt chunk, or a single token the decode group does not take).
struct OtherSlice {
    member: usize,
    /// Pool rows of its whole context: `[start_pos + n_new]`.
    context_rows: PoolRows,
    /// With device pools, its causal mask, built once for every layer (see [`causal_mask`]);
    /// host pools need none (each query reads only its own rows).
    mask: Option<Tensor<4>>,
}

struct PaddedContexts {
    rows: PoolRows,
    mask: Option<Tensor<4>>,
}

/// Where the decode group's attention reads its context.
enum DecodeContexts {
    /// Device pools: every member's context rows padded to the longest, `[batch * max_context]`,
    /// gathered for one batched matmul; the mask `[batch, 1, 1, max_context]` is 0 for real
    /// rows and -inf for padding (`None` without padding).
    Padded(Box<PaddedContexts>),
    /// Host pools: each member's context rows, read in place by the host kernel.
    Host(Vec<Vec<usize>>),
}

impl BatchPlan {
    fn new(slices: &[SequenceSlice<'_>], kv: &KvCache, device: &Device) -> Self {
        let mut offsets = Vec::with_capacity(slices.len());
        let mut new_rows = Vec::new();
        let mut offset = 0;
        for s in slices {
            offsets.push(offset);
            new_rows.extend(kv.rows(s.table, s.start_pos..s.start_pos + s.n_new));
            offset += s.n_new;
        }
        let host = !kv.storage().on_device();
        let decode_members: Vec<usize> = (0..slices.len()).filter(|&i| slices[i].n_new == 1).collect();
        let contexts: Vec<Vec<usize>> = decode_members
            .iter()
            .map(|&m| kv.rows(slices[m].table, 0..slices[m].start_pos + 1))
            .collect();
        let grouped = if host { 1 } else { 2 };
        let (decode, other_members): (Option<DecodeGroup>, Vec<usize>) = if decode_members.len() >= grouped {
            let contexts = if host {
                DecodeContexts::Host(contexts)
            } else {
                let max_context = contexts.iter().map(Vec::len).max().expect("at least two");
                let mut rows = Vec::with_capacity(contexts.len() * max_context);
                for own in &contexts {
                    rows.extend(own);
                    rows.extend(std::iter::repeat_n(own[0], max_context - own.len()));
                }
                let lens: Vec<usize> = contexts.iter().map(Vec::len).collect();
                let padded = lens.iter().any(|&l| l != max_context);
                DecodeContexts::Padded(Box::new(PaddedContexts {
                    rows: kv.pool_rows(rows),
                    mask: padded.then(|| padding_mask(&lens, max_context, device)),
                }))
            };
            let group = DecodeGroup {
                token_rows: kv.index(&decode_members.iter().map(|&m| offsets[m]).collect::<Vec<_>>()),
                contexts,
                members: decode_members.clone(),
            };
            let others = (0..slices.len()).filter(|i| !decode_members.contains(i)).collect();
            (Some(group), others)
        } else {
            (None, (0..slices.len()).collect())
        };
        let others = other_members
            .iter()
            .map(|&m| {
                let s = &slices[m];
                OtherSlice {
                    member: m,
                    context_rows: kv.pool_rows(kv.rows(s.table, 0..s.start_pos + s.n_new)),
                    mask: if host {
                        None
                    } else {
                        causal_mask(s.n_new, s.start_pos, device)
                    },
                }
            })
            .collect();
        // Plan order: decode members, then the others; each slice contributes its token rows.
        let plan_order: Vec<usize> = decode
            .iter()
            .flat_map(|g| g.members.iter().copied())
            .chain(other_members.iter().copied())
            .collect();
        let mut plan_row_of_token = vec![0usize; offset];
        let mut plan_row = 0;
        for &m in &plan_order {
            for t in 0..slices[m].n_new {
                plan_row_of_token[offsets[m] + t] = plan_row;
                plan_row += 1;
            }
        }
        let identity = plan_row_of_token.iter().enumerate().all(|(i, &r)| i == r);
        BatchPlan {
            new_rows: kv.pool_rows(new_rows),
            offsets,
            decode,
            others,
            to_token_order: (!identity).then(|| kv.index(&plan_row_of_token)),
        }
    }
}

fn check_shape(w: Weight, got: &[usize], want: &[usize]) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(KernelError::ModelFormat(format!(
            "weight {w:?} has shape {got:?}, the model's config needs {want:?}"
        )))
    }
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Places `[rows, w_i]` matrices side by side into `[rows, sum w_i]`.
fn concat_columns(parts: &[(&Vec<f32>, usize)], rows: usize) -> Vec<f32> {
    let width: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(rows * width);
    for r in 0..rows {
        for (m, w) in parts {
            out.extend_from_slice(&m[r * w..(r + 1) * w]);
        }
    }
    out
}
