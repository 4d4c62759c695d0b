//! The `x86_64` crate's frame-allocator traits over machvm's allocator
//! (feature `x86_64`): a kernel that builds its own mappings with that
//! crate's `Mapper`s takes their page-table frames from the same pool as
//! machvm, counted in the same statistics.
//!
//! The traits are `unsafe` to implement (an allocator must never hand out a
//! frame in use) and to call (`deallocate_frame` trusts its caller); the
//! adapter only forwards to [`FrameAllocator::alloc`] and
//! [`FrameAllocator::free`], which keep that promise and refuse a bad free.

use machvm_base::sync::{Locks, SpinLocks};
use x86_64::structures::paging::{FrameDeallocator, PhysFrame, Size4KiB};

use crate::{FrameAllocator, FrameUse};

/// machvm's [`FrameAllocator`] as an `x86_64::structures::paging`
/// `FrameAllocator<Size4KiB>` and `FrameDeallocator<Size4KiB>`, handing
/// out frames tagged with one [`FrameUse`].
///
/// ```
/// use machvm_frame::{FrameAllocator, FrameUse, X86Frames};
/// use x86_64::structures::paging::{FrameAllocator as _, FrameDeallocator as _};
///
/// let frames = FrameAllocator::hosted(64 * 4096).unwrap();
/// let before = frames.free_frames();
/// let mut tables = X86Frames::new(&frames, FrameUse::PageTable);
/// let frame = tables.allocate_frame().unwrap();
/// assert_eq!(frames.frames_in_use(FrameUse::PageTable), 1);
/// // SAFETY: nothing maps or uses `frame`: it was only just allocated.
/// unsafe { tables.deallocate_frame(frame) };
/// assert_eq!(frames.free_frames(), before);
/// ```
#[derive(Debug)]
pub struct X86Frames<'a, L: Locks = SpinLocks> {
    frames: &'a FrameAllocator<L>,
    what: FrameUse,
}

impl<'a, L: Locks> X86Frames<'a, L> {
    /// An adapter taking frames from `frames` for `what` (a `Mapper`'s
    /// page-table frames are [`FrameUse::PageTable`]).
    pub fn new(frames: &'a FrameAllocator<L>, what: FrameUse) -> X86Frames<'a, L> {
        X86Frames { frames, what }
    }
}

// SAFETY: `FrameAllocator::alloc` returns a frame that is free in the buddy
// lists and its per-CPU caches and marks it in use before returning, so no
// frame is handed out twice until `free` returns it. The frames it manages
// are those of the ranges given to it, inside its `PhysMem`, which
// `PhysMem::direct_map`'s contract reserves to machvm: nothing else uses a
// frame it hands out.
unsafe impl<L: Locks> x86_64::structures::paging::FrameAllocator<Size4KiB> for X86Frames<'_, L> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pa = self.frames.alloc(self.what).ok()?;
        // Frames are page-aligned; were one not, it goes back, not astray.
        match PhysFrame::try_from(pa) {
            Ok(frame) => Some(frame),
            Err(_) => {
                self.frames.free(pa);
                None
            }
        }
    }
}

impl<L: Locks> FrameDeallocator<Size4KiB> for X86Frames<'_, L> {
    /// Returns `frame` to machvm's allocator. A frame it never handed out
    /// (or already free) is refused and remembered for
    /// [`FrameAllocator::verify`], as [`FrameAllocator::free`] does (and
    /// debug builds assert).
    ///
    /// # Safety
    /// As the trait says: `frame` is unused (nothing maps it any more).
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        self.frames.free(frame.into());
    }
}
