//! Reverse maps ("pv lists"): for each frame, the translations of it.
//!
//! One [`PvEntry`] is a packed `(pmap, va, large)` in 64 bits; a [`PvHead`]
//! keeps the first inline (most frames have exactly one mapping) and spills
//! the rest into a vector.

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

/// The mappings of one frame.
#[derive(Default)]
pub(crate) struct PvHead {
    first: u64,
    more: Vec<u64>,
}

impl PvHead {
    pub(crate) fn insert(&mut self, e: PvEntry) {
        if self.first == 0 {
            self.first = e.0;
        } else {
            self.more.push(e.0);
        }
    }

    /// Removes `e`; false if it was not there.
    pub(crate) fn remove(&mut self, e: PvEntry) -> bool {
        if self.first == e.0 {
            self.first = self.more.pop().unwrap_or(0);
            return true;
        }
        match self.more.iter().position(|&x| x == e.0) {
            Some(i) => {
                self.more.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub(crate) fn contains(&self, e: PvEntry) -> bool {
        self.first == e.0 || self.more.contains(&e.0)
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first != 0) + self.more.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = PvEntry> + '_ {
        (self.first != 0)
            .then_some(self.first)
            .into_iter()
            .chain(self.more.iter().copied())
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
    }
}
