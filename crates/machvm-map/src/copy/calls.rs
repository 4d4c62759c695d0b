//! The SPEC §4 entry points, `vm_map_copy`, `vm_read`, `vm_write` and
//! `vm_copy`: every check in order, then the frames, then the steps.

use super::*;

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
