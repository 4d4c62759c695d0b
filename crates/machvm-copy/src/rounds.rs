//! `vm_map_copy` bigger than RAM (SPEC §8): when the bytes a copy moves
//! now (its unaligned pages, eager copies) cannot all be resident at once
//! in a system that pages, it copies in rounds, each a `vm_map_copy` of a
//! part of the range with its own reservation, in `memmove` order (from the
//! end when the destination overlaps the source above it). Each round
//! snapshots its source before it writes its destination, so every byte
//! copied is the source's as the call began.
//!
//! The call checks first, with the graph locked, that RAM and swap hold
//! every page it makes and that its first round can be given room;
//! otherwise it fails with `ResourceShortage` before anything changes.
//! Only another call taking the room meanwhile can fail a later round.

use alloc::vec::Vec;

use machvm_base::sync::Locks;
use machvm_base::{KernError, PAGE_SHIFT, VaRange};
use machvm_map::MapPair;

use crate::calls::{CopyArgs, copy_dest_frames, copy_locked, dst_holes};
use crate::steps::copyin_frames;

/// The parts of a copy of `a.len` bytes to `a.dst_addr`, as `(offset,
/// length)`: split at destination page boundaries `round` pages apart,
/// in the order they must be copied.
fn parts(a: &CopyArgs, round: u64, backward: bool) -> Vec<(u64, u64)> {
    let step = round << PAGE_SHIFT;
    let mut out = Vec::new();
    let mut off = 0;
    while off < a.len {
        let at = a.dst_addr + off;
        let next = (at / step + 1) * step;
        let n = (next - at).min(a.len - off);
        out.push((off, n));
        off += n;
    }
    if backward {
        out.reverse();
    }
    out
}

/// [`vm_map_copy`](crate::vm_map_copy) in rounds (see the module), with
/// the maps locked and the call's arguments checked.
pub(crate) fn copy_in_rounds<L: Locks>(
    maps: &mut MapPair<'_, L>,
    (sr, dr): (VaRange, VaRange),
    a: &CopyArgs,
) -> Result<(), KernError> {
    let ctx = maps.src().map().context().clone();
    let same = maps.is_same_map();
    let round = {
        let objs = ctx.objects();
        let (s, d) = maps.both();
        // Every destination page counted as new: a round may page out a
        // later round's destination, which then comes back to be written.
        let dest = copy_dest_frames(d, &objs, a, same).max(dr.pages());
        let need = copyin_frames(s, &objs, a.src_addr, a.len) + dest;
        let most = (ctx.frames().total_frames() / 4).max(1);
        let round = objs.page_through_round(need, most);
        // A round copies in as much as it writes at most (a wired or
        // shared source is copied at once): half the room each.
        round
            .map(|r| (r / 2).max(1))
            .ok_or(KernError::ResourceShortage)?
    };
    let holes = match a.dst_alloc {
        true => dst_holes(maps.dst(), dr)?,
        false => Vec::new(),
    };
    for &h in &holes {
        maps.dst().insert_zero_fill(h)?;
    }
    let copied = copy_parts(maps, a, round, same);
    if let Err(e) = copied {
        // Only another call taking the room can fail a round: give the
        // destination's new pages back.
        let mut objs = ctx.objects();
        for &h in &holes {
            maps.dst().remove(&mut objs, h);
        }
        return Err(e);
    }
    if a.src_destroy {
        let mut objs = ctx.objects();
        maps.src().remove(&mut objs, sr);
    }
    Ok(())
}

/// The rounds of [`copy_in_rounds`]: each part of `round` pages at most an
/// ordinary copy, in `memmove` order.
fn copy_parts<L: Locks>(
    maps: &mut MapPair<'_, L>,
    a: &CopyArgs,
    round: u64,
    same: bool,
) -> Result<(), KernError> {
    // memmove: from the end when the destination lies above an
    // overlapping source in the same map.
    let backward = same && a.dst_addr > a.src_addr && a.src_addr + a.len > a.dst_addr;
    for (off, n) in parts(a, round, backward) {
        let part = CopyArgs {
            dst_addr: a.dst_addr + off,
            len: n,
            src_addr: a.src_addr + off,
            dst_alloc: false,
            src_destroy: false,
        };
        let ranges = (
            VaRange::of_data(part.src_addr, n)?.ok_or(KernError::InvalidArgument)?,
            VaRange::of_data(part.dst_addr, n)?.ok_or(KernError::InvalidArgument)?,
        );
        copy_locked(maps, ranges, &part, false)?;
    }
    Ok(())
}
