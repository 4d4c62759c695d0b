//! The locks every machvm layer takes, and who chooses them: the kernel.
//!
//! Each type that holds a lock is generic over one [`Locks`] family, raw
//! lock types in `lock_api`'s traits (the field's standard interface:
//! `spin`, `parking_lot` and most kernels' own locks implement it). A
//! kernel names its family once, as the type parameter of the system it
//! builds, and every layer's locks are then its locks: interrupt-aware,
//! sleeping, instrumented. [`SpinLocks`] (spin's) is the default.
//!
//! machvm sends TLB shootdowns while holding a lock (a map's, the graph's)
//! and waits for every CPU to answer. A CPU that spins on that lock with
//! interrupts off would never answer: the two would wait on each other. A
//! kernel whose CPUs may spin with interrupts off therefore chooses a
//! family whose waiting serves pending shootdowns (the QEMU kernel's does),
//! and [`Locks::relax`] is what machvm's own waits (a page another CPU is
//! filling) do on each turn.

use lock_api::{RawMutex, RawRwLockUpgrade};

pub mod model;

/// The crates the lock family is built from, so that a kernel names the
/// very versions machvm's [`Locks`] bounds use.
pub use {lock_api, spin};

/// A family of raw locks for every machvm layer.
///
/// ```
/// use machvm_base::sync::{Locks, Mutex, RwLock, write};
///
/// // spin's locks, waiting with a yield to the host's scheduler: what a
/// // kernel writes with its own lock types and wait in place of these.
/// struct Yield;
/// impl spin::relax::RelaxStrategy for Yield {
///     fn relax() {
///         std::thread::yield_now();
///     }
/// }
/// struct MyLocks;
/// impl Locks for MyLocks {
///     type Mutex = spin::mutex::SpinMutex<(), Yield>;
///     type RwLock = spin::rwlock::RwLock<(), Yield>;
///     fn relax() {
///         std::thread::yield_now();
///     }
/// }
///
/// // The aliases name the family; the constructor is `lock_api`'s.
/// let m = Mutex::<MyLocks, u32>::new(1);
/// *m.lock() += 1;
/// let rw = RwLock::<MyLocks, u32>::new(*m.lock());
/// *write::<MyLocks, _>(&rw) += 1;
/// assert_eq!(*rw.read(), 3);
/// ```
pub trait Locks: Sized + Send + Sync + 'static {
    /// The mutual-exclusion lock (the pmap's, the frame caches', an
    /// object's pages').
    type Mutex: RawMutex + Send + Sync;
    /// The readers–writer lock (a map's, the object graph's). machvm takes
    /// it exclusively through the upgradeable state ([`write()`]), so a
    /// family whose upgradeable lock shuts out new readers keeps a stream
    /// of readers from starving a writer.
    type RwLock: RawRwLockUpgrade + Send + Sync;

    /// One turn of a wait machvm spins itself (a page another CPU is
    /// filling): a pause by default. A kernel that must answer shootdowns
    /// while it waits serves them here too.
    #[inline]
    fn relax() {
        core::hint::spin_loop();
    }
}

/// `spin`'s locks: the default family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpinLocks;

impl Locks for SpinLocks {
    type Mutex = spin::mutex::SpinMutex<(), spin::relax::Spin>;
    type RwLock = spin::rwlock::RwLock<(), spin::relax::Spin>;
}

/// A mutual-exclusion lock of family `L`.
pub type Mutex<L, T> = lock_api::Mutex<<L as Locks>::Mutex, T>;
/// The guard of a [`Mutex`].
pub type MutexGuard<'a, L, T> = lock_api::MutexGuard<'a, <L as Locks>::Mutex, T>;
/// A readers–writer lock of family `L`.
pub type RwLock<L, T> = lock_api::RwLock<<L as Locks>::RwLock, T>;
/// A shared guard of a [`RwLock`].
pub type RwLockReadGuard<'a, L, T> = lock_api::RwLockReadGuard<'a, <L as Locks>::RwLock, T>;
/// The exclusive guard of a [`RwLock`].
pub type RwLockWriteGuard<'a, L, T> = lock_api::RwLockWriteGuard<'a, <L as Locks>::RwLock, T>;

/// Takes `lock` exclusively: at once when it is free (one atomic step),
/// else through the upgradeable state — with a family whose upgradeable
/// lock shuts out new readers (spin's does) the readers inside drain while
/// no new one enters, so a steady stream of readers cannot starve a
/// writer. A thread must not ask for a shared guard of a lock it already
/// holds shared.
#[inline]
pub fn write<L: Locks, T>(lock: &RwLock<L, T>) -> RwLockWriteGuard<'_, L, T> {
    match lock.try_write() {
        Some(g) => g,
        None => lock_api::RwLockUpgradableReadGuard::upgrade(lock.upgradable_read()),
    }
}

static CPU_ID: spin::Once<fn() -> usize> = spin::Once::new();

/// Registers how to find the current CPU's number (a kernel's per-CPU
/// data), for what machvm keeps per CPU (event counters, frame caches);
/// the first call wins. Without it a thread's stack address stands in.
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
