//! Loom model checks of the frame allocator's locking: every interleaving
//! of the smallest races that matter. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p machvm-frame --test loom --release`
//! (`cargo xtask test` does).
#![cfg(loom)]

use std::ptr::NonNull;

use loom::sync::Arc;
use machvm_frame::{FrameAllocator, FrameError, FrameUse, PAGE_SIZE, PhysAddr, PhysMem};

/// Two frames of "RAM" at physical 0, so the allocator's span is exactly
/// two frames (one order-1 block) and loom tracks few objects.
fn two_frames() -> FrameAllocator {
    static mut RAM: [u64; 1024] = [0; 1024];
    // SAFETY: the buffer is 8 KiB, 8-aligned, lives for the program, and is
    // only reached through this PhysMem (the allocator never touches it).
    let mem = unsafe {
        let p = NonNull::new_unchecked((&raw mut RAM).cast::<u8>());
        PhysMem::direct_map(p, PhysAddr::new(0), 2 * PAGE_SIZE)
    };
    FrameAllocator::new(mem, &[PhysAddr::new(0)..PhysAddr::new(2 * PAGE_SIZE)]).unwrap()
}

/// An exact-fit allocation racing the free of its buddy: the allocated
/// block must never look free to the coalescing free (it once did, between
/// dropping the lock and marking the head in use, and was handed out twice).
#[test]
fn exact_fit_alloc_races_buddy_free() {
    loom::model(|| {
        let fa = Arc::new(two_frames());
        let a = fa.alloc(FrameUse::Object).unwrap();
        let b = fa.alloc(FrameUse::Object).unwrap();
        fa.free(b);
        let fa2 = fa.clone();
        let t = loom::thread::spawn(move || fa2.alloc(FrameUse::Object).unwrap());
        fa.free(a);
        let _x = t.join().unwrap();
        assert_eq!(fa.free_frames(), 1);
        fa.verify().unwrap();
        assert!(
            fa.alloc(FrameUse::Object).is_ok(),
            "the other frame is free"
        );
        assert_eq!(
            fa.alloc(FrameUse::Object).err(),
            Some(FrameError::OutOfFrames { order: 0 })
        );
    });
}

/// Two frees of buddies at once merge into one block exactly once.
#[test]
fn buddy_frees_race() {
    loom::model(|| {
        let fa = Arc::new(two_frames());
        let a = fa.alloc(FrameUse::Object).unwrap();
        let b = fa.alloc(FrameUse::Object).unwrap();
        let fa2 = fa.clone();
        let t = loom::thread::spawn(move || fa2.free(b));
        fa.free(a);
        t.join().unwrap();
        fa.verify().unwrap();
        assert_eq!(fa.free_frames(), 2);
        let big = fa.alloc_order(1, FrameUse::Kernel).unwrap();
        assert_eq!(big, PhysAddr::new(0), "the buddies merged");
    });
}

/// `verify` may run while another thread allocates or frees: the counters
/// it compares with the free lists change under the same lock (they once
/// changed after it, and a concurrent `verify` reported a miscount).
#[test]
fn verify_races_alloc_and_free() {
    loom::model(|| {
        let fa = Arc::new(two_frames());
        let a = fa.alloc(FrameUse::Object).unwrap();
        let fa2 = fa.clone();
        let t = loom::thread::spawn(move || {
            let b = fa2.alloc(FrameUse::Object).unwrap();
            fa2.free(b);
        });
        fa.verify().unwrap();
        t.join().unwrap();
        fa.free(a);
        fa.verify().unwrap();
        assert_eq!(fa.free_frames(), 2);
    });
}
