//! The kernel heap: a locked first-fit allocator over one region of RAM
//! (carved at boot, reached through the direct map), with an address-ordered
//! free list that coalesces neighbours on free.
//!
//! Invariants: every block and hole is 16-byte aligned and a multiple of 16
//! bytes; holes are sorted by address and never adjacent (they would have
//! merged); `used` is the sum of live block sizes.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

const GRAIN: usize = 16;

struct Hole {
    size: usize,
    next: *mut Hole,
}

struct Heap {
    first: *mut Hole,
    start: usize,
    end: usize,
    used: usize,
}

// SAFETY: the raw pointers are only touched under the heap's spin lock.
unsafe impl Send for Heap {}

/// The global allocator type; see the module docs.
pub struct LockedHeap(spin::Mutex<Heap>);

#[global_allocator]
static HEAP: LockedHeap = LockedHeap(spin::Mutex::new(Heap {
    first: ptr::null_mut(),
    start: 0,
    end: 0,
    used: 0,
}));

fn block_size(layout: &Layout) -> usize {
    layout.size().max(GRAIN).next_multiple_of(GRAIN)
}

/// Hands `[start, start + len)` to the heap. Called once, at boot.
///
/// # Safety
/// The range must be mapped read-write, unused by anything else for the rest
/// of the kernel's life, and 16-byte aligned.
pub(crate) unsafe fn init(start: usize, len: usize) {
    let mut h = HEAP.0.lock();
    assert!(h.end == 0, "heap initialised twice");
    let len = len & !(GRAIN - 1);
    let hole = start as *mut Hole;
    // SAFETY: the caller gives us this memory, aligned.
    unsafe {
        hole.write(Hole {
            size: len,
            next: ptr::null_mut(),
        })
    };
    h.first = hole;
    h.start = start;
    h.end = start + len;
}

/// Heap statistics: `(bytes in use, bytes managed)`.
pub fn usage() -> (usize, usize) {
    let h = HEAP.0.lock();
    (h.used, h.end - h.start)
}

// SAFETY: blocks come from disjoint holes of memory the heap owns; a block is
// never handed out twice (it leaves the free list), and `dealloc` gets back
// the layout it was allocated with, as GlobalAlloc requires.
unsafe impl GlobalAlloc for LockedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = block_size(&layout);
        let align = layout.align().max(GRAIN);
        let mut h = self.0.lock();
        let mut link: *mut *mut Hole = &mut h.first;
        // SAFETY: every hole in the list lies in heap memory and is aligned;
        // `link` always points at the list head or a live hole's `next`.
        unsafe {
            while !(*link).is_null() {
                let hole = *link;
                let hs = hole as usize;
                let he = hs + (*hole).size;
                let a = hs.next_multiple_of(align);
                if a.checked_add(size).is_some_and(|e| e <= he) {
                    let next = (*hole).next;
                    let back = he - (a + size);
                    let mut tail = next;
                    if back > 0 {
                        tail = (a + size) as *mut Hole;
                        tail.write(Hole { size: back, next });
                    }
                    if a > hs {
                        // The front part (a multiple of 16) stays a hole.
                        (*hole).size = a - hs;
                        (*hole).next = tail;
                    } else {
                        *link = tail;
                    }
                    h.used += size;
                    return a as *mut u8;
                }
                link = &mut (*hole).next;
            }
        }
        ptr::null_mut()
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let size = block_size(&layout);
        let start = p as usize;
        let mut h = self.0.lock();
        assert!(
            start >= h.start && start + size <= h.end,
            "heap: foreign free {start:#x}"
        );
        // SAFETY: as in `alloc`; the freed block is ours again (caller
        // contract) and is at least one `Hole` large.
        unsafe {
            let mut prev: *mut Hole = ptr::null_mut();
            let mut cur = h.first;
            while !cur.is_null() && (cur as usize) < start {
                prev = cur;
                cur = (*cur).next;
            }
            assert!(
                cur.is_null() || start + size <= cur as usize,
                "heap: double free or overlap at {start:#x}"
            );
            let new = start as *mut Hole;
            new.write(Hole { size, next: cur });
            if !cur.is_null() && start + size == cur as usize {
                (*new).size += (*cur).size;
                (*new).next = (*cur).next;
            }
            if prev.is_null() {
                h.first = new;
            } else if prev as usize + (*prev).size == start {
                (*prev).size += (*new).size;
                (*prev).next = (*new).next;
            } else {
                assert!(
                    prev as usize + (*prev).size < start,
                    "heap: double free at {start:#x}"
                );
                (*prev).next = new;
            }
        }
        h.used -= size;
    }
}
