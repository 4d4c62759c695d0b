//! Paged-out pages coming back: a fault's page-in (one read from the
//! store into a frame, no zero-fill), and the readers that take a paged-out
//! page's bytes straight from the store without paging it in (`read_bytes`
//! of an untranslated page, a copy's eager source).
//!
//! A page-in keeps its slot until the page is mapped: when the pmap step
//! fails, the page goes back to its slot and the frame is freed, so the
//! failed call leaves frames and slots as they were.

use machvm_base::sync::Locks;
use machvm_base::{KernError, PAGE_SIZE, PhysAddr};
use machvm_frame::FrameReservation;
use machvm_pager::SwapSlot;

use crate::{ObjectId, Objects, PageAt, VmCounters};

/// Bytes a swapped page is read through at a time (a buffer on the stack).
const CHUNK: usize = 512;

impl<L: Locks> Objects<'_, L> {
    /// Pages in the page swapped to `slot` at `off` of `obj`: a frame from
    /// `frames`, filled by one read of the slot, takes its place. The slot
    /// stays allocated until [`commit_page_in`](Self::commit_page_in).
    pub(crate) fn page_in(
        &mut self,
        frames: &mut FrameReservation<'_, L>,
        (obj, off): (ObjectId, u64),
        slot: SwapSlot,
    ) -> Result<PhysAddr, KernError> {
        let pa = frames.take()?;
        self.read_slot(slot, pa);
        self.set_owner(pa, obj.0, off);
        self.g.obj_mut(obj).pages.insert(off, PageAt::Frame(pa));
        Ok(pa)
    }

    /// The page paged in from `slot` to `pa` is mapped: the slot goes, the
    /// page joins the active queue.
    pub(crate) fn commit_page_in(&self, slot: SwapSlot, pa: PhysAddr) {
        self.forget_slot(slot);
        self.activate(pa);
        VmCounters::bump(&self.ctx.counters.pageins);
    }

    /// The page paged in at `off` of `obj` into `pa` could not be mapped:
    /// it goes back to `slot`, and the frame is freed.
    pub(crate) fn undo_page_in(
        &mut self,
        (obj, off): (ObjectId, u64),
        slot: SwapSlot,
        pa: PhysAddr,
    ) {
        self.g.obj_mut(obj).pages.insert(off, PageAt::Swapped(slot));
        self.free_unmapped(pa);
    }

    /// A new frame from `frames` holding a copy of `src` (resident or
    /// swapped), owned by page `offset` of object `obj`.
    pub(crate) fn fill_from(
        &self,
        frames: &mut FrameReservation<'_, L>,
        obj: u32,
        offset: u64,
        src: PageAt,
    ) -> Result<PhysAddr, KernError> {
        match src {
            PageAt::Frame(pa) => self.fill_copy(frames, obj, offset, pa),
            PageAt::Swapped(slot) => {
                let pa = frames.take()?;
                self.read_slot(slot, pa);
                self.set_owner(pa, obj, offset);
                Ok(pa)
            }
        }
    }

    /// Reads the whole page in `slot` into frame `pa`.
    fn read_slot(&self, slot: SwapSlot, pa: PhysAddr) {
        match self.ctx.pager() {
            Some(p) => p.page_in(slot, self.ctx.frames().mem(), pa),
            None => unreachable!("a swapped page without a pager"),
        }
    }

    /// Reads `buf.len()` bytes at byte `offset` of `page` (within the page).
    pub(crate) fn read_page(&self, page: PageAt, offset: u64, buf: &mut [u8]) {
        let mem = self.ctx.frames().mem();
        match (page, self.ctx.pager()) {
            (PageAt::Frame(pa), _) => mem.read(pa + offset, buf),
            (PageAt::Swapped(slot), Some(p)) => {
                let read = p.read(slot, mem, offset as usize, buf);
                assert!(read, "a read past a swapped page");
            }
            (PageAt::Swapped(_), None) => unreachable!("a swapped page without a pager"),
        }
    }

    /// Copies `len` bytes at byte `offset` of `page` (resident or paged
    /// out) to `dst`, within the page: a swapped page is read from the
    /// store, not paged in.
    pub fn copy_bytes(&self, page: PageAt, offset: u64, dst: PhysAddr, len: usize) {
        debug_assert!(offset + len as u64 <= PAGE_SIZE);
        let mem = self.ctx.frames().mem();
        if let PageAt::Frame(pa) = page {
            mem.copy(dst, pa + offset, len);
            return;
        }
        let mut buf = [0u8; CHUNK];
        let mut at = 0;
        while at < len {
            let n = CHUNK.min(len - at);
            self.read_page(page, offset + at as u64, &mut buf[..n]);
            mem.write(dst + at as u64, &buf[..n]);
            at += n;
        }
    }
}
