//! GGUF v2/v3 reader over a memory map.
//!
//! The header, metadata and tensor infos are parsed eagerly and bounds-checked against the file
//! length; tensor data stays in the map and is dequantised on demand ([`GgufFile::tensor_f32`]).
//! Every count read from the file is checked against what the remaining bytes could possibly
//! hold (and a documented upper bound) before anything is allocated, and tensor sizes are
//! computed in checked arithmetic, so a hostile file cannot make us allocate gigabytes, panic or
//! abort: it gets a [`GgufError`] that says what is wrong.

pub mod dequant;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use self::dequant::GgmlType;
use crate::error::{GgufError, KernelError, Result};

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata arrays longer than this are rejected. The largest real ones are vocabularies and
/// merge lists of under 300k entries (Gemma 3, Llama 3); every item is a 32-byte [`MetaValue`]
/// in memory, so this also bounds one array's allocation to 64 MiB whatever the file says.
const MAX_ARRAY_LEN: u64 = 1 << 21;
/// Strings (keys, tensor names, tokens, chat templates of a few KiB) longer than this are
/// rejected; a string is never longer than the bytes left in the file either.
const MAX_STRING_LEN: u64 = 1 << 26;
/// Files from llama.cpp's writer carry a few dozen metadata entries and at most a few
/// thousand tensors; far more is a corrupted count, rejected before the tables are sized.
const MAX_METADATA_ENTRIES: u64 = 1 << 16;
const MAX_TENSORS: u64 = 1 << 16;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, if it is any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// Where one tensor's data lives and how it is encoded.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` varies fastest (the row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub start: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The product of the dimensions (the reader rejects files where it overflows; `u64::MAX`
    /// for a hand-made info that does).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

/// A parsed GGUF file; tensor data is read lazily from the memory map.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub alignment: u64,
    metadata: HashMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path`. The file must not be modified while it is open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let wrap = |source| KernelError::Gguf {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(|e| wrap(GgufError::Io(e.to_string())))?;
        // SAFETY: the map is read-only; we document that the file must not change while open,
        // which is the same contract every mmap-based model loader has.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| wrap(GgufError::Io(e.to_string())))?;
        let parsed = parse(&map).map_err(wrap)?;
        Ok(GgufFile {
            path,
            map,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            by_name: parsed
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: parsed.tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, MetaValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn error(&self, source: GgufError) -> KernelError {
        KernelError::Gguf {
            path: self.path.clone(),
            source,
        }
    }

    /// A required string value.
    pub fn string(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(MetaValue::String(s)) => Ok(s),
            Some(other) => Err(self.wrong_type(key, other, "string")),
            None => Err(self.error(GgufError::MissingKey(key.to_string()))),
        }
    }

    /// A required non-negative integer value of any integer type.
    pub fn u64(&self, key: &str) -> Result<u64> {
        match self.get(key) {
            Some(v) => v.as_u64().ok_or_else(|| self.wrong_type(key, v, "unsigned integer")),
            None => Err(self.error(GgufError::MissingKey(key.to_string()))),
        }
    }

    /// A required numeric value.
    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            Some(v) => v.as_f64().ok_or_else(|| self.wrong_type(key, v, "number")),
            None => Err(self.error(GgufError::MissingKey(key.to_string()))),
        }
    }

    /// A required array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            Some(MetaValue::Array(items)) => items
                .iter()
                .map(|v| match v {
                    MetaValue::String(s) => Ok(s.as_str()),
                    other => Err(self.wrong_type(key, other, "array of strings")),
                })
                .collect(),
            Some(other) => Err(self.wrong_type(key, other, "array of strings")),
            None => Err(self.error(GgufError::MissingKey(key.to_string()))),
        }
    }

    fn wrong_type(&self, key: &str, found: &MetaValue, expected: &'static str) -> KernelError {
        self.error(GgufError::WrongKeyType {
            key: key.to_string(),
            found: found.type_name(),
            expected,
        })
    }

    /// The raw bytes of a tensor. The reader checked its own infos against the file; an info
    /// made or changed by hand that does not fit is an error.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let file_len = self.map.len() as u64;
        let end = info.start.checked_add(info.n_bytes).filter(|&end| end <= file_len);
        match end {
            // Both fit in the file's length, so in `usize`.
            Some(end) => Ok(&self.map[info.start as usize..end as usize]),
            None => Err(self.error(GgufError::TensorOutOfBounds {
                name: info.name.clone(),
                start: info.start,
                end: info.start.saturating_add(info.n_bytes),
                file_len,
            })),
        }
    }

    /// Dequantises a tensor into `f32` values in GGUF order (row-major with `dims[0]` fastest).
    ///
    /// The output holds the element count the reader checked against the bytes in the file,
    /// so it is at most about 7 times their size (4-byte floats from 0.5625 bytes per Q4_0 or
    /// Q4_K element).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<u64>)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| self.error(GgufError::MissingTensor(name.to_string())))?;
        let bytes = self.tensor_bytes(info)?;
        let mut out = vec![0f32; info.n_elements() as usize];
        dequant::dequantize(info.ggml_type, bytes, &mut out);
        self.release(info);
        Ok((out, info.dims.clone()))
    }

    /// Gives back the memory of a tensor's mapped pages (after its bytes were copied or
    /// converted): otherwise a loaded model stays resident twice, as its copy and as the pages
    /// of the file read to make it. A later read of the tensor faults its bytes back in from
    /// the file. Best effort: where the advice is refused the pages just stay.
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            let start = (info.start as usize).min(self.map.len());
            let len = (info.n_bytes as usize).min(self.map.len() - start);
            // SAFETY: the map is a private read-only mapping of a file. After MADV_DONTNEED a
            // read of these pages faults them in again from the file, so every reference into
            // the map keeps seeing the same bytes (a file changed while it is mapped breaks
            // that anyway: the contract of every memory-mapped loader, see `open`).
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
        #[cfg(not(unix))]
        let _ = info;
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    metadata: HashMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos as u64,
                needed: n,
                file_len: self.bytes.len() as u64,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// Reads a count and rejects it if even the smallest encoding of that many items
    /// could not fit in the rest of the file.
    fn count(&mut self, what: &'static str, min_item_bytes: u64, max: u64) -> Result<u64, GgufError> {
        let offset = self.pos as u64;
        let count = self.u64(what)?;
        let fits = count.saturating_mul(min_item_bytes) <= self.remaining();
        if count > max || !fits {
            return Err(GgufError::AbsurdCount {
                what,
                count,
                max: max.min(self.remaining() / min_item_bytes.max(1)),
                offset,
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.count(what, 1, MAX_STRING_LEN)?;
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    fn value(&mut self, value_type: u32, depth: u32) -> Result<MetaValue, GgufError> {
        let offset = self.pos as u64;
        Ok(match value_type {
            0 => MetaValue::U8(self.array::<1>("u8 value")?[0]),
            1 => MetaValue::I8(self.array::<1>("i8 value")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("u16 value")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("i16 value")?)),
            4 => MetaValue::U32(self.u32("u32 value")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("i32 value")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("f32 value")?)),
            7 => MetaValue::Bool(self.array::<1>("bool value")?[0] != 0),
            8 => MetaValue::String(self.string("string value")?),
            9 if depth == 0 => {
                let item_type = self.u32("array item type")?;
                let min_item = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(GgufError::UnknownValueType {
                            value_type: item_type,
                            offset: self.pos as u64 - 4,
                        });
                    }
                };
                let len = self.count("array length", min_item, MAX_ARRAY_LEN)?;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64("u64 value")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("i64 value")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("f64 value")?)),
            _ => return Err(GgufError::UnknownValueType { value_type, offset }),
        })
    }
}

fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // A tensor info takes at least 8 (name len) + 4 (dims) + 4 (type) + 8 (offset) bytes;
    // a metadata entry at least 8 (key len) + 4 (type) + 1 (smallest value).
    let tensor_count = c.count("tensor", 24, MAX_TENSORS)?;
    let kv_count = c.count("metadata entry", 13, MAX_METADATA_ENTRIES)?;

    let mut metadata = HashMap::with_capacity(kv_count as usize);
    for _ in 0..kv_count {
        let key = c.string("metadata key")?;
        let value_type = c.u32("metadata value type")?;
        let value = c.value(value_type, 0)?;
        // Which of two values is meant cannot be known; llama.cpp refuses such files too.
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        Some(v) => v.as_u64().unwrap_or(0),
        None => DEFAULT_ALIGNMENT,
    };
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(GgufError::BadAlignment(alignment));
    }

    struct RawInfo {
        name: String,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        offset: u64,
    }
    let mut raw = Vec::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let name = c.string("tensor name")?;
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > 4 {
            return Err(GgufError::TooManyDims { name, dims: n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dimension")?);
        }
        let type_id = c.u32("tensor type")?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            name: name.clone(),
            type_id,
        })?;
        let offset = c.u64("tensor offset")?;
        raw.push(RawInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let data_start = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::BadAlignment(alignment))?;
    let file_len = bytes.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for r in raw {
        if !seen.insert(r.name.clone()) {
            return Err(GgufError::DuplicateTensor(r.name));
        }
        // Blocks never straddle rows (ggml quantises row by row), so the row length, not just
        // the element count, must be whole blocks; dims[0] exists (1 to 4 dims were read).
        let block = r.ggml_type.block_elements();
        if r.dims[0] % block != 0 {
            return Err(GgufError::PartialBlock {
                name: r.name,
                elements: r.dims[0],
                block,
            });
        }
        // Element count and byte size in checked arithmetic: the dims are the file's word.
        let n_bytes = r
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|elements| (elements / block).checked_mul(r.ggml_type.block_bytes()));
        let Some(n_bytes) = n_bytes else {
            return Err(GgufError::TensorTooLarge {
                name: r.name,
                dims: r.dims,
            });
        };
        if r.offset % alignment != 0 {
            return Err(GgufError::Misaligned {
                name: r.name,
                offset: r.offset,
                alignment,
            });
        }
        let start = data_start.saturating_add(r.offset);
        let end = start.saturating_add(n_bytes);
        if end > file_len {
            return Err(GgufError::TensorOutOfBounds {
                name: r.name,
                start,
                end,
                file_len,
            });
        }
        tensors.push(TensorInfo {
            name: r.name,
            dims: r.dims,
            ggml_type: r.ggml_type,
            start,
            n_bytes,
        });
    }

    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a GGUF v3 file in memory: metadata entries are (key, type, encoded value).
    pub(crate) struct Builder {
        kv: Vec<(String, u32, Vec<u8>)>,
        tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder {
                kv: vec![],
                tensors: vec![],
            }
        }
        pub(crate) fn kv_u32(mut self, key: &str, v: u32) -> Self {
            self.kv.push((key.into(), 4, v.to_le_bytes().to_vec()));
            self
        }
        pub(crate) fn kv_str(mut self, key: &str, v: &str) -> Self {
            let mut b = (v.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(v.as_bytes());
            self.kv.push((key.into(), 8, b));
            self
        }
        pub(crate) fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
            self.tensors.push((name.into(), dims.to_vec(), ty, data));
            self
        }
        pub(crate) fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kv.len() as u64).to_le_bytes());
            for (k, t, v) in &self.kv {
                out.extend((k.len() as u64).to_le_bytes());
                out.extend(k.as_bytes());
                out.extend(t.to_le_bytes());
                out.extend(v);
            }
            let mut offset = 0u64;
            let mut offsets = vec![];
            for (name, dims, ty, data) in &self.tensors {
                out.extend((name.len() as u64).to_le_bytes());
                out.extend(name.as_bytes());
                out.extend((dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend(d.to_le_bytes());
                }
                out.extend(ty.to_le_bytes());
                out.extend(offset.to_le_bytes());
                offsets.push(offset);
                offset += (data.len() as u64).div_ceil(32) * 32;
            }
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            let base = out.len();
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                out.resize(base + off as usize, 0);
                out.extend(data);
            }
            out
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn open_err(bytes: &[u8]) -> GgufError {
        let f = write(bytes);
        match GgufFile::open(f.path()) {
            Err(KernelError::Gguf { source, .. }) => source,
            other => panic!("expected a GGUF error, got {other:?}"),
        }
    }

    fn sample() -> Vec<u8> {
        Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .tensor("a", &[2, 2], 0, f32_bytes(&[1.0, 2.0, 3.0, 4.0]))
            .tensor("b", &[3], 0, f32_bytes(&[5.0, 6.0, 7.0]))
            .build()
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let f = write(&sample());
        let g = GgufFile::open(f.path()).unwrap();
        assert_eq!(g.string("general.architecture").unwrap(), "llama");
        assert_eq!(g.u64("llama.block_count").unwrap(), 2);
        let (a, dims) = g.tensor_f32("a").unwrap();
        assert_eq!(dims, vec![2, 2]);
        assert_eq!(a, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(g.tensor_f32("b").unwrap().0, vec![5.0, 6.0, 7.0]);
        assert!(matches!(
            g.string("llama.block_count"),
            Err(KernelError::Gguf {
                source: GgufError::WrongKeyType { .. },
                ..
            })
        ));
    }

    #[test]
    fn a_released_tensor_reads_the_same_bytes_again() {
        // Several pages, so the advice covers whole pages of it.
        let values: Vec<f32> = (0..5000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let f = write(
            &Builder::new()
                .kv_str("general.architecture", "llama")
                .tensor("big", &[5000], 0, f32_bytes(&values))
                .tensor("after", &[3], 0, f32_bytes(&[1.0, 2.0, 3.0]))
                .build(),
        );
        let g = GgufFile::open(f.path()).unwrap();
        let info = g.tensor_info("big").unwrap().clone();
        let before = g.tensor_bytes(&info).unwrap().to_vec();
        g.release(&info);
        assert_eq!(g.tensor_bytes(&info).unwrap(), &before[..]);
        // tensor_f32 releases what it converted; reading again gives the same values, and the
        // tensor sharing its last page is untouched.
        assert_eq!(g.tensor_f32("big").unwrap().0, values);
        assert_eq!(g.tensor_f32("big").unwrap().0, values);
        assert_eq!(g.tensor_f32("after").unwrap().0, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let full = sample();
        for len in 0..full.len() - 1 {
            let err = open_err(&full[..len]);
            assert!(
                matches!(
                    err,
                    GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. } | GgufError::AbsurdCount { .. }
                ),
                "length {len}: {err:?}"
            );
        }
    }

    #[test]
    fn wrong_magic_and_version() {
        let mut bytes = sample();
        bytes[0] = b'X';
        assert!(matches!(open_err(&bytes), GgufError::BadMagic { .. }));
        let mut bytes = sample();
        bytes[4] = 1;
        assert_eq!(open_err(&bytes), GgufError::UnsupportedVersion(1));
    }

    #[test]
    fn absurd_counts_do_not_allocate() {
        let mut bytes = sample();
        // Tensor count at offset 8.
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(open_err(&bytes), GgufError::AbsurdCount { .. }));
        let mut bytes = sample();
        // Length of the first key at offset 24.
        bytes[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(open_err(&bytes), GgufError::AbsurdCount { .. }));
    }

    #[test]
    fn unknown_types_and_bad_offsets() {
        let bytes = Builder::new().tensor("q", &[32], 99, vec![0; 32]).build();
        assert!(matches!(
            open_err(&bytes),
            GgufError::UnknownTensorType { type_id: 99, .. }
        ));
        let mut bytes = Builder::new().kv_u32("k", 1).build();
        // The value type of the only key (after magic, version, counts, key length and key).
        let at = 24 + 8 + 1;
        bytes[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
        assert!(matches!(
            open_err(&bytes),
            GgufError::UnknownValueType { value_type: 77, .. }
        ));
        // A tensor whose data would end past the end of the file.
        let mut bytes = Builder::new().tensor("t", &[8], 0, f32_bytes(&[0.0; 8])).build();
        bytes.truncate(bytes.len() - 4);
        assert!(matches!(open_err(&bytes), GgufError::TensorOutOfBounds { .. }));
    }
}
