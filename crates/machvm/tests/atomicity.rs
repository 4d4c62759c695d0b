//! Atomicity and counting under fault injection and concurrency, from an
//! independent review of the ownership rework: every call either succeeds
//! or changes nothing (SPEC §3), a reservation covers every frame a call
//! takes even when other maps change shared windows meanwhile, and SPEC §6
//! holds after each call. Each test named after a finding failed before the
//! fix that followed the review.

mod common;

use common::*;
use machvm::{
    KernError, VmInherit, VmMap, VmProt, VmSystem, vm_copy, vm_map_copy, vm_read, vm_write,
};

fn audit_ok(vm: &VmSystem) {
    let a = vm.audit();
    assert_eq!(a.unreachable_pages, 0, "unreachable: {a:?}");
    assert_eq!(a.mergeable_neighbours, 0, "mergeable: {a:?}");
}

/// A misaligned copy of 16 TiB of untouched memory goes by bytes: it needs a
/// frame per destination page and fails with `ResourceShortage`, counting
/// by ranges (it used to collect every page into a list first, 32 GiB of
/// heap, and abort).
#[test]
fn a_misaligned_copy_of_16_tib_of_untouched_memory_fails_cleanly() {
    let vm = system();
    let m = vm.create_map().unwrap();
    let len = 1u64 << 44;
    let src = m.allocate(0, len, true).unwrap();
    let before = vm.statistics().free_count;
    let r = vm_map_copy(&m, &m, 0x6000_0000_0000 + 1, len, src, true, false);
    assert_eq!(r, Err(KernError::ResourceShortage));
    assert_eq!(vm.statistics().free_count, before);
    assert_eq!(m.entry_count(), 1);
    check(&vm, &[&m]);
}

/// An earlier entry's bypass during copy-in collapses a backing object into a
/// later, Share-shared entry's object; the later entry's eager copy then copies
/// pages `copyin_frames` never counted.
#[test]
fn copyin_bypass_collapse_grows_a_later_eager_copy() {
    let vm = system();
    let p = vm.create_map().unwrap();
    let a = p.allocate(0, 3 * P, true).unwrap();
    p.write_bytes(a, &[7u8; 3 * 4096]).unwrap();
    p.inherit(a + P, 2 * P, VmInherit::Share).unwrap();
    let snap = vm_read(&p, a, 3 * P).unwrap();
    p.write_bytes(a, &[1]).unwrap(); // E0 shadowed (X)
    p.write_bytes(a + 2 * P, &[2]).unwrap(); // E1 shadowed (T), T lacks page a+P
    drop(snap);
    audit_ok(&vm);
    p.inherit(a, P, VmInherit::None).unwrap();
    let c = p.fork().unwrap();
    check(&vm, &[&p, &c]);
    let snap2 = vm_read(&p, a, 3 * P).unwrap();
    check(&vm, &[&p, &c]);
    audit_ok(&vm);
    c.write_bytes(a + P, &[9]).unwrap();
    let mut buf = [0u8; 1];
    let dst = vm.create_map().unwrap();
    let at = snap2.copyout(&dst).map_err(|e| e.0).unwrap();
    dst.read_bytes(at + P, &mut buf).unwrap();
    assert_eq!(buf[0], 7);
}

/// The same through fork: an earlier Copy entry's bypass collapses the
/// backing into a later Copy entry that a Share sibling writes directly.
#[test]
fn fork_bypass_collapse_grows_a_later_eager_copy() {
    let vm = system();
    let p = vm.create_map().unwrap();
    let a = p.allocate(0, 3 * P, true).unwrap();
    p.write_bytes(a, &[7u8; 3 * 4096]).unwrap();
    p.inherit(a + P, 2 * P, VmInherit::Share).unwrap();
    let snap = vm_read(&p, a, 3 * P).unwrap();
    p.write_bytes(a, &[1]).unwrap();
    p.write_bytes(a + 2 * P, &[2]).unwrap();
    drop(snap);
    p.inherit(a, P, VmInherit::None).unwrap();
    let c = p.fork().unwrap(); // c: Share sibling of [a+P, a+3P)
    p.inherit(a, 3 * P, VmInherit::Copy).unwrap();
    let g = p.fork().unwrap();
    check(&vm, &[&p, &c, &g]);
    audit_ok(&vm);
}

/// `copyin_frames` counts a Share window's resident pages under the graph
/// lock, then reserves with the graph unlocked; a sibling writing fresh pages
/// of the window meanwhile grows the eager copy past the reservation. The
/// sibling's stores are placed exactly in that window by the allocator's
/// reserve hook.
#[test]
fn sibling_writes_during_reservation_outgrow_the_eager_copy() {
    let vm = system();
    let p = vm.create_map().unwrap();
    const N: u64 = 64;
    let r = p.allocate(0, N * P, true).unwrap();
    p.write_bytes(r, &vec![3u8; (N / 2 * P) as usize]).unwrap();
    p.inherit(r, N * P, VmInherit::Share).unwrap();
    let c = p.fork().unwrap();
    vm.context()
        .frames()
        .before_next_reserve(sibling_writes(&c, r, N));
    let s = vm_read(&p, r, N * P).unwrap();
    let at = s.copyout(&p).unwrap();
    assert_eq!(
        halves(&p, at, N),
        (3, 1),
        "the copy holds the sibling's stores"
    );
    p.deallocate(at, N * P).unwrap();
    check(&vm, &[&p, &c]);
}

/// Fork: `need` counts a Share window's resident pages under the graph
/// lock, then reserves with the graph unlocked; a sibling writing fresh pages
/// of the window meanwhile grows the eager copy past the reservation.
#[test]
fn sibling_writes_during_fork_reservation_outgrow_the_eager_copy() {
    let vm = system();
    let p = vm.create_map().unwrap();
    const N: u64 = 64;
    let r = p.allocate(0, N * P, true).unwrap();
    p.write_bytes(r, &vec![3u8; (N / 2 * P) as usize]).unwrap();
    p.inherit(r, N * P, VmInherit::Share).unwrap();
    let c = p.fork().unwrap();
    // Copy-inherited in the next fork: it eager-copies the window the
    // sibling c writes directly.
    p.inherit(r, N * P, VmInherit::Copy).unwrap();
    vm.context()
        .frames()
        .before_next_reserve(sibling_writes(&c, r, N));
    let child = p.fork().unwrap();
    assert_eq!(
        halves(&child, r, N),
        (3, 1),
        "the child holds the sibling's stores"
    );
    c.write_bytes(r + (N - 1) * P, &[7]).unwrap();
    let mut last = [0u8];
    child.read_bytes(r + (N - 1) * P, &mut last).unwrap();
    assert_eq!(last, [1], "and is a copy");
    check(&vm, &[&p, &c, &child]);
}

/// A hook that stores 1 into the first byte of every page of the upper half
/// of `c`'s `n`-page range at `r` (pages nothing had touched).
fn sibling_writes(c: &VmMap, r: u64, n: u64) -> impl FnOnce() + Send + 'static {
    let c = c.clone();
    move || {
        for i in n / 2..n {
            c.write_bytes(r + i * P, &[1]).unwrap();
        }
    }
}

/// The first byte of the first page of each half of `n` pages at `at`.
fn halves(m: &VmMap, at: u64, n: u64) -> (u8, u8) {
    let (mut lo, mut hi) = ([0u8], [0u8]);
    m.read_bytes(at, &mut lo).unwrap();
    m.read_bytes(at + n / 2 * P, &mut hi).unwrap();
    (lo[0], hi[0])
}

/// Fork's Share path shadows a copy-on-write entry's whole window even when
/// others see only part of it; a later store to a page nobody else sees is
/// then copied (the fault path would have taken that run over).
#[test]
fn share_fork_shadows_pages_nobody_else_sees() {
    let vm = system();
    let p = vm.create_map().unwrap();
    let a = p.allocate(0, 8 * P, true).unwrap();
    p.write_bytes(a, &vec![1u8; (8 * P) as usize]).unwrap();
    let c = p.fork().unwrap();
    c.deallocate(a + P, 7 * P).unwrap(); // c still sees page 0 only
    p.inherit(a, 8 * P, VmInherit::Share).unwrap();
    let g = p.fork().unwrap();
    let cow = vm.statistics().cow_faults;
    p.write_bytes(a + 5 * P, &[2]).unwrap(); // nobody but p (and sibling g) sees page 5
    let mut b = [0u8; 1];
    g.read_bytes(a + 5 * P, &mut b).unwrap();
    assert_eq!(b[0], 2);
    check(&vm, &[&p, &c, &g]);
    assert_eq!(
        vm.statistics().cow_faults,
        cow,
        "a page nobody else could see was copied"
    );
}

/// A one-page store that runs out of frames still creates the entry's
/// object (and, copy-on-write, clips and shadows it) before failing: the
/// failed call changes region().shadow_depth and entry counts, and the
/// untouched entry can no longer merge with a new untouched neighbour.
#[test]
fn a_failed_one_page_store_leaves_an_object_behind() {
    let vm = system();
    let m = vm.create_map().unwrap();
    let a = m.allocate(A, P, false).unwrap();
    let before = m.region(a).unwrap();
    vm.context().frames().fail_nth_allocation(1);
    assert_eq!(m.write_bytes(a, &[1]), Err(KernError::ResourceShortage));
    vm.context().frames().fail_nth_allocation(0);
    let after = m.region(a).unwrap();
    m.allocate(A + P, P, false).unwrap();
    println!(
        "before {before:?}\nafter  {after:?}\nentries {}",
        m.entry_count()
    );
    assert_eq!(before, after, "the failed store changed the region");
    assert_eq!(
        m.entry_count(),
        1,
        "two never-touched neighbours stay apart"
    );
}

#[test]
fn a_failed_one_page_cow_store_clips_and_shadows() {
    let vm = system();
    let p = vm.create_map().unwrap();
    let a = p.allocate(A, 4 * P, false).unwrap();
    p.write_bytes(a, &vec![1u8; (4 * P) as usize]).unwrap();
    let c = p.fork().unwrap();
    c.deallocate(a + 2 * P, 2 * P).unwrap();
    let (e0, r0) = (p.entry_count(), p.region(a).unwrap());
    vm.context().frames().fail_nth_allocation(1);
    assert_eq!(p.write_bytes(a, &[2]), Err(KernError::ResourceShortage));
    vm.context().frames().fail_nth_allocation(0);
    println!(
        "entries {e0} -> {}, region {r0:?} -> {:?}",
        p.entry_count(),
        p.region(a).unwrap()
    );
    assert_eq!((e0, r0), (p.entry_count(), p.region(a).unwrap()));
    check(&vm, &[&p, &c]);
}

// ---------- fault-injection sweeps ----------

#[derive(Debug, PartialEq, Eq)]
struct Obs {
    regions: Vec<(u64, u64, u32, u32, VmInherit, bool)>,
    bytes: Vec<u64>,
    free: u64,
}

fn observe(vm: &VmSystem, maps: &[&VmMap], read: bool) -> Obs {
    let mut o = Obs {
        regions: vec![],
        bytes: vec![],
        free: vm.statistics().free_count,
    };
    for m in maps {
        for r in regions(m) {
            o.regions.push((
                r.start,
                r.size,
                r.protection.bits(),
                r.max_protection.bits(),
                r.inheritance,
                r.shared,
            ));
            if read && r.protection.contains(VmProt::READ) {
                o.bytes.push(fnv(&peek(m, r.start, r.size as usize)));
            }
        }
    }
    o
}

struct World {
    vm: VmSystem,
    maps: Vec<VmMap>,
    keep: Vec<machvm::VmMapCopy>,
}

/// For k = 1.., builds a fresh world, fails the k-th allocation of `op`, and
/// checks: on error nothing observable changed; always the invariants and the
/// audit. Stops once `op` succeeds without reaching the k-th allocation.
fn sweep(
    name: &str,
    ram: u64,
    setup: impl Fn(&VmSystem) -> World,
    op: impl Fn(&World) -> Result<(), KernError>,
) {
    for k in 1..200u64 {
        // The bytes before the call, from an identical world (reading
        // untouched memory would zero-fill it and hide those paths).
        let reference = setup(&VmSystem::hosted(ram));
        let ref_maps: Vec<&VmMap> = reference.maps.iter().collect();
        let want_bytes = observe(&reference.vm, &ref_maps, true).bytes;
        let w = setup(&VmSystem::hosted(ram));
        let vm = &w.vm;
        let maps: Vec<&VmMap> = w.maps.iter().collect();
        let before = observe(vm, &maps, false);
        let hit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = hit.clone();
        vm.context().frames().fail_nth_allocation_with(k, move || {
            h.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        let r = op(&w);
        let reached = hit.load(std::sync::atomic::Ordering::SeqCst);
        vm.context().frames().fail_nth_allocation(0);
        if r.is_err() {
            let after = observe(vm, &maps, false);
            assert_eq!(
                before, after,
                "{name}: k={k}: failed with {r:?} and changed something"
            );
            let got = observe(vm, &maps, true).bytes;
            assert_eq!(
                want_bytes, got,
                "{name}: k={k}: failed with {r:?} and changed bytes"
            );
        }
        check(vm, &maps);
        let a = vm.audit();
        assert!(
            a.unreachable_pages == 0 && a.mergeable_neighbours == 0,
            "{name}: k={k} ({r:?}): {a:?}"
        );
        if !reached {
            eprintln!("{name}: succeeded at k={k}: {r:?}");
            assert!(r.is_ok(), "{name}: fails without injection: {r:?}");
            return;
        }
    }
}

fn world(vm: &VmSystem, n: usize) -> World {
    World {
        vm: vm.clone(),
        maps: (0..n).map(|_| vm.create_map().unwrap()).collect(),
        keep: vec![],
    }
}

const A: u64 = 0x10_0000;

fn fill(m: &VmMap, at: u64, pages: u64, seed: u8) {
    let v: Vec<u8> = (0..pages * P)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    m.write_bytes(at, &v).unwrap();
}

/// A 16-page region, pages 0..12 written, a snapshot of pages 4..8 alive,
/// a Share sibling over pages 12..16.
fn rich(vm: &VmSystem) -> World {
    let mut w = world(vm, 2);
    let m = &w.maps[0];
    m.allocate(A, 16 * P, false).unwrap();
    fill(m, A, 12, 1);
    w.keep.push(vm_read(m, A + 4 * P, 4 * P).unwrap());
    m.inherit(A + 12 * P, 4 * P, VmInherit::Share).unwrap();
    m.inherit(A, 12 * P, VmInherit::None).unwrap();
    let c = m.fork().unwrap();
    fill(&c, A + 12 * P, 2, 9);
    m.inherit(A, 12 * P, VmInherit::Copy).unwrap();
    w.maps[1] = c;
    w
}

#[test]
fn sweep_write_bytes() {
    sweep("write_bytes", 4 << 20, rich, |w| {
        w.maps[0].write_bytes(A + 100, &vec![0xEE; (15 * P) as usize])
    });
}

#[test]
fn sweep_read_bytes_untouched() {
    sweep("read_bytes", 4 << 20, rich, |w| {
        let mut b = vec![0u8; (5 * P) as usize];
        w.maps[0].read_bytes(A + 10 * P + 5, &mut b)
    });
}

#[test]
fn sweep_vm_copy_overlapping_misaligned() {
    sweep("vm_copy", 4 << 20, rich, |w| {
        vm_copy(&w.maps[0], A + 1000, 9 * P, A + 2 * P + 1000)
    });
}

#[test]
fn sweep_vm_copy_overlapping_shifted() {
    sweep("vm_copy2", 4 << 20, rich, |w| {
        vm_copy(&w.maps[0], A + 2 * P + 7, 9 * P, A + 5)
    });
}

#[test]
fn sweep_vm_copy_into_share() {
    sweep("vm_copy3", 4 << 20, rich, |w| {
        vm_copy(&w.maps[0], A, 6 * P, A + 10 * P)
    });
}

#[test]
fn sweep_map_copy_dst_alloc_src_destroy() {
    sweep("vm_map_copy", 4 << 20, rich, |w| {
        vm_map_copy(
            &w.maps[1],
            &w.maps[0],
            0x40_0000 + 300,
            10 * P + 17,
            A + 300,
            true,
            true,
        )
    });
}

#[test]
fn sweep_map_copy_same_map_dst_alloc() {
    sweep("vm_map_copy same", 4 << 20, rich, |w| {
        vm_map_copy(
            &w.maps[0],
            &w.maps[0],
            A + 14 * P + 8,
            10 * P,
            A + 8,
            true,
            false,
        )
    });
}

#[test]
fn sweep_fork() {
    sweep("fork", 4 << 20, rich, |w| w.maps[0].fork().map(drop));
}

#[test]
fn sweep_vm_read_copyout() {
    sweep("copyout", 4 << 20, rich, |w| {
        let c = vm_read(&w.maps[0], A + 123, 13 * P)?;
        c.copyout(&w.maps[1]).map(drop).map_err(|e| e.0)
    });
}

#[test]
fn sweep_vm_write() {
    sweep("vm_write", 4 << 20, rich, |w| {
        let c = vm_read(&w.maps[1], A + 12 * P, 4 * P)?;
        vm_write(&w.maps[0], A + 3, c)
    });
}

#[test]
fn sweep_fork_copy_of_shared() {
    let setup = |vm: &VmSystem| {
        let w = rich(vm);
        w.maps[0].inherit(A, 16 * P, VmInherit::Copy).unwrap();
        w
    };
    sweep("fork2", 4 << 20, setup, |w| w.maps[0].fork().map(drop));
}

/// Two pages at `a` of `p`, where a count taken before chain shortening is
/// 0 and shortening raises it: page 0 (inherited None) shadowed by X over
/// O, page 1 (Share) an empty shadow T over O shared with `c`; O is held
/// by the two shadows only. Bypassing X collapses O into T, which then holds
/// page 1 — a page an eager copy of T's window must copy.
fn zero_count_raised_by_shortening(vm: &VmSystem) -> (VmMap, VmMap, u64) {
    let p = vm.create_map().unwrap();
    let a = p.allocate(0, 2 * P, true).unwrap();
    p.write_bytes(a, &[7u8; 2 * 4096]).unwrap(); // O: pages 0, 1
    p.inherit(a, P, VmInherit::None).unwrap();
    p.inherit(a + P, P, VmInherit::Share).unwrap();
    let snap = vm_read(&p, a, 2 * P).unwrap(); // both entries NeedsCopy on O
    p.write_bytes(a, &[1]).unwrap(); // X over O[0,1), page 0 copied up
    let c = p.fork().unwrap(); // Share: empty shadow T over O[1,2)
    drop(snap);
    check(vm, &[&p, &c]);
    (p, c, a)
}

/// A fork whose first count is 0 and whose chain shortening then raises
/// it. Only `settle`'s "moved" result makes the reservation recount here:
/// the graph was never unlocked.
#[test]
fn fork_recounts_when_shortening_raises_a_zero_count() {
    let vm = system();
    let (p, c, a) = zero_count_raised_by_shortening(&vm);
    p.inherit(a, 2 * P, VmInherit::Copy).unwrap();
    let g = p.fork().unwrap();
    check(&vm, &[&p, &c, &g]);
    assert_eq!(peek(&g, a + P, 1), vec![7]);
    c.write_bytes(a + P, &[9]).unwrap();
    assert_eq!(peek(&g, a + P, 1), vec![7], "the child's page is a copy");
}

/// The copy-in twin: `vm_read`'s first count is 0 and chain shortening
/// raises it without the graph ever being unlocked.
#[test]
fn copy_in_recounts_when_shortening_raises_a_zero_count() {
    let vm = system();
    let (p, c, a) = zero_count_raised_by_shortening(&vm);
    let s = vm_read(&p, a, 2 * P).unwrap();
    check(&vm, &[&p, &c]);
    c.write_bytes(a + P, &[9]).unwrap();
    let at = s.copyout(&p).unwrap();
    assert_eq!(peek(&p, at, 1), vec![1]);
    assert_eq!(peek(&p, at + P, 1), vec![7], "the copy predates c's store");
    check(&vm, &[&p, &c]);
}

/// The same fork failing for lack of frames at each allocation: the
/// shortening it ran before its second count changes nothing visible.
#[test]
fn a_fork_failing_after_shortening_changes_nothing_visible() {
    let mut failed = 0;
    for k in 1..8 {
        let vm = system();
        let (p, c, a) = zero_count_raised_by_shortening(&vm);
        p.inherit(a, 2 * P, VmInherit::Copy).unwrap();
        let _warm = (snapshot(&vm, &p), snapshot(&vm, &c));
        let before = (snapshot(&vm, &p), snapshot(&vm, &c));
        vm.context().frames().fail_nth_allocation(k);
        let r = p.fork();
        vm.context().frames().fail_nth_allocation(0);
        if r.is_ok() {
            continue;
        }
        failed += 1;
        assert_eq!(before, (snapshot(&vm, &p), snapshot(&vm, &c)), "k={k}");
        check(&vm, &[&p, &c]);
        audit_ok(&vm);
    }
    assert!(failed > 1, "the injected failures never reached the fork");
}
