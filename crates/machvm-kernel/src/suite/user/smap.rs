//! SMEP and SMAP are on, and they stop a kernel access that does not go
//! through the user-access routines.

use super::*;

pub(super) fn smep_smap_on_every_cpu() -> Result<(), String> {
    ensure!(cpu::has_smep_smap(), "CPUID reports no SMEP/SMAP");
    for c in 0..smp::cpu_count() {
        let cr4 = smp::run_on(c, cpu::read_cr4);
        ensure!(cr4 & cpu::CR4_SMEP != 0, "cpu {c}: CR4.SMEP clear");
        ensure!(cr4 & cpu::CR4_SMAP != 0, "cpu {c}: CR4.SMAP clear");
    }
    Ok(())
}

/// The page is present and readable, yet a load without `stac` faults as a
/// protection violation, machvm never hears of it, and the checked probe
/// then reads the byte.
pub(super) fn smap_faults_unchecked_kernel_access() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = ctx(map.allocate(0, PG, true), "allocate")?;
    ctx(map.write_bytes(a + 5, &[0x5A]), "write_bytes")?;
    vm::switch_to(0, Some(&map));
    let first = trap::probe_read_u8(a + 5).map_err(|f| format!("checked load: {f}"))?;
    ensure_eq!(first, 0x5A, "checked load");
    let before = vm::fault_counts(0);
    let r = trap::probe_read_u8_unchecked(a + 5);
    let after = vm::fault_counts(0);
    let f = match r {
        Ok(v) => return Err(format!("unchecked load read {v:#x}: SMAP is off")),
        Err(f) => f,
    };
    ensure_eq!(f.addr, a + 5, "fault address");
    ensure!(
        f.present() && !f.write(),
        "want a present-page read fault, got {f}"
    );
    ensure_eq!(before, after, "the hook saw the SMAP fault");
    ensure_eq!(
        trap::probe_read_u8(a + 5).map_err(|f| format!("checked load again: {f}"))?,
        0x5A,
        "checked load again"
    );
    verify(&map)
}

/// An executable user page holding `ret`: a kernel call into it faults
/// (present, fetch) with SMEP on, and runs with SMEP lifted.
pub(super) fn smep_faults_kernel_fetch_from_user_page() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = ctx(map.allocate(0, PG, true), "allocate")?;
    ctx(map.write_bytes(a, &[0xC3]), "write ret")?;
    ctx(
        map.protect(a, PG, false, VmProt::READ | VmProt::EXECUTE),
        "protect r-x",
    )?;
    vm::switch_to(0, Some(&map));
    // SAFETY: the page holds `ret` at `a`.
    unsafe { trap::probe_exec(a) }.map_err(|f| format!("call with SMEP lifted: {f}"))?;
    // SAFETY: as above.
    match unsafe { trap::probe_exec_smep(a) } {
        Ok(()) => Err(String::from("ring 0 ran a user page: SMEP is off")),
        Err(f) => {
            ensure_eq!(f.addr, a, "fault address");
            ensure_eq!(f.code & (pf::P | pf::I), pf::P | pf::I, "error code {f}");
            verify(&map)
        }
    }
}
