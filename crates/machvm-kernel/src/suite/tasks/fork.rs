//! fork by inheritance, generations outliving their parents, and every
//! frame back when the maps go.

use super::*;

pub(super) fn fork_share_copy_none() -> Result<(), String> {
    let _s = Session::new();
    let parent = new_map()?;
    let share = parent.allocate(0, 2 * PG, true).ctx("allocate share")?;
    let copy = parent.allocate(0, 2 * PG, true).ctx("allocate copy")?;
    let none = parent.allocate(0, 2 * PG, true).ctx("allocate none")?;
    parent
        .inherit(share, 2 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    parent
        .inherit(none, 2 * PG, VmInherit::None)
        .ctx("inherit none")?;
    vm::switch_to(0, Some(&parent));
    // Page 0 of each region touched before the fork, page 1 not.
    wr(0, share, 0x5A)?;
    wr(0, copy, 0xC0)?;
    wr(0, none, 0x70)?;
    let child = parent.fork().ctx("fork")?;
    check(&[&parent, &child])?;
    let s0 = stats();
    vm::switch_to(0, Some(&child));
    ensure_eq!(rd(0, share)?, 0x5A, "child reads the shared page");
    ensure_eq!(rd(0, copy)?, 0xC0, "child reads the copied page");
    refused(
        0,
        trap::probe_read_u64(none),
        none,
        0,
        KernError::InvalidAddress,
    )?;
    wr(0, share, 0x5B)?;
    wr(0, share + PG, 0x5C)?;
    wr(0, copy, 0xC1)?;
    wr(0, copy + PG, 0xC2)?;
    ensure_eq!(
        stats().cow_faults - s0.cow_faults,
        1,
        "cow faults: one for the child's store to the copied, touched page"
    );
    vm::switch_to(0, Some(&parent));
    ensure_eq!(rd(0, share)?, 0x5B, "parent sees the child's shared store");
    ensure_eq!(
        rd(0, share + PG)?,
        0x5C,
        "parent sees the child's first touch"
    );
    ensure_eq!(rd(0, copy)?, 0xC0, "parent keeps its copied page");
    ensure_eq!(rd(0, copy + PG)?, 0, "parent's untouched copied page");
    ensure_eq!(rd(0, none)?, 0x70, "parent keeps the none region");
    wr(0, share + 8, 0x5D)?;
    wr(0, copy + 8, 0xC3)?;
    vm::switch_to(0, Some(&child));
    ensure_eq!(
        rd(0, share + 8)?,
        0x5D,
        "child sees the parent's shared store"
    );
    ensure_eq!(
        rd(0, copy + 8)?,
        0,
        "child does not see the parent's copy store"
    );
    ensure_eq!(rd(0, copy)?, 0xC1, "child's copied page");
    check(&[&parent, &child])
}

pub(super) fn fork_generations_outlive_parents() -> Result<(), String> {
    let _s = Session::new();
    let g0 = new_map()?;
    let a = g0.allocate(0, 3 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&g0));
    for i in 0..3 {
        wr(0, a + i * PG, 0x10 + i)?;
    }
    let g1 = g0.fork().ctx("fork g1")?;
    vm::switch_to(0, Some(&g1));
    wr(0, a + PG, 0x21)?;
    let g2 = g1.fork().ctx("fork g2")?;
    vm::switch_to(0, Some(&g2));
    wr(0, a + 2 * PG, 0x32)?;
    check(&[&g0, &g1, &g2])?;
    // The grandparent goes first, then the parent: the youngest keeps
    // its view through whatever collapse that triggers.
    vm::switch_to(0, None);
    drop(g0);
    check(&[&g1, &g2])?;
    vm::switch_to(0, Some(&g1));
    let g1_view = [rd(0, a)?, rd(0, a + PG)?, rd(0, a + 2 * PG)?];
    ensure_eq!(g1_view, [0x10, 0x21, 0x12], "g1 after g0 went");
    vm::switch_to(0, None);
    drop(g1);
    check(&[&g2])?;
    vm::switch_to(0, Some(&g2));
    let g2_view = [rd(0, a)?, rd(0, a + PG)?, rd(0, a + 2 * PG)?];
    ensure_eq!(g2_view, [0x10, 0x21, 0x32], "g2 after g0 and g1 went");
    wr(0, a, 0x30)?;
    ensure_eq!(rd(0, a)?, 0x30, "g2 store");
    check(&[&g2])
}

pub(super) fn frames_return_when_maps_go() -> Result<(), String> {
    let s = Session::new();
    let free0 = stats().free_count;
    {
        let (a_map, b_map) = (new_map()?, new_map()?);
        let a = a_map.allocate(0, 32 * PG, true).ctx("allocate")?;
        a_map.inherit(a, 8 * PG, VmInherit::Share).ctx("inherit")?;
        vm::switch_to(0, Some(&a_map));
        for i in 0..32 {
            wr(0, a + i * PG, i)?;
        }
        let c = a_map.fork().ctx("fork")?;
        vm_map_copy(
            &b_map,
            &a_map,
            0x7000_0000,
            16 * PG,
            a + 4 * PG,
            true,
            false,
        )
        .ctx("vm_map_copy")?;
        vm::switch_to(0, Some(&b_map));
        for i in 0..16 {
            wr(0, 0x7000_0000 + i * PG + 8, i)?;
        }
        vm::switch_to(0, Some(&c));
        for i in 0..32 {
            ensure_eq!(rd(0, a + i * PG)?, i, "child page {i}");
            wr(0, a + i * PG + 16, i)?;
        }
        ensure!(stats().free_count < free0, "no frame used?");
        check(&[&a_map, &b_map, &c])?;
        vm::release_all();
    }
    drop(s);
    ensure_eq!(
        stats().free_count,
        free0,
        "free frames after every map went (leak: object pages or page tables)"
    );
    check(&[])
}
