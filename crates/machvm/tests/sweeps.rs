//! A second independent review's fault-injection sweeps and regressions:
//! worlds with bypassable chains, `Share` entries with copy-on-write runs
//! and snapshots, and overlapping windows of one map; for every k the k-th
//! frame allocation of a call fails, and a failed call must change nothing
//! a caller can observe — regions (object chain depth included), entries,
//! bytes, free frames. The tests named r2_* failed on 9200fda.
mod common;
use common::*;
use machvm::{
    Access, KernError, RegionInfo, VmInherit, VmMap, VmSystem, vm_copy, vm_map_copy, vm_read,
    vm_write,
};

const A: u64 = 0x10_0000;

fn audit_ok(vm: &VmSystem, what: &str) {
    let a = vm.audit();
    assert!(
        a.unreachable_pages == 0 && a.mergeable_neighbours == 0,
        "{what}: {a:?}"
    );
}

/// Every region, resident counts left out (a read may change them).
fn regs(m: &VmMap) -> Vec<RegionInfo> {
    regions(m)
        .into_iter()
        .map(|mut r| {
            r.resident_pages = 0;
            r
        })
        .collect()
}

/// R2-1. A call that fails with ResourceShortage has already shortened the
/// source's chains inside `reserve`'s count (copyin_frames -> shorten_chain
/// -> bypass): region().shadow_depth of the source changes on a failed call.
#[test]
fn r2_failed_copy_shortens_the_source_chain() {
    let vm = system();
    let p = vm.create_map().unwrap();
    let a = p.allocate(A, 5 * P, false).unwrap();
    p.write_bytes(a, &vec![1u8; (2 * P) as usize]).unwrap();
    let _c = p.fork().unwrap();
    // p shadows X; its shadow covers every page X has: bypassable.
    p.write_bytes(a, &vec![2u8; (2 * P) as usize]).unwrap();
    let before = (regs(&p), p.entry_count(), vm.statistics().free_count);
    vm.context().frames().fail_nth_allocation(1);
    let r = vm_copy(&p, a, 2 * P, a + 2 * P + 100);
    vm.context().frames().fail_nth_allocation(0);
    assert_eq!(r, Err(KernError::ResourceShortage));
    let after = (regs(&p), p.entry_count(), vm.statistics().free_count);
    assert_eq!(
        before, after,
        "a failed vm_copy changed the source's regions"
    );
}

/// R2-2. `VmMap::fault` documents "ResourceShortage ... (then nothing
/// changed)". When the pmap step (a page-table frame) fails for a
/// copy-on-write store, the entry has already been clipped to the run and
/// shadowed; only a *created* object is rolled back (fault.rs:111).
#[test]
fn r2_failed_cow_fault_in_pmap_step_leaves_clip_and_shadow() {
    let vm = system();
    let p = vm.create_map().unwrap();
    let a = p.allocate(A, 4 * P, false).unwrap();
    p.write_bytes(a, &vec![1u8; (4 * P) as usize]).unwrap();
    let c = p.fork().unwrap(); // c's pmap has no page tables yet
    p.deallocate(a + 2 * P, 2 * P).unwrap(); // p sees only pages 0..2 of c's window
    let before = (regs(&c), c.entry_count(), vm.statistics().free_count);
    // 1st allocation: the object frame (ensure); 2nd: a page table.
    vm.context().frames().fail_nth_allocation(2);
    let r = c.fault(a, Access::Write);
    vm.context().frames().fail_nth_allocation(0);
    assert_eq!(r, Err(KernError::ResourceShortage));
    let after = (regs(&c), c.entry_count(), vm.statistics().free_count);
    check(&vm, &[&p, &c]);
    audit_ok(&vm, "after failed fault");
    assert_eq!(before, after, "a failed fault changed the map");
}

// ---------- a wider fault-injection sweep ----------

#[derive(Debug, PartialEq, Eq, Clone)]
struct Obs {
    regions: Vec<Vec<RegionInfo>>,
    entries: Vec<usize>,
    free: u64,
}

fn observe(vm: &VmSystem, maps: &[VmMap], depth: bool) -> Obs {
    Obs {
        regions: maps
            .iter()
            .map(|m| {
                regs(m)
                    .into_iter()
                    .map(|mut r| {
                        if !depth {
                            r.shadow_depth = 0;
                        }
                        r
                    })
                    .collect()
            })
            .collect(),
        entries: maps.iter().map(|m| m.entry_count()).collect(),
        free: vm.statistics().free_count,
    }
}

/// Bytes of every page of `pages` pages from A in every map (reads
/// zero-fill: take it last).
fn bytes(maps: &[VmMap]) -> Vec<Vec<u8>> {
    let mut v = vec![];
    for m in maps {
        for p in 0..16u64 {
            let mut b = vec![0u8; P as usize];
            match m.read_bytes(A + p * P, &mut b) {
                Ok(()) => v.push(b),
                Err(_) => v.push(vec![]),
            }
        }
    }
    v
}

struct W {
    vm: VmSystem,
    maps: Vec<VmMap>,
    keep: Vec<machvm::VmMapCopy>,
    pending: std::cell::RefCell<Option<machvm::VmMapCopy>>,
}

fn w(vm: &VmSystem, maps: Vec<VmMap>, keep: Vec<machvm::VmMapCopy>) -> W {
    W {
        vm: vm.clone(),
        maps,
        keep,
        pending: Default::default(),
    }
}

type Setup = fn(&VmSystem) -> W;
type Pre = fn(&W);
type Op = fn(&W) -> Result<(), KernError>;

fn fill(m: &VmMap, at: u64, pages: u64, seed: u8) {
    let v: Vec<u8> = (0..pages * P)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    m.write_bytes(at, &v).unwrap();
}

fn sweep2(name: &str, setup: Setup, pre: Pre, op: Op, depth: bool) -> Vec<String> {
    let mut out = vec![];
    let mk = || {
        let w = setup(&VmSystem::hosted(8 << 20));
        pre(&w);
        w
    };
    let r0 = mk();
    let res0 = op(&r0);
    let ok_obs = observe(&r0.vm, &r0.maps, false);
    let ok_bytes = bytes(&r0.maps);
    let before_bytes = bytes(&mk().maps);
    if res0.is_err() {
        eprintln!("{name}: skipped, fails without injection: {res0:?}");
        return out;
    }
    for k in 1..400u64 {
        let w = mk();
        let before = observe(&w.vm, &w.maps, depth);
        let hit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = hit.clone();
        w.vm.context()
            .frames()
            .fail_nth_allocation_with(k, move || {
                h.store(true, std::sync::atomic::Ordering::SeqCst)
            });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&w)));
        w.vm.context().frames().fail_nth_allocation(0);
        let reached = hit.load(std::sync::atomic::Ordering::SeqCst);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                out.push(format!("{name}: k={k}: panicked: {msg}"));
                std::mem::forget(w);
                continue;
            }
        };
        for m in &w.maps {
            if let Err(e) = m.verify() {
                out.push(format!("{name}: k={k} ({r:?}): map invariant: {e}"));
            }
        }
        if let Err(e) = w.vm.verify() {
            out.push(format!("{name}: k={k} ({r:?}): system invariant: {e}"));
        }
        let a = w.vm.audit();
        if a.unreachable_pages != 0 || a.mergeable_neighbours != 0 {
            out.push(format!("{name}: k={k} ({r:?}): audit {a:?}"));
        }
        match &r {
            Err(KernError::ResourceShortage) => {
                let mut after = observe(&w.vm, &w.maps, depth);
                if name.contains("vm_write") {
                    // vm_write consumes its copy even on failure (by its
                    // signature): the copy's own frames go back.
                    after.free = before.free;
                }
                if after != before {
                    out.push(format!(
                        "{name}: k={k}: failed and changed:\n before {before:?}\n after  {after:?}"
                    ));
                }
                if bytes(&w.maps) != before_bytes {
                    out.push(format!("{name}: k={k}: failed and changed bytes"));
                }
            }
            Err(e) => out.push(format!("{name}: k={k}: unexpected {e:?}")),
            Ok(()) => {
                let mut after = observe(&w.vm, &w.maps, false);
                after.free = ok_obs.free; // page tables may differ
                if after != ok_obs {
                    out.push(format!(
                        "{name}: k={k}: succeeded differently:\n want {ok_obs:?}\n got  {after:?}"
                    ));
                }
                if bytes(&w.maps) != ok_bytes {
                    out.push(format!("{name}: k={k}: succeeded with different bytes"));
                }
            }
        }
        if !reached {
            break;
        }
    }
    out
}

fn w_bypass(vm: &VmSystem) -> W {
    let m0 = vm.create_map().unwrap();
    m0.allocate(A, 16 * P, false).unwrap();
    fill(&m0, A, 8, 1);
    let m1 = m0.fork().unwrap();
    fill(&m0, A, 8, 2); // m0's shadow covers X: bypassable
    let keep = vec![vm_read(&m1, A + 2 * P, 2 * P).unwrap()];
    m0.inherit(A + 12 * P, 4 * P, VmInherit::Share).unwrap();
    m0.inherit(A, 12 * P, VmInherit::None).unwrap();
    let m2 = m0.fork().unwrap();
    fill(&m2, A + 12 * P, 2, 3);
    m0.inherit(A, 12 * P, VmInherit::Copy).unwrap();
    w(vm, vec![m0, m1, m2], keep)
}

fn w_sharecow(vm: &VmSystem) -> W {
    let m0 = vm.create_map().unwrap();
    m0.allocate(A, 8 * P, false).unwrap();
    fill(&m0, A, 8, 1);
    let m1 = m0.fork().unwrap();
    m1.deallocate(A + 4 * P, 4 * P).unwrap();
    let keep = vec![
        vm_read(&m0, A + 6 * P, P + 1).unwrap(),
        vm_read(&m0, A + 6 * P, 2 * P).unwrap(),
    ];
    m0.inherit(A, 8 * P, VmInherit::Share).unwrap();
    m0.allocate(A + 8 * P, 8 * P, false).unwrap();
    fill(&m0, A + 8 * P, 3, 5);
    m1.allocate(A + 4 * P, 12 * P, false).unwrap();
    w(vm, vec![m0, m1], keep)
}

fn w_samemap(vm: &VmSystem) -> W {
    let m0 = vm.create_map().unwrap();
    m0.allocate(A, 16 * P, false).unwrap();
    fill(&m0, A, 6, 1);
    vm_copy(&m0, A, 4 * P, A + 6 * P).unwrap();
    let keep = vec![vm_read(&m0, A + 6 * P, 3 * P).unwrap()];
    fill(&m0, A + P, 1, 7);
    m0.inherit(A + 10 * P, 6 * P, VmInherit::Share).unwrap();
    let m1 = m0.fork().unwrap();
    fill(&m1, A + 10 * P, 2, 8);
    w(vm, vec![m0, m1], keep)
}

fn nop(_: &W) {}

fn ops() -> Vec<(&'static str, Pre, Op)> {
    vec![
        ("fork", nop, |w| w.maps[0].fork().map(drop)),
        (
            "fork_all_copy",
            |w| w.maps[0].inherit(A, 16 * P, VmInherit::Copy).unwrap(),
            |w| w.maps[0].fork().map(drop),
        ),
        (
            "fork_all_share",
            |w| w.maps[0].inherit(A, 16 * P, VmInherit::Share).unwrap(),
            |w| w.maps[0].fork().map(drop),
        ),
        ("fork1", nop, |w| w.maps[1].fork().map(drop)),
        ("write", nop, |w| {
            w.maps[0].write_bytes(A + 100, &vec![0xEE; (15 * P) as usize])
        }),
        ("write1", nop, |w| {
            w.maps[1].write_bytes(A + 100, &vec![0xEE; (3 * P) as usize])
        }),
        ("read", nop, |w| {
            let mut b = vec![0u8; (14 * P) as usize];
            w.maps[0].read_bytes(A + 5, &mut b)
        }),
        ("vm_copy_same_off", nop, |w| {
            vm_copy(&w.maps[0], A + 100, 9 * P, A + 3 * P + 100)
        }),
        ("vm_copy_same_off_back", nop, |w| {
            vm_copy(&w.maps[0], A + 3 * P + 100, 9 * P, A + 100)
        }),
        ("vm_copy_misaligned", nop, |w| {
            vm_copy(&w.maps[0], A + 100, 9 * P, A + 3 * P + 900)
        }),
        ("vm_copy_aligned", nop, |w| {
            vm_copy(&w.maps[0], A, 6 * P, A + 9 * P)
        }),
        ("map_copy_01", nop, |w| {
            vm_map_copy(
                &w.maps[1],
                &w.maps[0],
                A + 5 * P + 300,
                3 * P,
                A + 300,
                false,
                false,
            )
        }),
        ("map_copy_10", nop, |w| {
            vm_map_copy(
                &w.maps[0],
                &w.maps[1],
                A + 300,
                3 * P,
                A + 5 * P + 300,
                false,
                false,
            )
        }),
        ("map_copy_alloc_destroy", nop, |w| {
            vm_map_copy(
                &w.maps[1],
                &w.maps[0],
                0x40_0000 + 300,
                10 * P + 17,
                A + 300,
                true,
                true,
            )
        }),
        ("map_copy_alloc_aligned", nop, |w| {
            vm_map_copy(&w.maps[1], &w.maps[0], 0x40_0000, 12 * P, A, true, false)
        }),
        ("vm_read", nop, |w| {
            vm_read(&w.maps[0], A + 123, 13 * P).map(drop)
        }),
        (
            "copyout",
            |w| *w.pending.borrow_mut() = Some(vm_read(&w.maps[0], A + 123, 13 * P).unwrap()),
            |w| {
                let c = w.pending.borrow_mut().take().unwrap();
                match c.copyout(&w.maps[1]) {
                    Ok(_) => Ok(()),
                    Err((e, c)) => {
                        *w.pending.borrow_mut() = Some(c);
                        Err(e)
                    }
                }
            },
        ),
        (
            "vm_write",
            |w| *w.pending.borrow_mut() = Some(vm_read(&w.maps[0], A + 8 * P, 4 * P).unwrap()),
            |w| vm_write(&w.maps[0], A, w.pending.borrow_mut().take().unwrap()),
        ),
        (
            "vm_write_mis",
            |w| *w.pending.borrow_mut() = Some(vm_read(&w.maps[0], A + 8 * P + 5, 4 * P).unwrap()),
            |w| {
                vm_write(
                    &w.maps[1],
                    A + 4 * P + 5,
                    w.pending.borrow_mut().take().unwrap(),
                )
            },
        ),
    ]
}

fn sweep_world(setup: Setup, wname: &str) {
    let mut all = vec![];
    for (n, pre, op) in ops() {
        let name = format!("{wname}/{n}");
        all.extend(sweep2(&name, setup, pre, op, true));
    }
    for f in &all {
        eprintln!("FAIL {f}");
    }
    assert!(all.is_empty(), "{} failures", all.len());
}

#[test]
fn r2_sweep_bypass() {
    sweep_world(w_bypass, "bypass");
}
#[test]
fn r2_sweep_sharecow() {
    sweep_world(w_sharecow, "sharecow");
}
#[test]
fn r2_sweep_samemap() {
    sweep_world(w_samemap, "samemap");
}

/// Semantics after fork's clip_share_runs: the Share child sees every
/// parent write and vice versa, copy-on-write holders (a Copy-fork sibling,
/// snapshots) see none.
#[test]
fn r2_share_fork_of_cow_runs_semantics() {
    let vm = system();
    let wd = w_sharecow(&vm);
    let (m0, m1) = (&wd.maps[0], &wd.maps[1]);
    let before1 = peek(m1, A, (4 * P) as usize);
    let g = m0.fork().unwrap();
    check(&vm, &[m0, m1, &g]);
    audit_ok(&vm, "after fork");
    for p in 0..8u64 {
        m0.write_bytes(A + p * P + 7, &[0xA0 + p as u8]).unwrap();
        assert_eq!(
            peek(&g, A + p * P + 7, 1)[0],
            0xA0 + p as u8,
            "g misses p={p}"
        );
        g.write_bytes(A + p * P + 9, &[0xB0 + p as u8]).unwrap();
        assert_eq!(
            peek(m0, A + p * P + 9, 1)[0],
            0xB0 + p as u8,
            "m0 misses p={p}"
        );
        audit_ok(&vm, "after writes");
    }
    assert_eq!(
        peek(m1, A, (4 * P) as usize),
        before1,
        "cow sibling saw writes"
    );
    let c0 = wd.keep[1].len();
    assert_eq!(c0, 2 * P);
    check(&vm, &[m0, m1, &g]);
    drop(wd.keep);
    audit_ok(&vm, "end");
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Threads hammering maps that share objects (Share siblings, copy-on-write
/// forks, snapshots) on a small RAM, so that reserve's recount and top-up
/// race other maps' calls: no panic (undercount asserts), no deadlock, and
/// the invariants and audit hold afterwards.
#[test]
fn r2_concurrent_reserve_stress() {
    let vm = VmSystem::hosted(3 << 20);
    let m0 = vm.create_map().unwrap();
    m0.allocate(A, 32 * P, false).unwrap();
    fill(&m0, A, 16, 1);
    m0.inherit(A, 16 * P, VmInherit::Share).unwrap();
    let m1 = m0.fork().unwrap();
    let m2 = m0.fork().unwrap();
    let maps = vec![m0, m1, m2];
    let mut hs = vec![];
    for t in 0..3u64 {
        let maps = maps.clone();
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t + 1) * 0x1234_5678));
            let me = &maps[t as usize];
            let mut kept: Vec<machvm::VmMapCopy> = vec![];
            let mut n = 0u64;
            // A fixed number of calls, not a time: whatever the scheduler does.
            while n < 3000 {
                n += 1;
                let a = A + rng.below(30) * P + if rng.below(2) == 0 { 0 } else { rng.below(P) };
                let len = 1 + rng.below(8 * P);
                let _ = match rng.below(9) {
                    0 | 1 => me.write_bytes(a, &vec![n as u8; len as usize]),
                    2 => vm_read(me, a, len).map(|c| {
                        kept.push(c);
                        if kept.len() > 4 {
                            kept.remove(0);
                        }
                    }),
                    3 => vm_copy(me, a, len, A + rng.below(30) * P + rng.below(2) * 77),
                    4 => {
                        let o = &maps[rng.below(3) as usize];
                        vm_map_copy(o, me, A + rng.below(30) * P, len, a, false, false)
                    }
                    5 => me.fork().map(|c| {
                        let _ = c.write_bytes(A, &[1]);
                    }),
                    6 => match kept.pop() {
                        Some(c) => c.copyout(me).map(drop).map_err(|e| e.0),
                        None => Ok(()),
                    },
                    7 => me.inherit(
                        A + rng.below(30) * P,
                        P * (1 + rng.below(4)),
                        [VmInherit::Share, VmInherit::Copy][rng.below(2) as usize],
                    ),
                    _ => {
                        let mut b = vec![0u8; len as usize];
                        me.read_bytes(a, &mut b)
                    }
                };
                // copyout may have placed copies anywhere; keep the map small
                if n.is_multiple_of(16) {
                    let _ = me.deallocate(A + 32 * P, 1 << 30);
                }
            }
            n
        }));
    }
    let mut total = 0;
    for h in hs {
        total += h.join().expect("a worker panicked");
    }
    eprintln!("{total} operations");
    let refs: Vec<&VmMap> = maps.iter().collect();
    check(&vm, &refs);
    audit_ok(&vm, "after stress");
}
