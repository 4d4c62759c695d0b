//! Two CPUs: one map on both, local invalidation and remote shootdowns
//! after protect, deallocate, fork, copy-on-write and copies.

use super::*;

pub(super) fn same_map_on_two_cpus() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 8 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    vm::switch_to(other, Some(&map));
    for i in 0..8 {
        wr(other, a + i * PG, 0xE0 + i)?;
    }
    for i in 0..8 {
        ensure_eq!(
            rd(0, a + i * PG)?,
            0xE0 + i,
            "cpu 0 reads cpu {other}'s store"
        );
    }
    wr(0, a + 8, 0xAB)?;
    ensure_eq!(rd(other, a + 8)?, 0xAB, "cpu {other} reads cpu 0's store");
    let resolved = vm::fault_counts(other).resolved;
    ensure!(resolved > 0, "cpu {other} resolved no fault through machvm");
    check(&[&map])
}

/// Makes CPU `c` (running the map) cache a writable translation of `va`.
/// Call it last before the change under test: a TLB is a cache, and other
/// work (a fault's handling, a CR3 load) can evict the entry.
pub(super) fn cache_writable(c: usize, va: u64, v: u64) -> Result<(), String> {
    wr(c, va, v)?;
    ensure_eq!(rd(c, va)?, v, "cpu {c} reads its store");
    Ok(())
}

pub(super) fn tlb_protect_invalidates_local() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    cache_writable(0, a, 1)?;
    map.protect(a, PG, false, VmProt::READ)
        .ctx("protect READ")?;
    refused(
        0,
        trap::probe_write_u64(a, 2),
        a,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    ensure_eq!(rd(0, a)?, 1, "the page after the refused store");
    check(&[&map])
}

pub(super) fn tlb_deallocate_invalidates_local() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    cache_writable(0, a, 1)?;
    map.deallocate(a, PG).ctx("deallocate")?;
    refused(0, trap::probe_read_u64(a), a, 0, KernError::InvalidAddress)?;
    check(&[&map])
}

pub(super) fn tlb_clear_modify_rearms_dirty_bit() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    // A first store gives the page a frame of its own (a first load would
    // map the shared zero frame, which has no reverse map to read back).
    wr(0, a, 0)?;
    let pm = &vm::vm().pmap;
    let pa = pm
        .extract(map.pmap(), VirtAddr::new(a))
        .ok_or("no translation after the store")?
        .pa;
    pm.flush(pm.clear_modify(pa));
    pm.flush(pm.clear_reference(pa));
    ensure!(!pm.is_referenced(pa), "accessed bit after clear_reference");
    ensure_eq!(rd(0, a)?, 0, "a load");
    // The MMU sets the accessed and dirty bits; the pmap reads them back.
    ensure!(pm.is_referenced(pa), "accessed bit after a load");
    ensure!(!pm.is_modified(pa), "dirty bit after only a load");
    wr(0, a, 1)?;
    ensure!(pm.is_modified(pa), "dirty bit after a store");
    pm.flush(pm.clear_modify(pa));
    ensure!(!pm.is_modified(pa), "dirty bit after clear_modify");
    // Only if clear_modify's flush dropped the TLB entry (which caches the
    // dirty state) does the next store walk the tables and set it again.
    wr(0, a, 2)?;
    ensure!(
        pm.is_modified(pa),
        "dirty bit after a store following clear_modify (stale TLB entry?)"
    );
    check(&[&map])
}

pub(super) fn tlb_protect_shootdown_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&map));
    cache_writable(other, a, 1)?;
    // Shootdowns served (counted before the sender is released), not IPIs
    // taken: the target may serve one from its mailbox loop first.
    let served = smp::flushes_served(other);
    // cpu 0 does not run the map; only cpu `other` has the translation.
    map.protect(a, PG, false, VmProt::READ)
        .ctx("protect READ")?;
    ensure!(
        smp::flushes_served(other) > served,
        "protect sent no shootdown to cpu {other}"
    );
    refused(
        other,
        on(other, || trap::probe_write_u64(a, 2)),
        a,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    ensure_eq!(rd(other, a)?, 1, "the page after the refused store");
    check(&[&map])
}

pub(super) fn tlb_deallocate_shootdown_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 2 * PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&map));
    wr(other, a + PG, 2)?;
    // Touched last: the fault handling above may evict TLB entries.
    cache_writable(other, a, 1)?;
    map.deallocate(a, PG).ctx("deallocate")?;
    refused(
        other,
        on(other, || trap::probe_read_u64(a)),
        a,
        0,
        KernError::InvalidAddress,
    )?;
    ensure_eq!(rd(other, a + PG)?, 2, "the page left allocated");
    check(&[&map])
}

pub(super) fn tlb_fork_write_protects_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let parent = new_map()?;
    let a = parent.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&parent));
    cache_writable(other, a, 0x1111)?;
    // Forking write-protects the parent's pages: cpu `other` must lose its
    // writable translation, or its next store lands in the child too.
    let child = parent.fork().ctx("fork")?;
    vm::clear_last_fault(other);
    wr(other, a, 0x2222)?;
    let f = vm::last_fault(other);
    ensure!(
        f.is_some_and(|f| f.addr == a && f.code & pf::P != 0 && f.outcome == Outcome::Resolved),
        "the parent's store after fork should take a copy-on-write fault; the hook saw {f:?}"
    );
    vm::switch_to(0, Some(&child));
    ensure_eq!(
        rd(0, a)?,
        0x1111,
        "the child's page after the parent's store"
    );
    ensure_eq!(rd(other, a)?, 0x2222, "the parent's page");
    check(&[&parent, &child])
}

pub(super) fn tlb_cow_fault_shootdown_same_map() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (src, map) = (new_map()?, new_map()?);
    // Above SMALL_COPY_BYTES, so that the copy is copy-on-write.
    let len = 4 * PG;
    ensure!(len > SMALL_COPY_BYTES, "copy too small to be copy-on-write");
    let a = src.allocate(0, len, true).ctx("allocate")?;
    vm::switch_to(0, Some(&src));
    wr(0, a, 0x0DD)?;
    let d = 0x6000_0000;
    vm_map_copy(&map, &src, d, len, a, true, false).ctx("vm_map_copy")?;
    // Both CPUs run `map`; cpu `other` caches a read-only translation of
    // the page still shared with `src`.
    vm::switch_to(0, Some(&map));
    vm::switch_to(other, Some(&map));
    ensure_eq!(rd(other, d)?, 0x0DD, "cpu {other} reads the shared page");
    // cpu 0's store copies the page: the translation on cpu `other` must
    // follow, or it keeps reading the old frame.
    vm::clear_last_fault(0);
    wr(0, d, 0xEEE)?;
    let f = vm::last_fault(0);
    ensure!(
        f.is_some_and(|f| f.addr == d && f.code == pf::P | pf::W && f.outcome == Outcome::Resolved),
        "cpu 0's store should take a copy-on-write fault; the hook saw {f:?}"
    );
    ensure_eq!(
        rd(other, d)?,
        0xEEE,
        "cpu {other} after cpu 0's copy-on-write store"
    );
    vm::switch_to(0, Some(&src));
    ensure_eq!(rd(0, a)?, 0x0DD, "the source page");
    check(&[&src, &map])
}

/// `(resolved store fault at va on cpu c)`, or why not.
pub(super) fn resolved_store(c: usize, va: u64, what: &str) -> Result<(), String> {
    let f = vm::last_fault(c);
    ensure!(
        f.is_some_and(|f| f.addr == va
            && f.code & (pf::P | pf::W) == pf::P | pf::W
            && f.outcome == Outcome::Resolved),
        "{what} should take a copy-on-write fault on cpu {c}; the hook saw {f:?}"
    );
    Ok(())
}

pub(super) fn tlb_copy_write_protects_remote_source() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&src));
    for i in 1..4 {
        wr(other, a + i * PG, 0x30 + i)?;
    }
    cache_writable(other, a, 0x30)?;
    // Copy-in write-protects the source's translations, on cpu `other` too:
    // else its next store would change the copy.
    let d = 0x2000_0000;
    vm_map_copy(&dst, &src, d, 4 * PG, a, true, false).ctx("vm_map_copy")?;
    vm::clear_last_fault(other);
    wr(other, a, 0x3F)?;
    resolved_store(other, a, "the source's store after the copy")?;
    vm::switch_to(0, Some(&dst));
    ensure_eq!(rd(0, d)?, 0x30, "the copy after the source's store");
    check(&[&src, &dst])
}

pub(super) fn tlb_copy_overwrite_reaches_remote_destination() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (src, dst) = (new_map()?, new_map()?);
    let a = src.allocate(0, 4 * PG, true).ctx("allocate src")?;
    let d = dst.allocate(0, 4 * PG, true).ctx("allocate dst")?;
    vm::switch_to(0, Some(&src));
    for i in 0..4 {
        wr(0, a + i * PG, 0x40 + i)?;
    }
    vm::switch_to(other, Some(&dst));
    for i in 1..4 {
        wr(other, d + i * PG, 0xD0 + i)?;
    }
    cache_writable(other, d, 0xD0)?;
    // Overwriting replaces the destination's pages (copy-on-write): cpu
    // `other` must drop its translation of the old frame.
    vm_map_copy(&dst, &src, d, 4 * PG, a, false, false).ctx("vm_map_copy")?;
    ensure_eq!(rd(other, d)?, 0x40, "cpu {other} reads the copied page");
    vm::clear_last_fault(other);
    wr(other, d, 0x4F)?;
    resolved_store(other, d, "the destination's store")?;
    ensure_eq!(rd(0, a)?, 0x40, "the source after the destination's store");
    check(&[&src, &dst])
}

pub(super) fn tlb_share_copy_up_reaches_remote_sharer() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let (parent, third) = (new_map()?, new_map()?);
    let r = parent.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&parent));
    for i in 0..4 {
        wr(0, r + i * PG, 0x50 + i)?;
    }
    // A live snapshot leaves the region needs-copy; shared at fork, it gets
    // a shadow both maps write into, over pages the snapshot still sees.
    let snap = vm_read(&parent, r, 4 * PG).ctx("vm_read")?;
    parent
        .inherit(r, 4 * PG, VmInherit::Share)
        .ctx("inherit share")?;
    let child = parent.fork().ctx("fork")?;
    // Reloading CR3 empties cpu 0's TLB: only cpu `other`'s is under test.
    vm::switch_to(0, Some(&parent));
    vm::switch_to(other, Some(&child));
    ensure_eq!(rd(other, r)?, 0x50, "the child reads the shared page");
    // The parent's store copies the page up into the shared shadow; the
    // child's translation of the page below must go, on cpu `other`.
    vm::clear_last_fault(0);
    wr(0, r, 0x5F)?;
    resolved_store(0, r, "the parent's store")?;
    ensure_eq!(
        rd(other, r)?,
        0x5F,
        "the child on cpu {other} after the parent's store (Share)"
    );
    wr(other, r + PG, 0x6F)?;
    ensure_eq!(rd(0, r + PG)?, 0x6F, "the parent after the child's store");
    let at = snap
        .copyout(&third)
        .map_err(|(e, _)| format!("copyout: {e}"))?;
    vm::switch_to(0, Some(&third));
    ensure_eq!(
        [rd(0, at)?, rd(0, at + PG)?],
        [0x50, 0x51],
        "the snapshot taken before the stores"
    );
    check(&[&parent, &child, &third])
}

/// A wired range made read-only from cpu 0 stops taking stores on the cpu
/// running it (its wired translations are lowered and shot down like any
/// other), and made writable again takes them with no page fault (the
/// wired pages are entered again at once).
pub(super) fn tlb_protect_of_wired_pages_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 2 * PG, true).ctx("allocate")?;
    map.wire(a, 2 * PG, VmProt::READ | VmProt::WRITE)
        .ctx("wire")?;
    vm::switch_to(other, Some(&map));
    wr(other, a, 1)?;
    map.protect(a, 2 * PG, false, VmProt::READ)
        .ctx("protect READ")?;
    refused(
        other,
        on(other, || trap::probe_write_u64(a, 2)),
        a,
        pf::P | pf::W,
        KernError::ProtectionFailure,
    )?;
    map.protect(a, 2 * PG, false, VmProt::READ | VmProt::WRITE)
        .ctx("protect back")?;
    let taken = trap::fault_counts().0;
    wr(other, a + PG, 3)?;
    wr(other, a, 4)?;
    ensure_eq!(trap::fault_counts().0, taken, "page faults after raising");
    map.wire(a, 2 * PG, VmProt::NONE).ctx("unwire")?;
    check(&[&map])
}
