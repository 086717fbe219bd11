//! A paged KV cache: fixed-size blocks in one pool per layer, and a block table per sequence.
//!
//! A sequence's keys and values live in whatever blocks its [`BlockTable`] lists, in order, so
//! sequences can grow without copying, be paused (keep the table, stop scheduling it) and
//! resumed without recomputation, and share whole blocks of a common prefix (blocks are
//! reference counted; [`KvCache::share`]).
//!
//! **Prefix cache.** Every full block a sequence has written is registered under the key
//! *(its parent, its tokens)*, where the parent is the registered block holding the prefix
//! before it (or the root), named by block id *and* the block's generation (bumped each time the
//! block is reused for something else). A key therefore names one whole prefix exactly: lookups
//! walk the chain from the root comparing tokens block by block, and a key never matches a block
//! whose parent has since been evicted and reused, so no sequence is ever handed another
//! prefix's keys and values (no hash is trusted for equality). A new sequence whose prompt starts
//! with registered blocks takes references to them instead of recomputing them
//! ([`KvCache::lookup_prefix`]). When the last sequence lets go of a registered block it stays
//! cached, and cached blocks are evicted least recently used first, only when the budget leaves
//! no free block.
//!
//! **Where the pools live** ([`KvStorage`]). On a GPU they are device tensors, written by
//! scatter and read by gather, in f16 unless the weights are f32 (half the memory per token and
//! half the bytes each step's gather reads; attention computes in f32 on the gathered rows).
//! On the CPU backend they are host memory ([`KvCache::host_pools`]), so the kernel's decode
//! attention reads each sequence's rows where they lie instead of gathering a padded copy of
//! every context for every layer (that copy and the small batched matmuls after it took about
//! 40% of an 8-sequence decode step at 300 tokens of context). Host pools hold f16 unless the
//! weights are f32, as llama.cpp's cache does by default: half the memory per token, so the same
//! byte budget holds twice the context, and half the bytes decode attention streams per step.
//! Their pages are committed as rows are first written, so resident memory follows the blocks
//! in use rather than the capacity the pools have grown to (see `host_memory`).
//!
//! # Shapes
//! each layer's pool: `[capacity_blocks * block_size, kv_heads * head_dim]`; the token at
//! position `p` of a sequence lives in row `blocks[p / block_size] * block_size + p % block_size`.

mod host_memory;

use std::collections::{BTreeMap, HashMap};

use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use self::host_memory::PoolMemory;
use crate::error::{KernelError, Result};
use crate::model::ModelConfig;
use crate::tokenizer::TokenId;

/// Sizing of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheConfig {
    /// Tokens per block (default 8). The prefix cache shares whole blocks, so a sequence that
    /// shares a prefix recomputes up to `block_size - 1` of its tokens; attention here gathers
    /// rows position by position, so smaller blocks cost only a longer block table (GPU paged
    /// attention kernels prefer 16 for memory coalescing; this kernel has none).
    pub block_size: usize,
    /// The most memory the pools may grow to, in bytes.
    pub max_bytes: usize,
    /// Blocks allocated up front (the pools grow by doubling up to `max_bytes`).
    pub initial_blocks: usize,
    /// Keep finished prefixes' blocks for reuse by later sequences (default true).
    #[serde(default = "default_prefix_cache")]
    pub prefix_cache: bool,
}

fn default_prefix_cache() -> bool {
    true
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        KvCacheConfig {
            block_size: 8,
            max_bytes: 1 << 30,
            initial_blocks: 128,
            prefix_cache: true,
        }
    }
}

/// The blocks holding one sequence's cache, and how many positions are filled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
    pub len: usize,
}

pub struct KvCache {
    config: KvCacheConfig,
    storage: KvStorage,
    kv_dim: usize,
    n_layers: usize,
    device: Device,
    pools: Pools,
    capacity_blocks: usize,
    max_blocks: usize,
    free: Vec<u32>,
    refs: Vec<u32>,
    /// Per block: how many times it has been handed out (see [`PrefixParent`]).
    generations: Vec<u64>,
    /// Prefix key → the block registered under it.
    cached: HashMap<BlockKey, u32>,
    /// Per block: what it is registered as, if it is.
    keys_of: Vec<Option<BlockKey>>,
    /// Registered blocks no sequence uses, by the tick they were released (oldest first).
    evictable: BTreeMap<u64, u32>,
    released_at: Vec<u64>,
    tick: u64,
}

/// Where and in what precision the pools live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvStorage {
    /// Burn tensors on the device, f32 (f32 weights).
    DeviceF32,
    /// Burn tensors on the device, f16 (f16 or `auto` weights).
    DeviceF16,
    /// Host memory of f32 (the CPU backend with f32 weights).
    HostF32,
    /// Host memory of f16 (the CPU backend with f16 or `auto` weights).
    HostF16,
}

impl KvStorage {
    fn element_bytes(self) -> usize {
        match self {
            KvStorage::DeviceF32 | KvStorage::HostF32 => 4,
            KvStorage::DeviceF16 | KvStorage::HostF16 => 2,
        }
    }

    /// Whether the pools are device tensors (as opposed to host memory).
    pub fn on_device(self) -> bool {
        matches!(self, KvStorage::DeviceF32 | KvStorage::DeviceF16)
    }
}

/// Every layer's key and value pools.
enum Pools {
    /// Device tensors `[rows, kv_dim]` per layer, all of `dtype`.
    Device {
        keys: Vec<Tensor<2>>,
        values: Vec<Tensor<2>>,
        dtype: DType,
    },
    HostF32(HostPools<f32>),
    HostF16(HostPools<f16>),
}

/// Host row-major `[rows, kv_dim]` pools per layer, in memory committed as rows are written
/// ([`host_memory`]).
struct HostPools<T> {
    keys: Vec<PoolMemory<T>>,
    values: Vec<PoolMemory<T>>,
}

/// An element type of host pools.
///
/// # Safety
/// All-zero bytes must be a valid value (pools start as zero pages), and every bit pattern of
/// the type's size must be one (pools are read as `&[Self]` from raw memory): plain numbers.
pub unsafe trait KvElement: Copy + Default + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// `dst[i] = src[i]` rounded to this type.
    fn store(src: &[f32], dst: &mut [Self]);
    /// Appends `src` as f32.
    fn extend_f32(src: &[Self], dst: &mut Vec<f32>);
}

// SAFETY: any bit pattern is an f32, and zero bytes are 0.0.
unsafe impl KvElement for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn store(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn extend_f32(src: &[f32], dst: &mut Vec<f32>) {
        dst.extend_from_slice(src);
    }
}

// SAFETY: any bit pattern is an f16, and zero bytes are 0.0.
unsafe impl KvElement for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn store(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }
    fn extend_f32(src: &[f16], dst: &mut Vec<f32>) {
        let start = dst.len();
        dst.resize(start + src.len(), 0.0);
        src.convert_to_f32_slice(&mut dst[start..]);
    }
}

impl<T: KvElement> HostPools<T> {
    fn new(layers: usize, len: usize) -> Result<Self> {
        let pools = || (0..layers).map(|_| PoolMemory::zeroed(len)).collect::<Result<Vec<_>>>();
        Ok(HostPools {
            keys: pools()?,
            values: pools()?,
        })
    }

    fn grow(&mut self, len: usize) -> Result<()> {
        for pool in self.keys.iter_mut().chain(self.values.iter_mut()) {
            pool.grow(len)?;
        }
        Ok(())
    }

    fn write(&mut self, layer: usize, rows: &[usize], kv_dim: usize, k: Tensor<2>, v: Tensor<2>) {
        for (pool, src) in [(&mut self.keys[layer], k), (&mut self.values[layer], v)] {
            let src = host_values(src);
            let pool = pool.as_mut_slice();
            for (&row, values) in rows.iter().zip(src.chunks_exact(kv_dim)) {
                T::store(values, &mut pool[row * kv_dim..(row + 1) * kv_dim]);
            }
        }
    }

    /// `[rows, kv_dim]` f32 copies of the keys and values of `rows`.
    fn gather(&self, layer: usize, rows: &[usize], kv_dim: usize) -> (Vec<f32>, Vec<f32>) {
        let gather = |pool: &PoolMemory<T>| {
            let pool = pool.as_slice();
            let mut out = Vec::with_capacity(rows.len() * kv_dim);
            for &row in rows {
                T::extend_f32(&pool[row * kv_dim..(row + 1) * kv_dim], &mut out);
            }
            out
        };
        (gather(&self.keys[layer]), gather(&self.values[layer]))
    }
}

/// One layer's host pools, row-major `[rows, kv_dim]`.
pub enum HostLayer<'a> {
    F32 { keys: &'a [f32], values: &'a [f32] },
    F16 { keys: &'a [f16], values: &'a [f16] },
}

/// Pool rows to write or gather, with the index tensor that device pools use.
pub struct PoolRows {
    rows: Vec<usize>,
    index: Option<Tensor<1, Int>>,
}

impl PoolRows {
    pub fn rows(&self) -> &[usize] {
        &self.rows
    }
}

/// Where a block sits in a prefix: the registered block before it, or the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrefixParent {
    /// The block is the first of its sequence.
    Root,
    /// The block follows block `block`, as it was in its `generation`-th use.
    Block { block: u32, generation: u64 },
}

/// The key a full block is registered under: its parent and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockKey {
    parent: PrefixParent,
    tokens: Vec<TokenId>,
}

impl KvCache {
    /// A cache for `model` on `device`, its pools kept as `storage` says (host memory only on
    /// the CPU backend, where host memory is the device's).
    pub fn new(config: KvCacheConfig, model: &ModelConfig, device: &Device, storage: KvStorage) -> Result<Self> {
        if config.block_size == 0 {
            return Err(KernelError::InvalidRequest("KV block size must be positive".into()));
        }
        let bytes_per_block = config.block_size * model.kv_dim() * storage.element_bytes() * 2 * model.n_layers;
        let max_blocks = (config.max_bytes / bytes_per_block).min(u32::MAX as usize);
        if max_blocks == 0 {
            return Err(KernelError::InvalidRequest(format!(
                "KV cache budget of {} bytes is smaller than one block ({bytes_per_block} bytes)",
                config.max_bytes
            )));
        }
        let capacity_blocks = config.initial_blocks.clamp(1, max_blocks);
        let rows = capacity_blocks * config.block_size;
        let len = rows * model.kv_dim();
        let pools = match storage {
            KvStorage::HostF32 => Pools::HostF32(HostPools::new(model.n_layers, len)?),
            KvStorage::HostF16 => Pools::HostF16(HostPools::new(model.n_layers, len)?),
            KvStorage::DeviceF32 | KvStorage::DeviceF16 => {
                let dtype = match storage {
                    KvStorage::DeviceF16 => DType::F16,
                    _ => DType::F32,
                };
                let zeros = || Tensor::<2>::zeros([rows, model.kv_dim()], (device, dtype));
                Pools::Device {
                    keys: (0..model.n_layers).map(|_| zeros()).collect(),
                    values: (0..model.n_layers).map(|_| zeros()).collect(),
                    dtype,
                }
            }
        };
        Ok(KvCache {
            config,
            storage,
            kv_dim: model.kv_dim(),
            n_layers: model.n_layers,
            device: device.clone(),
            pools,
            capacity_blocks,
            max_blocks,
            free: (0..capacity_blocks as u32).rev().collect(),
            refs: vec![0; capacity_blocks],
            generations: vec![0; capacity_blocks],
            cached: HashMap::new(),
            keys_of: vec![None; capacity_blocks],
            evictable: BTreeMap::new(),
            released_at: vec![0; capacity_blocks],
            tick: 0,
        })
    }

    pub fn block_size(&self) -> usize {
        self.config.block_size
    }

    /// Bytes one cached token costs across all layers (keys and values).
    pub fn bytes_per_token(&self) -> usize {
        self.kv_dim * self.storage.element_bytes() * 2 * self.n_layers
    }

    pub fn storage(&self) -> KvStorage {
        self.storage
    }

    /// Blocks in use by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.capacity_blocks - self.free.len() - self.evictable.len()
    }

    /// Blocks kept only for the prefix cache (evictable).
    pub fn cached_blocks(&self) -> usize {
        self.evictable.len()
    }

    /// The most blocks the cache may ever hold.
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Bytes currently allocated for the pools.
    pub fn allocated_bytes(&self) -> usize {
        self.capacity_blocks * self.config.block_size * self.bytes_per_token()
    }

    fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.config.block_size)
    }

    /// Whether `table` could grow to `new_len` positions without exceeding the budget.
    pub fn can_grow(&self, table: &BlockTable, new_len: usize) -> bool {
        let needed = self.blocks_for(new_len).saturating_sub(table.blocks.len());
        needed <= self.free.len() + self.evictable.len() + (self.max_blocks - self.capacity_blocks)
    }

    /// Makes sure `table` has blocks for `new_len` positions, growing the pools if needed.
    pub fn reserve(&mut self, table: &mut BlockTable, new_len: usize) -> Result<()> {
        let needed = self.blocks_for(new_len).saturating_sub(table.blocks.len());
        if needed == 0 {
            return Ok(());
        }
        if !self.can_grow(table, new_len) {
            return Err(KernelError::CacheFull(format!(
                "{new_len} positions need {needed} more blocks; {} free of {} allowed by the {}-byte budget",
                self.free.len() + (self.max_blocks - self.capacity_blocks),
                self.max_blocks,
                self.config.max_bytes
            )));
        }
        // Grow (within the budget) before evicting cached prefixes.
        if needed > self.free.len() && self.capacity_blocks < self.max_blocks {
            self.grow(self.capacity_blocks + needed - self.free.len())?;
        }
        for _ in 0..needed {
            let block = match self.free.pop() {
                Some(block) => block,
                None => self.evict_oldest().expect("can_grow counted the evictable blocks"),
            };
            self.refs[block as usize] = 1;
            // A new use: keys naming the block's old contents as their parent no longer match.
            self.generations[block as usize] += 1;
            table.blocks.push(block);
        }
        Ok(())
    }

    /// Blocks `table` would need to hold `new_len` positions, beyond those it has.
    pub fn blocks_needed(&self, table: &BlockTable, new_len: usize) -> usize {
        self.blocks_for(new_len).saturating_sub(table.blocks.len())
    }

    /// Blocks that new positions could still take: free ones, cached ones no sequence uses
    /// (evicted on demand) and growth left within the budget.
    pub fn available_blocks(&self) -> usize {
        self.free.len() + self.evictable.len() + (self.max_blocks - self.capacity_blocks)
    }

    /// Takes the least recently released cached block out of the prefix cache.
    fn evict_oldest(&mut self) -> Option<u32> {
        let (_, block) = self.evictable.pop_first()?;
        if let Some(key) = self.keys_of[block as usize].take() {
            self.cached.remove(&key);
        }
        Some(block)
    }

    /// The parent that the block after `table`'s block number `index` has.
    fn parent_of(&self, table: &BlockTable, index: usize) -> PrefixParent {
        let block = table.blocks[index];
        PrefixParent::Block {
            block,
            generation: self.generations[block as usize],
        }
    }

    /// Registers `table`'s block number `index` (full, written) as holding `tokens` after
    /// `parent`; returns the parent of the block that follows it. A prefix already registered
    /// under another block keeps that block, and what follows hangs under that one.
    pub fn register(
        &mut self,
        table: &BlockTable,
        index: usize,
        parent: PrefixParent,
        tokens: &[TokenId],
    ) -> PrefixParent {
        if index >= table.blocks.len() {
            return PrefixParent::Root;
        }
        if !self.config.prefix_cache {
            return self.parent_of(table, index);
        }
        let key = BlockKey {
            parent,
            tokens: tokens.to_vec(),
        };
        if let Some(&existing) = self.cached.get(&key) {
            return PrefixParent::Block {
                block: existing,
                generation: self.generations[existing as usize],
            };
        }
        let block = table.blocks[index];
        if self.keys_of[block as usize].is_some() {
            // Already registered (as this very prefix, adopted from the cache).
            return self.parent_of(table, index);
        }
        self.cached.insert(key.clone(), block);
        self.keys_of[block as usize] = Some(key);
        self.parent_of(table, index)
    }

    /// The longest run of cached whole blocks that `tokens` starts with, referenced into a new
    /// table, and the parent of what follows (for registering it).
    pub fn lookup_prefix(&mut self, tokens: &[TokenId]) -> (BlockTable, PrefixParent) {
        let mut table = BlockTable::default();
        let parent = self.extend_prefix(&mut table, PrefixParent::Root, tokens);
        (table, parent)
    }

    /// Appends to `table` (which must end on a block boundary, with `parent` the parent of its
    /// next block) the cached blocks that continue it with `tokens`; returns the new parent.
    pub fn extend_prefix(
        &mut self,
        table: &mut BlockTable,
        mut parent: PrefixParent,
        tokens: &[TokenId],
    ) -> PrefixParent {
        if !self.config.prefix_cache {
            return parent;
        }
        for chunk in tokens.chunks_exact(self.config.block_size) {
            let key = BlockKey {
                parent,
                tokens: chunk.to_vec(),
            };
            let Some(&block) = self.cached.get(&key) else { break };
            if self.refs[block as usize] == 0 {
                self.evictable.remove(&self.released_at[block as usize]);
            }
            self.refs[block as usize] += 1;
            table.blocks.push(block);
            table.len += chunk.len();
            parent = PrefixParent::Block {
                block,
                generation: self.generations[block as usize],
            };
        }
        parent
    }

    /// Returns a sequence's blocks to the pool (shared blocks stay until their last user lets go).
    pub fn release(&mut self, table: &mut BlockTable) {
        for block in table.blocks.drain(..) {
            let r = &mut self.refs[block as usize];
            *r = r.saturating_sub(1);
            if *r == 0 {
                if self.keys_of[block as usize].is_some() {
                    self.tick += 1;
                    self.released_at[block as usize] = self.tick;
                    self.evictable.insert(self.tick, block);
                } else {
                    self.free.push(block);
                }
            }
        }
        table.len = 0;
    }

    /// A new table sharing the first `len` positions of `table` (whole blocks only: a
    /// partially filled last block is not shared, so writers never need copy-on-write).
    pub fn share(&mut self, table: &BlockTable, len: usize) -> BlockTable {
        let whole = (len.min(table.len)) / self.config.block_size;
        let blocks: Vec<u32> = table.blocks[..whole].to_vec();
        for &b in &blocks {
            self.refs[b as usize] += 1;
        }
        BlockTable {
            len: whole * self.config.block_size,
            blocks,
        }
    }

    fn grow(&mut self, min_blocks: usize) -> Result<()> {
        let new_capacity = (self.capacity_blocks * 2).max(min_blocks).min(self.max_blocks);
        let extra_rows = (new_capacity - self.capacity_blocks) * self.config.block_size;
        tracing::debug!(from = self.capacity_blocks, to = new_capacity, "growing the KV cache");
        match &mut self.pools {
            Pools::Device { keys, values, dtype } => {
                for pool in keys.iter_mut().chain(values.iter_mut()) {
                    let old = std::mem::replace(pool, Tensor::empty([0, self.kv_dim], (&self.device, *dtype)));
                    let zeros = Tensor::<2>::zeros([extra_rows, self.kv_dim], (&self.device, *dtype));
                    *pool = Tensor::cat(vec![old, zeros], 0);
                }
            }
            Pools::HostF32(pools) => pools.grow(new_capacity * self.config.block_size * self.kv_dim)?,
            Pools::HostF16(pools) => pools.grow(new_capacity * self.config.block_size * self.kv_dim)?,
        }
        self.free
            .extend((self.capacity_blocks as u32..new_capacity as u32).rev());
        self.refs.resize(new_capacity, 0);
        self.generations.resize(new_capacity, 0);
        self.keys_of.resize(new_capacity, None);
        self.released_at.resize(new_capacity, 0);
        self.capacity_blocks = new_capacity;
        Ok(())
    }

    /// Pool rows of positions `range` of `table`.
    pub fn rows(&self, table: &BlockTable, range: std::ops::Range<usize>) -> Vec<usize> {
        let bs = self.config.block_size;
        range.map(|p| table.blocks[p / bs] as usize * bs + p % bs).collect()
    }

    /// Rows for [`KvCache::write`] and [`KvCache::gather`].
    pub fn pool_rows(&self, rows: Vec<usize>) -> PoolRows {
        let index = matches!(self.pools, Pools::Device { .. }).then(|| self.index(&rows));
        PoolRows { rows, index }
    }

    /// Writes keys and values of new tokens into the given pool rows.
    ///
    /// # Shapes
    /// rows: `[new_tokens]`; k, v: `[new_tokens, kv_dim]`
    pub fn write(&mut self, layer: usize, rows: &PoolRows, k: Tensor<2>, v: Tensor<2>) {
        let kv_dim = self.kv_dim;
        match &mut self.pools {
            Pools::Device { keys, values, dtype } => {
                let index = rows.index.as_ref().expect("device pools get rows with an index");
                for (pool, src) in [(&mut keys[layer], k), (&mut values[layer], v)] {
                    // Take the pool out so it is uniquely owned and the backend can write in place.
                    let t = std::mem::replace(pool, Tensor::empty([0, kv_dim], (&self.device, *dtype)));
                    *pool = t.select_assign(0, index.clone(), src.cast(*dtype), IndexingUpdateOp::Assign);
                }
            }
            Pools::HostF32(pools) => pools.write(layer, &rows.rows, kv_dim, k, v),
            Pools::HostF16(pools) => pools.write(layer, &rows.rows, kv_dim, k, v),
        }
    }

    /// An index tensor over pool rows.
    pub fn index(&self, rows: &[usize]) -> Tensor<1, Int> {
        let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let n = rows.len();
        Tensor::from_data(TensorData::new(rows, [n]), &self.device)
    }

    /// Keys and values of the given rows, in order.
    ///
    /// # Shapes
    /// rows: `[context]` → two `[context, kv_dim]`
    pub fn gather(&self, layer: usize, rows: &PoolRows) -> (Tensor<2>, Tensor<2>) {
        match &self.pools {
            Pools::Device { keys, values, .. } => {
                let index = rows.index.as_ref().expect("device pools get rows with an index");
                (
                    keys[layer].clone().select(0, index.clone()).cast(DType::F32),
                    values[layer].clone().select(0, index.clone()).cast(DType::F32),
                )
            }
            Pools::HostF32(pools) => self.host_tensors(pools.gather(layer, &rows.rows, self.kv_dim)),
            Pools::HostF16(pools) => self.host_tensors(pools.gather(layer, &rows.rows, self.kv_dim)),
        }
    }

    fn host_tensors(&self, (keys, values): (Vec<f32>, Vec<f32>)) -> (Tensor<2>, Tensor<2>) {
        let rows = keys.len() / self.kv_dim;
        let tensor = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [rows, self.kv_dim]), &self.device);
        (tensor(keys), tensor(values))
    }

    /// One layer's key and value pools when they are host memory.
    pub fn host_pools(&self, layer: usize) -> Option<HostLayer<'_>> {
        match &self.pools {
            Pools::HostF32(p) => Some(HostLayer::F32 {
                keys: p.keys[layer].as_slice(),
                values: p.values[layer].as_slice(),
            }),
            Pools::HostF16(p) => Some(HostLayer::F16 {
                keys: p.keys[layer].as_slice(),
                values: p.values[layer].as_slice(),
            }),
            Pools::Device { .. } => None,
        }
    }
}

/// A tensor's values as host f32 (the CPU backend reads them without a transfer).
pub(crate) fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Architecture;

    /// A cache of `max_blocks` blocks of 4 tokens for a one-layer model with kv_dim 2.
    fn cache(max_blocks: usize) -> KvCache {
        cache_of(max_blocks, max_blocks, KvStorage::DeviceF32)
    }

    /// The same model's cache in `storage`, starting with `initial_blocks`.
    fn cache_of(max_blocks: usize, initial_blocks: usize, storage: KvStorage) -> KvCache {
        let model = ModelConfig {
            architecture: Architecture::Llama,
            hidden_size: 2,
            n_layers: 1,
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
            intermediate_size: 2,
            vocab_size: 100,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            context_length: 1024,
            tie_embeddings: true,
            qkv_bias: false,
        };
        let bytes_per_block = 4 * 2 * storage.element_bytes() * 2;
        let config = KvCacheConfig {
            block_size: 4,
            max_bytes: max_blocks * bytes_per_block,
            initial_blocks,
            prefix_cache: true,
        };
        KvCache::new(config, &model, &Device::flex(), storage).unwrap()
    }

    /// Fills `table` to `tokens.len()` and registers its full blocks, as the engine does.
    fn write(kv: &mut KvCache, table: &mut BlockTable, tokens: &[TokenId]) {
        kv.reserve(table, tokens.len()).unwrap();
        table.len = tokens.len();
        let mut parent = PrefixParent::Root;
        for (i, block) in tokens.chunks_exact(4).enumerate() {
            parent = kv.register(table, i, parent, block);
        }
    }

    #[test]
    fn blocks_after_two_prefixes_whose_former_chain_hashes_collide_are_kept_apart() {
        // Under the former keys (FNV-1a 64 over the parent's chain hash and the tokens), these
        // two first blocks had the same chain hash, 0x9e4cefa62fb77928 (found by a
        // distinguished-point search); the block cached after A was then found after B, and a
        // sequence starting with B was handed A's keys and values.
        const A: [TokenId; 4] = [0x7e57_0a36, 0xa275_4fb7, 0, 0];
        const B: [TokenId; 4] = [0x1ead_0900, 0x2cce_91a5, 0, 0];
        let mut kv = cache(8);
        let mut a = BlockTable::default();
        write(&mut kv, &mut a, &[A, [5; 4]].concat());
        // A second sequence computed its own first block, B, and registers it...
        let mut b = BlockTable::default();
        kv.reserve(&mut b, 4).unwrap();
        b.len = 4;
        let parent = kv.register(&b, 0, PrefixParent::Root, &B);
        // ...then looks for a cached block continuing B with [5; 4]: there is none.
        kv.extend_prefix(&mut b, parent, &[5; 4]);
        assert_eq!(b.blocks.len(), 1, "the block after A must not continue B");
        // A's prefix is still found whole.
        assert_eq!(kv.lookup_prefix(&[A, [5; 4]].concat()).0.len, 8);
    }

    #[test]
    fn a_child_of_an_evicted_and_reused_parent_is_never_found() {
        let mut kv = cache(2);
        let mut a = BlockTable::default();
        write(&mut kv, &mut a, &[1, 1, 1, 1, 2, 2, 2, 2]);
        kv.release(&mut a);
        // The budget is spent: a new block evicts the oldest cached one, a's first, and is
        // registered for another prefix; a's second block is still cached.
        let mut b = BlockTable::default();
        kv.reserve(&mut b, 4).unwrap();
        b.len = 4;
        kv.register(&b, 0, PrefixParent::Root, &[9, 9, 9, 9]);
        assert_eq!(kv.cached_blocks(), 1);
        let (hit, _) = kv.lookup_prefix(&[9, 9, 9, 9, 2, 2, 2, 2]);
        assert_eq!(
            hit.len, 4,
            "a's second block followed a's first, not this block: {hit:?}"
        );
    }

    #[test]
    fn registering_a_prefix_twice_keeps_one_block_and_chains_under_it() {
        let mut kv = cache(8);
        let (mut a, mut b) = (BlockTable::default(), BlockTable::default());
        write(&mut kv, &mut a, &[1, 2, 3, 4, 5, 6, 7, 8]);
        // `b` computed the same prefix itself (it started before `a` registered it).
        write(&mut kv, &mut b, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]);
        kv.release(&mut a);
        kv.release(&mut b);
        let (hit, _) = kv.lookup_prefix(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]);
        assert_eq!(hit.len, 12, "b's third block hangs under the registered chain");
    }

    #[test]
    fn a_released_prefix_is_found_again_whole_blocks_only() {
        let mut kv = cache(8);
        let prompt: Vec<TokenId> = (1..=10).collect();
        let mut first = BlockTable::default();
        write(&mut kv, &mut first, &prompt);
        let blocks = first.blocks.clone();
        kv.release(&mut first);
        assert_eq!((kv.used_blocks(), kv.cached_blocks()), (0, 2));

        let (hit, _) = kv.lookup_prefix(&prompt);
        assert_eq!(hit.len, 8, "two whole blocks; the partial third is not cached");
        assert_eq!(hit.blocks, blocks[..2]);
        assert_eq!((kv.used_blocks(), kv.cached_blocks()), (2, 0));

        // A prompt that differs inside the second block shares only the first.
        let mut other = prompt.clone();
        other[5] = 99;
        let (partial, _) = kv.lookup_prefix(&other);
        assert_eq!(partial.blocks, blocks[..1]);
        assert_eq!(kv.refs[blocks[0] as usize], 2);
    }

    #[test]
    fn the_same_block_after_a_different_prefix_is_not_a_hit() {
        let mut kv = cache(8);
        let mut a = BlockTable::default();
        write(&mut kv, &mut a, &[1, 2, 3, 4, 5, 6, 7, 8]);
        // Second block equal, first block different: the chain makes it another prefix.
        let (hit, _) = kv.lookup_prefix(&[9, 9, 9, 9, 5, 6, 7, 8]);
        assert_eq!(hit.len, 0);
    }

    #[test]
    fn cached_blocks_are_evicted_oldest_first_only_when_needed() {
        let mut kv = cache(4);
        let (mut a, mut b) = (BlockTable::default(), BlockTable::default());
        write(&mut kv, &mut a, &[1, 1, 1, 1, 2, 2, 2, 2]);
        write(&mut kv, &mut b, &[3, 3, 3, 3, 4, 4, 4, 4]);
        kv.release(&mut a);
        kv.release(&mut b);
        assert_eq!(kv.cached_blocks(), 4);
        // Two new blocks: the budget is spent, so the two oldest cached blocks (a's) go.
        let mut c = BlockTable::default();
        assert!(kv.can_grow(&c, 8));
        kv.reserve(&mut c, 8).unwrap();
        assert_eq!(kv.cached_blocks(), 2);
        assert_eq!(kv.lookup_prefix(&[1, 1, 1, 1]).0.len, 0, "a's prefix was evicted");
        assert_eq!(
            kv.lookup_prefix(&[3, 3, 3, 3, 4, 4, 4, 4]).0.len,
            8,
            "b's is still there"
        );
        // Everything is in use now: no room for more.
        assert!(!kv.can_grow(&BlockTable::default(), 1));
    }

    /// Every storage returns the rows written to it, through a growth of its pools, in its own
    /// precision and size.
    #[test]
    fn every_storage_keeps_its_rows_through_growth() {
        let storages = [
            KvStorage::DeviceF32,
            KvStorage::DeviceF16,
            KvStorage::HostF32,
            KvStorage::HostF16,
        ];
        for storage in storages {
            let mut kv = cache_of(8, 1, storage);
            assert_eq!(kv.bytes_per_token(), 2 * 2 * storage.element_bytes(), "{storage:?}");
            let device = Device::flex();
            // Row r holds keys (r + 0.1, -r) and values (r * 0.5, 1 / (r + 1)).
            let keys = |rows: std::ops::Range<usize>| -> Vec<f32> {
                rows.flat_map(|r| [r as f32 + 0.1, -(r as f32)]).collect()
            };
            let values = |rows: std::ops::Range<usize>| -> Vec<f32> {
                rows.flat_map(|r| [r as f32 * 0.5, 1.0 / (r as f32 + 1.0)]).collect()
            };
            let tensor = |v: Vec<f32>| {
                let n = v.len() / 2;
                Tensor::<2>::from_data(TensorData::new(v, [n, 2]), &device)
            };
            let mut table = BlockTable::default();
            let mut written = 0;
            for len in [3, 4, 13, 16] {
                // 13 and 16 tokens need 4 blocks: the pools grow from 1 block to 2, then 4.
                kv.reserve(&mut table, len).unwrap();
                let rows = kv.pool_rows(kv.rows(&table, written..len));
                kv.write(0, &rows, tensor(keys(written..len)), tensor(values(written..len)));
                table.len = len;
                written = len;
            }
            assert_eq!(kv.allocated_bytes(), 4 * kv.bytes_per_token() * 4, "{storage:?}");
            let (k, v) = kv.gather(0, &kv.pool_rows(kv.rows(&table, 0..16)));
            let tolerance = if storage.element_bytes() == 2 { 1e-2 } else { 0.0 };
            for (got, want) in [(host_values(k), keys(0..16)), (host_values(v), values(0..16))] {
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= tolerance * w.abs().max(1.0), "{storage:?}: {g} vs {w}");
                }
            }
        }
    }
}
