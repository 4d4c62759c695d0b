//! SPEC §7: `VmMap::wire`, rule by rule — the checks in their order,
//! atomicity, residency without faults, nesting per page, the statistics,
//! and what copies, forks and deallocation do with wired pages.

mod common;

use common::{P, check, snapshot};
use machvm::{
    FrameUse, KernError, VmInherit, VmMap, VmProt, VmSystem, vm_copy, vm_map_copy, vm_read,
    vm_write,
};

const RW: VmProt = VmProt::DEFAULT;

fn system(bytes: u64) -> VmSystem {
    let vm = VmSystem::hosted(bytes);
    vm.set_consistency_checks(true);
    vm
}

fn wired(map: &VmMap, addr: u64) -> u64 {
    map.region(addr).unwrap().wired_pages
}

/// `read_bytes` and `write_bytes` over `[a, a + len)` take no fault.
#[track_caller]
fn no_faults(vm: &VmSystem, map: &VmMap, a: u64, len: u64) {
    let before = vm.statistics().faults;
    let mut buf = vec![0; len as usize];
    map.read_bytes(a, &mut buf).unwrap();
    map.write_bytes(a, &buf).unwrap();
    assert_eq!(vm.statistics().faults, before, "an access faulted");
}

#[test]
fn checks_come_in_spec_order() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.protect(a, P, false, VmProt::READ).unwrap();
    let bad = VmProt::from_bits_retain(0x40);
    // The first snapshot's reads build page tables; the second sees them.
    snapshot(&vm, &map);
    let before = snapshot(&vm, &map);
    // Bad bits, even on a hole: InvalidArgument.
    assert_eq!(
        map.wire(0x7000_0000, P, bad),
        Err(KernError::InvalidArgument)
    );
    assert_eq!(
        map.wire(u64::MAX - P, 4 * P, RW),
        Err(KernError::InvalidArgument)
    );
    // A hole, even for an access the protection lacks: InvalidAddress.
    assert_eq!(
        map.wire(a, 8 * P, VmProt::ALL),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(map.wire(1 << 60, P, RW), Err(KernError::InvalidAddress));
    // The first page is read-only.
    assert_eq!(map.wire(a, 2 * P, RW), Err(KernError::ProtectionFailure));
    // Unwiring pages not wired.
    assert_eq!(
        map.wire(a, P, VmProt::NONE),
        Err(KernError::InvalidArgument)
    );
    assert_eq!(map.wire(a, 0, bad), Ok(()));
    assert_eq!(snapshot(&vm, &map), before);
    check(&vm, &[&map]);
}

#[test]
fn a_wiring_makes_every_page_resident_and_entered() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    let tables = || vm.context().frames().frames_in_use(FrameUse::PageTable);
    let (before, t0) = (vm.statistics(), tables());
    map.wire(a + 2 * P, 4 * P, VmProt::READ).unwrap();
    let (after, t1) = (vm.statistics(), tables());
    // Wired frames count once each, page tables with them (as Mach's do).
    assert_eq!(after.wire_count - before.wire_count, 4 + (t1 - t0));
    assert_eq!(
        after.active_count, before.active_count,
        "wired pages are not active"
    );
    assert_eq!(wired(&map, a + 2 * P), 4);
    assert_eq!(wired(&map, a), 0);
    assert_eq!(map.region(a + 2 * P).unwrap().resident_pages, 4);
    no_faults(&vm, &map, a + 2 * P, 4 * P);
    check(&vm, &[&map]);
    map.wire(a + 2 * P, 4 * P, VmProt::NONE).unwrap();
    assert_eq!(wired(&map, a), 0);
    let s = vm.statistics();
    assert_eq!(s.wire_count, before.wire_count + (tables() - t0));
    assert_eq!(s.active_count, before.active_count + 4, "active again");
    check(&vm, &[&map]);
}

#[test]
fn wiring_nests_per_page() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 6 * P, true).unwrap();
    map.wire(a, 4 * P, RW).unwrap();
    map.wire(a + 2 * P, 4 * P, RW).unwrap();
    map.wire(a, 6 * P, VmProt::NONE).unwrap();
    // Only pages 2 and 3 were wired twice.
    assert_eq!(wired(&map, a), 0);
    assert_eq!(map.region(a + 2 * P).unwrap().start, a + 2 * P);
    assert_eq!(wired(&map, a + 2 * P), 2);
    assert_eq!(wired(&map, a + 4 * P), 0);
    assert_eq!(
        map.wire(a, 6 * P, VmProt::NONE),
        Err(KernError::InvalidArgument)
    );
    map.wire(a + 2 * P, 2 * P, VmProt::NONE).unwrap();
    assert_eq!(wired(&map, a + 2 * P), 0);
    // The entries merge back into one.
    assert_eq!(map.region(a).unwrap().size, 6 * P);
    assert_eq!(vm.audit().mergeable_neighbours, 0);
    check(&vm, &[&map]);
}

#[test]
fn a_write_wiring_copies_copy_on_write_pages_now() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.write_bytes(a, &[1; 4 * P as usize]).unwrap();
    let child = map.fork().unwrap();
    let cow = vm.statistics().cow_faults;
    map.wire(a, 4 * P, RW).unwrap();
    assert_eq!(vm.statistics().cow_faults, cow + 4, "copied at wiring time");
    no_faults(&vm, &map, a, 4 * P);
    map.write_bytes(a, &[2; 4 * P as usize]).unwrap();
    let mut buf = [0u8; 1];
    child.read_bytes(a + 3 * P, &mut buf).unwrap();
    assert_eq!(buf, [1], "the child keeps its copy");
    check(&vm, &[&map, &child]);
}

#[test]
fn a_read_wiring_of_copy_on_write_memory_keeps_snapshots_isolated() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.write_bytes(a, &[5; 4 * P as usize]).unwrap();
    let snap = vm_read(&map, a, 4 * P).unwrap();
    map.wire(a, 4 * P, VmProt::READ).unwrap();
    no_faults(&vm, &map, a, 4 * P);
    map.write_bytes(a, &[6; 4 * P as usize]).unwrap();
    let at = snap.copyout(&map).unwrap();
    let mut buf = [0u8; 1];
    map.read_bytes(at + 2 * P, &mut buf).unwrap();
    assert_eq!(buf, [5]);
    check(&vm, &[&map]);
}

#[test]
fn out_of_frames_a_wiring_changes_nothing() {
    let vm = system(64 * P);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 256 * P, true).unwrap();
    map.write_bytes(a, &[1]).unwrap();
    snapshot(&vm, &map);
    let before = snapshot(&vm, &map);
    let stats = vm.statistics();
    assert_eq!(map.wire(a, 256 * P, RW), Err(KernError::ResourceShortage));
    assert_eq!(snapshot(&vm, &map), before);
    let after = vm.statistics();
    assert_eq!(
        (after.free_count, after.wire_count),
        (stats.free_count, stats.wire_count)
    );
    assert_eq!(wired(&map, a), 0);
    check(&vm, &[&map]);
}

#[test]
fn deallocate_unwires_and_dropping_returns_every_frame() {
    let vm = system(1 << 20);
    let free = vm.statistics().free_count;
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    map.wire(a, 8 * P, RW).unwrap();
    map.wire(a, 8 * P, RW).unwrap();
    let w = vm.statistics().wire_count;
    map.deallocate(a + 2 * P, 2 * P).unwrap();
    assert_eq!(vm.statistics().wire_count, w - 2);
    check(&vm, &[&map]);
    drop(map);
    let s = vm.statistics();
    assert_eq!((s.free_count, s.wire_count), (free, 0));
    vm.verify().unwrap();
}

#[test]
fn a_copy_fork_copies_wired_pages_at_once_and_the_child_is_not_wired() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.write_bytes(a, &[3; 4 * P as usize]).unwrap();
    map.wire(a, 4 * P, RW).unwrap();
    let active = vm.statistics().active_count;
    let child = map.fork().unwrap();
    assert_eq!(vm.statistics().active_count, active + 4, "copied at fork");
    assert_eq!(wired(&child, a), 0);
    assert_eq!(wired(&map, a), 4);
    no_faults(&vm, &map, a, 4 * P);
    map.write_bytes(a, &[4; 4 * P as usize]).unwrap();
    child.write_bytes(a + P, &[9]).unwrap();
    let mut buf = [0u8; 2];
    child.read_bytes(a + P, &mut buf).unwrap();
    assert_eq!(buf, [9, 3]);
    map.read_bytes(a + P, &mut buf).unwrap();
    assert_eq!(buf, [4, 4]);
    check(&vm, &[&map, &child]);
}

#[test]
fn a_share_fork_shares_wired_pages_and_only_the_parent_is_wired() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.wire(a, 4 * P, RW).unwrap();
    map.inherit(a, 4 * P, VmInherit::Share).unwrap();
    let child = map.fork().unwrap();
    assert_eq!((wired(&map, a), wired(&child, a)), (4, 0));
    child.write_bytes(a, &[8]).unwrap();
    let mut buf = [0u8; 1];
    map.read_bytes(a, &mut buf).unwrap();
    assert_eq!(buf, [8]);
    child.wire(a, 2 * P, RW).unwrap();
    let w = vm.statistics().wire_count;
    map.wire(a, 4 * P, VmProt::NONE).unwrap();
    assert_eq!(
        vm.statistics().wire_count,
        w - 2,
        "pages the child wired stay wired"
    );
    child.deallocate(a, 4 * P).unwrap();
    check(&vm, &[&map, &child]);
}

#[test]
fn copies_of_a_wired_source_copy_now_and_leave_it_wired() {
    let vm = system(1 << 20);
    let src = vm.create_map().unwrap();
    let dst = vm.create_map().unwrap();
    let a = src.allocate(0, 4 * P, true).unwrap();
    src.write_bytes(a, &[1; 4 * P as usize]).unwrap();
    src.wire(a, 4 * P, RW).unwrap();
    let active = vm.statistics().active_count;
    let snap = vm_read(&src, a, 4 * P).unwrap();
    assert_eq!(vm.statistics().active_count, active + 4);
    vm_map_copy(&dst, &src, 0x40_0000, 4 * P, a, true, false).unwrap();
    assert_eq!(wired(&dst, 0x40_0000), 0);
    no_faults(&vm, &src, a, 4 * P);
    src.write_bytes(a, &[2; 4 * P as usize]).unwrap();
    let mut buf = [0u8; 1];
    dst.read_bytes(0x40_0000 + P, &mut buf).unwrap();
    assert_eq!(buf, [1]);
    let at = snap.copyout(&dst).unwrap();
    dst.read_bytes(at + 3 * P, &mut buf).unwrap();
    assert_eq!(buf, [1]);
    check(&vm, &[&src, &dst]);
    vm_map_copy(&dst, &src, 0x80_0000, 4 * P, a, true, true).unwrap();
    assert_eq!(
        src.region(a).map(|r| r.start >= a + 4 * P),
        Err(KernError::NoSpace)
    );
    check(&vm, &[&src, &dst]);
}

#[test]
fn a_copy_into_a_wired_destination_stores_into_its_pages() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    map.write_bytes(a, &[7; 4 * P as usize]).unwrap();
    let d = a + 4 * P;
    map.wire(d, 4 * P, RW).unwrap();
    let active = vm.statistics().active_count;
    let w = vm.statistics().wire_count;
    vm_copy(&map, a, 4 * P, d).unwrap();
    let data = vm_read(&map, a, 2 * P + 5).unwrap();
    vm_write(&map, d + P, data).unwrap();
    let s = vm.statistics();
    assert_eq!(
        (s.active_count, s.wire_count),
        (active, w),
        "the same frames"
    );
    assert_eq!(wired(&map, d), 4);
    no_faults(&vm, &map, d, 4 * P);
    let mut buf = [0u8; 1];
    map.read_bytes(d + 3 * P, &mut buf).unwrap();
    assert_eq!(buf, [7]);
    check(&vm, &[&map]);
}

#[test]
fn protection_changes_keep_wired_pages_entered() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.wire(a, 4 * P, RW).unwrap();
    map.protect(a, 4 * P, false, VmProt::READ).unwrap();
    assert_eq!(map.write_bytes(a, &[1]), Err(KernError::ProtectionFailure));
    map.protect(a, 4 * P, false, RW).unwrap();
    no_faults(&vm, &map, a, 4 * P);
    map.protect(a, 4 * P, false, VmProt::NONE).unwrap();
    check(&vm, &[&map]);
    map.protect(a, 4 * P, false, VmProt::READ).unwrap();
    let faults = vm.statistics().faults;
    let mut buf = [0u8; 4 * P as usize];
    map.read_bytes(a, &mut buf).unwrap();
    assert_eq!(vm.statistics().faults, faults);
    assert_eq!(wired(&map, a), 4);
    check(&vm, &[&map]);
}

#[test]
fn every_allocation_failure_during_a_wiring_changes_nothing() {
    // Untouched, copy-on-write, shared and partly wired ranges, for READ
    // and for WRITE: fail the k-th allocation for every k until the call
    // succeeds.
    for access in [VmProt::READ, RW] {
        for k in 1.. {
            let vm = system(1 << 20);
            let map = vm.create_map().unwrap();
            let a = map.allocate(0, 16 * P, true).unwrap();
            map.write_bytes(a + 4 * P, &[1; 4 * P as usize]).unwrap();
            let child = map.fork().unwrap();
            map.inherit(a + 8 * P, 4 * P, VmInherit::Share).unwrap();
            let sibling = map.fork().unwrap();
            map.wire(a + 12 * P, 2 * P, RW).unwrap();
            snapshot(&vm, &map);
            let before = snapshot(&vm, &map);
            let (free, wire) = (vm.statistics().free_count, vm.statistics().wire_count);
            vm.context().frames().fail_nth_allocation(k);
            let r = map.wire(a, 16 * P, access);
            vm.context().frames().fail_nth_allocation(0);
            check(&vm, &[&map, &child, &sibling]);
            if r.is_ok() {
                let total: u64 = common::regions(&map).iter().map(|r| r.wired_pages).sum();
                assert_eq!(total, 16, "k = {k}");
                break;
            }
            assert_eq!(r, Err(KernError::ResourceShortage), "k = {k}");
            assert_eq!(snapshot(&vm, &map), before, "k = {k}");
            let s = vm.statistics();
            assert_eq!((s.free_count, s.wire_count), (free, wire), "k = {k}");
        }
    }
}

/// Found by the model test: lowering a wired range to write-only made the
/// pmap drop its translations (it removes what it cannot make readable),
/// and they were not entered again.
#[test]
fn a_wired_range_lowered_to_write_only_stays_entered() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.wire(a, 4 * P, RW).unwrap();
    map.protect(a, 4 * P, false, VmProt::WRITE).unwrap();
    check(&vm, &[&map]);
    let faults = vm.statistics().faults;
    map.write_bytes(a, &[1; 4 * P as usize]).unwrap();
    assert_eq!(vm.statistics().faults, faults);
}

/// Every free frame taken (a stand-in for memory full); returns them.
fn hog(vm: &VmSystem) -> Vec<machvm::PhysAddr> {
    let frames = vm.context().frames();
    std::iter::from_fn(|| frames.alloc(FrameUse::Kernel).ok()).collect()
}

/// Found by review: the page tables were reserved for the whole range a
/// call covered, so calls that enter nothing new failed with memory full
/// (and a protect over a huge range asked the heap for half a GiB).
#[test]
fn calls_that_need_no_frame_succeed_with_memory_full() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 1 << 32, true).unwrap();
    map.wire(a + 4 * P, 2 * P, RW).unwrap();
    let held = hog(&vm);
    map.wire(a + 4 * P, 2 * P, VmProt::READ).unwrap();
    map.protect(a, 1 << 32, false, VmProt::READ).unwrap();
    map.protect(a, 1 << 32, false, RW).unwrap();
    map.protect(a + 4 * P, 2 * P, false, VmProt::WRITE).unwrap();
    map.protect(a + 4 * P, 2 * P, false, RW).unwrap();
    map.wire(a + 4 * P, 2 * P, VmProt::NONE).unwrap();
    let frames = vm.context().frames();
    held.into_iter().for_each(|pa| frames.free(pa));
    check(&vm, &[&map]);
}

/// Found by review: a frame's count of wirings is 16 bits, and a wiring
/// that could not count went on as if it had. Now it is refused first.
#[test]
fn a_wiring_whose_frame_count_is_full_is_refused() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, P, true).unwrap();
    map.inherit(a, P, VmInherit::Share).unwrap();
    map.wire(a, P, RW).unwrap();
    let sibling = map.fork().unwrap();
    // Fill the shared frame's count as 65,534 more siblings would.
    let frames = vm.context().frames();
    let frame = frame_of(&vm, &map, a);
    for _ in 1..u16::MAX {
        assert!(frames.wire(frame));
    }
    snapshot(&vm, &sibling);
    let before = snapshot(&vm, &sibling);
    assert_eq!(sibling.wire(a, P, RW), Err(KernError::ResourceShortage));
    assert_eq!(snapshot(&vm, &sibling), before);
    assert_eq!(wired(&sibling, a), 0);
    for _ in 1..u16::MAX {
        frames.unwire(frame);
    }
    sibling.wire(a, P, RW).unwrap();
    check(&vm, &[&map, &sibling]);
}

/// The frame the page at `va` of `map` is in (through the pmap's walker,
/// as the MMU would translate it).
fn frame_of(vm: &VmSystem, map: &VmMap, va: u64) -> machvm::PhysAddr {
    use machvm::Access;
    let pa =
        vm.context()
            .pmap()
            .translate(map.pmap(), machvm::VirtAddr::new(va), Access::Read, true);
    pa.expect("wired pages are entered")
}

#[test]
fn the_audit_counts_each_wired_entry_once_on_each_frame() {
    let vm = system(1 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.inherit(a, 4 * P, VmInherit::Share).unwrap();
    map.wire(a, 4 * P, RW).unwrap();
    map.wire(a, 2 * P, RW).unwrap();
    let sibling = map.fork().unwrap();
    sibling.wire(a + P, 2 * P, VmProt::READ).unwrap();
    let audit = vm.audit();
    // Nesting adds no wiring to a frame; a sibling's entry does.
    assert_eq!((audit.wired_entry_pages, audit.frame_wirings), (6, 6));
    check(&vm, &[&map, &sibling]);
}
