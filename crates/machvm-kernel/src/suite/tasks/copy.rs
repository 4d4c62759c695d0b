//! The copy family on the real MMU: `vm_map_copy`, `vm_copy`, `vm_read` /
//! `vm_write`, and copies into and of shared regions.

use super::*;

pub(super) fn vm_map_copy_is_copy_on_write() -> Result<(), String> {
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&src));
    for i in 0..4 {
        wr(0, a + i * PG, 0xA0 + i)?;
    }
    let s0 = stats();
    let d = 0x2000_0000;
    vm_map_copy(&dst, &src, d, 4 * PG, a, true, false).ctx("vm_map_copy")?;
    check(&[&src, &dst])?;
    let s1 = stats();
    ensure_eq!(
        s1.active_count,
        s0.active_count,
        "object pages after the copy"
    );
    // The destination reads the source's pages: still no copy.
    vm::switch_to(0, Some(&dst));
    for i in 0..4 {
        ensure_eq!(rd(0, d + i * PG)?, 0xA0 + i, "dst page {i}");
    }
    let s2 = stats();
    ensure_eq!(
        s2.active_count,
        s0.active_count,
        "object pages after reading"
    );
    ensure_eq!(
        s2.cow_faults,
        s0.cow_faults,
        "copy-on-write faults after reading"
    );
    // A store in the destination copies one page.
    wr(0, d, 0xD0)?;
    let s3 = stats();
    ensure_eq!(
        s3.cow_faults - s0.cow_faults,
        1,
        "cow faults after a dst store"
    );
    ensure_eq!(s3.active_count - s0.active_count, 1, "pages copied");
    ensure_eq!(rd(0, d)?, 0xD0, "dst page 0 after its store");
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a)?, 0xA0, "src page 0 after the dst store");
    // A store in the source copies too (the copy still shares page 1).
    wr(0, a + PG, 0x51)?;
    ensure_eq!(
        stats().cow_faults - s0.cow_faults,
        2,
        "cow faults after a src store"
    );
    vm::switch_to(0, Some(&dst));
    ensure_eq!(rd(0, d + PG)?, 0xA1, "dst page 1 after the src store");
    ensure_eq!(rd(0, d + 2 * PG)?, 0xA2, "dst page 2");
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a + PG)?, 0x51, "src page 1 after its store");
    check(&[&src, &dst])
}

pub(super) fn vm_map_copy_src_destroy() -> Result<(), String> {
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 5 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&src));
    for i in 0..5 {
        wr(0, a + i * PG + 8, 0xC0 + i)?;
    }
    let s0 = stats();
    let d = 0x3000_0000;
    // Four whole pages (copy-on-write path), moved rather than copied.
    vm_map_copy(&dst, &src, d, 4 * PG, a, true, true).ctx("vm_map_copy src_destroy")?;
    check(&[&src, &dst])?;
    ensure_eq!(
        stats().active_count,
        s0.active_count,
        "object pages after a move"
    );
    // The source range is gone, though this CPU had it cached.
    for i in 0..4 {
        let va = a + i * PG + 8;
        refused(
            0,
            trap::probe_read_u64(va),
            va,
            0,
            KernError::InvalidAddress,
        )?;
    }
    ensure_eq!(rd(0, a + 4 * PG + 8)?, 0xC4, "src page past the copy");
    vm::switch_to(0, Some(&dst));
    for i in 0..4 {
        ensure_eq!(rd(0, d + i * PG + 8)?, 0xC0 + i, "dst page {i}");
    }
    wr(0, d + 8, 0xDD)?;
    ensure_eq!(rd(0, d + 8)?, 0xDD, "dst store");
    vm::switch_to(0, Some(&src));
    wr(0, a + 4 * PG + 8, 0xEE)?;
    vm::switch_to(0, Some(&dst));
    ensure_eq!(
        rd(0, d + 3 * PG + 8)?,
        0xC3,
        "dst after the source's neighbour changed"
    );
    check(&[&src, &dst])
}

pub(super) fn vm_map_copy_dst_alloc() -> Result<(), String> {
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate")?;
    let data = pattern(3, 4 * PG as usize);
    vm::switch_to(0, Some(&src));
    fill(0, a, &data)?;
    // Without dst_alloc, an empty destination is a hole: nothing changes.
    let d = 0x4000_0000;
    ensure_eq!(
        vm_map_copy(&dst, &src, d, PG, a, false, false),
        Err(KernError::InvalidAddress),
        "copy into a hole without dst_alloc"
    );
    ensure_eq!(dst.entry_count(), 0, "dst entries after the refused copy");
    // Unaligned, at another page offset: allocated, bytes copied exactly.
    let (so, doff, len) = (0x10u64, 0x730u64, 5000u64);
    vm_map_copy(&dst, &src, d + doff, len, a + so, true, false).ctx("vm_map_copy dst_alloc")?;
    check(&[&src, &dst])?;
    let r = dst.region(d).ctx("dst region")?;
    ensure_eq!(
        (r.start, r.size),
        (d, 2 * PG),
        "dst region allocated around the copy"
    );
    vm::switch_to(0, Some(&dst));
    let got = dump(0, d, 2 * PG as usize)?;
    let mut want = vec![0u8; 2 * PG as usize];
    want[doff as usize..(doff + len) as usize]
        .copy_from_slice(&data[so as usize..(so + len) as usize]);
    same_bytes("dst after the unaligned copy", d, &got, &want)?;
    // Aligned whole pages onto the empty map: shared, not copied.
    let s0 = stats();
    let e = 0x5000_0000;
    vm_map_copy(&dst, &src, e, 3 * PG, a + PG, true, false).ctx("aligned dst_alloc")?;
    ensure_eq!(stats().active_count, s0.active_count, "object pages");
    let got = dump(0, e, 3 * PG as usize)?;
    same_bytes("aligned dst_alloc copy", e, &got, &data[PG as usize..])?;
    // Holes around an existing region: the holes are allocated, the region
    // overwritten; unless the region is read-only, when nothing changes.
    let f = 0x6000_0000;
    dst.allocate(f + PG, PG, false).ctx("allocate middle")?;
    dst.protect(f + PG, PG, false, VmProt::READ)
        .ctx("protect middle")?;
    let entries = dst.entry_count();
    ensure_eq!(
        vm_map_copy(&dst, &src, f, 3 * PG, a, true, false),
        Err(KernError::ProtectionFailure),
        "dst_alloc over a read-only region"
    );
    ensure_eq!(dst.entry_count(), entries, "entries after the refused copy");
    refused(0, trap::probe_read_u64(f), f, 0, KernError::InvalidAddress)?;
    dst.protect(f + PG, PG, false, VmProt::DEFAULT)
        .ctx("protect middle rw")?;
    vm_map_copy(&dst, &src, f, 3 * PG, a, true, false).ctx("dst_alloc around a region")?;
    let got = dump(0, f, 3 * PG as usize)?;
    same_bytes(
        "dst_alloc around a region",
        f,
        &got,
        &data[..3 * PG as usize],
    )?;
    check(&[&src, &dst])
}

pub(super) fn vm_copy_overlapping_is_memmove() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let n = 6 * PG as usize;
    let base = map.allocate(0, n as u64, true).ctx("allocate")?;
    let mut model = pattern(11, n);
    vm::switch_to(0, Some(&map));
    fill(0, base, &model)?;
    // (src offset, dst offset, length): forward and backward overlaps at
    // different page offsets, then at the same one (whole pages shared
    // copy-on-write with their own map), then a copy onto itself.
    let cases = [
        (123u64, 123 + 1500, 2 * PG + 777),
        (2 * PG + 333, 100, 2 * PG + 1000),
        (0x10, PG + 0x10, 3 * PG),
        (2 * PG, PG, 3 * PG),
        (PG + 5, PG + 5, 2 * PG),
    ];
    for (k, &(s, d, len)) in cases.iter().enumerate() {
        vm_copy(&map, base + s, len, base + d).ctx("vm_copy")?;
        model.copy_within(s as usize..(s + len) as usize, d as usize);
        check(&[&map])?;
        let got = dump(0, base, n)?;
        same_bytes(
            &format!("case {k} ({s:#x} -> {d:#x}, {len:#x})"),
            base,
            &got,
            &model,
        )?;
    }
    // Pages now shared within the map stay private on write.
    for p in 0..6u64 {
        let v = 0xF00D_0000 + p;
        wr(0, base + p * PG + 0x20, v)?;
        let at = (p * PG + 0x20) as usize;
        model[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    let got = dump(0, base, n)?;
    same_bytes("after a store in every page", base, &got, &model)?;
    check(&[&map])
}

pub(super) fn vm_read_copyout_vm_write() -> Result<(), String> {
    let _s = Session::new();
    let (a_map, b_map) = (new_map()?, new_map()?);
    let a = a_map.allocate(0, 4 * PG, true).ctx("allocate")?;
    let data = pattern(5, 4 * PG as usize);
    vm::switch_to(0, Some(&a_map));
    fill(0, a, &data)?;
    // A snapshot: stores after vm_read (head, middle and tail pages) do
    // not reach it.
    let copy = vm_read(&a_map, a + 104, 2 * PG).ctx("vm_read")?;
    for p in 0..3 {
        wr(0, a + p * PG + 200, 0xBAD)?;
    }
    let at = copy
        .copyout(&b_map)
        .map_err(|(e, _)| format!("copyout: {e}"))?;
    ensure_eq!(at % PG, 104, "copyout keeps the page offset");
    vm::switch_to(0, Some(&b_map));
    let page = at - 104;
    let got = dump(0, page, 3 * PG as usize)?;
    same_bytes(
        "copied out",
        at,
        &got[104..104 + 2 * PG as usize],
        &data[104..104 + 2 * PG as usize],
    )?;
    // Write B's bytes back over A, one page further on (overlapping).
    let back = vm_read(&b_map, at, 2 * PG).ctx("vm_read B")?;
    vm_write(&a_map, a + PG + 104, back).ctx("vm_write")?;
    check(&[&a_map, &b_map])?;
    vm::switch_to(0, Some(&a_map));
    let got = dump(0, a, 4 * PG as usize)?;
    let mut want = data.clone();
    for p in 0..3 {
        let at = (p * PG + 200) as usize;
        want[at..at + 8].copy_from_slice(&0xBADu64.to_le_bytes());
    }
    want[PG as usize + 104..3 * PG as usize + 104]
        .copy_from_slice(&data[104..104 + 2 * PG as usize]);
    same_bytes("A after vm_write", a, &got, &want)?;
    check(&[&a_map, &b_map])
}

pub(super) fn copy_into_shared_region_reaches_sharers() -> Result<(), String> {
    let _s = Session::new();
    let (parent, src) = (new_map()?, new_map()?);
    let r = parent.allocate(0, 4 * PG, true).ctx("allocate")?;
    parent
        .inherit(r, 4 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    vm::switch_to(0, Some(&parent));
    for i in 0..4 {
        wr(0, r + i * PG, 0x60 + i)?;
    }
    let child = parent.fork().ctx("fork")?;
    let a = src.allocate(0, 4 * PG, true).ctx("allocate src")?;
    vm::switch_to(0, Some(&src));
    for i in 0..4 {
        wr(0, a + i * PG, 0x70 + i)?;
    }
    vm::switch_to(0, Some(&child));
    ensure_eq!(rd(0, r)?, 0x60, "the child before the copy");
    // Whole pages copied into a region another map shares: the sharer
    // must see the copy (the pages are written, not replaced).
    vm_map_copy(&parent, &src, r, 4 * PG, a, false, false).ctx("vm_map_copy")?;
    for (who, m) in [("child", &child), ("parent", &parent)] {
        vm::switch_to(0, Some(m));
        for i in 0..4 {
            ensure_eq!(
                rd(0, r + i * PG)?,
                0x70 + i,
                "{who} page {i} after the copy"
            );
        }
    }
    wr(0, r, 0x7F)?;
    vm::switch_to(0, Some(&child));
    ensure_eq!(rd(0, r)?, 0x7F, "the child sees the parent's store");
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a)?, 0x70, "the source after the sharers' store");
    check(&[&parent, &child, &src])
}

pub(super) fn copy_of_shared_region_is_a_snapshot() -> Result<(), String> {
    let _s = Session::new();
    let (parent, dst) = (new_map()?, new_map()?);
    let r = parent.allocate(0, 4 * PG, true).ctx("allocate")?;
    parent
        .inherit(r, 4 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    vm::switch_to(0, Some(&parent));
    for i in 0..4 {
        wr(0, r + i * PG, 0x80 + i)?;
    }
    let child = parent.fork().ctx("fork")?;
    let d = 0x2000_0000;
    vm_map_copy(&dst, &parent, d, 4 * PG, r, true, false).ctx("vm_map_copy")?;
    // A sharer's store after the copy must not reach the copy.
    vm::switch_to(0, Some(&child));
    wr(0, r, 0x8F)?;
    vm::switch_to(0, Some(&dst));
    ensure_eq!(rd(0, d)?, 0x80, "the copy after a sharer's store");
    // The parent leaves; the child keeps the shared pages.
    vm::switch_to(0, Some(&child));
    parent.deallocate(r, 4 * PG).ctx("deallocate")?;
    check(&[&parent, &child, &dst])?;
    ensure_eq!(
        [rd(0, r)?, rd(0, r + PG)?, rd(0, r + 3 * PG)?],
        [0x8F, 0x81, 0x83],
        "the child after the parent deallocated the shared region"
    );
    check(&[&parent, &child, &dst])
}
