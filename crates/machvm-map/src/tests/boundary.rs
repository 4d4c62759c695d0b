//! The API boundary's primitives used alone, as a copy layer would.

use super::*;
use machvm_base::{VaRange, VmProt};

fn range(s: u64, e: u64) -> VaRange {
    VaRange::new(machvm_base::VirtAddr::new(s), machvm_base::VirtAddr::new(e)).unwrap()
}

/// A span of untouched memory, as `extract` makes of a hole-free
/// untouched entry of a map of `c`.
fn untouched(c: &VmContext, pages: u64) -> CowSpan {
    CowSpan {
        hold: None,
        pages,
        context: c.id(),
    }
}

#[test]
fn a_pair_of_one_map_is_one_guard() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let other = VmMap::new(&c).unwrap();
    let mut pair = MapPair::lock(&map, &map);
    assert!(pair.is_same_map());
    pair.dst()
        .insert_zero_fill(range(0x10000, 0x12000))
        .unwrap();
    pair.dst()
        .insert_zero_fill(range(0x12000, 0x13000))
        .unwrap();
    // Simplified with its neighbour: one entry.
    assert_eq!(pair.src().allocated(range(0, 0x20000)).count(), 1);
    drop(pair);
    // Two maps lock in id order whichever is the source.
    let mut pair = MapPair::lock(&other, &map);
    assert!(!pair.is_same_map());
    assert!(pair.src().map().same_map(&other));
    assert!(pair.dst().map().same_map(&map));
    let (s, d) = pair.both();
    assert!(s.map().same_map(&other) && d.map().same_map(&map));
    drop(pair);
    verified(&map);
}

#[test]
fn refused_primitives_change_nothing() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0x10000, 4 * P, false).unwrap();
    map.write_bytes(a, b"kept").unwrap();
    let mut g = map.lock();
    assert_eq!(
        g.insert_zero_fill(range(a + P, a + 6 * P)),
        Err(KernError::NoSpace)
    );
    assert_eq!(
        g.insert_zero_fill(range(0, P)),
        Err(KernError::InvalidAddress)
    );
    drop(g);
    let before = map.entry_count();
    let mut g = map.lock();
    let mut objs = c.objects();
    // A hole in the destination, an unaligned start, an end past the top:
    // refused whole.
    assert_eq!(
        g.replace(&mut objs, a + 3 * P, &[untouched(&c, 1), untouched(&c, 1)]),
        Err(KernError::InvalidArgument)
    );
    assert_eq!(
        g.replace(&mut objs, a + 1, &[untouched(&c, 1)]),
        Err(KernError::InvalidArgument)
    );
    assert_eq!(
        g.replace(&mut objs, !(P - 1), &[untouched(&c, 2)]),
        Err(KernError::InvalidArgument)
    );
    drop((objs, g));
    assert_eq!(map.entry_count(), before);
    let mut buf = [0u8; 4];
    map.read_bytes(a, &mut buf).unwrap();
    assert_eq!(&buf, b"kept");
    verified(&map);
}

#[test]
fn extract_then_replace_copies_and_keeps_the_destination_attributes() {
    let c = ctx(64);
    let (src, dst) = (VmMap::new(&c).unwrap(), VmMap::new(&c).unwrap());
    let a = src.allocate(0x10000, 2 * P, false).unwrap();
    src.write_bytes(a, b"snap").unwrap();
    let d = dst.allocate(0x40000, 2 * P, false).unwrap();
    dst.protect(d, 2 * P, false, VmProt::READ | VmProt::WRITE)
        .unwrap();
    dst.protect(d, 2 * P, true, VmProt::READ | VmProt::WRITE)
        .unwrap();
    {
        let mut pair = MapPair::lock(&src, &dst);
        let mut objs = c.objects();
        let mut frames = c
            .frames()
            .reserve(0, machvm_frame::FrameUse::Object)
            .unwrap();
        let spans = pair
            .src()
            .extract(&mut objs, range(a, a + 2 * P), &mut frames)
            .unwrap();
        pair.dst().replace(&mut objs, d, &spans).unwrap();
        for s in spans {
            objs.release(s.hold.unwrap());
        }
    }
    src.write_bytes(a, b"late").unwrap();
    let mut buf = [0u8; 4];
    dst.read_bytes(d, &mut buf).unwrap();
    assert_eq!(&buf, b"snap", "a snapshot, copy-on-write");
    let r = dst.region(d).unwrap();
    assert_eq!(r.max_protection, VmProt::READ | VmProt::WRITE);
    verified(&src);
    verified(&dst);
}

#[test]
fn replace_refuses_foreign_and_overflowing_spans_and_keeps_the_map_simplified() {
    let (c, other) = (ctx(64), ctx(64));
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0x10000, 3 * P, false).unwrap();
    let mut g = map.lock();
    let mut objs = c.objects();
    let foreign = untouched(&other, 1);
    assert_eq!(
        g.replace(&mut objs, a, &[foreign]),
        Err(KernError::InvalidArgument)
    );
    let huge = [untouched(&c, u64::MAX), untouched(&c, 1)];
    assert_eq!(
        g.replace(&mut objs, a, &huge),
        Err(KernError::InvalidArgument)
    );
    // One untouched page over the middle of untouched memory: the entries
    // clipped for it merge back.
    g.replace(&mut objs, a + P, &[untouched(&c, 1)]).unwrap();
    drop((objs, g));
    assert_eq!(map.entry_count(), 1);
    verified(&map);
}

#[test]
fn zero_fill_between_untouched_neighbours_is_one_entry() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    map.allocate(0x1000, P, false).unwrap();
    map.allocate(0x3000, P, false).unwrap();
    map.lock().insert_zero_fill(range(0x2000, 0x3000)).unwrap();
    assert_eq!(map.entry_count(), 1);
    verified(&map);
    // First fit knows [0x1000, 0x4000) is taken.
    assert_eq!(map.allocate(0, P, true), Ok(0x4000));
    // A neighbour with other attributes stays apart.
    map.protect(0x4000, P, false, VmProt::READ).unwrap();
    map.lock().insert_zero_fill(range(0x5000, 0x6000)).unwrap();
    assert_eq!(map.entry_count(), 3);
    verified(&map);
}
