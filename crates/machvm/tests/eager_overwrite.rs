//! Eager copies and multi-page stores write the pages they cover whole as
//! those pages fault in, with no zeroing or copy-up first. What a task
//! sees must not change: every byte of the range is the source's, the
//! bytes around it in its first and last pages are what they were, and
//! no byte of a frame's previous life shows through, whether read through
//! the objects or through the page tables.

use std::sync::Arc;

use machvm::{Access, PAGE_SIZE, VmMap, VmSystem, vm_map_copy};
use machvm_frame::FrameAllocator;
use machvm_pmap::{Pmap, VirtAddr};
use machvm_pmap_x86_64::X86Pmap;

const P: u64 = PAGE_SIZE;

/// A system whose free frames all hold `0xEE`: whatever an allocation does
/// not overwrite shows as `0xEE`.
fn dirty_system(pages: u64) -> (VmSystem, Arc<FrameAllocator>, Arc<X86Pmap>) {
    let frames = Arc::new(FrameAllocator::hosted(pages * P).unwrap());
    let pm = Arc::new(X86Pmap::new(frames.clone(), Default::default()).unwrap());
    let vm = VmSystem::with_pmap(frames.clone(), pm.clone());
    let mut all = Vec::new();
    while let Ok(pa) = frames.alloc(machvm_frame::FrameUse::Object) {
        frames.mem().write(pa, &[0xEE; P as usize]);
        all.push(pa);
    }
    for pa in all {
        frames.free(pa);
    }
    (vm, frames, pm)
}

/// Asserts that the task's own loads at `va` (page tables, then frames)
/// see `bytes` wherever a page is mapped.
fn assert_mmu_sees(pm: &X86Pmap, frames: &FrameAllocator, map: &VmMap, va: u64, bytes: &[u8]) {
    for (i, &want) in bytes.iter().enumerate() {
        let at = VirtAddr::new(va + i as u64);
        if let Ok(pa) = pm.translate(map.pmap(), at, Access::Read, true) {
            let mut b = [0u8];
            frames.mem().read(pa, &mut b);
            assert_eq!(b[0], want, "byte {i} through the page tables");
        }
    }
}

fn pattern(n: u64, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn an_eager_copy_moves_every_byte_and_nothing_else() {
    let (vm, frames, pm) = dirty_system(512);
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let len = 8 * P;
    let a = src.allocate(0, len, true).unwrap();
    let data = pattern(len, 7);
    src.write_bytes(a, &data).unwrap();
    // 8 bytes off a page: not aligned, so the copy moves bytes; the
    // destination's first and last pages are partly outside the range.
    let off = 8;
    let d = dst.allocate(0, len + P, true).unwrap();
    vm_map_copy(&dst, &src, d + off, len, a, false, false).unwrap();
    let mut got = vec![0u8; (len + P) as usize];
    dst.read_bytes(d, &mut got).unwrap();
    assert_eq!(&got[off as usize..(off + len) as usize], &data[..]);
    assert!(
        got[..off as usize].iter().all(|&b| b == 0),
        "head page zeroed"
    );
    assert!(
        got[(off + len) as usize..].iter().all(|&b| b == 0),
        "tail page zeroed"
    );
    // Through the page tables: every mapped byte is the same.
    assert_mmu_sees(&pm, &frames, &dst, d, &got);
    dst.verify().unwrap();
    vm.verify().unwrap();
}

#[test]
fn a_store_over_copy_on_write_pages_leaves_the_original() {
    let (vm, frames, pm) = dirty_system(512);
    let parent = vm.create_map().unwrap();
    let len = 6 * P;
    let a = parent.allocate(0, len, true).unwrap();
    let before = pattern(len, 3);
    parent.write_bytes(a, &before).unwrap();
    let child = parent.fork().unwrap();
    // Whole pages 1..5 and parts of pages 0 and 5.
    let (at, n) = (a + P / 2, 5 * P);
    let new = pattern(n, 99);
    child.write_bytes(at, &new).unwrap();
    let mut p = vec![0u8; len as usize];
    parent.read_bytes(a, &mut p).unwrap();
    assert_eq!(p, before, "the parent keeps its bytes");
    let mut c = vec![0u8; len as usize];
    child.read_bytes(a, &mut c).unwrap();
    let mut want = before.clone();
    want[(P / 2) as usize..(P / 2 + n) as usize].copy_from_slice(&new);
    assert_eq!(c, want);
    for (map, bytes) in [(&parent, &p), (&child, &c)] {
        assert_mmu_sees(&pm, &frames, map, a, bytes);
        map.verify().unwrap();
    }
    vm.verify().unwrap();
}

#[test]
fn a_store_over_resident_pages_mapped_read_only_writes_them_in_place() {
    let (vm, frames, pm) = dirty_system(512);
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let len = 6 * P;
    let a = src.allocate(0, len, true).unwrap();
    let data = pattern(len, 42);
    src.write_bytes(a, &data).unwrap();
    let d = dst.allocate(0, len + P, true).unwrap();
    dst.write_bytes(d, &vec![0x77; (len + P) as usize]).unwrap();
    // Resident, but mapped read-only now: every page needs a write fault.
    let rw = machvm::VmProt::READ | machvm::VmProt::WRITE;
    dst.protect(d, len + P, false, machvm::VmProt::READ)
        .unwrap();
    dst.protect(d, len + P, false, rw).unwrap();
    let used = vm.statistics().active_count;
    vm_map_copy(&dst, &src, d + 16, len, a, false, false).unwrap();
    assert_eq!(
        vm.statistics().active_count,
        used,
        "no new page: written in place"
    );
    let mut got = vec![0u8; (len + P) as usize];
    dst.read_bytes(d, &mut got).unwrap();
    assert!(got[..16].iter().all(|&b| b == 0x77));
    assert_eq!(&got[16..16 + len as usize], &data[..]);
    assert!(got[16 + len as usize..].iter().all(|&b| b == 0x77));
    assert_mmu_sees(&pm, &frames, &dst, d, &got);
    dst.verify().unwrap();
    vm.verify().unwrap();
}

/// A multi-page store whose one missing page is a whole fresh page, with
/// no frame left: it fails as the single-page store does and counts its
/// fault as that one does (`faults` counts failed faults too). Found by
/// review: the run path returned without counting.
#[test]
fn a_failed_store_counts_its_fault_as_the_per_page_fault_does() {
    let (vm, frames, _pm) = dirty_system(64);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 2 * P, true).unwrap();
    // Page 0 resident and mapped writable; page 1 untouched.
    map.write_bytes(a, &[1]).unwrap();
    let mut held = Vec::new();
    while let Ok(pa) = frames.alloc(machvm_frame::FrameUse::Object) {
        held.push(pa);
    }
    let before = vm.statistics();
    let r = map.write_bytes(a, &vec![7u8; 2 * P as usize]);
    assert_eq!(r, Err(machvm::KernError::ResourceShortage));
    let after = vm.statistics();
    let one = map.write_bytes(a + P, &vec![7u8; P as usize]);
    assert_eq!(one, Err(machvm::KernError::ResourceShortage));
    let single = vm.statistics();
    assert_eq!(
        (after.faults - before.faults, after.lookups - before.lookups),
        (single.faults - after.faults, single.lookups - after.lookups),
    );
    for pa in held {
        frames.free(pa);
    }
    map.verify().unwrap();
    vm.verify().unwrap();
}

/// An unaligned `vm_copy` within one map onto an overlapping range, longer
/// than the copy layer's 64-page source batch, after a fork shared the
/// pages: the source is read in batches while the destination's faults
/// copy up and shorten chains around it; the result is a memmove.
#[test]
fn an_overlapping_copy_within_one_map_moves_as_memmove() {
    let (vm, frames, pm) = dirty_system(2048);
    vm.set_consistency_checks(true);
    let map = vm.create_map().unwrap();
    let len = 150 * P;
    let a = map.allocate(0, len + 8 * P, true).unwrap();
    let data = pattern(len + 8 * P, 11);
    map.write_bytes(a, &data).unwrap();
    let child = map.fork().unwrap();
    let (src, dst, n) = (a + 100, a + 3 * P + 40, len);
    machvm::vm_copy(&map, src, n, dst).unwrap();
    let mut want = data.clone();
    want.copy_within(100..100 + n as usize, (3 * P + 40) as usize);
    let mut got = vec![0u8; (len + 8 * P) as usize];
    map.read_bytes(a, &mut got).unwrap();
    assert!(got == want, "the copy is a memmove");
    assert_mmu_sees(&pm, &frames, &map, a, &got);
    let mut old = vec![0u8; (len + 8 * P) as usize];
    child.read_bytes(a, &mut old).unwrap();
    assert!(old == data, "the fork's child keeps its bytes");
    map.verify().unwrap();
    child.verify().unwrap();
    vm.verify().unwrap();
}
