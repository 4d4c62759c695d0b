//! A VM system whose every lock is of a family the test chooses
//! (`machvm_base::sync::Locks`): the façade's calls, faults, fork and the
//! copy family take that family's mutexes and readers–writer locks, and
//! the system behaves exactly as under the default spin locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lock_api::{GuardSend, RawMutex, RawRwLock, RawRwLockUpgrade};
use machvm::{Locks, PAGE_SIZE, VmSystem, vm_map_copy, vm_read};

/// Acquisitions of a [`Counted`] mutex, shared and exclusive locks.
static MUTEX: AtomicU64 = AtomicU64::new(0);
static SHARED: AtomicU64 = AtomicU64::new(0);
static EXCLUSIVE: AtomicU64 = AtomicU64::new(0);

type SpinMutex = spin::mutex::SpinMutex<(), spin::relax::Spin>;
type SpinRw = spin::rwlock::RwLock<(), spin::relax::Spin>;

/// spin's mutex, counting acquisitions.
struct CountedMutex(SpinMutex);

// SAFETY: every method forwards to spin's mutex, which upholds the
// contract; counting changes nothing about exclusion.
unsafe impl RawMutex for CountedMutex {
    type GuardMarker = GuardSend;
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = CountedMutex(<SpinMutex as RawMutex>::INIT);
    fn lock(&self) {
        MUTEX.fetch_add(1, Relaxed);
        <SpinMutex as RawMutex>::lock(&self.0);
    }
    fn try_lock(&self) -> bool {
        let ok = <SpinMutex as RawMutex>::try_lock(&self.0);
        MUTEX.fetch_add(u64::from(ok), Relaxed);
        ok
    }
    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock, as `RawMutex::unlock` requires.
        unsafe { <SpinMutex as RawMutex>::unlock(&self.0) }
    }
}

/// spin's readers–writer lock, counting acquisitions.
struct CountedRw(SpinRw);

// SAFETY: as for `CountedMutex`, every method forwards to spin's lock.
unsafe impl RawRwLock for CountedRw {
    type GuardMarker = GuardSend;
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = CountedRw(<SpinRw as RawRwLock>::INIT);
    fn lock_shared(&self) {
        SHARED.fetch_add(1, Relaxed);
        <SpinRw as RawRwLock>::lock_shared(&self.0);
    }
    fn try_lock_shared(&self) -> bool {
        let ok = <SpinRw as RawRwLock>::try_lock_shared(&self.0);
        SHARED.fetch_add(u64::from(ok), Relaxed);
        ok
    }
    unsafe fn unlock_shared(&self) {
        // SAFETY: the caller holds a shared lock.
        unsafe { <SpinRw as RawRwLock>::unlock_shared(&self.0) }
    }
    fn lock_exclusive(&self) {
        EXCLUSIVE.fetch_add(1, Relaxed);
        <SpinRw as RawRwLock>::lock_exclusive(&self.0);
    }
    fn try_lock_exclusive(&self) -> bool {
        let ok = <SpinRw as RawRwLock>::try_lock_exclusive(&self.0);
        EXCLUSIVE.fetch_add(u64::from(ok), Relaxed);
        ok
    }
    unsafe fn unlock_exclusive(&self) {
        // SAFETY: the caller holds the exclusive lock.
        unsafe { <SpinRw as RawRwLock>::unlock_exclusive(&self.0) }
    }
}

// SAFETY: forwards to spin's upgradeable lock.
unsafe impl RawRwLockUpgrade for CountedRw {
    fn lock_upgradable(&self) {
        EXCLUSIVE.fetch_add(1, Relaxed);
        <SpinRw as RawRwLockUpgrade>::lock_upgradable(&self.0);
    }
    fn try_lock_upgradable(&self) -> bool {
        let ok = <SpinRw as RawRwLockUpgrade>::try_lock_upgradable(&self.0);
        EXCLUSIVE.fetch_add(u64::from(ok), Relaxed);
        ok
    }
    unsafe fn unlock_upgradable(&self) {
        // SAFETY: the caller holds the upgradeable lock.
        unsafe { <SpinRw as RawRwLockUpgrade>::unlock_upgradable(&self.0) }
    }
    unsafe fn upgrade(&self) {
        // SAFETY: the caller holds the upgradeable lock.
        unsafe { <SpinRw as RawRwLockUpgrade>::upgrade(&self.0) }
    }
    unsafe fn try_upgrade(&self) -> bool {
        // SAFETY: the caller holds the upgradeable lock.
        unsafe { <SpinRw as RawRwLockUpgrade>::try_upgrade(&self.0) }
    }
}

struct Counted;

impl Locks for Counted {
    type Mutex = CountedMutex;
    type RwLock = CountedRw;
}

fn counts() -> [u64; 3] {
    [
        MUTEX.load(Relaxed),
        SHARED.load(Relaxed),
        EXCLUSIVE.load(Relaxed),
    ]
}

#[test]
fn every_layer_takes_the_chosen_family() {
    let vm = VmSystem::<Counted>::try_hosted_with_locks(16 << 20).unwrap();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * PAGE_SIZE, true).unwrap();
    let before = counts();
    // A one-page store: the shared fault path (map and graph shared, the
    // object's page map, the frame cache, the pmap's space lock).
    map.write_bytes(a, b"family").unwrap();
    let after = counts();
    assert!(
        after[0] > before[0],
        "no mutex of the family taken: {after:?}"
    );
    assert!(
        after[1] > before[1],
        "no shared lock of the family: {after:?}"
    );

    // Structure changes take the family's locks exclusively.
    let child = map.fork().unwrap();
    let other = vm.create_map().unwrap();
    let b = other.allocate(0, 4 * PAGE_SIZE, true).unwrap();
    vm_map_copy(&other, &child, b, 4 * PAGE_SIZE, a, false, false).unwrap();
    let snap = vm_read(&other, b, PAGE_SIZE).unwrap();
    assert!(counts()[2] > after[2], "no exclusive lock of the family");

    let mut buf = [0u8; 6];
    other.read_bytes(b, &mut buf).unwrap();
    assert_eq!(&buf, b"family");
    drop(snap);
    for m in [&map, &child, &other] {
        m.verify().unwrap();
    }
    vm.verify().unwrap();
}
