//! The SPEC §4 entry points, `vm_map_copy`, `vm_read`, `vm_write` and
//! `vm_copy`: every check in SPEC's order, then the frames, then the steps.

use alloc::sync::Arc;
use alloc::vec::Vec;
use machvm_base::sync::Locks;

use machvm_base::{KernError, VaRange, VmProt};
use machvm_map::{Access, MapGuard, MapPair, VmMap, reserve, reserve_settled};
use machvm_object::Objects;

use crate::steps::{copyin, copyin_frames, copyin_settle, cow_fits, overwrite, pieces};
use crate::{Layout, VmMapCopy};

/// With `dst_alloc`: the allocated parts of `r` must be writable
/// (`ProtectionFailure`); returns the holes to allocate.
pub(crate) fn dst_holes<L: Locks>(
    d: &MapGuard<'_, L>,
    r: VaRange,
) -> Result<Vec<VaRange>, KernError> {
    let mut holes = Vec::new();
    let mut at = r.start();
    for (part, prot) in d.allocated(r) {
        if !prot.contains(VmProt::WRITE) {
            return Err(KernError::ProtectionFailure);
        }
        holes.extend(VaRange::new(at, part.start()).filter(|h| !h.is_empty()));
        at = part.end();
    }
    holes.extend(VaRange::new(at, r.end()).filter(|h| !h.is_empty()));
    Ok(holes)
}

/// One `vm_map_copy` with its arguments, once they are validated.
pub(crate) struct CopyArgs {
    pub(crate) dst_addr: u64,
    pub(crate) len: u64,
    pub(crate) src_addr: u64,
    pub(crate) dst_alloc: bool,
    pub(crate) src_destroy: bool,
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
/// use std::sync::Arc;
/// use machvm_copy::vm_map_copy;
/// use machvm_map::{FrameAllocator, SoftPmap, VmContext, VmMap};
///
/// let frames = Arc::new(FrameAllocator::hosted(1 << 20).unwrap());
/// let ctx = VmContext::new(frames, Arc::new(SoftPmap::new()));
/// let (src, dst) = (VmMap::new(&ctx).unwrap(), VmMap::new(&ctx).unwrap());
/// let a = src.allocate(0, 4 * 4096, true).unwrap();
/// src.write_bytes(a, b"copy me").unwrap();
/// vm_map_copy(&dst, &src, 0x10_0000, 4 * 4096, a, true, false).unwrap();
/// src.write_bytes(a, b"changed").unwrap();
/// let mut buf = [0u8; 7];
/// dst.read_bytes(0x10_0000, &mut buf).unwrap();
/// assert_eq!(&buf, b"copy me");
/// ```
pub fn vm_map_copy<L: Locks>(
    dst_map: &VmMap<L>,
    src_map: &VmMap<L>,
    dst_addr: u64,
    len: u64,
    src_addr: u64,
    dst_alloc: bool,
    src_destroy: bool,
) -> Result<(), KernError> {
    let Some(sr) = VaRange::of_data(src_addr, len)? else {
        return Ok(());
    };
    let Some(dr) = VaRange::of_data(dst_addr, len)? else {
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
    let mut maps = MapPair::lock(src_map, dst_map);
    let result = copy_locked(&mut maps, (sr, dr), &args, true);
    if src_map.context().consistency_checks() {
        let objs = src_map.context().objects();
        let (s, d) = maps.both();
        s.assert_consistent(&objs);
        d.assert_consistent(&objs);
    }
    result
}

/// The body of [`vm_map_copy`] with the maps locked; `sr` and `dr` are the
/// source and destination pages. With `rounds`, a copy whose frames a
/// system that pages cannot have all at once goes in rounds instead
/// (`rounds.rs`).
pub(crate) fn copy_locked<L: Locks>(
    maps: &mut MapPair<'_, L>,
    (sr, dr): (VaRange, VaRange),
    a: &CopyArgs,
    rounds: bool,
) -> Result<(), KernError> {
    let ctx = maps.src().map().context().clone();
    // Declared before the graph guard, so that on a panic the guard goes
    // first and the copy's drop can take the graph lock.
    let mut slot: Option<VmMapCopy<L>> = None;
    let objs = ctx.objects();
    // Source, then destination, then frames: nothing changes until all pass.
    let (s, d) = maps.both();
    s.check_access(sr, Access::Read)?;
    let holes = if a.dst_alloc {
        dst_holes(d, dr)?
    } else {
        d.check_access(dr, Access::Write)?;
        Vec::new()
    };
    let same = maps.is_same_map();
    let reserved = reserve_settled(
        objs,
        |o| copyin_settle(s, o, a.src_addr, a.len),
        |o| copyin_frames(s, o, a.src_addr, a.len) + copy_dest_frames(d, o, a, same),
    );
    let (mut objs, mut frames) = match reserved {
        Err(KernError::ResourceShortage) if rounds && ctx.pager().is_some() => {
            return crate::rounds::copy_in_rounds(maps, (sr, dr), a);
        }
        other => other?,
    };
    let copy = slot.insert(copyin(
        maps.src(),
        &mut objs,
        a.src_addr,
        a.len,
        &mut frames,
    )?);
    let d = maps.dst();
    for &h in &holes {
        d.insert_zero_fill(h)?;
    }
    let result = overwrite(d, &mut objs, a.dst_addr, copy, &mut frames);
    copy.release_into(&mut objs);
    if let Err(e) = result {
        // Unreachable with the frames reserved.
        for &h in &holes {
            d.remove(&mut objs, h);
        }
        return Err(e);
    }
    if a.src_destroy {
        maps.src().remove(&mut objs, sr);
    }
    Ok(())
}

/// An upper bound on the frames the destination's byte pages of a copy
/// take: as [`MapGuard::fault_frames`] says, except that in the same map
/// the pages the copy-in is about to make copy-on-write need a frame each.
/// By ranges, not pages: O(entries and resident pages), whatever the
/// length.
pub(crate) fn copy_dest_frames<L: Locks>(
    d: &MapGuard<'_, L>,
    objs: &Objects<'_, L>,
    a: &CopyArgs,
    same: bool,
) -> u64 {
    let l = Layout::of(a.src_addr, a.len);
    let head = l.head_end - a.src_addr;
    let mid = l.mid_end - l.head_end;
    let cow = cow_fits(d, objs, a.dst_addr, head, mid);
    let middle = l.middle();
    let mut n = 0;
    for (at, _, len) in pieces(a.dst_addr, a.len, head, mid, cow) {
        let Some(r) = VaRange::round_out(at, len) else {
            continue;
        };
        // The part the same map's copy-in makes copy-on-write first.
        match middle.and_then(|m| r.intersect(&m)).filter(|_| same) {
            Some(c) => {
                n += c.pages();
                let (below, above) = r.split_around(&c);
                n += d.fault_frames(objs, below, true) + d.fault_frames(objs, above, true);
            }
            None => n += d.fault_frames(objs, r, true),
        }
    }
    n
}

/// `vm_read`: a copy-on-write snapshot of `[addr, addr + size)` (no page is
/// copied for aligned ranges). The range must be allocated
/// (`InvalidAddress`) and readable (`ProtectionFailure`).
pub fn vm_read<L: Locks>(map: &VmMap<L>, addr: u64, size: u64) -> Result<VmMapCopy<L>, KernError> {
    let Some(r) = VaRange::of_data(addr, size)? else {
        return Ok(VmMapCopy::empty(map.context()));
    };
    let mut m = map.lock();
    m.check_access(r, Access::Read)?;
    // Declared before the graph guard: on a panic (a failed consistency
    // check) the guard goes first and the copy's drop can take the lock.
    let copy;
    let objs = map.context().objects();
    let (mut objs, mut frames) = reserve_settled(
        objs,
        |o| copyin_settle(&m, o, addr, size),
        |o| copyin_frames(&m, o, addr, size),
    )?;
    copy = copyin(&mut m, &mut objs, addr, size, &mut frames);
    m.assert_consistent(&objs);
    drop((frames, objs, m));
    copy
}

/// `vm_write`: overwrites the allocated, writable range at `addr` with
/// `data`, consuming it (SPEC §4 rule 5).
pub fn vm_write<L: Locks>(
    map: &VmMap<L>,
    addr: u64,
    mut data: VmMapCopy<L>,
) -> Result<(), KernError> {
    let Some(r) = VaRange::of_data(addr, data.len)? else {
        return Ok(());
    };
    if !Arc::ptr_eq(&data.ctx, map.context()) {
        return Err(KernError::InvalidArgument);
    }
    let mut m = map.lock();
    m.check_access(r, Access::Write)?;
    let objs = map.context().objects();
    let (head, mid) = (data.head.len() as u64, data.middle_bytes());
    let cow = cow_fits(&m, &objs, addr, head, mid);
    let bytes = pieces(addr, data.len, head, mid, cow);
    let (mut objs, mut frames) = reserve(objs, |o| {
        bytes
            .iter()
            .filter_map(|&(d, _, n)| VaRange::round_out(d, n))
            .map(|r| m.fault_frames(o, r, true))
            .sum()
    })?;
    let result = overwrite(&mut m, &mut objs, addr, &mut data, &mut frames);
    data.release_into(&mut objs);
    m.assert_consistent(&objs);
    result
}

/// `vm_copy`: `vm_map_copy(map, map, dst, size, src, false, false)`.
pub fn vm_copy<L: Locks>(map: &VmMap<L>, src: u64, size: u64, dst: u64) -> Result<(), KernError> {
    vm_map_copy(map, map, dst, size, src, false, false)
}
