//! `page_out`: paging out a range a caller knows is cold (Linux's
//! `MADV_PAGEOUT`), through the object layer's pageout.

use machvm_base::sync::Locks;
use machvm_base::{KernError, PAGE_SHIFT, PageIndex};

use crate::VmMap;
use crate::ops::mgmt_range;

impl<L: Locks> VmMap<L> {
    /// Pages out the pages `[addr, addr + size)` shows that are resident
    /// and pageable (not wired), when the system has a pager; returns how
    /// many went (0 without a pager). Rounds out; size 0: `Ok(0)`. Checks
    /// as `deallocate` does (`InvalidArgument` for a range that overflows,
    /// `InvalidAddress` outside the task map), then the range must be
    /// allocated without a hole (`InvalidAddress`). Nothing a task can see
    /// changes: its next access pages the page back in.
    pub fn page_out(&self, addr: u64, size: u64) -> Result<u64, KernError> {
        let Some(r) = mgmt_range(addr, size)? else {
            return Ok(0);
        };
        let m = machvm_base::sync::write::<L, _>(&self.0.inner);
        let (s, t) = (r.start().as_u64(), r.end().as_u64());
        m.check_covered(s, t)?;
        let mut objs = self.0.ctx.objects();
        let mut n = 0;
        for (&start, e) in m.overlapping(s, t) {
            let Some(h) = &e.object else { continue };
            let (lo, hi) = (s.max(start), t.min(e.end));
            let first = PageIndex::in_window(start, lo);
            n += objs.page_out_window(h, first, (hi - lo) >> PAGE_SHIFT);
        }
        self.assert_consistent(&m, &objs);
        Ok(n)
    }
}
