//! The shared zero frame: reads of never-written memory map it and take no
//! frame; it stays invisible to statistics, `region`, the audit and every
//! isolation rule.

mod common;

use common::*;
use machvm::{VmInherit, VmProt, VmSystem, vm_map_copy};

/// One byte read from every page of `[a, a + pages·P)`.
fn read_each_page(map: &machvm::VmMap, a: u64, pages: u64) -> bool {
    let mut b = [0xffu8; 1];
    (0..pages).all(|i| {
        map.read_bytes(a + i * P, &mut b).unwrap();
        b[0] == 0
    })
}

#[test]
fn reading_256_mib_never_written_takes_no_page_frame() {
    let pages = (256 << 20) / P;
    // 32 MiB of RAM: room for the page tables, not for the pages.
    let vm = VmSystem::hosted(32 << 20);
    vm.set_consistency_checks(false);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, pages * P, true).unwrap();
    let before = vm.statistics();
    assert!(
        read_each_page(&map, a, pages),
        "never-written memory reads zero"
    );
    let after = vm.statistics();
    assert_eq!(after.active_count, before.active_count, "no object frame");
    assert_eq!(after.zero_fill_count, before.zero_fill_count);
    // Only page tables: a 4 KiB table maps 2 MiB.
    assert!(before.free_count - after.free_count <= pages / 512 + 4);
    assert_eq!(map.region(a).unwrap().resident_pages, 0);
    let audit = vm.audit();
    assert_eq!((audit.resident_pages, audit.unreachable_pages), (0, 0));
    check(&vm, &[&map]);
    drop(map);
    assert_eq!(vm.statistics().free_count, vm.statistics().total_pages);
}

#[test]
fn a_write_after_a_read_gets_a_page_of_its_own() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    assert!(read_each_page(&map, a, 4));
    map.write_bytes(a + P + 9, b"own").unwrap();
    assert_eq!(peek(&map, a + P + 9, 3), b"own");
    assert!(read_each_page(&map, a + 2 * P, 2));
    assert_eq!(map.region(a).unwrap().resident_pages, 1);
    assert_eq!(vm.statistics().zero_fill_count, 1);
    check(&vm, &[&map]);
}

/// Regression: a parent that read a page (mapping the zero frame) and then
/// shared it by `fork` must see its child's store there; its zero-frame
/// translation would hide the store from the MMU (`verify` walks them).
#[test]
fn a_share_sibling_store_is_never_hidden_by_the_zero_frame() {
    let vm = system();
    let parent = vm.create_map().unwrap();
    let a = parent.allocate(0, 4 * P, true).unwrap();
    parent.write_bytes(a + P, &[0]).unwrap();
    assert!(read_each_page(&parent, a, 4));
    parent.inherit(a, 4 * P, VmInherit::Share).unwrap();
    let child = parent.fork().unwrap();
    check(&vm, &[&parent, &child]);
    child.write_bytes(a + 2 * P, b"sibling").unwrap();
    // Either map reading again sees the store, through the MMU's view too.
    assert!(read_each_page(&parent, a, 2));
    assert_eq!(peek(&parent, a + 2 * P, 7), b"sibling");
    check(&vm, &[&parent, &child]);
    // Sharers zero-fill on read: a page one reads, the other sees.
    assert!(read_each_page(&child, a + 3 * P, 1));
    parent.write_bytes(a + 3 * P, b"p").unwrap();
    assert_eq!(peek(&child, a + 3 * P, 1), b"p");
    check(&vm, &[&parent, &child]);
}

#[test]
fn copies_forks_and_protection_over_zero_frame_reads() {
    let vm = system();
    let src = vm.create_map().unwrap();
    let dst = vm.create_map().unwrap();
    let a = src.allocate(0, 8 * P, true).unwrap();
    assert!(read_each_page(&src, a, 8));
    // A copy of zero-frame pages is zero and private.
    let d = dst.allocate(0, 8 * P, true).unwrap();
    vm_map_copy(&dst, &src, d, 8 * P, a, false, false).unwrap();
    dst.write_bytes(d, b"dst").unwrap();
    assert!(read_each_page(&src, a, 8));
    // A copy-on-write child and its parent stay apart.
    let child = src.fork().unwrap();
    child.write_bytes(a + P, b"child").unwrap();
    src.write_bytes(a + 2 * P, b"parent").unwrap();
    assert_eq!(peek(&src, a + P, 5), [0; 5]);
    assert_eq!(peek(&child, a + 2 * P, 6), [0; 6]);
    // Read-only memory still reads zero; a store is refused.
    src.protect(a + 4 * P, 4 * P, false, VmProt::READ).unwrap();
    assert!(read_each_page(&src, a + 4 * P, 4));
    assert!(src.write_bytes(a + 4 * P, b"x").is_err());
    check(&vm, &[&src, &dst, &child]);
    drop((src, dst, child));
    assert_eq!(vm.statistics().free_count, vm.statistics().total_pages);
}
