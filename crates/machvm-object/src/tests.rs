extern crate std;

use super::*;
use machvm_pmap::{PmapId, VaRange, VirtAddr};
use machvm_pmap_x86_64::X86Pmap;

fn ctx(frames: u64) -> Arc<VmContext> {
    let fa = Arc::new(FrameAllocator::hosted(frames * PAGE_SIZE).unwrap());
    let pm = Arc::new(X86Pmap::new(fa.clone(), Default::default()).unwrap());
    VmContext::new(fa, pm)
}

fn used(ctx: &VmContext) -> u64 {
    ctx.frames().frames_in_use(FrameUse::Object)
}

fn write(ctx: &VmContext, pa: PhysAddr, byte: u8) {
    ctx.frames().mem().write(pa, &[byte; 8]);
}

fn read(ctx: &VmContext, pa: PhysAddr) -> u8 {
    let mut b = [0u8; 1];
    ctx.frames().mem().read(pa, &mut b);
    b[0]
}

#[test]
fn zero_fill_then_resident() {
    let c = ctx(64);
    let o = VmObject::new_anon(&c, 8);
    assert_eq!(used(&c), 0, "an object costs no frame until touched");
    let r = o.resolve(3, false, |_| Ok(())).unwrap();
    assert_eq!(r.how, Resolution::ZeroFilled);
    assert_eq!(read(&c, r.pa), 0);
    assert_eq!(
        o.resolve(3, true, |_| Ok(())).unwrap(),
        Resolved {
            pa: r.pa,
            how: Resolution::Resident
        }
    );
    assert_eq!(
        o.resolve(8, false, |_| Ok(())),
        Err(KernError::InvalidAddress)
    );
    o.verify().unwrap();
    assert_eq!(c.counters.zero_fill_count.load(Relaxed), 1);
    drop(o);
    assert_eq!(used(&c), 0);
    assert_eq!(c.live_objects(), 0);
}

#[test]
fn copy_on_write_through_a_shadow() {
    let c = ctx(64);
    let base = VmObject::new_anon(&c, 4);
    let p = base.resolve(1, true, |_| Ok(())).unwrap().pa;
    write(&c, p, 0xAA);
    let s = VmObject::new_shadow(base.clone(), 0, 4);
    assert!(!base.is_one_mapping());
    let r = s.resolve(1, false, |_| Ok(())).unwrap();
    assert_eq!((r.pa, r.how), (p, Resolution::Backing));
    let w = s.resolve(1, true, |_| Ok(())).unwrap();
    assert_eq!(w.how, Resolution::CopiedUp);
    assert_ne!(w.pa, p);
    assert_eq!(read(&c, w.pa), 0xAA);
    write(&c, w.pa, 0xBB);
    assert_eq!(read(&c, p), 0xAA, "the original is untouched");
    assert_eq!(c.counters.cow_faults.load(Relaxed), 1);
    s.verify().unwrap();
    assert_eq!(s.chain_depth(), 2);
    drop(s);
    drop(base);
    assert_eq!(used(&c), 0);
}

#[test]
fn shadow_window_offsets() {
    let c = ctx(64);
    let base = VmObject::new_anon(&c, 10);
    let p = base.resolve(7, true, |_| Ok(())).unwrap().pa;
    let s = VmObject::new_shadow(base.clone(), 5, 100);
    assert_eq!(s.size(), 5, "window clamped to the backing object");
    assert_eq!(s.lookup(2), Some(Found { pa: p, depth: 1 }));
    assert_eq!(s.resident_in_window(0, 5), 1);
    s.verify().unwrap();
}

#[test]
fn collapse_moves_pages_up_and_frees_the_shadowed() {
    let c = ctx(64);
    let base = VmObject::new_anon(&c, 4);
    for off in 0..4 {
        base.resolve(off, true, |_| Ok(())).unwrap();
    }
    let s = VmObject::new_shadow(base.clone(), 1, 3);
    s.resolve(0, true, |_| Ok(())).unwrap(); // copies base page 1 up
    assert_eq!(used(&c), 5);
    // Still referenced elsewhere: no collapse.
    VmObject::collapse(&s);
    assert_eq!(s.chain_depth(), 2);
    release(base);
    // release() collapsed it: base page 0 was outside the window and base
    // page 1 was shadowed; both freed, pages 2 and 3 moved up.
    assert_eq!(s.chain_depth(), 1);
    assert_eq!(used(&c), 3);
    assert_eq!(s.resident_pages(), 3);
    s.verify().unwrap();
    assert_eq!(c.counters.collapses.load(Relaxed), 1);
    assert_eq!(c.live_objects(), 1);
}

#[test]
fn bypass_skips_a_fully_shadowed_backing_object() {
    let c = ctx(64);
    let a = VmObject::new_anon(&c, 2);
    a.resolve(0, true, |_| Ok(())).unwrap();
    let b = VmObject::new_shadow(a.clone(), 0, 2);
    b.resolve(0, true, |_| Ok(())).unwrap();
    let s = VmObject::new_shadow(b.clone(), 0, 2);
    s.resolve(0, true, |_| Ok(())).unwrap();
    assert_eq!(s.chain_depth(), 3);
    // b and a are referenced by us too, so no collapse; but s covers all b
    // has, and then all a has: it skips both and needs no backing at all.
    VmObject::collapse(&s);
    assert_eq!(s.chain_depth(), 1);
    assert_eq!(c.counters.bypasses.load(Relaxed), 2);
    s.verify().unwrap();
    b.verify().unwrap();
    assert_eq!(b.chain_depth(), 2, "b's own chain is untouched");
    drop((a, b, s));
    assert_eq!(used(&c), 0);
}

#[test]
fn copy_up_into_a_referenced_object_removes_stale_translations() {
    // FreeBSD CVE-2021-29626's shape: another map reads the backing page
    // through `top`; when `top` gets its own copy, that translation must go.
    let c = ctx(64);
    let base = VmObject::new_anon(&c, 1);
    let old = base.resolve(0, true, |_| Ok(())).unwrap().pa;
    let top = VmObject::new_shadow(base.clone(), 0, 1);
    let other_ref = top.clone();
    let pm = c.pmap();
    let p = pm.create().unwrap();
    pm.flush(
        pm.enter(p, VirtAddr(0x1000), old, VmProt::READ, false)
            .unwrap(),
    );
    let new = top.resolve(0, true, |_| Ok(())).unwrap();
    assert_eq!(new.how, Resolution::CopiedUp);
    assert!(
        pm.extract(p, VirtAddr(0x1000)).is_none(),
        "stale translation survived"
    );
    pm.flush(pm.remove(p, VaRange::round_out(0x1000, 1).unwrap()));
    pm.destroy(p);
    let _ = PmapId(0);
    drop((other_ref, top, base));
    assert_eq!(used(&c), 0);
}

#[test]
fn out_of_frames_changes_nothing() {
    let c = ctx(2);
    let o = VmObject::new_anon(&c, 4);
    o.resolve(0, true, |_| Ok(())).unwrap();
    o.resolve(1, true, |_| Ok(())).unwrap();
    assert_eq!(
        o.resolve(2, true, |_| Ok(())),
        Err(KernError::ResourceShortage)
    );
    assert_eq!(o.resident_pages(), 2);
    let s = VmObject::new_shadow(o.clone(), 0, 4);
    assert_eq!(
        s.resolve(0, true, |_| Ok(())),
        Err(KernError::ResourceShortage)
    );
    assert_eq!(s.resident_pages(), 0);
    s.verify().unwrap();
}

#[test]
fn long_chains_stay_short_when_released() {
    // fork -> child writes -> parent exits, a thousand times, at object level.
    let c = ctx(64);
    let mut cur = VmObject::new_anon(&c, 4);
    cur.resolve(0, true, |_| Ok(())).unwrap();
    let mut longest = 0;
    for g in 0..1000u64 {
        let child = VmObject::new_shadow(cur.clone(), 0, 4);
        child.resolve(g % 4, true, |_| Ok(())).unwrap();
        longest = longest.max(child.chain_depth());
        release(cur);
        cur = child;
        assert!(cur.chain_depth() <= 2);
    }
    assert!(longest <= 3, "longest chain {longest}");
    cur.verify().unwrap();
    drop(cur);
    assert_eq!(used(&c), 0);
    assert_eq!(c.live_objects(), 0);
}

#[test]
fn objects_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<VmObject>();
    check::<VmContext>();
}

#[test]
fn eager_copy_is_private() {
    let c = ctx(64);
    let base = VmObject::new_anon(&c, 4);
    let b0 = base.resolve(0, true, |_| Ok(())).unwrap().pa;
    write(&c, b0, 1);
    let shared = VmObject::new_shadow(base.clone(), 0, 4);
    let s1 = shared.resolve(1, true, |_| Ok(())).unwrap().pa;
    write(&c, s1, 2);
    let copy = shared.copy_eager(0, 4).unwrap();
    copy.verify().unwrap();
    assert_eq!(
        read(&c, copy.lookup(0).unwrap().pa),
        1,
        "from the common backing"
    );
    let c1 = copy.lookup(1).unwrap();
    assert_eq!((c1.depth, read(&c, c1.pa)), (0, 2));
    write(&c, s1, 3);
    assert_eq!(
        read(&c, c1.pa),
        2,
        "later writes to the shared object are not seen"
    );
    // Out of frames midway: nothing leaks.
    let before = used(&c);
    c.frames().fail_nth_allocation(1);
    assert_eq!(
        shared.copy_eager(0, 4).err(),
        Some(KernError::ResourceShortage)
    );
    assert_eq!(used(&c), before);
}

#[test]
fn a_failed_mapping_takes_the_new_page_out_again() {
    let c = ctx(16);
    let o = VmObject::new_anon(&c, 4);
    let err = o.resolve(1, true, |_| Err(KernError::ResourceShortage));
    assert_eq!(err, Err(KernError::ResourceShortage));
    assert_eq!(o.resident_pages(), 0);
    assert_eq!(used(&c), 0);
    // An existing page stays.
    o.resolve(2, true, |_| Ok(())).unwrap();
    assert!(o.resolve(2, false, |_| Err(KernError::Failure)).is_err());
    assert_eq!(o.resident_pages(), 1);
    o.verify().unwrap();
}

#[test]
fn page_bytes_are_read_and_written_under_the_lock() {
    let c = ctx(16);
    let base = VmObject::new_anon(&c, 2);
    base.resolve(0, true, |_| Ok(())).unwrap();
    assert!(base.write_page_bytes(0, 10, b"abc"));
    let s = VmObject::new_shadow(base.clone(), 0, 2);
    let mut buf = [0u8; 3];
    s.read_page_bytes(0, 10, &mut buf);
    assert_eq!(&buf, b"abc");
    assert!(
        !s.write_page_bytes(0, 10, b"xyz"),
        "not resident in the shadow itself"
    );
    s.read_page_bytes(1, 0, &mut buf);
    assert_eq!(buf, [0; 3]);
}

#[test]
fn discard_keeps_a_page_another_map_holds() {
    let c = ctx(32);
    let o = VmObject::new_anon(&c, 2);
    let pm = c.pmap();
    let (p1, p2) = (pm.create().unwrap(), pm.create().unwrap());
    let pa = o
        .resolve(0, true, |r| {
            pm.flush(pm.enter(p1, VirtAddr(0x1000), r.pa, VmProt::DEFAULT, false)?);
            Ok(())
        })
        .unwrap()
        .pa;
    // Another map got the page too.
    pm.flush(
        pm.enter(p2, VirtAddr(0x5000), pa, VmProt::DEFAULT, false)
            .unwrap(),
    );
    assert!(!o.discard_page(0), "held by another map: kept");
    assert_eq!(o.resident_pages(), 1);
    pm.flush(pm.remove(p2, VaRange::round_out(0x5000, 1).unwrap()));
    assert!(
        o.discard_page(0),
        "only the caller's own translation: taken out"
    );
    assert!(pm.extract(p1, VirtAddr(0x1000)).is_none());
    assert_eq!(used(&c), 0);
    pm.destroy(p1);
    pm.destroy(p2);
}
