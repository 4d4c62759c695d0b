//! Stores and loads bigger than RAM (SPEC §8): a system that pages moves
//! them in rounds, each round's pages made resident (paging out what the
//! call does not use, the earlier rounds included) while its bytes move.
//!
//! A store checks first, with the graph locked, that RAM and swap hold all
//! its new pages, and sizes its rounds by what can be freed (a quarter of
//! RAM at most); otherwise it fails with `ResourceShortage` before any byte
//! moves. Each round keeps the pages the rest of the store writes in place
//! resident (so no later round finds them paged out and needs slots the
//! check did not count); the rounds before it may go. Only another call
//! taking the room meanwhile can make a later round fail. A load that
//! cannot fault its pages in reads them through the objects instead: a
//! paged-out page's bytes come from its slot.

use machvm_base::sync::Locks;
use machvm_base::{KernError, PAGE_SHIFT, VaRange};
use machvm_object::Objects;
use machvm_pmap::Access;

use crate::data::{for_each_page_piece, frames_for, keep_range};
use crate::{MapInner, VmMap};

/// Pages a round covers at most: a quarter of RAM, so that the round and
/// its page tables fit beside what the system keeps resident.
fn round_pages<L: Locks>(objs: &Objects<'_, L>) -> u64 {
    (objs.context().frames().total_frames() / 4).max(1)
}

impl<L: Locks> VmMap<L> {
    /// [`write_bytes`](Self::write_bytes) of `data` at `addr` (checked
    /// writable, `m` locked) in rounds: `ResourceShortage`, nothing
    /// written, when RAM and swap cannot hold it.
    pub(crate) fn write_in_rounds(
        &self,
        m: &mut MapInner,
        addr: u64,
        data: &[u8],
    ) -> Result<(), KernError> {
        let r = VaRange::of_data(addr, data.len() as u64)?.ok_or(KernError::InvalidArgument)?;
        let round = {
            let objs = self.0.ctx.objects();
            keep_range(m, &objs, r);
            let missing = self.untranslatable(r, Access::Write);
            let need = frames_for(m, &objs, &missing, true);
            objs.page_through_round(need, round_pages(&objs))
                .ok_or(KernError::ResourceShortage)?
        };
        let mem = self.0.ctx.frames().mem();
        let end = addr + data.len() as u64;
        let mut at = addr;
        while at < end {
            // Up to the page boundary `round` pages on.
            let stop = ((at >> PAGE_SHIFT) + round) << PAGE_SHIFT;
            let stop = stop.min(end);
            let rr = VaRange::of_data(at, stop - at)?.ok_or(KernError::InvalidArgument)?;
            let rest = VaRange::of_data(at, end - at)?.ok_or(KernError::InvalidArgument)?;
            let (mut objs, mut frames, missing) =
                self.reserve_faults(m, (rr, rest), Access::Write)?;
            let base = (at - addr) as usize;
            self.store_in(
                m,
                &mut objs,
                (at, stop - at),
                &missing,
                &mut frames,
                &mut |_, off, pa, n| {
                    let from = base + off as usize;
                    mem.write(pa, &data[from..from + n]);
                },
            )?;
            drop(frames);
            self.assert_consistent(m, &objs);
            at = stop;
        }
        Ok(())
    }

    /// [`read_bytes`](Self::read_bytes) of `buf.len()` bytes at `addr`
    /// (checked readable, `m` locked) without faulting anything in: for a
    /// load whose pages cannot all be resident at once.
    pub(crate) fn read_through_objects(
        &self,
        m: &MapInner,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), KernError> {
        let objs = self.0.ctx.objects();
        let moved = for_each_page_piece(m, addr, buf.len(), |h, page, off, at, n| {
            objs.read(h, page, off, &mut buf[at..at + n])
        });
        self.assert_consistent(m, &objs);
        moved
    }
}
