//! An object's present pages (resident, or paged out: [`PageAt`]), by
//! offset, under a lock of their own, and the busy state of a page being
//! filled (Mach's `busy`/`wanted`).
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
//! An object of several 2 MiB chunks keeps its pages in shards by chunk,
//! a lock each (`PageMap::Sharded`): two threads faulting different parts
//! of one large entry seldom take one lock. Every rule below holds per
//! shard, and an offset always lives in its chunk's shard.
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

use crate::PageAt;

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
    /// A present page.
    Present(PageAt),
}

/// Offsets whose pages share a shard: 512 pages (2 MiB, the span of one
/// leaf page table, as Linux splits its page-table locks).
const CHUNK_SHIFT: u32 = 9;
/// Shards of the largest objects.
const MAX_SHARDS: usize = 8;

/// Offset → page word ([`PageAt::encode`], with [`BUSY`]), one shard's.
type Slots = BTreeMap<u64, u64>;

/// One shard of a large object's pages, alone on its cache lines.
#[repr(align(128))]
pub(crate) struct Shard<L: Locks>(Mutex<L, Slots>);

/// The resident pages of one object: in one map, or for an object of
/// several 2 MiB chunks in shards by chunk (each under its own lock), so
/// that faults in different parts of one large object rarely meet. A
/// small object pays for no shard.
pub(crate) enum PageMap<L: Locks> {
    /// A small object's pages.
    One(Mutex<L, Slots>),
    /// A large object's, by [`shard_index`](Self::shard_index): a power of
    /// two of shards.
    Sharded(Box<[Shard<L>]>),
}

impl<L: Locks> PageMap<L> {
    /// An empty map for an object of `size` pages.
    pub(crate) fn for_size(size: u64) -> PageMap<L> {
        let chunks = (size >> CHUNK_SHIFT).clamp(1, MAX_SHARDS as u64) as usize;
        match chunks.next_power_of_two().min(MAX_SHARDS) {
            1 => PageMap::One(Mutex::new(Slots::new())),
            n => PageMap::Sharded((0..n).map(|_| Shard(Mutex::new(Slots::new()))).collect()),
        }
    }

    /// A map holding `pages`, for an object of `size` pages.
    pub(crate) fn from_pages(size: u64, pages: BTreeMap<u64, PageAt>) -> PageMap<L> {
        let mut m = PageMap::for_size(size);
        let pages = pages.into_iter().map(|(k, p)| (k, p.encode()));
        match &mut m {
            PageMap::One(one) => *one.get_mut() = pages.collect(),
            PageMap::Sharded(_) => {
                for (k, s) in pages {
                    m.slots_mut(k).insert(k, s);
                }
            }
        }
        m
    }

    /// The shard of chunk `chunk` among `n` (a power of two): a hash
    /// (xorshift, then Fibonacci's multiply, top bits), so that two faults
    /// a fixed number of chunks apart (two threads sweeping the halves of
    /// one entry) seldom meet in one shard, whatever the distance.
    #[inline]
    fn shard_index(chunk: u64, n: usize) -> usize {
        let mixed = (chunk ^ (chunk >> 3)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> (64 - n.trailing_zeros())) as usize
    }

    /// The lock of the pages at `off`.
    #[inline]
    fn shard_of(&self, off: u64) -> &Mutex<L, Slots> {
        match self {
            PageMap::One(one) => one,
            PageMap::Sharded(s) => &s[Self::shard_index(off >> CHUNK_SHIFT, s.len())].0,
        }
    }

    /// The locks of the pages at offsets in `[lo, hi)`: the shards of the
    /// chunks the range covers (every shard for a long one).
    fn locks(&self, lo: u64, hi: u64) -> impl Iterator<Item = &Mutex<L, Slots>> {
        let (one, shards): (Option<&Mutex<L, Slots>>, &[Shard<L>]) = match self {
            PageMap::One(one) => (Some(one), &[]),
            PageMap::Sharded(s) => (None, s),
        };
        let n = shards.len();
        let mut mask = 0u64;
        if hi > lo && n > 0 {
            let (first, last) = (lo >> CHUNK_SHIFT, (hi - 1) >> CHUNK_SHIFT);
            if last - first >= n as u64 {
                mask = (1 << n) - 1;
            } else {
                for c in first..=last {
                    mask |= 1 << Self::shard_index(c, n);
                }
            }
        }
        let shards = shards.iter().enumerate();
        let chosen = shards.filter(move |(i, _)| mask & (1 << i) != 0);
        one.into_iter().chain(chosen.map(|(_, s)| &s.0))
    }

    /// Every lock.
    fn all_locks(&self) -> impl Iterator<Item = &Mutex<L, Slots>> {
        self.locks(0, u64::MAX)
    }

    /// The slots of `off` for the exclusive lock's holder.
    fn slots_mut(&mut self, off: u64) -> &mut Slots {
        match self {
            PageMap::One(one) => one.get_mut(),
            PageMap::Sharded(s) => {
                let i = Self::shard_index(off >> CHUNK_SHIFT, s.len());
                s[i].0.get_mut()
            }
        }
    }

    /// What is at `off`.
    pub(crate) fn probe(&self, off: u64) -> Probe {
        match self.shard_of(off).lock().get(&off) {
            None => Probe::Absent,
            Some(&s) if s & BUSY != 0 => Probe::Busy,
            Some(&s) => Probe::Present(PageAt::decode(s)),
        }
    }

    /// The page at `off` (the exclusive lock's view: nothing is busy).
    pub(crate) fn get(&self, off: u64) -> Option<PageAt> {
        match self.probe(off) {
            Probe::Present(pa) => Some(pa),
            Probe::Absent | Probe::Busy => None,
        }
    }

    /// Whether a page is present at `off` (resident or paged out).
    pub(crate) fn contains(&self, off: u64) -> bool {
        self.shard_of(off).lock().contains_key(&off)
    }

    /// Number of pages present at offsets in `[lo, hi)`.
    pub(crate) fn count(&self, lo: u64, hi: u64) -> u64 {
        let n = self.locks(lo, hi).map(|l| l.lock().range(lo..hi).count());
        n.sum::<usize>() as u64
    }

    /// Number of pages resident in frames at offsets in `[lo, hi)`.
    pub(crate) fn count_resident(&self, lo: u64, hi: u64) -> u64 {
        let frame = |s: &u64| matches!(PageAt::decode(*s), PageAt::Frame(_));
        let n = self
            .locks(lo, hi)
            .map(|l| l.lock().range(lo..hi).filter(|(_, s)| frame(s)).count());
        n.sum::<usize>() as u64
    }

    /// The pages at offsets in `[lo, hi)`, in order.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> Vec<(u64, PageAt)> {
        if hi <= lo {
            return Vec::new();
        }
        let mut v = Vec::new();
        for l in self.locks(lo, hi) {
            let m = l.lock();
            v.extend(m.range(lo..hi).map(|(&k, &s)| (k, PageAt::decode(s))));
        }
        if let PageMap::Sharded(_) = self {
            v.sort_unstable_by_key(|&(k, _)| k); // offsets are unique
        }
        v
    }

    /// Every page, in order.
    pub(crate) fn all(&self) -> Vec<(u64, PageAt)> {
        self.range(0, u64::MAX)
    }

    /// Number of pages present.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.all_locks().map(|l| l.lock().len()).sum()
    }

    /// True when no page is present.
    pub(crate) fn is_empty(&self) -> bool {
        self.all_locks().all(|l| l.lock().is_empty())
    }

    /// Puts a page at `off` (exclusive lock); returns what was there.
    pub(crate) fn insert(&mut self, off: u64, page: PageAt) -> Option<PageAt> {
        let old = self.slots_mut(off).insert(off, page.encode());
        old.map(PageAt::decode)
    }

    /// Inserts resident pages, in ascending offset order (exclusive
    /// lock), replacing what was there: into an empty map in one bulk
    /// build, not a search each.
    pub(crate) fn insert_sorted(&mut self, pages: Vec<(u64, PhysAddr)>) {
        let pages = pages.into_iter().map(|(k, pa)| (k, pa.as_u64()));
        match self {
            PageMap::One(one) => {
                let m = one.get_mut();
                match m.is_empty() {
                    true => *m = pages.collect(),
                    false => m.extend(pages),
                }
            }
            PageMap::Sharded(_) => {
                for (k, s) in pages {
                    self.slots_mut(k).insert(k, s);
                }
            }
        }
    }

    /// Removes the page at `off` (exclusive lock).
    pub(crate) fn remove(&mut self, off: u64) -> Option<PageAt> {
        self.slots_mut(off).remove(&off).map(PageAt::decode)
    }

    /// Takes every page out (exclusive lock), in no particular order.
    pub(crate) fn take_all(&mut self) -> Vec<(u64, PageAt)> {
        let maps: Vec<Slots> = match self {
            PageMap::One(one) => alloc::vec![core::mem::take(one.get_mut())],
            PageMap::Sharded(s) => s
                .iter_mut()
                .map(|s| core::mem::take(s.0.get_mut()))
                .collect(),
        };
        maps.into_iter()
            .flatten()
            .map(|(k, s)| (k, PageAt::decode(s)))
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
            Some(&s) => Err(Probe::Present(PageAt::decode(s))),
        }
    }

    /// What is at `off` once no fill of it is in flight: waits for a busy
    /// page's filler to publish or withdraw it.
    pub(crate) fn settled(&self, off: u64) -> Option<PageAt> {
        loop {
            match self.probe(off) {
                Probe::Absent => return None,
                Probe::Present(p) => return Some(p),
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

    /// An offset kept in a shard other than its chunk's (what `verify`
    /// checks never exists): a lookup would miss that page.
    pub(crate) fn misplaced(&self) -> Option<u64> {
        let PageMap::Sharded(s) = self else {
            return None;
        };
        s.iter().enumerate().find_map(|(i, sh)| {
            let m = sh.0.lock();
            let wrong = |&k: &u64| Self::shard_index(k >> CHUNK_SHIFT, s.len()) != i;
            m.keys().copied().find(|k| wrong(k))
        })
    }

    /// Whether any slot is busy (what `verify` checks never holds).
    pub(crate) fn any_busy(&self) -> bool {
        self.all_locks()
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

    /// Shards of a map (0: one map).
    fn shards(m: &PageMap<SpinLocks>) -> usize {
        match m {
            PageMap::One(_) => 0,
            PageMap::Sharded(s) => s.len(),
        }
    }

    #[test]
    fn small_objects_keep_one_map_and_large_ones_shards() {
        assert_eq!(shards(&PageMap::for_size(512)), 0);
        assert_eq!(shards(&PageMap::for_size(1024)), 2);
        assert_eq!(shards(&PageMap::for_size(3 * 512)), 4);
        assert_eq!(shards(&PageMap::for_size(1 << 30)), MAX_SHARDS);
    }

    #[test]
    fn neighbouring_chunks_spread_and_sweeps_apart_seldom_meet() {
        let i = |c| PageMap::<SpinLocks>::shard_index(c, MAX_SHARDS);
        for block in 0..64u64 {
            let mut seen = 0u32;
            for c in block * 8..block * 8 + 8 {
                seen |= 1 << i(c);
            }
            assert!(seen.count_ones() >= 5, "block {block}: shards {seen:#b}");
        }
        // Two threads sweeping the halves of one entry, 1..64 chunks
        // apart: under a quarter of their steps share a shard (a fold of
        // the chunk's bits met in a third at some distances, and
        // Fibonacci hashing alone in nearly all at 55).
        for apart in 1..64u64 {
            let meet = (0..256u64).filter(|&c| i(c) == i(c + apart)).count();
            assert!(meet < 64, "{apart} chunks apart: {meet} of 256 steps meet");
        }
        for n in [2, 4, 8] {
            let all = (0..64).fold(0u32, |m, c| {
                m | 1 << PageMap::<SpinLocks>::shard_index(c, n)
            });
            assert_eq!(all, (1 << n) - 1, "{n} shards all used");
        }
    }

    #[test]
    fn a_sharded_map_answers_as_one_ordered_map() {
        for size in [100, 4096, 1 << 20] {
            let mut m = PageMap::<SpinLocks>::for_size(size);
            let mut model = BTreeMap::new();
            for off in spread(size) {
                let pa = PageAt::Frame(PhysAddr::new((off + 1) << 12));
                m.insert(off, pa);
                model.insert(off, pa);
            }
            let third = size / 3;
            for (lo, hi) in [(third, 2 * third + 5), (700, 900), (500, 1100), (9, 9)] {
                let want: Vec<_> = model.range(lo..hi).map(|(&k, &v)| (k, v)).collect();
                assert_eq!(m.range(lo, hi), want, "size {size}: [{lo}, {hi}) in order");
                assert_eq!(m.count(lo, hi), want.len() as u64);
            }
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
    fn a_page_in_another_chunks_shard_is_found_misplaced() {
        let mut m = PageMap::<SpinLocks>::for_size(4096);
        for off in (0..4096).step_by(97) {
            m.insert(off, PageAt::Frame(PhysAddr::new(0x1000)));
        }
        assert_eq!(m.misplaced(), None);
        let PageMap::Sharded(s) = &mut m else {
            unreachable!("4,096 pages are sharded")
        };
        let home = PageMap::<SpinLocks>::shard_index(0, s.len());
        s[(home + 1) % s.len()].0.get_mut().insert(0, 0x2000);
        assert_eq!(m.misplaced(), Some(0));
    }

    #[test]
    fn busy_slots_are_seen_in_every_shard() {
        let m = PageMap::<SpinLocks>::for_size(4096);
        let offs = (0..64).map(|c| c * 512 + c);
        let used = offs.clone().fold(0u32, |u, off| {
            u | 1 << PageMap::<SpinLocks>::shard_index(off >> CHUNK_SHIFT, MAX_SHARDS)
        });
        assert_eq!(used, (1 << MAX_SHARDS) - 1, "the offsets reach every shard");
        for off in offs {
            assert_eq!(m.claim(off, PhysAddr::new(0x1000)), Ok(()));
            assert!(m.any_busy());
            assert_eq!(m.probe(off), Probe::Busy);
            m.publish(off);
            assert!(!m.any_busy());
            assert_eq!(
                m.claim(off, PhysAddr::new(0x2000)),
                Err(Probe::Present(PageAt::Frame(PhysAddr::new(0x1000))))
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
            if let Some(PageAt::Frame(pa)) = m.settled(off) {
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

    /// Two faults on one page under loom, the spawned one failing when
    /// `fails` — in one map, and in a large object's shard (page 7 of
    /// chunk 3). `check` sees the map, the offset and the first and the
    /// spawned fault's results; no page is left busy.
    fn race(fails: bool, check: fn(&PageMap<SpinLocks>, u64, Option<PhysAddr>, Option<PhysAddr>)) {
        for (size, off) in [(1, 7), (4096, 3 * 512 + 7)] {
            loom::model(move || {
                let m = Arc::new(PageMap::<SpinLocks>::for_size(size));
                let fill = Arc::new(AtomicU64::new(0));
                let (m2, f2) = (m.clone(), fill.clone());
                let t =
                    loom::thread::spawn(move || fault(&m2, off, PhysAddr::new(0x2000), &f2, fails));
                let a = fault(&m, off, PhysAddr::new(0x1000), &fill, false);
                let b = t.join().unwrap();
                check(&m, off, a, b);
                assert!(!m.any_busy());
            });
        }
    }

    #[test]
    fn two_faults_on_one_page_fill_it_once() {
        race(false, |m, off, a, b| {
            assert_eq!(a, b, "both faults use one page");
            assert_eq!(m.all(), [(off, PageAt::Frame(a.unwrap()))]);
        });
    }

    #[test]
    fn a_withdrawn_fill_leaves_the_page_to_the_waiter() {
        race(true, |m, off, a, b| {
            // The failing fault either withdrew before the other claimed,
            // or found the other's page published.
            assert_eq!(a, Some(PhysAddr::new(0x1000)));
            assert!(b.is_none() || b == a);
            assert_eq!(m.all(), [(off, PageAt::Frame(PhysAddr::new(0x1000)))]);
        });
    }
}
