//! SPEC §3: every row of the table and every bullet under it, each asserting
//! the exact `KernError` and that a failed call changed nothing.

mod common;

use common::*;
use machvm::{KernError, VmInherit, VmProt, VmSystem};

const TOP: u64 = 0x0000_8000_0000_0000;

#[test]
fn size_zero_is_ok_and_changes_nothing() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 2 * P, true).unwrap();
    map.write_bytes(a, b"x").unwrap();
    let _warm = snapshot(&vm, &map);
    let before = snapshot(&vm, &map);
    assert_eq!(map.allocate(a, 0, false), Err(KernError::InvalidArgument));
    assert_eq!(map.allocate(0, 0, true), Err(KernError::InvalidArgument));
    map.deallocate(a, 0).unwrap();
    map.deallocate(0, 0).unwrap();
    map.protect(a, 0, false, VmProt::NONE).unwrap();
    map.protect(a, 0, true, VmProt::NONE).unwrap();
    map.inherit(a, 0, VmInherit::None).unwrap();
    map.read_bytes(a, &mut []).unwrap();
    map.write_bytes(a, &[]).unwrap();
    // Even at addresses that would otherwise be refused.
    map.read_bytes(0, &mut []).unwrap();
    map.write_bytes(u64::MAX, &[]).unwrap();
    map.deallocate(u64::MAX, 0).unwrap();
    assert_eq!(before, snapshot(&vm, &map));
    check(&vm, &[&map]);
}

#[test]
fn overflow_is_invalid_argument_for_management_calls() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, P, true).unwrap();
    // addr + size overflows.
    let (addr, size) = (u64::MAX - 10, 100);
    // addr + size fits but rounds up past u64::MAX.
    let (addr2, size2) = (u64::MAX - 100, 50);
    for (ad, sz) in [(addr, size), (addr2, size2), (a, u64::MAX)] {
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.allocate(ad, sz, false)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.allocate(ad, sz, true)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.deallocate(ad, sz)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.protect(ad, sz, false, VmProt::READ)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.protect(ad, sz, true, VmProt::READ)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.inherit(ad, sz, VmInherit::Share)
        });
    }
}

#[test]
fn overflow_is_invalid_address_for_loads_and_stores() {
    let vm = system();
    let map = vm.create_map().unwrap();
    map.allocate(0, P, true).unwrap();
    let mut buf = [0u8; 100];
    fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
        map.read_bytes(u64::MAX - 10, &mut buf)
    });
    fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
        map.write_bytes(u64::MAX - 10, &buf)
    });
    fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
        map.read_bytes(u64::MAX - 200, &mut buf)
    });
    fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
        map.write_bytes(u64::MAX - 200, &buf)
    });
}

#[test]
fn outside_the_task_map_is_invalid_address() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, P, true).unwrap();
    assert_eq!(a, 0x1000, "page 0 is never handed out");
    let mut buf = [0u8; 8];
    for (ad, sz) in [
        (0, P),
        (0, 1),
        (0xfff, 2),
        (TOP, P),
        (TOP - P, 2 * P),
        (u64::MAX - 2 * P, P),
    ] {
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.allocate(ad, sz, false)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.deallocate(ad, sz)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.protect(ad, sz, false, VmProt::READ)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.inherit(ad, sz, VmInherit::Copy)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.read_bytes(ad, &mut buf)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.write_bytes(ad, &buf)
        });
    }
    // The last page is fine, the first byte past it is not.
    map.allocate(TOP - P, P, false).unwrap();
    map.write_bytes(TOP - 8, &buf).unwrap();
    fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
        map.write_bytes(TOP - 4, &buf)
    });
    // An `anywhere` hint beyond the map finds no free range above it.
    fails_unchanged(&vm, &map, KernError::NoSpace, || map.allocate(TOP, P, true));
    check(&vm, &[&map]);
}

#[test]
fn protection_bits_outside_all_are_invalid_argument() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, P, true).unwrap();
    for bits in [8u32, 0x10, 0xff, 0x8000_0000] {
        let bad = VmProt::from_bits_retain(bits | 1);
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.protect(a, P, false, bad)
        });
        fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
            map.protect(a, P, true, bad)
        });
    }
    assert_eq!(VmProt::from_user(9), Err(KernError::InvalidArgument));
}

#[test]
fn holes_deallocate_ok_everything_else_invalid_address() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0x10000, 4 * P, false).unwrap();
    map.deallocate(a + P, P).unwrap(); // hole in the middle
    check(&vm, &[&map]);
    let mut buf = vec![0u8; 4 * P as usize];
    for (ad, sz) in [(a, 4 * P), (a + P, P), (a + P + 10, 1), (0x100000, P)] {
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.protect(ad, sz, false, VmProt::READ)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.protect(ad, sz, true, VmProt::READ)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.inherit(ad, sz, VmInherit::None)
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.read_bytes(ad, &mut buf[..sz as usize])
        });
        fails_unchanged(&vm, &map, KernError::InvalidAddress, || {
            map.write_bytes(ad, &buf[..sz as usize])
        });
    }
    // Deallocating over holes is fine and removes what is there.
    map.deallocate(a - 5 * P, 20 * P).unwrap();
    assert!(regions(&map).is_empty());
    map.deallocate(0x100000, P).unwrap();
    check(&vm, &[&map]);
}

#[test]
fn out_of_physical_memory_is_resource_shortage_and_atomic() {
    let vm = VmSystem::hosted(64 * P);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 256 * P, true).unwrap();
    map.write_bytes(a, b"keep").unwrap();
    let big = vec![7u8; 200 * P as usize];
    fails_unchanged(&vm, &map, KernError::ResourceShortage, || {
        map.write_bytes(a, &big)
    });
    // Reading memory never written takes no frame (it maps the zero
    // frame), so it cannot run out.
    let mut into = vec![1u8; 200 * P as usize];
    let active = vm.statistics().active_count;
    map.read_bytes(a + P, &mut into).unwrap();
    assert!(
        into.iter().all(|&b| b == 0),
        "never-written memory reads zero"
    );
    assert_eq!(vm.statistics().active_count, active);
    assert_eq!(&peek(&map, a, 4), b"keep");
    // A fork that cannot get a frame for its root table fails cleanly.
    let mut maps = Vec::new();
    let err = loop {
        match vm.create_map() {
            Ok(m) => maps.push(m),
            Err(e) => break e,
        }
    };
    assert_eq!(err, KernError::ResourceShortage);
    fails_unchanged(&vm, &map, KernError::ResourceShortage, || map.fork());
    drop(maps);
    check(&vm, &[&map]);
}

#[test]
fn allocate_rounds_out_first_fit_and_costs_nothing_until_touched() {
    let vm = system();
    let map = vm.create_map().unwrap();
    // Rounds out.
    let a = map.allocate(0x20010, 0x10, false).unwrap();
    assert_eq!(a, 0x20000);
    let r = map.region(a).unwrap();
    assert_eq!((r.start, r.size), (0x20000, P));
    assert_eq!(
        (r.protection, r.max_protection, r.inheritance),
        (VmProt::DEFAULT, VmProt::ALL, VmInherit::Copy)
    );
    assert!(!r.shared);
    assert_eq!(r.resident_pages, 0);
    // First fit at or above the hint.
    let b = map.allocate(0x1f000, 2 * P, true).unwrap();
    assert_eq!(
        b, 0x21000,
        "the page at 0x1f000 is free but 0x20000 is taken"
    );
    let c = map.allocate(0x1f000, P, true).unwrap();
    assert_eq!(c, 0x1f000);
    let d = map.allocate(0, P, true).unwrap();
    assert_eq!(d, 0x1000);
    check(&vm, &[&map]);
    // Fixed placement over anything allocated.
    fails_unchanged(&vm, &map, KernError::NoSpace, || {
        map.allocate(0x20000, P, false)
    });
    fails_unchanged(&vm, &map, KernError::NoSpace, || {
        map.allocate(0x1e000, 3 * P, false)
    });
    // Too big for the map.
    fails_unchanged(&vm, &map, KernError::NoSpace, || map.allocate(0, TOP, true));
    // No frame until touched; zero when read.
    let free = vm.statistics().free_count;
    let big = map.allocate(0, 1 << 30, true).unwrap();
    assert_eq!(vm.statistics().free_count, free);
    assert_eq!(peek(&map, big + 12345, 3), [0, 0, 0]);
    check(&vm, &[&map]);
    // A full map: the whole user range in one allocation, then nothing fits.
    let full = vm.create_map().unwrap();
    assert_eq!(full.allocate(0, TOP - P, true), Ok(P));
    fails_unchanged(&vm, &full, KernError::NoSpace, || full.allocate(0, P, true));
    fails_unchanged(&vm, &full, KernError::NoSpace, || {
        full.allocate(0x5000, P, false)
    });
    full.deallocate(0x5000, P).unwrap();
    assert_eq!(
        full.allocate(0, P, true),
        Ok(0x5000),
        "the only hole is found"
    );
    check(&vm, &[&full]);
    check(&vm, &[&map]);
}

#[test]
fn deallocate_rounds_out_and_leaves_no_translation_anywhere() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.write_bytes(a, &[1u8; 4 * P as usize]).unwrap();
    map.inherit(a, 4 * P, VmInherit::Share).unwrap();
    let child = map.fork().unwrap();
    child.write_bytes(a + P, b"child").unwrap();
    // Rounds out: [a + P + 1, a + P + 2) removes the whole second page.
    map.deallocate(a + P + 1, 1).unwrap();
    check(&vm, &[&map, &child]);
    let mut b = [0u8; 1];
    assert_eq!(
        map.read_bytes(a + P, &mut b),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(
        map.write_bytes(a + 2 * P - 1, &b),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(map.region(a + P).unwrap().start, a + 2 * P);
    // The other sharer keeps its page.
    assert_eq!(&peek(&child, a + P, 5), b"child");
    map.deallocate(a, 4 * P).unwrap();
    child.deallocate(a, 4 * P).unwrap();
    check(&vm, &[&map, &child]);
    assert_eq!(vm.statistics().active_count, 0, "every page freed");
}

#[test]
fn protect_current_within_maximum() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 3 * P, true).unwrap();
    map.write_bytes(a, b"data").unwrap();
    map.protect(a, 3 * P, true, VmProt::READ | VmProt::WRITE)
        .unwrap();
    check(&vm, &[&map]);
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.protect(a, P, false, VmProt::ALL)
    });
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.protect(a, P, false, VmProt::EXECUTE)
    });
    // Partly over an entry whose maximum forbids it: nothing changes at all.
    map.protect(a + 2 * P, P, true, VmProt::READ).unwrap();
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.protect(a, 3 * P, false, VmProt::DEFAULT)
    });
    map.protect(a, P, false, VmProt::READ).unwrap();
    assert_eq!(map.region(a).unwrap().protection, VmProt::READ);
    map.protect(a, P, false, VmProt::DEFAULT).unwrap();
    map.write_bytes(a, b"DATA").unwrap();
    check(&vm, &[&map]);
}

#[test]
fn protect_maximum_only_lowers_and_clips_current() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 2 * P, true).unwrap();
    map.protect(a, P, true, VmProt::READ).unwrap();
    let r = map.region(a).unwrap();
    assert_eq!(
        (r.protection, r.max_protection),
        (VmProt::READ, VmProt::READ)
    );
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.protect(a, P, true, VmProt::DEFAULT)
    });
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.protect(a, 2 * P, true, VmProt::DEFAULT)
    });
    map.protect(a, 2 * P, true, VmProt::NONE).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        map.read_bytes(a + P, &mut b),
        Err(KernError::ProtectionFailure)
    );
    check(&vm, &[&map]);
}

#[test]
fn lowering_protection_takes_effect_before_return() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, P, true).unwrap();
    map.write_bytes(a, b"w").unwrap(); // a writable translation is now cached
    map.protect(a, P, false, VmProt::READ).unwrap();
    check(&vm, &[&map]);
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.write_bytes(a, b"z")
    });
    map.protect(a, P, false, VmProt::NONE).unwrap();
    let mut b = [0u8; 1];
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.read_bytes(a, &mut b)
    });
    map.protect(a, P, false, VmProt::READ).unwrap();
    assert_eq!(&peek(&map, a, 1), b"w");
}

#[test]
fn loads_and_stores_check_the_whole_range_first() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 3 * P, true).unwrap();
    map.write_bytes(a, &[5u8; 3 * P as usize]).unwrap();
    map.protect(a + 2 * P, P, false, VmProt::READ).unwrap();
    // A store spanning writable pages and then a read-only one moves no byte.
    let data = vec![9u8; 3 * P as usize];
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.write_bytes(a, &data)
    });
    assert!(peek(&map, a, 3 * P as usize).iter().all(|&b| b == 5));
    map.protect(a, P, false, VmProt::WRITE).unwrap();
    let mut buf = vec![0u8; 2 * P as usize];
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.read_bytes(a, &mut buf)
    });
    assert!(buf.iter().all(|&b| b == 0));
    // Unaligned spans.
    map.protect(a, 3 * P, false, VmProt::DEFAULT).unwrap();
    map.write_bytes(a + P - 3, b"straddle").unwrap();
    assert_eq!(&peek(&map, a + P - 3, 8), b"straddle");
    check(&vm, &[&map]);
}

#[test]
fn region_containing_or_next_above() {
    let vm = system();
    let map = vm.create_map().unwrap();
    assert_eq!(map.region(0), Err(KernError::NoSpace));
    let a = map.allocate(0x40000, 2 * P, false).unwrap();
    let b = map.allocate(0x80000, P, false).unwrap();
    map.write_bytes(a + P, b"r").unwrap();
    assert_eq!(map.region(0).unwrap().start, a);
    let r = map.region(a + P + 5).unwrap();
    assert_eq!((r.start, r.size, r.resident_pages), (a, 2 * P, 1));
    assert_eq!(map.region(a + 2 * P).unwrap().start, b);
    assert_eq!(map.region(b + P), Err(KernError::NoSpace));
    assert_eq!(map.region(u64::MAX), Err(KernError::NoSpace));
}

#[test]
fn inherit_sets_what_fork_does() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 3 * P, true).unwrap();
    map.inherit(a, P, VmInherit::Share).unwrap();
    map.inherit(a + 2 * P, P, VmInherit::None).unwrap();
    assert_eq!(map.region(a).unwrap().inheritance, VmInherit::Share);
    assert_eq!(map.region(a + P).unwrap().inheritance, VmInherit::Copy);
    assert_eq!(map.region(a + 2 * P).unwrap().inheritance, VmInherit::None);
    map.write_bytes(a, &[1u8; 3 * P as usize]).unwrap();
    let child = map.fork().unwrap();
    check(&vm, &[&map, &child]);
    child.write_bytes(a, b"S").unwrap();
    child.write_bytes(a + P, b"C").unwrap();
    assert_eq!(&peek(&map, a, 1), b"S", "shared: the parent sees it");
    assert_eq!(&peek(&map, a + P, 1), &[1], "copied: the parent does not");
    let mut b = [0u8; 1];
    assert_eq!(
        child.read_bytes(a + 2 * P, &mut b),
        Err(KernError::InvalidAddress)
    );
    assert!(child.region(a).unwrap().shared && map.region(a).unwrap().shared);
    assert!(!child.region(a + P).unwrap().shared);
    check(&vm, &[&map, &child]);
}

#[test]
fn handles_are_send_sync_and_clone() {
    fn check_traits<T: Send + Sync + Clone>() {}
    check_traits::<machvm::VmSystem>();
    check_traits::<machvm::VmMap>();
    let vm = system();
    let map = vm.create_map().unwrap();
    let other = map.clone();
    let a = map.allocate(0, P, true).unwrap();
    other.write_bytes(a, b"same").unwrap();
    assert_eq!(&peek(&map, a, 4), b"same");
    let free = vm.statistics().free_count;
    drop(map);
    assert_eq!(vm.statistics().free_count, free, "a handle remains");
    drop(other);
    assert!(
        vm.statistics().free_count > free,
        "the last handle frees the map"
    );
}

#[test]
fn write_only_pages_fault_consistently() {
    // x86 cannot express write-only: once mapped, loads work. The fault
    // handler agrees with the MMU, so the answer does not depend on history;
    // read_bytes keeps SPEC's rule (READ missing: ProtectionFailure).
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 2 * P, true).unwrap();
    map.protect(a, 2 * P, false, VmProt::WRITE).unwrap();
    assert_eq!(map.fault(a, machvm::Access::Read), Ok(()));
    assert_eq!(map.fault(a + P, machvm::Access::Write), Ok(()));
    assert_eq!(
        map.fault(a, machvm::Access::Execute),
        Err(KernError::ProtectionFailure)
    );
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        map.read_bytes(a, &mut [0u8; 4])
    });
    map.write_bytes(a, b"wo").unwrap();
    check(&vm, &[&map]);
}
