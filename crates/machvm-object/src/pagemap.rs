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

use alloc::boxed::Box;
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

/// Offsets whose pages share a shard: 512 pages (2 MiB, the span of one
/// leaf page table, as Linux splits its page-table locks).
const CHUNK_SHIFT: u32 = 9;
/// Shards of the largest objects.
const MAX_SHARDS: usize = 8;

/// Offset → frame (with [`BUSY`]), one shard's.
type Slots = BTreeMap<u64, u64>;

/// One shard of a large object's pages, alone on its cache lines.
#[repr(align(128))]
struct Shard<L: Locks>(Mutex<L, Slots>);

/// The resident pages of one object: in one map, or for an object of
/// several 2 MiB chunks in shards by chunk (each under its own lock), so
/// that faults in different parts of one large object rarely meet. A
/// small object pays for no shard.
pub(crate) struct PageMap<L: Locks> {
    /// The pages, when `shards` is empty.
    one: Mutex<L, Slots>,
    /// The pages by [`shard_of`](Self::shard_of), or none.
    shards: Box<[Shard<L>]>,
}

impl<L: Locks> PageMap<L> {
    /// An empty map for an object of `size` pages.
    pub(crate) fn for_size(size: u64) -> PageMap<L> {
        let chunks = (size >> CHUNK_SHIFT).clamp(1, MAX_SHARDS as u64) as usize;
        let n = if chunks > 1 {
            chunks.next_power_of_two().min(MAX_SHARDS)
        } else {
            0
        };
        PageMap {
            one: Mutex::new(Slots::new()),
            shards: (0..n).map(|_| Shard(Mutex::new(Slots::new()))).collect(),
        }
    }

    /// A map holding `pages`, for an object of `size` pages.
    pub(crate) fn from_pages(size: u64, pages: BTreeMap<u64, PhysAddr>) -> PageMap<L> {
        let mut m = PageMap::for_size(size);
        for (k, pa) in pages {
            m.insert(k, pa);
        }
        m
    }

    /// The shard of the pages at `off` (with shards). Chunks are hashed
    /// (Fibonacci): two faults a fixed distance apart in one object do not
    /// land in one shard every time.
    #[inline]
    fn shard_index(&self, off: u64) -> usize {
        let h = (off >> CHUNK_SHIFT).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        h as usize % self.shards.len()
    }

    /// The lock of the pages at `off`.
    #[inline]
    fn shard_of(&self, off: u64) -> &Mutex<L, Slots> {
        match self.shards.is_empty() {
            true => &self.one,
            false => &self.shards[self.shard_index(off)].0,
        }
    }

    /// Every lock, for what spans the whole map.
    fn locks(&self) -> impl Iterator<Item = &Mutex<L, Slots>> {
        let one = self.shards.is_empty().then_some(&self.one);
        one.into_iter().chain(self.shards.iter().map(|s| &s.0))
    }

    /// The slots of `off` for the exclusive lock's holder.
    fn slots_mut(&mut self, off: u64) -> &mut Slots {
        match self.shards.is_empty() {
            true => self.one.get_mut(),
            false => {
                let i = self.shard_index(off);
                self.shards[i].0.get_mut()
            }
        }
    }

    /// What is at `off`.
    pub(crate) fn probe(&self, off: u64) -> Probe {
        match self.shard_of(off).lock().get(&off) {
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
        self.shard_of(off).lock().contains_key(&off)
    }

    /// Number of pages at offsets in `[lo, hi)`.
    pub(crate) fn count(&self, lo: u64, hi: u64) -> u64 {
        self.locks()
            .map(|l| l.lock().range(lo..hi).count() as u64)
            .sum()
    }

    /// The pages at offsets in `[lo, hi)`, in order.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> Vec<(u64, PhysAddr)> {
        let mut v = Vec::new();
        for l in self.locks() {
            let m = l.lock();
            v.extend(
                m.range(lo..hi)
                    .map(|(&k, &s)| (k, PhysAddr::new(s & !BUSY))),
            );
        }
        if !self.shards.is_empty() {
            // Each shard's pages come as sorted runs (a chunk each): a
            // stable sort merges runs.
            v.sort_by_key(|&(k, _)| k);
        }
        v
    }

    /// Every page, in order.
    pub(crate) fn all(&self) -> Vec<(u64, PhysAddr)> {
        self.range(0, u64::MAX)
    }

    /// Number of pages.
    pub(crate) fn len(&self) -> usize {
        self.locks().map(|l| l.lock().len()).sum()
    }

    /// True when no page is resident.
    pub(crate) fn is_empty(&self) -> bool {
        self.locks().all(|l| l.lock().is_empty())
    }

    /// Inserts a resident page (exclusive lock).
    pub(crate) fn insert(&mut self, off: u64, pa: PhysAddr) {
        self.slots_mut(off).insert(off, pa.as_u64());
    }

    /// Inserts resident pages, in ascending offset order (exclusive
    /// lock): into an empty map in one bulk build, not a search each.
    pub(crate) fn insert_sorted(&mut self, pages: Vec<(u64, PhysAddr)>) {
        if !self.shards.is_empty() {
            for (k, pa) in pages {
                self.insert(k, pa);
            }
            return;
        }
        let m = self.one.get_mut();
        let pages = pages.into_iter().map(|(k, pa)| (k, pa.as_u64()));
        if m.is_empty() {
            *m = pages.collect();
        } else {
            m.extend(pages);
        }
    }

    /// Removes the page at `off` (exclusive lock).
    pub(crate) fn remove(&mut self, off: u64) -> Option<PhysAddr> {
        self.slots_mut(off).remove(&off).map(PhysAddr::new)
    }

    /// Takes every page out (exclusive lock), in no particular order.
    pub(crate) fn take_all(&mut self) -> Vec<(u64, PhysAddr)> {
        let one = core::iter::once(self.one.get_mut());
        let maps = one.chain(self.shards.iter_mut().map(|s| s.0.get_mut()));
        maps.flat_map(core::mem::take)
            .map(|(k, s)| (k, PhysAddr::new(s)))
            .collect()
    }

    /// Claims `off` for a fill with frame `pa` (shared lock): a busy slot
    /// goes in if nothing is there (`Ok`); otherwise what is there.
    pub(crate) fn claim(&self, off: u64, pa: PhysAddr) -> Result<(), Probe> {
        let mut m = self.shard_of(off).lock();
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
        let m = self.shard_of(off).lock();
        if m.contains_key(&off) {
            return None;
        }
        let r = f();
        drop(m);
        Some(r)
    }

    /// Publishes the page claimed at `off`: it is resident now.
    pub(crate) fn publish(&self, off: u64) {
        let mut m = self.shard_of(off).lock();
        let s = m.get_mut(&off).expect("published page not claimed");
        debug_assert!(*s & BUSY != 0, "published page not busy");
        *s &= !BUSY;
    }

    /// Withdraws the page claimed at `off`; returns its frame.
    pub(crate) fn withdraw(&self, off: u64) -> PhysAddr {
        let s = self
            .shard_of(off)
            .lock()
            .remove(&off)
            .expect("withdrawn page not claimed");
        debug_assert!(s & BUSY != 0, "withdrawn page not busy");
        PhysAddr::new(s & !BUSY)
    }

    /// Whether any slot is busy (what `verify` checks never holds).
    pub(crate) fn any_busy(&self) -> bool {
        self.locks()
            .any(|l| l.lock().values().any(|s| s & BUSY != 0))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use machvm_base::sync::SpinLocks;

    /// Pages in every chunk of an object of `size` pages, out of order.
    fn spread(size: u64) -> Vec<u64> {
        let mut offs: Vec<u64> = (0..size).step_by(37).collect();
        offs.reverse();
        offs
    }

    #[test]
    fn small_objects_keep_one_map_and_large_ones_shards() {
        assert!(PageMap::<SpinLocks>::for_size(512).shards.is_empty());
        assert_eq!(PageMap::<SpinLocks>::for_size(1024).shards.len(), 2);
        assert_eq!(PageMap::<SpinLocks>::for_size(3 * 512).shards.len(), 4);
        assert_eq!(
            PageMap::<SpinLocks>::for_size(1 << 30).shards.len(),
            MAX_SHARDS
        );
    }

    #[test]
    fn a_sharded_map_answers_as_one_ordered_map() {
        for size in [100, 4096, 1 << 20] {
            let mut m = PageMap::<SpinLocks>::for_size(size);
            let mut model = BTreeMap::new();
            for off in spread(size) {
                let pa = PhysAddr::new((off + 1) << 12);
                m.insert(off, pa);
                model.insert(off, pa);
            }
            let (lo, hi) = (size / 3, size / 3 * 2 + 5);
            let want: Vec<_> = model.range(lo..hi).map(|(&k, &v)| (k, v)).collect();
            assert_eq!(m.range(lo, hi), want, "size {size}: a range, in order");
            assert_eq!(m.count(lo, hi), want.len() as u64);
            assert_eq!(
                m.all(),
                model.iter().map(|(&k, &v)| (k, v)).collect::<Vec<_>>()
            );
            assert_eq!(m.len(), model.len());
            let gone = *model.keys().nth(1).unwrap();
            assert_eq!(m.remove(gone), model.remove(&gone));
            assert!(!m.contains(gone) && m.get(gone).is_none());
            let copy = PageMap::<SpinLocks>::from_pages(size, model.clone());
            assert_eq!(copy.all(), m.all());
            let mut taken = m.take_all();
            taken.sort_by_key(|&(k, _)| k);
            assert_eq!(taken, model.into_iter().collect::<Vec<_>>());
            assert!(m.is_empty());
        }
    }

    #[test]
    fn busy_slots_are_seen_in_every_shard() {
        let m = PageMap::<SpinLocks>::for_size(4096);
        for off in [5, 600, 1100, 4000] {
            assert_eq!(m.claim(off, PhysAddr::new(0x1000)), Ok(()));
            assert!(m.any_busy());
            assert_eq!(m.probe(off), Probe::Busy);
            m.publish(off);
            assert!(!m.any_busy());
            assert_eq!(
                m.claim(off, PhysAddr::new(0x2000)),
                Err(Probe::Present(PhysAddr::new(0x1000)))
            );
        }
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
            let m = Arc::new(PageMap::<SpinLocks>::for_size(1));
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
            let m = Arc::new(PageMap::<SpinLocks>::for_size(1));
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
