//! Regressions of paging found by an independent review of its first
//! version (each failed before its fix): a store failing when another
//! map's pageout ran inside its reservation; one-page loads and stores
//! racing the pageout daemon; stores that reserved nothing never paging
//! out; a wiring or fault that failed for page tables after paging out;
//! a map's root table and a fork's never paged out for; (second review)
//! a fault on the shared path needing a page table failing at once; a
//! fork failing for its eager copies after paging out for its root table.

mod common;

use common::{P, room, wire_until_full};
use machvm::{Access, KernError, VmProt, VmSystem};

const RW: VmProt = VmProt::READ.union(VmProt::WRITE);

/// A system of 256 frames and `swap` pages of swap whose RAM is all
/// wired from `a` on (a map's entry there) but for the last free frames,
/// which hold pageable pages written in one call (nothing paged out for
/// them): no frame free. Returns the system, the map, `a` and the pages
/// wired.
fn ram_full(swap: u64, pages: u64) -> (VmSystem, machvm::VmMap, u64, u64) {
    let vm = VmSystem::hosted_with_swap(256 * P, swap * P);
    vm.set_consistency_checks(true);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0x20_0000, pages * P, false).unwrap();
    let n = wire_until_full(&vm, &map, a, 500);
    let free = vm.statistics().free_count;
    assert!(n > 100 && free < 4, "{:?}", vm.statistics());
    if free > 0 {
        map.write_bytes(a + n * P, &vec![0x5a; (free * P) as usize])
            .unwrap();
    }
    let s = vm.statistics();
    assert_eq!((s.free_count, s.pageouts), (0, 0), "{s:?}");
    (vm, map, a, n)
}

/// RAM is all wired except one pageable page; wiring a page at an address
/// that needs new page tables cannot succeed (1 page + tables > 1 frame),
/// so ResourceShortage is right — but SPEC §7/§8 want it atomic: nothing
/// paged out, free_count and swap_free_pages as before.
#[test]
fn a_wire_that_fails_for_page_tables_pages_nothing_out() {
    // Everything in one 2 MiB table's span.
    let (vm, map, _, _) = ram_full(64, 512);
    // A far range: new PDPT/PD/PT needed.
    let far = 0x4000_0000_0000u64;
    map.allocate(far, P, false).unwrap();
    let before = (room(&vm), vm.statistics().pageouts);
    let r = map.wire(far, P, RW);
    assert_eq!(r, Err(KernError::ResourceShortage));
    assert_eq!(
        (room(&vm), vm.statistics().pageouts),
        before,
        "the failed wire paged out / changed free frames"
    );
}

/// The same through the fault handler (Enter::Required).
#[test]
fn a_fault_that_fails_for_page_tables_pages_nothing_out() {
    let (vm, map, _, _) = ram_full(64, 512);
    let far = 0x4000_0000_0000u64;
    map.allocate(far, P, false).unwrap();
    let before = (room(&vm), vm.statistics().pageouts);
    let r = map.fault(far, Access::Write);
    assert_eq!(r, Err(KernError::ResourceShortage));
    assert_eq!(
        (room(&vm), vm.statistics().pageouts),
        before,
        "the failed fault paged out / changed free frames"
    );
}

/// RAM is full, every object page pageable, swap nearly empty: a new map
/// (one frame for its top-level table) could be had by paging one page
/// out, yet create_map and fork fail (SPEC §8: ResourceShortage only when
/// RAM and store together cannot hold the pages plus their tables).
#[test]
fn create_map_and_fork_page_out_for_their_table() {
    let (vm, map, a, n) = ram_full(256, 512);
    // Unwired: every object page is pageable now, and no frame is free.
    map.wire(a, n * P, VmProt::NONE).unwrap();
    let s = vm.statistics();
    assert_eq!((s.free_count, s.wire_count > 0), (0, true), "{s:?}");
    assert!(s.active_count >= n, "{s:?}");
    // Wiring a resident page again needs no frame but its table bound.
    let rewire = map.wire(a, P, RW);
    let other = vm.create_map().map(|_| ());
    let child = map.fork().map(|_| ());
    assert_eq!(
        (rewire, other, child),
        (Ok(()), Ok(()), Ok(())),
        "wire, create_map, fork"
    );
}

/// Sliding two-page stores (each overlapping the page the previous one
/// wrote): one page missing per call, written whole, takes the
/// `missing.len() <= 1` on-demand path into `overwrite_run`, whose
/// `frames.ensure` allocates without `make_room`. RAM+swap hold 4x the
/// working set, yet the stores run out once the free frames drain.
#[test]
fn sliding_two_page_stores_never_run_out_with_swap_to_spare() {
    let vm = VmSystem::hosted_with_swap(512 * P, 4096 * P);
    vm.set_consistency_checks(true);
    let map = vm.create_map().unwrap();
    let pages = 1024u64;
    let a = map.allocate(0, (pages + 1) * P, true).unwrap();
    for k in 0..pages {
        let data = vec![(k % 251) as u8 + 1; 2 * P as usize];
        if let Err(e) = map.write_bytes(a + k * P, &data) {
            panic!("store {k} failed: {e:?}, {:?}", vm.statistics());
        }
    }
    let mut b = vec![0u8; P as usize];
    for k in 0..pages {
        map.read_bytes(a + k * P, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == (k % 251) as u8 + 1), "page {k}");
    }
}

/// Another thread's pageout (the daemon, or another call's make_room) in
/// the window where a multi-page write_bytes has its graph unlocked to
/// reserve frames: the pages it found translated writable (and so did not
/// put in `missing`) are paged out meanwhile; store_in then finds no
/// written frame for them.
#[test]
fn a_pageout_while_write_bytes_reserves_does_not_fail_the_store() {
    let vm = VmSystem::hosted_with_swap(256 * P, 1024 * P);
    vm.set_consistency_checks(true);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 16 * P, true).unwrap();
    map.write_bytes(a, &vec![1u8; 8 * P as usize]).unwrap();
    let daemon = vm.clone();
    vm.context().frames().before_next_reserve(move || {
        let n = daemon.pageout(u64::MAX);
        assert!(n >= 8, "the daemon paged out {n}");
    });
    let before = vm.statistics().free_count;
    let r = map.write_bytes(a, &vec![2u8; 16 * P as usize]);
    let mut b = vec![0u8; 16 * P as usize];
    map.read_bytes(a, &mut b).unwrap();
    let twos = b.iter().filter(|&&x| x == 2).count();
    assert_eq!(
        (r, twos),
        (Ok(()), 16 * P as usize),
        "free before {before}, {:?}",
        vm.statistics()
    );
}

/// in_one_page's exclusive path asks the pmap whether the page is
/// translated *before* it locks the graph: a pageout (the daemon here)
/// that runs in between evicts the page, and frame_at then finds it paged
/// out although `mapped` said translated (debug: assertion; release:
/// KernError::Failure / ProtectionFailure for a plain load or store).
#[test]
fn one_page_loads_and_stores_race_the_pageout_daemon() {
    let vm = VmSystem::hosted_with_swap(256 * P, 1024 * P);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.write_bytes(a, &vec![7u8; 4 * P as usize]).unwrap();
    // Bounded by iterations: the accesses and the pageouts interleave as
    // the scheduler lets them; every outcome must be right.
    const N: u64 = 20_000;
    let mut threads = Vec::new();
    {
        let vm = vm.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..N {
                vm.pageout(u64::MAX);
            }
            Ok::<(), String>(())
        }));
    }
    for t in 0..2u64 {
        let map = map.clone();
        threads.push(std::thread::spawn(move || {
            let mut b = [0u8; 8];
            for i in 0..N {
                let va = a + 100;
                let r = if (i + t) % 2 == 0 {
                    map.read_bytes(va, &mut b).map(|()| b == [7u8; 8])
                } else {
                    map.write_bytes(va, &[7u8; 8]).map(|()| true)
                };
                match r {
                    Ok(true) => {}
                    other => return Err(format!("access {i} at {va:#x}: {other:?}")),
                }
            }
            Ok(())
        }));
    }
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|p| format!("panic: {:?}", p.downcast_ref::<String>()))
        })
        .collect();
    for r in results {
        assert_eq!(r, Ok(Ok(())));
    }
}

/// No frame free, every object page pageable, swap nearly empty. A load
/// from an untouched page of an entry that already has an object goes the
/// shared fast path (the zero frame), whose pmap step needs a new page
/// table: the enter fails with NoTableFrame and, with Enter::Required, the
/// fault answers ResourceShortage at once — the shared path never falls
/// back to the exclusive path, which would page one page out for the
/// table. SPEC §8: a call RAM + swap can hold must not fail.
#[test]
fn a_shared_path_fault_that_needs_a_page_table_pages_out_for_it() {
    // One entry over two 2 MiB page-table spans.
    let (vm, map, a, n) = ram_full(256, 1024);
    map.wire(a, n * P, VmProt::NONE).unwrap();
    let s = vm.statistics();
    assert_eq!(s.free_count, 0, "{s:?}");
    // The second span has no page table yet; the entry has its object.
    let far = a + 0x20_0000;
    let read = map.fault(far, Access::Read);
    // The same page's store goes the exclusive path (no frame for the
    // claim), which pages out for the frame and the table: it succeeds.
    let write = map.fault(far, Access::Write);
    assert_eq!((read, write), (Ok(()), Ok(())), "{:?}", vm.statistics());
}

/// fork makes room for the child's root table (new_pmap, 1b4e4fc) before
/// it counts the wired pages it must copy at once. When that copy cannot
/// be had (RAM + swap too small), fork fails with ResourceShortage — after
/// new_pmap already paged pages out: swap_free_pages and free_count
/// changed, against "On ResourceShortage nothing has changed" (fork's own
/// doc) and SPEC §8.
#[test]
fn a_fork_that_fails_for_its_eager_copies_pages_nothing_out() {
    let (vm, map, a, n) = ram_full(16, 512);
    // A few pages become pageable; still no frame free.
    map.wire(a + (n - 12) * P, 12 * P, VmProt::NONE).unwrap();
    let s = vm.statistics();
    assert_eq!(s.free_count, 0, "{s:?}");
    let before = (s.free_count, s.swap_free_pages, s.pageouts);
    // The child must copy ~n - 12 wired pages now: far more than RAM + swap.
    let r = map.fork().map(|_| ());
    let s = vm.statistics();
    assert_eq!(r, Err(machvm::KernError::ResourceShortage));
    assert_eq!(
        (s.free_count, s.swap_free_pages, s.pageouts),
        before,
        "the failed fork paged out / changed free frames: {s:?}"
    );
}
