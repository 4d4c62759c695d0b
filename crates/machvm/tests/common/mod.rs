//! Shared helpers: a checked VM that verifies every invariant after each
//! call, and snapshots to prove that a failed call changed nothing.
#![allow(dead_code)]

use machvm::{KernError, PAGE_SIZE, RegionInfo, VmMap, VmSystem};

pub const P: u64 = PAGE_SIZE;

/// Verifies the system and every map given.
#[track_caller]
pub fn check(vm: &VmSystem, maps: &[&VmMap]) {
    vm.verify()
        .unwrap_or_else(|e| panic!("system invariant: {e}"));
    for m in maps {
        m.verify()
            .unwrap_or_else(|e| panic!("map invariant: {e}\n{m}"));
    }
    // SPEC §7: each wired entry holds one wiring on each frame it covers.
    let a = vm.audit();
    assert_eq!(a.wired_entry_pages, a.frame_wirings, "wirings: {a:?}");
    // SPEC §8: a paged-out page is still reachable, and holds one slot.
    assert_eq!(a.unreachable_paged_out, 0, "paged out: {a:?}");
    assert_eq!(a.swap_slots_in_use, a.paged_out_pages, "slots: {a:?}");
}

/// Every region of a map.
pub fn regions(map: &VmMap) -> Vec<RegionInfo> {
    let mut out = Vec::new();
    let mut addr = 0;
    while let Ok(r) = map.region(addr) {
        addr = r.start + r.size;
        out.push(r);
    }
    out
}

/// What a caller can observe: regions (without the resident counts, which
/// a read may legitimately change), readable bytes of each region, and the
/// free-frame count.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    regions: Vec<(u64, u64, u32, u32, machvm::VmInherit)>,
    /// FNV-1a hash of each readable region's bytes.
    bytes: Vec<u64>,
    free: u64,
}

pub fn snapshot(vm: &VmSystem, map: &VmMap) -> Snapshot {
    let regions = regions(map);
    let free = vm.statistics().free_count;
    let bytes = regions
        .iter()
        .filter(|r| r.protection.contains(machvm::VmProt::READ) && r.size <= 64 * P)
        .map(|r| fnv(&peek(map, r.start, r.size as usize)))
        .collect();
    Snapshot {
        regions: regions
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.size,
                    r.protection.bits(),
                    r.max_protection.bits(),
                    r.inheritance,
                )
            })
            .collect(),
        bytes,
        free,
    }
}

pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Reads without disturbing the free count more than the read itself does.
pub fn peek(map: &VmMap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    map.read_bytes(addr, &mut buf).unwrap();
    buf
}

/// Asserts that `f` fails with `want` and changes nothing observable.
#[track_caller]
pub fn fails_unchanged<T: std::fmt::Debug>(
    vm: &VmSystem,
    map: &VmMap,
    want: KernError,
    f: impl FnOnce() -> Result<T, KernError>,
) {
    // Reading untouched memory zero-fills it: read everything once first so
    // that the snapshots' own reads change nothing.
    let _warm = snapshot(vm, map);
    let before = snapshot(vm, map);
    let got = f();
    assert_eq!(
        got.as_ref().err(),
        Some(&want),
        "expected {want:?}, got {got:?}"
    );
    let after = snapshot(vm, map);
    assert_eq!(before, after, "a failed call ({want:?}) changed something");
    check(vm, &[map]);
}

/// A system for one test, with every map change checked after it (in
/// debug builds).
pub fn system() -> VmSystem {
    let vm = VmSystem::hosted(64 << 20);
    vm.set_consistency_checks(true);
    vm
}

/// `len` bytes of xorshift noise from `seed`: distinct seeds give distinct
/// bytes, so a page found in the wrong place shows.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Free frames and free swap slots.
pub fn room(vm: &VmSystem) -> (u64, u64) {
    let s = vm.statistics();
    (s.free_count, s.swap_free_pages)
}

/// Wires pages of `map` one at a time from `a` (at most `max`) until no
/// frame is free; returns how many were wired.
pub fn wire_until_full(vm: &VmSystem, map: &VmMap, a: u64, max: u64) -> u64 {
    let rw = machvm::VmProt::READ | machvm::VmProt::WRITE;
    let mut i = 0;
    while vm.statistics().free_count > 0 && i < max && map.wire(a + i * P, P, rw).is_ok() {
        i += 1;
    }
    i
}

/// Stores page after page from `a`, page `p` all `byte(p)`, until a store
/// fails (RAM and swap full); returns how many went in.
pub fn fill_until_short(map: &VmMap, a: u64, byte: impl Fn(u64) -> u8) -> u64 {
    let mut pages = 0;
    while map
        .write_bytes(a + pages * P, &[byte(pages); P as usize])
        .is_ok()
    {
        pages += 1;
    }
    pages
}
