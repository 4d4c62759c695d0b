//! Faults under the shared map and graph locks: many threads on one page
//! fill it once; faults race every call that changes the map. The busy
//! protocol itself is model-checked by loom (machvm-object's pagemap.rs);
//! these tests hold under every interleaving and check the invariants and
//! the frame counts afterwards.

mod common;

use std::sync::Barrier;

use common::*;
use machvm::{Access, KernError, VmInherit, VmProt, vm_map_copy};

const THREADS: usize = 4;

#[test]
fn racing_faults_on_one_page_insert_exactly_one_frame() {
    let vm = system();
    let map = vm.create_map().unwrap();
    for round in 0..50u64 {
        let a = map.allocate(0, P, true).unwrap();
        let before = vm.statistics().active_count;
        let start = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (map, start) = (&map, &start);
                s.spawn(move || {
                    start.wait();
                    // Half the threads store their byte, half load first.
                    if (t as u64 + round).is_multiple_of(2) {
                        map.fault(a, Access::Read).unwrap();
                    }
                    map.write_bytes(a + t as u64 * 8, &[t as u8 + 1]).unwrap();
                });
            }
        });
        assert_eq!(vm.statistics().active_count, before + 1, "one frame");
        assert_eq!(map.region(a).unwrap().resident_pages, 1);
        let bytes = peek(&map, a, THREADS * 8);
        for t in 0..THREADS {
            assert_eq!(bytes[t * 8], t as u8 + 1, "thread {t}'s store");
        }
        check(&vm, &[&map]);
        map.deallocate(a, P).unwrap();
    }
}

#[test]
fn two_threads_fill_disjoint_halves_of_one_entry() {
    let vm = system();
    let map = vm.create_map().unwrap();
    // 8 MiB: an object whose pages are kept in shards.
    let pages = 1024u64;
    let a = map.allocate(0, 2 * pages * P, true).unwrap();
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        for half in 0..2u64 {
            let (map, start) = (&map, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..pages {
                    let va = a + (half * pages + i) * P;
                    map.write_bytes(va, &(va.to_le_bytes())).unwrap();
                }
            });
        }
    });
    for i in 0..2 * pages {
        let va = a + i * P;
        assert_eq!(peek(&map, va, 8), va.to_le_bytes());
    }
    assert_eq!(map.region(a).unwrap().resident_pages, 2 * pages);
    assert_eq!(vm.audit().unreachable_pages, 0);
    check(&vm, &[&map]);
}

#[test]
fn racing_faults_across_a_large_object_insert_one_frame_per_page() {
    let vm = system();
    let map = vm.create_map().unwrap();
    // 4,096 pages: eight 2 MiB chunks, the object's pages in shards;
    // every 61st page (crossing chunk boundaries at different points), by
    // every thread.
    let (pages, step) = (4096u64, 61u64);
    let a = map.allocate(0, pages * P, true).unwrap();
    let before = vm.statistics().active_count;
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS as u64 {
            let (map, start) = (&map, &start);
            s.spawn(move || {
                start.wait();
                for i in (0..pages).step_by(step as usize) {
                    map.write_bytes(a + i * P + t * 8, &[t as u8 + 1]).unwrap();
                }
            });
        }
    });
    let touched = pages.div_ceil(step);
    assert_eq!(
        vm.statistics().active_count,
        before + touched,
        "one frame a page"
    );
    assert_eq!(map.region(a).unwrap().resident_pages, touched);
    for i in (0..pages).step_by(step as usize) {
        let bytes = peek(&map, a + i * P, THREADS * 8);
        for t in 0..THREADS {
            assert_eq!(bytes[t * 8], t as u8 + 1, "page {i}, thread {t}'s store");
        }
    }
    check(&vm, &[&map]);
}

/// What a fault racing a change of its map may see.
fn allowed(r: Result<(), KernError>) {
    match r {
        Ok(()) | Err(KernError::InvalidAddress) | Err(KernError::ProtectionFailure) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn faults_race_protect_deallocate_fork_and_copy_on_one_map() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let other = vm.create_map().unwrap();
    let pages = 32u64;
    let a = map.allocate(0, pages * P, true).unwrap();
    let o = other.allocate(0, pages * P, true).unwrap();
    other
        .write_bytes(o, &vec![0x6b; (pages * P) as usize])
        .unwrap();
    let start = Barrier::new(3);
    std::thread::scope(|s| {
        // Two faulting threads: loads and stores all over the range.
        for t in 0..2u64 {
            let (map, start) = (&map, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..2000u64 {
                    let va = a + ((i * 7 + t * 13) % pages) * P + 8 * t;
                    if i % 3 == 0 {
                        let mut b = [0u8; 4];
                        allowed(map.read_bytes(va, &mut b));
                    } else {
                        allowed(map.write_bytes(va, &[t as u8; 4]));
                    }
                    allowed(map.fault(va, Access::Read));
                }
            });
        }
        // One thread changing the map under them.
        let (map, other, start) = (&map, &other, &start);
        s.spawn(move || {
            start.wait();
            for i in 0..200u64 {
                let page = a + (i % pages) * P;
                match i % 5 {
                    0 => {
                        map.protect(
                            page,
                            (4 * P).min((pages - i % pages) * P),
                            false,
                            VmProt::READ,
                        )
                        .unwrap();
                        map.protect(a, pages * P, false, VmProt::DEFAULT).unwrap();
                    }
                    1 => {
                        map.deallocate(page, P).unwrap();
                        map.allocate(page, P, false).unwrap();
                    }
                    2 => {
                        map.inherit(a, pages * P, VmInherit::Copy).unwrap();
                        let child = map.fork().unwrap();
                        child.write_bytes(page, &[0xcc]).unwrap();
                    }
                    3 => vm_map_copy(map, other, page, P, o, false, false).unwrap(),
                    _ => {
                        vm_map_copy(other, map, o + (i % pages) * P, P, page, false, false).unwrap()
                    }
                }
            }
        });
    });
    check(&vm, &[&map, &other]);
    let audit = vm.audit();
    assert_eq!(
        (audit.unreachable_pages, audit.mergeable_neighbours),
        (0, 0)
    );
    drop((map, other));
    let s = vm.statistics();
    assert_eq!(s.free_count, s.total_pages, "every frame returned");
}
