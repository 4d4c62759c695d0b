//! The copy family: copy objects, `vm_read`, `vm_write`, `vm_copy` and
//! `vm_map_copy` (SPEC §4).
//!
//! Everything is built from three steps, as in Mach 3:
//! - *copy-in* snapshots a source range into a [`VmMapCopy`]: the partial
//!   pages at its edges as bytes, the whole pages between them as holds on
//!   the source objects' windows, copy-on-write. The source entries are
//!   clipped to those pages first, so exactly the pages copied become
//!   copy-on-write (and lose `WRITE` in the pmap only);
//! - *overwrite* replaces an allocated, writable destination range with a
//!   copy: whole pages at equal page offset become copy-on-write holds that
//!   keep the destination's protection, maximum and inheritance; the rest is
//!   written as bytes;
//! - *copy-out* allocates a fresh range anywhere and overwrites it.
//!
//! Because copy-in completes before anything is written, an overlapping copy
//! within one map behaves like `memmove`, and a copy back onto its own source
//! is a no-op. Every call validates everything first (SPEC §4 rule 8), then
//! counts and reserves every frame it can need; after that nothing can fail.

use alloc::sync::Arc;
use alloc::vec::Vec;
use arrayvec::ArrayVec;

use machvm_base::{KernError, PAGE_SHIFT, PAGE_SIZE, VaRange, VmProt, round_page, trunc_page};
use machvm_frame::FrameReservation;
use machvm_object::{Hold, Holder, Objects, VmContext};
use machvm_pmap::{Access, TlbFlush};

use crate::data::{for_each_page_piece, frames_in, reserve, reserve_settled};
use crate::ops::{check_access, data_range};
use crate::{Entry, MapInner, VmMap, page_range};

mod calls;
mod transfer;

pub use calls::{vm_copy, vm_map_copy, vm_read, vm_write};
use transfer::*;

/// Copies of at most this many bytes are taken physically, as bytes, rather
/// than copy-on-write (XNU's `msg_ool_size_small` plays the same part).
///
/// Measured by `cargo xtask bench` (benchmark 6, 2-core EPYC VM): for the
/// transfer alone (`vm_read` + `copyout`) copy-on-write is cheaper even at
/// one page (about 1.2 µs at any size against 3 µs for one page of bytes).
/// Over the whole cycle — the receiver reads every page and the sender
/// writes every page while the copy lives — bytes win below 2 pages (first
/// run) to 8 pages (after the byte path got faster). One page keeps the
/// cheap transfer for everything larger, since most copies are not fully
/// rewritten on both sides; re-measure when the byte path changes.
pub const SMALL_COPY_BYTES: u64 = PAGE_SIZE;

/// A copy-on-write hold on `pages` pages of an object (or, with no hold, a
/// range of untouched zero-fill memory).
struct CopyEntry {
    hold: Option<Hold>,
    pages: u64,
}

/// A snapshot of a range of memory (Mach 3's `vm_map_copy_t`): made by
/// [`vm_read`], consumed by [`vm_write`] or [`VmMapCopy::copyout`]. Dropping
/// it releases what it holds.
pub struct VmMapCopy {
    ctx: Arc<VmContext>,
    /// Page offset of the first byte (where copy-out places it).
    offset: u64,
    len: u64,
    head: Vec<u8>,
    entries: Vec<CopyEntry>,
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

    fn has_middle(&self) -> bool {
        self.head_end < self.mid_end
    }
}

impl VmMapCopy {
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
        self.entries.iter().map(|e| e.pages).sum::<u64>() << PAGE_SHIFT
    }

    fn empty(ctx: &Arc<VmContext>) -> VmMapCopy {
        VmMapCopy {
            ctx: ctx.clone(),
            offset: 0,
            len: 0,
            head: Vec::new(),
            entries: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// Gives back every hold, through the caller's locked graph.
    fn release_into(&mut self, objs: &mut Objects<'_>) {
        for e in self.entries.drain(..) {
            if let Some(h) = e.hold {
                objs.release(h);
            }
        }
    }

    /// Reads `buf.len()` bytes of the snapshot starting at byte `pos`.
    fn read_at(&self, objs: &Objects<'_>, mut pos: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        let head = self.head.len() as u64;
        let mid = self.middle_bytes();
        while done < buf.len() {
            let out = &mut buf[done..];
            let n = if pos < head {
                copy_from(&self.head[pos as usize..], out)
            } else if pos < head + mid {
                self.read_middle(objs, pos - head, out)
            } else {
                copy_from(&self.tail[(pos - head - mid) as usize..], out)
            };
            debug_assert!(n > 0, "read past the end of a copy");
            if n == 0 {
                break;
            }
            done += n;
            pos += n as u64;
        }
    }

    /// Reads from the whole pages, at byte `rel` of them, up to the end of
    /// that page; returns the bytes read.
    fn read_middle(&self, objs: &Objects<'_>, mut rel: u64, out: &mut [u8]) -> usize {
        for e in &self.entries {
            let bytes = e.pages << PAGE_SHIFT;
            if rel >= bytes {
                rel -= bytes;
                continue;
            }
            let in_page = rel % PAGE_SIZE;
            let n = ((PAGE_SIZE - in_page) as usize).min(out.len());
            objs.read(e.hold.as_ref(), rel >> PAGE_SHIFT, in_page, &mut out[..n]);
            return n;
        }
        0
    }

    /// `vm_map_copyout`: allocates room anywhere in `map`, places the copy
    /// there (at the same page offset it was taken from) and returns the
    /// address of its first byte. On failure the copy is handed back.
    pub fn copyout(mut self, map: &VmMap) -> Result<u64, (KernError, VmMapCopy)> {
        if self.len == 0 {
            return Ok(0);
        }
        if !Arc::ptr_eq(&self.ctx, map.context()) {
            return Err((KernError::InvalidArgument, self));
        }
        let Some(size) = round_page(self.offset + self.len) else {
            return Err((KernError::NoSpace, self));
        };
        let mut m = map.0.inner.lock();
        let Some(start) = m.find_space(0, size) else {
            drop(m);
            return Err((KernError::NoSpace, self));
        };
        let dst = start + self.offset;
        // The fresh range is untouched: each page written as bytes takes one.
        let n: u64 = byte_pieces(dst, &self, true)
            .iter()
            .map(|&(d, _, k)| VaRange::round_out(d, k).map_or(0, |r| r.len() >> PAGE_SHIFT))
            .sum();
        let (mut objs, mut frames) = match reserve(map.0.ctx.objects(), |_| n) {
            Ok(x) => x,
            Err(e) => {
                drop(m);
                return Err((e, self));
            }
        };
        m.insert(start, Entry::new_anon(start + size));
        match map.overwrite(&mut m, &mut objs, dst, &mut self, &mut frames) {
            Ok(()) => {
                self.release_into(&mut objs);
                Ok(dst)
            }
            Err(e) => {
                map.remove_locked(&mut m, &mut objs, page_range(start, start + size));
                drop(frames);
                drop(objs);
                drop(m);
                Err((e, self))
            }
        }
    }
}

/// Copies as much of `src` as fits into `out`; returns the count.
fn copy_from(src: &[u8], out: &mut [u8]) -> usize {
    let n = src.len().min(out.len());
    out[..n].copy_from_slice(&src[..n]);
    n
}

impl core::fmt::Debug for VmMapCopy {
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

impl Drop for VmMapCopy {
    fn drop(&mut self) {
        if self.entries.iter().any(|e| e.hold.is_some()) {
            let ctx = self.ctx.clone();
            self.release_into(&mut ctx.objects());
        }
    }
}
