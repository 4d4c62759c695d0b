//! Physical memory at boot: from the PVH memory map to the kernel heap and
//! machvm's [`FrameAllocator`].
//!
//! Usable RAM is the map's type-1 regions above 1 MiB minus the kernel image.
//! From it the kernel first carves (below 4 GiB, where the boot direct map
//! reaches) the page directories that extend the direct map past 4 GiB, then
//! the heap, then a RAM disk machvm's default pager keeps swap slots in
//! (SPEC §8); every remaining page goes to the frame allocator. Low memory
//! (below 1 MiB) is never managed: the AP trampoline uses it.

use alloc::sync::Arc;
use core::ops::Range;
use core::ptr::NonNull;

use machvm_base::PhysAddr;
use machvm_frame::PhysMem;

use crate::locks::FrameAllocator;

use crate::paging::phys_to_virt;
use crate::pvh::{BootInfo, E820_RAM};

const MAX_RANGES: usize = 64;
const MIB: u64 = 1 << 20;
/// The RAM disk's size: 4,096 swap slots.
const RAM_DISK: u64 = 16 * MIB;

/// Where boot put things, for reports.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Physical range of the kernel image.
    pub kernel: (u64, u64),
    /// Physical range of the heap.
    pub heap: (u64, u64),
    /// Physical range of the RAM disk machvm pages to.
    pub ram_disk: (u64, u64),
    /// One past the highest RAM byte (the direct map covers `[0, ram_end)`).
    pub ram_end: u64,
    /// Bytes of RAM in the memory map.
    pub ram_total: u64,
    /// Page directories added to extend the direct map past 4 GiB.
    pub extra_pds: u64,
}

static FRAMES: spin::Once<Arc<FrameAllocator>> = spin::Once::new();
static LAYOUT: spin::Once<Layout> = spin::Once::new();

/// machvm's frame allocator over all managed RAM, reachable through the
/// direct map (`frames().mem()` is a [`PhysMem::direct_map`]). Clone the
/// `Arc` to hand it to machvm (`VmSystem::with_pmap`, `X86Pmap::new`).
///
/// Panics if called before boot built it (nothing runs that early).
pub fn frames() -> &'static Arc<FrameAllocator> {
    FRAMES.get().expect("frame allocator not initialised")
}

/// The boot memory layout.
pub fn layout() -> Layout {
    *LAYOUT.get().expect("memory not initialised")
}

/// A set of disjoint page-aligned physical ranges.
struct Ranges {
    r: [(u64, u64); MAX_RANGES],
    n: usize,
}

impl Ranges {
    fn push(&mut self, s: u64, e: u64) {
        if s < e && self.n < MAX_RANGES {
            self.r[self.n] = (s, e);
            self.n += 1;
        }
    }

    /// Removes `[s, e)` from every range.
    fn subtract(&mut self, s: u64, e: u64) {
        let old = core::mem::replace(&mut self.r, [(0, 0); MAX_RANGES]);
        let n = core::mem::replace(&mut self.n, 0);
        for &(a, b) in &old[..n] {
            self.push(a, b.min(s));
            self.push(a.max(e), b);
        }
    }

    /// Takes `len` bytes aligned to `align` ending below `limit`.
    fn carve(&mut self, len: u64, align: u64, limit: u64) -> Option<u64> {
        let found = self.r[..self.n].iter().find_map(|&(a, b)| {
            let s = a.next_multiple_of(align);
            (s + len <= b.min(limit)).then_some(s)
        })?;
        self.subtract(found, found + len);
        Some(found)
    }
}

/// Builds the heap and the frame allocator from the memory map.
pub(crate) fn init(info: &BootInfo) {
    let kernel = crate::boot::kernel_image_phys();
    let mut avail = Ranges {
        r: [(0, 0); MAX_RANGES],
        n: 0,
    };
    let (mut ram_end, mut ram_total) = (0, 0);
    for r in info.regions().iter().filter(|r| r.kind == E820_RAM) {
        ram_end = ram_end.max(r.end);
        ram_total += r.end - r.start;
        let s = r.start.max(MIB).next_multiple_of(4096);
        let e = r.end & !4095;
        avail.push(s, e);
    }
    avail.subtract(kernel.0 & !4095, kernel.1.next_multiple_of(4096));
    let ram_end = ram_end.next_multiple_of(4096);

    let mut extra_pds = 0;
    crate::paging::extend_direct_map(ram_end, || {
        let pd = avail
            .carve(4096, 4096, 1 << 32)
            .expect("no RAM below 4 GiB for the direct map");
        // SAFETY: a frame just carved from free RAM, inside the boot direct map.
        unsafe { core::ptr::write_bytes(phys_to_virt(pd) as *mut u8, 0, 4096) };
        extra_pds += 1;
        pd
    });

    // The heap holds the allocator's per-frame metadata (32 bytes a frame)
    // plus room for the kernel and machvm's structures.
    let lo = avail.r[..avail.n].iter().map(|r| r.0).min().unwrap_or(0);
    let frames_span = (ram_end - lo) / 4096;
    let heap_len = (16 * MIB + frames_span * 40).next_multiple_of(2 * MIB);
    let heap = avail
        .carve(heap_len, 2 * MIB, ram_end)
        .expect("not enough RAM for the kernel heap");
    // The RAM disk: frames the allocator never manages, inside the direct
    // map (so `PhysMem` reaches them), a swap slot each.
    let disk = avail
        .carve(RAM_DISK, 4096, ram_end)
        .expect("not enough RAM for the RAM disk");
    // SAFETY: carved from free RAM, mapped by the direct map, used by nothing
    // else from now on, page aligned.
    unsafe { crate::heap::init(phys_to_virt(heap) as usize, heap_len as usize) };

    let ranges: alloc::vec::Vec<Range<PhysAddr>> = avail.r[..avail.n]
        .iter()
        .map(|&(s, e)| PhysAddr::new(s)..PhysAddr::new(e))
        .collect();
    let virt = NonNull::new(phys_to_virt(0) as *mut u8).expect("direct map base is not null");
    // SAFETY: the direct map covers physical [0, ram_end) read-write from
    // DIRECT_MAP_BASE for the kernel's whole life (boot tables plus the
    // extension above). `direct_map` asks that nothing else touch what it
    // covers; this kernel covers its image and heap as well, because it
    // walks its boot page tables (`AtomicU64` statics in the image: only
    // atomics touch them) through this `PhysMem`. Nothing here passes it an
    // address of the image's other data, of the heap or of low memory, and
    // the managed ranges exclude them all. Covering only machvm's RAM, as
    // docs/kernel-guide.md does, would need another accessor for the boot
    // tables.
    let mem = unsafe { PhysMem::direct_map(virt, PhysAddr::new(0), ram_end) };
    let fa =
        FrameAllocator::with_locks(mem, &ranges).expect("frame allocator rejected the memory map");
    FRAMES.call_once(|| Arc::new(fa));
    LAYOUT.call_once(|| Layout {
        kernel,
        heap: (heap, heap + heap_len),
        ram_disk: (disk, disk + RAM_DISK),
        ram_end,
        ram_total,
        extra_pds,
    });
}
