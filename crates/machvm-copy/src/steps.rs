//! The two steps every call is made of: copy-in (a source range into a
//! [`VmMapCopy`]) and overwrite (a copy onto an allocated, writable range),
//! with what each needs counted before it runs.

use alloc::vec::Vec;
use arrayvec::ArrayVec;
use machvm_base::sync::Locks;

use machvm_base::{KernError, PAGE_SIZE, VaRange};
use machvm_frame::FrameReservation;
use machvm_map::MapGuard;
use machvm_object::Objects;

use crate::source::Source;
use crate::{Layout, VmMapCopy};

/// The byte ranges of placing `copy` at `dst`, as (destination address,
/// position in the copy, length): its head and tail when the whole pages go
/// copy-on-write (`cow`), else all of it.
pub(crate) fn byte_pieces<L: Locks>(
    dst: u64,
    copy: &VmMapCopy<L>,
    cow: bool,
) -> ArrayVec<(u64, u64, u64), 2> {
    let (head, mid) = (copy.head.len() as u64, copy.middle_bytes());
    pieces(dst, copy.len, head, mid, cow)
}

/// [`byte_pieces`] of a copy of `len` bytes with `head` bytes before `mid`
/// bytes of whole pages.
pub(crate) fn pieces(
    dst: u64,
    len: u64,
    head: u64,
    mid: u64,
    cow: bool,
) -> ArrayVec<(u64, u64, u64), 2> {
    let mut pieces = ArrayVec::new();
    if cow {
        pieces.push((dst, 0, head));
        pieces.push((dst + head + mid, head + mid, len - head - mid));
    } else {
        pieces.push((dst, 0, len));
    }
    pieces.retain(|p| p.2 > 0);
    pieces
}

/// True when `mid` bytes of whole pages can go to `dst + head`
/// copy-on-write: they land on page boundaries, and no destination page
/// there is shared with another map (sharers must see the copy, so those
/// pages are stored as bytes) or wired (wired pages stay where they are).
pub(crate) fn cow_fits<L: Locks>(
    d: &MapGuard<'_, L>,
    objs: &Objects<'_, L>,
    dst: u64,
    head: u64,
    mid: u64,
) -> bool {
    let at = dst + head;
    mid > 0
        && at.is_multiple_of(PAGE_SIZE)
        && VaRange::round_out(at, mid)
            .is_some_and(|r| !d.shared_with_others(objs, r) && !d.wired_in(r))
}

/// Copy-in of `[addr, addr + len)` (checked readable), eager copies' frames
/// from `frames`. The source's lowered translations are flushed before
/// this returns, with the map still locked.
pub(crate) fn copyin<L: Locks>(
    src: &mut MapGuard<'_, L>,
    objs: &mut Objects<'_, L>,
    addr: u64,
    len: u64,
    frames: &mut FrameReservation<'_, L>,
) -> Result<VmMapCopy<L>, KernError> {
    let l = Layout::of(addr, len);
    let head = snapshot(src, objs, addr, l.head_end - addr)?;
    let tail = snapshot(src, objs, l.mid_end, l.end - l.mid_end)?;
    // Wrapped last: a `VmMapCopy` dropped here (a panic unwinding) would
    // lock the graph this thread holds.
    let spans = match l.middle() {
        Some(middle) => src.extract(objs, middle, frames)?,
        None => Vec::new(),
    };
    let mut copy = VmMapCopy::empty(src.map().context());
    copy.offset = addr & (PAGE_SIZE - 1);
    copy.len = len;
    copy.head = head;
    copy.tail = tail;
    copy.spans = spans;
    Ok(copy)
}

/// The bytes of `[addr, addr + len)` as the source's objects hold them.
fn snapshot<L: Locks>(
    src: &MapGuard<'_, L>,
    objs: &Objects<'_, L>,
    addr: u64,
    len: u64,
) -> Result<Vec<u8>, KernError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut out = alloc::vec![0u8; len as usize];
    src.peek(objs, addr, &mut out)?;
    Ok(out)
}

/// Overwrites `[dst, dst + copy.len)` (allocated and writable, checked)
/// with `copy`, new pages from `frames`. The bytes go first (the only step
/// that could fail, and with the frames reserved it does not), then the
/// whole pages, which takes them out of `copy`.
pub(crate) fn overwrite<L: Locks>(
    d: &mut MapGuard<'_, L>,
    objs: &mut Objects<'_, L>,
    dst: u64,
    copy: &mut VmMapCopy<L>,
    frames: &mut FrameReservation<'_, L>,
) -> Result<(), KernError> {
    let (head, mid) = (copy.head.len() as u64, copy.middle_bytes());
    let cow = cow_fits(d, objs, dst, head, mid);
    for (at, pos, n) in byte_pieces(dst, copy, cow) {
        let c: &VmMapCopy<L> = copy;
        let mut source = Source::new();
        d.store(objs, at, n, frames, |objs, rel, dst, n| {
            c.copy_to(objs, &mut source, (pos + rel, dst), n);
        })?;
    }
    if cow {
        d.replace(objs, dst + head, &copy.spans)?;
        copy.release_into(objs);
    }
    // Every primitive above left the map simplified (a store's faults,
    // `replace`): nothing to merge here.
    Ok(())
}

/// Shortens the chains copy-in of `[addr, addr + len)` shares (see
/// [`MapGuard::settle_extract`]). Returns whether anything moved.
pub(crate) fn copyin_settle<L: Locks>(
    src: &MapGuard<'_, L>,
    objs: &mut Objects<'_, L>,
    addr: u64,
    len: u64,
) -> bool {
    Layout::of(addr, len)
        .middle()
        .is_some_and(|middle| src.settle_extract(objs, middle))
}

/// Frames copy-in of `[addr, addr + len)` takes: the eager copies of
/// shared windows among its whole pages.
pub(crate) fn copyin_frames<L: Locks>(
    src: &MapGuard<'_, L>,
    objs: &Objects<'_, L>,
    addr: u64,
    len: u64,
) -> u64 {
    Layout::of(addr, len)
        .middle()
        .map_or(0, |middle| src.extract_frames(objs, middle))
}
