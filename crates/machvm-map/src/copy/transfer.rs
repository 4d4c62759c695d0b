//! The two steps every call is made of: copy-in (a source range into a
//! [`VmMapCopy`]) and overwrite (a copy onto an allocated, writable
//! range), with the frame counts each needs.

use super::*;

/// The byte ranges of placing `copy` at `dst`, as (destination address,
/// position in the copy, length): its head and tail when the whole pages go
/// copy-on-write (`cow`), else all of it.
pub(super) fn byte_pieces(dst: u64, copy: &VmMapCopy, cow: bool) -> ArrayVec<(u64, u64, u64), 2> {
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
pub(super) fn cow_fits(m: &MapInner, objs: &Objects<'_>, dst: u64, head: u64, mid: u64) -> bool {
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
    pub(super) fn copyin(
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
    pub(super) fn copyin_pages(
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
    pub(super) fn overwrite(
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
    pub(super) fn replace_pages(
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
pub(super) fn snapshot_bytes(m: &MapInner, objs: &Objects<'_>, addr: u64, len: u64) -> Vec<u8> {
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
pub(super) fn copyin_settle(m: &MapInner, objs: &mut Objects<'_>, addr: u64, len: u64) -> bool {
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
pub(super) fn copyin_frames(m: &MapInner, objs: &Objects<'_>, addr: u64, len: u64) -> u64 {
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
