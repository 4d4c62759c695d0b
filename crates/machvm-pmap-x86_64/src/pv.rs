//! Reverse maps ("pv lists"): for each frame, the translations of it.
//!
//! One [`PvEntry`] is a packed `(pmap, va, large)` in 64 bits; a [`PvHead`]
//! keeps the first inline (most frames have exactly one mapping) and spills
//! the rest into a vector.

use alloc::boxed::Box;
use alloc::vec::Vec;
use machvm_base::{PAGE_SHIFT, VirtAddr};
use machvm_pmap::PmapId;

/// Pmap ids must fit the 27 bits a [`PvEntry`] gives them.
pub(crate) const MAX_PMAPS: u32 = (1 << 27) - 1;

/// `(pmap + 1) << 36 | va >> 12`, plus bit 63 for a large (2 MiB) mapping;
/// 0 means "none".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PvEntry(u64);

impl PvEntry {
    pub(crate) fn new(pmap: PmapId, va: VirtAddr, large: bool) -> PvEntry {
        debug_assert!(pmap.0 < MAX_PMAPS && va.as_u64() < (1 << 48));
        PvEntry((u64::from(pmap.0) + 1) << 36 | va.as_u64() >> PAGE_SHIFT | u64::from(large) << 63)
    }
    pub(crate) fn pmap(self) -> PmapId {
        PmapId((((self.0 >> 36) & ((1 << 27) - 1)) - 1) as u32)
    }
    pub(crate) fn va(self) -> VirtAddr {
        VirtAddr::new((self.0 & ((1 << 36) - 1)) << PAGE_SHIFT)
    }
    pub(crate) fn large(self) -> bool {
        self.0 >> 63 != 0
    }
}

/// The mappings of one frame: the first inline, the rest (after a fork or
/// a shared mapping) in a spilled vector behind one pointer, so a head is
/// 16 bytes and, in its lock, 24 per frame of RAM. The vector goes when
/// the frame is down to one mapping again.
#[derive(Default)]
pub(crate) struct PvHead {
    first: u64,
    // One word per frame, not a `Vec`'s three: spills are rare, heads are
    // not.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<u64>>>,
}

impl PvHead {
    pub(crate) fn insert(&mut self, e: PvEntry) {
        if self.first == 0 {
            self.first = e.0;
        } else {
            self.more.get_or_insert_default().push(e.0);
        }
    }

    /// Removes `e`; false if it was not there.
    pub(crate) fn remove(&mut self, e: PvEntry) -> bool {
        let found = if self.first == e.0 {
            self.first = self.more.as_mut().and_then(|m| m.pop()).unwrap_or(0);
            true
        } else {
            let more = self.more.as_mut();
            let at = more.and_then(|m| m.iter().position(|&x| x == e.0).map(|i| (m, i)));
            at.map(|(m, i)| m.swap_remove(i)).is_some()
        };
        if self.more.as_ref().is_some_and(|m| m.is_empty()) {
            self.more = None;
        }
        found
    }

    fn spilled(&self) -> &[u64] {
        self.more.as_deref().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn contains(&self, e: PvEntry) -> bool {
        self.first == e.0 || self.spilled().contains(&e.0)
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first != 0) + self.spilled().len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = PvEntry> + '_ {
        (self.first != 0)
            .then_some(self.first)
            .into_iter()
            .chain(self.spilled().iter().copied())
            .map(PvEntry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pack_and_unpack() {
        let e = PvEntry::new(PmapId(77), VirtAddr::new(0x7fff_ffff_f000), true);
        assert_eq!(
            (e.pmap(), e.va(), e.large()),
            (PmapId(77), VirtAddr::new(0x7fff_ffff_f000), true)
        );
        let z = PvEntry::new(PmapId(0), VirtAddr::new(0), false);
        assert_ne!(z.0, 0);
        let mut h = PvHead::default();
        h.insert(e);
        h.insert(z);
        assert_eq!(h.len(), 2);
        assert!(h.remove(e));
        assert!(!h.remove(e));
        assert_eq!(h.iter().collect::<Vec<_>>(), [z]);
        assert!(h.more.is_none(), "one mapping left: the spill is freed");
    }

    #[test]
    fn a_head_in_its_lock_costs_24_bytes_per_frame() {
        use machvm_base::sync::{Mutex, SpinLocks};
        assert_eq!(core::mem::size_of::<PvHead>(), 16);
        assert_eq!(core::mem::size_of::<Mutex<SpinLocks, PvHead>>(), 24);
    }

    #[test]
    fn spilled_mappings_come_and_go_in_any_order() {
        let es: Vec<PvEntry> = (1..=5)
            .map(|i| PvEntry::new(PmapId(i), VirtAddr::new(i as u64 * 0x1000), false))
            .collect();
        let mut h = PvHead::default();
        for &e in &es {
            h.insert(e);
        }
        assert_eq!(h.len(), 5);
        for &e in [es[2], es[0], es[4], es[1]].iter() {
            assert!(h.remove(e));
            assert!(!h.contains(e));
        }
        assert_eq!(h.iter().collect::<Vec<_>>(), [es[3]]);
        assert!(h.more.is_none());
        assert!(h.remove(es[3]));
        assert_eq!(h.len(), 0);
    }
}
