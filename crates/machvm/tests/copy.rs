//! SPEC §4: vm_map_copy and its family, rule by rule, with isolation,
//! atomicity and counting checks.

mod common;

use common::*;
use machvm::{
    KernError, VmInherit, VmMap, VmProt, VmSystem, vm_copy, vm_map_copy, vm_read, vm_write,
};

/// Fills `[a, a + len)` with a position-dependent pattern and returns it.
fn pattern(map: &VmMap, a: u64, len: u64, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    map.write_bytes(a, &data).unwrap();
    data
}

#[test]
fn overlapping_copies_within_one_map_are_memmove() {
    let region = 12 * P;
    let shifts: [i64; 8] = [
        1,
        -1,
        P as i64,
        -(P as i64),
        3 * P as i64 + 5,
        -(3 * P as i64) - 5,
        2 * P as i64,
        17,
    ];
    for &shift in &shifts {
        for &(src_off, len) in &[
            (P, 6 * P),
            (P + 100, 5 * P + 33),
            (2 * P - 1, 4 * P + 2),
            (P + 7, 40),
        ] {
            let dst_off = src_off as i64 + shift;
            if dst_off < 0 || dst_off as u64 + len > region {
                continue;
            }
            let dst_off = dst_off as u64;
            let vm = system();
            let map = vm.create_map().unwrap();
            let a = map.allocate(0, region, true).unwrap();
            let mut model = pattern(&map, a, region, 3);
            vm_copy(&map, a + src_off, len, a + dst_off).unwrap();
            model.copy_within(src_off as usize..(src_off + len) as usize, dst_off as usize);
            assert_eq!(
                peek(&map, a, region as usize),
                model,
                "shift {shift} src {src_off} len {len}"
            );
            check(&vm, &[&map]);
            // Isolation: writes on either side afterwards stay on their side.
            map.write_bytes(a + dst_off, &[0xEE]).unwrap();
            model[dst_off as usize] = 0xEE;
            map.write_bytes(a + src_off + len - 1, &[0xDD]).unwrap();
            model[(src_off + len - 1) as usize] = 0xDD;
            assert_eq!(peek(&map, a, region as usize), model);
            check(&vm, &[&map]);
        }
    }
}

#[test]
fn unaligned_heads_and_tails_equal_and_different_offsets() {
    let cases = [
        (0x10, 0x10, 5 * P),       // equal offsets: COW middle, byte edges
        (0x10, 0x30, 5 * P),       // different offsets: all bytes
        (P - 1, P - 1, 3 * P + 2), // one byte head, two byte tail
        (0, 0x800, 4 * P),         // aligned source, unaligned destination
        (0x800, 0, 4 * P),         // the reverse
        (0x123, 0x123, 100),       // small: physical copy
    ];
    for (so, dofs, len) in cases {
        let vm = system();
        let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
        let a = src.allocate(0, 8 * P, true).unwrap();
        let b = dst.allocate(0, 8 * P, true).unwrap();
        let s_model = pattern(&src, a, 8 * P, 1);
        let mut d_model = pattern(&dst, b, 8 * P, 2);
        vm_map_copy(&dst, &src, b + dofs, len, a + so, false, false).unwrap();
        d_model[dofs as usize..(dofs + len) as usize]
            .copy_from_slice(&s_model[so as usize..(so + len) as usize]);
        assert_eq!(
            peek(&dst, b, 8 * P as usize),
            d_model,
            "case {so:#x} {dofs:#x} {len:#x}"
        );
        assert_eq!(peek(&src, a, 8 * P as usize), s_model);
        check(&vm, &[&src, &dst]);
        // Destination keeps its attributes.
        let r = dst.region(b + dofs).unwrap();
        assert_eq!(
            (r.protection, r.max_protection, r.inheritance),
            (VmProt::DEFAULT, VmProt::ALL, VmInherit::Copy)
        );
    }
}

#[test]
fn overlap_with_dst_alloc_or_src_destroy_is_invalid_argument() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    pattern(&map, a, 8 * P, 9);
    // Byte ranges disjoint but touching the same page: still overlap.
    fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
        vm_map_copy(&map, &map, a + 100, 50, a, true, false)
    });
    fails_unchanged(&vm, &map, KernError::InvalidArgument, || {
        vm_map_copy(&map, &map, a + 2 * P, 4 * P, a, false, true)
    });
    // Disjoint pages are fine.
    vm_map_copy(&map, &map, a + 4 * P, 2 * P, a, false, true).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(map.read_bytes(a, &mut b), Err(KernError::InvalidAddress));
    check(&vm, &[&map]);
}

#[test]
fn dst_alloc_empty_partial_full_and_read_only() {
    let vm = system();
    let src = vm.create_map().unwrap();
    let a = src.allocate(0, 4 * P, true).unwrap();
    let s = pattern(&src, a, 4 * P, 5);
    // Empty destination: allocated, unaligned copy, bytes around read zero.
    let dst = vm.create_map().unwrap();
    vm_map_copy(&dst, &src, 0x10_0010, 2 * P, a + 0x10, true, false).unwrap();
    let r = dst.region(0).unwrap();
    assert_eq!(
        (r.start, r.size, r.protection, r.max_protection),
        (0x10_0000, 3 * P, VmProt::DEFAULT, VmProt::ALL)
    );
    assert_eq!(peek(&dst, 0x10_0000, 0x10), vec![0; 0x10]);
    assert_eq!(
        peek(&dst, 0x10_0010, 2 * P as usize),
        s[0x10..0x10 + 2 * P as usize]
    );
    assert_eq!(
        peek(&dst, 0x10_0010 + 2 * P, (P - 0x10) as usize),
        vec![0; (P - 0x10) as usize]
    );
    check(&vm, &[&src, &dst]);
    // Partly allocated: keeps the allocated part's contents outside the range.
    let dst = vm.create_map().unwrap();
    dst.allocate(0x20_0000 + 2 * P, P, false).unwrap();
    dst.write_bytes(0x20_0000 + 3 * P - 1, &[0xAB]).unwrap();
    dst.protect(0x20_0000 + 2 * P, P, false, VmProt::ALL)
        .unwrap();
    vm_map_copy(&dst, &src, 0x20_0000, 3 * P - 1, a, true, false).unwrap();
    assert_eq!(
        peek(&dst, 0x20_0000, (3 * P - 1) as usize),
        s[..(3 * P - 1) as usize]
    );
    assert_eq!(peek(&dst, 0x20_0000 + 3 * P - 1, 1), [0xAB]);
    assert_eq!(
        dst.region(0x20_0000 + 2 * P).unwrap().protection,
        VmProt::ALL,
        "kept its protection"
    );
    check(&vm, &[&src, &dst]);
    // Fully allocated.
    vm_map_copy(&dst, &src, 0x20_0000, 2 * P, a + 2 * P, true, false).unwrap();
    assert_eq!(peek(&dst, 0x20_0000, 2 * P as usize), s[2 * P as usize..]);
    // Partly read-only: ProtectionFailure, and the holes are not allocated.
    let dst = vm.create_map().unwrap();
    dst.allocate(0x30_0000 + P, P, false).unwrap();
    dst.protect(0x30_0000 + P, P, false, VmProt::READ).unwrap();
    fails_unchanged(&vm, &dst, KernError::ProtectionFailure, || {
        vm_map_copy(&dst, &src, 0x30_0000, 3 * P, a, true, false)
    });
    assert_eq!(regions(&dst).len(), 1);
}

#[test]
fn src_destroy_aligned_and_unaligned() {
    let vm = system();
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let a = src.allocate(0, 6 * P, true).unwrap();
    let s = pattern(&src, a, 6 * P, 11);
    vm_map_copy(&dst, &src, 0x40_0000, 2 * P, a, true, true).unwrap();
    assert_eq!(src.region(0).unwrap().start, a + 2 * P);
    // Unaligned: the source pages touched are removed, rounded out.
    vm_map_copy(
        &dst,
        &src,
        0x50_0000 + 0x20,
        P,
        a + 2 * P + 0x20,
        true,
        true,
    )
    .unwrap();
    let r = src.region(0).unwrap();
    assert_eq!((r.start, r.size), (a + 4 * P, 2 * P));
    assert_eq!(peek(&dst, 0x40_0000, 2 * P as usize), s[..2 * P as usize]);
    assert_eq!(
        peek(&dst, 0x50_0020, P as usize),
        s[(2 * P + 0x20) as usize..(3 * P + 0x20) as usize]
    );
    check(&vm, &[&src, &dst]);
    // Never on failure: a read-only destination leaves the source intact.
    dst.protect(0x40_0000, 2 * P, false, VmProt::READ).unwrap();
    fails_unchanged(&vm, &src, KernError::ProtectionFailure, || {
        vm_map_copy(&dst, &src, 0x40_0000, P, a + 4 * P, false, true)
    });
}

#[test]
fn order_of_checks() {
    let vm = system();
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let a = src.allocate(0, 2 * P, true).unwrap();
    src.protect(a, P, false, VmProt::NONE).unwrap();
    let b = dst.allocate(0, 2 * P, true).unwrap();
    dst.protect(b, P, false, VmProt::READ).unwrap();
    // Arguments before anything: overflow and bounds.
    assert_eq!(
        vm_map_copy(&dst, &src, b, u64::MAX, a, false, false),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(
        vm_map_copy(&dst, &src, 0, P, a, false, false),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(
        vm_map_copy(&src, &src, a, 2 * P, a + P, true, false),
        Err(KernError::InvalidArgument)
    );
    // Source before destination.
    assert_eq!(
        vm_map_copy(&dst, &src, b, P, 0x7000_0000, false, false),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(
        vm_map_copy(&dst, &src, b, P, a, false, false),
        Err(KernError::ProtectionFailure)
    );
    assert_eq!(
        vm_map_copy(&dst, &src, 0x7000_0000, P, a + P, false, false),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(
        vm_map_copy(&dst, &src, b, P, a + P, false, false),
        Err(KernError::ProtectionFailure)
    );
    vm_map_copy(&dst, &src, b + P, P, a + P, false, false).unwrap();
    assert_eq!(vm_map_copy(&dst, &src, b, 0, a, false, false), Ok(()));
    check(&vm, &[&src, &dst]);
}

#[test]
fn copy_of_a_copy_and_copy_back_onto_the_source() {
    let vm = system();
    let (m1, m2, m3) = (
        vm.create_map().unwrap(),
        vm.create_map().unwrap(),
        vm.create_map().unwrap(),
    );
    let a = m1.allocate(0, 4 * P, true).unwrap();
    let s = pattern(&m1, a, 4 * P, 21);
    vm_map_copy(&m2, &m1, a, 4 * P, a, true, false).unwrap();
    vm_map_copy(&m3, &m2, a, 4 * P, a, true, false).unwrap();
    m2.write_bytes(a + P, &[1]).unwrap();
    m1.write_bytes(a + 2 * P, &[2]).unwrap();
    assert_eq!(peek(&m3, a, 4 * P as usize), s);
    // Back onto its own source: a no-op in content.
    vm_copy(&m3, a, 4 * P, a).unwrap();
    vm_map_copy(&m3, &m3, a + 5, 3 * P, a + 5, false, false).unwrap();
    assert_eq!(peek(&m3, a, 4 * P as usize), s);
    check(&vm, &[&m1, &m2, &m3]);
}

#[test]
fn isolation_for_resident_and_untouched_pages() {
    let vm = system();
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let a = src.allocate(0, 8 * P, true).unwrap();
    src.write_bytes(a, &[1u8; 4 * P as usize]).unwrap(); // pages 4..8 untouched
    let b = dst.allocate(0, 8 * P, true).unwrap();
    vm_map_copy(&dst, &src, b, 8 * P, a, false, false).unwrap();
    for page in [0, 5] {
        src.write_bytes(a + page * P, &[7]).unwrap();
        dst.write_bytes(b + page * P + 1, &[8]).unwrap();
        let expect_src = if page == 0 { [7, 1] } else { [7, 0] };
        let expect_dst = if page == 0 { [1, 8] } else { [0, 8] };
        assert_eq!(peek(&src, a + page * P, 2), expect_src);
        assert_eq!(peek(&dst, b + page * P, 2), expect_dst);
    }
    check(&vm, &[&src, &dst]);
}

#[test]
fn copying_untouched_gigabyte_costs_no_page() {
    let vm = VmSystem::hosted(256 << 20);
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let a = src.allocate(0, 1 << 30, true).unwrap();
    let b = dst.allocate(0, 1 << 30, true).unwrap();
    let before = vm.statistics();
    vm_map_copy(&dst, &src, b, 1 << 30, a, false, false).unwrap();
    let after = vm.statistics();
    assert!(
        before.free_count - after.free_count <= 4,
        "{} frames",
        before.free_count - after.free_count
    );
    assert_eq!(after.cow_faults, before.cow_faults);
    assert_eq!(after.zero_fill_count, before.zero_fill_count);
    check(&vm, &[&src, &dst]);
}

#[test]
fn copying_resident_pages_copies_none_until_written() {
    let vm = system();
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let n = 64;
    let a = src.allocate(0, n * P, true).unwrap();
    src.write_bytes(a, &vec![3u8; (n * P) as usize]).unwrap();
    let b = dst.allocate(0, n * P, true).unwrap();
    let before = vm.statistics();
    vm_map_copy(&dst, &src, b, n * P, a, false, false).unwrap();
    let copied = vm.statistics();
    assert_eq!(copied.cow_faults, before.cow_faults, "copy copies no page");
    assert_eq!(copied.active_count, before.active_count);
    for k in 0..5 {
        dst.write_bytes(b + k * P, &[9]).unwrap();
        src.write_bytes(a + (10 + k) * P, &[9]).unwrap();
    }
    let s = vm.statistics();
    assert_eq!(
        s.cow_faults - before.cow_faults,
        10,
        "exactly one copy per distinct page written"
    );
    assert_eq!(s.active_count - before.active_count, 10);
    check(&vm, &[&src, &dst]);
}

#[test]
fn vm_read_is_a_snapshot() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 6 * P, true).unwrap();
    let s = pattern(&map, a, 6 * P, 33);
    let c1 = vm_read(&map, a + 10, 5 * P).unwrap();
    let c2 = vm_read(&map, a, 6 * P).unwrap();
    assert_eq!(c1.len(), 5 * P);
    map.write_bytes(a, &[0u8; 3 * P as usize]).unwrap();
    map.deallocate(a + 3 * P, 3 * P).unwrap();
    let other = vm.create_map().unwrap();
    let at = c1.copyout(&other).unwrap();
    assert_eq!(at % P, 10, "copy-out keeps the page offset");
    assert_eq!(
        peek(&other, at, (5 * P) as usize),
        s[10..10 + (5 * P) as usize]
    );
    let at2 = c2.copyout(&map).unwrap();
    assert_eq!(peek(&map, at2, (6 * P) as usize), s);
    check(&vm, &[&map, &other]);
}

#[test]
fn vm_write_overwrites_and_failed_copyout_hands_back() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    let s = pattern(&map, a, 4 * P, 44);
    let b = map.allocate(0, 4 * P, true).unwrap();
    map.protect(b, 4 * P, true, VmProt::READ | VmProt::WRITE)
        .unwrap();
    let c = vm_read(&map, a, 4 * P).unwrap();
    vm_write(&map, b, c).unwrap();
    assert_eq!(peek(&map, b, 4 * P as usize), s);
    assert_eq!(map.region(b).unwrap().max_protection, VmProt::DEFAULT);
    map.protect(b, P, false, VmProt::READ).unwrap();
    let c = vm_read(&map, a, 2 * P).unwrap();
    fails_unchanged(&vm, &map, KernError::ProtectionFailure, || {
        vm_write(&map, b, c)
    });
    // A full map refuses copy-out and hands the copy back intact.
    let full = vm.create_map().unwrap();
    full.allocate(0, 0x0000_8000_0000_0000 - P, true).unwrap();
    let c = vm_read(&map, a, 2 * P).unwrap();
    let (err, c) = c.copyout(&full).unwrap_err();
    assert_eq!(err, KernError::NoSpace);
    let other = vm.create_map().unwrap();
    let at = c.copyout(&other).unwrap();
    assert_eq!(peek(&other, at, 2 * P as usize), s[..2 * P as usize]);
    check(&vm, &[&map, &other, &full]);
}

#[test]
fn copy_out_of_frames_midway_changes_nothing() {
    // Unaligned copies must fault in destination pages; with too few frames
    // they fail midway and must leave both maps and the free count alone.
    let vm = VmSystem::hosted(64 * P);
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let a = src.allocate(0, 40 * P, true).unwrap();
    pattern(&src, a, 40 * P, 55);
    let b = dst.allocate(0, 48 * P, true).unwrap();
    dst.write_bytes(b, b"keep").unwrap();
    let src_before = snapshot(&vm, &src);
    // The destination is too big to read whole here (reading zero-fills):
    // compare its regions, its written bytes and the free count.
    let observe = || {
        let r: Vec<_> = regions(&dst)
            .iter()
            .map(|r| (r.start, r.size, r.protection))
            .collect();
        (r, peek(&dst, b, 4), vm.statistics().free_count)
    };
    let before = observe();
    for (at, alloc, destroy) in [
        (b + 3, false, false),
        (0x900_0003, true, false),
        (0x900_0003, true, true),
    ] {
        assert_eq!(
            vm_map_copy(&dst, &src, at, 40 * P, a, alloc, destroy),
            Err(KernError::ResourceShortage)
        );
        assert_eq!(observe(), before);
        check(&vm, &[&src, &dst]);
    }
    assert_eq!(snapshot(&vm, &src), src_before, "the source is intact");
    check(&vm, &[&src, &dst]);
}

#[test]
fn copies_race_between_two_maps_without_deadlock() {
    let vm = system();
    let (m1, m2) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let a = m1.allocate(0, 16 * P, true).unwrap();
    let b = m2.allocate(0, 16 * P, true).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (m1, m2) = (m1.clone(), m2.clone());
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let off = (i * 13 + t) % (8 * P);
                    let r = if t % 2 == 0 {
                        vm_map_copy(&m2, &m1, b + off, 4 * P, a + off, false, false)
                    } else {
                        vm_map_copy(&m1, &m2, a + off, 4 * P, b + off, false, false)
                    };
                    r.unwrap();
                    vm_copy(&m1, a, P, a + 8 * P + off).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    check(&vm, &[&m1, &m2]);
}

#[test]
fn failing_the_kth_allocation_of_a_copy_changes_nothing() {
    // For every k, make the k-th frame allocation of an unaligned
    // dst_alloc + src_destroy copy fail: each attempt either succeeds or
    // leaves both maps and the free count as they were.
    let mut k = 1;
    loop {
        let vm = system();
        let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
        let a = src.allocate(0, 6 * P, true).unwrap();
        let s = pattern(&src, a, 6 * P, 66);
        let b = dst.allocate(0x20_0000 + 2 * P, 2 * P, false).unwrap();
        dst.write_bytes(b, &[1; 16]).unwrap();
        let _warm = (snapshot(&vm, &src), snapshot(&vm, &dst));
        let (sb, db) = (snapshot(&vm, &src), snapshot(&vm, &dst));
        vm.context().frames().fail_nth_allocation(k);
        let r = vm_map_copy(&dst, &src, 0x20_0000 + 0x11, 5 * P, a + 0x11, true, true);
        vm.context().frames().fail_nth_allocation(0);
        match r {
            Ok(()) => {
                assert_eq!(
                    peek(&dst, 0x20_0011, 5 * P as usize),
                    s[0x11..0x11 + 5 * P as usize]
                );
                check(&vm, &[&src, &dst]);
                assert!(k > 1, "the copy should need frames");
                break;
            }
            Err(e) => {
                assert_eq!(e, KernError::ResourceShortage);
                assert_eq!(snapshot(&vm, &src), sb, "k = {k}: source changed");
                assert_eq!(snapshot(&vm, &dst), db, "k = {k}: destination changed");
                check(&vm, &[&src, &dst]);
            }
        }
        k += 1;
    }
}

#[test]
fn copy_into_a_shared_destination_is_seen_by_the_sharers() {
    let vm = system();
    let src = vm.create_map().unwrap();
    let a = src.allocate(0, 4 * P, true).unwrap();
    let s = pattern(&src, a, 4 * P, 77);
    let dst = vm.create_map().unwrap();
    let b = dst.allocate(0, 4 * P, true).unwrap();
    dst.inherit(b, 4 * P, VmInherit::Share).unwrap();
    let sharer = dst.fork().unwrap();
    vm_map_copy(&dst, &src, b, 4 * P, a, false, false).unwrap();
    assert_eq!(
        peek(&sharer, b, 4 * P as usize),
        s,
        "the sharer sees the copy"
    );
    sharer.write_bytes(b, &[1]).unwrap();
    assert_eq!(peek(&dst, b, 1), [1], "and they still share");
    assert_eq!(peek(&src, a, 1), [s[0]], "the source is isolated");
    check(&vm, &[&src, &dst, &sharer]);
}
