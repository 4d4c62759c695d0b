//! Frame reservations: the frames a multi-step operation will need, taken
//! before it changes anything.
//!
//! A call that may need several frames (a store spanning many pages, a copy
//! that copies pages eagerly, `fork`) counts them first, under its locks,
//! and reserves them all at once. If the reservation fails nothing has
//! changed; once it succeeds nothing can run out half-way, so no rollback is
//! ever needed. Frames left over go back to the allocator when the
//! reservation is dropped.

use alloc::vec::Vec;

use crate::{FrameAllocator, FrameError, FrameUse, PhysAddr};
use machvm_base::sync::{Locks, SpinLocks};

/// Frames set aside for one operation (see the module documentation).
///
/// ```
/// use machvm_frame::{FrameAllocator, FrameUse};
/// let frames = FrameAllocator::hosted(64 * 4096).unwrap();
/// let before = frames.free_frames();
/// {
///     let mut r = frames.reserve(3, FrameUse::Object).unwrap();
///     assert_eq!(frames.free_frames(), before - 3);
///     let pa = r.take().unwrap();
///     frames.free(pa);
/// } // the two frames not taken go back
/// assert_eq!(frames.free_frames(), before);
/// assert!(frames.reserve(1 << 20, FrameUse::Object).is_err());
/// assert_eq!(frames.free_frames(), before);
/// ```
#[must_use = "a reservation returns its frames when dropped"]
pub struct FrameReservation<'a, L: Locks = SpinLocks> {
    frames: &'a FrameAllocator<L>,
    what: FrameUse,
    held: Vec<PhysAddr>,
    /// One frame taken by [`ensure`](Self::ensure) for a single-step
    /// operation, kept out of `held` so that a fault allocates no vector.
    spare: Option<PhysAddr>,
    /// Made by [`FrameAllocator::reserve`]: running out means the count was
    /// wrong (asserted in debug builds; a release build allocates on).
    counted: bool,
}

impl<'a, L: Locks> FrameReservation<'a, L> {
    /// An empty reservation: [`take`](Self::take) allocates on demand and may
    /// fail. For single-step operations, which change nothing when their one
    /// allocation fails.
    pub fn on_demand(frames: &'a FrameAllocator<L>, what: FrameUse) -> FrameReservation<'a, L> {
        FrameReservation {
            frames,
            what,
            held: Vec::new(),
            spare: None,
            counted: false,
        }
    }

    /// A reserved frame, or, once none is left, a frame allocated now.
    pub fn take(&mut self) -> Result<PhysAddr, FrameError> {
        match self.held.pop().or_else(|| self.spare.take()) {
            Some(pa) => Ok(pa),
            None => {
                debug_assert!(!self.counted, "a frame reservation was undercounted");
                self.frames.alloc(self.what)
            }
        }
    }

    /// Frames still reserved.
    pub fn remaining(&self) -> usize {
        self.held.len() + usize::from(self.spare.is_some())
    }

    /// Reserves `n` more frames, all or none: on `ResourceShortage` the
    /// reservation and the allocator are as before.
    pub fn top_up(&mut self, n: u64) -> Result<(), FrameError> {
        let mut more = self.frames.reserve(n, self.what)?;
        // `more` pops in allocation order; ours are taken first.
        let mut fresh = core::mem::take(&mut more.held);
        fresh.append(&mut self.held);
        self.held = fresh;
        Ok(())
    }

    /// Makes sure `n` frames are held, allocating the missing ones now (all
    /// or none): a single-step operation takes its frame before it changes
    /// anything.
    pub fn ensure(&mut self, n: u64) -> Result<(), FrameError> {
        let have = self.remaining() as u64;
        if have >= n {
            return Ok(());
        }
        debug_assert!(!self.counted, "a frame reservation was undercounted");
        if n - have == 1 && self.spare.is_none() {
            self.spare = Some(self.frames.alloc(self.what)?);
            return Ok(());
        }
        self.top_up(n - have)
    }
}

impl<L: Locks> Drop for FrameReservation<'_, L> {
    fn drop(&mut self) {
        for pa in self.held.drain(..).chain(self.spare.take()) {
            self.frames.free(pa);
        }
    }
}

impl<L: Locks> FrameAllocator<L> {
    /// Reserves `n` frames for `what`, all or none: on `ResourceShortage`
    /// the allocator is as before. Taking more than `n` from it is a
    /// counting bug, asserted in debug builds.
    pub fn reserve(&self, n: u64, what: FrameUse) -> Result<FrameReservation<'_, L>, FrameError> {
        if n > 0 {
            self.run_reserve_hook();
        }
        let mut r = FrameReservation::on_demand(self, what);
        r.counted = true;
        let free = self.free_frames();
        let short = FrameError::ShortOf { wanted: n, free };
        let n = usize::try_from(n).map_err(|_| short)?;
        if n as u64 > free {
            return Err(short);
        }
        r.held
            .try_reserve_exact(n)
            .map_err(|_| FrameError::HostMemory)?;
        for _ in 0..n {
            // On failure `r` is dropped and frees what it took.
            let pa = self.alloc(what)?;
            r.held.push(pa);
        }
        // `take` pops from the end: hand frames out in the order the
        // allocator gave them (memory touched in ascending order streams
        // faster than the reverse).
        r.held.reverse();
        Ok(r)
    }
}
