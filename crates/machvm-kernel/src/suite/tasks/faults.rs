//! One map on one CPU: CR3, zero fill, protection and the maximum,
//! deallocation, NX.

use super::*;

pub(super) fn switch_loads_the_maps_root() -> Result<(), String> {
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

pub(super) fn zero_fill_on_demand() -> Result<(), String> {
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
    // Loads map the shared zero frame read-only: no frame, no zero fill.
    for i in 0..4 {
        ensure_eq!(rd(0, a + i * PG + 8)?, 0, "first load of page {i}");
    }
    let loaded = stats();
    ensure_eq!(
        (loaded.zero_fill_count, loaded.active_count),
        (before.zero_fill_count, before.active_count),
        "zero fills and object frames after loading 4 fresh pages"
    );
    ensure!(
        loaded.faults >= before.faults + 4,
        "machvm counted {} faults for 4 fresh pages",
        loaded.faults - before.faults
    );
    // The first store faults (the zero frame's translation, cached in the
    // TLB, is read-only) and gets a zero-filled page of its own.
    let taken = trap::fault_counts().0;
    for i in 0..4 {
        wr(0, a + i * PG + 16, 0x5EED_0000 + i)?;
    }
    ensure_eq!(
        trap::fault_counts().0,
        taken + 4,
        "page faults taken by the first stores after the loads"
    );
    let after = stats();
    ensure_eq!(
        after.zero_fill_count - before.zero_fill_count,
        4,
        "zero-fill count after storing to 4 loaded pages"
    );
    // A private zero-filled page is mapped writable: storing takes no fault.
    for i in 0..4 {
        wr(0, a + i * PG + 24, 0x5EED_1000 + i)?;
    }
    ensure_eq!(
        trap::fault_counts().0,
        taken + 4,
        "page faults taken by the second stores"
    );
    for i in 0..4 {
        ensure_eq!(
            rd(0, a + i * PG + 16)?,
            0x5EED_0000 + i,
            "store stuck, page {i}"
        );
        ensure_eq!(rd(0, a + i * PG + 8)?, 0, "the rest of page {i} is zero");
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

pub(super) fn write_to_readonly_faults() -> Result<(), String> {
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

pub(super) fn protect_none_and_maximum() -> Result<(), String> {
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

pub(super) fn access_after_deallocate_faults() -> Result<(), String> {
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

pub(super) fn partial_deallocate_splits() -> Result<(), String> {
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

pub(super) fn deallocate_across_page_tables() -> Result<(), String> {
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

pub(super) fn nx_without_execute() -> Result<(), String> {
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

/// SPEC §7 on the MMU: wired pages are resident and entered before any
/// access, so loads and stores on any CPU take no page fault; unwired,
/// they stay mapped (a translation is a cache) and the map verifies.
pub(super) fn wired_pages_take_no_page_fault() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 4 * PG, true).ctx("allocate")?;
    map.wire(a, 4 * PG, VmProt::READ | VmProt::WRITE)
        .ctx("wire")?;
    ensure_eq!(map.region(a).ctx("region")?.wired_pages, 4, "wired pages");
    let taken = trap::fault_counts().0;
    for c in 0..smp::cpu_count() {
        vm::switch_to(c, Some(&map));
        for i in 0..4 {
            let va = a + i * PG + 8 * c as u64;
            wr(c, va, 0x3A11_0000 + i)?;
            ensure_eq!(rd(c, va)?, 0x3A11_0000 + i, "cpu {c}, page {i}");
        }
    }
    ensure_eq!(trap::fault_counts().0, taken, "page faults on wired pages");
    map.wire(a, 4 * PG, VmProt::NONE).ctx("unwire")?;
    ensure_eq!(
        map.region(a).ctx("region")?.wired_pages,
        0,
        "wired after unwiring"
    );
    check(&[&map])
}
