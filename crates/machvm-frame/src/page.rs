//! Per-frame metadata (`VmPage`, Mach's `vm_page`) and what a frame is
//! doing (`FrameState`) or is for (`FrameUse`).

use core::sync::atomic::Ordering::Relaxed;

use machvm_base::PageIndex;

use crate::sync::{AtomicU8, AtomicU16, AtomicU32, AtomicU64};

/// What a frame is doing: its queue, in Mach terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameState {
    /// Not managed: a hole between ranges or memory the firmware keeps.
    Reserved = 0,
    /// On a free list.
    Free = 1,
    /// A non-head frame of an allocated multi-frame block.
    Tail = 2,
    /// Holds data of a VM object (Mach's active queue).
    Object = 3,
    /// A page-table page of a pmap.
    PageTable = 4,
    /// Used by the kernel for something else.
    Kernel = 5,
    /// Free, in a per-CPU cache (`cache.rs`) rather than on a free list.
    Cached = 6,
}

impl FrameState {
    pub(crate) fn from_u8(v: u8) -> FrameState {
        match v {
            1 => FrameState::Free,
            2 => FrameState::Tail,
            3 => FrameState::Object,
            4 => FrameState::PageTable,
            5 => FrameState::Kernel,
            6 => FrameState::Cached,
            _ => FrameState::Reserved,
        }
    }
}

/// What an allocated frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameUse {
    /// Data of a VM object.
    Object,
    /// A page-table page.
    PageTable,
    /// Other kernel use.
    Kernel,
}

impl FrameUse {
    pub(crate) fn state(self) -> FrameState {
        match self {
            FrameUse::Object => FrameState::Object,
            FrameUse::PageTable => FrameState::PageTable,
            FrameUse::Kernel => FrameState::Kernel,
        }
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Flag bits of [`VmPage::flags`].
pub mod page_flags {
    /// Written since last cleaned (software copy of the pmap's modify bit).
    pub const DIRTY: u8 = 1;
    /// Accessed since last cleared.
    pub const REFERENCED: u8 = 2;
    /// The object layer is filling or copying the page.
    pub const BUSY: u8 = 4;
    /// On the active page queue (`queue.rs`; written under its lock).
    pub const ACTIVE: u8 = 8;
    /// On the inactive page queue.
    pub const INACTIVE: u8 = 16;
}

/// Per-frame metadata, Mach's `vm_page`, in 32 bytes.
///
/// Fields are atomics so that owners (the object layer for its pages, a pmap
/// for its page-table pages) can update their parts without the allocator's
/// lock; the free-list links are only touched under that lock.
#[repr(C)]
#[derive(Default)]
pub struct VmPage {
    pub(crate) offset: AtomicU64,
    pub(crate) next: AtomicU32,
    pub(crate) prev: AtomicU32,
    pub(crate) object: AtomicU32,
    pub(crate) wire_count: AtomicU16,
    pub(crate) use_count: AtomicU16,
    pub(crate) state: AtomicU8,
    pub(crate) order: AtomicU8,
    pub(crate) flags: AtomicU8,
}

impl VmPage {
    /// The frame's current state.
    pub fn state(&self) -> FrameState {
        FrameState::from_u8(self.state.load(Relaxed))
    }
    /// The owning object's id (0: none) and the page's index in it.
    pub fn owner(&self) -> (u32, PageIndex) {
        (
            self.object.load(Relaxed),
            PageIndex::new(self.offset.load(Relaxed)),
        )
    }
    /// Records the owning object and the page's index in it (the object
    /// layer's business).
    pub fn set_owner(&self, object: u32, index: PageIndex) {
        self.object.store(object, Relaxed);
        self.offset.store(index.get(), Relaxed);
    }
    /// Flag bits, see [`page_flags`].
    pub fn flags(&self) -> u8 {
        self.flags.load(Relaxed)
    }
    /// Sets flag bits.
    pub fn set_flags(&self, bits: u8) {
        self.flags.fetch_or(bits, Relaxed);
    }
    /// Clears flag bits.
    pub fn clear_flags(&self, bits: u8) {
        self.flags.fetch_and(!bits, Relaxed);
    }
    /// Number of wirings.
    pub fn wire_count(&self) -> u16 {
        self.wire_count.load(Relaxed)
    }
    /// Adds one wiring.
    pub fn wire(&self) {
        self.wire_count.fetch_add(1, Relaxed);
    }
    /// Drops one wiring.
    pub fn unwire(&self) {
        let old = self.wire_count.fetch_sub(1, Relaxed);
        debug_assert!(old > 0, "unwire of an unwired frame");
    }
    /// A counter for the owner's use: a page-table page counts its valid
    /// entries here (as FreeBSD's pmap uses the ptp's `ref_count`).
    pub fn use_count(&self) -> u16 {
        self.use_count.load(Relaxed)
    }
    /// Adds `n` to the use counter, returning the new value.
    pub fn add_use(&self, n: u16) -> u16 {
        self.use_count.fetch_add(n, Relaxed) + n
    }
    /// Subtracts `n` from the use counter, returning the new value.
    pub fn sub_use(&self, n: u16) -> u16 {
        let old = self.use_count.fetch_sub(n, Relaxed);
        debug_assert!(old >= n, "use count underflow");
        old - n
    }
}
