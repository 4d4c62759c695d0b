//! Regressions of paging's rounds and fallbacks found by a third
//! independent review (each failed before its fix): a store in rounds
//! that wrote part of its data and paged out before failing; rounds sized
//! from RAM rather than from what could be freed (most of RAM wired, or a
//! forked range whose copy-up sources were kept); a one-page load with
//! RAM and swap full; a lookup counted twice when the shared path falls
//! back.

mod common;

use common::{P, check};
use machvm::{KernError, VmSystem};

/// Reads `len` bytes at `a` (in one-page calls, so that the read itself
/// never takes the rounds path).
fn peek_pages(map: &machvm::VmMap, a: u64, pages: u64) -> Vec<u8> {
    let mut out = vec![0u8; (pages * P) as usize];
    for k in 0..pages {
        let s = (k * P) as usize;
        map.read_bytes(a + k * P, &mut out[s..s + P as usize])
            .unwrap();
    }
    out
}

/// Probe A. A store over `w` pages whose last `r` pages are already
/// resident (written earlier; translated, so not "missing": the
/// feasibility check counts them as needing nothing). Earlier rounds page
/// them out (only the current round's window is kept), so the last round
/// must page them back in: frames (hence slots) the check never counted.
/// With swap sized near the check's bound, the store fails in a later
/// round after earlier rounds' bytes were written.
#[test]
fn a_store_in_rounds_never_fails_after_writing_some_bytes_resident_tail() {
    let (w, r) = (400u64, 60u64);
    let mut partial = Vec::new();
    for swap in 100..260u64 {
        let vm = VmSystem::hosted_with_swap(256 * P, swap * P);
        let map = vm.create_map().unwrap();
        let a = map.allocate(0, w * P, true).unwrap();
        map.write_bytes(a + (w - r) * P, &vec![0x11; (r * P) as usize])
            .unwrap();
        let s0 = vm.statistics();
        let res = map.write_bytes(a, &vec![0x77; (w * P) as usize]);
        if res.is_err() {
            let s1 = vm.statistics();
            let back = peek_pages(&map, a, w);
            let moved = back.iter().filter(|&&b| b == 0x77).count();
            if moved > 0 || s1.pageouts != s0.pageouts {
                partial.push((swap, res, moved, s0.pageouts, s1.pageouts));
            }
        }
        check(&vm, &[&map]);
    }
    assert!(
        partial.is_empty(),
        "failed stores that wrote bytes / paged out (swap pages, result, bytes written, pageouts before, after): {partial:?}"
    );
}

/// Probe B. The same with only new pages, spanning many page-table spans:
/// page tables made by later rounds take frames the check's high-water
/// margin (8 frames for 1 MiB of RAM) does not cover.
#[test]
fn a_store_in_rounds_never_fails_after_writing_some_bytes_page_tables() {
    let w = 12 * 512u64; // 12 page-table spans (24 MiB) through 1 MiB of RAM
    let mut partial = Vec::new();
    let mut first_ok = None;
    for swap in (w - 300)..(w + 40) {
        let vm = VmSystem::hosted_with_swap(256 * P, swap * P);
        let map = vm.create_map().unwrap();
        let a = map.allocate(0, w * P, true).unwrap();
        let s0 = vm.statistics();
        let res = map.write_bytes(a, &vec![0x77; (w * P) as usize]);
        match res {
            Ok(()) => {
                first_ok.get_or_insert(swap);
                check(&vm, &[&map]);
                break;
            }
            Err(e) => {
                let s1 = vm.statistics();
                if s1.pageouts != s0.pageouts || s1.zero_fill_count != s0.zero_fill_count {
                    let back = peek_pages(&map, a, w);
                    let moved = back.iter().filter(|&&b| b == 0x77).count();
                    partial.push((swap, e, moved, s1.pageouts));
                }
                check(&vm, &[&map]);
            }
        }
    }
    assert!(
        partial.is_empty(),
        "failed stores that wrote bytes / paged out (swap pages, error, bytes written, pageouts): {partial:?}; first success at swap {first_ok:?}"
    );
}

fn pat(seed: u64, len: usize) -> Vec<u8> {
    common::noise(seed, len)
}

/// Writes `data` at `a` in calls of at most 16 pages (never the rounds path).
fn put(map: &machvm::VmMap, a: u64, data: &[u8]) {
    for (k, c) in data.chunks(16 * P as usize).enumerate() {
        map.write_bytes(a + (k * 16 * P as usize) as u64, c)
            .unwrap();
    }
}

fn get(map: &machvm::VmMap, a: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (k, c) in out.chunks_mut(16 * P as usize).enumerate() {
        map.read_bytes(a + (k * 16 * P as usize) as u64, c).unwrap();
    }
    out
}

/// Loads and stores bigger than RAM over every page state: resident,
/// paged out, below a shadow (resident or paged out), never touched, a
/// Share sibling's; unaligned ends with partial first/last pages.
#[test]
fn rounds_and_read_through_over_every_page_state() {
    use machvm::VmInherit;
    let vm = VmSystem::hosted_with_swap(256 * P, 2048 * P);
    vm.set_consistency_checks(true);
    let parent = vm.create_map().unwrap();
    let n = 700u64; // pages of A
    let a = parent.allocate(0x1000_0000, n * P, false).unwrap();
    let b = parent
        .allocate(0x1000_0000 + n * P, 100 * P, false)
        .unwrap();
    parent.inherit(b, 100 * P, VmInherit::Share).unwrap();
    // A: first 500 pages written; the rest never touched.
    let mut pa = pat(1, (n * P) as usize);
    for x in &mut pa[(500 * P) as usize..] {
        *x = 0;
    }
    put(&parent, a, &pa[..(500 * P) as usize]);
    // B: half written.
    let mut bb = vec![0u8; (100 * P) as usize];
    bb[..(50 * P) as usize].copy_from_slice(&pat(2, (50 * P) as usize));
    put(&parent, b, &bb[..(50 * P) as usize]);
    let child = parent.fork().unwrap();
    let mut ca = pa.clone();
    // The child writes pages 100..150 of A (its shadow), the parent 200..250
    // (the parent's shadow; the child still sees the old bytes).
    let cw = pat(3, (50 * P) as usize);
    put(&child, a + 100 * P, &cw);
    ca[(100 * P) as usize..(150 * P) as usize].copy_from_slice(&cw);
    let pw = pat(4, (50 * P) as usize);
    put(&parent, a + 200 * P, &pw);
    pa[(200 * P) as usize..(250 * P) as usize].copy_from_slice(&pw);
    // The child writes some of B (shared with the parent).
    let sw = pat(5, (20 * P) as usize);
    put(&child, b + 40 * P, &sw);
    bb[(40 * P) as usize..(60 * P) as usize].copy_from_slice(&sw);
    // Page out a scattering of everything.
    for k in (0..n).step_by(3) {
        parent.page_out(a + k * P, 2 * P).unwrap();
        child.page_out(a + k * P, P).unwrap();
    }
    child.page_out(b, 30 * P).unwrap();
    check(&vm, &[&parent, &child]);
    let s = vm.statistics();
    eprintln!("before read: {s:?}");
    // One read of the child's whole A + B, unaligned.
    let (off, len) = (77u64, ((n + 100) * P - 77 - 33) as usize);
    let mut got = vec![0u8; len];
    child.read_bytes(a + off, &mut got).unwrap();
    let mut want = ca.clone();
    want.extend_from_slice(&bb);
    let want = &want[off as usize..off as usize + len];
    let bad = got.iter().zip(want).position(|(x, y)| x != y);
    assert_eq!(
        bad,
        None,
        "read differs at byte {bad:?} (page {:?})",
        bad.map(|b| (b as u64 + off) / P)
    );
    check(&vm, &[&parent, &child]);
    eprintln!("after read: {:?}", vm.statistics());
    // One store over the child's A + B, unaligned.
    let data = pat(6, len);
    child.write_bytes(a + off, &data).unwrap();
    check(&vm, &[&parent, &child]);
    let mut all = ca.clone();
    all.extend_from_slice(&bb);
    all[off as usize..off as usize + len].copy_from_slice(&data);
    let (ca, bb) = all.split_at((n * P) as usize);
    assert!(
        get(&child, a, (n * P) as usize) == ca,
        "child's A after the store"
    );
    assert!(
        get(&child, b, (100 * P) as usize) == bb,
        "child's B after the store"
    );
    assert!(
        get(&parent, b, (100 * P) as usize) == bb,
        "parent's B (shared) after the store"
    );
    assert!(
        get(&parent, a, (n * P) as usize) == pa,
        "parent's A untouched by the child's store"
    );
    check(&vm, &[&parent, &child]);
}

/// Probe C. SPEC §8: ResourceShortage only when RAM and store together
/// cannot hold the pages (plus what wired pages and page tables need).
/// With most of RAM wired, a 100-page store that swap easily holds fails,
/// because its rounds are a fixed quarter of RAM (64 pages here) and the
/// first round cannot be given 64 frames — while the same bytes stored in
/// four calls of 25 pages succeed.
#[test]
fn a_store_bigger_than_free_ram_with_most_of_ram_wired_pages_through() {
    use machvm::VmProt;
    let rw = VmProt::READ.union(VmProt::WRITE);
    let run = |calls: u64| {
        let vm = VmSystem::hosted_with_swap(256 * P, 1024 * P);
        vm.set_consistency_checks(true);
        let map = vm.create_map().unwrap();
        let w = map.allocate(0x20_0000, 512 * P, false).unwrap();
        map.wire(w, 200 * P, rw).unwrap();
        let a = map.allocate(0x100_0000, 100 * P, false).unwrap();
        let s = vm.statistics();
        let data = pat(9, (100 * P) as usize);
        let per = (100 / calls * P) as usize;
        let r: Result<(), KernError> = data
            .chunks(per)
            .enumerate()
            .try_for_each(|(k, c)| map.write_bytes(a + (k * per) as u64, c));
        if r.is_ok() {
            assert!(get(&map, a, data.len()) == data);
        }
        check(&vm, &[&map]);
        (r, s.free_count, s.swap_free_pages)
    };
    let four = run(4);
    let one = run(1);
    assert_eq!(four.0, Ok(()), "{four:?}");
    assert_eq!(
        one.0,
        Ok(()),
        "one 100-page store (free frames, free slots before): {one:?}; in four calls: {four:?}"
    );
}

/// Probe D. After a fork, a store over the child's copy-on-write copy of
/// 200 resident pages (RAM 256 frames, swap 1024 pages). Each page needs a
/// copy-up frame; the sources may be paged out (a copy reads a paged-out
/// source from its slot), so RAM + swap hold it easily. The store's rounds
/// check keeps the whole range — which holds every evictable page, the
/// sources — so its first round "cannot be given room": ResourceShortage.
/// The same bytes in calls of 25 pages succeed.
#[test]
fn a_store_over_a_forked_range_bigger_than_free_ram_pages_through() {
    let run = |calls: u64| {
        let vm = VmSystem::hosted_with_swap(256 * P, 1024 * P);
        vm.set_consistency_checks(true);
        let map = vm.create_map().unwrap();
        let a = map.allocate(0x100_0000, 200 * P, false).unwrap();
        put(&map, a, &pat(1, (200 * P) as usize));
        let child = map.fork().unwrap();
        let s = vm.statistics();
        let data = pat(2, (200 * P) as usize);
        let per = (200 / calls * P) as usize;
        let r: Result<(), KernError> = data
            .chunks(per)
            .enumerate()
            .try_for_each(|(k, c)| child.write_bytes(a + (k * per) as u64, c));
        if r.is_ok() {
            assert!(get(&child, a, data.len()) == data);
            assert!(get(&map, a, data.len()) == pat(1, (200 * P) as usize));
        }
        check(&vm, &[&map, &child]);
        (r, s.free_count, s.swap_free_pages)
    };
    let eight = run(8);
    let one = run(1);
    assert_eq!(eight.0, Ok(()), "{eight:?}");
    assert_eq!(
        one.0,
        Ok(()),
        "one 200-page store (free frames, free slots before): {one:?}; in 8 calls: {eight:?}"
    );
}

/// Probe E. The shared path's fallback (1dc2b4c) says "nothing changed
/// here", but the shared attempt already counted its lookup (the zero
/// frame step bumps `lookups` before the pmap step's error is looked at);
/// the exclusive path then counts the same fault's lookup again.
#[test]
fn a_shared_path_fallback_counts_one_lookup_per_fault() {
    use machvm::{Access, VmProt};
    let vm = VmSystem::hosted_with_swap(256 * P, 256 * P);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0x20_0000, 1024 * P, false).unwrap();
    let n = common::wire_until_full(&vm, &map, a, 500);
    let free = vm.statistics().free_count;
    if free > 0 {
        map.write_bytes(a + n * P, &vec![0x5a; (free * P) as usize])
            .unwrap();
    }
    map.wire(a, n * P, VmProt::NONE).unwrap();
    assert_eq!(vm.statistics().free_count, 0);
    // A read of an untouched page in the same table span (no table
    // needed): one lookup.
    let near = a + 300 * P;
    let s0 = vm.statistics();
    map.fault(near + 200 * P, Access::Read).unwrap();
    let s1 = vm.statistics();
    // A read of an untouched page whose table is missing (the shared
    // path's enter fails, falls back).
    map.fault(a + 0x20_0000, Access::Read).unwrap();
    let s2 = vm.statistics();
    assert_eq!(
        (s1.lookups - s0.lookups, s1.faults - s0.faults),
        (s2.lookups - s1.lookups, s2.faults - s1.faults),
        "(lookups, faults) of one read fault: without fallback vs with"
    );
}

/// Probe F. With RAM and swap both full, b9a3624 serves multi-page loads
/// by reading through the objects ("which also serves loads with RAM and
/// swap both full"), but a load within one page still faults the page in
/// and fails: reading 2 pages succeeds where reading the first of them
/// alone fails.
#[test]
fn a_one_page_load_with_ram_and_swap_full_is_served_like_a_two_page_one() {
    let vm = VmSystem::hosted_with_swap(256 * P, 16 * P);
    vm.set_consistency_checks(true);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0x100_0000, 400 * P, false).unwrap();
    // Fill RAM and swap, 8 pages at a time, until a store runs short.
    let mut k = 0;
    while k < 400
        && map
            .write_bytes(a + k * P, &pat(k, (8 * P) as usize))
            .is_ok()
    {
        k += 8;
    }
    while k < 400 && map.write_bytes(a + k * P, &pat(k, P as usize)).is_ok() {
        k += 1;
    }
    let s = vm.statistics();
    eprintln!("{k} pages written: {s:?}");
    assert_eq!(s.swap_free_pages, 0, "{s:?}");
    // Page 0 was written first: it is paged out.
    let mut two = vec![0u8; (2 * P) as usize];
    let r2 = map.read_bytes(a, &mut two);
    let mut one = vec![0u8; P as usize];
    let r1 = map.read_bytes(a, &mut one);
    assert_eq!(r2, Ok(()));
    assert_eq!(
        r1,
        Ok(()),
        "one-page load after a two-page load of the same bytes succeeded; {:?}",
        vm.statistics()
    );
    assert!(one[..] == two[..P as usize]);
    check(&vm, &[&map]);
}

/// Probe A, one case: 1 MiB of RAM, 170 pages of swap. A 400-page store
/// whose last 60 pages are already resident. The check passes (340 new
/// pages + 8 <= 191 free + 170 slots), rounds 1-5 write 320 pages and page
/// out 137 (the resident tail among them), round 6 runs short.
#[test]
fn a_store_in_rounds_that_fails_wrote_nothing() {
    let vm = VmSystem::hosted_with_swap(256 * P, 170 * P);
    vm.set_consistency_checks(true);
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 400 * P, true).unwrap();
    map.write_bytes(a + 340 * P, &vec![0x11; (60 * P) as usize])
        .unwrap();
    let s0 = vm.statistics();
    let r = map.write_bytes(a, &vec![0x77; (400 * P) as usize]);
    let s1 = vm.statistics();
    check(&vm, &[&map]);
    if r.is_err() {
        let back = peek_pages(&map, a, 400);
        let written = back.iter().filter(|&&b| b == 0x77).count() as u64;
        assert_eq!(
            (r, written, s1.pageouts, s1.free_count, s1.swap_free_pages),
            (
                Err(KernError::ResourceShortage),
                0,
                s0.pageouts,
                s0.free_count,
                s0.swap_free_pages
            ),
            "(result, bytes written, pageouts, free, swap free) after the failed store"
        );
    }
}
