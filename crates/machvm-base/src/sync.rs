//! The spin locks every machvm layer uses, and what a CPU does while it
//! spins on one.
//!
//! machvm sends TLB shootdowns while holding a lock (a map's, the graph's),
//! and waits for every CPU to answer. A CPU that spins on that lock with
//! interrupts off would never answer: the two would wait on each other. A
//! kernel therefore registers, once, a hook that every spin runs
//! ([`set_spin_hook`]) — the QEMU kernel's serves pending shootdowns — so
//! that the rule is code, not documentation.

use spin::relax::RelaxStrategy;

static HOOK: spin::Once<fn()> = spin::Once::new();
static CPU_ID: spin::Once<fn() -> usize> = spin::Once::new();

/// Registers how to find the current CPU's number (a kernel's per-CPU
/// data), for what machvm keeps per CPU (event counters); the first call
/// wins. Without it a thread's stack address stands in.
pub fn set_cpu_id(cpu_id: fn() -> usize) {
    CPU_ID.call_once(|| cpu_id);
}

/// The current CPU's number as [`set_cpu_id`] tells it, else a hash of
/// the stack address (threads' stacks lie megabytes apart), for choosing
/// a per-CPU slot: any value is correct, a stable one is fast.
#[inline]
pub fn cpu_slot() -> usize {
    match CPU_ID.get() {
        Some(f) => f(),
        None => {
            let here = 0u8;
            let sp = core::ptr::addr_of!(here) as usize as u64;
            (((sp >> 16).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 58) as usize
        }
    }
}

/// Registers what a CPU does on each turn of a spin on a machvm lock (or
/// on a page being filled): the first call wins. A kernel whose CPUs may
/// spin with interrupts off passes its "serve pending shootdowns" here.
pub fn set_spin_hook(hook: fn()) {
    HOOK.call_once(|| hook);
}

/// The relax strategy of machvm's locks: the spin hook, then a pause.
pub struct Relax;

impl RelaxStrategy for Relax {
    #[inline]
    fn relax() {
        if let Some(hook) = HOOK.get() {
            hook();
        }
        core::hint::spin_loop();
    }
}

/// One turn of a hand-written wait (a busy page): as a lock's spin.
#[inline]
pub fn relax() {
    Relax::relax();
}

/// Takes `lock` exclusively, writers first: the upgradeable guard it takes
/// on the way shuts out new readers while the ones inside drain, so a
/// steady stream of readers cannot starve a writer (spin's `write` alone
/// waits for a moment with no reader at all). A thread must not ask for a
/// shared guard of a lock it already holds shared.
#[inline]
pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.upgradeable_read().upgrade()
}

/// A mutual-exclusion spin lock that runs the spin hook while it waits.
pub type Mutex<T> = spin::mutex::Mutex<T, Relax>;
/// The guard of a [`Mutex`].
pub type MutexGuard<'a, T> = spin::mutex::MutexGuard<'a, T>;
/// A readers-writer spin lock that runs the spin hook while it waits.
pub type RwLock<T> = spin::rwlock::RwLock<T, Relax>;
/// A shared guard of a [`RwLock`].
pub type RwLockReadGuard<'a, T> = spin::rwlock::RwLockReadGuard<'a, T>;
/// The exclusive guard of a [`RwLock`].
pub type RwLockWriteGuard<'a, T> = spin::rwlock::RwLockWriteGuard<'a, T, Relax>;
