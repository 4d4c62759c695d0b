//! The copy API: copy objects and `vm_map_copy`, `vm_read`, `vm_write`,
//! `vm_copy` (SPEC §4), built on the locked-map primitives `machvm-map`
//! exposes ([`MapGuard`](machvm_map::MapGuard),
//! [`MapPair`](machvm_map::MapPair)).
//!
//! Everything is built from three steps, as in Mach 3:
//! - *copy-in* snapshots a source range into a [`VmMapCopy`]: the partial
//!   pages at its edges as bytes, the whole pages between them as
//!   copy-on-write references to the source objects' windows
//!   ([`MapGuard::extract`](machvm_map::MapGuard::extract)), so exactly the pages copied become
//!   copy-on-write (and lose `WRITE` in the pmap only);
//! - *overwrite* replaces an allocated, writable destination range with a
//!   copy: whole pages at equal page offset become copy-on-write pages that
//!   keep the destination's protection, maximum and inheritance
//!   ([`MapGuard::replace`](machvm_map::MapGuard::replace)); the rest is stored as bytes;
//! - *copy-out* allocates a fresh range anywhere and overwrites it.
//!
//! Because copy-in completes before anything is written, an overlapping
//! copy within one map behaves like `memmove`, and a copy back onto its own
//! source is a no-op. Every call validates everything first (SPEC §4 rule
//! 8), then counts and reserves every frame it can need; after that nothing
//! can fail.
//!
//! Locking: the maps first (two in id order, by
//! [`MapPair`](machvm_map::MapPair)), then the
//! object graph. A [`VmMapCopy`] holds no lock; dropping one takes the
//! graph's lock to give its references back.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod calls;
mod rounds;
mod source;
mod steps;

use alloc::sync::Arc;
use alloc::vec::Vec;

use machvm_base::sync::{Locks, SpinLocks};
use machvm_base::{
    KernError, PAGE_SHIFT, PAGE_SIZE, PhysAddr, VaRange, VirtAddr, page_chunks, round_page,
    trunc_page,
};
use machvm_frame::PhysMem;
use machvm_map::{CowSpan, VmMap, reserve};
use machvm_object::{Objects, VmContext};

pub use calls::{vm_copy, vm_map_copy, vm_read, vm_write};
use source::Source;

/// What a page nothing was ever written to reads as.
static ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// Copies of at most this many bytes are taken physically, as bytes, rather
/// than copy-on-write (XNU's `msg_ool_size_small` plays the same part).
///
/// Measured by `cargo xtask bench` (the small-copy figures, 2-core EPYC
/// VM): for the transfer alone (`vm_read` + `copyout`) copy-on-write is
/// cheaper even at one page. Over the whole cycle — the receiver reads
/// every page and the sender writes every page while the copy lives —
/// bytes win below 2 to 8 pages. One page keeps the cheap transfer for
/// everything larger, since most copies are not fully rewritten on both
/// sides; re-measure when the byte path changes.
pub const SMALL_COPY_BYTES: u64 = PAGE_SIZE;

/// A snapshot of a range of memory (Mach 3's `vm_map_copy_t`): made by
/// [`vm_read`], consumed by [`vm_write`] or [`VmMapCopy::copyout`]. Dropping
/// it releases what it holds.
pub struct VmMapCopy<L: Locks = SpinLocks> {
    ctx: Arc<VmContext<L>>,
    /// Page offset of the first byte (where copy-out places it).
    offset: u64,
    len: u64,
    head: Vec<u8>,
    spans: Vec<CowSpan>,
    tail: Vec<u8>,
}

/// How a copy of `[addr, addr + len)` splits: bytes `[addr, head_end)`,
/// whole pages `[head_end, mid_end)` copy-on-write, bytes `[mid_end, end)`.
#[derive(Clone, Copy)]
struct Layout {
    head_end: u64,
    mid_end: u64,
    end: u64,
}

impl Layout {
    fn of(addr: u64, len: u64) -> Layout {
        let end = addr + len;
        if len <= SMALL_COPY_BYTES {
            return Layout {
                head_end: end,
                mid_end: end,
                end,
            };
        }
        let head_end = round_page(addr).unwrap_or(end).min(end);
        let mid_end = trunc_page(end).max(head_end);
        Layout {
            head_end,
            mid_end,
            end,
        }
    }

    /// The whole pages, copied copy-on-write; `None` for a copy taken
    /// as bytes alone.
    fn middle(&self) -> Option<VaRange> {
        if self.head_end < self.mid_end {
            VaRange::new(VirtAddr::new(self.head_end), VirtAddr::new(self.mid_end))
        } else {
            None
        }
    }
}

impl<L: Locks> VmMapCopy<L> {
    /// Number of bytes in the copy.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a copy of nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Page offset of the first byte; copy-out preserves it.
    pub fn page_offset(&self) -> u64 {
        self.offset
    }

    fn middle_bytes(&self) -> u64 {
        self.spans.iter().map(|e| e.pages()).sum::<u64>() << PAGE_SHIFT
    }

    fn empty(ctx: &Arc<VmContext<L>>) -> VmMapCopy<L> {
        VmMapCopy {
            ctx: ctx.clone(),
            offset: 0,
            len: 0,
            head: Vec::new(),
            spans: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// Gives back every reference, through the caller's locked graph.
    fn release_into(&mut self, objs: &mut Objects<'_, L>) {
        for h in self.spans.drain(..).filter_map(CowSpan::into_hold) {
            objs.release(h);
        }
    }

    /// Copies `len` bytes of the snapshot starting at byte `pos` to
    /// physical memory at `dst` (a destination frame): the head and tail
    /// from their buffers, the whole pages frame to frame, their frames
    /// found through `source` (one per store).
    fn copy_to(
        &self,
        objs: &Objects<'_, L>,
        source: &mut Source,
        (mut pos, mut dst): (u64, PhysAddr),
        len: usize,
    ) {
        let mem = self.ctx.frames().mem();
        let (head, mid) = (self.head.len() as u64, self.middle_bytes());
        let mut left = len;
        while left > 0 {
            let n = if pos < head {
                copy_bytes(mem, &self.head[pos as usize..], dst, left)
            } else if pos < head + mid {
                self.copy_middle(objs, source, pos - head, dst, left)
            } else {
                copy_bytes(mem, &self.tail[(pos - head - mid) as usize..], dst, left)
            };
            debug_assert!(n > 0, "read past the end of a copy");
            if n == 0 {
                break;
            }
            left -= n;
            pos += n as u64;
            dst = dst + n as u64;
        }
    }

    /// Copies from the whole pages, at byte `rel` of them, up to `len`
    /// bytes but not past the end of that page, to `dst`; returns the
    /// bytes copied.
    fn copy_middle(
        &self,
        objs: &Objects<'_, L>,
        source: &mut Source,
        mut rel: u64,
        dst: PhysAddr,
        len: usize,
    ) -> usize {
        for (i, e) in self.spans.iter().enumerate() {
            let bytes = e.pages() << PAGE_SHIFT;
            if rel >= bytes {
                rel -= bytes;
                continue;
            }
            let Some(c) = page_chunks(rel, len).next() else {
                return 0;
            };
            let mem = self.ctx.frames().mem();
            match source.page(objs, &self.spans, i, c.page.page_number()) {
                Some(page) => objs.copy_bytes(page, c.offset, dst, c.len),
                None => mem.write(dst, &ZEROS[..c.len]),
            }
            return c.len;
        }
        0
    }

    /// `vm_map_copyout`: allocates room anywhere in `map`, places the copy
    /// there (at the same page offset it was taken from) and returns the
    /// address of its first byte. On failure the copy is handed back.
    pub fn copyout(mut self, map: &VmMap<L>) -> Result<u64, (KernError, VmMapCopy<L>)> {
        if self.len == 0 {
            return Ok(0);
        }
        if !Arc::ptr_eq(&self.ctx, map.context()) {
            return Err((KernError::InvalidArgument, self));
        }
        let Some(size) = round_page(self.offset + self.len) else {
            return Err((KernError::NoSpace, self));
        };
        let mut m = map.lock();
        let Some(r) = m.find_space(size).and_then(|s| VaRange::round_out(s, size)) else {
            drop(m);
            return Err((KernError::NoSpace, self));
        };
        let dst = r.start().as_u64() + self.offset;
        // The fresh range is untouched: each page stored as bytes takes one.
        let n: u64 = steps::byte_pieces(dst, &self, true)
            .iter()
            .map(|&(d, _, k)| VaRange::round_out(d, k).map_or(0, |r| r.pages()))
            .sum();
        let (mut objs, mut frames) = match reserve(map.context().objects(), |_| n) {
            Ok(x) => x,
            Err(e) => {
                drop(m);
                return Err((e, self));
            }
        };
        if let Err(e) = m.insert_zero_fill(r) {
            // Unreachable: `find_space` found the range free.
            drop((frames, objs, m));
            return Err((e, self));
        }
        match steps::overwrite(&mut m, &mut objs, dst, &mut self, &mut frames) {
            Ok(()) => {
                self.release_into(&mut objs);
                m.assert_consistent(&objs);
                Ok(dst)
            }
            Err(e) => {
                // Unreachable with the frames reserved.
                m.remove(&mut objs, r);
                drop((frames, objs, m));
                Err((e, self))
            }
        }
    }
}

/// Writes as much of `src` as `len` allows to physical memory at `dst`;
/// returns the count.
fn copy_bytes(mem: &PhysMem, src: &[u8], dst: PhysAddr, len: usize) -> usize {
    let n = src.len().min(len);
    mem.write(dst, &src[..n]);
    n
}

impl<L: Locks> core::fmt::Debug for VmMapCopy<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmMapCopy")
            .field("len", &self.len)
            .field("offset", &self.offset)
            .field("head", &self.head.len())
            .field("pages", &(self.middle_bytes() >> PAGE_SHIFT))
            .field("tail", &self.tail.len())
            .finish()
    }
}

impl<L: Locks> Drop for VmMapCopy<L> {
    fn drop(&mut self) {
        if self.spans.iter().any(|e| e.hold().is_some()) {
            let ctx = self.ctx.clone();
            self.release_into(&mut ctx.objects());
        }
    }
}

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
