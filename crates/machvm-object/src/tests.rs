extern crate std;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use machvm_base::{KernError, PAGE_SIZE, PageIndex, PhysAddr, VmProt};
use machvm_frame::{FrameAllocator, FrameUse};
use machvm_pmap::{PmapId, VirtAddr};
use machvm_pmap_x86_64::X86Pmap;

use super::*;

const MAP: u64 = 7;
const DIRECT: Holder = Holder::Direct { map: MAP };
const NC: Holder = Holder::NeedsCopy { map: MAP };

fn ctx(frames: u64) -> Arc<VmContext> {
    let fa = Arc::new(FrameAllocator::hosted(frames * PAGE_SIZE).unwrap());
    let pm = Arc::new(X86Pmap::new(fa.clone(), Default::default()).unwrap());
    VmContext::new(fa, pm)
}

fn used(ctx: &VmContext) -> u64 {
    ctx.frames().frames_in_use(FrameUse::Object)
}

fn fill(o: &mut Objects<'_>, h: &Hold, page: u64, byte: u8) -> PhysAddr {
    let mut f = o.on_demand();
    let pa = o
        .resolve(h, PageIndex::new(page), true, &mut f, |_| Ok(()))
        .unwrap()
        .pa;
    drop(f);
    assert!(o.write(h, PageIndex::new(page), 0, &[byte; 8]));
    pa
}

fn byte(o: &Objects<'_>, h: &Hold, page: u64) -> u8 {
    let mut b = [0u8; 1];
    o.read(Some(h), PageIndex::new(page), 0, &mut b);
    b[0]
}

/// A copy-on-write `Copy` reference to `h`'s window (no eager copy: no
/// frame reserved).
fn copy_of(o: &mut Objects<'_>, h: &Hold) -> CowRef {
    let mut none = o.ctx.frames().reserve(0, FrameUse::Object).unwrap();
    o.cow_share(h, Holder::Copy, &mut none).unwrap()
}

fn resolve(o: &mut Objects<'_>, h: &Hold, page: u64, write: bool) -> Resolved {
    let mut f = o.on_demand();
    let r = o
        .resolve(h, PageIndex::new(page), write, &mut f, |_| Ok(()))
        .unwrap();
    drop(f);
    r
}

#[test]
fn zero_fill_then_resident() {
    let c = ctx(64);
    let mut o = c.objects();
    let h = o.create(8, DIRECT);
    assert_eq!(used(&c), 0, "an object costs no frame until touched");
    // A read maps the zero frame and adds no page.
    let r = resolve(&mut o, &h, 3, false);
    assert_eq!(r.how, Resolution::ZeroPage);
    assert_eq!(Some(r.pa), c.zero_frame());
    assert_eq!((used(&c), o.resident(&h)), (0, 0));
    assert_eq!(
        o.frames_to_resolve(Some(&h), PageIndex::new(0), 8, false),
        0
    );
    let r = resolve(&mut o, &h, 3, true);
    assert_eq!(r.how, Resolution::ZeroFilled);
    assert_eq!(
        resolve(&mut o, &h, 3, true),
        Resolved {
            pa: r.pa,
            how: Resolution::Resident
        }
    );
    let mut f = o.on_demand();
    assert_eq!(
        o.resolve(&h, PageIndex::new(8), false, &mut f, |_| Ok(())),
        Err(KernError::InvalidAddress)
    );
    drop(f);
    o.verify().unwrap();
    assert_eq!(c.counters.zero_fill_count.load(Relaxed), 1);
    o.release(h);
    assert_eq!(used(&c), 0);
    assert_eq!(o.g.live(), 0);
}

#[test]
fn sharers_zero_fill_on_read() {
    let c = ctx(64);
    let mut o = c.objects();
    let h = o.create(4, DIRECT);
    assert!(o.zero_mappable(&h));
    let sibling = o.share(&h, Holder::Direct { map: MAP + 1 });
    // A store through the sibling must reach this hold's readers at once.
    assert!(!o.zero_mappable(&h));
    assert_eq!(
        o.frames_to_resolve(Some(&h), PageIndex::new(0), 4, false),
        4
    );
    assert_eq!(resolve(&mut o, &h, 1, false).how, Resolution::ZeroFilled);
    o.verify().unwrap();
    o.release(sibling);
    o.release(h);
    assert_eq!(used(&c), 0);
}

#[test]
fn copy_on_write_through_a_shadow() {
    let c = ctx(64);
    let mut o = c.objects();
    let mut h = o.create(4, DIRECT);
    let p = fill(&mut o, &h, 1, 0xAA);
    let copy = copy_of(&mut o, &h);
    assert!(
        copy.write_protect,
        "the direct writer must lose WRITE in the pmap"
    );
    assert_eq!(o.holder(&h), NC);
    assert_eq!(
        resolve(&mut o, &h, 1, false),
        Resolved {
            pa: p,
            how: Resolution::Backing
        }
    );
    o.make_writable(&mut h, MAP);
    assert_ne!(
        h.object(),
        copy.hold.object(),
        "shared: a shadow goes on top"
    );
    let w = resolve(&mut o, &h, 1, true);
    assert_eq!(w.how, Resolution::CopiedUp);
    assert!(o.write(&h, PageIndex::new(1), 0, &[0xBB; 8]));
    assert_eq!(byte(&o, &copy.hold, 1), 0xAA, "the copy keeps the original");
    assert_eq!(byte(&o, &h, 1), 0xBB);
    assert_eq!(o.chain_depth(&h), 2);
    o.verify().unwrap();
    o.release(copy.hold);
    // The copy was the only other holder: the original page is unreachable
    // and goes, and the backing collapses into the shadow.
    assert_eq!(used(&c), 1);
    assert_eq!(o.chain_depth(&h), 1);
    o.verify().unwrap();
    o.release(h);
    assert_eq!((used(&c), o.g.live()), (0, 0));
}

#[test]
fn a_lone_copy_on_write_holder_takes_the_object_over() {
    let c = ctx(64);
    let mut o = c.objects();
    let mut h = o.create(4, DIRECT);
    fill(&mut o, &h, 0, 1);
    let copy = o.cow_share(&h, Holder::Copy, &mut o.on_demand()).unwrap();
    o.release(copy.hold);
    assert_eq!(o.holder(&h), NC);
    let obj = h.object();
    o.make_writable(&mut h, MAP);
    assert_eq!(
        (h.object(), o.holder(&h)),
        (obj, DIRECT),
        "no shadow, no copy"
    );
    assert_eq!(resolve(&mut o, &h, 0, true).how, Resolution::Resident);
    o.release(h);
}

/// A window `[a, b)` in pages.
fn w(a: u64, b: u64) -> (PageIndex, PageIndex) {
    (PageIndex::new(a), PageIndex::new(b))
}

#[test]
fn split_and_join_keep_the_window_exact() {
    let c = ctx(64);
    let mut o = c.objects();
    let h = o.create(10, DIRECT);
    let tail = o.split(&h, PageIndex::new(4));
    assert_eq!((o.window(&h), o.window(&tail)), (w(0, 4), w(4, 10)));
    let tail2 = o.split(&tail, PageIndex::new(3));
    assert_eq!(o.window(&tail2), w(7, 10));
    assert!(!o.can_join(&h, &tail2), "not contiguous");
    let tail2 = o.join(&h, tail2).unwrap_err();
    o.join(&h, tail).unwrap();
    o.join(&h, tail2).unwrap();
    assert_eq!(o.window(&h), w(0, 10));
    assert_eq!(o.holds_of_map(MAP), 1);
    o.verify().unwrap();
    o.release(h);
}

#[test]
fn pages_outside_every_window_are_freed_when_a_window_goes() {
    let c = ctx(64);
    let mut o = c.objects();
    let h = o.create(8, DIRECT);
    for p in 0..8 {
        fill(&mut o, &h, p, p as u8);
    }
    let tail = o.split(&h, PageIndex::new(2));
    let copy = o.cow_share(&h, Holder::Copy, &mut o.on_demand()).unwrap();
    o.release(tail);
    assert_eq!(used(&c), 2, "pages 2..8 nobody holds are freed at once");
    o.release(h);
    assert_eq!(used(&c), 2, "the copy still reaches pages 0 and 1");
    assert_eq!(byte(&o, &copy.hold, 1), 1);
    o.verify().unwrap();
    o.release(copy.hold);
    assert_eq!(used(&c), 0);
}

#[test]
fn a_shared_window_is_copied_eagerly() {
    let c = ctx(64);
    let mut o = c.objects();
    let h = o.create(4, DIRECT);
    let sib = o.share(&h, Holder::Direct { map: MAP + 1 });
    assert!(o.is_shared(&h) && o.is_shared(&sib));
    fill(&mut o, &h, 2, 9);
    assert_eq!(o.cow_frames(&h, PageIndex::new(0), 4), 1);
    assert_eq!(o.cow_frames(&h, PageIndex::new(0), 2), 0);
    let mut r = c.frames().reserve(1, FrameUse::Object).unwrap();
    let copy = o.cow_share(&h, Holder::Copy, &mut r).unwrap();
    assert_eq!(r.remaining(), 0);
    drop(r);
    assert!(!copy.write_protect);
    assert_eq!(o.holder(&h), DIRECT, "sharers keep writing the object");
    assert!(o.write(&sib, PageIndex::new(2), 0, &[5; 8]));
    assert_eq!((byte(&o, &h, 2), byte(&o, &copy.hold, 2)), (5, 9));
    o.verify().unwrap();
    o.release(sib);
    assert!(!o.is_shared(&h), "shared ends with the sibling");
    o.release(copy.hold);
    o.release(h);
    assert_eq!(used(&c), 0);
}

#[test]
fn copy_up_into_a_shared_object_removes_stale_translations() {
    let c = ctx(64);
    let pm = c.pmap();
    let (p1, p2) = (pm.create().unwrap(), pm.create().unwrap());
    let mut o = c.objects();
    let mut h = o.create(2, DIRECT);
    let old = fill(&mut o, &h, 0, 3);
    let copy = o.cow_share(&h, Holder::Copy, &mut o.on_demand()).unwrap();
    o.make_writable(&mut h, MAP);
    let sib = o.share(&h, Holder::Direct { map: MAP + 1 });
    // The sibling reads the page through the shared shadow: read-only.
    let r = resolve(&mut o, &sib, 0, false);
    assert_eq!((r.pa, r.how), (old, Resolution::Backing));
    let va = VirtAddr::new(0x1000);
    pm.flush(pm.enter(p2, va, old, VmProt::READ, false).unwrap());
    let mut f = o.on_demand();
    o.resolve(&h, PageIndex::new(0), true, &mut f, |r| {
        pm.flush(pm.enter(p1, va, r.pa, VmProt::DEFAULT, false)?);
        Ok(())
    })
    .unwrap();
    drop(f);
    assert_eq!(
        pm.extract(p2, va),
        None,
        "the sibling's stale translation is gone"
    );
    assert_eq!(byte(&o, &copy.hold, 0), 3);
    o.verify().unwrap();
    for h in [h, sib, copy.hold] {
        o.release(h);
    }
    drop(o);
    pm.destroy(p1);
    pm.destroy(p2);
    assert_eq!(used(&c), 0);
    let _ = PmapId(0);
}

#[test]
fn out_of_frames_changes_nothing() {
    let c = ctx(64);
    let mut o = c.objects();
    let h = o.create(4, DIRECT);
    c.frames().fail_nth_allocation(1);
    let mut f = o.on_demand();
    assert_eq!(
        o.resolve(&h, PageIndex::new(0), true, &mut f, |_| Ok(())),
        Err(KernError::ResourceShortage)
    );
    drop(f);
    assert_eq!(o.lookup(&h, PageIndex::new(0)), None);
    let mut f = o.on_demand();
    let r = o.resolve(&h, PageIndex::new(0), true, &mut f, |_| {
        Err(KernError::ResourceShortage)
    });
    drop(f);
    assert_eq!(r, Err(KernError::ResourceShortage));
    assert_eq!(
        (o.lookup(&h, PageIndex::new(0)), used(&c)),
        (None, 0),
        "a failed mapping takes the page out"
    );
    o.verify().unwrap();
    o.release(h);
}

#[test]
fn bypass_skips_a_covered_backing_object() {
    let c = ctx(64);
    let mut o = c.objects();
    let mut h = o.create(2, DIRECT);
    fill(&mut o, &h, 0, 1);
    let c1 = o.cow_share(&h, Holder::Copy, &mut o.on_demand()).unwrap();
    o.make_writable(&mut h, MAP);
    fill(&mut o, &h, 0, 2);
    assert_eq!(o.chain_depth(&h), 2);
    // The top now covers every page below it: shortening the chain (as
    // copy-in and fork do before they count) bypasses it.
    o.shorten_chain(&h);
    assert_eq!(o.chain_depth(&h), 1);
    let c2 = o.cow_share(&h, Holder::Copy, &mut o.on_demand()).unwrap();
    assert_eq!(c.counters.bypasses.load(Relaxed), 1);
    assert_eq!((byte(&o, &c1.hold, 0), byte(&o, &c2.hold, 0)), (1, 2));
    o.verify().unwrap();
    for x in [h, c1.hold, c2.hold] {
        o.release(x);
    }
    assert_eq!(used(&c), 0);
}

/// 20,000 live snapshots of pages written in turns: a chain 20,000 deep
/// (recursion over it would need megabytes of stack) that every walk
/// (lookup, resolve, verify, audit, release) crosses on a 256 KiB stack.
/// The façade's suite takes it to 100,000.
#[test]
fn a_deep_chain_on_a_small_stack() {
    let t = std::thread::Builder::new().stack_size(256 << 10).spawn(|| {
        const N: u64 = 20_000;
        let c = ctx(N + 64);
        let mut o = c.objects();
        let mut h = o.create(2, DIRECT);
        fill(&mut o, &h, 0, 0);
        fill(&mut o, &h, 1, 0);
        let mut snaps = Vec::new();
        for i in 0..N {
            snaps.push(
                o.cow_share(&h, Holder::Copy, &mut o.on_demand())
                    .unwrap()
                    .hold,
            );
            o.make_writable(&mut h, MAP);
            // Alternate pages, so no shadow ever covers the one below it.
            o.resolve(&h, PageIndex::new(i % 2), true, &mut o.on_demand(), |_| {
                Ok(())
            })
            .unwrap();
            drop(o);
            o = c.objects();
        }
        assert_eq!(o.chain_depth(&h), N as usize + 1);
        assert_eq!(o.lookup(&h, PageIndex::new(0)).unwrap().depth, 1);
        let mut a = VmAudit::default();
        o.audit_into(&mut a);
        assert_eq!(a.max_chain_depth, N + 1);
        assert_eq!(a.unreachable_pages, 0);
        o.verify().unwrap();
        o.release(h);
        // Oldest first: each release collapses one level.
        for s in snaps.drain(..N as usize / 2) {
            o.release(s);
        }
        // Then the rest newest first: each release destroys a top object.
        while let Some(s) = snaps.pop() {
            o.release(s);
        }
        assert_eq!((used(&c), o.g.live()), (0, 0));
    });
    t.unwrap().join().unwrap();
}

/// Breaks rules through the page metadata and the records, and checks
/// that `verify` names each.
#[test]
fn verify_names_broken_rules() {
    let c = ctx(64);
    let mut o = c.objects();
    let h = o.create(4, DIRECT);
    let pa = fill(&mut o, &h, 1, 7);
    o.verify().unwrap();
    // A resident page whose frame says another object owns it.
    let meta = c.frames().page(pa).unwrap();
    let (obj, off) = meta.owner();
    meta.set_owner(obj + 1000, off);
    assert_eq!(o.verify().unwrap_err().rule, ObjectRule::PagesOwned);
    meta.set_owner(obj, off);
    o.verify().unwrap();
    // A copy-on-write sharer of a window still written directly (what
    // `cow_share` never makes: it turns the writer copy-on-write first).
    let nc = o.share(&h, NC);
    assert_eq!(o.verify().unwrap_err().rule, ObjectRule::DirectExclusive);
    o.set_needs_copy(&h, MAP);
    o.verify().unwrap();
    o.release(nc);
    o.release(h);
    o.verify().unwrap();
    drop(o);
    assert_eq!(used(&c), 0);
}

/// Overwrites page `page` of `h` whole with `byte`.
fn overwrite(o: &mut Objects<'_>, h: &Hold, page: u64, byte: u8) -> Resolved {
    let mem = o.ctx.frames().mem();
    let mut f = o.on_demand();
    let mut produce = |_: &Objects<'_>, pa| mem.write(pa, &[byte; PAGE_SIZE as usize]);
    let r = o.resolve_overwrite(h, PageIndex::new(page), &mut f, &mut produce, |_| Ok(()));
    drop(f);
    r.unwrap()
}

#[test]
fn an_overwrite_produces_the_page_without_zeroing_or_copying() {
    let c = ctx(64);
    let mut o = c.objects();
    let mut h = o.create(4, DIRECT);
    // A frame left dirty on the free list: the next allocation gets it.
    let dirty = c.frames().alloc(FrameUse::Object).unwrap();
    c.frames().mem().write(dirty, &[0xEE; PAGE_SIZE as usize]);
    c.frames().free(dirty);
    let mem = c.frames().mem();
    let mut calls = 0;
    // Writes one byte: what the frame held before shows through the rest.
    let mut produce = |_: &Objects<'_>, pa: PhysAddr| {
        calls += 1;
        mem.write(pa, &[0x11]);
    };
    let mut f = o.on_demand();
    let r = o
        .resolve_overwrite(&h, PageIndex::new(2), &mut f, &mut produce, |_| Ok(()))
        .unwrap();
    drop(f);
    assert_eq!(calls, 1, "produce runs once");
    assert_eq!(r.how, Resolution::ZeroFilled);
    assert_eq!(r.pa, dirty, "the dirty frame was reused");
    let mut rest = [0u8; 2];
    o.read(Some(&h), PageIndex::new(2), 0, &mut rest);
    assert_eq!(
        rest,
        [0x11, 0xEE],
        "an overwrite does not zero the page first"
    );
    assert_eq!(c.counters.zero_fill_count.load(Relaxed), 1);

    // Through a copy-on-write hold: no copy-up, produce writes the page.
    let p = fill(&mut o, &h, 1, 0xAA);
    let copy = copy_of(&mut o, &h);
    o.make_writable(&mut h, MAP);
    let r = overwrite(&mut o, &h, 1, 0xBB);
    assert_eq!(r.how, Resolution::CopiedUp);
    assert_ne!(r.pa, p);
    assert_eq!(byte(&o, &copy.hold, 1), 0xAA, "the copy keeps the original");
    assert_eq!(byte(&o, &h, 1), 0xBB);
    // Resident in the top object now: produce writes it in place.
    let again = overwrite(&mut o, &h, 1, 0xCC);
    assert_eq!((again.pa, again.how), (r.pa, Resolution::Resident));
    assert_eq!(byte(&o, &h, 1), 0xCC);
    o.verify().unwrap();
    o.release(copy.hold);
    o.release(h);
    assert_eq!((used(&c), o.g.live()), (0, 0));
}

/// Regression (review of the one-lock claim): a store's shared-path fault
/// on a page already resident in the top object needs no frame, so it
/// resolves `Resident` even when the allocator has nothing to give.
#[test]
fn a_shared_store_to_a_resident_page_needs_no_frame() {
    let c = ctx(64);
    let h = {
        let mut o = c.objects();
        let h = o.create(8, DIRECT);
        fill(&mut o, &h, 3, 9);
        h
    };
    let before = used(&c);
    c.frames().fail_nth_allocation(1);
    let r = {
        let s = c.shared_objects();
        s.resolve(&h, PageIndex::new(3), true, |_| Ok(()))
            .map(|r| r.map(|r| r.how))
    };
    c.frames().fail_nth_allocation(0);
    assert_eq!(
        r,
        Ok(Some(Resolution::Resident)),
        "store to a resident page"
    );
    assert_eq!(used(&c), before);
    c.objects().release(h);
}

/// Regression (review of the one-lock claim): a store to a page already
/// copied up into the top object (the original still below, seen by a
/// copy) changes no structure and stays on the shared path.
#[test]
fn a_shared_store_to_a_copied_up_page_stays_shared() {
    let c = ctx(64);
    let (h, cp) = {
        let mut o = c.objects();
        let mut h = o.create(8, DIRECT);
        fill(&mut o, &h, 3, 9);
        let cp = copy_of(&mut o, &h);
        o.make_writable(&mut h, MAP);
        fill(&mut o, &h, 3, 10); // copy-up
        assert_eq!(o.lookup(&h, PageIndex::new(3)).unwrap().depth, 0);
        assert_eq!(byte(&o, &cp.hold, 3), 9);
        (h, cp)
    };
    let r = {
        let s = c.shared_objects();
        s.resolve(&h, PageIndex::new(3), true, |_| Ok(()))
            .map(|r| r.map(|r| r.how))
    };
    assert_eq!(r, Ok(Some(Resolution::Resident)));
    let mut o = c.objects();
    o.release(cp.hold);
    o.release(h);
}
