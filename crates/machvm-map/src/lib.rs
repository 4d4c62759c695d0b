//! Address maps: the machine-independent description of a task's address
//! space (Mach's `vm_map`), its page-fault handler and `fork`.
//!
//! A map is an ordered set of entries, each a page-aligned range with an
//! object window, protection, maximum protection, inheritance and
//! copy-on-write state. The pmap beneath holds the hardware translations,
//! which are only a cache of what the entries and objects say.
//!
//! Invariants (checked by [`VmMap::verify`] after every mutation in tests):
//! - Entries are sorted, non-overlapping, page-aligned, non-empty and inside
//!   `[USER_MIN, USER_MAX)`; `protection ⊆ max_protection`.
//! - An entry's object window lies inside its object, and unless the entry
//!   needs a copy, no shadow stands on that window (a backing object is
//!   never written directly: copy-on-write rests on it).
//! - Every translation in the map's pmap lies inside an entry, maps the page
//!   the entry's object chain holds at that offset, and allows at most the
//!   entry's protection.
//! - No writable translation maps a page that is still shared
//!   copy-on-write: the page must be in the entry's top object and the entry
//!   must not need a copy.
//!
//! Locking: a map's lock is taken before any object's. Two maps are locked in
//! the order of their ids (the copy layer does this); a map never waits on
//! its own lock. The fault path allocates nothing on the heap except the new
//! page's index node.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod copy;
mod fault;
mod fork;
mod ops;
#[cfg(test)]
mod tests;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::{
    KernError, PAGE_SHIFT, PAGE_SIZE, USER_MAX, USER_MIN, VaRange, VirtAddr, VmInherit, VmProt,
};
use machvm_object::{VmContext, VmObject};
use machvm_pmap::{PmapId, effective_prot};

pub use copy::{SMALL_COPY_BYTES, VmMapCopy, vm_copy, vm_map_copy, vm_read, vm_write};
pub use machvm_pmap::Access;

/// One map entry (Mach's `vm_map_entry`); its start is the key it is
/// stored under.
#[derive(Clone)]
pub struct Entry {
    end: u64,
    /// `None` until first touched: anonymous zero-fill memory, no object yet.
    object: Option<Arc<VmObject>>,
    /// Window start in the object, in pages.
    offset: u64,
    protection: VmProt,
    max_protection: VmProt,
    inheritance: VmInherit,
    /// Copy-on-write pending: the object may be seen by another map, so the
    /// first write must put a shadow on top first.
    needs_copy: bool,
    wired_count: u16,
}

impl Entry {
    fn new_anon(end: u64) -> Entry {
        Entry {
            end,
            object: None,
            offset: 0,
            protection: VmProt::DEFAULT,
            max_protection: VmProt::ALL,
            inheritance: VmInherit::Copy,
            needs_copy: false,
            wired_count: 0,
        }
    }

    fn pages(&self, start: u64) -> u64 {
        (self.end - start) >> PAGE_SHIFT
    }
}

/// What `vm_region` reports about one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Current protection.
    pub protection: VmProt,
    /// Maximum protection.
    pub max_protection: VmProt,
    /// Inheritance at `fork`.
    pub inheritance: VmInherit,
    /// Some page is reachable from another map without copy-on-write.
    pub shared: bool,
    /// Pages of the region resident anywhere in its object chain.
    pub resident_pages: u64,
    /// Objects in the longest chain of the region (0: never touched).
    pub shadow_depth: u32,
    /// Copy-on-write is pending on some part of the region.
    pub needs_copy: bool,
}

pub(crate) struct MapInner {
    pub(crate) entries: BTreeMap<u64, Entry>,
    /// Lookup acceleration (`vm_map_lookup_entry`'s hint, and more).
    index: LookupIndex,
    /// `[USER_MIN, first_free)` is allocated without a hole and
    /// `first_free` is not (Mach's `first_free`): where first-fit starts.
    first_free: u64,
}

struct MapShared {
    id: u64,
    ctx: Arc<VmContext>,
    pmap: PmapId,
    inner: spin::Mutex<MapInner>,
}

static NEXT_MAP_ID: AtomicU64 = AtomicU64::new(1);

/// A task's address map. A cheap handle: `Clone` gives another handle to the
/// same map, which goes away with its last handle.
///
/// ```
/// use machvm_map::VmMap;
/// # let ctx = machvm_map::hosted_context(1 << 20);
/// let map = VmMap::new(&ctx).unwrap();
/// let a = map.allocate(0, 3 * 4096, true).unwrap();
/// map.write_bytes(a + 10, b"mach").unwrap();
/// let mut buf = [0u8; 4];
/// map.read_bytes(a + 10, &mut buf).unwrap();
/// assert_eq!(&buf, b"mach");
/// ```
#[derive(Clone)]
pub struct VmMap(Arc<MapShared>);

impl VmMap {
    /// An empty map with its own pmap.
    pub fn new(ctx: &Arc<VmContext>) -> Result<VmMap, KernError> {
        let pmap = ctx.pmap().create()?;
        Ok(VmMap(Arc::new(MapShared {
            id: NEXT_MAP_ID.fetch_add(1, Relaxed),
            ctx: ctx.clone(),
            pmap,
            inner: spin::Mutex::new(MapInner {
                entries: BTreeMap::new(),
                index: LookupIndex::default(),
                first_free: USER_MIN,
            }),
        })))
    }

    /// Unique id; maps are locked in increasing id order.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The map's pmap.
    pub fn pmap(&self) -> PmapId {
        self.0.pmap
    }

    /// The VM context (frames, pmap module, counters).
    pub fn context(&self) -> &Arc<VmContext> {
        &self.0.ctx
    }

    /// True when both handles name the same map.
    pub fn same_map(&self, other: &VmMap) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Number of entries.
    pub fn entry_count(&self) -> usize {
        self.0.inner.lock().entries.len()
    }

    /// Checks every invariant in the module documentation.
    pub fn verify(&self) -> Result<(), String> {
        let m = self.0.inner.lock();
        let mut prev_end = USER_MIN;
        for (&start, e) in &m.entries {
            if start % PAGE_SIZE != 0 || e.end % PAGE_SIZE != 0 || start >= e.end {
                return Err(format!("entry [{start:#x}, {:#x}) malformed", e.end));
            }
            if start < prev_end || e.end > USER_MAX {
                return Err(format!(
                    "entry [{start:#x}, {:#x}) overlaps or leaves the map",
                    e.end
                ));
            }
            prev_end = e.end;
            if !e.max_protection.contains(e.protection) {
                return Err(format!("entry {start:#x}: protection above maximum"));
            }
            if let Some(o) = &e.object {
                let window = (e.offset, e.offset + e.pages(start));
                if window.1 > o.size() {
                    return Err(format!("entry {start:#x}: window past its object"));
                }
                // Copy-on-write rests on this: memory a shadow stands on is
                // never written directly, only copied up.
                if !e.needs_copy
                    && o.shadowed_windows()
                        .iter()
                        .any(|&(s, t)| s < window.1 && window.0 < t)
                {
                    return Err(format!(
                        "entry {start:#x} writes an object window a shadow stands on"
                    ));
                }
                o.verify()?;
            }
        }
        let all = VaRange::new(VirtAddr(0), VirtAddr(USER_MAX)).unwrap_or_default();
        let pm = self.0.ctx.pmap();
        let maps = pm.mappings(self.0.pmap, all);
        if maps.len() as u64 != pm.resident_count(self.0.pmap) {
            return Err("pmap resident count disagrees with its translations".into());
        }
        for (va, t) in maps {
            let Some((&start, e)) = m
                .entries
                .range(..=va.0)
                .next_back()
                .filter(|(_, e)| va.0 < e.end)
            else {
                return Err(format!("translation of {va:?} outside every entry"));
            };
            if !effective_prot(e.protection).contains(t.prot) {
                return Err(format!(
                    "translation of {va:?} allows {} above entry's {}",
                    t.prot, e.protection
                ));
            }
            let Some(o) = &e.object else {
                return Err(format!("translation of {va:?} in an entry without object"));
            };
            let off = e.offset + ((va.0 - start) >> PAGE_SHIFT);
            let Some(found) = o.lookup(off) else {
                return Err(format!(
                    "translation of {va:?} to {:?}, but no page in the chain",
                    t.pa
                ));
            };
            if found.pa != t.pa {
                return Err(format!(
                    "translation of {va:?} to {:?}, chain holds {:?}",
                    t.pa, found.pa
                ));
            }
            if t.prot.contains(VmProt::WRITE) && (found.depth != 0 || e.needs_copy) {
                return Err(format!(
                    "writable translation of {va:?} to a page still shared copy-on-write"
                ));
            }
        }
        Ok(())
    }

    /// Benchmark hook (`cargo xtask bench`, benchmark 4): looks every address
    /// up as the fault path does, hint first, under one lock acquisition so
    /// that the lookup alone is timed. Returns the sum of the entry starts
    /// found.
    #[doc(hidden)]
    pub fn lookup_many(&self, addrs: &[u64]) -> u64 {
        let mut m = self.0.inner.lock();
        addrs
            .iter()
            .filter_map(|&va| m.lookup(va))
            .fold(0, u64::wrapping_add)
    }

    /// The longest object chain of any entry (for tests of collapse).
    pub fn max_chain_depth(&self) -> usize {
        let m = self.0.inner.lock();
        m.entries
            .values()
            .filter_map(|e| e.object.as_ref().map(|o| o.chain_depth()))
            .max()
            .unwrap_or(0)
    }
}

/// How lookups avoid walking the tree: a hint (the last entry found, whose
/// successor is checked too, so a sequential sweep costs O(1) per lookup),
/// and a flat sorted copy of the entry bounds, rebuilt once lookups since the
/// last change outnumber a quarter of the entries (binary search over 16-byte
/// records beats the tree's pointer chasing). Any change of entry bounds
/// invalidates both; attribute changes do not.
#[derive(Default)]
struct LookupIndex {
    /// `(start, end)` of every entry, in order, when `valid`.
    flat: Vec<(u64, u64)>,
    valid: bool,
    /// Position of the hint in `flat` (when `valid`).
    pos: usize,
    /// The hint's bounds (`end == 0`: none).
    hint: (u64, u64),
    /// Lookups since the last change (decides when to rebuild `flat`).
    since_change: usize,
}

impl LookupIndex {
    fn invalidate(&mut self) {
        self.valid = false;
        self.hint = (0, 0);
        self.since_change = 0;
    }

    #[inline]
    fn lookup(&mut self, entries: &BTreeMap<u64, Entry>, va: u64) -> Option<u64> {
        let (s, e) = self.hint;
        if s <= va && va < e {
            return Some(s);
        }
        if self.valid {
            // The successor of the hint: a sequential sweep.
            if let Some(&(ns, ne)) = self.flat.get(self.pos + 1) {
                if ns <= va && va < ne {
                    self.pos += 1;
                    self.hint = (ns, ne);
                    return Some(ns);
                }
            }
            let i = self.flat.partition_point(|&(s, _)| s <= va);
            let &(s, e) = self.flat.get(i.checked_sub(1)?)?;
            if va < e {
                self.pos = i - 1;
                self.hint = (s, e);
                return Some(s);
            }
            return None;
        }
        self.since_change += 1;
        if self.since_change > entries.len() / 4 + 8 {
            self.flat.clear();
            self.flat.extend(entries.iter().map(|(&s, e)| (s, e.end)));
            self.valid = true;
            self.hint = (0, 0);
            return self.lookup(entries, va);
        }
        let (&s, en) = entries.range(..=va).next_back()?;
        if va < en.end {
            self.hint = (s, en.end);
            Some(s)
        } else {
            None
        }
    }
}

impl MapInner {
    /// The start of the entry containing `va`: the hint and its successor
    /// first (O(1)), then the flat index or the tree (O(log n)).
    #[inline]
    pub(crate) fn lookup(&mut self, va: u64) -> Option<u64> {
        self.index.lookup(&self.entries, va)
    }

    /// Inserts a new entry, keeping `first_free` right.
    pub(crate) fn insert(&mut self, start: u64, e: Entry) {
        self.index.invalidate();
        let end = e.end;
        self.entries.insert(start, e);
        if start == self.first_free {
            let mut ff = end;
            while let Some(next) = self.entries.get(&ff) {
                ff = next.end;
            }
            self.first_free = ff;
        }
    }

    /// Replaces every entry at once (the map must be empty of translations).
    pub(crate) fn replace_entries(&mut self, entries: BTreeMap<u64, Entry>) {
        self.entries = entries;
        self.index.invalidate();
        let mut ff = USER_MIN;
        while let Some(e) = self.entries.get(&ff) {
            ff = e.end;
        }
        self.first_free = ff;
    }

    /// Removes every entry starting in `[start, end)` (clip first).
    pub(crate) fn remove_range(&mut self, start: u64, end: u64) -> Vec<(u64, Entry)> {
        self.index.invalidate();
        let keys: Vec<u64> = self.entries.range(start..end).map(|(s, _)| *s).collect();
        let removed: Vec<(u64, Entry)> = keys
            .into_iter()
            .filter_map(|k| self.entries.remove(&k).map(|e| (k, e)))
            .collect();
        if let Some((s, _)) = removed.first() {
            self.first_free = self.first_free.min(*s);
        }
        removed
    }

    /// Lowest start of `len` free bytes at or above `from` (first fit).
    pub(crate) fn find_space(&self, from: u64, len: u64) -> Option<u64> {
        let mut cand = from.max(USER_MIN);
        if cand < self.first_free {
            cand = self.first_free;
        }
        if let Some((_, e)) = self.entries.range(..=cand).next_back() {
            cand = cand.max(e.end);
        }
        for (&s, e) in self.entries.range(cand..) {
            if s - cand >= len {
                break;
            }
            cand = e.end;
        }
        (cand.checked_add(len)? <= USER_MAX).then_some(cand)
    }

    /// Splits the entry containing `va` so that an entry starts at `va`.
    pub(crate) fn clip(&mut self, va: u64) {
        let Some((&start, e)) = self.entries.range(..va).next_back() else {
            return;
        };
        if va >= e.end {
            return;
        }
        self.index.invalidate();
        let mut tail = e.clone();
        tail.offset += (va - start) >> PAGE_SHIFT;
        if let Some(e) = self.entries.get_mut(&start) {
            e.end = va;
        }
        self.entries.insert(va, tail);
    }

    /// `Ok` when `[start, end)` is covered by entries without a hole.
    pub(crate) fn check_covered(&self, start: u64, end: u64) -> Result<(), KernError> {
        let (_, e) = self
            .entries
            .range(..=start)
            .next_back()
            .filter(|(_, e)| e.end > start)
            .ok_or(KernError::InvalidAddress)?;
        let mut at = e.end;
        while at < end {
            at = self.entries.get(&at).ok_or(KernError::InvalidAddress)?.end;
        }
        Ok(())
    }

    /// The entries overlapping `[start, end)`, as (start, entry).
    pub(crate) fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (&u64, &Entry)> {
        let first = self
            .entries
            .range(..=start)
            .next_back()
            .filter(|(_, e)| e.end > start)
            .map_or(start, |(s, _)| *s);
        self.entries.range(first..end)
    }
}

impl Drop for MapShared {
    fn drop(&mut self) {
        let pm = self.ctx.pmap();
        let entries = core::mem::take(&mut self.inner.get_mut().entries);
        let all = VaRange::new(VirtAddr(0), VirtAddr(USER_MAX)).unwrap_or_default();
        pm.flush(pm.remove(self.pmap, all));
        ops::release_entries(entries.into_iter().collect());
        pm.destroy(self.pmap);
    }
}

impl fmt::Display for VmMap {
    /// One line per region, `vmmap` style: range, protection/maximum,
    /// inheritance, copy-on-write state, object chain depth, resident pages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0.inner.lock();
        writeln!(
            f,
            "{:<33} {:<7} {:<5} {:<4} {:>5} {:>8}",
            "START-END", "PRT/MAX", "INH", "COW", "DEPTH", "RESIDENT"
        )?;
        for (&start, e) in &m.entries {
            let (depth, resident) = match &e.object {
                Some(o) => (
                    o.chain_depth(),
                    o.resident_in_window(e.offset, e.offset + e.pages(start)),
                ),
                None => (0, 0),
            };
            writeln!(
                f,
                "{:016x}-{:016x} {}/{} {:<5} {:<4} {:>5} {:>8}",
                start,
                e.end,
                e.protection,
                e.max_protection,
                e.inheritance,
                if e.needs_copy { "nc" } else { "-" },
                depth,
                resident
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for VmMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmMap#{}", self.0.id)
    }
}

/// A context over a hosted x86_64 pmap with `bytes` of simulated RAM, for
/// examples and tests of this crate.
#[doc(hidden)]
pub fn hosted_context(bytes: u64) -> Arc<VmContext> {
    let frames = Arc::new(machvm_frame::FrameAllocator::hosted(bytes).expect("host memory"));
    let pmap = Arc::new(machvm_pmap::SoftPmap::new());
    VmContext::new(frames, pmap)
}

pub(crate) fn page_range(start: u64, end: u64) -> VaRange {
    VaRange::new(VirtAddr(start), VirtAddr(end)).unwrap_or_default()
}
