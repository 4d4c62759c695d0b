//! Backing stores: numbered page-sized slots a pager writes pages to and
//! reads them back from.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::{KernError, PAGE_SIZE, PhysAddr};
use machvm_frame::PhysMem;

use crate::StoreError;

/// Words in a page.
const WORDS: usize = (PAGE_SIZE / 8) as usize;

/// A device of `pages()` page-sized slots, indexed from 0. Frames are
/// reached through `mem`, the frame allocator's [`PhysMem`]. A pager calls
/// a slot's methods only while it owns the slot, so calls on one slot never
/// overlap.
pub trait BackingStore: Send + Sync {
    /// Slots in the store.
    fn pages(&self) -> u64;

    /// Writes the page at `src` to slot `index`.
    fn write_page(&self, index: u64, mem: &PhysMem, src: PhysAddr) -> Result<(), StoreError>;

    /// Reads slot `index` into the page at `dst`. A store that cannot read
    /// a page it was given panics: returning anything else would lose the
    /// page's bytes silently.
    fn read_page(&self, index: u64, mem: &PhysMem, dst: PhysAddr);

    /// Reads `buf.len()` bytes at byte `offset` of slot `index` (within the
    /// page).
    fn read_bytes(&self, index: u64, mem: &PhysMem, offset: usize, buf: &mut [u8]);

    /// Copies slot `from` to slot `to`.
    fn copy_page(&self, from: u64, to: u64, mem: &PhysMem) -> Result<(), StoreError>;

    /// Trades contents: slot `index` gets the page at `frame`, and the
    /// frame the slot's page (a page-in needing no free frame and no free
    /// slot). On an error neither changed. Only a store whose writes
    /// cannot fail part-way may: the default refuses (a write that failed
    /// half-way through the slot would lose the page it held).
    fn exchange_page(&self, index: u64, mem: &PhysMem, frame: PhysAddr) -> Result<(), StoreError> {
        let _ = (index, mem, frame);
        Err(StoreError)
    }
}

/// Slots in host memory: the store `VmSystem`'s hosted swap uses. Pages
/// are kept as words and moved with `PhysMem`'s 8-byte atomic accesses,
/// the only kind it allows.
pub struct MemStore {
    words: Box<[AtomicU64]>,
}

impl MemStore {
    /// A store of `pages` zeroed slots; `ResourceShortage` when the host
    /// cannot provide them.
    pub fn new(pages: u64) -> Result<MemStore, KernError> {
        let n = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(WORDS))
            .ok_or(KernError::ResourceShortage)?;
        let mut words = Vec::new();
        words
            .try_reserve_exact(n)
            .map_err(|_| KernError::ResourceShortage)?;
        words.resize_with(n, || AtomicU64::new(0));
        Ok(MemStore {
            words: words.into_boxed_slice(),
        })
    }

    fn slot(&self, index: u64) -> &[AtomicU64] {
        let at = index as usize * WORDS;
        &self.words[at..at + WORDS]
    }
}

impl BackingStore for MemStore {
    fn pages(&self) -> u64 {
        (self.words.len() / WORDS) as u64
    }

    fn write_page(&self, index: u64, mem: &PhysMem, src: PhysAddr) -> Result<(), StoreError> {
        for (i, w) in self.slot(index).iter().enumerate() {
            w.store(mem.load_u64(src + i as u64 * 8), Relaxed);
        }
        Ok(())
    }

    fn read_page(&self, index: u64, mem: &PhysMem, dst: PhysAddr) {
        for (i, w) in self.slot(index).iter().enumerate() {
            mem.store_u64(dst + i as u64 * 8, w.load(Relaxed));
        }
    }

    fn read_bytes(&self, index: u64, _mem: &PhysMem, offset: usize, buf: &mut [u8]) {
        let words = self.slot(index);
        for (k, b) in buf.iter_mut().enumerate() {
            let at = offset + k;
            *b = words[at / 8].load(Relaxed).to_ne_bytes()[at % 8];
        }
    }

    fn copy_page(&self, from: u64, to: u64, _mem: &PhysMem) -> Result<(), StoreError> {
        for (d, s) in self.slot(to).iter().zip(self.slot(from)) {
            d.store(s.load(Relaxed), Relaxed);
        }
        Ok(())
    }

    fn exchange_page(&self, index: u64, mem: &PhysMem, frame: PhysAddr) -> Result<(), StoreError> {
        for (i, w) in self.slot(index).iter().enumerate() {
            let at = frame + i as u64 * 8;
            let page = mem.load_u64(at);
            mem.store_u64(at, w.load(Relaxed));
            w.store(page, Relaxed);
        }
        Ok(())
    }
}

impl core::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MemStore({} pages)", self.pages())
    }
}

/// Slots in a region of physical memory a kernel set aside at boot (a RAM
/// disk): slot `i` is the frame at `base + i` pages, reached through the
/// same [`PhysMem`] as every frame, so moving a page is one page copy.
#[derive(Clone, Copy, Debug)]
pub struct RamDisk {
    base: PhysAddr,
    pages: u64,
}

impl RamDisk {
    /// The `pages` frames from `base` (page-aligned), which the kernel keeps
    /// out of the frame allocator's ranges and inside its `PhysMem`.
    /// `InvalidArgument` for an unaligned or overflowing region.
    pub fn new(base: PhysAddr, pages: u64) -> Result<RamDisk, KernError> {
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|n| base.checked_add(n));
        if !base.is_page_aligned() || end.is_none() {
            return Err(KernError::InvalidArgument);
        }
        Ok(RamDisk { base, pages })
    }

    fn frame(&self, index: u64) -> PhysAddr {
        self.base + index * PAGE_SIZE
    }
}

impl BackingStore for RamDisk {
    fn pages(&self) -> u64 {
        self.pages
    }

    fn write_page(&self, index: u64, mem: &PhysMem, src: PhysAddr) -> Result<(), StoreError> {
        mem.copy_page(self.frame(index), src);
        Ok(())
    }

    fn read_page(&self, index: u64, mem: &PhysMem, dst: PhysAddr) {
        mem.copy_page(dst, self.frame(index));
    }

    fn read_bytes(&self, index: u64, mem: &PhysMem, offset: usize, buf: &mut [u8]) {
        mem.read(self.frame(index) + offset as u64, buf);
    }

    fn copy_page(&self, from: u64, to: u64, mem: &PhysMem) -> Result<(), StoreError> {
        mem.copy_page(self.frame(to), self.frame(from));
        Ok(())
    }

    fn exchange_page(&self, index: u64, mem: &PhysMem, frame: PhysAddr) -> Result<(), StoreError> {
        let slot = self.frame(index);
        for i in 0..PAGE_SIZE / 8 {
            let (a, b) = (slot + i * 8, frame + i * 8);
            let (x, y) = (mem.load_u64(a), mem.load_u64(b));
            mem.store_u64(a, y);
            mem.store_u64(b, x);
        }
        Ok(())
    }
}
