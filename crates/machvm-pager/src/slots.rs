//! The default pager's slot table: a bitmap of the slots in use, with a
//! rotor at the 64-slot word last taken from (next fit by word: page-outs
//! fill a word before moving on, so a file or disk sees mostly sequential
//! writes), and the count of slots promised to credits.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Which slots are in use, and how many are promised.
pub(crate) struct Slots {
    bits: Box<[u64]>,
    total: u64,
    used: u64,
    promised: u64,
    rotor: usize,
}

impl Slots {
    /// `total` free slots; `None` when the host cannot hold the bitmap.
    pub(crate) fn new(total: u64) -> Option<Slots> {
        let words = usize::try_from(total.div_ceil(64)).ok()?;
        let mut bits = Vec::new();
        bits.try_reserve_exact(words).ok()?;
        bits.resize(words, 0);
        Some(Slots {
            bits: bits.into_boxed_slice(),
            total,
            used: 0,
            promised: 0,
            rotor: 0,
        })
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Neither in use nor promised.
    pub(crate) fn free(&self) -> u64 {
        self.total - self.used - self.promised
    }

    /// Promises `n` slots: all or none.
    pub(crate) fn promise(&mut self, n: u64) -> bool {
        if n > self.free() {
            return false;
        }
        self.promised += n;
        true
    }

    /// Takes back `n` promised slots.
    pub(crate) fn unpromise(&mut self, n: u64) {
        debug_assert!(n <= self.promised, "more given back than promised");
        self.promised -= n.min(self.promised);
    }

    /// A free slot's index, from a promise (`promised`) or from the free
    /// ones; `None` when there is none of that kind.
    pub(crate) fn take(&mut self, promised: bool) -> Option<u64> {
        if promised {
            if self.promised == 0 {
                return None;
            }
        } else if self.free() == 0 {
            return None;
        }
        let index = self.find_clear()?;
        self.bits[(index / 64) as usize] |= 1 << (index % 64);
        self.used += 1;
        if promised {
            self.promised -= 1;
        }
        self.rotor = (index / 64) as usize;
        Some(index)
    }

    /// The first clear bit from the rotor's word on, wrapping once.
    fn find_clear(&self) -> Option<u64> {
        let n = self.bits.len();
        (0..n).map(|k| (self.rotor + k) % n).find_map(|w| {
            let free = !self.bits[w];
            let bit = u64::from(free.trailing_zeros());
            let index = w as u64 * 64 + bit;
            (free != 0 && index < self.total).then_some(index)
        })
    }

    /// Frees slot `index`; `false` (nothing changes) when it is not in use.
    pub(crate) fn give_back(&mut self, index: u64) -> bool {
        let (w, b) = ((index / 64) as usize, index % 64);
        match self.bits.get_mut(w) {
            Some(word) if index < self.total && *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                self.used -= 1;
                true
            }
            _ => false,
        }
    }

    /// The count of slots in use is the bits set, and no bit lies past
    /// the end.
    pub(crate) fn check_bitmap(&self) -> Result<(), String> {
        let set: u64 = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
        if set != self.used {
            return Err(format!(
                "{set} slots marked in use, count says {}",
                self.used
            ));
        }
        let past = (self.total..self.bits.len() as u64 * 64)
            .any(|i| self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0);
        if past {
            return Err(String::from("a slot past the store's end is marked in use"));
        }
        Ok(())
    }

    /// In use plus promised never exceeds the store.
    pub(crate) fn check_counts(&self) -> Result<(), String> {
        match self.used.checked_add(self.promised) {
            Some(n) if n <= self.total => Ok(()),
            _ => Err(format!(
                "{} in use + {} promised > {} slots",
                self.used, self.promised, self.total
            )),
        }
    }

    /// Marks slot `index` in use without counting it (tests break the
    /// bitmap to see verify name it).
    #[cfg(test)]
    pub(crate) fn corrupt(&mut self, index: u64) {
        self.bits[(index / 64) as usize] |= 1 << (index % 64);
    }
}
