//! A paged KV cache: fixed-size blocks in one pool per layer, and a block table per sequence.
//!
//! A sequence's keys and values live in whatever blocks its [`BlockTable`] lists, in order, so
//! sequences can grow without copying, be paused (keep the table, stop scheduling it) and
//! resumed without recomputation, and share whole blocks of a common prefix (blocks are
//! reference counted; [`KvCache::share`]).
//!
//! # Shapes
//! each layer's pool: `[capacity_blocks * block_size, kv_heads * head_dim]`; the token at
//! position `p` of a sequence lives in row `blocks[p / block_size] * block_size + p % block_size`.

use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::model::ModelConfig;

/// Sizing of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// The most memory the pools may grow to, in bytes.
    pub max_bytes: usize,
    /// Blocks allocated up front (the pools grow by doubling up to `max_bytes`).
    pub initial_blocks: usize,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        KvCacheConfig {
            block_size: 16,
            max_bytes: 1 << 30,
            initial_blocks: 64,
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
    kv_dim: usize,
    device: Device,
    keys: Vec<Tensor<2>>,
    values: Vec<Tensor<2>>,
    capacity_blocks: usize,
    max_blocks: usize,
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl KvCache {
    pub fn new(config: KvCacheConfig, model: &ModelConfig, device: &Device) -> Result<Self> {
        if config.block_size == 0 {
            return Err(KernelError::InvalidRequest("KV block size must be positive".into()));
        }
        let bytes_per_block = config.block_size * model.kv_dim() * 4 * 2 * model.n_layers;
        let max_blocks = (config.max_bytes / bytes_per_block).min(u32::MAX as usize);
        if max_blocks == 0 {
            return Err(KernelError::InvalidRequest(format!(
                "KV cache budget of {} bytes is smaller than one block ({bytes_per_block} bytes)",
                config.max_bytes
            )));
        }
        let capacity_blocks = config.initial_blocks.clamp(1, max_blocks);
        let rows = capacity_blocks * config.block_size;
        let zeros = || Tensor::<2>::zeros([rows, model.kv_dim()], (device, DType::F32));
        Ok(KvCache {
            config,
            kv_dim: model.kv_dim(),
            device: device.clone(),
            keys: (0..model.n_layers).map(|_| zeros()).collect(),
            values: (0..model.n_layers).map(|_| zeros()).collect(),
            capacity_blocks,
            max_blocks,
            free: (0..capacity_blocks as u32).rev().collect(),
            refs: vec![0; capacity_blocks],
        })
    }

    pub fn block_size(&self) -> usize {
        self.config.block_size
    }

    /// Bytes one cached token costs across all layers (keys and values).
    pub fn bytes_per_token(&self) -> usize {
        self.kv_dim * 4 * 2 * self.keys.len()
    }

    /// Blocks in use by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.capacity_blocks - self.free.len()
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
        needed <= self.free.len() + (self.max_blocks - self.capacity_blocks)
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
        if needed > self.free.len() {
            self.grow(self.capacity_blocks + needed - self.free.len());
        }
        for _ in 0..needed {
            let block = self.free.pop().expect("grow made room");
            self.refs[block as usize] = 1;
            table.blocks.push(block);
        }
        Ok(())
    }

    /// Returns a sequence's blocks to the pool (shared blocks stay until their last user lets go).
    pub fn release(&mut self, table: &mut BlockTable) {
        for block in table.blocks.drain(..) {
            let r = &mut self.refs[block as usize];
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.free.push(block);
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

    fn grow(&mut self, min_blocks: usize) {
        let new_capacity = (self.capacity_blocks * 2).max(min_blocks).min(self.max_blocks);
        let extra_rows = (new_capacity - self.capacity_blocks) * self.config.block_size;
        tracing::debug!(from = self.capacity_blocks, to = new_capacity, "growing the KV cache");
        for pool in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let old = std::mem::replace(pool, Tensor::empty([0, self.kv_dim], (&self.device, DType::F32)));
            let zeros = Tensor::<2>::zeros([extra_rows, self.kv_dim], (&self.device, DType::F32));
            *pool = Tensor::cat(vec![old, zeros], 0);
        }
        self.free
            .extend((self.capacity_blocks as u32..new_capacity as u32).rev());
        self.refs.resize(new_capacity, 0);
        self.capacity_blocks = new_capacity;
    }

    /// Pool rows of positions `range` of `table`.
    pub fn rows(&self, table: &BlockTable, range: std::ops::Range<usize>) -> Vec<usize> {
        let bs = self.config.block_size;
        range.map(|p| table.blocks[p / bs] as usize * bs + p % bs).collect()
    }

    /// Writes keys and values of new tokens into the given pool rows (one scatter per pool).
    ///
    /// # Shapes
    /// rows: `[new_tokens]`; k, v: `[new_tokens, kv_dim]`
    pub fn write(&mut self, layer: usize, rows: Tensor<1, Int>, k: Tensor<2>, v: Tensor<2>) {
        for (pool, src) in [(&mut self.keys[layer], k), (&mut self.values[layer], v)] {
            // Take the pool out so it is uniquely owned and the backend can write in place.
            let t = std::mem::replace(pool, Tensor::empty([0, self.kv_dim], (&self.device, DType::F32)));
            *pool = t.select_assign(0, rows.clone(), src, IndexingUpdateOp::Assign);
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
    pub fn gather(&self, layer: usize, rows: Tensor<1, Int>) -> (Tensor<2>, Tensor<2>) {
        (
            self.keys[layer].clone().select(0, rows.clone()),
            self.values[layer].clone().select(0, rows),
        )
    }
}
