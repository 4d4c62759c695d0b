//! The copy family: copy objects, `vm_read`, `vm_write`, `vm_copy` and
//! `vm_map_copy` (SPEC §4).
//!
//! Everything is built from three steps, as in Mach 3:
//! - *copy-in* snapshots a source range into a [`VmMapCopy`]: the partial
//!   pages at its edges as bytes, the whole pages between them as entries
//!   that reference the source objects copy-on-write (the source entries get
//!   needs-copy and lose write permission in the pmap only);
//! - *overwrite* replaces an allocated, writable destination range with a
//!   copy: whole pages at equal page offset become copy-on-write entries that
//!   keep the destination's protection, maximum and inheritance; the rest is
//!   written as bytes;
//! - *copy-out* allocates a fresh range anywhere and overwrites it.
//!
//! Because copy-in completes before anything is written, an overlapping copy
//! within one map behaves like `memmove`, and a copy back onto its own source
//! is a no-op. Every call validates everything first (SPEC §4 rule 8), and the
//! only failure possible after that, running out of frames, is rolled back.

use alloc::sync::Arc;
use alloc::vec::Vec;

use machvm_base::{KernError, PAGE_SHIFT, PAGE_SIZE, PhysAddr, VaRange, round_page, trunc_page};
use machvm_object::{VmContext, VmObject};
use machvm_pmap::{Access, TlbFlush};

use crate::fault::cow_reference;
use crate::ops::{Undo, check_access, data_range, for_each_chunk, release_entries};
use crate::{Entry, MapInner, VmMap, page_range};

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

/// A copy-on-write reference to `pages` pages of an object (or, with no
/// object, to untouched zero-fill memory).
struct CopyEntry {
    object: Option<Arc<VmObject>>,
    offset: u64,
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

    /// Reads `buf.len()` bytes of the snapshot starting at byte `pos`.
    fn read_at(&self, mut pos: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        while done < buf.len() {
            let out = &mut buf[done..];
            let n = if pos < self.head.len() as u64 {
                let src = &self.head[pos as usize..];
                let n = src.len().min(out.len());
                out[..n].copy_from_slice(&src[..n]);
                n
            } else if pos < self.head.len() as u64 + self.middle_bytes() {
                let mut rel = pos - self.head.len() as u64;
                let mut n = 0;
                for e in &self.entries {
                    let bytes = e.pages << PAGE_SHIFT;
                    if rel >= bytes {
                        rel -= bytes;
                        continue;
                    }
                    let in_page = rel % PAGE_SIZE;
                    n = ((PAGE_SIZE - in_page) as usize).min(out.len());
                    match &e.object {
                        Some(o) => o.read_page_bytes(
                            e.offset + (rel >> PAGE_SHIFT),
                            in_page,
                            &mut out[..n],
                        ),
                        None => out[..n].fill(0),
                    }
                    break;
                }
                n
            } else {
                let rel = (pos - self.head.len() as u64 - self.middle_bytes()) as usize;
                let src = &self.tail[rel..];
                let n = src.len().min(out.len());
                out[..n].copy_from_slice(&src[..n]);
                n
            };
            debug_assert!(n > 0, "read past the end of a copy");
            if n == 0 {
                break;
            }
            done += n;
            pos += n as u64;
        }
    }

    /// `vm_map_copyout`: allocates room anywhere in `map`, places the copy
    /// there (at the same page offset it was taken from) and returns the
    /// address of its first byte. On failure the copy is handed back.
    pub fn copyout(self, map: &VmMap) -> Result<u64, (KernError, VmMapCopy)> {
        if self.len == 0 {
            return Ok(0);
        }
        if !Arc::ptr_eq(&self.ctx, map.context()) {
            return Err((KernError::InvalidArgument, self));
        }
        let size = match round_page(self.offset + self.len) {
            Some(s) => s,
            None => return Err((KernError::NoSpace, self)),
        };
        let mut m = map.0.inner.lock();
        let Some(start) = m.find_space(0, size) else {
            return Err((KernError::NoSpace, self));
        };
        m.insert(start, Entry::new_anon(start + size));
        let mut released = Vec::new();
        match map.overwrite(&mut m, start + self.offset, &self, &mut released) {
            Ok(()) => {
                drop(m);
                finish(released, Vec::new());
                Ok(start + self.offset)
            }
            Err(e) => {
                let removed = map.remove_locked(&mut m, page_range(start, start + size));
                drop(m);
                finish(released, removed);
                Err((e, self))
            }
        }
    }
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
        for e in self.entries.drain(..) {
            if let Some(o) = e.object {
                machvm_object::release(o);
            }
        }
    }
}

/// Releases replaced objects and removed entries, after the map locks are
/// dropped.
fn finish(objects: Vec<Arc<VmObject>>, removed: Vec<(u64, Entry)>) {
    for o in objects {
        machvm_object::release(o);
    }
    release_entries(removed);
}

impl VmMap {
    /// Copy-in of `[addr, addr + len)` (already checked readable).
    fn copyin(&self, m: &mut MapInner, addr: u64, len: u64) -> Result<VmMapCopy, KernError> {
        let ctx = self.context();
        let mut copy = VmMapCopy::empty(ctx);
        copy.offset = addr & (PAGE_SIZE - 1);
        copy.len = len;
        let end = addr + len;
        let (head_end, mid_end) = if len <= SMALL_COPY_BYTES {
            (end, end)
        } else {
            (
                round_page(addr).unwrap_or(end).min(end),
                trunc_page(end).max(addr),
            )
        };
        let mid_end = mid_end.max(head_end);
        copy.head = self.snapshot_bytes(m, addr, head_end - addr);
        copy.tail = self.snapshot_bytes(m, mid_end, end - mid_end);
        if head_end == mid_end {
            return Ok(copy);
        }
        // Whole pages: reference the source objects copy-on-write.
        let pm = ctx.pmap();
        let mut flush = TlbFlush::none();
        let mut result = Ok(());
        let starts: Vec<u64> = m.overlapping(head_end, mid_end).map(|(s, _)| *s).collect();
        for start in starts {
            let Some(e) = m.entries.get_mut(&start) else {
                continue;
            };
            let s = start.max(head_end);
            let t = e.end.min(mid_end);
            let pages = (t - s) >> PAGE_SHIFT;
            let offset = e.offset + ((s - start) >> PAGE_SHIFT);
            let entry = match cow_reference(self, e, start, offset, pages, &mut flush) {
                Ok(r) => {
                    let (object, offset) = r.map_or((None, 0), |(o, off, _)| (Some(o), off));
                    CopyEntry {
                        object,
                        offset,
                        pages,
                    }
                }
                Err(err) => {
                    result = Err(err);
                    break;
                }
            };
            copy.entries.push(entry);
        }
        pm.flush(flush);
        result.map(|()| copy)
    }

    /// The bytes of `[addr, addr + len)` as the source's objects hold them,
    /// without faulting anything in (untouched memory reads as zero).
    fn snapshot_bytes(&self, m: &mut MapInner, addr: u64, len: u64) -> Vec<u8> {
        let mut out = alloc::vec![0u8; len as usize];
        let mut done = 0u64;
        while done < len {
            let va = addr + done;
            let in_page = va & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - in_page).min(len - done);
            let buf = &mut out[done as usize..(done + n) as usize];
            if let Some(start) = m.lookup(va) {
                if let Some(e) = m.entries.get(&start) {
                    if let Some(o) = &e.object {
                        o.read_page_bytes(
                            e.offset + ((trunc_page(va) - start) >> PAGE_SHIFT),
                            in_page,
                            buf,
                        );
                    }
                }
            }
            done += n;
        }
        out
    }

    /// Overwrites `[dst, dst + copy.len)` (allocated and writable, checked)
    /// with `copy`. Objects it unmaps are pushed to `released`. On error
    /// nothing has changed.
    fn overwrite(
        &self,
        m: &mut MapInner,
        dst: u64,
        copy: &VmMapCopy,
        released: &mut Vec<Arc<VmObject>>,
    ) -> Result<(), KernError> {
        let head = copy.head.len() as u64;
        let mid = copy.middle_bytes();
        // Pages another map shares with the destination are written, not
        // replaced, so that the sharers see the copy too (XNU does the same
        // for `true_share` objects).
        let cow = mid > 0
            && (dst + head) % PAGE_SIZE == 0
            && !m
                .overlapping(dst + head, dst + head + mid)
                .any(|(_, e)| !e.needs_copy && e.object.as_ref().is_some_and(|o| o.is_shared()));
        // Byte ranges, as (destination address, position in the copy, length).
        let mut pieces: Vec<(u64, u64, u64)> = Vec::new();
        if cow {
            pieces.push((dst, 0, head));
            pieces.push((dst + head + mid, head + mid, copy.len - head - mid));
        } else {
            pieces.push((dst, 0, copy.len));
        }
        pieces.retain(|p| p.2 > 0);
        // Fault in every destination page the bytes go to; may run out.
        let mut undo = Undo::default();
        let mut pas: Vec<Vec<PhysAddr>> = Vec::new();
        for &(d, _, n) in &pieces {
            let mut v = Vec::new();
            let r = VaRange::round_out(d, n).unwrap_or_default();
            if let Err(e) = self.fault_in(m, r, Access::Write, &mut undo, Some(&mut v)) {
                undo.roll_back();
                return Err(e);
            }
            pas.push(v);
        }
        // Nothing can fail from here on.
        if cow {
            self.replace_pages(m, dst + head, copy, released);
        }
        let mem = self.context().frames().mem();
        let mut chunk = [0u8; PAGE_SIZE as usize];
        for (&(d, pos, n), frames) in pieces.iter().zip(&pas) {
            let mut copied = 0usize;
            for_each_chunk(d, n as usize, frames, |pa, at, k| {
                let buf = &mut chunk[..k];
                copy.read_at(pos + at as u64, buf);
                mem.write(pa, buf);
                copied += k;
            });
            debug_assert_eq!(copied as u64, n);
        }
        Ok(())
    }

    /// Makes the whole pages of `copy` the destination's pages from `at` on,
    /// copy-on-write, keeping each destination entry's protection, maximum
    /// and inheritance.
    fn replace_pages(
        &self,
        m: &mut MapInner,
        at: u64,
        copy: &VmMapCopy,
        released: &mut Vec<Arc<VmObject>>,
    ) {
        let end = at + copy.middle_bytes();
        let pm = self.context().pmap();
        pm.flush(pm.remove(self.pmap(), page_range(at, end)));
        let mut cs = at;
        let mut bounds = Vec::with_capacity(copy.entries.len());
        for ce in &copy.entries {
            bounds.push(cs);
            cs += ce.pages << PAGE_SHIFT;
        }
        m.clip(at);
        m.clip(end);
        for &b in &bounds {
            m.clip(b);
        }
        let mut k = 0;
        for (&start, e) in m.entries.range_mut(at..end) {
            while k + 1 < bounds.len() && bounds[k + 1] <= start {
                k += 1;
            }
            let ce = &copy.entries[k];
            let rel = (start - bounds[k]) >> PAGE_SHIFT;
            if let Some(old) = e.object.take() {
                if old.is_one_mapping() {
                    old.discard_range(e.offset, e.offset + ((e.end - start) >> PAGE_SHIFT));
                }
                released.push(old);
            }
            e.object = ce.object.clone();
            e.offset = if ce.object.is_some() {
                ce.offset + rel
            } else {
                0
            };
            e.needs_copy = ce.object.is_some();
        }
    }
}

/// Checks a destination range for overwrite: allocated and writable.
fn check_dst(m: &MapInner, r: VaRange) -> Result<(), KernError> {
    check_access(m, r, Access::Write)
}

/// With `dst_alloc`: the allocated parts must be writable; returns the holes
/// to allocate.
fn dst_holes(m: &MapInner, r: VaRange) -> Result<Vec<(u64, u64)>, KernError> {
    let (s, e) = (r.start().0, r.end().0);
    let mut holes = Vec::new();
    let mut at = s;
    for (&start, en) in m.overlapping(s, e) {
        if !en.protection.contains(machvm_base::VmProt::WRITE) {
            return Err(KernError::ProtectionFailure);
        }
        if start > at {
            holes.push((at, start));
        }
        at = en.end;
    }
    if at < e {
        holes.push((at, e));
    }
    Ok(holes)
}

/// `vm_map_copy(dst_map, src_map, dst_addr, len, src_addr, dst_alloc,
/// src_destroy)`: copies `len` bytes at `src_addr` in `src_map` to
/// `dst_addr` in `dst_map`, virtually.
///
/// # Contract (the seed man page, as SPEC §4 fixes it)
/// - **Result**: the destination bytes equal the source bytes as they were
///   when the call began, an atomic snapshot; later writes on either side
///   are never seen by the other (unless that memory was already shared).
///   The maps may be the same map; overlapping ranges then behave as
///   `memmove`.
/// - **Alignment**: any addresses and length. Whole pages at equal page
///   offset are copied copy-on-write, the partial pages at the edges (and
///   everything when the offsets differ) by bytes. *Differs from the seed*,
///   whose BUGS section required page alignment (`KERN_INVALID_ARGUMENT`).
/// - **`dst_alloc`**: unallocated destination pages (rounded out) are
///   allocated first, as by `allocate`; allocated parts must be writable;
///   bytes of new pages outside the copied range read as zero. *Differs from
///   4.4BSD*, which refused with `KERN_NO_SPACE` if anything was mapped
///   there; "if none exists" is read per page.
/// - **`src_destroy`**: after a successful copy the source pages (rounded
///   out) are deallocated. *Differs from 4.4BSD*, which destroyed the source
///   even when the copy failed.
///
/// # Errors, in the order they are checked
/// - `InvalidAddress`: a range overflows, rounds past `u64::MAX`, or leaves
///   the task map.
/// - `InvalidArgument`: the same map, `dst_alloc` or `src_destroy`, and the
///   pages the two ranges touch overlap (4.4BSD's rule); or maps of two
///   different `VmSystem`s (no memory in common to share).
/// - `InvalidAddress` / `ProtectionFailure`: the source has a hole / is not
///   readable. *As the man page says*; 4.4BSD's code returned
///   `KERN_PROTECTION_FAILURE` for holes.
/// - `InvalidAddress` / `ProtectionFailure`: the destination has a hole
///   (without `dst_alloc`) / is not writable.
/// - `ResourceShortage`: out of frames; both maps are exactly as before.
///
/// A copy of length 0 succeeds and changes nothing.
///
/// # Example
/// ```
/// # let ctx = machvm_map::hosted_context(1 << 20);
/// use machvm_map::{VmMap, vm_map_copy};
/// let (src, dst) = (VmMap::new(&ctx).unwrap(), VmMap::new(&ctx).unwrap());
/// let a = src.allocate(0, 4 * 4096, true).unwrap();
/// src.write_bytes(a, b"copy me").unwrap();
/// vm_map_copy(&dst, &src, 0x10_0000, 4 * 4096, a, true, false).unwrap();
/// src.write_bytes(a, b"changed").unwrap();
/// let mut buf = [0u8; 7];
/// dst.read_bytes(0x10_0000, &mut buf).unwrap();
/// assert_eq!(&buf, b"copy me");
/// ```
pub fn vm_map_copy(
    dst_map: &VmMap,
    src_map: &VmMap,
    dst_addr: u64,
    len: u64,
    src_addr: u64,
    dst_alloc: bool,
    src_destroy: bool,
) -> Result<(), KernError> {
    let Some(sr) = data_range(src_addr, len)? else {
        return Ok(());
    };
    let Some(dr) = data_range(dst_addr, len)? else {
        return Ok(());
    };
    let same = dst_map.same_map(src_map);
    if same && (dst_alloc || src_destroy) && sr.overlaps(&dr) {
        return Err(KernError::InvalidArgument);
    }
    if !Arc::ptr_eq(dst_map.context(), src_map.context()) {
        return Err(KernError::InvalidArgument);
    }
    let mut released = Vec::new();
    let mut removed = Vec::new();
    let result = if same {
        let mut m = src_map.0.inner.lock();
        copy_locked(
            dst_map,
            src_map,
            None,
            &mut m,
            dst_addr,
            len,
            src_addr,
            dst_alloc,
            src_destroy,
            &mut released,
            &mut removed,
        )
    } else {
        // A fixed global order: by map id.
        let (first, second) = if src_map.id() < dst_map.id() {
            (src_map, dst_map)
        } else {
            (dst_map, src_map)
        };
        let mut g1 = first.0.inner.lock();
        let mut g2 = second.0.inner.lock();
        let (sm, dm) = if src_map.id() < dst_map.id() {
            (&mut *g1, &mut *g2)
        } else {
            (&mut *g2, &mut *g1)
        };
        copy_locked(
            dst_map,
            src_map,
            Some(dm),
            sm,
            dst_addr,
            len,
            src_addr,
            dst_alloc,
            src_destroy,
            &mut released,
            &mut removed,
        )
    };
    finish(released, removed);
    result
}

/// The body of [`vm_map_copy`] with the maps locked; `dm` is `None` when
/// the destination is the source map itself.
#[allow(clippy::too_many_arguments)]
fn copy_locked(
    dst_map: &VmMap,
    src_map: &VmMap,
    mut dm: Option<&mut MapInner>,
    sm: &mut MapInner,
    dst_addr: u64,
    len: u64,
    src_addr: u64,
    dst_alloc: bool,
    src_destroy: bool,
    released: &mut Vec<Arc<VmObject>>,
    removed: &mut Vec<(u64, Entry)>,
) -> Result<(), KernError> {
    let sr = VaRange::round_out(src_addr, len).unwrap_or_default();
    let dr = VaRange::round_out(dst_addr, len).unwrap_or_default();
    // Source, then destination: nothing changes until both pass.
    check_access(sm, sr, Access::Read)?;
    let holes = {
        let d: &MapInner = match &dm {
            Some(d) => d,
            None => sm,
        };
        if dst_alloc {
            dst_holes(d, dr)?
        } else {
            check_dst(d, dr)?;
            Vec::new()
        }
    };
    let copy = src_map.copyin(sm, src_addr, len)?;
    let d: &mut MapInner = match &mut dm {
        Some(d) => d,
        None => sm,
    };
    for &(s, e) in &holes {
        d.insert(s, Entry::new_anon(e));
    }
    if let Err(e) = dst_map.overwrite(d, dst_addr, &copy, released) {
        for &(s, t) in &holes {
            removed.extend(dst_map.remove_locked(d, page_range(s, t)));
        }
        return Err(e);
    }
    drop(copy);
    if src_destroy {
        removed.extend(src_map.remove_locked(sm, sr));
    }
    Ok(())
}

/// `vm_read`: a copy-on-write snapshot of `[addr, addr + size)` (no page is
/// copied for aligned ranges). The range must be allocated
/// (`InvalidAddress`) and readable (`ProtectionFailure`).
pub fn vm_read(map: &VmMap, addr: u64, size: u64) -> Result<VmMapCopy, KernError> {
    let Some(r) = data_range(addr, size)? else {
        return Ok(VmMapCopy::empty(map.context()));
    };
    let mut m = map.0.inner.lock();
    check_access(&m, r, Access::Read)?;
    map.copyin(&mut m, addr, size)
}

/// `vm_write`: overwrites the allocated, writable range at `addr` with
/// `data`, consuming it (SPEC §4 rule 5).
pub fn vm_write(map: &VmMap, addr: u64, data: VmMapCopy) -> Result<(), KernError> {
    let Some(r) = data_range(addr, data.len)? else {
        return Ok(());
    };
    if !Arc::ptr_eq(&data.ctx, map.context()) {
        return Err(KernError::InvalidArgument);
    }
    let mut released = Vec::new();
    let result = {
        let mut m = map.0.inner.lock();
        check_dst(&m, r).and_then(|()| map.overwrite(&mut m, addr, &data, &mut released))
    };
    drop(data);
    finish(released, Vec::new());
    result
}

/// `vm_copy`: `vm_map_copy(map, map, dst, size, src, false, false)`.
pub fn vm_copy(map: &VmMap, src: u64, size: u64, dst: u64) -> Result<(), KernError> {
    vm_map_copy(map, map, dst, size, src, false, false)
}
