extern crate std;

use alloc::vec::Vec;

use super::*;
use machvm_base::{KernError, PAGE_SIZE, VirtAddr};
use machvm_frame::FrameAllocator;
use machvm_pmap_x86_64::X86Pmap;

mod boundary;
mod consistency;

const P: u64 = PAGE_SIZE;

/// A context for one test; every change is checked after it (debug
/// builds).
fn ctx(frames: u64) -> Arc<VmContext> {
    let fa = Arc::new(FrameAllocator::hosted(frames * P).unwrap());
    let pm = Arc::new(X86Pmap::new(fa.clone(), Default::default()).unwrap());
    let c = VmContext::new(fa, pm);
    c.set_consistency_checks(true);
    c
}

#[track_caller]
fn verified(map: &VmMap) {
    map.verify().unwrap_or_else(|e| panic!("{e}\n{map}"));
    map.context().pmap().verify().unwrap();
    map.context().frames().verify().unwrap();
}

#[test]
fn lookup_uses_and_updates_the_hint() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    for i in 0..10 {
        map.allocate(0x10000 + i * 2 * P, P, false).unwrap();
    }
    let mut m = map.0.inner.write();
    // First through the tree, then (after enough lookups) the flat index.
    for round in 0..3 {
        assert_eq!(
            m.lookup(0x10000 + 4 * P + 5),
            Some(0x10000 + 4 * P),
            "round {round}"
        );
        let (hs, he, slot) = m.index.hint;
        assert_eq!((hs, he), (0x10000 + 4 * P, 0x10000 + 5 * P));
        assert_eq!(m.entries.slot(hs), Some(slot), "the hint names the slot");
        assert_eq!(m.lookup(0x10000 + 4 * P + 100), Some(0x10000 + 4 * P));
        assert_eq!(
            m.lookup(0x10000 + 6 * P),
            Some(0x10000 + 6 * P),
            "the successor"
        );
        assert_eq!(m.lookup(0x10000 + 5 * P), None, "a hole between entries");
        assert_eq!(m.lookup(0), None);
        assert_eq!(m.lookup(u64::MAX), None);
        for i in 0..10 {
            assert_eq!(m.lookup(0x10000 + i * 2 * P + 7), Some(0x10000 + i * 2 * P));
        }
    }
    assert!(m.index.valid, "the flat index was built");
    // A clip that splits nothing changes nothing; a change of bounds
    // invalidates the index.
    m.clip(&mut c.objects(), 0x10000 + 4 * P);
    assert!(m.index.valid);
    drop(m);
    map.deallocate(0x10000 + 2 * P, P).unwrap();
    let mut m = map.0.inner.write();
    assert!(!m.index.valid);
    assert_eq!(m.lookup(0x10000 + 2 * P), None, "stale bounds are not used");
    assert_eq!(m.lookup(0x10000 + 4 * P), Some(0x10000 + 4 * P));
}

#[test]
fn clipping_keeps_object_offsets() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    for i in 0..4u8 {
        map.write_bytes(a + u64::from(i) * P, &[i + 1]).unwrap();
    }
    map.protect(a + P, 2 * P, false, VmProt::READ).unwrap();
    assert_eq!(map.entry_count(), 3);
    {
        let m = map.0.inner.read();
        let objs = c.objects();
        let offs: Vec<u64> = m
            .entries
            .values()
            .map(|e| objs.window(e.object.as_ref().unwrap()).0.get())
            .collect();
        assert_eq!(offs, [0, 1, 3]);
    }
    // Back to one protection: one entry again, its windows joined.
    map.protect(a + P, 2 * P, false, VmProt::DEFAULT).unwrap();
    assert_eq!(map.entry_count(), 1);
    let mut b = [0u8; 1];
    for i in 0..4u8 {
        map.read_bytes(a + u64::from(i) * P, &mut b).unwrap();
        assert_eq!(b[0], i + 1);
    }
    verified(&map);
}

#[test]
fn first_fit_follows_holes() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    assert_eq!(a, USER_MIN);
    assert_eq!(map.0.inner.write().first_free, USER_MIN + 8 * P);
    map.deallocate(a + 2 * P, 2 * P).unwrap();
    assert_eq!(map.0.inner.write().first_free, a + 2 * P);
    assert_eq!(
        map.allocate(0, 3 * P, true).unwrap(),
        a + 8 * P,
        "the hole is too small"
    );
    assert_eq!(
        map.allocate(0, 2 * P, true).unwrap(),
        a + 2 * P,
        "exactly fits"
    );
    assert_eq!(map.0.inner.write().first_free, a + 11 * P);
    verified(&map);
}

#[test]
fn faults_zero_fill_protect_and_refuse() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0, 2 * P, true).unwrap();
    assert_eq!(
        map.fault(a - 1, Access::Read),
        Err(KernError::InvalidAddress)
    );
    assert_eq!(
        map.fault(a, Access::Execute),
        Err(KernError::ProtectionFailure)
    );
    map.fault(a + 5, Access::Write).unwrap();
    let t = c.pmap().extract(map.pmap(), VirtAddr::new(a)).unwrap();
    assert_eq!(t.prot, VmProt::DEFAULT);
    assert_eq!(c.counters.zero_fill_count.load(Relaxed), 1);
    verified(&map);
    // After fork the parent's translation is read-only until it writes.
    let child = map.fork().unwrap();
    assert_eq!(
        c.pmap().extract(map.pmap(), VirtAddr::new(a)).unwrap().prot,
        VmProt::READ
    );
    child.fault(a, Access::Read).unwrap();
    assert_eq!(
        c.pmap()
            .extract(child.pmap(), VirtAddr::new(a))
            .unwrap()
            .prot,
        VmProt::READ
    );
    map.fault(a, Access::Write).unwrap();
    assert_eq!(
        c.pmap().extract(map.pmap(), VirtAddr::new(a)).unwrap().prot,
        VmProt::DEFAULT
    );
    assert_eq!(c.counters.cow_faults.load(Relaxed), 1);
    verified(&map);
    verified(&child);
}

#[test]
fn a_read_maps_the_zero_frame_and_a_write_replaces_it() {
    let c = ctx(64);
    let zero = c.zero_frame().unwrap();
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0, 2 * P, true).unwrap();
    let free = c.frames().free_frames();
    map.fault(a, Access::Read).unwrap();
    let t = c.pmap().extract(map.pmap(), VirtAddr::new(a)).unwrap();
    assert_eq!((t.pa, t.prot), (zero, VmProt::READ));
    assert_eq!(c.counters.zero_fill_count.load(Relaxed), 0);
    assert_eq!(map.region(a).unwrap().resident_pages, 0);
    verified(&map);
    map.fault(a, Access::Write).unwrap();
    let t = c.pmap().extract(map.pmap(), VirtAddr::new(a)).unwrap();
    assert_ne!(t.pa, zero);
    assert_eq!(t.prot, VmProt::DEFAULT);
    assert_eq!(c.counters.zero_fill_count.load(Relaxed), 1);
    // One page-table frame per level and the page: nothing for the read.
    assert_eq!(map.region(a).unwrap().resident_pages, 1);
    assert!(c.frames().free_frames() < free);
    verified(&map);
}

#[test]
fn display_lists_every_region() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0x40_0000, 3 * P, false).unwrap();
    map.write_bytes(a, &[1; 10]).unwrap();
    map.protect(a + P, P, true, VmProt::READ).unwrap();
    map.inherit(a + 2 * P, P, VmInherit::Share).unwrap();
    let text = std::format!("{map}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("START-END"));
    assert!(
        lines[1].starts_with("0000000000400000-0000000000401000 rw-/rwx copy"),
        "{text}"
    );
    assert!(lines[1].ends_with(" 1        1"), "{text}");
    assert!(lines[2].contains(" r--/r-- copy"), "{text}");
    assert!(lines[3].contains(" share "), "{text}");
}

#[test]
fn concurrent_faults_forks_and_protects() {
    let c = ctx(4096);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0, 64 * P, true).unwrap();
    // One page no thread protects: the children write it, whatever the
    // interleaving with the protect calls on `a`.
    let spare = map.allocate(0, P, true).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let map = map.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let page = (i * 7 + t) % 64;
                    // May meet another thread's brief read-only window.
                    let _ = map.write_bytes(a + page * P, &[t as u8; 16]);
                    if i % 50 == 0 {
                        let child = map.fork().unwrap();
                        child.write_bytes(spare, &[9, t as u8]).unwrap();
                        let mut got = [0u8; 2];
                        child.read_bytes(spare, &mut got).unwrap();
                        assert_eq!(got, [9, t as u8]);
                        verified(&child);
                    }
                    if i % 37 == 0 {
                        map.protect(a + page * P, P, false, VmProt::READ).unwrap();
                        map.protect(a + page * P, P, false, VmProt::DEFAULT)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    verified(&map);
    drop(map);
    assert_eq!(c.frames().frames_in_use(machvm_frame::FrameUse::Object), 0);
}
