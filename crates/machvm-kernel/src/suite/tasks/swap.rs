//! Paging on the real MMU (SPEC §8): pages written by CPU stores go to the
//! RAM disk and come back through hardware page faults; a pageout on one
//! CPU removes the translation another CPU has cached (the shootdown
//! completes before the page is written out), so no store is lost.

use super::*;

/// A page stored to on CPU `c`, paged out, then loaded: the load takes a
/// hardware page fault that machvm resolves by paging the page in.
pub(super) fn paged_out_page_faults_back_in() -> Result<(), String> {
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, 4 * PG, true).ctx("allocate")?;
    vm::switch_to(0, Some(&map));
    for i in 0..4 {
        wr(0, a + i * PG + 8, 0x5EA0_0000 + i)?;
    }
    let before = stats();
    ensure_eq!(
        map.page_out(a, 4 * PG).ctx("page_out")?,
        4,
        "pages paged out"
    );
    ensure_eq!(sys().audit().paged_out_pages, 4, "paged-out pages");
    let pm = &vm::vm().pmap;
    ensure!(
        pm.extract(map.pmap(), VirtAddr::new(a)).is_none(),
        "a paged-out page keeps its translation"
    );
    let resolved = vm::fault_counts(0).resolved;
    for i in 0..4 {
        ensure_eq!(
            rd(0, a + i * PG + 8)?,
            0x5EA0_0000 + i,
            "page {i} paged back in"
        );
    }
    ensure_eq!(
        vm::fault_counts(0).resolved - resolved,
        4,
        "hardware faults resolved"
    );
    let after = stats();
    ensure_eq!(after.pageins - before.pageins, 4, "pageins");
    ensure_eq!(
        after.swap_free_pages,
        before.swap_free_pages,
        "every slot back"
    );
    check(&[&map])
}

/// CPU `other` runs the map and has a writable translation of the page in
/// its TLB; CPU 0 pages the page out. The pageout's shootdown reaches CPU
/// `other` before the page is written out, so its next access faults and
/// pages the page in, its last store intact.
pub(super) fn pageout_shoots_down_a_remote_tlb() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&map));
    cache_writable(other, a, 0xC0FF_EE00)?;
    let served = smp::flushes_served(other);
    ensure_eq!(map.page_out(a, PG).ctx("page_out")?, 1, "paged out");
    ensure!(
        smp::flushes_served(other) > served,
        "the pageout sent cpu {other} no shootdown"
    );
    vm::clear_last_fault(other);
    let pageins = stats().pageins;
    ensure_eq!(
        rd(other, a)?,
        0xC0FF_EE00,
        "the store made before the pageout"
    );
    let last = vm::last_fault(other);
    ensure!(
        last.is_some_and(|l| l.addr == a && l.outcome == Outcome::Resolved),
        "cpu {other} loaded through a stale translation (the hook saw {last:?})"
    );
    ensure_eq!(stats().pageins - pageins, 1, "pageins");
    check(&[&map])
}

/// Stores a counter this many times on one CPU while another pages the
/// page out as often.
const RACE_ROUNDS: u64 = 2000;

/// CPU `other` stores 1, 2, 3, … to one page, checking each, while CPU 0
/// pages that page out again and again: no store is lost (a store through
/// a TLB entry the pageout had not shot down would land in a frame already
/// written out and freed).
pub(super) fn stores_race_pageouts_on_another_cpu() -> Result<(), String> {
    let other = other_cpu()?;
    let _s = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PG, true).ctx("allocate")?;
    vm::switch_to(other, Some(&map));
    wr(other, a, 0)?;
    let pageouts = stats().pageouts;
    let errors = spin::Mutex::new(Vec::<String>::new());
    smp::run_everywhere(&|c| {
        let r = if c == 0 {
            (0..RACE_ROUNDS).try_for_each(|_| map.page_out(a, PG).map(|_| ()).ctx("page_out"))
        } else if c == other {
            store_counter(a)
        } else {
            Ok(())
        };
        if let Err(e) = r {
            errors.lock().push(format!("cpu {c}: {e}"));
        }
    });
    let errors = errors.into_inner();
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    ensure!(stats().pageouts > pageouts, "nothing was paged out");
    let mut b = [0u8; 8];
    map.read_bytes(a, &mut b).ctx("read_bytes")?;
    ensure_eq!(u64::from_le_bytes(b), RACE_ROUNDS, "the last store");
    check(&[&map])
}

/// The storing side of [`stores_race_pageouts_on_another_cpu`], on the CPU
/// running the map.
fn store_counter(a: u64) -> Result<(), String> {
    for k in 1..=RACE_ROUNDS {
        trap::probe_write_u64(a, k).map_err(|f| format!("store {k}: {f}"))?;
        let got = trap::probe_read_u64(a).map_err(|f| format!("load {k}: {f}"))?;
        ensure_eq!(got, k, "store {k} read back");
    }
    Ok(())
}

/// Frames left free while the pressure test runs: RAM for a third of what
/// it writes.
const FREE_UNDER_PRESSURE: u64 = 1024;
/// Pages the pressure test writes (12 MiB, within the 16 MiB RAM disk).
const PRESSURE_PAGES: u64 = 3072;

/// With all but 4 MiB of RAM taken by a balloon of kernel frames, 12 MiB
/// written by CPU stores pages out to the RAM disk and reads back exactly
/// (on the other CPU when there is one), through hardware faults.
pub(super) fn pressure_pages_to_the_ram_disk() -> Result<(), String> {
    let session = Session::new();
    let map = new_map()?;
    let a = map.allocate(0, PRESSURE_PAGES * PG, true).ctx("allocate")?;
    let balloon = Balloon::inflate(FREE_UNDER_PRESSURE);
    let before = stats();
    let reader = if smp::cpu_count() >= 2 { 1 } else { 0 };
    vm::switch_to(0, Some(&map));
    vm::switch_to(reader, Some(&map));
    let value = |p: u64| 0x9A9E_0000_0000 | p;
    on(0, || {
        (0..PRESSURE_PAGES)
            .try_for_each(|p| trap::probe_write_u64(a + p * PG + p % 512 * 8, value(p)))
    })
    .map_err(|f| format!("store: {f}"))?;
    let wrong = on(reader, || {
        (0..PRESSURE_PAGES)
            .find(|&p| trap::probe_read_u64(a + p * PG + p % 512 * 8) != Ok(value(p)))
    });
    ensure!(
        wrong.is_none(),
        "page {wrong:?} read back wrong on cpu {reader}"
    );
    let after = stats();
    drop(balloon);
    ensure!(
        after.pageouts - before.pageouts >= PRESSURE_PAGES - FREE_UNDER_PRESSURE,
        "paged out only {}",
        after.pageouts - before.pageouts
    );
    ensure!(after.pageins > before.pageins, "nothing paged in");
    check(&[&map])?;
    // The CPUs let go of the map, then the map goes: every slot comes back.
    drop((session, map));
    ensure_eq!(
        stats().swap_free_pages,
        before.swap_free_pages,
        "every slot back"
    );
    Ok(())
}

/// Kernel frames taken from machvm's allocator, given back on drop.
struct Balloon(Vec<machvm_base::PhysAddr>);

impl Balloon {
    /// Takes frames until `leave` are free.
    fn inflate(leave: u64) -> Balloon {
        let frames = crate::mem::frames();
        let mut held = Vec::new();
        while frames.free_frames() > leave {
            match frames.alloc(machvm::FrameUse::Kernel) {
                Ok(pa) => held.push(pa),
                Err(_) => break,
            }
        }
        Balloon(held)
    }
}

impl Drop for Balloon {
    fn drop(&mut self) {
        let frames = crate::mem::frames();
        self.0.drain(..).for_each(|pa| frames.free(pa));
    }
}
