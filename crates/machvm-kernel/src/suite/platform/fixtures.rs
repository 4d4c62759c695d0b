//! What the platform suite's tests share: scratch mappings and fault
//! expectations.

use super::*;

/// A frame owned by a test, filled with one byte, freed on drop.
pub(super) struct Frame(pub(super) u64);

impl Frame {
    pub(super) fn new(fill: u8) -> Result<Frame, String> {
        let pa = frames()
            .alloc(FrameUse::Kernel)
            .map_err(|e| format!("frame allocation: {e:?}"))?;
        frames().mem().write(pa, &[fill; 4096]);
        Ok(Frame(pa.as_u64()))
    }

    pub(super) fn byte(&self, off: u64) -> u8 {
        let mut b = [0];
        frames().mem().read(PhysAddr::new(self.0 + off), &mut b);
        b[0]
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        frames().free(PhysAddr::new(self.0));
    }
}

/// Fresh scratch-window pages; on drop they are unmapped and every CPU's TLB
/// is flushed. Declare it after the frames it maps so it drops first.
pub(super) struct Window {
    pub(super) va: u64,
    pages: u64,
}

impl Window {
    pub(super) fn new(pages: u64) -> Window {
        Window {
            va: paging::alloc_window(pages),
            pages,
        }
    }

    pub(super) fn map(&self, page: u64, frame: &Frame, flags: u64) -> Result<(), String> {
        // SAFETY: the frame belongs to the test and holds no Rust object;
        // the address is a fresh window page.
        unsafe {
            paging::map_4k(
                paging::kernel_pml4_pa(),
                self.va + page * 4096,
                frame.0,
                flags,
            )
        }
        .map_err(|e| format!("map_4k: {e:?}"))
    }

    pub(super) fn pte(&self, page: u64) -> Result<&'static AtomicU64, String> {
        paging::leaf_entry(paging::kernel_pml4_pa(), self.va + page * 4096)
            .ok_or_else(|| String::from("no page table for the window page"))
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        for i in 0..self.pages {
            // SAFETY: window pages are the test's own mappings.
            unsafe { paging::unmap_4k(paging::kernel_pml4_pa(), self.va + i * 4096) };
        }
        smp::shootdown(smp::all_cpus_mask(), None);
    }
}

pub(super) fn fault(addr: u64, code: u64) -> PageFaultInfo {
    PageFaultInfo { addr, code }
}

/// The other CPU for SMP tests.
pub(super) fn other_cpu() -> Result<usize, String> {
    ensure!(
        smp::cpu_count() >= 2,
        "needs two CPUs (-smp 2), have {}",
        smp::cpu_count()
    );
    Ok(if smp::current_cpu() == 0 { 1 } else { 0 })
}
