//! machvm on the real MMU: the kernel's [`Mmu`] for machvm's x86_64 pmap,
//! the one [`VmSystem`] of the machine, which task map each CPU runs, and
//! the page-fault hook that hands faults to that map's `vm_fault`.
//!
//! A map runs on a CPU only through [`switch_to`], which activates its pmap
//! there (`Pmap::activate` records the CPU in the pmap's active set, so the
//! pmap's shootdowns reach it, and loads CR3) and makes it the CPU's current
//! map for the fault hook. [`release_all`] puts every CPU back on the kernel
//! CR3 with no map; tests call it (through a guard) before their maps go.
//!
//! The hook runs with interrupts off and machvm takes spin locks, so a CPU
//! must never fault on task memory while it holds a machvm lock itself:
//! tasks' memory is touched only by the probes, outside machvm calls.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm::{Access, DefaultPager, KernError, RamDisk};
use machvm_base::{PhysAddr, USER_MAX, VirtAddr};
use machvm_pmap::{CpuSet, Pmap, TLB_FLUSH_BATCH};
use machvm_pmap_x86_64::{Mmu, X86Config};

use crate::locks::{KernelLocks, VmMap, VmSystem, X86Pmap};

use crate::smp::{self, MAX_CPUS};
use crate::trap::{self, pf};
use crate::{cpu, mem, paging};

/// The kernel's CPU hooks for machvm's pmap: CR3 loads and TLB shootdowns
/// by IPI ([`smp::shootdown`]).
pub struct KernelMmu;

/// The one [`KernelMmu`], handed to the pmap as `&'static dyn Mmu`.
pub static KERNEL_MMU: KernelMmu = KernelMmu;

impl Mmu for KernelMmu {
    fn current_cpu(&self) -> usize {
        smp::current_cpu()
    }

    fn load_root(&self, root: PhysAddr) {
        // SAFETY: every root comes from the X86Pmap built in `vm()`, whose
        // roots copy `paging::kernel_upper_half()`, the kernel half as it is.
        unsafe { cpu::load_cr3(root.as_u64()) }
    }

    fn invalidate(&self, cpus: CpuSet, pages: Option<&[VirtAddr]>) {
        let Some(pages) = pages else {
            smp::shootdown(cpus, None);
            return;
        };
        // On the stack: this runs in the fault path, heap use kept minimal.
        let mut buf = [0u64; TLB_FLUSH_BATCH];
        for chunk in pages.chunks(TLB_FLUSH_BATCH) {
            for (b, va) in buf.iter_mut().zip(chunk) {
                *b = va.as_u64();
            }
            smp::shootdown(cpus, Some(&buf[..chunk.len()]));
        }
    }
}

/// The machine's VM system and its pmap module.
pub struct KernelVm {
    /// machvm over the kernel's frames and the real MMU.
    pub system: VmSystem,
    /// The same pmap module, typed (for `root` and `activate`).
    pub pmap: Arc<X86Pmap>,
}

static VM: spin::Once<KernelVm> = spin::Once::new();

/// The VM system, built on first use over [`mem::frames`] with an
/// [`X86Pmap`] whose roots share the kernel half and whose shootdowns go
/// through [`KERNEL_MMU`], paging anonymous memory to the RAM disk boot
/// carved ([`mem::Layout::ram_disk`]) through machvm's default pager.
/// Panics if the pmap or the pager cannot be built (no heap).
pub fn vm() -> &'static KernelVm {
    VM.call_once(|| {
        let frames = Arc::clone(mem::frames());
        let cfg = X86Config {
            kernel_half: paging::kernel_upper_half(),
            mmu: Some(&KERNEL_MMU),
        };
        let pmap = Arc::new(X86Pmap::new(frames.clone(), cfg).expect("machvm pmap"));
        let (s, e) = mem::layout().ram_disk;
        let disk = RamDisk::new(PhysAddr::new(s), (e - s) / 4096).expect("RAM disk");
        let pager = DefaultPager::<_, KernelLocks>::with_locks(disk).expect("default pager");
        let system = VmSystem::with_pager(frames, pmap.clone(), Arc::new(pager));
        KernelVm { system, pmap }
    })
}

/// What machvm made of one page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `vm_fault` resolved it; the access was retried.
    Resolved,
    /// `vm_fault` refused it with this error.
    Refused(KernError),
    /// The CPU runs no task map (or the address is not a task address).
    NoMap,
    /// The same fault came back too many times after being "resolved":
    /// machvm claimed success without fixing the translation. Refused.
    Loop,
}

/// The last page fault a CPU took on task memory, as the hook saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// CR2.
    pub addr: u64,
    /// The error code (bits in [`trap::pf`]).
    pub code: u64,
    /// The access handed to machvm.
    pub access: Access,
    /// What machvm said.
    pub outcome: Outcome,
}

/// Kernel heap a task-memory fault must leave free (half the system calls'
/// reserve, so that exits and teardown still find room).
pub const FAULT_HEAP_RESERVE: usize = 2 << 20;

/// A resolved fault repeated this many times in a row is a loop.
const LOOP_LIMIT: u64 = 1000;

struct CpuSlot {
    map: spin::Mutex<Option<VmMap>>,
    last: spin::Mutex<Option<FaultRecord>>,
    repeats: AtomicU64,
    resolved: AtomicU64,
    refused: AtomicU64,
    no_map: AtomicU64,
}

static SLOTS: [CpuSlot; MAX_CPUS] = [const {
    CpuSlot {
        map: spin::Mutex::new(None),
        last: spin::Mutex::new(None),
        repeats: AtomicU64::new(0),
        resolved: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        no_map: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// The access a page-fault error code describes.
pub fn access_of(code: u64) -> Access {
    if code & pf::I != 0 {
        Access::Execute
    } else if code & pf::W != 0 {
        Access::Write
    } else {
        Access::Read
    }
}

/// The page-fault hook: `vm_fault` on this CPU's current map.
fn fault_hook(cr2: u64, err: u64) -> bool {
    let slot = &SLOTS[smp::current_cpu()];
    let access = access_of(err);
    // No holder of a slot lock ever touches task memory, so this CPU cannot
    // hold it here. RSVD means a corrupt entry: not machvm's to resolve.
    let map = if cr2 < USER_MAX && err & pf::RSVD == 0 {
        slot.map.lock().clone()
    } else {
        None
    };
    let mut outcome = match map {
        None => Outcome::NoMap,
        // A fault may create objects in the kernel heap: refused before
        // the heap runs out (an allocation failure would end the kernel).
        Some(_) if crate::heap::free() < FAULT_HEAP_RESERVE => {
            Outcome::Refused(KernError::ResourceShortage)
        }
        Some(map) => match map.fault(cr2, access) {
            Ok(()) => Outcome::Resolved,
            Err(e) => Outcome::Refused(e),
        },
    };
    let mut last = slot.last.lock();
    let again =
        last.is_some_and(|l| l.addr == cr2 && l.code == err && l.outcome == Outcome::Resolved);
    let n = if again {
        slot.repeats.fetch_add(1, Relaxed) + 1
    } else {
        slot.repeats.store(0, Relaxed);
        0
    };
    if n >= LOOP_LIMIT && outcome == Outcome::Resolved {
        outcome = Outcome::Loop;
    }
    *last = Some(FaultRecord {
        addr: cr2,
        code: err,
        access,
        outcome,
    });
    drop(last);
    let counter = match outcome {
        Outcome::Resolved => &slot.resolved,
        Outcome::Refused(_) | Outcome::Loop => &slot.refused,
        Outcome::NoMap => &slot.no_map,
    };
    counter.fetch_add(1, Relaxed);
    outcome == Outcome::Resolved
}

/// Installs the hook (idempotent; the test harness removes it after each
/// test, [`switch_to`] puts it back).
pub fn install_fault_hook() {
    trap::set_page_fault_hook(Some(fault_hook));
}

/// Makes `map` (or, with `None`, no map: the kernel CR3) the one CPU `c`
/// runs, from any CPU (through [`smp::run_on`]). Activates the map's pmap
/// there, which loads CR3, and deactivates the previous one.
pub fn switch_to(c: usize, map: Option<&VmMap>) {
    install_fault_hook();
    assert!(
        crate::proc::running_on(c).is_none(),
        "switch_to: cpu {c} runs a task"
    );
    let old = smp::run_on(c, || activate_local(map));
    // Dropped here, not in the IPI handler: it may be the map's last handle.
    drop(old);
}

/// Makes `map` (or none: the kernel CR3) the one this CPU runs, as
/// [`switch_to`] does for any CPU; returns the map it ran before, which the
/// caller drops outside every lock (it may be the last handle).
#[must_use = "drop the old map outside every lock"]
pub fn activate_local(map: Option<&VmMap>) -> Option<VmMap> {
    let c = smp::current_cpu();
    let pmap = &vm().pmap;
    let slot = &SLOTS[c];
    let mut cur = slot.map.lock();
    match map {
        Some(m) => pmap.activate(m.pmap(), c),
        None => {
            // The kernel CR3 first: once deactivated, the pmap's
            // shootdowns no longer reach this CPU.
            // SAFETY: the kernel PML4 maps the kernel half.
            unsafe { cpu::load_cr3(paging::kernel_pml4_pa()) };
            if let Some(m) = cur.as_ref() {
                pmap.deactivate(m.pmap(), c);
            }
        }
    }
    *slot.last.lock() = None;
    core::mem::replace(&mut *cur, map.cloned())
}

/// Every CPU back on the kernel CR3, running no map (nothing to do before
/// the VM system exists).
pub fn release_all() {
    if VM.get().is_none() {
        return;
    }
    for c in 0..smp::cpu_count() {
        switch_to(c, None);
    }
}

/// The map CPU `cpu` runs, if any.
pub fn current_map(cpu: usize) -> Option<VmMap> {
    SLOTS[cpu].map.lock().clone()
}

/// The last task-memory fault CPU `cpu` took since its last switch.
pub fn last_fault(cpu: usize) -> Option<FaultRecord> {
    *SLOTS[cpu].last.lock()
}

/// Forgets CPU `c`'s last fault, so that the next [`last_fault`] names a
/// fault taken after this call or none.
pub fn clear_last_fault(c: usize) {
    *SLOTS[c].last.lock() = None;
}

/// What the page-fault hook did on one CPU since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Faults machvm resolved (the access was retried).
    pub resolved: u64,
    /// Faults machvm refused ([`Outcome::Refused`], or [`Outcome::Loop`]).
    pub refused: u64,
    /// Faults the hook did not hand to machvm ([`Outcome::NoMap`]).
    pub no_map: u64,
}

/// What the hook did on CPU `cpu` since boot.
pub fn fault_counts(cpu: usize) -> FaultCounts {
    let s = &SLOTS[cpu];
    FaultCounts {
        resolved: s.resolved.load(Relaxed),
        refused: s.refused.load(Relaxed),
        no_map: s.no_map.load(Relaxed),
    }
}

/// [`fault_counts`] summed over every CPU online.
pub fn fault_counts_all() -> FaultCounts {
    (0..smp::cpu_count())
        .map(fault_counts)
        .fold(FaultCounts::default(), |a, b| FaultCounts {
            resolved: a.resolved + b.resolved,
            refused: a.refused + b.refused,
            no_map: a.no_map + b.no_map,
        })
}

/// Physical address of the root `map` runs on (what CR3 holds on a CPU that
/// runs it).
pub fn root_of(map: &VmMap) -> Option<u64> {
    vm().pmap.root(map.pmap()).map(|r| r.as_u64())
}
