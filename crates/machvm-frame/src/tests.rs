use super::*;
use alloc::vec::Vec;

extern crate std;

fn hosted(frames: u64) -> FrameAllocator {
    let fa = FrameAllocator::hosted(frames * PAGE_SIZE).unwrap();
    fa.verify().unwrap();
    fa
}

#[test]
fn metadata_fits_in_32_bytes() {
    // Linux's struct page is 64 B, FreeBSD's vm_page 104 B.
    assert!(
        core::mem::size_of::<VmPage>() <= 32,
        "{}",
        core::mem::size_of::<VmPage>()
    );
}

#[test]
fn alloc_free_roundtrip_and_exhaustion() {
    let fa = hosted(100);
    assert_eq!(fa.total_frames(), 100);
    let mut got = Vec::new();
    loop {
        match fa.alloc(FrameUse::Object) {
            Ok(pa) => {
                assert!(pa.is_page_aligned());
                got.push(pa);
                fa.verify().unwrap();
            }
            Err(e) => {
                assert_eq!(e, FrameError::OutOfFrames { order: 0 });
                assert_eq!(KernError::from(e), KernError::ResourceShortage);
                break;
            }
        }
    }
    assert_eq!(got.len(), 100);
    assert_eq!(fa.free_frames(), 0);
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 100, "a frame was handed out twice");
    // Free in an interleaved order to exercise coalescing.
    for pa in got.iter().step_by(2).chain(got.iter().skip(1).step_by(2)) {
        fa.free(*pa);
        fa.verify().unwrap();
    }
    assert_eq!(fa.free_frames(), 100);
}

#[test]
fn contiguous_aligned_blocks() {
    let fa = hosted(4096);
    let single = fa.alloc(FrameUse::Kernel).unwrap();
    let big = fa.alloc_order(LARGE_PAGE_ORDER, FrameUse::Object).unwrap();
    assert!(big.is_aligned(2 << 20), "{big:?}");
    assert_eq!(fa.page(big).unwrap().state(), FrameState::Object);
    assert_eq!(fa.page(big + PAGE_SIZE).unwrap().state(), FrameState::Tail);
    fa.verify().unwrap();
    assert_eq!(fa.free_frames(), 4096 - 1 - 512);
    assert_eq!(fa.frames_in_use(FrameUse::Object), 512);
    fa.free(big);
    fa.free(single);
    fa.verify().unwrap();
    assert_eq!(fa.free_frames(), 4096);
    assert_eq!(
        fa.alloc_order(MAX_ORDER + 1, FrameUse::Kernel),
        Err(FrameError::OrderTooLarge {
            order: MAX_ORDER + 1
        })
    );
}

#[test]
fn large_block_unavailable_when_fragmented() {
    let fa = hosted(512);
    // Pin one frame in the middle: no 2 MiB block can be formed any more.
    let mut all = Vec::new();
    while let Ok(pa) = fa.alloc(FrameUse::Object) {
        all.push(pa);
    }
    for pa in &all[1..] {
        fa.free(*pa);
    }
    assert_eq!(
        fa.alloc_order(LARGE_PAGE_ORDER, FrameUse::Object),
        Err(FrameError::OutOfFrames {
            order: LARGE_PAGE_ORDER
        })
    );
    fa.verify().unwrap();
}

#[test]
fn several_ranges_with_holes() {
    let mem = PhysMem::hosted(64 * PAGE_SIZE).unwrap();
    let b = mem.base().as_u64();
    let ranges = [
        PhysAddr::new(b)..PhysAddr::new(b + 10 * PAGE_SIZE),
        PhysAddr::new(b + 20 * PAGE_SIZE + 7)..PhysAddr::new(b + 40 * PAGE_SIZE),
    ];
    let fa = FrameAllocator::new(mem, &ranges).unwrap();
    fa.verify().unwrap();
    assert_eq!(fa.total_frames(), 10 + 19);
    let mut n = 0;
    while let Ok(pa) = fa.alloc(FrameUse::Object) {
        let off = (pa.as_u64() - b) / PAGE_SIZE;
        assert!(
            off < 10 || (21..40).contains(&off),
            "frame {off} is in a hole"
        );
        n += 1;
    }
    assert_eq!(n, 29);
}

#[test]
fn bad_ranges_refused() {
    let mem = PhysMem::hosted(8 * PAGE_SIZE).unwrap();
    let b = mem.base().as_u64();
    let outside = [PhysAddr::new(b)..PhysAddr::new(b + 9 * PAGE_SIZE)];
    assert_eq!(
        FrameAllocator::new(mem, &outside).err(),
        Some(KernError::InvalidArgument)
    );
    let mem = PhysMem::hosted(8 * PAGE_SIZE).unwrap();
    let overlap = [
        PhysAddr::new(b)..PhysAddr::new(b + 4 * PAGE_SIZE),
        PhysAddr::new(b + 3 * PAGE_SIZE)..PhysAddr::new(b + 5 * PAGE_SIZE),
    ];
    assert_eq!(
        FrameAllocator::new(mem, &overlap).err(),
        Some(KernError::InvalidArgument)
    );
    assert_eq!(PhysMem::hosted(0).err(), Some(KernError::InvalidArgument));
}

#[test]
#[cfg(not(debug_assertions))]
fn double_free_is_caught_by_verify() {
    let fa = hosted(8);
    let pa = fa.alloc(FrameUse::Object).unwrap();
    fa.free(pa);
    fa.free(pa);
    assert!(fa.verify().is_err());
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "invalid free")]
fn double_free_asserts_in_debug() {
    let fa = hosted(8);
    let pa = fa.alloc(FrameUse::Object).unwrap();
    fa.free(pa);
    fa.free(pa);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "invalid free")]
fn foreign_frame_asserts_in_debug() {
    let fa = hosted(8);
    fa.free(PhysAddr::new(0x1234_5000));
}

#[test]
fn fault_injection_fails_exactly_the_nth() {
    let fa = hosted(16);
    fa.fail_nth_allocation(3);
    let a = fa.alloc(FrameUse::Object).unwrap();
    let b = fa.alloc(FrameUse::Object).unwrap();
    assert_eq!(
        fa.alloc(FrameUse::Object),
        Err(FrameError::OutOfFrames { order: 0 })
    );
    let c = fa.alloc(FrameUse::Object).unwrap();
    for pa in [a, b, c] {
        fa.free(pa);
    }
    assert_eq!(fa.free_frames(), 16);
    fa.verify().unwrap();
}

#[test]
fn bytes_roundtrip_unaligned() {
    let fa = hosted(4);
    let pa = fa.alloc(FrameUse::Object).unwrap();
    let mem = fa.mem();
    mem.zero_page(pa);
    let data: Vec<u8> = (0..100u8).collect();
    mem.write(pa + 3, &data);
    let mut back = [0u8; 102];
    mem.read(pa + 2, &mut back);
    assert_eq!(back[0], 0);
    assert_eq!(&back[1..101], &data[..]);
    assert_eq!(back[101], 0);
    let q = fa.alloc(FrameUse::Object).unwrap();
    mem.copy_page(q, pa);
    mem.read(q + 3, &mut back[..100]);
    assert_eq!(&back[..100], &data[..]);
    mem.store_u64(q, 0xff00);
    assert_eq!(mem.fetch_and_u64(q, !0xf000), 0xff00);
    assert_eq!(mem.load_u64(q), 0x0f00);
}

#[test]
fn allocator_is_thread_safe() {
    let fa = std::sync::Arc::new(hosted(1024));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let fa = fa.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let a = fa.alloc(FrameUse::Object).unwrap();
                    let b = fa.alloc_order(2, FrameUse::PageTable).unwrap();
                    fa.free(a);
                    fa.free(b);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    fa.verify().unwrap();
    assert_eq!(fa.free_frames(), 1024);
}

#[test]
fn concurrent_alloc_and_free_never_hand_out_a_frame_twice() {
    // Regression: an allocated block's head used to keep looking like a
    // free head for a moment after the lock was dropped, so a concurrent
    // free of its buddy could merge it and hand it out again.
    let fa = std::sync::Arc::new(hosted(64));
    let hs: Vec<_> = (1..=4u32)
        .map(|t| {
            let fa = fa.clone();
            std::thread::spawn(move || {
                let mut held: Vec<PhysAddr> = Vec::new();
                for i in 0..20_000u64 {
                    if held.len() < 8 && i % 3 != 2 {
                        if let Ok(pa) = fa.alloc(FrameUse::Object) {
                            let p = fa.page(pa).unwrap();
                            assert_eq!(
                                p.owner(),
                                (0, PageIndex::new(0)),
                                "frame handed out while in use"
                            );
                            p.set_owner(t, PageIndex::new(i));
                            held.push(pa);
                        }
                    } else if let Some(pa) = held.pop() {
                        let p = fa.page(pa).unwrap();
                        let (owner, _) = p.owner();
                        assert_eq!(owner, t, "another thread got our frame");
                        p.set_owner(0, PageIndex::new(0));
                        fa.free(pa);
                    }
                }
                for pa in held {
                    fa.page(pa).unwrap().set_owner(0, PageIndex::new(0));
                    fa.free(pa);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    fa.verify().unwrap();
    assert_eq!(fa.free_frames(), 64);
}

#[test]
fn bytes_roundtrip_at_every_alignment_and_length() {
    let fa = hosted(2);
    let pa = fa.alloc_order(1, FrameUse::Object).unwrap();
    let mem = fa.mem();
    let mut model = alloc::vec![0u8; 2 * PAGE_SIZE as usize];
    mem.write(pa, &model);
    for off in 0..17usize {
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 63, 100, 4095, 4096, 4097] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + off) as u8).collect();
            mem.write(pa + off as u64 + 3, &data);
            model[off + 3..off + 3 + len].copy_from_slice(&data);
            let mut back = alloc::vec![0u8; len + 6];
            mem.read(pa + off as u64, &mut back);
            assert_eq!(back, model[off..off + len + 6], "off {off} len {len}");
        }
    }
}

#[test]
fn on_demand_reservations_hold_what_they_ensure_and_return_the_rest() {
    let fa = hosted(8);
    let mut r = crate::FrameReservation::on_demand(&fa, FrameUse::Object);
    r.ensure(1).unwrap();
    assert_eq!((r.remaining(), fa.free_frames()), (1, 7));
    r.ensure(1).unwrap();
    assert_eq!(fa.free_frames(), 7, "ensure takes only what is missing");
    r.ensure(3).unwrap();
    assert_eq!((r.remaining(), fa.free_frames()), (3, 5));
    assert!(r.ensure(9).is_err());
    assert_eq!((r.remaining(), fa.free_frames()), (3, 5), "all or none");
    let pa = r.take().unwrap();
    assert_eq!(r.remaining(), 2);
    fa.free(pa);
    drop(r);
    assert_eq!(fa.free_frames(), 8);
    fa.verify().unwrap();
}

#[test]
fn verify_names_each_broken_rule() {
    use core::sync::atomic::Ordering::Relaxed;
    let fa = hosted(8);
    let pa = fa.alloc_order(1, FrameUse::Object).unwrap();
    fa.verify().unwrap();
    fa.free.fetch_add(1, Relaxed);
    assert_eq!(fa.verify().unwrap_err().rule, FrameRule::Counters);
    fa.free.fetch_sub(1, Relaxed);
    fa.in_use[FrameUse::Object.index()].fetch_add(1, Relaxed);
    assert_eq!(fa.verify().unwrap_err().rule, FrameRule::Counters);
    fa.in_use[FrameUse::Object.index()].fetch_sub(1, Relaxed);
    // The block's tail made a head of its own: two blocks overlap.
    let tail = fa.frame_index(pa + PAGE_SIZE).unwrap();
    fa.pages[tail]
        .state
        .store(FrameState::Object as u8, Relaxed);
    assert_eq!(fa.verify().unwrap_err().rule, FrameRule::OneState);
    fa.pages[tail].state.store(FrameState::Tail as u8, Relaxed);
    fa.verify().unwrap();
    fa.free(pa);
    fa.verify().unwrap();
    // A free head that no longer says it heads a block of its list's order.
    let b = fa.buddy.lock();
    let k = (0..=MAX_ORDER)
        .find(|&k| b.heads[k as usize] != NIL)
        .unwrap();
    let head = b.heads[k as usize] as usize;
    drop(b);
    let order = fa.pages[head].order.load(Relaxed);
    fa.pages[head].order.store(NOT_HEAD, Relaxed);
    assert_eq!(fa.verify().unwrap_err().rule, FrameRule::FreeBlocks);
    fa.pages[head].order.store(order, Relaxed);
    fa.verify().unwrap();
    // An invalid free seen (debug builds also panic at it).
    fa.bad_frees.fetch_add(1, Relaxed);
    assert_eq!(fa.verify().unwrap_err().rule, FrameRule::NoInvalidFree);
}

/// Byte reads and writes at every alignment and length within two pages
/// agree with a plain byte array.
#[test]
fn byte_access_at_any_alignment_matches_a_model() {
    let mem = PhysMem::hosted(2 * PAGE_SIZE).unwrap();
    let base = PhysAddr::new(HOSTED_PHYS_BASE);
    let mut model = [0u8; 64];
    let mut seed = 1u8;
    for off in 0..24u64 {
        for len in 0..28usize {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(31).wrapping_add(7);
                    seed
                })
                .collect();
            mem.write(base + off, &data);
            model[off as usize..off as usize + len].copy_from_slice(&data);
            let mut back = [0u8; 64];
            mem.read(base, &mut back);
            assert_eq!(back, model, "after writing {len} bytes at {off}");
        }
    }
}

/// Two writers of different bytes of the same words never lose each
/// other's bytes (the edges are merged by compare-and-swap).
#[test]
fn writers_of_neighbouring_bytes_keep_each_others_bytes() {
    let mem = std::sync::Arc::new(PhysMem::hosted(PAGE_SIZE).unwrap());
    let base = PhysAddr::new(HOSTED_PHYS_BASE);
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let mem = mem.clone();
            std::thread::spawn(move || {
                for round in 0..20_000u32 {
                    // Thread 0 writes bytes 1..4 of every word, thread 1
                    // bytes 5..8: each edge is a partial word.
                    for w in 0..4u64 {
                        let v = [(round as u8) ^ (t as u8); 3];
                        mem.write(base + w * 8 + 1 + t * 4, &v);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut back = [0u8; 32];
    mem.read(base, &mut back);
    let last = (19_999u32 as u8, (19_999u32 as u8) ^ 1);
    for w in 0..4 {
        assert_eq!(&back[w * 8 + 1..w * 8 + 4], &[last.0; 3]);
        assert_eq!(&back[w * 8 + 5..w * 8 + 8], &[last.1; 3]);
    }
}

#[test]
fn wired_frames_are_counted_once_and_cannot_be_freed() {
    let frames = FrameAllocator::hosted(64 * 4096).unwrap();
    let pa = frames.alloc(FrameUse::Object).unwrap();
    assert!(frames.wire(pa));
    assert!(frames.wire(pa));
    assert_eq!(
        (frames.wired_frames(), frames.page(pa).unwrap().wire_count()),
        (1, 2)
    );
    frames.verify().unwrap();
    frames.unwire(pa);
    assert_eq!(frames.wired_frames(), 1);
    frames.unwire(pa);
    assert_eq!(frames.wired_frames(), 0);
    frames.free(pa);
    frames.verify().unwrap();
}

#[test]
fn freeing_a_wired_frame_is_refused() {
    let frames = FrameAllocator::hosted(64 * 4096).unwrap();
    let pa = frames.alloc(FrameUse::Object).unwrap();
    let free = frames.free_frames();
    assert!(frames.wire(pa));
    // Debug builds assert on an invalid free; either way it is refused.
    let freed = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| frames.free(pa)));
    assert_eq!(freed.is_err(), cfg!(debug_assertions));
    assert_eq!(frames.free_frames(), free, "a wired frame stays allocated");
    assert_eq!(frames.verify().unwrap_err().rule, FrameRule::NoInvalidFree);
}

#[test]
fn only_object_frames_wire_and_unwiring_an_unwired_frame_is_refused() {
    let frames = FrameAllocator::hosted(64 * 4096).unwrap();
    let table = frames.alloc(FrameUse::PageTable).unwrap();
    assert!(!frames.wire(table));
    assert_eq!(frames.wired_frames(), 0);
    assert_eq!(frames.verify().unwrap_err().rule, FrameRule::NoInvalidFree);
    let other = FrameAllocator::hosted(64 * 4096).unwrap();
    let pa = other.alloc(FrameUse::Object).unwrap();
    other.unwire(pa);
    assert_eq!(other.verify().unwrap_err().rule, FrameRule::NoInvalidFree);
}
