//! Paging under concurrency (SPEC §8): threads faulting, storing, copying
//! and snapshotting — in private ranges and in ranges `Share` siblings see
//! — while another thread pages out without pause and RAM is a fraction of
//! what they hold. Bounded in iterations, not time; halfway, every thread
//! meets the pager at a barrier while it pages out everything, so paging
//! happens whatever the scheduler does. At the end every byte is what its
//! last writer wrote, every invariant holds, and dropping everything gives
//! back every frame and slot.

mod common;

use std::sync::Barrier;

use common::{P, check};
use machvm::{VmInherit, VmMap, VmSystem, vm_copy, vm_read};

const THREADS: u64 = 4;
/// Each thread's private range, and its page of the shared range.
const OWN: u64 = 1 << 20;
const SLICE: u64 = 16 * P;
const ROUNDS: u64 = 150;

/// The bytes thread `t` writes to slice `s` in round `r`.
fn pattern(t: u64, s: u64, r: u64) -> Vec<u8> {
    common::noise(
        (t + 1) * 0x9E37_79B9 + s * 0x85EB_CA6B + r * 0xC2B2_AE35,
        SLICE as usize,
    )
}

/// Reads `len` bytes at `addr`.
fn read(map: &VmMap, addr: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    map.read_bytes(addr, &mut b).unwrap();
    b
}

#[test]
fn threads_fault_and_copy_while_another_pages_out() {
    // 4 MiB of RAM under 4 MiB of private memory, 1 MiB shared, snapshots
    // and the copies' pages.
    let vm = VmSystem::hosted_with_swap(3 << 20, 32 << 20);
    let empty = (vm.statistics().free_count, vm.statistics().swap_free_pages);
    let parent = vm.create_map().unwrap();
    let own = parent.allocate(0, THREADS * OWN, true).unwrap();
    let shared = parent.allocate(0, THREADS * SLICE, true).unwrap();
    parent
        .inherit(shared, THREADS * SLICE, VmInherit::Share)
        .unwrap();
    let child = parent.fork().unwrap();
    let slices = OWN / SLICE;
    let start = Barrier::new(THREADS as usize + 1);
    let half = Barrier::new(THREADS as usize + 1);
    let last = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (vm, parent, child, start, half) = (&vm, &parent, &child, &start, &half);
                s.spawn(move || {
                    let base = own + t * OWN;
                    // Last round each slice was written in (or copied to).
                    let mut last = vec![None; slices as usize];
                    start.wait();
                    for r in 0..ROUNDS {
                        if r == ROUNDS / 2 {
                            half.wait();
                            half.wait();
                        }
                        let k = (r * 7 + t) % slices;
                        parent
                            .write_bytes(base + k * SLICE, &pattern(t, k, r))
                            .unwrap();
                        last[k as usize] = Some((k, r));
                        // A snapshot of the slice, checked after more
                        // pressure; a copy of it to the next slice.
                        let snap = vm_read(parent, base + k * SLICE, SLICE).unwrap();
                        let to = (k + 1) % slices;
                        vm_copy(parent, base + k * SLICE, SLICE, base + to * SLICE).unwrap();
                        last[to as usize] = Some((k, r));
                        // The shared slice: written by one side, read by the
                        // other.
                        let (w, rd) = if r % 2 == 0 {
                            (parent, child)
                        } else {
                            (child, parent)
                        };
                        let at = shared + t * SLICE;
                        w.write_bytes(at, &pattern(t, slices, r)).unwrap();
                        assert!(
                            read(rd, at, SLICE) == pattern(t, slices, r),
                            "thread {t} round {r}: shared"
                        );
                        let back = vm.create_map().unwrap();
                        let a = snap.copyout(&back).map_err(|(e, _)| e).unwrap();
                        assert!(
                            read(&back, a, SLICE) == pattern(t, k, r),
                            "thread {t} round {r}: snapshot"
                        );
                        let j = (r * 13) % slices;
                        let want = last[j as usize].map(|(s, r)| pattern(t, s, r));
                        let got = read(parent, base + j * SLICE, SLICE);
                        match want {
                            Some(w) => assert!(got == w, "thread {t} round {r}: slice {j}"),
                            None => assert!(
                                got.iter().all(|&b| b == 0),
                                "thread {t}: untouched slice {j}"
                            ),
                        }
                    }
                    last
                })
            })
            .collect();
        let (vm, parent, child, start, half) = (&vm, &parent, &child, &start, &half);
        let pager = s.spawn(move || {
            start.wait();
            for i in 0..ROUNDS * 4 {
                if i == ROUNDS * 2 {
                    half.wait();
                    let all = parent.page_out(own, THREADS * OWN).unwrap();
                    assert!(all > 0, "halfway, pages to page out");
                    child.page_out(shared, THREADS * SLICE).unwrap();
                    half.wait();
                }
                vm.pageout(64);
                let t = i % THREADS;
                parent
                    .page_out(own + t * OWN + (i % 2) * SLICE * 8, SLICE * 8)
                    .unwrap();
                child.page_out(shared, THREADS * SLICE).unwrap();
            }
        });
        pager.join().unwrap();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    check(&vm, &[&parent, &child]);
    let s = vm.statistics();
    assert!(s.pageouts > 0 && s.pageins > 0, "{s:?}");
    eprintln!("paged out {}, paged in {}", s.pageouts, s.pageins);
    for (t, last) in last.iter().enumerate() {
        let t = t as u64;
        for (j, w) in last.iter().enumerate() {
            let got = read(&parent, own + t * OWN + j as u64 * SLICE, SLICE);
            match w {
                Some((s, r)) => assert!(
                    got == pattern(t, *s, *r),
                    "thread {t}: slice {j} at the end"
                ),
                None => assert!(got.iter().all(|&b| b == 0)),
            }
        }
    }
    drop((parent, child));
    let after = (vm.statistics().free_count, vm.statistics().swap_free_pages);
    assert_eq!(after, empty, "every frame and slot back");
}
