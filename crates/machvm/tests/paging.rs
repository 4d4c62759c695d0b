//! SPEC §8: paging to a default pager under pressure — working sets larger
//! than RAM read back exactly through every kind of sharing, wired pages
//! stay put, shortages come only with RAM and swap both full and change
//! nothing, and dropping everything gives every frame and slot back.

mod common;

use common::{P, check, noise, room};
use machvm::{KernError, VmInherit, VmMap, VmProt, VmSystem, vm_map_copy, vm_read};

const MIB: u64 = 1 << 20;
/// Bytes written or read per call: calls are smaller than RAM.
const CHUNK: u64 = 256 << 10;
const RW: VmProt = VmProt::READ.union(VmProt::WRITE);

/// A system of `ram` bytes of RAM and `swap` bytes of swap, checking every
/// map change (debug builds).
fn system(ram: u64, swap: u64) -> VmSystem {
    let vm = VmSystem::hosted_with_swap(ram, swap);
    vm.set_consistency_checks(true);
    vm
}

/// Chunk `k`'s bytes under `seed`: distinct for every chunk and seed.
fn pattern(k: u64, seed: u64, len: usize) -> Vec<u8> {
    noise((k + 1) ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93), len)
}

/// Writes chunk `k` of `[a, a + len)` under `seed`, for every `k` that
/// `pick` chooses.
fn write_chunks(map: &VmMap, a: u64, len: u64, seed: u64, pick: impl Fn(u64) -> bool) {
    for k in (0..len / CHUNK).filter(|&k| pick(k)) {
        let data = pattern(k, seed, CHUNK as usize);
        map.write_bytes(a + k * CHUNK, &data)
            .unwrap_or_else(|e| panic!("chunk {k}: {e:?}"));
    }
}

/// Asserts chunk `k` of `[a, a + len)` holds `seed(k)`'s pattern.
#[track_caller]
fn assert_chunks(map: &VmMap, a: u64, len: u64, seed: impl Fn(u64) -> u64) {
    assert_chunks_from(map, a, len, 0, seed);
}

/// Asserts chunk `k` of `[a, a + len)` holds the pattern of chunk `first +
/// k` under `seed(first + k)` (a copy of a range that began at chunk
/// `first`).
#[track_caller]
fn assert_chunks_from(map: &VmMap, a: u64, len: u64, first: u64, seed: impl Fn(u64) -> u64) {
    let mut buf = vec![0u8; CHUNK as usize];
    for k in 0..len / CHUNK {
        map.read_bytes(a + k * CHUNK, &mut buf)
            .unwrap_or_else(|e| panic!("chunk {k}: {e:?}"));
        let want = pattern(first + k, seed(first + k), CHUNK as usize);
        assert!(buf == want, "chunk {k} changed");
    }
}

#[test]
fn a_working_set_five_times_ram_reads_back_exactly() {
    let vm = system(8 * MIB, 64 * MIB);
    let empty = room(&vm);
    assert_eq!(empty.1, 64 * MIB / P);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 40 * MIB, true).unwrap();
    write_chunks(&map, a, 40 * MIB, 1, |_| true);
    check(&vm, &[&map]);
    let s = vm.statistics();
    assert!(s.pageouts >= (32 * MIB) / P, "{s:?}");
    let audit = vm.audit();
    assert!(audit.paged_out_pages >= (32 * MIB) / P, "{audit:?}");
    assert_chunks(&map, a, 40 * MIB, |_| 1);
    assert!(vm.statistics().pageins > 0);
    check(&vm, &[&map]);
    drop(map);
    assert_eq!(room(&vm), empty, "every frame and slot back");
    assert_eq!(vm.audit().paged_out_pages, 0);
}

#[test]
fn a_fork_under_pressure_keeps_both_sides() {
    let vm = system(8 * MIB, 64 * MIB);
    let empty = room(&vm);
    let parent = vm.create_map().unwrap();
    let a = parent.allocate(0, 24 * MIB, true).unwrap();
    write_chunks(&parent, a, 24 * MIB, 1, |_| true);
    let child = parent.fork().unwrap();
    check(&vm, &[&parent, &child]);
    write_chunks(&child, a, 24 * MIB, 2, |k| k % 2 == 1);
    write_chunks(&parent, a, 24 * MIB, 3, |k| k % 2 == 0);
    check(&vm, &[&parent, &child]);
    assert_chunks(&parent, a, 24 * MIB, |k| if k % 2 == 0 { 3 } else { 1 });
    assert_chunks(&child, a, 24 * MIB, |k| if k % 2 == 1 { 2 } else { 1 });
    drop(child);
    check(&vm, &[&parent]);
    assert_chunks(&parent, a, 24 * MIB, |k| if k % 2 == 0 { 3 } else { 1 });
    drop(parent);
    assert_eq!(room(&vm), empty);
}

#[test]
fn copies_and_snapshots_under_pressure_keep_the_bytes_of_their_moment() {
    let vm = system(8 * MIB, 64 * MIB);
    let empty = room(&vm);
    let src = vm.create_map().unwrap();
    let dst = vm.create_map().unwrap();
    let a = src.allocate(0, 24 * MIB, true).unwrap();
    write_chunks(&src, a, 24 * MIB, 1, |_| true);
    // A snapshot, an aligned copy into another map, and an unaligned one
    // (bytes moved now, read from swap where the source is paged out).
    let snap = vm_read(&src, a + 4 * MIB, 8 * MIB).unwrap();
    let b = a; // the destination map is empty: the same addresses are free
    vm_map_copy(&dst, &src, b, 16 * MIB, a, true, false).unwrap();
    let c = dst.allocate(0, MIB + P, true).unwrap();
    assert!(src.page_out(a, 24 * MIB).unwrap() > 0);
    vm_map_copy(&dst, &src, c + 123, MIB, a + 5 * CHUNK + 77, false, false).unwrap();
    check(&vm, &[&src, &dst]);
    write_chunks(&src, a, 24 * MIB, 9, |_| true);
    check(&vm, &[&src, &dst]);
    assert_chunks(&dst, b, 16 * MIB, |_| 1);
    let mut got = vec![0u8; MIB as usize];
    dst.read_bytes(c + 123, &mut got).unwrap();
    let mut want = pattern(5, 1, CHUNK as usize)[77..].to_vec();
    for k in 6..10 {
        want.extend(pattern(k, 1, CHUNK as usize));
    }
    let bad = got.iter().zip(&want).position(|(x, y)| x != y);
    assert!(
        bad.is_none(),
        "the unaligned copy differs from byte {bad:?}"
    );
    let third = vm.create_map().unwrap();
    let at = snap.copyout(&third).map_err(|(e, _)| e).unwrap();
    assert_chunks_from(&third, at, 8 * MIB, 4 * MIB / CHUNK, |_| 1);
    check(&vm, &[&src, &dst, &third]);
    drop((src, dst, third));
    assert_eq!(room(&vm), empty);
}

#[test]
fn share_siblings_see_each_others_stores_across_pageouts() {
    let vm = system(4 * MIB, 32 * MIB);
    let empty = room(&vm);
    let parent = vm.create_map().unwrap();
    let a = parent.allocate(0, 8 * MIB, true).unwrap();
    parent.inherit(a, 8 * MIB, VmInherit::Share).unwrap();
    let child = parent.fork().unwrap();
    write_chunks(&child, a, 8 * MIB, 4, |_| true);
    assert!(vm.pageout(u64::MAX) > 0);
    check(&vm, &[&parent, &child]);
    assert_chunks(&parent, a, 8 * MIB, |_| 4);
    write_chunks(&parent, a, 8 * MIB, 5, |k| k % 3 == 0);
    parent.page_out(a, 8 * MIB).unwrap();
    assert_chunks(&child, a, 8 * MIB, |k| if k % 3 == 0 { 5 } else { 4 });
    check(&vm, &[&parent, &child]);
    drop((parent, child));
    assert_eq!(room(&vm), empty);
}

#[test]
fn pages_paged_out_at_every_depth_of_a_chain_stay_reachable() {
    let vm = system(4 * MIB, 32 * MIB);
    let empty = room(&vm);
    let parent = vm.create_map().unwrap();
    let a = parent.allocate(0, 2 * MIB, true).unwrap();
    write_chunks(&parent, a, 2 * MIB, 1, |_| true);
    let child = parent.fork().unwrap();
    // The originals now lie below both maps' shadows: page them out, then
    // copy some up from swap, shadow again, page out at every depth.
    parent.page_out(a, 2 * MIB).unwrap();
    write_chunks(&child, a, 2 * MIB, 2, |k| k < 3);
    let grandchild = child.fork().unwrap();
    vm.pageout(u64::MAX);
    write_chunks(&grandchild, a, 2 * MIB, 3, |k| k == 1 || k == 5);
    vm.pageout(u64::MAX);
    check(&vm, &[&parent, &child, &grandchild]);
    assert!(vm.audit().paged_out_pages > 0);
    // The child goes: its object collapses into the grandchild's with
    // paged-out pages on both sides.
    drop(child);
    check(&vm, &[&parent, &grandchild]);
    assert_chunks(&parent, a, 2 * MIB, |_| 1);
    assert_chunks(&grandchild, a, 2 * MIB, |k| match k {
        1 | 5 => 3,
        0 | 2 => 2,
        _ => 1,
    });
    drop(parent);
    vm.pageout(u64::MAX);
    check(&vm, &[&grandchild]);
    assert_chunks(&grandchild, a, 2 * MIB, |k| match k {
        1 | 5 => 3,
        0 | 2 => 2,
        _ => 1,
    });
    drop(grandchild);
    assert_eq!(room(&vm), empty);
}

#[test]
fn wired_pages_survive_heavy_pressure_and_never_move() {
    let vm = system(8 * MIB, 64 * MIB);
    let map = vm.create_map().unwrap();
    let w = map.allocate(0, MIB, true).unwrap();
    write_chunks(&map, w, MIB, 7, |_| true);
    map.wire(w, MIB, RW).unwrap();
    let frames: Vec<_> = (0..MIB / P)
        .map(|i| frame_of(&vm, &map, w + i * P))
        .collect();
    let a = map.allocate(0, 40 * MIB, true).unwrap();
    write_chunks(&map, a, 40 * MIB, 1, |_| true);
    assert_eq!(map.page_out(w, MIB), Ok(0), "wired pages do not page out");
    vm.pageout(u64::MAX);
    check(&vm, &[&map]);
    for (i, &pa) in frames.iter().enumerate() {
        assert_eq!(
            frame_of(&vm, &map, w + i as u64 * P),
            pa,
            "wired page {i} moved"
        );
    }
    assert_chunks(&map, w, MIB, |_| 7);
    assert_eq!(map.region(w).unwrap().wired_pages, MIB / P);
    assert_eq!(map.region(w).unwrap().resident_pages, MIB / P);
}

/// The frame the page at `va` of `map` is in, as the MMU would translate it.
fn frame_of(vm: &VmSystem, map: &VmMap, va: u64) -> machvm::PhysAddr {
    let pm = vm.context().pmap();
    let pa = pm.translate(
        map.pmap(),
        machvm::VirtAddr::new(va),
        machvm::Access::Read,
        true,
    );
    pa.expect("wired pages are entered")
}

#[test]
fn a_shortage_comes_only_with_ram_and_swap_full_and_changes_nothing() {
    let (ram, swap) = (2 * MIB, 2 * MIB);
    let vm = system(ram, swap);
    let empty = room(&vm);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * MIB, true).unwrap();
    let mut k = 0;
    let failed = loop {
        let data = pattern(k, 1, CHUNK as usize);
        let before = (room(&vm), vm.statistics().pageouts);
        match map.write_bytes(a + k * CHUNK, &data) {
            Ok(()) => k += 1,
            Err(e) => break (e, before),
        }
    };
    let (err, before) = failed;
    assert_eq!(err, KernError::ResourceShortage);
    assert_eq!(
        (room(&vm), vm.statistics().pageouts),
        before,
        "the failed call paged nothing out"
    );
    // Nearly all of RAM and swap was used before the shortage.
    let written = k * CHUNK;
    assert!(
        written + 2 * CHUNK + ram / 8 >= ram + swap,
        "only {written} bytes fit"
    );
    check(&vm, &[&map]);
    let mut buf = vec![0u8; CHUNK as usize];
    map.read_bytes(a + k * CHUNK, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "the failed chunk's bytes stayed"
    );
    // Room again: half the chunks go, the rest read back.
    for j in (0..k).step_by(2) {
        map.deallocate(a + j * CHUNK, CHUNK).unwrap();
    }
    for j in (1..k).step_by(2) {
        map.read_bytes(a + j * CHUNK, &mut buf).unwrap();
        assert!(buf == pattern(j, 1, CHUNK as usize), "chunk {j}");
    }
    check(&vm, &[&map]);
    drop(map);
    assert_eq!(room(&vm), empty);
}

#[test]
fn without_swap_nothing_pages_and_shortages_are_as_before() {
    let vm = system(2 * MIB, 0);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * MIB, true).unwrap();
    let r = (0..4 * MIB / CHUNK)
        .try_for_each(|k| map.write_bytes(a + k * CHUNK, &pattern(k, 1, CHUNK as usize)));
    assert_eq!(r, Err(KernError::ResourceShortage));
    assert_eq!(vm.pageout(u64::MAX), 0);
    assert_eq!(map.page_out(a, 4 * MIB), Ok(0));
    let s = vm.statistics();
    assert_eq!((s.pageouts, s.pageins, s.swap_free_pages), (0, 0, 0));
}

#[test]
fn page_out_checks_its_range_like_deallocate() {
    let vm = system(2 * MIB, 2 * MIB);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    map.write_bytes(a, &[1u8; 4 * P as usize]).unwrap();
    assert_eq!(map.page_out(a, 0), Ok(0));
    assert_eq!(
        map.page_out(u64::MAX - P, 2 * P),
        Err(KernError::InvalidArgument)
    );
    assert_eq!(map.page_out(a, 8 * P), Err(KernError::InvalidAddress));
    assert_eq!(map.page_out(a + P, 2 * P), Ok(2));
    assert_eq!(
        map.page_out(a, 4 * P),
        Ok(2),
        "the other two; paged-out ones stay out"
    );
    assert_eq!(vm.audit().paged_out_pages, 4);
    assert_eq!(map.region(a).unwrap().resident_pages, 0);
    let mut b = [0u8; 4 * P as usize];
    map.read_bytes(a, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 1));
    assert_eq!(vm.statistics().pageins, 4);
    check(&vm, &[&map]);
}

/// A store of several pages asked the walker which pages it must fault
/// before it locked the graph; another map's pageout then took a page it
/// had found translated, and the store failed with `ProtectionFailure`
/// (found by the concurrency test). The pageout is forced into the window
/// where the store's reservation has the graph unlocked.
#[test]
fn a_pageout_by_another_map_during_a_stores_reservation_loses_nothing() {
    let vm = system(2 * MIB, 2 * MIB);
    let parent = vm.create_map().unwrap();
    let a = parent.allocate(0, 8 * P, true).unwrap();
    parent.inherit(a, 8 * P, VmInherit::Share).unwrap();
    let child = parent.fork().unwrap();
    parent.write_bytes(a, &[1u8; 8 * P as usize]).unwrap();
    // Two pages the store must fault (so it reserves), six it finds mapped.
    assert_eq!(parent.page_out(a + 6 * P, 2 * P), Ok(2));
    let sibling = child.clone();
    vm.context().frames().before_next_reserve(move || {
        assert_eq!(sibling.page_out(a, 6 * P), Ok(6));
    });
    let data = pattern(3, 3, 8 * P as usize);
    parent.write_bytes(a, &data).unwrap();
    assert!(
        vm.audit().paged_out_pages == 0,
        "the store paged its pages back in"
    );
    let mut back = vec![0u8; data.len()];
    child.read_bytes(a, &mut back).unwrap();
    assert!(back == data);
    check(&vm, &[&parent, &child]);
}

#[test]
fn pageout_takes_unreferenced_pages_and_gives_referenced_ones_a_second_chance() {
    let vm = system(8 * MIB, 8 * MIB);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 64 * P, true).unwrap();
    map.write_bytes(a, &[7u8; 64 * P as usize]).unwrap();
    assert_eq!(vm.statistics().active_count, 64);
    // One page goes; a third of the queue is aged to inactive meanwhile.
    assert_eq!(vm.pageout(1), 1);
    let s = vm.statistics();
    assert_eq!((s.active_count, s.inactive_count), (43, 20));
    // A load of page 5 (inactive) sets its referenced bit: the next scan
    // puts it back on the active queue and takes the pages around it.
    let mut b = [0u8; 8];
    map.read_bytes(a + 5 * P, &mut b).unwrap();
    assert_eq!(vm.pageout(20), 20);
    let s = vm.statistics();
    assert_eq!(s.reactivations, 1, "{s:?}");
    assert_eq!(map.page_out(a + 5 * P, P), Ok(1), "page 5 stayed resident");
    assert_eq!(map.page_out(a, 22 * P), Ok(0), "pages 0..22 but 5 went");
    assert_eq!(vm.audit().paged_out_pages, 22);
    check(&vm, &[&map]);
    let mut all = vec![0u8; 64 * P as usize];
    map.read_bytes(a, &mut all).unwrap();
    assert!(all.iter().all(|&x| x == 7));
}

/// The same working set through a swap file (`FileStore`) instead of host
/// memory: the pager is the store's user, nothing else changes.
#[test]
fn a_swap_file_serves_as_well_as_host_memory() {
    use std::sync::Arc;
    let path = std::env::temp_dir().join(format!("machvm-paging-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap(); // the open file lives on
    let store = machvm_pager::FileStore::new(file, 32 * MIB / P).unwrap();
    let frames = Arc::new(machvm::FrameAllocator::hosted(4 * MIB).unwrap());
    let pmap = Arc::new(machvm::X86Pmap::new(frames.clone(), Default::default()).unwrap());
    let pager = Arc::new(machvm::DefaultPager::new(store).unwrap());
    let vm = VmSystem::with_pager(frames, pmap, pager);
    vm.set_consistency_checks(true);
    let empty = room(&vm);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 16 * MIB, true).unwrap();
    write_chunks(&map, a, 16 * MIB, 6, |_| true);
    let child = map.fork().unwrap();
    write_chunks(&child, a, 16 * MIB, 8, |k| k % 4 == 0);
    assert_chunks(&map, a, 16 * MIB, |_| 6);
    assert_chunks(&child, a, 16 * MIB, |k| if k % 4 == 0 { 8 } else { 6 });
    assert!(vm.statistics().pageouts >= 12 * MIB / P);
    check(&vm, &[&map, &child]);
    drop((map, child));
    assert_eq!(room(&vm), empty);
}

/// SPEC §8: a call bigger than RAM pages its way through in rounds: one
/// `write_bytes` of 40 MiB and one `read_bytes` of it with 8 MiB of RAM.
/// Bigger than RAM and swap together, it fails before any byte moves.
#[test]
fn one_store_and_one_load_bigger_than_ram_page_through() {
    let vm = system(8 * MIB, 64 * MIB);
    let empty = room(&vm);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 41 * MIB, true).unwrap();
    let mut data = Vec::with_capacity(40 * MIB as usize);
    for k in 0..40 * MIB / CHUNK {
        data.extend(pattern(k, 11, CHUNK as usize));
    }
    map.write_bytes(a + 123, &data).unwrap();
    check(&vm, &[&map]);
    let mut back = vec![0u8; data.len()];
    map.read_bytes(a + 123, &mut back).unwrap();
    assert!(back == data, "40 MiB read back in one call");
    let mut edge = [1u8; 123];
    map.read_bytes(a, &mut edge).unwrap();
    assert!(
        edge.iter().all(|&b| b == 0),
        "bytes before the store untouched"
    );
    drop(map);
    assert_eq!(room(&vm), empty);

    let small = system(2 * MIB, 2 * MIB);
    let map = small.create_map().unwrap();
    let a = map.allocate(0, 8 * MIB, true).unwrap();
    let before = (room(&small), small.statistics().pageouts);
    assert_eq!(
        map.write_bytes(a, &vec![5u8; 8 * MIB as usize]),
        Err(KernError::ResourceShortage)
    );
    assert_eq!(
        (room(&small), small.statistics().pageouts),
        before,
        "nothing moved"
    );
    let mut b = vec![9u8; MIB as usize];
    map.read_bytes(a + 3 * MIB, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    check(&small, &[&map]);
}

/// A `vm_map_copy` that moves more bytes than RAM holds (unaligned: every
/// page copied now) pages its way through in rounds: between two maps with
/// `dst_alloc` and `src_destroy`, and within one map overlapping both
/// ways, as `memmove`. Too big for RAM and swap, it changes nothing.
#[test]
fn copies_bigger_than_ram_page_through_in_memmove_order() {
    let vm = system(4 * MIB, 64 * MIB);
    let empty = room(&vm);
    let src = vm.create_map().unwrap();
    let dst = vm.create_map().unwrap();
    let len = 16 * MIB;
    let a = src.allocate(0, len + MIB, true).unwrap();
    write_chunks(&src, a, len, 21, |_| true);
    let mut want = Vec::with_capacity(len as usize);
    for k in 0..len / CHUNK {
        want.extend(pattern(k, 21, CHUNK as usize));
    }
    let read = |m: &VmMap, at: u64, n: u64| {
        let mut b = vec![0u8; n as usize];
        for (i, part) in b.chunks_mut(CHUNK as usize).enumerate() {
            m.read_bytes(at + i as u64 * CHUNK, part).unwrap();
        }
        b
    };
    // Between maps: unaligned by 100 bytes, the destination allocated,
    // the source destroyed after.
    vm_map_copy(
        &dst,
        &src,
        0x1000_0000 + 100,
        len - 300,
        a + 200,
        true,
        false,
    )
    .unwrap();
    check(&vm, &[&src, &dst]);
    assert!(read(&dst, 0x1000_0000 + 100, len - 300) == want[200..len as usize - 100]);
    // Within one map, overlapping: up by 3 pages and 5 bytes (copied from
    // the end), then back down (from the start).
    let shift = 3 * P + 5;
    vm_map_copy(&src, &src, a + shift, len - shift, a, false, false).unwrap();
    assert!(
        read(&src, a + shift, len - shift) == want[..(len - shift) as usize],
        "memmove up"
    );
    vm_map_copy(&src, &src, a, len - shift, a + shift, false, false).unwrap();
    assert!(
        read(&src, a, len - shift) == want[..(len - shift) as usize],
        "memmove down"
    );
    check(&vm, &[&src, &dst]);
    // src_destroy, in rounds too.
    let b = 0x3000_0000 + 7;
    let now = read(&src, a + 9, len - P);
    vm_map_copy(&dst, &src, b, len - P, a + 9, true, true).unwrap();
    assert!(
        read(&dst, b, len - P) == now,
        "copied, then the source destroyed"
    );
    assert!(src.region(a).is_err() || src.region(a).unwrap().start >= a + len);
    check(&vm, &[&src, &dst]);
    drop((src, dst));
    assert_eq!(room(&vm), empty);

    let small = system(2 * MIB, 2 * MIB);
    let (s, d) = (small.create_map().unwrap(), small.create_map().unwrap());
    let a = s.allocate(0, 8 * MIB, true).unwrap();
    write_chunks(&s, a, MIB, 1, |_| true);
    let before = (room(&small), small.statistics().pageouts);
    assert_eq!(
        vm_map_copy(&d, &s, 0x1000_0000 + 1, 8 * MIB - 1, a, true, true),
        Err(KernError::ResourceShortage)
    );
    assert_eq!(
        (room(&small), small.statistics().pageouts),
        before,
        "nothing moved"
    );
    assert!(d.region(0).is_err(), "no destination allocated");
    check(&small, &[&s, &d]);
}

/// With RAM and swap both full, a paged-out page can still be read, and
/// stored to in place: it trades places with a resident page (one store
/// exchange), taking no frame and no slot.
#[test]
fn with_ram_and_swap_full_a_paged_out_page_trades_places() {
    let vm = system(2 * MIB, MIB);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * MIB, true).unwrap();
    let byte = |p: u64| (p % 250) as u8 + 1;
    // Fill, a page at a time, until a page no longer fits.
    let pages = common::fill_until_short(&map, a, byte);
    let s = vm.statistics();
    assert_eq!(s.swap_free_pages, 0, "{s:?}");
    // A paged-out page: page_out of it finds nothing resident.
    let p = (0..pages)
        .find(|&p| map.page_out(a + p * P, P) == Ok(0))
        .expect("a paged-out page");
    let before = (vm.statistics().free_count, vm.statistics().swap_free_pages);
    let mut b = [0u8; 8];
    map.read_bytes(a + p * P + 8, &mut b).unwrap();
    assert_eq!(b, [byte(p); 8]);
    map.write_bytes(a + p * P, &[0xEE; 8]).unwrap();
    let after = (vm.statistics().free_count, vm.statistics().swap_free_pages);
    assert_eq!(after, before, "no frame or slot taken");
    check(&vm, &[&map]);
    // Every page still holds its bytes.
    for q in (0..pages).filter(|&q| q != p) {
        let mut b = [0u8; 1];
        map.read_bytes(a + q * P + 100, &mut b).unwrap();
        assert_eq!(b[0], byte(q), "page {q}");
    }
    check(&vm, &[&map]);
}
