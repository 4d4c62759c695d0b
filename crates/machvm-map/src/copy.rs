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

/// The byte ranges of placing `copy` at `dst`, as (destination address,
/// position in the copy, length): its head and tail when the whole pages go
/// copy-on-write (`cow`), else all of it.
fn byte_pieces(dst: u64, copy: &VmMapCopy, cow: bool) -> ArrayVec<(u64, u64, u64), 2> {
    let (head, mid) = (copy.head.len() as u64, copy.middle_bytes());
    let mut pieces = ArrayVec::new();
    if cow {
        pieces.push((dst, 0, head));
        pieces.push((dst + head + mid, head + mid, copy.len - head - mid));
    } else {
        pieces.push((dst, 0, copy.len));
    }
    pieces.retain(|p| p.2 > 0);
    pieces
}

/// True when `copy`'s whole pages can go to `dst` copy-on-write: they land
/// on page boundaries, and no destination page there is shared with
/// another map (sharers must see the copy, so those pages are written).
fn cow_fits(m: &MapInner, objs: &Objects<'_>, dst: u64, head: u64, mid: u64) -> bool {
    let at = dst + head;
    mid > 0
        && at % PAGE_SIZE == 0
        && !m
            .overlapping(at, at + mid)
            .any(|(_, e)| e.object.as_ref().is_some_and(|h| objs.is_shared(h)))
}

impl VmMap {
    /// Copy-in of `[addr, addr + len)` (already checked readable), frames
    /// for eager copies from `frames`. The source's lowered translations
    /// are flushed before this returns, with the map still locked.
    fn copyin(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_>,
        addr: u64,
        len: u64,
        frames: &mut FrameReservation<'_>,
    ) -> Result<VmMapCopy, KernError> {
        let l = Layout::of(addr, len);
        let head = snapshot_bytes(m, objs, addr, l.head_end - addr);
        let tail = snapshot_bytes(m, objs, l.mid_end, l.end - l.mid_end);
        // Built as a plain list and wrapped last: a `VmMapCopy` dropped here
        // (a panic unwinding) would lock the graph this thread holds.
        let mut entries: Vec<CopyEntry> = Vec::new();
        if l.has_middle() {
            self.copyin_pages(m, objs, l, frames, &mut entries)?;
        }
        let mut copy = VmMapCopy::empty(self.context());
        copy.offset = addr & (PAGE_SIZE - 1);
        copy.len = len;
        copy.head = head;
        copy.tail = tail;
        copy.entries = entries;
        Ok(copy)
    }

    /// Copy-in's whole pages `[l.head_end, l.mid_end)`: the source entries
    /// clipped to them and shared copy-on-write into `entries`, the lowered
    /// translations flushed before this returns.
    fn copyin_pages(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_>,
        l: Layout,
        frames: &mut FrameReservation<'_>,
        entries: &mut Vec<CopyEntry>,
    ) -> Result<(), KernError> {
        m.clip_range(objs, l.head_end, l.mid_end);
        let pm = self.context().pmap();
        let mut flush = TlbFlush::none();
        let mut result = Ok(());
        for (&start, e) in m.entries.range(l.head_end..l.mid_end) {
            let pages = e.pages(start);
            let hold = match &e.object {
                None => None,
                Some(h) => match objs.cow_share(h, Holder::Copy, frames) {
                    Ok(c) => {
                        if c.write_protect {
                            let prot = e.protection - VmProt::WRITE;
                            flush.merge(pm.protect(self.pmap(), page_range(start, e.end), prot));
                        }
                        Some(c.hold)
                    }
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                },
            };
            entries.push(CopyEntry { hold, pages });
        }
        pm.flush(flush);
        m.simplify(objs, l.head_end, l.mid_end);
        if result.is_err() {
            for h in entries.drain(..).filter_map(|e| e.hold) {
                objs.release(h);
            }
        }
        result
    }

    /// Overwrites `[dst, dst + copy.len)` (allocated and writable, checked)
    /// with `copy`, new pages from `frames`. The bytes go first (the only
    /// step that could fail, and with the frames reserved it does not),
    /// then the whole pages, which takes them out of `copy`.
    fn overwrite(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_>,
        dst: u64,
        copy: &mut VmMapCopy,
        frames: &mut FrameReservation<'_>,
    ) -> Result<(), KernError> {
        let (head, mid) = (copy.head.len() as u64, copy.middle_bytes());
        let cow = cow_fits(m, objs, dst, head, mid);
        for (d, pos, n) in byte_pieces(dst, copy, cow) {
            // Here, not above the loop: a copy of whole pages alone needs no
            // buffer, and zeroing one costs more than the rest of the call.
            let mut chunk = [0u8; PAGE_SIZE as usize];
            let r = VaRange::round_out(d, n).ok_or(KernError::InvalidAddress)?;
            let missing = self.untranslatable(r, Access::Write);
            self.fault_pages(m, objs, &missing, Access::Write, frames)?;
            for_each_page_piece(m, d, n as usize, |h, page, off, at, k| {
                copy.read_at(objs, pos + at as u64, &mut chunk[..k]);
                h.is_some_and(|h| objs.write(h, page, off, &chunk[..k]))
            })?;
        }
        if cow {
            self.replace_pages(m, objs, dst + head, copy);
        }
        m.simplify(objs, trunc_page(dst), dst + copy.len);
        Ok(())
    }

    /// Makes the whole pages of `copy` the destination's pages from `at` on,
    /// copy-on-write, keeping each destination entry's protection, maximum
    /// and inheritance. The old pages nothing else reaches are freed.
    fn replace_pages(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_>,
        at: u64,
        copy: &mut VmMapCopy,
    ) {
        let end = at + copy.middle_bytes();
        let pm = self.context().pmap();
        pm.flush(pm.remove(self.pmap(), page_range(at, end)));
        let mut bounds = Vec::with_capacity(copy.entries.len());
        let mut cs = at;
        for ce in &copy.entries {
            bounds.push(cs);
            cs += ce.pages << PAGE_SHIFT;
        }
        m.clip_range(objs, at, end);
        for &b in &bounds {
            m.clip(objs, b);
        }
        let mut old = Vec::new();
        let mut k = 0;
        for (&start, e) in m.entries.range_mut(at..end) {
            while k + 1 < bounds.len() && bounds[k + 1] <= start {
                k += 1;
            }
            let rel = (start - bounds[k]) >> PAGE_SHIFT;
            let pages = e.pages(start);
            let new = copy.entries[k]
                .hold
                .as_ref()
                .map(|h| objs.share_part(h, rel, pages, Holder::NeedsCopy { map: self.id() }));
            old.extend(core::mem::replace(&mut e.object, new));
        }
        for h in old {
            objs.release(h);
        }
        copy.release_into(objs);
    }
}

/// The bytes of `[addr, addr + len)` as the source's objects hold them,
/// without faulting anything in (untouched memory reads as zero).
fn snapshot_bytes(m: &MapInner, objs: &Objects<'_>, addr: u64, len: u64) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    let mut out = alloc::vec![0u8; len as usize];
    let _ = for_each_page_piece(m, addr, len as usize, |h, page, off, at, n| {
        objs.read(h, page, off, &mut out[at..at + n]);
        true
    });
    out
}

/// Shortens the chains of the entries copy-in of `[addr, addr + len)`
/// shares (bypass and collapse move pages between objects, so the final
/// count is taken after them and copy-in itself moves nothing; see
/// `reserve_settled`). Returns whether anything moved.
fn copyin_settle(m: &MapInner, objs: &mut Objects<'_>, addr: u64, len: u64) -> bool {
    let l = Layout::of(addr, len);
    let mut moved = false;
    if l.has_middle() {
        for (_, e) in m.overlapping(l.head_end, l.mid_end) {
            if let Some(h) = &e.object {
                moved |= objs.shorten_chain(h);
            }
        }
    }
    moved
}

/// Frames copy-in of `[addr, addr + len)` will take: the eager copies of
/// shared windows among its whole pages.
fn copyin_frames(m: &MapInner, objs: &Objects<'_>, addr: u64, len: u64) -> u64 {
    let l = Layout::of(addr, len);
    if !l.has_middle() {
        return 0;
    }
    m.overlapping(l.head_end, l.mid_end)
        .filter_map(|(&start, e)| {
            let h = e.object.as_ref()?;
            let s = start.max(l.head_end);
            let t = e.end.min(l.mid_end);
            Some(objs.cow_frames(h, (s - start) >> PAGE_SHIFT, (t - s) >> PAGE_SHIFT))
        })
        .sum()
}

/// With `dst_alloc`: the allocated parts must be writable; returns the holes
/// to allocate.
fn dst_holes(m: &MapInner, r: VaRange) -> Result<Vec<(u64, u64)>, KernError> {
    let (s, e) = (r.start().0, r.end().0);
    let mut holes = Vec::new();
    let mut at = s;
    for (&start, en) in m.overlapping(s, e) {
        if !en.protection.contains(VmProt::WRITE) {
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

/// One `vm_map_copy` with its arguments, once they are validated.
struct CopyArgs {
    dst_addr: u64,
    len: u64,
    src_addr: u64,
    dst_alloc: bool,
    src_destroy: bool,
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
/// - **Cost**: only the pages copied become copy-on-write (the source
///   entries are clipped to them), and a page is copied when one side first
///   writes it.
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
    let args = CopyArgs {
        dst_addr,
        len,
        src_addr,
        dst_alloc,
        src_destroy,
    };
    if same {
        let mut m = src_map.0.inner.lock();
        return copy_locked(dst_map, src_map, None, &mut m, &args);
    }
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
    copy_locked(dst_map, src_map, Some(dm), sm, &args)
}

/// The body of [`vm_map_copy`] with the maps locked; `dm` is `None` when
/// the destination is the source map itself.
fn copy_locked(
    dst_map: &VmMap,
    src_map: &VmMap,
    mut dm: Option<&mut MapInner>,
    sm: &mut MapInner,
    a: &CopyArgs,
) -> Result<(), KernError> {
    let sr = VaRange::round_out(a.src_addr, a.len).unwrap_or_default();
    let dr = VaRange::round_out(a.dst_addr, a.len).unwrap_or_default();
    let ctx = src_map.context();
    // Declared before the graph guard, so that on a panic the guard goes
    // first and the copy's drop can take the graph lock.
    let mut slot: Option<VmMapCopy> = None;
    let objs = ctx.objects();
    // Source, then destination, then frames: nothing changes until all pass.
    check_access(sm, sr, Access::Read)?;
    let d: &MapInner = dm.as_deref().unwrap_or(sm);
    let holes = if a.dst_alloc {
        dst_holes(d, dr)?
    } else {
        check_access(d, dr, Access::Write)?;
        Vec::new()
    };
    let same = dm.is_none();
    let (mut objs, mut frames) = reserve_settled(
        objs,
        |o| copyin_settle(sm, o, a.src_addr, a.len),
        |o| {
            let d: &MapInner = dm.as_deref().unwrap_or(sm);
            copyin_frames(sm, o, a.src_addr, a.len) + copy_dest_frames(d, o, a, same)
        },
    )?;
    let copy = slot.insert(src_map.copyin(sm, &mut objs, a.src_addr, a.len, &mut frames)?);
    let d: &mut MapInner = match &mut dm {
        Some(d) => d,
        None => sm,
    };
    for &(s, e) in &holes {
        d.insert(s, Entry::new_anon(e));
    }
    if let Err(e) = dst_map.overwrite(d, &mut objs, a.dst_addr, copy, &mut frames) {
        // Unreachable with the frames reserved.
        for &(s, t) in &holes {
            dst_map.remove_locked(d, &mut objs, page_range(s, t));
        }
        copy.release_into(&mut objs);
        return Err(e);
    }
    copy.release_into(&mut objs);
    if a.src_destroy {
        src_map.remove_locked(sm, &mut objs, sr);
    }
    Ok(())
}

/// An upper bound on the frames the destination's byte pages of a copy
/// take: as `frames_in` says, except that in the same map the pages the
/// copy-in is about to make copy-on-write need a frame each. By ranges, not
/// pages: O(entries and resident pages), whatever the length.
fn copy_dest_frames(d: &MapInner, objs: &Objects<'_>, a: &CopyArgs, same: bool) -> u64 {
    let l = Layout::of(a.src_addr, a.len);
    let head = l.head_end - a.src_addr;
    let mid = l.mid_end - l.head_end;
    let mut pieces: ArrayVec<(u64, u64), 2> = ArrayVec::new();
    if cow_fits(d, objs, a.dst_addr, head, mid) {
        pieces.push((a.dst_addr, head));
        pieces.push((a.dst_addr + head + mid, a.len - head - mid));
    } else {
        pieces.push((a.dst_addr, a.len));
    }
    let mut n = 0;
    for (s, len) in pieces.into_iter().filter(|p| p.1 > 0) {
        let Some(r) = VaRange::round_out(s, len) else {
            continue;
        };
        let (s, e) = (r.start().0, r.end().0);
        // The part the same map's copy-in makes copy-on-write first.
        let (cs, ce) = if same && l.has_middle() {
            (s.max(l.head_end), e.min(l.mid_end))
        } else {
            (e, e)
        };
        if cs < ce {
            n += (ce - cs) >> PAGE_SHIFT;
            n += frames_in(d, objs, s, cs, true) + frames_in(d, objs, ce, e, true);
        } else {
            n += frames_in(d, objs, s, e, true);
        }
    }
    n
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
    let objs = map.context().objects();
    let (mut objs, mut frames) = reserve_settled(
        objs,
        |o| copyin_settle(&m, o, addr, size),
        |o| copyin_frames(&m, o, addr, size),
    )?;
    map.copyin(&mut m, &mut objs, addr, size, &mut frames)
}

/// `vm_write`: overwrites the allocated, writable range at `addr` with
/// `data`, consuming it (SPEC §4 rule 5).
pub fn vm_write(map: &VmMap, addr: u64, mut data: VmMapCopy) -> Result<(), KernError> {
    let Some(r) = data_range(addr, data.len)? else {
        return Ok(());
    };
    if !Arc::ptr_eq(&data.ctx, map.context()) {
        return Err(KernError::InvalidArgument);
    }
    let mut m = map.0.inner.lock();
    check_access(&m, r, Access::Write)?;
    let objs = map.context().objects();
    let (head, mid) = (data.head.len() as u64, data.middle_bytes());
    let cow = cow_fits(&m, &objs, addr, head, mid);
    let pieces = byte_pieces(addr, &data, cow);
    let (mut objs, mut frames) = reserve(objs, |o| {
        pieces
            .iter()
            .filter_map(|&(d, _, n)| VaRange::round_out(d, n))
            .map(|r| frames_in(&m, o, r.start().0, r.end().0, true))
            .sum()
    })?;
    let result = map.overwrite(&mut m, &mut objs, addr, &mut data, &mut frames);
    data.release_into(&mut objs);
    result
}

/// `vm_copy`: `vm_map_copy(map, map, dst, size, src, false, false)`.
pub fn vm_copy(map: &VmMap, src: u64, size: u64, dst: u64) -> Result<(), KernError> {
    vm_map_copy(map, map, dst, size, src, false, false)
}
