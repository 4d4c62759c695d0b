extern crate std;

use alloc::vec::Vec;
use std::collections::BTreeSet;

use machvm_frame::{FrameAllocator, FrameUse};

use super::*;

fn frames() -> FrameAllocator {
    FrameAllocator::hosted(64 * 4096).unwrap()
}

/// A page whose every word says `tag`.
fn tagged(frames: &FrameAllocator, tag: u64) -> PhysAddr {
    let pa = frames.alloc(FrameUse::Object).unwrap();
    for i in 0..512 {
        frames.mem().store_u64(pa + i * 8, tag);
    }
    pa
}

fn tag_of(frames: &FrameAllocator, pa: PhysAddr) -> u64 {
    let tag = frames.mem().load_u64(pa);
    assert!(
        (0..512).all(|i| frames.mem().load_u64(pa + i * 8) == tag),
        "a torn page"
    );
    tag
}

#[test]
fn slots_are_taken_in_order_wrap_around_and_come_back() {
    let f = frames();
    let pager = DefaultPager::new(MemStore::new(130).unwrap()).unwrap();
    let pa = tagged(&f, 7);
    let slots: Vec<u32> = (0..130)
        .map(|_| pager.page_out(f.mem(), pa, None).unwrap().get())
        .collect();
    assert_eq!(
        slots,
        (1..=130).collect::<Vec<_>>(),
        "next fit, one after another"
    );
    assert_eq!(pager.page_out(f.mem(), pa, None), Err(PagerError::NoSpace));
    pager.forget(SwapSlot::new(5).unwrap());
    pager.forget(SwapSlot::new(70).unwrap());
    let again: BTreeSet<u32> = (0..2)
        .map(|_| pager.page_out(f.mem(), pa, None).unwrap().get())
        .collect();
    assert_eq!(again, BTreeSet::from([5, 70]));
    pager.verify().unwrap();
}

#[test]
fn pages_come_back_whole_from_every_store() {
    let f = frames();
    let disk = f.alloc_order(3, FrameUse::Kernel).unwrap();
    let mem = DefaultPager::new(MemStore::new(8).unwrap()).unwrap();
    let ram = DefaultPager::new(RamDisk::new(disk, 8).unwrap()).unwrap();
    let pagers: [&dyn Pager; 2] = [&mem, &ram];
    for pager in pagers {
        let slots: Vec<SwapSlot> = (1..=8)
            .map(|tag| {
                let pa = tagged(&f, tag);
                let slot = pager.page_out(f.mem(), pa, None).unwrap();
                f.free(pa);
                slot
            })
            .collect();
        for (tag, &slot) in (1..=8).zip(&slots) {
            let pa = f.alloc(FrameUse::Object).unwrap();
            pager.page_in(slot, f.mem(), pa);
            assert_eq!(tag_of(&f, pa), tag);
            let mut word = [0u8; 8];
            assert!(pager.read(slot, f.mem(), 4088, &mut word));
            assert_eq!(u64::from_ne_bytes(word), tag);
            // Past the page lie another owner's bytes: refused.
            assert!(!pager.read(slot, f.mem(), 4089, &mut word));
            f.free(pa);
            pager.forget(slot);
        }
        assert_eq!(pager.free_slots(), 8);
        pager.verify().unwrap();
    }
}

#[test]
fn an_exchange_trades_a_slot_and_a_frame_in_every_store() {
    let f = frames();
    let disk = f.alloc_order(3, FrameUse::Kernel).unwrap();
    let mem = DefaultPager::new(MemStore::new(8).unwrap()).unwrap();
    let ram = DefaultPager::new(RamDisk::new(disk, 8).unwrap()).unwrap();
    let pagers: [&dyn Pager; 2] = [&mem, &ram];
    for pager in pagers {
        let a = tagged(&f, 0xA);
        let slot = pager.page_out(f.mem(), a, None).unwrap();
        let b = tagged(&f, 0xB);
        pager.exchange(slot, f.mem(), b).unwrap();
        assert_eq!(tag_of(&f, b), 0xA, "the frame holds the slot's page");
        pager.page_in(slot, f.mem(), a);
        assert_eq!(tag_of(&f, a), 0xB, "the slot holds the frame's page");
        assert_eq!(pager.free_slots(), 7, "no slot taken or given");
        pager.forget(slot);
        f.free(a);
        f.free(b);
        pager.verify().unwrap();
    }
}

#[test]
fn a_pager_spends_only_its_own_credits() {
    let f = frames();
    let a = DefaultPager::new(MemStore::new(4).unwrap()).unwrap();
    let b = DefaultPager::new(MemStore::new(4).unwrap()).unwrap();
    let pa = tagged(&f, 2);
    let mut credit = a.reserve(1).unwrap();
    let _theirs = b.reserve(4).unwrap();
    assert_eq!(
        b.page_out(f.mem(), pa, Some(&mut credit)),
        Err(PagerError::ForeignCredit)
    );
    assert_eq!(credit.left(), 1);
    a.page_out(f.mem(), pa, Some(&mut credit)).unwrap();
    a.verify().unwrap();
    b.verify().unwrap();
}

#[test]
fn a_promise_is_all_or_none_and_what_is_left_goes_back() {
    let f = frames();
    let pager = DefaultPager::new(MemStore::new(4).unwrap()).unwrap();
    let pa = tagged(&f, 1);
    assert_eq!(pager.reserve(5).unwrap_err(), PagerError::NoSpace);
    assert_eq!(pager.free_slots(), 4);
    let mut credit = pager.reserve(3).unwrap();
    assert_eq!(pager.free_slots(), 1);
    let slot = pager.page_out(f.mem(), pa, Some(&mut credit)).unwrap();
    assert_eq!(credit.left(), 2);
    // The one free slot is not the credit's to take, nor the credit's
    // slots anyone else's.
    let other = pager.page_out(f.mem(), pa, None).unwrap();
    assert_eq!(pager.page_out(f.mem(), pa, None), Err(PagerError::NoSpace));
    pager.page_out(f.mem(), pa, Some(&mut credit)).unwrap();
    drop(credit);
    assert_eq!(pager.free_slots(), 1, "the unspent slot came back");
    pager.forget(slot);
    pager.forget(other);
    pager.verify().unwrap();
}

/// A store whose writes all fail.
struct Broken(MemStore);

impl BackingStore for Broken {
    fn pages(&self) -> u64 {
        self.0.pages()
    }
    fn write_page(&self, _: u64, _: &PhysMem, _: PhysAddr) -> Result<(), StoreError> {
        Err(StoreError)
    }
    fn read_page(&self, index: u64, mem: &PhysMem, dst: PhysAddr) {
        self.0.read_page(index, mem, dst)
    }
    fn read_bytes(&self, index: u64, mem: &PhysMem, offset: usize, buf: &mut [u8]) {
        self.0.read_bytes(index, mem, offset, buf)
    }
    fn copy_page(&self, _: u64, _: u64, _: &PhysMem) -> Result<(), StoreError> {
        Err(StoreError)
    }
}

#[test]
fn a_failed_write_keeps_no_slot_and_spends_no_credit() {
    let f = frames();
    let pager = DefaultPager::new(Broken(MemStore::new(4).unwrap())).unwrap();
    let pa = tagged(&f, 3);
    let err = Err(PagerError::Store(StoreError));
    assert_eq!(pager.page_out(f.mem(), pa, None), err);
    let mut credit = pager.reserve(2).unwrap();
    assert_eq!(pager.page_out(f.mem(), pa, Some(&mut credit)), err);
    assert_eq!((credit.left(), pager.free_slots()), (2, 2));
    drop(credit);
    assert_eq!(pager.free_slots(), 4);
    pager.verify().unwrap();
}

#[test]
fn a_duplicate_is_a_copy_of_its_own() {
    let f = frames();
    let pager = DefaultPager::new(MemStore::new(4).unwrap()).unwrap();
    let pa = tagged(&f, 11);
    let slot = pager.page_out(f.mem(), pa, None).unwrap();
    let copy = pager.duplicate(slot, f.mem(), None).unwrap();
    assert_ne!(slot, copy);
    pager.forget(slot);
    f.mem().zero_page(pa);
    pager.page_in(copy, f.mem(), pa);
    assert_eq!(tag_of(&f, pa), 11);
    pager.forget(copy);
    assert_eq!(pager.free_slots(), 4);
    pager.verify().unwrap();
}

#[test]
fn verify_names_a_broken_bitmap_and_a_bad_forget() {
    let pager = DefaultPager::new(MemStore::new(4).unwrap()).unwrap();
    pager.corrupt(2);
    assert_eq!(pager.verify().unwrap_err().rule, PagerRule::Bitmap);
    let pager = DefaultPager::new(MemStore::new(4).unwrap()).unwrap();
    // Debug builds assert on it; either way it is remembered.
    let forgot = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
        pager.forget(SwapSlot::new(1).unwrap())
    }));
    assert_eq!(forgot.is_err(), cfg!(debug_assertions));
    assert_eq!(pager.verify().unwrap_err().rule, PagerRule::NoBadForget);
}

#[cfg(feature = "std")]
#[test]
fn a_file_store_keeps_pages_in_its_file() {
    let path = std::env::temp_dir().join(alloc::format!("machvm-swap-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let f = frames();
    let pager = DefaultPager::new(FileStore::new(file, 4).unwrap()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 4096);
    let pa = tagged(&f, 5);
    let slot = pager.page_out(f.mem(), pa, None).unwrap();
    let copy = pager.duplicate(slot, f.mem(), None).unwrap();
    f.mem().zero_page(pa);
    pager.page_in(copy, f.mem(), pa);
    assert_eq!(tag_of(&f, pa), 5);
    // A file's write can fail part-way (a full disk): it refuses to trade
    // a slot's page for a frame's, and neither changes.
    let b = tagged(&f, 6);
    assert!(pager.exchange(slot, f.mem(), b).is_err());
    assert_eq!(tag_of(&f, b), 6);
    pager.page_in(slot, f.mem(), pa);
    assert_eq!(tag_of(&f, pa), 5);
    pager.forget(slot);
    pager.forget(copy);
    pager.verify().unwrap();
    std::fs::remove_file(&path).unwrap();
}
