//! machvm on the real MMU: task maps made by machvm, run by loading their
//! pmap's root into CR3 ([`vm::switch_to`]), touched with real loads, stores
//! and calls through the probes. Every page fault goes to machvm's
//! `vm_fault` through the hook; the tests check both what the CPU saw (the
//! fault's address and error code) and what machvm answered.
//!
//! Each test ends with `VmMap::verify` and `VmSystem::verify` after its
//! mutations. The TLB tests first make the CPU cache a translation, then
//! change the map on the other side of machvm, then access again: only the
//! pmap's shootdown can make that access fault, so they fail under
//! `--skip-invlpg`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Debug;

use machvm::{
    KernError, PAGE_SIZE, SMALL_COPY_BYTES, VmInherit, VmMap, VmProt, VmStatistics, VmSystem,
    vm_copy, vm_map_copy, vm_read, vm_write,
};

use machvm_base::VirtAddr;
use machvm_pmap::Pmap;

use crate::paging::{self, pte};
use crate::suite::Test;
use crate::trap::{self, PageFaultInfo, pf};
use crate::vm::{self, Outcome};
use crate::{cpu, ensure, ensure_eq, smp, test};

/// The machvm suite.
pub const TESTS: &[Test] = &[
    test!(switch_loads_the_maps_root),
    test!(zero_fill_on_demand),
    test!(write_to_readonly_faults),
    test!(protect_none_and_maximum),
    test!(access_after_deallocate_faults),
    test!(partial_deallocate_splits),
    test!(deallocate_across_page_tables),
    test!(nx_without_execute),
    test!(vm_map_copy_is_copy_on_write),
    test!(vm_map_copy_src_destroy),
    test!(vm_map_copy_dst_alloc),
    test!(vm_copy_overlapping_is_memmove),
    test!(vm_read_copyout_vm_write),
    test!(copy_into_shared_region_reaches_sharers),
    test!(copy_of_shared_region_is_a_snapshot),
    test!(fork_share_copy_none),
    test!(fork_generations_outlive_parents),
    test!(same_map_on_two_cpus),
    test!(tlb_protect_invalidates_local),
    test!(tlb_deallocate_invalidates_local),
    test!(tlb_clear_modify_rearms_dirty_bit),
    test!(tlb_protect_shootdown_remote),
    test!(tlb_deallocate_shootdown_remote),
    test!(tlb_fork_write_protects_remote),
    test!(tlb_cow_fault_shootdown_same_map),
    test!(tlb_copy_write_protects_remote_source),
    test!(tlb_copy_overwrite_reaches_remote_destination),
    test!(tlb_share_copy_up_reaches_remote_sharer),
    test!(frames_return_when_maps_go),
];

const PG: u64 = PAGE_SIZE;

// -------------------------------------------------------------- helpers --

/// A test's hold on the CPUs: the fault hook installed, and on drop every
/// CPU back on the kernel CR3 with no map (the maps' pmaps deactivated
/// before their last handles go).
struct Session;

impl Session {
    fn new() -> Session {
        vm::install_fault_hook();
        Session
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        vm::release_all();
    }
}

fn sys() -> &'static VmSystem {
    &vm::vm().system
}

fn stats() -> VmStatistics {
    sys().statistics()
}

fn new_map() -> Result<VmMap, String> {
    sys().create_map().map_err(|e| format!("create_map: {e}"))
}

/// Adds what failed to a machvm error.
trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T> Context<T> for Result<T, KernError> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Verifies every map given, then the whole system (frames and pmap).
fn check(maps: &[&VmMap]) -> Result<(), String> {
    for m in maps {
        m.verify().map_err(|e| format!("{m:?}.verify(): {e}"))?;
    }
    sys()
        .verify()
        .map_err(|e| format!("VmSystem::verify(): {e}"))
}

/// Runs `f` on CPU `c`.
fn on<R: Send>(c: usize, f: impl FnOnce() -> R + Send) -> R {
    smp::run_on(c, f)
}

/// The other CPU for SMP tests.
fn other_cpu() -> Result<usize, String> {
    ensure!(
        smp::cpu_count() >= 2,
        "needs two CPUs (-smp 2), have {}",
        smp::cpu_count()
    );
    Ok(1)
}

fn explain(c: usize, f: &PageFaultInfo) -> String {
    format!("{f} on cpu {c}; machvm: {:?}", vm::last_fault(c))
}

/// A 64-bit load on CPU `c` that must not fault (after machvm resolved
/// whatever faults it took).
fn rd(c: usize, va: u64) -> Result<u64, String> {
    on(c, || trap::probe_read_u64(va)).map_err(|f| format!("load {va:#x}: {}", explain(c, &f)))
}

/// A 64-bit store on CPU `c` that must not fault, as [`rd`].
fn wr(c: usize, va: u64, v: u64) -> Result<(), String> {
    on(c, || trap::probe_write_u64(va, v)).map_err(|f| format!("store {va:#x}: {}", explain(c, &f)))
}

/// `r`, an access on CPU `c`, must have faulted at `addr` with exactly the
/// error bits `code` (of P, W, U, I), and machvm must have refused it with
/// `err`.
fn refused<T: Debug>(
    c: usize,
    r: Result<T, PageFaultInfo>,
    addr: u64,
    code: u64,
    err: KernError,
) -> Result<(), String> {
    let f = match r {
        Ok(v) => {
            return Err(format!(
                "access at {addr:#x} on cpu {c} gave {v:#x?}; it should fault (stale TLB entry?)"
            ));
        }
        Err(f) => f,
    };
    ensure_eq!(f.addr, addr, "fault address ({})", explain(c, &f));
    ensure_eq!(
        f.code & (pf::P | pf::W | pf::U | pf::I),
        code,
        "error code ({})",
        explain(c, &f)
    );
    let last = vm::last_fault(c);
    ensure!(
        last.is_some_and(|l| l.addr == addr && l.outcome == Outcome::Refused(err)),
        "machvm should have refused {f} with {err}; the hook saw {last:?}"
    );
    Ok(())
}

/// Deterministic test bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores `bytes` at the page-aligned `va` on CPU `c`, a word at a time.
fn fill(c: usize, va: u64, bytes: &[u8]) -> Result<(), String> {
    on(c, || {
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().unwrap_or_default());
            trap::probe_write_u64(va + 8 * i as u64, v)?;
        }
        Ok(())
    })
    .map_err(|f: PageFaultInfo| format!("fill at {va:#x}: {}", explain(c, &f)))
}

/// Loads `len` bytes (a multiple of 8) at the page-aligned `va` on CPU `c`.
fn dump(c: usize, va: u64, len: usize) -> Result<Vec<u8>, String> {
    on(c, || {
        let mut out = Vec::with_capacity(len);
        for i in 0..len as u64 / 8 {
            out.extend_from_slice(&trap::probe_read_u64(va + 8 * i)?.to_le_bytes());
        }
        Ok(out)
    })
    .map_err(|f: PageFaultInfo| format!("dump at {va:#x}: {}", explain(c, &f)))
}

/// Compares memory with the model, naming the first difference.
fn same_bytes(what: &str, base: u64, got: &[u8], want: &[u8]) -> Result<(), String> {
    ensure_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        return Err(format!(
            "{what}: byte at {:#x} is {:#04x}, the model says {:#04x}",
            base + i as u64,
            got[i],
            want[i]
        ));
    }
    Ok(())
}

// ------------------------------------------------- one map, one CPU --

fn switch_loads_the_maps_root() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let root = vm::root_of(&map).ok_or("the map has no root")?;
    for c in 0..smp::cpu_count() {
        vm::switch_to(c, Some(&map));
        let cr3 = on(c, cpu::current_cr3) & pte::ADDR;
        ensure_eq!(cr3, root, "CR3 on cpu {c} after switch_to(map)");
        // An empty lower half: machvm refuses, there is no entry.
        let va = 0x40_0000;
        refused(
            c,
            on(c, || trap::probe_read_u64(va)),
            va,
            0,
            KernError::InvalidAddress,
        )?;
        vm::switch_to(c, None);
        let cr3 = on(c, cpu::current_cr3) & pte::ADDR;
        ensure_eq!(
            cr3,
            paging::kernel_pml4_pa(),
            "CR3 on cpu {c} after release"
        );
    }
    check(&[&map])
}

fn zero_fill_on_demand() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 4 * PG, true).ctx("allocate")?;
    let before = stats();
    ensure_eq!(
        map.region(a).ctx("region")?.resident_pages,
        0,
        "resident pages before any touch"
    );
    vm::switch_to(0, Some(&map));
    for i in 0..4 {
        ensure_eq!(rd(0, a + i * PG + 8)?, 0, "first load of page {i}");
    }
    let after = stats();
    ensure_eq!(
        after.zero_fill_count - before.zero_fill_count,
        4,
        "zero-fill count after loading 4 fresh pages"
    );
    ensure!(
        after.faults >= before.faults + 4,
        "machvm counted {} faults for 4 fresh pages",
        after.faults - before.faults
    );
    // A private zero-filled page is mapped writable: storing takes no fault.
    let taken = trap::fault_counts().0;
    for i in 0..4 {
        wr(0, a + i * PG + 16, 0x5EED_0000 + i)?;
    }
    ensure_eq!(
        trap::fault_counts().0,
        taken,
        "page faults taken by stores after the loads"
    );
    for i in 0..4 {
        ensure_eq!(
            rd(0, a + i * PG + 16)?,
            0x5EED_0000 + i,
            "store stuck, page {i}"
        );
    }
    // machvm's own view of the memory agrees with the MMU's.
    let mut buf = [0u8; 8];
    map.read_bytes(a + 3 * PG + 16, &mut buf)
        .ctx("read_bytes")?;
    ensure_eq!(u64::from_le_bytes(buf), 0x5EED_0003, "read_bytes of page 3");
    ensure_eq!(
        map.region(a).ctx("region")?.resident_pages,
        4,
        "resident pages"
    );
    check(&[&map])
}

fn write_to_readonly_faults() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    wr(0, a, 0x1234)?;
    map.protect(a, PG, false, VmProt::READ)
        .ctx("protect READ")?;
    check(&[&map])?;
    let va = a + 0x18;
    refused(
        0,
        trap::probe_write_u64(va, 9),
        va,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    ensure_eq!(rd(0, a)?, 0x1234, "the page after the refused store");
    // Raising the protection again: the next store faults once (the
    // translation is still read-only) and machvm resolves it.
    map.protect(a, PG, false, VmProt::DEFAULT)
        .ctx("protect DEFAULT")?;
    wr(0, va, 9)?;
    ensure_eq!(
        vm::last_fault(0).map(|f| (f.addr, f.outcome)),
        Some((va, Outcome::Resolved)),
        "the store after raising the protection"
    );
    ensure_eq!(rd(0, va)?, 9, "the store stuck");
    check(&[&map])
}

fn protect_none_and_maximum() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 2 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    wr(0, a, 7)?;
    wr(0, a + PG, 8)?;
    map.protect(a, PG, false, VmProt::NONE)
        .ctx("protect NONE")?;
    // No access at all: the translation is gone (not-present).
    refused(
        0,
        trap::probe_read_u64(a),
        a,
        0,
        KernError::ProtectionFailure,
    )?;
    ensure_eq!(rd(0, a + PG)?, 8, "the neighbouring page");
    // Lower the maximum of page 1 to READ: raising beyond it is refused,
    // stores fault.
    map.protect(a + PG, PG, true, VmProt::READ)
        .ctx("protect max READ")?;
    ensure_eq!(
        map.protect(a + PG, PG, false, VmProt::DEFAULT),
        Err(KernError::ProtectionFailure),
        "raising above the maximum"
    );
    refused(
        0,
        trap::probe_write_u64(a + PG, 1),
        a + PG,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    map.protect(a, PG, false, VmProt::READ)
        .ctx("protect READ")?;
    ensure_eq!(rd(0, a)?, 7, "page 0 readable again, contents kept");
    ensure_eq!(map.entry_count(), 2, "entries after clipping");
    check(&[&map])
}

fn access_after_deallocate_faults() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 2 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    wr(0, a, 1)?;
    wr(0, a + PG, 2)?;
    let before = stats();
    map.deallocate(a, PG).ctx("deallocate")?;
    check(&[&map])?;
    ensure_eq!(
        before.active_count - stats().active_count,
        1,
        "object pages freed by deallocating one touched page"
    );
    refused(
        0,
        trap::probe_read_u64(a + 8),
        a + 8,
        0,
        KernError::InvalidAddress,
    )?;
    refused(
        0,
        trap::probe_write_u64(a + 16, 3),
        a + 16,
        pf::W,
        KernError::InvalidAddress,
    )?;
    ensure_eq!(rd(0, a + PG)?, 2, "the page left allocated");
    // The hole can be allocated again: fresh zeros, not the old page.
    ensure_eq!(map.allocate(a, PG, false).ctx("re-allocate")?, a, "address");
    ensure_eq!(rd(0, a)?, 0, "re-allocated page");
    check(&[&map])
}

fn partial_deallocate_splits() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    for i in 0..4 {
        wr(0, a + i * PG, 0x100 + i)?;
    }
    map.deallocate(a + PG, 2 * PG).ctx("deallocate middle")?;
    ensure_eq!(map.entry_count(), 2, "entries after punching a hole");
    for i in [1, 2] {
        let va = a + i * PG;
        refused(
            0,
            trap::probe_read_u64(va),
            va,
            0,
            KernError::InvalidAddress,
        )?;
    }
    ensure_eq!(rd(0, a)?, 0x100, "page 0");
    ensure_eq!(rd(0, a + 3 * PG)?, 0x103, "page 3");
    check(&[&map])
}

fn deallocate_across_page_tables() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    // 3 MiB + 2 pages from just below a 2 MiB line: four page tables.
    let (a, len) = (0x1F_F000, (3 << 20) + 2 * PG);
    ensure_eq!(map.allocate(a, len, false).ctx("allocate")?, a, "address");
    let tables0 = stats().wire_count;
    let pages: Vec<u64> = (0..len / PG)
        .step_by(97)
        .map(|i| a + i * PG)
        .chain([a, a + PG, a + len - PG])
        .collect();
    let cpus: Vec<usize> = (0..smp::cpu_count()).collect();
    for &c in &cpus {
        vm::switch_to(c, Some(&map));
        for &va in &pages {
            wr(c, va + 8 * c as u64, va ^ c as u64)?;
        }
    }
    ensure!(
        stats().wire_count >= tables0 + 4,
        "page tables: {} before, {} after touching four 2 MiB spans",
        tables0,
        stats().wire_count
    );
    check(&[&map])?;
    map.deallocate(a, len).ctx("deallocate")?;
    check(&[&map])?;
    ensure_eq!(
        stats().wire_count,
        tables0,
        "page-table frames after deallocating everything"
    );
    for &c in &cpus {
        for &va in &[a, a + len - PG, pages[3]] {
            refused(
                c,
                on(c, || trap::probe_read_u64(va)),
                va,
                0,
                KernError::InvalidAddress,
            )?;
        }
    }
    // Reallocated: new tables, fresh zeros.
    map.allocate(a, len, false).ctx("allocate again")?;
    ensure_eq!(rd(0, a + len - PG)?, 0, "last page after reallocation");
    check(&[&map])
}

fn nx_without_execute() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    on(0, || trap::probe_write_u8(a, 0xC3)).map_err(|f| format!("store ret: {f}"))?;
    // SAFETY: the page holds `ret` at `a` (or is not executable).
    let exec = || unsafe { trap::probe_exec(a) };
    refused(0, exec(), a, pf::P | pf::I, KernError::ProtectionFailure)?;
    map.protect(a, PG, false, VmProt::ALL).ctx("protect ALL")?;
    exec().map_err(|f| format!("call after protect(ALL): {}", explain(0, &f)))?;
    map.protect(a, PG, false, VmProt::READ | VmProt::EXECUTE)
        .ctx("protect R-X")?;
    exec().map_err(|f| format!("call with R-X: {}", explain(0, &f)))?;
    refused(
        0,
        trap::probe_write_u8(a + 1, 0),
        a + 1,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    map.protect(a, PG, false, VmProt::READ)
        .ctx("protect READ")?;
    refused(0, exec(), a, pf::P | pf::I, KernError::ProtectionFailure)?;
    check(&[&map])
}

// ------------------------------------------------------------- copies --

fn vm_map_copy_is_copy_on_write() -> Result<(), String> {
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&src));
    for i in 0..4 {
        wr(0, a + i * PG, 0xA0 + i)?;
    }
    let s0 = stats();
    let d = 0x2000_0000;
    vm_map_copy(&dst, &src, d, 4 * PG, a, true, false).ctx("vm_map_copy")?;
    check(&[&src, &dst])?;
    let s1 = stats();
    ensure_eq!(
        s1.active_count,
        s0.active_count,
        "object pages after the copy"
    );
    // The destination reads the source's pages: still no copy.
    vm::switch_to(0, Some(&dst));
    for i in 0..4 {
        ensure_eq!(rd(0, d + i * PG)?, 0xA0 + i, "dst page {i}");
    }
    let s2 = stats();
    ensure_eq!(
        s2.active_count,
        s0.active_count,
        "object pages after reading"
    );
    ensure_eq!(
        s2.cow_faults,
        s0.cow_faults,
        "copy-on-write faults after reading"
    );
    // A store in the destination copies one page.
    wr(0, d, 0xD0)?;
    let s3 = stats();
    ensure_eq!(
        s3.cow_faults - s0.cow_faults,
        1,
        "cow faults after a dst store"
    );
    ensure_eq!(s3.active_count - s0.active_count, 1, "pages copied");
    ensure_eq!(rd(0, d)?, 0xD0, "dst page 0 after its store");
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a)?, 0xA0, "src page 0 after the dst store");
    // A store in the source copies too (the copy still shares page 1).
    wr(0, a + PG, 0x51)?;
    ensure_eq!(
        stats().cow_faults - s0.cow_faults,
        2,
        "cow faults after a src store"
    );
    vm::switch_to(0, Some(&dst));
    ensure_eq!(rd(0, d + PG)?, 0xA1, "dst page 1 after the src store");
    ensure_eq!(rd(0, d + 2 * PG)?, 0xA2, "dst page 2");
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a + PG)?, 0x51, "src page 1 after its store");
    check(&[&src, &dst])
}

fn vm_map_copy_src_destroy() -> Result<(), String> {
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 5 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&src));
    for i in 0..5 {
        wr(0, a + i * PG + 8, 0xC0 + i)?;
    }
    let s0 = stats();
    let d = 0x3000_0000;
    // Four whole pages (copy-on-write path), moved rather than copied.
    vm_map_copy(&dst, &src, d, 4 * PG, a, true, true).ctx("vm_map_copy src_destroy")?;
    check(&[&src, &dst])?;
    ensure_eq!(
        stats().active_count,
        s0.active_count,
        "object pages after a move"
    );
    // The source range is gone, though this CPU had it cached.
    for i in 0..4 {
        let va = a + i * PG + 8;
        refused(
            0,
            trap::probe_read_u64(va),
            va,
            0,
            KernError::InvalidAddress,
        )?;
    }
    ensure_eq!(rd(0, a + 4 * PG + 8)?, 0xC4, "src page past the copy");
    vm::switch_to(0, Some(&dst));
    for i in 0..4 {
        ensure_eq!(rd(0, d + i * PG + 8)?, 0xC0 + i, "dst page {i}");
    }
    wr(0, d + 8, 0xDD)?;
    ensure_eq!(rd(0, d + 8)?, 0xDD, "dst store");
    vm::switch_to(0, Some(&src));
    wr(0, a + 4 * PG + 8, 0xEE)?;
    vm::switch_to(0, Some(&dst));
    ensure_eq!(
        rd(0, d + 3 * PG + 8)?,
        0xC3,
        "dst after the source's neighbour changed"
    );
    check(&[&src, &dst])
}

fn vm_map_copy_dst_alloc() -> Result<(), String> {
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate")?;
    let data = pattern(3, 4 * PG as usize);
    vm::switch_to(0, Some(&src));
    fill(0, a, &data)?;
    // Without dst_alloc, an empty destination is a hole: nothing changes.
    let d = 0x4000_0000;
    ensure_eq!(
        vm_map_copy(&dst, &src, d, PG, a, false, false),
        Err(KernError::InvalidAddress),
        "copy into a hole without dst_alloc"
    );
    ensure_eq!(dst.entry_count(), 0, "dst entries after the refused copy");
    // Unaligned, at another page offset: allocated, bytes copied exactly.
    let (so, doff, len) = (0x10u64, 0x730u64, 5000u64);
    vm_map_copy(&dst, &src, d + doff, len, a + so, true, false).ctx("vm_map_copy dst_alloc")?;
    check(&[&src, &dst])?;
    let r = dst.region(d).ctx("dst region")?;
    ensure_eq!(
        (r.start, r.size),
        (d, 2 * PG),
        "dst region allocated around the copy"
    );
    vm::switch_to(0, Some(&dst));
    let got = dump(0, d, 2 * PG as usize)?;
    let mut want = vec![0u8; 2 * PG as usize];
    want[doff as usize..(doff + len) as usize]
        .copy_from_slice(&data[so as usize..(so + len) as usize]);
    same_bytes("dst after the unaligned copy", d, &got, &want)?;
    // Aligned whole pages onto the empty map: shared, not copied.
    let s0 = stats();
    let e = 0x5000_0000;
    vm_map_copy(&dst, &src, e, 3 * PG, a + PG, true, false).ctx("aligned dst_alloc")?;
    ensure_eq!(stats().active_count, s0.active_count, "object pages");
    let got = dump(0, e, 3 * PG as usize)?;
    same_bytes("aligned dst_alloc copy", e, &got, &data[PG as usize..])?;
    // Holes around an existing region: the holes are allocated, the region
    // overwritten; unless the region is read-only, when nothing changes.
    let f = 0x6000_0000;
    dst.allocate(f + PG, PG, false).ctx("allocate middle")?;
    dst.protect(f + PG, PG, false, VmProt::READ)
        .ctx("protect middle")?;
    let entries = dst.entry_count();
    ensure_eq!(
        vm_map_copy(&dst, &src, f, 3 * PG, a, true, false),
        Err(KernError::ProtectionFailure),
        "dst_alloc over a read-only region"
    );
    ensure_eq!(dst.entry_count(), entries, "entries after the refused copy");
    refused(0, trap::probe_read_u64(f), f, 0, KernError::InvalidAddress)?;
    dst.protect(f + PG, PG, false, VmProt::DEFAULT)
        .ctx("protect middle rw")?;
    vm_map_copy(&dst, &src, f, 3 * PG, a, true, false).ctx("dst_alloc around a region")?;
    let got = dump(0, f, 3 * PG as usize)?;
    same_bytes(
        "dst_alloc around a region",
        f,
        &got,
        &data[..3 * PG as usize],
    )?;
    check(&[&src, &dst])
}

fn vm_copy_overlapping_is_memmove() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let n = 6 * PG as usize;
    let base = map.allocate(0, n as u64, true).ctx("allocate")?;
    let mut model = pattern(11, n);
    vm::switch_to(0, Some(&map));
    fill(0, base, &model)?;
    // (src offset, dst offset, length): forward and backward overlaps at
    // different page offsets, then at the same one (whole pages shared
    // copy-on-write with their own map), then a copy onto itself.
    let cases = [
        (123u64, 123 + 1500, 2 * PG + 777),
        (2 * PG + 333, 100, 2 * PG + 1000),
        (0x10, PG + 0x10, 3 * PG),
        (2 * PG, PG, 3 * PG),
        (PG + 5, PG + 5, 2 * PG),
    ];
    for (k, &(s, d, len)) in cases.iter().enumerate() {
        vm_copy(&map, base + s, len, base + d).ctx("vm_copy")?;
        model.copy_within(s as usize..(s + len) as usize, d as usize);
        check(&[&map])?;
        let got = dump(0, base, n)?;
        same_bytes(
            &format!("case {k} ({s:#x} -> {d:#x}, {len:#x})"),
            base,
            &got,
            &model,
        )?;
    }
    // Pages now shared within the map stay private on write.
    for p in 0..6u64 {
        let v = 0xF00D_0000 + p;
        wr(0, base + p * PG + 0x20, v)?;
        let at = (p * PG + 0x20) as usize;
        model[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    let got = dump(0, base, n)?;
    same_bytes("after a store in every page", base, &got, &model)?;
    check(&[&map])
}

fn vm_read_copyout_vm_write() -> Result<(), String> {
    let _s = Session::new();
    let (a_map, b_map) = (new_map()?, new_map()?);
    let a = a_map.allocate(0, 4 * PG, true).ctx("allocate")?;
    let data = pattern(5, 4 * PG as usize);
    vm::switch_to(0, Some(&a_map));
    fill(0, a, &data)?;
    // A snapshot: stores after vm_read (head, middle and tail pages) do
    // not reach it.
    let copy = vm_read(&a_map, a + 104, 2 * PG).ctx("vm_read")?;
    for p in 0..3 {
        wr(0, a + p * PG + 200, 0xBAD)?;
    }
    let at = copy
        .copyout(&b_map)
        .map_err(|(e, _)| format!("copyout: {e}"))?;
    ensure_eq!(at % PG, 104, "copyout keeps the page offset");
    vm::switch_to(0, Some(&b_map));
    let page = at - 104;
    let got = dump(0, page, 3 * PG as usize)?;
    same_bytes(
        "copied out",
        at,
        &got[104..104 + 2 * PG as usize],
        &data[104..104 + 2 * PG as usize],
    )?;
    // Write B's bytes back over A, one page further on (overlapping).
    let back = vm_read(&b_map, at, 2 * PG).ctx("vm_read B")?;
    vm_write(&a_map, a + PG + 104, back).ctx("vm_write")?;
    check(&[&a_map, &b_map])?;
    vm::switch_to(0, Some(&a_map));
    let got = dump(0, a, 4 * PG as usize)?;
    let mut want = data.clone();
    for p in 0..3 {
        let at = (p * PG + 200) as usize;
        want[at..at + 8].copy_from_slice(&0xBADu64.to_le_bytes());
    }
    want[PG as usize + 104..3 * PG as usize + 104]
        .copy_from_slice(&data[104..104 + 2 * PG as usize]);
    same_bytes("A after vm_write", a, &got, &want)?;
    check(&[&a_map, &b_map])
}

// --------------------------------------------------------------- fork --

fn fork_share_copy_none() -> Result<(), String> {
    let _s = Session::new();
    let parent = new_map()?;
    let share = parent.allocate(0, 2 * PG, true).ctx("allocate share")?;
    let copy = parent.allocate(0, 2 * PG, true).ctx("allocate copy")?;
    let none = parent.allocate(0, 2 * PG, true).ctx("allocate none")?;
    parent
        .inherit(share, 2 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    parent
        .inherit(none, 2 * PG, VmInherit::None)
        .ctx("inherit none")?;
    vm::switch_to(0, Some(&parent));
    // Page 0 of each region touched before the fork, page 1 not.
    wr(0, share, 0x5A)?;
    wr(0, copy, 0xC0)?;
    wr(0, none, 0x70)?;
    let child = parent.fork().ctx("fork")?;
    check(&[&parent, &child])?;
    let s0 = stats();
    vm::switch_to(0, Some(&child));
    ensure_eq!(rd(0, share)?, 0x5A, "child reads the shared page");
    ensure_eq!(rd(0, copy)?, 0xC0, "child reads the copied page");
    refused(
        0,
        trap::probe_read_u64(none),
        none,
        0,
        KernError::InvalidAddress,
    )?;
    wr(0, share, 0x5B)?;
    wr(0, share + PG, 0x5C)?;
    wr(0, copy, 0xC1)?;
    wr(0, copy + PG, 0xC2)?;
    ensure_eq!(
        stats().cow_faults - s0.cow_faults,
        1,
        "cow faults: one for the child's store to the copied, touched page"
    );
    vm::switch_to(0, Some(&parent));
    ensure_eq!(rd(0, share)?, 0x5B, "parent sees the child's shared store");
    ensure_eq!(
        rd(0, share + PG)?,
        0x5C,
        "parent sees the child's first touch"
    );
    ensure_eq!(rd(0, copy)?, 0xC0, "parent keeps its copied page");
    ensure_eq!(rd(0, copy + PG)?, 0, "parent's untouched copied page");
    ensure_eq!(rd(0, none)?, 0x70, "parent keeps the none region");
    wr(0, share + 8, 0x5D)?;
    wr(0, copy + 8, 0xC3)?;
    vm::switch_to(0, Some(&child));
    ensure_eq!(
        rd(0, share + 8)?,
        0x5D,
        "child sees the parent's shared store"
    );
    ensure_eq!(
        rd(0, copy + 8)?,
        0,
        "child does not see the parent's copy store"
    );
    ensure_eq!(rd(0, copy)?, 0xC1, "child's copied page");
    check(&[&parent, &child])
}

fn fork_generations_outlive_parents() -> Result<(), String> {
    let _s = Session::new();
    let g0 = new_map()?;
    let a = g0.allocate(0, 3 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&g0));
    for i in 0..3 {
        wr(0, a + i * PG, 0x10 + i)?;
    }
    let g1 = g0.fork().ctx("fork g1")?;
    vm::switch_to(0, Some(&g1));
    wr(0, a + PG, 0x21)?;
    let g2 = g1.fork().ctx("fork g2")?;
    vm::switch_to(0, Some(&g2));
    wr(0, a + 2 * PG, 0x32)?;
    check(&[&g0, &g1, &g2])?;
    // The grandparent goes first, then the parent: the youngest keeps
    // its view through whatever collapse that triggers.
    vm::switch_to(0, None);
    drop(g0);
    check(&[&g1, &g2])?;
    vm::switch_to(0, Some(&g1));
    let g1_view = [rd(0, a)?, rd(0, a + PG)?, rd(0, a + 2 * PG)?];
    ensure_eq!(g1_view, [0x10, 0x21, 0x12], "g1 after g0 went");
    vm::switch_to(0, None);
    drop(g1);
    check(&[&g2])?;
    vm::switch_to(0, Some(&g2));
    let g2_view = [rd(0, a)?, rd(0, a + PG)?, rd(0, a + 2 * PG)?];
    ensure_eq!(g2_view, [0x10, 0x21, 0x32], "g2 after g0 and g1 went");
    wr(0, a, 0x30)?;
    ensure_eq!(rd(0, a)?, 0x30, "g2 store");
    check(&[&g2])
}

// ---------------------------------------------------------- two CPUs --

fn same_map_on_two_cpus() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 8 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    vm::switch_to(other, Some(&map));
    for i in 0..8 {
        wr(other, a + i * PG, 0xE0 + i)?;
    }
    for i in 0..8 {
        ensure_eq!(
            rd(0, a + i * PG)?,
            0xE0 + i,
            "cpu 0 reads cpu {other}'s store"
        );
    }
    wr(0, a + 8, 0xAB)?;
    ensure_eq!(rd(other, a + 8)?, 0xAB, "cpu {other} reads cpu 0's store");
    let (resolved, _) = vm::fault_counts(other);
    ensure!(resolved > 0, "cpu {other} resolved no fault through machvm");
    check(&[&map])
}

/// Makes CPU `c` (running the map) cache a writable translation of `va`.
/// Call it last before the change under test: a TLB is a cache, and other
/// work (a fault's handling, a CR3 load) can evict the entry.
fn cache_writable(c: usize, va: u64, v: u64) -> Result<(), String> {
    wr(c, va, v)?;
    ensure_eq!(rd(c, va)?, v, "cpu {c} reads its store");
    Ok(())
}

fn tlb_protect_invalidates_local() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    cache_writable(0, a, 1)?;
    map.protect(a, PG, false, VmProt::READ)
        .ctx("protect READ")?;
    refused(
        0,
        trap::probe_write_u64(a, 2),
        a,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    ensure_eq!(rd(0, a)?, 1, "the page after the refused store");
    check(&[&map])
}

fn tlb_deallocate_invalidates_local() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    cache_writable(0, a, 1)?;
    map.deallocate(a, PG).ctx("deallocate")?;
    refused(0, trap::probe_read_u64(a), a, 0, KernError::InvalidAddress)?;
    check(&[&map])
}

fn tlb_clear_modify_rearms_dirty_bit() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    ensure_eq!(rd(0, a)?, 0, "first load");
    let pm = &vm::vm().pmap;
    let pa = pm
        .extract(map.pmap(), VirtAddr(a))
        .ok_or("no translation after the load")?
        .pa;
    // The MMU sets the accessed and dirty bits; the pmap reads them back.
    ensure!(pm.is_referenced(pa), "accessed bit after a load");
    ensure!(!pm.is_modified(pa), "dirty bit after only a load");
    wr(0, a, 1)?;
    ensure!(pm.is_modified(pa), "dirty bit after a store");
    pm.flush(pm.clear_modify(pa));
    ensure!(!pm.is_modified(pa), "dirty bit after clear_modify");
    // Only if clear_modify's flush dropped the TLB entry (which caches the
    // dirty state) does the next store walk the tables and set it again.
    wr(0, a, 2)?;
    ensure!(
        pm.is_modified(pa),
        "dirty bit after a store following clear_modify (stale TLB entry?)"
    );
    check(&[&map])
}

fn tlb_protect_shootdown_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&map));
    cache_writable(other, a, 1)?;
    // Calls served (counted before the sender is released), not IPIs
    // taken: the target may serve the call from its mailbox loop first.
    let served = smp::calls_served(other);
    // cpu 0 does not run the map; only cpu `other` has the translation.
    map.protect(a, PG, false, VmProt::READ)
        .ctx("protect READ")?;
    ensure!(
        smp::calls_served(other) > served,
        "protect sent no shootdown to cpu {other}"
    );
    refused(
        other,
        on(other, || trap::probe_write_u64(a, 2)),
        a,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    ensure_eq!(rd(other, a)?, 1, "the page after the refused store");
    check(&[&map])
}

fn tlb_deallocate_shootdown_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 2 * PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&map));
    wr(other, a + PG, 2)?;
    // Touched last: the fault handling above may evict TLB entries.
    cache_writable(other, a, 1)?;
    map.deallocate(a, PG).ctx("deallocate")?;
    refused(
        other,
        on(other, || trap::probe_read_u64(a)),
        a,
        0,
        KernError::InvalidAddress,
    )?;
    ensure_eq!(rd(other, a + PG)?, 2, "the page left allocated");
    check(&[&map])
}

fn tlb_fork_write_protects_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let parent = new_map()?;
    let a = parent.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&parent));
    cache_writable(other, a, 0x1111)?;
    // Forking write-protects the parent's pages: cpu `other` must lose its
    // writable translation, or its next store lands in the child too.
    let child = parent.fork().ctx("fork")?;
    vm::clear_last_fault(other);
    wr(other, a, 0x2222)?;
    let f = vm::last_fault(other);
    ensure!(
        f.is_some_and(|f| f.addr == a && f.code & pf::P != 0 && f.outcome == Outcome::Resolved),
        "the parent's store after fork should take a copy-on-write fault; the hook saw {f:?}"
    );
    vm::switch_to(0, Some(&child));
    ensure_eq!(
        rd(0, a)?,
        0x1111,
        "the child's page after the parent's store"
    );
    ensure_eq!(rd(other, a)?, 0x2222, "the parent's page");
    check(&[&parent, &child])
}

fn tlb_cow_fault_shootdown_same_map() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (src, map) = (new_map()?, new_map()?);
    // Above SMALL_COPY_BYTES, so that the copy is copy-on-write.
    let len = 4 * PG;
    ensure!(len > SMALL_COPY_BYTES, "copy too small to be copy-on-write");
    let a = src.allocate(0, len, true).ctx("allocate")?;
    vm::switch_to(0, Some(&src));
    wr(0, a, 0x0DD)?;
    let d = 0x6000_0000;
    vm_map_copy(&map, &src, d, len, a, true, false).ctx("vm_map_copy")?;
    // Both CPUs run `map`; cpu `other` caches a read-only translation of
    // the page still shared with `src`.
    vm::switch_to(0, Some(&map));
    vm::switch_to(other, Some(&map));
    ensure_eq!(rd(other, d)?, 0x0DD, "cpu {other} reads the shared page");
    // cpu 0's store copies the page: the translation on cpu `other` must
    // follow, or it keeps reading the old frame.
    vm::clear_last_fault(0);
    wr(0, d, 0xEEE)?;
    let f = vm::last_fault(0);
    ensure!(
        f.is_some_and(|f| f.addr == d && f.code == pf::P | pf::W && f.outcome == Outcome::Resolved),
        "cpu 0's store should take a copy-on-write fault; the hook saw {f:?}"
    );
    ensure_eq!(
        rd(other, d)?,
        0xEEE,
        "cpu {other} after cpu 0's copy-on-write store"
    );
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a)?, 0x0DD, "the source page");
    check(&[&src, &map])
}

/// `(resolved store fault at va on cpu c)`, or why not.
fn resolved_store(c: usize, va: u64, what: &str) -> Result<(), String> {
    let f = vm::last_fault(c);
    ensure!(
        f.is_some_and(|f| f.addr == va
            && f.code & (pf::P | pf::W) == pf::P | pf::W
            && f.outcome == Outcome::Resolved),
        "{what} should take a copy-on-write fault on cpu {c}; the hook saw {f:?}"
    );
    Ok(())
}

fn tlb_copy_write_protects_remote_source() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&src));
    for i in 1..4 {
        wr(other, a + i * PG, 0x30 + i)?;
    }
    cache_writable(other, a, 0x30)?;
    // Copy-in write-protects the source's translations, on cpu `other` too:
    // else its next store would change the copy.
    let d = 0x2000_0000;
    vm_map_copy(&dst, &src, d, 4 * PG, a, true, false).ctx("vm_map_copy")?;
    vm::clear_last_fault(other);
    wr(other, a, 0x3F)?;
    resolved_store(other, a, "the source's store after the copy")?;
    vm::switch_to(0, Some(&dst));
    ensure_eq!(rd(0, d)?, 0x30, "the copy after the source's store");
    check(&[&src, &dst])
}

fn tlb_copy_overwrite_reaches_remote_destination() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate src")?;
    let d = dst.allocate(0, 4 * PG, true).ctx("allocate dst")?;
    vm::switch_to(0, Some(&src));
    for i in 0..4 {
        wr(0, a + i * PG, 0x40 + i)?;
    }
    vm::switch_to(other, Some(&dst));
    for i in 1..4 {
        wr(other, d + i * PG, 0xD0 + i)?;
    }
    cache_writable(other, d, 0xD0)?;
    // Overwriting replaces the destination's pages (copy-on-write): cpu
    // `other` must drop its translation of the old frame.
    vm_map_copy(&dst, &src, d, 4 * PG, a, false, false).ctx("vm_map_copy")?;
    ensure_eq!(rd(other, d)?, 0x40, "cpu {other} reads the copied page");
    vm::clear_last_fault(other);
    wr(other, d, 0x4F)?;
    resolved_store(other, d, "the destination's store")?;
    ensure_eq!(rd(0, a)?, 0x40, "the source after the destination's store");
    check(&[&src, &dst])
}

fn tlb_share_copy_up_reaches_remote_sharer() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (parent, third) = (new_map()?, new_map()?);
    let r = parent.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&parent));
    for i in 0..4 {
        wr(0, r + i * PG, 0x50 + i)?;
    }
    // A live snapshot leaves the region needs-copy; shared at fork, it gets
    // a shadow both maps write into, over pages the snapshot still sees.
    let snap = vm_read(&parent, r, 4 * PG).ctx("vm_read")?;
    parent
        .inherit(r, 4 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    let child = parent.fork().ctx("fork")?;
    // Reloading CR3 empties cpu 0's TLB: only cpu `other`'s is under test.
    vm::switch_to(0, Some(&parent));
    vm::switch_to(other, Some(&child));
    ensure_eq!(rd(other, r)?, 0x50, "the child reads the shared page");
    // The parent's store copies the page up into the shared shadow; the
    // child's translation of the page below must go, on cpu `other`.
    vm::clear_last_fault(0);
    wr(0, r, 0x5F)?;
    resolved_store(0, r, "the parent's store")?;
    ensure_eq!(
        rd(other, r)?,
        0x5F,
        "the child on cpu {other} after the parent's store (Share)"
    );
    wr(other, r + PG, 0x6F)?;
    ensure_eq!(rd(0, r + PG)?, 0x6F, "the parent after the child's store");
    let at = snap
        .copyout(&third)
        .map_err(|(e, _)| format!("copyout: {e}"))?;
    vm::switch_to(0, Some(&third));
    ensure_eq!(
        [rd(0, at)?, rd(0, at + PG)?],
        [0x50, 0x51],
        "the snapshot taken before the stores"
    );
    check(&[&parent, &child, &third])
}

fn copy_into_shared_region_reaches_sharers() -> Result<(), String> {
    let _s = Session::new();
    let (parent, src) = (new_map()?, new_map()?);
    let r = parent.allocate(0, 4 * PG, true).ctx("allocate")?;
    parent
        .inherit(r, 4 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    vm::switch_to(0, Some(&parent));
    for i in 0..4 {
        wr(0, r + i * PG, 0x60 + i)?;
    }
    let child = parent.fork().ctx("fork")?;
    let a = src.allocate(0, 4 * PG, true).ctx("allocate src")?;
    vm::switch_to(0, Some(&src));
    for i in 0..4 {
        wr(0, a + i * PG, 0x70 + i)?;
    }
    vm::switch_to(0, Some(&child));
    ensure_eq!(rd(0, r)?, 0x60, "the child before the copy");
    // Whole pages copied into a region another map shares: the sharer
    // must see the copy (the pages are written, not replaced).
    vm_map_copy(&parent, &src, r, 4 * PG, a, false, false).ctx("vm_map_copy")?;
    for (who, m) in [("child", &child), ("parent", &parent)] {
        vm::switch_to(0, Some(m));
        for i in 0..4 {
            ensure_eq!(
                rd(0, r + i * PG)?,
                0x70 + i,
                "{who} page {i} after the copy"
            );
        }
    }
    wr(0, r, 0x7F)?;
    vm::switch_to(0, Some(&child));
    ensure_eq!(rd(0, r)?, 0x7F, "the child sees the parent's store");
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a)?, 0x70, "the source after the sharers' store");
    check(&[&parent, &child, &src])
}

fn copy_of_shared_region_is_a_snapshot() -> Result<(), String> {
    let _s = Session::new();
    let (parent, dst) = (new_map()?, new_map()?);
    let r = parent.allocate(0, 4 * PG, true).ctx("allocate")?;
    parent
        .inherit(r, 4 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    vm::switch_to(0, Some(&parent));
    for i in 0..4 {
        wr(0, r + i * PG, 0x80 + i)?;
    }
    let child = parent.fork().ctx("fork")?;
    let d = 0x2000_0000;
    vm_map_copy(&dst, &parent, d, 4 * PG, r, true, false).ctx("vm_map_copy")?;
    // A sharer's store after the copy must not reach the copy.
    vm::switch_to(0, Some(&child));
    wr(0, r, 0x8F)?;
    vm::switch_to(0, Some(&dst));
    ensure_eq!(rd(0, d)?, 0x80, "the copy after a sharer's store");
    // The parent leaves; the child keeps the shared pages.
    vm::switch_to(0, Some(&child));
    parent.deallocate(r, 4 * PG).ctx("deallocate")?;
    check(&[&parent, &child, &dst])?;
    ensure_eq!(
        [rd(0, r)?, rd(0, r + PG)?, rd(0, r + 3 * PG)?],
        [0x8F, 0x81, 0x83],
        "the child after the parent deallocated the shared region"
    );
    check(&[&parent, &child, &dst])
}

fn frames_return_when_maps_go() -> Result<(), String> {
    let s = Session::new();
    let free0 = stats().free_count;
    {
        let (a_map, b_map) = (new_map()?, new_map()?);
        let a = a_map.allocate(0, 32 * PG, true).ctx("allocate")?;
        a_map.inherit(a, 8 * PG, VmInherit::Share).ctx("inherit")?;
        vm::switch_to(0, Some(&a_map));
        for i in 0..32 {
            wr(0, a + i * PG, i)?;
        }
        let c = a_map.fork().ctx("fork")?;
        vm_map_copy(
            &b_map,
            &a_map,
            0x7000_0000,
            16 * PG,
            a + 4 * PG,
            true,
            false,
        )
        .ctx("vm_map_copy")?;
        vm::switch_to(0, Some(&b_map));
        for i in 0..16 {
            wr(0, 0x7000_0000 + i * PG + 8, i)?;
        }
        vm::switch_to(0, Some(&c));
        for i in 0..32 {
            ensure_eq!(rd(0, a + i * PG)?, i, "child page {i}");
            wr(0, a + i * PG + 16, i)?;
        }
        ensure!(stats().free_count < free0, "no frame used?");
        check(&[&a_map, &b_map, &c])?;
        vm::release_all();
    }
    drop(s);
    ensure_eq!(
        stats().free_count,
        free0,
        "free frames after every map went (leak: object pages or page tables)"
    );
    check(&[])
}
