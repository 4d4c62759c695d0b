//! Differential test: random enter / remove / protect / page_protect
//! sequences over several pmaps, run on the x86_64 backend and on the
//! software reference backend, must agree on every `extract` and on every
//! walker verdict. Afterwards every page-table frame must be back.

use std::sync::Arc;

use machvm_base::{LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr, VaRange, VirtAddr, VmProt};
use machvm_frame::{FrameAllocator, FrameUse, LARGE_PAGE_ORDER};
use machvm_pmap::{Access, EnterError, Pmap, PmapId, SoftPmap};
use machvm_pmap_x86_64::X86Pmap;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Regions chosen to share and to straddle page-table boundaries.
const REGIONS: [u64; 3] = [0x1000, 0x40_0000_0000 - 300 * PAGE_SIZE, 0x7fff_ff00_0000];
const REGION_PAGES: u64 = 600;

fn random_va(r: &mut Rng) -> u64 {
    let base = REGIONS[r.below(3) as usize];
    base + r.below(REGION_PAGES) * PAGE_SIZE
}

fn random_prot(r: &mut Rng) -> VmProt {
    VmProt::from_bits_truncate(r.below(8) as u32)
}

struct Pair {
    x86: X86Pmap,
    soft: SoftPmap,
    ids: Vec<(PmapId, PmapId)>,
}

impl Pair {
    fn compare(&self, va: u64) {
        for (i, &(x, s)) in self.ids.iter().enumerate() {
            let tx = self
                .x86
                .extract(x, VirtAddr::new(va))
                .map(|t| (t.pa, t.prot, t.wired));
            let ts = self
                .soft
                .extract(s, VirtAddr::new(va))
                .map(|t| (t.pa, t.prot, t.wired));
            assert_eq!(tx, ts, "extract of {va:#x} in pmap {i}");
            for access in [Access::Read, Access::Write, Access::Execute] {
                for user in [true, false] {
                    let a = self.x86.translate(x, VirtAddr::new(va + 8), access, user);
                    let b = self.soft.translate(s, VirtAddr::new(va + 8), access, user);
                    assert_eq!(a, b, "{access:?} user={user} at {va:#x} in pmap {i}");
                }
            }
            assert_eq!(
                self.x86.resident_count(x),
                self.soft.resident_count(s),
                "resident count of pmap {i}"
            );
        }
    }
}

fn run(seed: u64, ops: usize) {
    let fa = Arc::new(FrameAllocator::hosted(2048 * PAGE_SIZE).unwrap());
    let start_free = fa.free_frames();
    let mut r = Rng(seed | 1);
    let frames: Vec<PhysAddr> = (0..24)
        .map(|_| fa.alloc(FrameUse::Object).unwrap())
        .collect();
    let big = fa.alloc_order(LARGE_PAGE_ORDER, FrameUse::Object).unwrap();
    let data_frames = fa.total_frames() - fa.free_frames();
    let mut pair = Pair {
        x86: X86Pmap::new(fa.clone(), Default::default()).unwrap(),
        soft: SoftPmap::new(),
        ids: Vec::new(),
    };
    for _ in 0..3 {
        pair.ids
            .push((pair.x86.create().unwrap(), pair.soft.create().unwrap()));
    }
    let mut touched: Vec<u64> = Vec::new();
    for _ in 0..ops {
        let (x, s) = pair.ids[r.below(3) as usize];
        match r.below(100) {
            0..=44 => {
                let va = random_va(&mut r);
                let pa = frames[r.below(frames.len() as u64) as usize];
                let (prot, wired) = (random_prot(&mut r), r.below(4) == 0);
                let a = pair
                    .x86
                    .enter(x, VirtAddr::new(va), pa, prot, wired)
                    .unwrap();
                pair.x86.flush(a);
                let b = pair
                    .soft
                    .enter(s, VirtAddr::new(va), pa, prot, wired)
                    .unwrap();
                pair.soft.flush(b);
                touched.push(va);
            }
            45..=49 => {
                let base = REGIONS[r.below(3) as usize];
                let va = (base + LARGE_PAGE_SIZE - 1) & !(LARGE_PAGE_SIZE - 1);
                let prot = random_prot(&mut r) | VmProt::READ;
                // Wired or not: a later remove or protect of part of it
                // demotes it, which must keep the wired count.
                let wired = r.below(2) == 0;
                pair.x86.flush(
                    pair.x86
                        .enter_large(x, VirtAddr::new(va), big, prot, wired)
                        .unwrap(),
                );
                pair.soft.flush(
                    pair.soft
                        .enter_large(s, VirtAddr::new(va), big, prot, wired)
                        .unwrap(),
                );
                touched.extend((0..8).map(|k| va + k * 64 * PAGE_SIZE));
            }
            50..=64 => {
                let va = random_va(&mut r);
                let range = VaRange::new(
                    VirtAddr::new(va),
                    VirtAddr::new(va + r.below(700) * PAGE_SIZE),
                )
                .unwrap();
                pair.x86.flush(pair.x86.remove(x, range));
                pair.soft.flush(pair.soft.remove(s, range));
            }
            65..=79 => {
                let va = random_va(&mut r);
                let range = VaRange::new(
                    VirtAddr::new(va),
                    VirtAddr::new(va + r.below(700) * PAGE_SIZE),
                )
                .unwrap();
                let prot = random_prot(&mut r);
                pair.x86.flush(pair.x86.protect(x, range, prot));
                pair.soft.flush(pair.soft.protect(s, range, prot));
            }
            80..=89 => {
                let pa = if r.below(4) == 0 {
                    big + r.below(512) * PAGE_SIZE
                } else {
                    frames[r.below(frames.len() as u64) as usize]
                };
                let prot = random_prot(&mut r);
                pair.x86.flush(pair.x86.page_protect(pa, prot));
                pair.soft.flush(pair.soft.page_protect(pa, prot));
                assert_eq!(
                    pair.x86.mapping_count(pa),
                    pair.soft.mapping_count(pa),
                    "mappings of {pa:?}"
                );
            }
            _ => {
                let va = touched
                    .get(r.below(touched.len().max(1) as u64) as usize)
                    .copied()
                    .unwrap_or(0x1000);
                pair.compare(va);
                continue;
            }
        }
        pair.x86
            .verify()
            .unwrap_or_else(|e| panic!("seed {seed}: x86 verify: {e}"));
        pair.soft.verify().unwrap();
    }
    fa.verify().unwrap();
    for &va in &touched {
        pair.compare(va);
    }
    for (i, &(x, s)) in pair.ids.iter().enumerate() {
        let all = VaRange::new(VirtAddr::new(0), VirtAddr::new(0x8000_0000_0000)).unwrap();
        let mx: Vec<_> = pair
            .x86
            .mappings(x, all)
            .into_iter()
            .map(|(v, t)| (v, t.pa, t.prot, t.wired))
            .collect();
        let ms: Vec<_> = pair
            .soft
            .mappings(s, all)
            .into_iter()
            .map(|(v, t)| (v, t.pa, t.prot, t.wired))
            .collect();
        assert_eq!(mx, ms, "seed {seed}: mappings of pmap {i}");
    }
    for &pa in &frames {
        assert_eq!(pair.x86.mapping_count(pa), pair.soft.mapping_count(pa));
    }
    for (x, s) in std::mem::take(&mut pair.ids) {
        pair.x86.destroy(x);
        pair.soft.destroy(s);
    }
    pair.x86.verify().unwrap();
    assert_eq!(
        fa.frames_in_use(FrameUse::PageTable),
        0,
        "page-table frames leaked"
    );
    assert_eq!(fa.total_frames() - fa.free_frames(), data_frames);
    for pa in frames {
        fa.free(pa);
    }
    fa.free(big);
    fa.verify().unwrap();
    assert_eq!(fa.free_frames(), start_free);
}

#[test]
fn backends_agree_on_random_sequences() {
    for seed in 1..=12u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1500);
    }
}

#[test]
fn backends_agree_under_memory_pressure() {
    // Table allocation failing midway must leave the x86 pmap as it was.
    let fa = Arc::new(FrameAllocator::hosted(64 * PAGE_SIZE).unwrap());
    let pm = X86Pmap::new(fa.clone(), Default::default()).unwrap();
    let soft = SoftPmap::new();
    let (x, s) = (pm.create().unwrap(), soft.create().unwrap());
    let frame = fa.alloc(FrameUse::Object).unwrap();
    let mut r = Rng(77);
    let mut failures = 0;
    for _ in 0..2000 {
        let va = VirtAddr::new(r.below(1 << 35) * PAGE_SIZE % 0x7fff_ffff_f000 + PAGE_SIZE);
        match pm.enter(x, va, frame, VmProt::READ, false) {
            Ok(f) => {
                pm.flush(f);
                soft.flush(soft.enter(s, va, frame, VmProt::READ, false).unwrap());
            }
            Err(e) => {
                assert_eq!(e, EnterError::NoTableFrame { va });
                failures += 1;
            }
        }
        pm.verify().unwrap();
        assert_eq!(pm.resident_count(x), soft.resident_count(s));
        assert_eq!(
            pm.extract(x, va).map(|t| t.pa),
            soft.extract(s, va).map(|t| t.pa)
        );
    }
    assert!(failures > 0, "the test should have run out of frames");
    pm.destroy(x);
    assert_eq!(fa.frames_in_use(FrameUse::PageTable), 0);
    fa.free(frame);
    assert_eq!(fa.free_frames(), fa.total_frames());
}

/// One thread's share of the concurrent run: its own pmap on both
/// backends, frames shared with the other threads (so their pv lists are
/// changed concurrently), and no call that reaches other pmaps.
fn run_one_pmap(x86: &X86Pmap, fa: &FrameAllocator, frames: &[PhysAddr], seed: u64) {
    let soft = SoftPmap::new();
    let (x, s) = (x86.create().unwrap(), soft.create().unwrap());
    let big = fa.alloc_order(LARGE_PAGE_ORDER, FrameUse::Object).unwrap();
    let mut r = Rng(seed | 1);
    for _ in 0..1500 {
        let va = random_va(&mut r);
        let range = VaRange::new(
            VirtAddr::new(va),
            VirtAddr::new(va + r.below(700) * PAGE_SIZE),
        )
        .unwrap();
        match r.below(10) {
            0..=4 => {
                let pa = frames[r.below(frames.len() as u64) as usize];
                let (prot, wired) = (random_prot(&mut r), r.below(4) == 0);
                x86.flush(x86.enter(x, VirtAddr::new(va), pa, prot, wired).unwrap());
                soft.flush(soft.enter(s, VirtAddr::new(va), pa, prot, wired).unwrap());
            }
            5 => {
                let lva = (va + LARGE_PAGE_SIZE - 1) & !(LARGE_PAGE_SIZE - 1);
                let (prot, wired) = (random_prot(&mut r) | VmProt::READ, r.below(2) == 0);
                x86.flush(
                    x86.enter_large(x, VirtAddr::new(lva), big, prot, wired)
                        .unwrap(),
                );
                soft.flush(
                    soft.enter_large(s, VirtAddr::new(lva), big, prot, wired)
                        .unwrap(),
                );
            }
            6 | 7 => {
                x86.flush(x86.remove(x, range));
                soft.flush(soft.remove(s, range));
            }
            _ => {
                let prot = random_prot(&mut r);
                x86.flush(x86.protect(x, range, prot));
                soft.flush(soft.protect(s, range, prot));
            }
        }
    }
    let all = VaRange::new(VirtAddr::new(0), VirtAddr::new(0x8000_0000_0000)).unwrap();
    let mx: Vec<_> = x86
        .mappings(x, all)
        .into_iter()
        .map(|(v, t)| (v, t.pa, t.prot, t.wired))
        .collect();
    let ms: Vec<_> = soft
        .mappings(s, all)
        .into_iter()
        .map(|(v, t)| (v, t.pa, t.prot, t.wired))
        .collect();
    assert_eq!(mx, ms, "seed {seed}: the pmaps differ");
    x86.destroy(x);
    fa.free(big);
}

/// The concurrent case: threads change their own pmaps at once, over shared
/// frames, each checked against its own reference pmap.
#[test]
fn backends_agree_when_pmaps_change_concurrently() {
    let fa = Arc::new(FrameAllocator::hosted(8192 * PAGE_SIZE).unwrap());
    let start_free = fa.free_frames();
    let frames: Vec<PhysAddr> = (0..24)
        .map(|_| fa.alloc(FrameUse::Object).unwrap())
        .collect();
    let x86 = X86Pmap::new(fa.clone(), Default::default()).unwrap();
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let (x86, fa, frames) = (&x86, &fa, &frames);
            sc.spawn(move || {
                run_one_pmap(x86, fa, frames, (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            });
        }
    });
    x86.verify().unwrap();
    assert_eq!(
        fa.frames_in_use(FrameUse::PageTable),
        0,
        "page-table frames leaked"
    );
    for pa in frames {
        assert_eq!(x86.mapping_count(pa), 0);
        fa.free(pa);
    }
    fa.verify().unwrap();
    assert_eq!(fa.free_frames(), start_free);
}

/// Large and small enters racing in one 2 MiB range of one pmap: whatever
/// the order, the tables stay consistent, every translation is one of the
/// two entered, and nothing leaks.
#[test]
fn large_and_small_enters_racing_in_one_range_stay_consistent() {
    let fa = Arc::new(FrameAllocator::hosted(4096 * PAGE_SIZE).unwrap());
    let x86 = X86Pmap::new(fa.clone(), Default::default()).unwrap();
    let p = x86.create().unwrap();
    let big = fa.alloc_order(LARGE_PAGE_ORDER, FrameUse::Object).unwrap();
    let small = fa.alloc(FrameUse::Object).unwrap();
    let va = 0x4000_0000u64;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for i in 0..2000u64 {
                x86.flush(
                    x86.enter_large(p, VirtAddr::new(va), big, VmProt::DEFAULT, i % 3 == 0)
                        .unwrap(),
                );
                if i % 4 == 0 {
                    let r = VaRange::new(VirtAddr::new(va), VirtAddr::new(va + LARGE_PAGE_SIZE))
                        .unwrap();
                    x86.flush(x86.remove(p, r));
                }
            }
        });
        sc.spawn(|| {
            for i in 0..2000u64 {
                let at = VirtAddr::new(va + (i % 512) * PAGE_SIZE);
                x86.flush(x86.enter(p, at, small, VmProt::READ, i % 5 == 0).unwrap());
                if i % 7 == 0 {
                    x86.flush(x86.protect(
                        p,
                        VaRange::new(at, at + PAGE_SIZE).unwrap(),
                        VmProt::NONE,
                    ));
                }
            }
        });
    });
    x86.verify().unwrap();
    let all = VaRange::new(VirtAddr::new(va), VirtAddr::new(va + LARGE_PAGE_SIZE)).unwrap();
    for (v, t) in x86.mappings(p, all) {
        let off = v.as_u64() - va;
        assert!(t.pa == big + off || t.pa == small, "{v:?} maps {:?}", t.pa);
    }
    x86.destroy(p);
    x86.verify().unwrap();
    assert_eq!(
        fa.frames_in_use(FrameUse::PageTable),
        0,
        "page-table frames leaked"
    );
    assert_eq!(x86.mapping_count(small), 0);
    fa.free(big);
    fa.free(small);
}
