//! The memory of one host pool: anonymous zero pages that the operating system commits as rows
//! are first written.
//!
//! A pool is sized in blocks it may hold, and grows by doubling; a `Vec` filled with zeros would
//! make all of that resident at once (writing the zeros touches every page). Zero pages mapped
//! from the OS cost nothing until written, so resident memory follows the blocks sequences have
//! used, not the capacity; blocks are handed out lowest first and reused most recently freed
//! first, which keeps the used rows together. On Linux growth is `mremap`: no copy, and the new
//! rows stay untouched.

use std::marker::PhantomData;

use memmap2::{MmapMut, MmapOptions};

use super::KvElement;
use crate::error::{KernelError, Result};

pub(super) struct PoolMemory<T> {
    map: MmapMut,
    /// Elements (not bytes).
    len: usize,
    element: PhantomData<T>,
}

impl<T: KvElement> PoolMemory<T> {
    /// `len` elements, all zero.
    pub(super) fn zeroed(len: usize) -> Result<Self> {
        Ok(PoolMemory {
            map: map_zeroed(Self::bytes(len)?)?,
            len,
            element: PhantomData,
        })
    }

    /// Grows to `len` elements: the existing ones kept, the new ones zero.
    pub(super) fn grow(&mut self, len: usize) -> Result<()> {
        if len <= self.len {
            return Ok(());
        }
        let bytes = Self::bytes(len)?;
        #[cfg(target_os = "linux")]
        {
            // SAFETY: nothing borrows the map (this takes `&mut self`), and `may_move` lets the
            // kernel move it; the added pages are zero pages of the anonymous mapping.
            unsafe { self.map.remap(bytes, memmap2::RemapOptions::new().may_move(true)) }
                .map_err(|e| KernelError::CacheFull(format!("cannot grow a KV pool to {bytes} bytes: {e}")))?;
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut map = map_zeroed(bytes)?;
            map[..self.map.len()].copy_from_slice(&self.map);
            self.map = map;
        }
        self.len = len;
        Ok(())
    }

    pub(super) fn as_slice(&self) -> &[T] {
        // SAFETY: the map holds `len` elements' bytes, is page-aligned (more than any element's
        // alignment), and every byte pattern it can hold is a valid `T` (`KvElement`'s contract:
        // it starts as zeros and is only written through `as_mut_slice`).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<T>(), self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast::<T>(), self.len) }
    }

    fn bytes(len: usize) -> Result<usize> {
        len.checked_mul(std::mem::size_of::<T>())
            .filter(|&b| b > 0)
            .ok_or_else(|| KernelError::CacheFull(format!("a KV pool of {len} elements has no valid size")))
    }
}

fn map_zeroed(bytes: usize) -> Result<MmapMut> {
    MmapOptions::new()
        .len(bytes)
        .map_anon()
        .map_err(|e| KernelError::CacheFull(format!("cannot map {bytes} bytes for a KV pool: {e}")))
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    #[test]
    fn growth_keeps_what_was_written_and_adds_zeros() {
        let mut pool = PoolMemory::<f16>::zeroed(3000).unwrap();
        assert!(pool.as_slice().iter().all(|v| v.to_f32() == 0.0));
        for (i, v) in pool.as_mut_slice().iter_mut().enumerate() {
            *v = f16::from_f32(i as f32);
        }
        // Past several pages, so the mapping must move or extend.
        pool.grow(1 << 20).unwrap();
        let values = pool.as_slice();
        assert_eq!(values.len(), 1 << 20);
        assert!((0..3000).all(|i| values[i] == f16::from_f32(i as f32)));
        assert!(values[3000..].iter().all(|v| v.to_f32() == 0.0));
        // Shrinking is not growth: nothing changes.
        pool.grow(10).unwrap();
        assert_eq!(pool.as_slice().len(), 1 << 20);
    }

    /// Pages of `pool` the process has resident (`mincore`).
    #[cfg(target_os = "linux")]
    fn resident_pages<T: KvElement>(pool: &PoolMemory<T>) -> usize {
        let page = 4096;
        let pages = pool.map.len().div_ceil(page);
        let mut state = vec![0u8; pages];
        // SAFETY: the map is a live mapping of `map.len()` bytes, and `state` has a byte per page.
        let rc = unsafe {
            libc::mincore(
                pool.map.as_ptr() as *mut libc::c_void,
                pool.map.len(),
                state.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "mincore failed");
        state.iter().filter(|&&s| s & 1 == 1).count()
    }

    /// The claim the pools rest on: rows not yet written cost no memory, before and after growth.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_written_pages_are_resident() {
        // 64 pages of f32 (under a huge page, so each write commits one 4 KiB page).
        let mut pool = PoolMemory::<f32>::zeroed(64 * 1024).unwrap();
        assert_eq!(resident_pages(&pool), 0);
        // One value in each of pages 0, 1 and 5.
        for page in [0, 1, 5] {
            pool.as_mut_slice()[page * 1024] = 1.0;
        }
        assert_eq!(resident_pages(&pool), 3);
        pool.grow(128 * 1024).unwrap();
        assert_eq!(resident_pages(&pool), 3, "growth touched no new page");
        assert_eq!(pool.as_slice()[5 * 1024], 1.0);
    }

    #[test]
    fn an_impossible_size_is_an_error() {
        assert!(matches!(PoolMemory::<f32>::zeroed(0), Err(KernelError::CacheFull(_))));
        assert!(matches!(
            PoolMemory::<f32>::zeroed(usize::MAX / 2),
            Err(KernelError::CacheFull(_))
        ));
    }
}
