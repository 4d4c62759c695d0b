//! Every CPU at once in one shared map, for a fixed number of operations:
//! stores and loads through the MMU (zero-fill and copy-on-write faults),
//! `fork`, `protect` and `vm_map_copy`, each sending shootdowns to CPUs
//! that may be spinning on a machvm lock with interrupts off (the
//! kernel's `KernelLocks` answer them while they wait). No deadlock, and
//! every byte right.

use super::*;

/// Pages each CPU owns in the shared map.
const PER: u64 = 8;
/// Rounds of stores, loads and one map operation, per CPU.
const ROUNDS: u64 = 24;

/// The value CPU `c` stores in its page `p` in round `r`.
fn value(c: usize, p: u64, r: u64) -> u64 {
    0xA5A5_0000_0000_0000 | (c as u64) << 40 | p << 20 | r
}

/// Where CPU `c` stores in its page `p` in round `r`.
fn slot(base: u64, p: u64, r: u64) -> u64 {
    base + p * PG + 8 * (r % 8)
}

pub(super) fn smp_stress_shared_map() -> Result<(), String> {
    other_cpu()?;
    let _s = Session::new();
    let n = smp::cpu_count();
    let served: u64 = (0..n).map(smp::flushes_served).sum();
    let shared = new_map()?;
    let a = shared
        .allocate(0, n as u64 * PER * PG, true)
        .ctx("allocate")?;
    let scratch = (0..n).map(|_| new_map()).collect::<Result<Vec<_>, _>>()?;
    let errors = spin::Mutex::new(Vec::<String>::new());
    smp::run_everywhere(&|c| {
        let base = a + c as u64 * PER * PG;
        if let Err(e) = stress_cpu(c, &shared, base, &scratch[c]) {
            errors.lock().push(format!("cpu {c}: {e}"));
        }
    });
    let errors = errors.into_inner();
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    // Forks, protects and copies of a map every CPU runs: remote
    // shootdowns were sent and answered, not skipped.
    let now: u64 = (0..n).map(smp::flushes_served).sum();
    ensure!(now > served, "no CPU served a shootdown during the stress");
    // Every CPU's last stores, seen through machvm from here.
    for c in 0..n {
        let base = a + c as u64 * PER * PG;
        for p in 0..PER {
            let mut b = [0u8; 8];
            let va = slot(base, p, ROUNDS - 1);
            shared.read_bytes(va, &mut b).ctx("read_bytes")?;
            ensure_eq!(
                u64::from_le_bytes(b),
                value(c, p, ROUNDS - 1),
                "cpu {c} page {p}"
            );
        }
    }
    let mut maps: Vec<&VmMap> = scratch.iter().collect();
    maps.push(&shared);
    check(&maps)
}

/// One CPU's share: runs on CPU `c` (in the IPI handler on the others).
fn stress_cpu(c: usize, shared: &VmMap, base: u64, scratch: &VmMap) -> Result<(), String> {
    vm::switch_to(c, Some(shared));
    for r in 0..ROUNDS {
        for p in 0..PER {
            let va = slot(base, p, r);
            trap::probe_write_u64(va, value(c, p, r)).map_err(|f| format!("store {va:#x}: {f}"))?;
        }
        for p in 0..PER {
            let va = slot(base, p, r);
            let got = trap::probe_read_u64(va).map_err(|f| format!("load {va:#x}: {f}"))?;
            ensure_eq!(got, value(c, p, r), "load back, round {r} page {p}");
        }
        map_operation(c, shared, base, scratch, r)?;
    }
    Ok(())
}

/// Round `r`'s operation on the map (each lowers or moves translations
/// that other CPUs may hold).
fn map_operation(
    c: usize,
    shared: &VmMap,
    base: u64,
    scratch: &VmMap,
    r: u64,
) -> Result<(), String> {
    let first = slot(base, 0, r);
    match r % 4 {
        0 => {
            let child = shared.fork().ctx("fork")?;
            let mut b = [0u8; 8];
            child.read_bytes(first, &mut b).ctx("child read")?;
            ensure_eq!(
                u64::from_le_bytes(b),
                value(c, 0, r),
                "the child's snapshot"
            );
        }
        1 => {
            shared
                .protect(base, PER * PG, false, VmProt::READ)
                .ctx("protect")?;
            ensure!(
                trap::probe_write_u64(first, 0).is_err(),
                "a store to a page protected read-only went through"
            );
            shared
                .protect(base, PER * PG, false, VmProt::DEFAULT)
                .ctx("protect back")?;
        }
        2 => {
            vm_map_copy(scratch, shared, base, PER * PG, base, true, false).ctx("vm_map_copy")?;
            let mut b = [0u8; 8];
            scratch.read_bytes(first, &mut b).ctx("copy read")?;
            ensure_eq!(u64::from_le_bytes(b), value(c, 0, r), "the copy");
            scratch.deallocate(base, PER * PG).ctx("deallocate copy")?;
        }
        _ => {
            // A neighbour's page, whatever it holds now.
            let other = (c + 1) % smp::cpu_count();
            let theirs = base - c as u64 * PER * PG + other as u64 * PER * PG;
            trap::probe_read_u64(theirs).map_err(|f| format!("load {theirs:#x}: {f}"))?;
        }
    }
    Ok(())
}
