//! machvm's criterion suite: the copy, fault, parallel, lookup, fork, small-copy
//! and paging groups (the memory figures come from the `machvm-footprint` binary). Run it with `cargo xtask bench`, which
//! reads the medians and writes `target/machvm-bench/summary.md`.
//!
//! Every figure is the host x86_64 backend over simulated RAM, through the
//! public façade. Times are the operation alone: state is reset between
//! iterations outside the timed region (`iter_custom`), so that each copy
//! or fork starts from the same state (pages resident and writable, not
//! already copy-on-write).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, measurement::WallTime};
use machvm::{Access, PAGE_SIZE, SMALL_COPY_BYTES, VmMap, VmSystem, vm_map_copy, vm_read};
use machvm_benches::{Lcg, Profile, distinct_entries, ids, pages_of, ram_for, touch};

// Under `vm/`, not beside this file: cargo would take `benches/*.rs` for a
// bench target of its own.
#[path = "vm/paging.rs"]
mod paging;

/// Sizes at or above this are sampled flat (a few long iterations).
const LARGE: u64 = 16 << 20;

fn profile() -> Profile {
    Profile::from_env()
}

/// Group settings: short in the quick profile, and flat sampling with
/// the minimum sample count for long iterations. `reset_heavy`: the untimed
/// reset between iterations costs far more than the timed part, so the
/// measured time (which criterion budgets by) is kept short.
fn tune(g: &mut BenchmarkGroup<'_, WallTime>, p: Profile, bytes: u64, reset_heavy: bool) {
    let large = bytes >= LARGE;
    let (warm_up, measure, samples) = match (p.quick, large, reset_heavy) {
        (true, _, _) => (100, 300, 10),
        (false, true, true) => (100, 300, 10),
        (false, true, false) => (500, 2000, 10),
        (false, false, _) => (500, 2000, 30),
    };
    g.warm_up_time(Duration::from_millis(warm_up))
        .measurement_time(Duration::from_millis(measure))
        .sample_size(samples)
        .sampling_mode(if large {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
}

/// The copy group: `vm_map_copy` of aligned ranges, untouched and resident,
/// against an eager copy (the same call with the destination 8 bytes off a
/// page boundary, which forces bytes) and a host `memcpy`.
fn copy(c: &mut Criterion) {
    let p = profile();
    let max = p.copy_sizes_resident().into_iter().max().unwrap_or(0);
    // Resident source plus eager destination.
    let vm = VmSystem::hosted(ram_for(2 * max));
    let mut g = c.benchmark_group(ids::COPY);
    for size in p.copy_sizes_untouched() {
        tune(&mut g, p, size, false);
        g.bench_with_input(
            BenchmarkId::new(ids::VIRTUAL_UNTOUCHED, size),
            &size,
            |b, &size| {
                let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
                let a = src.allocate(0, size, true).unwrap();
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let s = Instant::now();
                        vm_map_copy(&dst, &src, a, size, a, true, false).unwrap();
                        t += s.elapsed();
                        dst.deallocate(a, size).unwrap();
                    }
                    t
                });
            },
        );
    }
    for size in p.copy_sizes_resident() {
        tune(&mut g, p, size, true);
        let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
        let a = src.allocate(0, size, true).unwrap();
        touch(&src, a, size).unwrap();
        g.bench_with_input(
            BenchmarkId::new(ids::VIRTUAL_RESIDENT, size),
            &size,
            |b, &size| {
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        // Writable again, as a running task's memory is.
                        touch(&src, a, size).unwrap();
                        let s = Instant::now();
                        vm_map_copy(&dst, &src, a, size, a, true, false).unwrap();
                        t += s.elapsed();
                        dst.deallocate(a, size).unwrap();
                    }
                    t
                });
            },
        );
        // 8 bytes off: not page-aligned, so bytes; still word-aligned, so
        // the copy is not byte-at-a-time.
        let off = 8;
        g.bench_with_input(BenchmarkId::new(ids::EAGER, size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    touch(&src, a, size).unwrap();
                    let s = Instant::now();
                    vm_map_copy(&dst, &src, a + off, size, a, true, false).unwrap();
                    t += s.elapsed();
                    dst.deallocate(a, size + off).unwrap();
                }
                t
            });
        });
        drop((src, dst));
        tune(&mut g, p, size, false);
        let from = vec![0x5au8; size as usize];
        let mut to = vec![0u8; size as usize];
        g.bench_with_input(BenchmarkId::new(ids::MEMCPY, size), &size, |b, _| {
            b.iter(|| {
                to.copy_from_slice(black_box(&from));
                black_box(&mut to);
            });
        });
    }
    g.finish();
}

/// Runs `iters` page faults in rounds of at most `round` pages: `setup`
/// (untimed) returns the map and first address of a round, `touch(map,
/// page)` (timed) faults each page of it in, and `teardown` (untimed)
/// follows.
fn per_page(
    iters: u64,
    round: u64,
    mut setup: impl FnMut() -> (VmMap, u64),
    touch: impl Fn(&VmMap, u64),
    mut teardown: impl FnMut(VmMap, u64),
) -> Duration {
    let mut t = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(round);
        let (map, a) = setup();
        let s = Instant::now();
        for i in 0..n {
            touch(&map, a + i * PAGE_SIZE);
        }
        t += s.elapsed();
        teardown(map, a);
        left -= n;
    }
    t
}

/// How a benchmark makes a page's first write.
type Write = fn(&VmMap, u64);

/// The handler alone: a write fault.
fn handler_write(map: &VmMap, va: u64) {
    map.fault(va, Access::Write).unwrap();
}

/// Through the façade (range checks, walker, locking, the byte itself): a
/// task's 1-byte store.
fn facade_write(map: &VmMap, va: u64) {
    map.write_bytes(va, &[1]).unwrap();
}

/// The fault group, per page: the first write after `fork` (copy-on-write:
/// shadow once per entry, then a page copy each) and the first touch of
/// fresh memory (zero fill), by the fault handler alone (`VmMap::fault`)
/// and through the façade (a 1-byte `write_bytes`).
fn faults(c: &mut Criterion) {
    let p = profile();
    let round = p.fault_pages();
    let vm = VmSystem::hosted(ram_for(4 * round * PAGE_SIZE));
    let mut g = c.benchmark_group(ids::FAULT);
    tune(&mut g, p, 0, false);
    let parent = vm.create_map().unwrap();
    let a = parent.allocate(0, round * PAGE_SIZE, true).unwrap();
    touch(&parent, a, round * PAGE_SIZE).unwrap();
    // The handler alone, then through the façade.
    let kinds: [(&str, &str, Write); 2] = [
        (ids::COW, ids::ZERO_FILL, handler_write),
        (ids::FACADE_COW, ids::FACADE_ZERO_FILL, facade_write),
    ];
    for (cow, zero_fill, write) in kinds {
        g.bench_function(cow, |b| {
            b.iter_custom(|iters| {
                per_page(
                    iters,
                    round,
                    || (parent.fork().unwrap(), a),
                    write,
                    |child, _| drop(child),
                )
            });
        });
        g.bench_function(zero_fill, |b| {
            let map = vm.create_map().unwrap();
            b.iter_custom(|iters| {
                per_page(
                    iters,
                    round,
                    || {
                        let a = map.allocate(0, round * PAGE_SIZE, true).unwrap();
                        (map.clone(), a)
                    },
                    write,
                    |m, a| m.deallocate(a, round * PAGE_SIZE).unwrap(),
                )
            });
        });
    }
    g.finish();
}

/// Zero-fills `pages` pages of `map` from `a`, one 1-byte write each.
fn zero_fill(map: &VmMap, a: u64, pages: u64) {
    for i in 0..pages {
        facade_write(map, a + i * PAGE_SIZE);
    }
}

/// Where the second half of the work goes in a parallel round.
#[derive(Clone, Copy)]
enum Second {
    /// Another map of the same system.
    OtherMap,
    /// The second half of the first map's range.
    SameMap,
    /// A map of another system (the control: nothing shared).
    OtherSystem,
}

/// The parallel group: 2·n zero-fill faults through the façade, by one
/// thread (both ranges, one after the other), by two threads on two maps,
/// by two threads on disjoint halves of one map, and — the control — by
/// two threads on maps of two separate systems. Time for all 2·n pages:
/// from the first thread's start to the last thread's end, the threads
/// spawned first and released together by a barrier, each timing itself
/// (on 2 cores the thread that releases a barrier may run last, so no
/// single thread's clock brackets the others' work).
fn parallel(c: &mut Criterion) {
    let p = profile();
    let n = 4 * p.fault_pages();
    let vm = VmSystem::hosted(ram_for(4 * n * PAGE_SIZE));
    let other = VmSystem::hosted(ram_for(2 * n * PAGE_SIZE));
    let mut g = c.benchmark_group(ids::PARALLEL);
    tune(&mut g, p, 0, true);
    let (m1, m2) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let m3 = other.create_map().unwrap();
    let len = n * PAGE_SIZE;
    let round = |two_threads: bool, second: Second| -> Duration {
        let a1 = m1.allocate(0, 2 * len, true).unwrap();
        let (map2, a2) = match second {
            Second::SameMap => (&m1, a1 + len),
            Second::OtherMap => (&m2, m2.allocate(0, len, true).unwrap()),
            Second::OtherSystem => (&m3, m3.allocate(0, len, true).unwrap()),
        };
        let timed = |work: &dyn Fn()| {
            let s = Instant::now();
            work();
            (s, Instant::now())
        };
        let spans: Vec<(Instant, Instant)> = if two_threads {
            let start = Barrier::new(2);
            std::thread::scope(|s| {
                let first = s.spawn(|| {
                    start.wait();
                    timed(&|| zero_fill(&m1, a1, n))
                });
                let other = s.spawn(|| {
                    start.wait();
                    timed(&|| zero_fill(map2, a2, n))
                });
                vec![first.join().unwrap(), other.join().unwrap()]
            })
        } else {
            vec![timed(&|| {
                zero_fill(&m1, a1, n);
                zero_fill(map2, a2, n);
            })]
        };
        let begin = spans.iter().map(|s| s.0).min().unwrap();
        let end = spans.iter().map(|s| s.1).max().unwrap();
        m1.deallocate(a1, 2 * len).unwrap();
        if !matches!(second, Second::SameMap) {
            map2.deallocate(a2, len).unwrap();
        }
        end - begin
    };
    for (id, two_threads, second) in [
        (ids::ONE_THREAD, false, Second::OtherMap),
        (ids::TWO_MAPS, true, Second::OtherMap),
        (ids::ONE_MAP, true, Second::SameMap),
        (ids::TWO_SYSTEMS, true, Second::OtherSystem),
    ] {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| round(two_threads, second)).sum());
        });
    }
    g.finish();
}

/// Pages per entry in the lookup benchmark: a sweep page by page hits the entry
/// found last three times out of four.
const LOOKUP_ENTRY_PAGES: u64 = 4;

/// The lookup group: map entry lookup as the fault path does it (hint
/// first, then the flat index or the tree; then the entry itself) with n
/// entries, random and sequential, against a `BTreeMap` from start to an
/// entry-sized value (the end and four more words, 40 bytes: what a map
/// keeping its entries in the tree searches) doing the same range lookup
/// and reading the end. Time per lookup.
fn lookup(c: &mut Criterion) {
    let p = profile();
    let vm = VmSystem::hosted(ram_for(0));
    let mut g = c.benchmark_group(ids::LOOKUP);
    tune(&mut g, p, 0, false);
    for n in p.lookup_entries() {
        let map = vm.create_map().unwrap();
        let mut reference = std::collections::BTreeMap::new();
        let len = LOOKUP_ENTRY_PAGES * PAGE_SIZE;
        let base = distinct_entries(&map, n, LOOKUP_ENTRY_PAGES).unwrap();
        for i in 0..n {
            let a = base + i * len;
            reference.insert(a, [a + len, 0, 0, 0, 0]);
        }
        assert_eq!(map.entry_count() as u64, n, "entries must not merge");
        let pages = n * LOOKUP_ENTRY_PAGES;
        let mut rng = Lcg::new(0x6d61_6368);
        let random: Vec<u64> = (0..4096.max(pages.min(1 << 16)))
            .map(|_| base + rng.below(pages) * PAGE_SIZE + rng.below(PAGE_SIZE))
            .collect();
        // At least 4096 addresses, so a lock is amortised over many.
        let sequential: Vec<u64> = (0..pages.max(4096))
            .map(|i| base + (i % pages) * PAGE_SIZE)
            .collect();
        for (pattern, addrs) in ids::LOOKUP_PATTERNS.into_iter().zip([&random, &sequential]) {
            g.bench_with_input(
                BenchmarkId::new(ids::lookup_fn(true, pattern), n),
                addrs,
                |b, addrs| {
                    b.iter_custom(|iters| per_lookup(iters, addrs, |chunk| map.lookup_many(chunk)));
                },
            );
            g.bench_with_input(
                BenchmarkId::new(ids::lookup_fn(false, pattern), n),
                addrs,
                |b, addrs| {
                    b.iter_custom(|iters| {
                        per_lookup(iters, addrs, |chunk| {
                            chunk
                                .iter()
                                .filter_map(|&va| {
                                    reference
                                        .range(..=va)
                                        .next_back()
                                        .filter(|(_, e)| va < e[0])
                                        .map(|(s, _)| *s)
                                })
                                .fold(0, u64::wrapping_add)
                        })
                    });
                },
            );
        }
    }
    g.finish();
}

/// Times exactly `iters` lookups of `addrs`, cycling, in chunks.
fn per_lookup(iters: u64, addrs: &[u64], mut f: impl FnMut(&[u64]) -> u64) -> Duration {
    let mut left = iters as usize;
    let mut pos = 0;
    let mut sum = 0u64;
    let s = Instant::now();
    while left > 0 {
        let k = (addrs.len() - pos).min(left);
        sum = sum.wrapping_add(f(&addrs[pos..pos + k]));
        pos = (pos + k) % addrs.len();
        left -= k;
    }
    let t = s.elapsed();
    black_box(sum);
    t
}

/// The fork group: `fork` of a map with n entries and m resident pages (the
/// first m pages of the n contiguous entries). Between iterations the child
/// goes and the parent writes its pages again, as a forking shell would.
fn fork(c: &mut Criterion) {
    let p = profile();
    let max_m = p.fork_grid().iter().map(|&(_, m)| m).max().unwrap_or(0);
    let vm = VmSystem::hosted(ram_for(2 * max_m * PAGE_SIZE));
    let mut g = c.benchmark_group(ids::FORK);
    for (n, m) in p.fork_grid() {
        tune(&mut g, p, m * PAGE_SIZE, true);
        let parent = vm.create_map().unwrap();
        let per = m.div_ceil(n).max(1);
        let base = distinct_entries(&parent, n, per).unwrap();
        assert_eq!(parent.entry_count() as u64, n, "entries must not merge");
        touch(&parent, base, m * PAGE_SIZE).unwrap();
        g.bench_function(BenchmarkId::new(ids::FORK, ids::fork_param(n, m)), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let s = Instant::now();
                    let child = parent.fork().unwrap();
                    t += s.elapsed();
                    drop(child);
                    touch(&parent, base, m * PAGE_SIZE).unwrap();
                }
                t
            });
        });
    }
    g.finish();
}

/// The small-copy group: `vm_read` + `copyout` of 1 byte … 16 pages, the way
/// machvm does it now (bytes up to `SMALL_COPY_BYTES`, copy-on-write above)
/// against a byte copy at every size (`read_bytes` into a fresh buffer,
/// `allocate`, `write_bytes`: what `vm_read` does below the threshold).
///
/// Two scenarios: `transfer` times the copy alone; `cycle` adds what
/// copy-on-write defers: the receiver reads each page, the sender writes
/// each page while the receiver still holds the copy, the receiver
/// deallocates.
fn small_copy(c: &mut Criterion) {
    let p = profile();
    let vm = VmSystem::hosted(ram_for(1 << 20));
    let mut g = c.benchmark_group(ids::SMALL_COPY);
    tune(&mut g, p, 0, false);
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let max = 16 * PAGE_SIZE;
    let a = src.allocate(0, max, true).unwrap();
    src.write_bytes(a, &vec![0x5a; max as usize]).unwrap();
    for cycle in [false, true] {
        let scenario = if cycle { ids::CYCLE } else { ids::TRANSFER };
        for size in p.small_copy_sizes() {
            let pages = pages_of(size);
            // The receiver's and the sender's touches of the cycle.
            let use_it = |d: u64| {
                let mut byte = [0u8; 1];
                for i in 0..pages {
                    dst.read_bytes(d + i * PAGE_SIZE, &mut byte).unwrap();
                    src.write_bytes(a + i * PAGE_SIZE, &[0xa5]).unwrap();
                }
            };
            g.bench_with_input(
                BenchmarkId::new(ids::small_copy_fn(scenario, true), size),
                &size,
                |b, &size| {
                    b.iter_custom(|iters| {
                        let mut t = Duration::ZERO;
                        for _ in 0..iters {
                            touch(&src, a, size).unwrap();
                            let s = Instant::now();
                            let copy = vm_read(&src, a, size).unwrap();
                            let d = copy.copyout(&dst).map_err(|(e, _)| e).unwrap();
                            if cycle {
                                use_it(d);
                                dst.deallocate(d, size).unwrap();
                                t += s.elapsed();
                            } else {
                                t += s.elapsed();
                                dst.deallocate(d, size).unwrap();
                            }
                        }
                        t
                    });
                },
            );
            g.bench_with_input(
                BenchmarkId::new(ids::small_copy_fn(scenario, false), size),
                &size,
                |b, &size| {
                    b.iter_custom(|iters| {
                        let mut t = Duration::ZERO;
                        for _ in 0..iters {
                            touch(&src, a, size).unwrap();
                            let s = Instant::now();
                            let mut buf = vec![0u8; size as usize];
                            src.read_bytes(a, &mut buf).unwrap();
                            let d = dst.allocate(0, size, true).unwrap();
                            dst.write_bytes(d, &buf).unwrap();
                            drop(buf);
                            if cycle {
                                use_it(d);
                                dst.deallocate(d, size).unwrap();
                                t += s.elapsed();
                            } else {
                                t += s.elapsed();
                                dst.deallocate(d, size).unwrap();
                            }
                        }
                        t
                    });
                },
            );
        }
    }
    g.finish();
    // The threshold the `vm_read` figures were taken with.
    eprintln!("machvm-bench: SMALL_COPY_BYTES = {SMALL_COPY_BYTES}");
}

criterion::criterion_group!(
    benches,
    copy,
    faults,
    parallel,
    lookup,
    fork,
    small_copy,
    paging::paging
);
criterion::criterion_main!(benches);
