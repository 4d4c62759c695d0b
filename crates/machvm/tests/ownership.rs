//! Ownership regressions: each test is one defect of the reference-count
//! and sticky-flag heuristics the object graph replaced, and each failed
//! before it (see the commit that added it).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use machvm::{KernError, VmInherit, VmMap, VmProt, VmSystem, vm_copy, vm_map_copy, vm_read};
use machvm_frame::{FrameAllocator, FrameUse};
use machvm_pmap::{CpuSet, PhysAddr, Pmap, VirtAddr};
use machvm_pmap_x86_64::{Mmu, X86Config, X86Pmap};

fn object_frames(vm: &VmSystem) -> u64 {
    vm.context().frames().frames_in_use(FrameUse::Object)
}

/// Defect 1: a failed call's rollback threw away another map's write. Map
/// A shares page 0 with map B; page 1 is not shared. A's two-page store
/// zero-fills page 0 and runs out of frames on page 1; in between, B writes
/// page 0 and loses its translation. The rollback saw one translation of
/// page 0 and freed it.
#[test]
fn a_failed_store_never_takes_back_a_page_a_sharer_wrote() {
    let vm = system();
    let a = vm.create_map().unwrap();
    let base = a.allocate(0, P, true).unwrap();
    a.allocate(base + P, 2 * P, false).unwrap();
    // Page tables for the range exist, so the only allocations are pages.
    a.write_bytes(base + 2 * P, &[1]).unwrap();
    a.inherit(base, P, VmInherit::Share).unwrap();
    let b = a.fork().unwrap();
    let b2 = b.clone();
    vm.context().frames().fail_nth_allocation_with(2, move || {
        b2.write_bytes(base, b"sharer").unwrap();
        b2.protect(base, P, false, VmProt::NONE).unwrap();
        b2.protect(base, P, false, VmProt::DEFAULT).unwrap();
    });
    let r = a.write_bytes(base, &[7u8; 2 * P as usize]);
    vm.context().frames().fail_nth_allocation(0);
    assert_eq!(r, Err(KernError::ResourceShortage));
    assert_eq!(peek(&b, base, 6), b"sharer", "the sharer's store was lost");
    assert_eq!(peek(&a, base, 6), b"sharer");
    assert_eq!(peek(&a, base + P, 1), [0]);
    check(&vm, &[&a, &b]);
}

/// An MMU whose invalidation of the parent's translations runs the race of
/// defect 2 (as a CPU would see it): another thread of the parent tries to
/// copy the page up, and CPU 1 — still holding the old writable
/// translation — stores through it.
struct RacingMmu {
    race: Mutex<Option<Race>>,
    /// Whether the copy-up ran inside the shootdown window.
    copied_up_early: Mutex<bool>,
}

struct Race {
    parent: VmMap,
    va: u64,
    old: PhysAddr,
    frames: Arc<FrameAllocator>,
}

impl Mmu for RacingMmu {
    fn current_cpu(&self) -> usize {
        0
    }

    fn load_root(&self, _root: PhysAddr) {}

    fn invalidate(&self, _cpus: CpuSet, _pages: Option<&[VirtAddr]>) {
        let Some(r) = self.race.lock().unwrap().take() else {
            return;
        };
        // Another thread of the parent writes the page: a copy-on-write
        // fault, if the map can be had now.
        if !r.parent.is_locked() {
            r.parent.write_bytes(r.va, b"T2").unwrap();
            *self.copied_up_early.lock().unwrap() = true;
        }
        // CPU 1's store through its stale writable translation.
        r.frames.mem().write(r.old + 100, b"stale");
    }
}

/// Defect 2: fork sent its TLB shootdown after dropping the parent's map
/// lock, so another thread could copy a page up while a CPU still held the
/// old writable translation; that CPU's next store landed in the page the
/// child shares, and the parent lost it.
#[test]
fn fork_write_protects_everywhere_before_any_copy_up() {
    let mmu: &'static RacingMmu = Box::leak(Box::new(RacingMmu {
        race: Mutex::new(None),
        copied_up_early: Mutex::new(false),
    }));
    let frames = Arc::new(FrameAllocator::hosted(16 << 20).unwrap());
    let cfg = X86Config {
        mmu: Some(mmu),
        ..X86Config::default()
    };
    let pmap = Arc::new(X86Pmap::new(frames.clone(), cfg).unwrap());
    let vm = VmSystem::with_pmap(frames.clone(), pmap.clone());
    let parent = vm.create_map().unwrap();
    let va = parent.allocate(0, P, true).unwrap();
    parent.write_bytes(va, b"original").unwrap();
    // A thread of the parent runs on CPU 1 with the page's translation.
    pmap.activate(parent.pmap(), 1);
    let old = pmap.extract(parent.pmap(), VirtAddr::new(va)).unwrap().pa;
    *mmu.race.lock().unwrap() = Some(Race {
        parent: parent.clone(),
        va,
        old,
        frames: frames.clone(),
    });
    let child = parent.fork().unwrap();
    pmap.deactivate(parent.pmap(), 1);
    assert!(mmu.race.lock().unwrap().is_none(), "fork sent no shootdown");
    let early = *mmu.copied_up_early.lock().unwrap();
    if !early {
        parent.write_bytes(va, b"T2").unwrap();
    }
    assert!(
        !early,
        "a copy-up ran while CPU 1 still held a writable translation"
    );
    assert_eq!(
        peek(&parent, va + 100, 5),
        b"stale",
        "the parent lost its own store"
    );
    assert_eq!(peek(&parent, va, 2), b"T2");
    check(&vm, &[&parent, &child]);
}

/// Defect 5: `shared` never cleared. After a `Share` child exits and the
/// entry is clipped, the region was still reported shared and a `vm_read`
/// of it copied every page eagerly.
#[test]
fn shared_ends_when_the_sharer_goes() {
    let vm = system();
    let a = vm.create_map().unwrap();
    let base = a.allocate(0, 4 * P, true).unwrap();
    a.write_bytes(base, &[3u8; 4 * P as usize]).unwrap();
    a.inherit(base, 4 * P, VmInherit::Share).unwrap();
    let b = a.fork().unwrap();
    assert!(a.region(base).unwrap().shared);
    drop(b);
    a.protect(base + 3 * P, P, false, VmProt::READ).unwrap();
    assert!(!a.region(base).unwrap().shared, "no other map holds it");
    let before = vm.statistics().free_count;
    let c = vm_read(&a, base, 3 * P).unwrap();
    assert_eq!(
        vm.statistics().free_count,
        before,
        "an unshared range was copied eagerly"
    );
    drop(c);
    check(&vm, &[&a]);
}

/// Defect 5, second half: a `Copy` entry clipped from the same object as a
/// `Share` entry was copied eagerly at fork (or not, by entry order) and
/// reported shared.
#[test]
fn a_copy_sibling_of_a_shared_entry_is_copy_on_write() {
    let vm = system();
    let a = vm.create_map().unwrap();
    let base = a.allocate(0, 4 * P, true).unwrap();
    a.write_bytes(base, &[5u8; 4 * P as usize]).unwrap();
    a.inherit(base, 2 * P, VmInherit::Share).unwrap();
    let before = vm.statistics().free_count;
    let b = a.fork().unwrap();
    // Only the child's page tables: no page copied.
    let tables = vm.context().pmap().resident_count(b.pmap());
    assert_eq!(tables, 0);
    assert_eq!(
        object_frames(&vm),
        4,
        "the Copy half was copied eagerly ({} frames taken)",
        before - vm.statistics().free_count
    );
    assert!(a.region(base).unwrap().shared);
    assert!(
        !a.region(base + 2 * P).unwrap().shared,
        "the Copy half is not shared"
    );
    b.write_bytes(base + 2 * P, &[6]).unwrap();
    assert_eq!(peek(&a, base + 2 * P, 1), [5]);
    check(&vm, &[&a, &b]);
}

/// Defect 6: copy-in did not clip. Copying 2 pages of a 64-page resident
/// entry made all 64 copy-on-write, so writing the 62 nobody copied took 62
/// frames. Only the pages copied may be copied again when written.
#[test]
fn copy_in_makes_only_the_copied_pages_copy_on_write() {
    type CopyIn = fn(&VmMap, &VmMap, u64) -> Option<machvm::VmMapCopy>;
    let ways: [(&str, CopyIn); 3] = [
        ("vm_read", |src, _, a| {
            Some(vm_read(src, a + 10 * P, 2 * P).unwrap())
        }),
        ("vm_map_copy", |src, dst, a| {
            vm_map_copy(dst, src, 0x100_0000, 2 * P, a + 10 * P, true, false).unwrap();
            None
        }),
        ("vm_copy", |src, _, a| {
            src.allocate(a + 64 * P, 2 * P, false).unwrap();
            vm_copy(src, a + 10 * P, 2 * P, a + 64 * P).unwrap();
            None
        }),
    ];
    for (name, copy_in) in ways {
        let vm = system();
        let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
        let a = src.allocate(0x10_0000, 64 * P, false).unwrap();
        src.write_bytes(a, &[1u8; 64 * P as usize]).unwrap();
        let kept = copy_in(&src, &dst, a);
        let before = object_frames(&vm);
        for p in 0..64 {
            src.write_bytes(a + p * P, &[2]).unwrap();
        }
        assert_eq!(
            object_frames(&vm) - before,
            2,
            "{name}: pages nobody copied were copied"
        );
        drop(kept);
        check(&vm, &[&src, &dst]);
    }
}

/// Defect 7: chains grew with every kept snapshot of part of an entry while
/// other pages of it were written (2,000 rounds, a chain 2,001 deep).
#[test]
fn snapshots_of_part_of_an_entry_do_not_grow_its_chain() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    map.write_bytes(a, &[1u8; 8 * P as usize]).unwrap();
    let mut kept = Vec::new();
    for i in 0..2000u64 {
        kept.push(vm_read(&map, a, 2 * P).unwrap());
        map.write_bytes(a + (2 + i % 6) * P, &[i as u8]).unwrap();
    }
    assert!(
        map.max_chain_depth() <= 2,
        "chain {} deep",
        map.max_chain_depth()
    );
    drop(kept);
    check(&vm, &[&map]);
}

/// Defect 8: memory nothing could reach stayed resident. After a dropped
/// 2-page snapshot, deallocating 1,023 of 1,024 touched pages gave no frame
/// back.
#[test]
fn deallocated_pages_come_back_after_a_snapshot_is_dropped() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 1024 * P, true).unwrap();
    map.write_bytes(a, &vec![1u8; 1024 * P as usize]).unwrap();
    drop(vm_read(&map, a, 2 * P).unwrap());
    map.deallocate(a + P, 1023 * P).unwrap();
    assert_eq!(
        object_frames(&vm),
        1,
        "pages nothing reaches stayed resident"
    );
    assert_eq!(peek(&map, a, 1), [1]);
    check(&vm, &[&map]);
}

/// Defect 8, second half: `vm_copy` of pages 0-3 over 4-7 inside one entry
/// kept 8 frames where 4 are reachable.
#[test]
fn a_copy_over_pages_of_the_same_entry_frees_the_overwritten() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    let data: Vec<u8> = (0..8 * P).map(|i| (i / P) as u8).collect();
    map.write_bytes(a, &data).unwrap();
    vm_copy(&map, a, 4 * P, a + 4 * P).unwrap();
    assert_eq!(object_frames(&vm), 4, "overwritten pages stayed resident");
    assert_eq!(peek(&map, a + 5 * P, 1), [1]);
    check(&vm, &[&map]);
}

/// Defect 9: entries never merged. Toggling each of 512 pages to `READ`
/// and back left 512 entries.
#[test]
fn toggled_protections_leave_one_entry() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 512 * P, true).unwrap();
    map.write_bytes(a, &vec![1u8; 512 * P as usize]).unwrap();
    for p in 0..512 {
        map.protect(a + p * P, P, false, VmProt::READ).unwrap();
        map.protect(a + p * P, P, false, VmProt::DEFAULT).unwrap();
    }
    assert_eq!(map.entry_count(), 1);
    check(&vm, &[&map]);
}

/// A tiny deterministic generator for the exhaustion run below.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Defect 10: a failed same-map `vm_copy` (out of frames) changed the
/// free-frame count by one. A seeded exhaustion run: random writes, forks,
/// kept snapshots and copies, and every copy first tried with its k-th
/// allocation failing, for k = 1, 2, 3, ...: each failure must leave the
/// free count exactly as it was.
#[test]
fn a_failed_same_map_copy_changes_no_frame_count() {
    for seed in 1..=40u64 {
        let vm = VmSystem::hosted(256 * P);
        let map = vm.create_map().unwrap();
        let a = map.allocate(0, 16 * P, true).unwrap();
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut kept = Vec::new();
        let mut children = Vec::new();
        for _ in 0..60 {
            let page = a + r.below(16) * P;
            match r.below(5) {
                0 | 1 => {
                    let _ = map.write_bytes(page + r.below(P), &[r.below(256) as u8; 64]);
                }
                2 => match map.fork() {
                    Ok(c) => children.push(c),
                    Err(e) => assert_eq!(e, KernError::ResourceShortage),
                },
                3 => {
                    if let Ok(c) = vm_read(&map, page, 2 * P) {
                        kept.push(c);
                    }
                    if r.below(2) == 0 && !children.is_empty() {
                        children.remove(0);
                    }
                }
                _ => {
                    let (src, len) = (a + r.below(8 * P), P + r.below(6 * P));
                    let dst = a + r.below(16 * P - len);
                    for k in 1..=8 {
                        let before = vm.statistics().free_count;
                        vm.context().frames().fail_nth_allocation(k);
                        let got = vm_copy(&map, src, len, dst);
                        vm.context().frames().fail_nth_allocation(0);
                        if got.is_ok() {
                            break;
                        }
                        assert_eq!(got, Err(KernError::ResourceShortage));
                        assert_eq!(
                            vm.statistics().free_count,
                            before,
                            "seed {seed}: a failed vm_copy changed the free count"
                        );
                    }
                }
            }
            check(&vm, &[&map]);
        }
    }
}

/// 100,000 live snapshots of pages written in turns: an object chain
/// 100,000 deep, which no call may cross by recursion. Everything runs on a
/// thread with a 256 KiB stack (a kernel's stacks are smaller than a host
/// thread's 8 MiB): the snapshots, `region`, reads, forks, the audit,
/// `verify`, and dropping it all.
#[test]
fn a_hundred_thousand_live_snapshots_on_a_small_stack() {
    const N: u64 = 100_000;
    let t = std::thread::Builder::new().stack_size(256 << 10).spawn(|| {
        let vm = VmSystem::hosted((N + 512) * P);
        let map = vm.create_map().unwrap();
        let a = map.allocate(0, 2 * P, true).unwrap();
        map.write_bytes(a, &[0u8; 2 * P as usize]).unwrap();
        let mut kept = Vec::with_capacity(N as usize);
        for i in 0..N {
            kept.push(vm_read(&map, a, 2 * P).unwrap());
            // Alternate pages, so that no shadow covers the one below it.
            map.write_bytes(a + (i % 2) * P, &(i as u32).to_le_bytes())
                .unwrap();
        }
        let r = map.region(a).unwrap();
        assert!(
            r.shadow_depth as u64 > N / 2,
            "chain only {} deep",
            r.shadow_depth
        );
        assert_eq!(r.resident_pages, 2);
        assert_eq!(peek(&map, a + P, 4), (N as u32 - 1).to_le_bytes());
        let child = map.fork().unwrap();
        assert_eq!(peek(&child, a, 4), (N as u32 - 2).to_le_bytes());
        let audit = vm.audit();
        assert_eq!(
            (audit.unreachable_pages, audit.mergeable_neighbours),
            (0, 0)
        );
        assert!(audit.max_chain_depth > N / 2);
        map.verify().unwrap();
        // The 50,000th snapshot still holds what it saw.
        let c = kept.swap_remove(50_000);
        let other = vm.create_map().unwrap();
        let at = c.copyout(&other).unwrap();
        assert_eq!(peek(&other, at + P, 4), 49_999u32.to_le_bytes());
        drop((map, child, other));
        drop(kept);
        let s = vm.statistics();
        assert_eq!(s.free_count, s.total_pages, "frames leaked");
    });
    t.unwrap().join().unwrap();
}
