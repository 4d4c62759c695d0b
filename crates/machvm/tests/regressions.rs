//! Regression scenarios from other VM systems' bugs, as named tests.

mod common;

use common::*;
use machvm::{
    Access, KernError, VmInherit, VmProt, VmSystem, vm_copy, vm_map_copy, vm_read, vm_write,
};

/// FreeBSD CVE-2021-29626: a shadow object shared through `Share`
/// inheritance over a copy-on-write range. When a page is copied up into it,
/// every translation of the old page in every sharing map must go, or a
/// sharer keeps reading (and on FreeBSD, writing) the stale page.
#[test]
fn cve_2021_29626_copy_up_into_a_shared_shadow() {
    let vm = system();
    let a = vm.create_map().unwrap();
    let addr = a.allocate(0, 2 * P, true).unwrap();
    a.write_bytes(addr, &[1u8; 2 * P as usize]).unwrap();
    // A copy-on-write child: a's entry is now needs-copy over the object.
    let cow_child = a.fork().unwrap();
    // Share the needs-copy range with b: the shadow is made first and shared.
    a.inherit(addr, 2 * P, VmInherit::Share).unwrap();
    let b = a.fork().unwrap();
    // b reads both pages: translations of the *backing* pages, read-only.
    assert_eq!(peek(&b, addr, 1), [1]);
    assert_eq!(peek(&b, addr + P, 1), [1]);
    check(&vm, &[&a, &b, &cow_child]);
    // a writes: the page is copied up into the shared shadow. b's
    // translation of the old page must be gone, so b sees the write.
    a.write_bytes(addr, &[2]).unwrap();
    check(&vm, &[&a, &b, &cow_child]);
    assert_eq!(peek(&b, addr, 1), [2], "b still reads the stale page");
    // The other way round.
    b.write_bytes(addr + P, &[3]).unwrap();
    check(&vm, &[&a, &b, &cow_child]);
    assert_eq!(peek(&a, addr + P, 1), [3]);
    // The copy-on-write child never sees any of it.
    assert_eq!(
        peek(&cow_child, addr, 2 * P as usize),
        vec![1u8; 2 * P as usize]
    );
}

/// Linux Dirty COW (CVE-2016-5195): a write into a private copy-on-write
/// mapping racing the discard of the private copy must never write the
/// original object. machvm has no "forced" write, so the race is between
/// stores into the private copy and deallocating / re-copying / protecting
/// it; the original must stay intact throughout.
#[test]
fn dirty_cow_writes_never_reach_the_original() {
    let vm = system();
    let original = vm.create_map().unwrap();
    let o = original.allocate(0, 4 * P, true).unwrap();
    let pristine: Vec<u8> = (0..4 * P).map(|i| i as u8).collect();
    original.write_bytes(o, &pristine).unwrap();
    let private = original.fork().unwrap();
    original.protect(o, 4 * P, true, VmProt::READ).unwrap();
    private.protect(o, 4 * P, false, VmProt::READ).unwrap();
    let snapshot = vm_read(&original, o, 4 * P).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let written = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut ok = 0;
            let mut i = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if private
                    .write_bytes(o + u64::from(i % 4) * P, &i.to_le_bytes())
                    .is_ok()
                {
                    ok += 1;
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i = i.wrapping_add(1);
            }
            ok
        });
        s.spawn(|| {
            // At least 600 rounds, and on until 20 writes raced through: the
            // outcome never depends on how the scheduler shares the cores.
            // The writer stops even if an assertion here fails.
            let _stop = StopOnDrop(&done);
            let mut i = 0u32;
            while i < 600 || written.load(std::sync::atomic::Ordering::Relaxed) < 20 {
                i += 1;
                match i % 3 {
                    0 => {
                        private.deallocate(o, 4 * P).unwrap();
                        vm_map_copy(&private, &original, o, 4 * P, o, true, false).unwrap();
                    }
                    1 => private
                        .protect(o, 4 * P, false, VmProt::DEFAULT)
                        .unwrap_or(()),
                    _ => private.protect(o, 4 * P, false, VmProt::READ).unwrap_or(()),
                }
                assert_eq!(
                    peek(&original, o, 4 * P as usize),
                    pristine,
                    "the original was written"
                );
                // Spin locks are not fair: give the writer its turns.
                std::thread::yield_now();
            }
        });
        let ok = writer.join().unwrap();
        assert!(ok > 0, "the race never let a write through");
    });
    assert_eq!(peek(&original, o, 4 * P as usize), pristine);
    let other = vm.create_map().unwrap();
    let at = snapshot.copyout(&other).unwrap();
    assert_eq!(
        peek(&other, at, 4 * P as usize),
        pristine,
        "a snapshot changed"
    );
    check(&vm, &[&original, &private, &other]);
}

/// Ranges whose end rounds up past 2^64, and lengths that make the end
/// exactly 0 (wrapping): refused with the SPEC's code by every call, and
/// nothing changes.
#[test]
fn ranges_ending_at_or_past_two_to_the_64() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.write_bytes(a, b"safe").unwrap();
    let ends_at_zero = [
        (a, 0u64.wrapping_sub(a)),
        (u64::MAX, 1),
        (P, 0u64.wrapping_sub(P)),
    ];
    let rounds_past = [(u64::MAX - 10, 5), (u64::MAX - P + 2, P - 3)];
    for (addr, len) in ends_at_zero.into_iter().chain(rounds_past) {
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.allocate(addr, len, false)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.allocate(addr, len, true)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.deallocate(addr, len)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.protect(addr, len, false, VmProt::READ)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.inherit(addr, len, VmInherit::None)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            vm_map_copy(&map, &map, a, len, addr, false, false)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            vm_map_copy(&map, &map, addr, len, a, true, false)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            vm_copy(&map, addr, len, a)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            vm_read(&map, addr, len).map(|_| ())
        });
    }
    // vm_write of a real copy to a wrapping destination.
    let c = vm_read(&map, a, 2 * P).unwrap();
    fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
        vm_write(&map, u64::MAX - P, c)
    });
    assert_eq!(&peek(&map, a, 4), b"safe");
}

/// Sets its flag when dropped, unwinding included: a thread that waits on
/// the flag ends when the test fails instead of hanging it.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Write-protects and unprotects a page: it stays resident, its
/// translation read-only, so the next store faults (a GC's write barrier,
/// W^X toggling).
fn reprotect(map: &machvm::VmMap, a: u64) {
    let rw = VmProt::READ | VmProt::WRITE;
    map.protect(a, P, false, VmProt::READ).unwrap();
    map.protect(a, P, false, rw).unwrap();
}

/// A store fault on a page resident in the entry's own object takes no
/// frame, so it cannot fail for want of one. Failed before the fix
/// (`ResourceShortage`: the shared path took a frame before it looked).
#[test]
fn a_store_fault_on_a_resident_page_needs_no_free_frame() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, P, true).unwrap();
    map.write_bytes(a, &[1]).unwrap();
    reprotect(&map, a);
    vm.context().frames().fail_nth_allocation(1);
    let r = map.fault(a, Access::Write);
    vm.context().frames().fail_nth_allocation(0);
    assert_eq!(r, Ok(()), "a store fault on a resident page");
    check(&vm, &[&map]);
}

/// The same with memory really exhausted by the task's own pages.
#[test]
fn a_store_to_a_resident_page_succeeds_with_memory_full() {
    let vm = VmSystem::hosted(4 << 20);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 << 20, true).unwrap();
    let mut filled = 0;
    while map.write_bytes(a + filled * P, &[1]).is_ok() {
        filled += 1;
    }
    assert!(filled > 16, "some pages filled ({filled})");
    assert_eq!(vm.statistics().free_count, 0, "memory is full");
    reprotect(&map, a);
    assert_eq!(map.write_bytes(a, &[2]), Ok(()), "no new frame needed");
    assert_eq!(peek(&map, a, 1), [2]);
    check(&vm, &[&map]);
}
