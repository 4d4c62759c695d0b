//! Mach's default pager: anonymous pages in swap slots of one store.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::sync::{Locks, Mutex, SpinLocks};
use machvm_base::{KernError, PAGE_SIZE, PhysAddr, Violation};
use machvm_frame::PhysMem;

use crate::slots::Slots;
use crate::{BackingStore, Pager, PagerError, PagerRule, SwapCredit, SwapSlot};

/// The default pager over store `S`, its slot table under a lock of family
/// `L` (a leaf: the store is called with it released).
///
/// ```
/// use machvm_frame::{FrameAllocator, FrameUse};
/// use machvm_pager::{DefaultPager, MemStore, Pager};
///
/// let frames = FrameAllocator::hosted(16 * 4096).unwrap();
/// let pager = DefaultPager::new(MemStore::new(8).unwrap()).unwrap();
/// let pa = frames.alloc(FrameUse::Object).unwrap();
/// frames.mem().write(pa + 100, b"paged out");
/// let slot = pager.page_out(frames.mem(), pa, None).unwrap();
/// frames.mem().zero_page(pa);
/// pager.page_in(slot, frames.mem(), pa);
/// let mut buf = [0u8; 9];
/// frames.mem().read(pa + 100, &mut buf);
/// assert_eq!(&buf, b"paged out");
/// pager.forget(slot);
/// assert_eq!(pager.free_slots(), 8);
/// pager.verify().unwrap();
/// ```
pub struct DefaultPager<S: BackingStore, L: Locks = SpinLocks> {
    store: S,
    slots: Mutex<L, Slots>,
    /// Slots forgotten that were not in use (a caller bug).
    bad_forgets: AtomicU64,
}

impl<S: BackingStore> DefaultPager<S> {
    /// A pager over every slot of `store`, under spin's locks.
    /// `ResourceShortage` when the host cannot hold the slot table,
    /// `InvalidArgument` for a store of 2^32 − 1 pages or more.
    pub fn new(store: S) -> Result<DefaultPager<S>, KernError> {
        DefaultPager::with_locks(store)
    }
}

impl<S: BackingStore, L: Locks> DefaultPager<S, L> {
    /// [`new`](DefaultPager::new) with the locks of family `L`.
    pub fn with_locks(store: S) -> Result<DefaultPager<S, L>, KernError> {
        // Slots are numbered in 32 bits.
        if store.pages() >= u64::from(u32::MAX) {
            return Err(KernError::InvalidArgument);
        }
        let slots = Slots::new(store.pages()).ok_or(KernError::ResourceShortage)?;
        let slots = Mutex::<L, _>::new(slots);
        Ok(DefaultPager {
            store,
            slots,
            bad_forgets: AtomicU64::new(0),
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// A slot from `credit` when given, else a free one.
    fn take_slot(&self, mut credit: Option<&mut SwapCredit<'_>>) -> Result<SwapSlot, PagerError> {
        let promised = credit.is_some();
        if let Some(c) = credit.as_deref_mut() {
            if !c.is_of(self) {
                return Err(PagerError::ForeignCredit);
            }
            if !c.spend() {
                return Err(PagerError::NoSpace);
            }
        }
        let index = self.slots.lock().take(promised);
        let slot = index.and_then(|i| SwapSlot::new(u32::try_from(i + 1).ok()?));
        if slot.is_none()
            && let Some(c) = credit
        {
            c.refund();
        }
        slot.ok_or(PagerError::NoSpace)
    }

    /// Gives a slot whose write failed back: to the credit it came from,
    /// or to the free ones.
    fn untake(&self, slot: SwapSlot, credit: Option<&mut SwapCredit<'_>>) {
        let mut s = self.slots.lock();
        s.give_back(slot.index());
        if let Some(c) = credit {
            c.refund();
            let _ = s.promise(1);
        }
    }
}

impl<S: BackingStore, L: Locks> Pager for DefaultPager<S, L> {
    fn reserve(&self, n: u64) -> Result<SwapCredit<'_>, PagerError> {
        if !self.slots.lock().promise(n) {
            return Err(PagerError::NoSpace);
        }
        Ok(SwapCredit::new(self, n))
    }

    fn page_out(
        &self,
        mem: &PhysMem,
        src: PhysAddr,
        mut credit: Option<&mut SwapCredit<'_>>,
    ) -> Result<SwapSlot, PagerError> {
        let slot = self.take_slot(credit.as_deref_mut())?;
        match self.store.write_page(slot.index(), mem, src) {
            Ok(()) => Ok(slot),
            Err(e) => {
                self.untake(slot, credit);
                Err(PagerError::Store(e))
            }
        }
    }

    fn page_in(&self, slot: SwapSlot, mem: &PhysMem, dst: PhysAddr) {
        self.store.read_page(slot.index(), mem, dst);
    }

    fn read(&self, slot: SwapSlot, mem: &PhysMem, offset: usize, buf: &mut [u8]) -> bool {
        // Past the page lie another owner's bytes.
        if offset.saturating_add(buf.len()) > PAGE_SIZE as usize {
            return false;
        }
        self.store.read_bytes(slot.index(), mem, offset, buf);
        true
    }

    fn duplicate(
        &self,
        slot: SwapSlot,
        mem: &PhysMem,
        mut credit: Option<&mut SwapCredit<'_>>,
    ) -> Result<SwapSlot, PagerError> {
        let copy = self.take_slot(credit.as_deref_mut())?;
        match self.store.copy_page(slot.index(), copy.index(), mem) {
            Ok(()) => Ok(copy),
            Err(e) => {
                self.untake(copy, credit);
                Err(PagerError::Store(e))
            }
        }
    }

    fn exchange(&self, slot: SwapSlot, mem: &PhysMem, pa: PhysAddr) -> Result<(), PagerError> {
        self.store
            .exchange_page(slot.index(), mem, pa)
            .map_err(PagerError::Store)
    }

    fn forget(&self, slot: SwapSlot) {
        if !self.slots.lock().give_back(slot.index()) {
            self.bad_forgets.fetch_add(1, Relaxed);
            debug_assert!(false, "forgot {slot:?}, which was not in use");
        }
    }

    fn free_slots(&self) -> u64 {
        self.slots.lock().free()
    }

    fn total_slots(&self) -> u64 {
        self.slots.lock().total()
    }

    fn verify(&self) -> Result<(), Violation<PagerRule>> {
        let s = self.slots.lock();
        Violation::check(PagerRule::Bitmap, s.check_bitmap())?;
        Violation::check(PagerRule::Counts, s.check_counts())?;
        let bad = self.bad_forgets.load(Relaxed);
        let forgets = if bad == 0 {
            Ok(())
        } else {
            Err(alloc::format!("{bad} slot(s) forgotten while not in use"))
        };
        Violation::check(PagerRule::NoBadForget, forgets)
    }

    fn release_promise(&self, n: u64) {
        self.slots.lock().unpromise(n);
    }
}

impl<S: BackingStore, L: Locks> core::fmt::Debug for DefaultPager<S, L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DefaultPager")
            .field("slots", &self.total_slots())
            .field("free", &self.free_slots())
            .finish()
    }
}

#[cfg(test)]
impl<S: BackingStore, L: Locks> DefaultPager<S, L> {
    /// Marks a slot in use behind the count's back (verify must name it).
    pub(crate) fn corrupt(&self, index: u64) {
        self.slots.lock().corrupt(index);
    }
}
