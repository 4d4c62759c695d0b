//! The paging group (SPEC §8), every figure per page, on one system with
//! swap (`VmSystem::hosted_with_swap`: simulated RAM and the default pager
//! over `MemStore`, swap slots in host memory), with RAM to spare so that
//! no call pages anything out on its own while it is timed.
//!
//! - `pagein_fault`: a task's first 1-byte store (`write_bytes`) to a page
//!   `VmMap::page_out` paged out. Includes the façade's checks, walk and
//!   locks, the fault handler, taking a frame, the read of the whole slot
//!   into it (`MemStore`'s word loop, 4 KiB), the page map update, the pmap
//!   enter, freeing the slot, and the byte. The slot was written in the
//!   untimed set-up just before, so it is as warm in the caches as the
//!   round's size lets it be.
//! - `zero_fill_fault`: the same store to a never-touched page of the same
//!   system: the same path, zeroing a frame instead of reading a slot.
//! - `pageout/<n>`: `VmMap::page_out` of a resident, written range of `n`
//!   pages (the round), divided by `n`. Includes the map lock and walk, the
//!   object lookups, removing every translation (one TLB shootdown per 32
//!   pages, on the host backend a no-op flush), the write of each page to
//!   a new slot, and freeing each frame. The call's own cost is spread
//!   over the round.
//! - `copy_page`: `PhysMem::copy_page` of one frame to another (the page
//!   copy of a copy-on-write fault), over a round's distinct pages.
//! - `store_read`, `store_write`: the default pager over `MemStore` alone,
//!   on a `PhysMem` of its own: `Pager::page_in` of one slot into one frame,
//!   `Pager::page_out` of one frame to a new slot (taking the slot under
//!   the pager's lock included). The part of a page-in and of a pageout
//!   that moves the page.
//!
//! Set-up (allocating, faulting in, paging out) and teardown (deallocating,
//! which frees the frames and the slots) are never timed.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use machvm::{DefaultPager, MemStore, PAGE_SIZE, Pager, PhysAddr, PhysMem, VmSystem};
use machvm_benches::{ids, ram_for, touch};
use machvm_frame::HOSTED_PHYS_BASE;

use super::{facade_write, profile, tune};

/// Runs `iters` per-page operations in rounds of at most `round` pages:
/// `setup(n)` (untimed) returns a state, `timed(&state, n)` does the
/// round's `n` pages and `teardown(state, n)` (untimed) follows.
fn rounds<S>(
    iters: u64,
    round: u64,
    mut setup: impl FnMut(u64) -> S,
    mut timed: impl FnMut(&S, u64),
    mut teardown: impl FnMut(S, u64),
) -> Duration {
    let mut t = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(round);
        let state = setup(n);
        let s = Instant::now();
        timed(&state, n);
        t += s.elapsed();
        teardown(state, n);
        left -= n;
    }
    t
}

/// The `i`th page of a hosted `PhysMem`.
fn frame(i: u64) -> PhysAddr {
    PhysAddr::new(HOSTED_PHYS_BASE + i * PAGE_SIZE)
}

/// The paging group: page-in fault against zero-fill fault through the
/// façade, pageout per page, and the page moves they contain against a
/// frame-to-frame page copy. See the module's documentation for what each
/// figure includes.
pub(super) fn paging(c: &mut Criterion) {
    let p = profile();
    let round = p.fault_pages();
    let bytes = round * PAGE_SIZE;
    let vm = VmSystem::hosted_with_swap(ram_for(4 * bytes), 4 * bytes);
    let swap = vm.statistics().swap_free_pages;
    let map = vm.create_map().unwrap();
    let mut g = c.benchmark_group(ids::PAGING);
    tune(&mut g, p, 0, false);

    g.bench_function(ids::PAGEIN_FAULT, |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                round,
                |n| {
                    let a = map.allocate(0, n * PAGE_SIZE, true).unwrap();
                    touch(&map, a, n * PAGE_SIZE).unwrap();
                    assert_eq!(map.page_out(a, n * PAGE_SIZE).unwrap(), n);
                    (a, vm.statistics().pageins)
                },
                |&(a, _), n| {
                    for i in 0..n {
                        facade_write(&map, a + i * PAGE_SIZE);
                    }
                },
                |(a, before), n| {
                    // Every store paged its page in: no other path was timed.
                    assert_eq!(vm.statistics().pageins - before, n);
                    map.deallocate(a, n * PAGE_SIZE).unwrap();
                },
            )
        });
    });

    g.bench_function(ids::PAGING_ZERO_FILL, |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                round,
                |n| {
                    let a = map.allocate(0, n * PAGE_SIZE, true).unwrap();
                    let s = vm.statistics();
                    (a, s.zero_fill_count, s.pageins)
                },
                |&(a, _, _), n| {
                    for i in 0..n {
                        facade_write(&map, a + i * PAGE_SIZE);
                    }
                },
                |(a, zero_fills, pageins), n| {
                    let s = vm.statistics();
                    assert_eq!((s.zero_fill_count - zero_fills, s.pageins), (n, pageins));
                    map.deallocate(a, n * PAGE_SIZE).unwrap();
                },
            )
        });
    });

    // The parameter: pages per `page_out` call.
    g.bench_function(BenchmarkId::new(ids::PAGEOUT, round), |b| {
        b.iter_custom(|iters| {
            let out = Cell::new(0);
            rounds(
                iters,
                round,
                |n| {
                    let a = map.allocate(0, n * PAGE_SIZE, true).unwrap();
                    // Resident, written (zero-filled) and mapped writable.
                    touch(&map, a, n * PAGE_SIZE).unwrap();
                    a
                },
                |&a, n| out.set(map.page_out(a, n * PAGE_SIZE).unwrap()),
                |a, n| {
                    assert_eq!(out.get(), n, "every page of the range went");
                    map.deallocate(a, n * PAGE_SIZE).unwrap();
                },
            )
        });
    });
    drop(map);
    assert_eq!(
        vm.statistics().swap_free_pages,
        swap,
        "every slot came back"
    );

    // The baselines, on memory of their own.
    let mem = PhysMem::hosted(2 * bytes).unwrap();
    for i in 0..2 * round {
        mem.write(frame(i), &[0x5a; PAGE_SIZE as usize]);
    }
    g.bench_function(ids::COPY_PAGE, |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                round,
                |_| (),
                |(), n| {
                    for i in 0..n {
                        mem.copy_page(frame(round + i), frame(i));
                    }
                },
                |(), _| {},
            )
        });
    });
    let pager = DefaultPager::new(MemStore::new(round).unwrap()).unwrap();
    g.bench_function(ids::STORE_WRITE, |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                round,
                |n| RefCell::new(Vec::with_capacity(n as usize)),
                |slots, n| {
                    let mut slots = slots.borrow_mut();
                    for i in 0..n {
                        slots.push(pager.page_out(&mem, frame(i), None).unwrap());
                    }
                },
                |slots, _| slots.into_inner().into_iter().for_each(|s| pager.forget(s)),
            )
        });
    });
    g.bench_function(ids::STORE_READ, |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                round,
                |n| {
                    (0..n)
                        .map(|i| pager.page_out(&mem, frame(i), None).unwrap())
                        .collect::<Vec<_>>()
                },
                |slots, _| {
                    for (i, &s) in slots.iter().enumerate() {
                        pager.page_in(s, &mem, frame(round + i as u64));
                    }
                },
                |slots, _| slots.into_iter().for_each(|s| pager.forget(s)),
            )
        });
    });
    g.finish();
}
