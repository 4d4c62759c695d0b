//! An object's resident pages, by offset, under a lock of their own, and
//! the busy state of a page being filled (Mach's `busy`/`wanted`).
//!
//! Under the graph's exclusive lock the map is reached through `&mut` and
//! its lock is never taken. Under the graph's shared lock (the fault fast
//! path, `Objects::shared`) structure is fixed and only page insertion
//! happens, serialised per object by this lock:
//!
//! - A fault that fills a page first *claims* its offset: a busy slot with
//!   the frame goes in, so a second fault on the page waits for it instead
//!   of filling it twice. The filler zeroes the frame, enters the
//!   translation, then *publishes* it (clears busy) — or, when the
//!   translation cannot be entered, *withdraws* it.
//!
//! Invariants:
//! - A busy slot exists only while its filler runs under the graph's shared
//!   lock: the exclusive lock never sees one.
//! - Only the claimer publishes or withdraws its slot; a busy page is read
//!   by nobody (lookups wait until it is published or gone).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use machvm_base::PhysAddr;

use machvm_base::sync::Locks;
use machvm_base::sync::model::{Mutex, wait};

/// Bit 0 of a slot: the page is busy (being filled). Frames are page
/// aligned, so the bit is free.
const BUSY: u64 = 1;

/// What a lookup found at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// No page.
    Absent,
    /// A page being filled: wait and look again.
    Busy,
    /// A resident page.
    Present(PhysAddr),
}

/// The resident pages of one object.
pub(crate) struct PageMap<L: Locks>(Mutex<L, BTreeMap<u64, u64>>);

impl<L: Locks> Default for PageMap<L> {
    fn default() -> Self {
        PageMap(Mutex::default())
    }
}

impl<L: Locks> PageMap<L> {
    /// A map holding `pages`.
    pub(crate) fn from_pages(pages: BTreeMap<u64, PhysAddr>) -> PageMap<L> {
        PageMap(Mutex::new(
            pages.into_iter().map(|(k, pa)| (k, pa.as_u64())).collect(),
        ))
    }

    /// What is at `off`.
    pub(crate) fn probe(&self, off: u64) -> Probe {
        match self.0.lock().get(&off) {
            None => Probe::Absent,
            Some(&s) if s & BUSY != 0 => Probe::Busy,
            Some(&s) => Probe::Present(PhysAddr::new(s)),
        }
    }

    /// The page at `off` (the exclusive lock's view: nothing is busy).
    pub(crate) fn get(&self, off: u64) -> Option<PhysAddr> {
        match self.probe(off) {
            Probe::Present(pa) => Some(pa),
            Probe::Absent | Probe::Busy => None,
        }
    }

    /// Whether a page is at `off`.
    pub(crate) fn contains(&self, off: u64) -> bool {
        self.0.lock().contains_key(&off)
    }

    /// Number of pages at offsets in `[lo, hi)`.
    pub(crate) fn count(&self, lo: u64, hi: u64) -> u64 {
        self.0.lock().range(lo..hi).count() as u64
    }

    /// The pages at offsets in `[lo, hi)`, in order.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> Vec<(u64, PhysAddr)> {
        let m = self.0.lock();
        m.range(lo..hi)
            .map(|(&k, &s)| (k, PhysAddr::new(s & !BUSY)))
            .collect()
    }

    /// Every page, in order.
    pub(crate) fn all(&self) -> Vec<(u64, PhysAddr)> {
        self.range(0, u64::MAX)
    }

    /// Number of pages.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// True when no page is resident.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// Inserts a resident page (exclusive lock).
    pub(crate) fn insert(&mut self, off: u64, pa: PhysAddr) {
        self.0.get_mut().insert(off, pa.as_u64());
    }

    /// Inserts resident pages, in ascending offset order (exclusive
    /// lock): into an empty map in one bulk build, not a search each.
    pub(crate) fn insert_sorted(&mut self, pages: Vec<(u64, PhysAddr)>) {
        let m = self.0.get_mut();
        let pages = pages.into_iter().map(|(k, pa)| (k, pa.as_u64()));
        if m.is_empty() {
            *m = pages.collect();
        } else {
            m.extend(pages);
        }
    }

    /// Removes the page at `off` (exclusive lock).
    pub(crate) fn remove(&mut self, off: u64) -> Option<PhysAddr> {
        self.0.get_mut().remove(&off).map(PhysAddr::new)
    }

    /// Takes every page out (exclusive lock).
    pub(crate) fn take_all(&mut self) -> BTreeMap<u64, PhysAddr> {
        core::mem::take(self.0.get_mut())
            .into_iter()
            .map(|(k, s)| (k, PhysAddr::new(s)))
            .collect()
    }

    /// Claims `off` for a fill with frame `pa` (shared lock): a busy slot
    /// goes in if nothing is there (`Ok`); otherwise what is there.
    pub(crate) fn claim(&self, off: u64, pa: PhysAddr) -> Result<(), Probe> {
        let mut m = self.0.lock();
        match m.get(&off) {
            None => {
                m.insert(off, pa.as_u64() | BUSY);
                Ok(())
            }
            Some(&s) if s & BUSY != 0 => Err(Probe::Busy),
            Some(&s) => Err(Probe::Present(PhysAddr::new(s))),
        }
    }

    /// What is at `off` once no fill of it is in flight: waits for a busy
    /// page's filler to publish or withdraw it.
    pub(crate) fn settled(&self, off: u64) -> Option<PhysAddr> {
        loop {
            match self.probe(off) {
                Probe::Absent => return None,
                Probe::Present(pa) => return Some(pa),
                Probe::Busy => wait::<L>(),
            }
        }
    }

    /// Runs `f` with nothing at `off` and no fill of it able to start until
    /// `f` returns (a read mapping the zero frame there: a store's claim
    /// waits, then replaces that translation). `None`, `f` not run, when
    /// something is at `off`.
    pub(crate) fn while_absent<R>(&self, off: u64, f: impl FnOnce() -> R) -> Option<R> {
        let m = self.0.lock();
        if m.contains_key(&off) {
            return None;
        }
        let r = f();
        drop(m);
        Some(r)
    }

    /// Publishes the page claimed at `off`: it is resident now.
    pub(crate) fn publish(&self, off: u64) {
        let mut m = self.0.lock();
        let s = m.get_mut(&off).expect("published page not claimed");
        debug_assert!(*s & BUSY != 0, "published page not busy");
        *s &= !BUSY;
    }

    /// Withdraws the page claimed at `off`; returns its frame.
    pub(crate) fn withdraw(&self, off: u64) -> PhysAddr {
        let s = self
            .0
            .lock()
            .remove(&off)
            .expect("withdrawn page not claimed");
        debug_assert!(s & BUSY != 0, "withdrawn page not busy");
        PhysAddr::new(s & !BUSY)
    }

    /// Whether any slot is busy (what `verify` checks never holds).
    pub(crate) fn any_busy(&self) -> bool {
        self.0.lock().values().any(|s| s & BUSY != 0)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The busy/wait protocol under every interleaving loom finds: two
    //! faults on one page insert exactly one frame, and neither uses a
    //! page before it is published.
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use machvm_base::sync::SpinLocks;

    /// A fault on `off` as the shared path runs it: settled lookup, claim
    /// with its own frame, fill, then publish (or withdraw when `fail`).
    /// Returns the frame it ended up using, and whether it filled one.
    fn fault(
        m: &PageMap<SpinLocks>,
        off: u64,
        mine: PhysAddr,
        fill: &AtomicU64,
        fail: bool,
    ) -> Option<PhysAddr> {
        loop {
            if let Some(pa) = m.settled(off) {
                // A published page was filled completely.
                assert_eq!(
                    fill.load(SeqCst),
                    pa.as_u64(),
                    "page used before it was filled"
                );
                return Some(pa);
            }
            match m.claim(off, mine) {
                Ok(()) => {
                    fill.store(mine.as_u64(), SeqCst);
                    if fail {
                        fill.store(0, SeqCst);
                        assert_eq!(m.withdraw(off), mine);
                        return None;
                    }
                    m.publish(off);
                    return Some(mine);
                }
                Err(Probe::Busy) => wait::<SpinLocks>(),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn two_faults_on_one_page_fill_it_once() {
        loom::model(|| {
            let m = Arc::new(PageMap::<SpinLocks>::default());
            let fill = Arc::new(AtomicU64::new(0));
            let (m2, f2) = (m.clone(), fill.clone());
            let t = loom::thread::spawn(move || fault(&m2, 7, PhysAddr::new(0x2000), &f2, false));
            let a = fault(&m, 7, PhysAddr::new(0x1000), &fill, false);
            let b = t.join().unwrap();
            assert_eq!(a, b, "both faults use one page");
            assert_eq!(m.all(), [(7, a.unwrap())]);
            assert!(!m.any_busy());
        });
    }

    #[test]
    fn a_withdrawn_fill_leaves_the_page_to_the_waiter() {
        loom::model(|| {
            let m = Arc::new(PageMap::<SpinLocks>::default());
            let fill = Arc::new(AtomicU64::new(0));
            let (m2, f2) = (m.clone(), fill.clone());
            let t = loom::thread::spawn(move || fault(&m2, 7, PhysAddr::new(0x2000), &f2, true));
            let a = fault(&m, 7, PhysAddr::new(0x1000), &fill, false);
            let b = t.join().unwrap();
            // The failing fault either withdrew before the other claimed,
            // or found the other's page published.
            assert_eq!(a, Some(PhysAddr::new(0x1000)));
            assert!(b.is_none() || b == a);
            assert_eq!(m.all(), [(7, PhysAddr::new(0x1000))]);
            assert!(!m.any_busy());
        });
    }
}
