//! What the machvm suite's tests share: the session, the system, probes
//! that load and store on a CPU through a task map, patterns and checks.

use super::*;

/// A test's hold on the CPUs: the fault hook installed, and on drop every
/// CPU back on the kernel CR3 with no map (the maps' pmaps deactivated
/// before their last handles go).
pub(super) struct Session;

impl Session {
    pub(super) fn new() -> Session {
        vm::install_fault_hook();
        Session
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        vm::release_all();
    }
}

pub(super) fn sys() -> &'static VmSystem {
    &vm::vm().system
}

pub(super) fn stats() -> VmStatistics {
    sys().statistics()
}

pub(super) fn new_map() -> Result<VmMap, String> {
    sys().create_map().map_err(|e| format!("create_map: {e}"))
}

/// Adds what failed to a machvm error.
pub(super) trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T> Context<T> for Result<T, KernError> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Verifies every map given, then the whole system (frames and pmap).
pub(super) fn check(maps: &[&VmMap]) -> Result<(), String> {
    for m in maps {
        m.verify().map_err(|e| format!("{m:?}.verify(): {e}"))?;
    }
    sys()
        .verify()
        .map_err(|e| format!("VmSystem::verify(): {e}"))
}

/// Runs `f` on CPU `c`.
pub(super) fn on<R: Send>(c: usize, f: impl FnOnce() -> R + Send) -> R {
    smp::run_on(c, f)
}

/// The other CPU for SMP tests.
pub(super) fn other_cpu() -> Result<usize, String> {
    ensure!(
        smp::cpu_count() >= 2,
        "needs two CPUs (-smp 2), have {}",
        smp::cpu_count()
    );
    Ok(1)
}

pub(super) fn explain(c: usize, f: &PageFaultInfo) -> String {
    format!("{f} on cpu {c}; machvm: {:?}", vm::last_fault(c))
}

/// A 64-bit load on CPU `c` that must not fault (after machvm resolved
/// whatever faults it took).
pub(super) fn rd(c: usize, va: u64) -> Result<u64, String> {
    on(c, || trap::probe_read_u64(va)).map_err(|f| format!("load {va:#x}: {}", explain(c, &f)))
}

/// A 64-bit store on CPU `c` that must not fault, as [`rd`].
pub(super) fn wr(c: usize, va: u64, v: u64) -> Result<(), String> {
    on(c, || trap::probe_write_u64(va, v)).map_err(|f| format!("store {va:#x}: {}", explain(c, &f)))
}

/// `r`, an access on CPU `c`, must have faulted at `addr` with exactly the
/// error bits `code` (of P, W, U, I), and machvm must have refused it with
/// `err`.
pub(super) fn refused<T: Debug>(
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
pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
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
pub(super) fn fill(c: usize, va: u64, bytes: &[u8]) -> Result<(), String> {
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
pub(super) fn dump(c: usize, va: u64, len: usize) -> Result<Vec<u8>, String> {
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
pub(super) fn same_bytes(what: &str, base: u64, got: &[u8], want: &[u8]) -> Result<(), String> {
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
