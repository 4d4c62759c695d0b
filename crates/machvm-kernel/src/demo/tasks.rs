//! The demo's machvm chapters: task maps made by machvm, run on the real
//! MMU, with every page fault and its resolution told as it happens.
//!
//! The chapters share two task maps, A and B (and a child C of A, forked in
//! the fork chapter), kept in [`STORY`] between chapters.

use alloc::format;
use alloc::string::{String, ToString};

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm::{VmInherit, VmProt, VmStatistics as Stats, vm_map_copy};

use crate::locks::{VmMap, VmSystem};
use machvm_base::VirtAddr;

use crate::mem::frames;
use crate::smp;
use crate::trap::{self, PageFaultInfo, pf};
use crate::vm::{self, Outcome};

/// A's text-like region (copied at fork), its shared region, its scratch
/// region (not inherited), and where B receives the copy.
const TEXT: u64 = 0x1000_0000;
const SHARED: u64 = 0x3000_0000;
const SCRATCH: u64 = 0x4000_0000;
const COPY: u64 = 0x2000_0000;
const PG: u64 = machvm::PAGE_SIZE;

struct Story {
    a: VmMap,
    b: VmMap,
    c: Option<VmMap>,
    free_at_start: u64,
}

static STORY: spin::Mutex<Option<Story>> = spin::Mutex::new(None);

/// The maps of the story so far: `(A, B, C)`.
fn maps() -> Option<(VmMap, VmMap, Option<VmMap>)> {
    let s = STORY.lock();
    s.as_ref().map(|s| (s.a.clone(), s.b.clone(), s.c.clone()))
}

fn sys() -> &'static VmSystem {
    &vm::vm().system
}

/// Prints a map's `vmmap` dump, indented, under a title.
fn vmmap(title: &str, map: &VmMap) {
    println!("  vmmap of {title}:");
    for line in map.to_string().lines() {
        println!("    {line}");
    }
}

fn code_words(code: u64) -> String {
    let kind = if code & pf::P != 0 {
        "present"
    } else {
        "not-present"
    };
    let access = if code & pf::I != 0 {
        "fetch"
    } else if code & pf::W != 0 {
        "write"
    } else {
        "read"
    };
    format!("{kind} {access}")
}

/// What one access came to, as [`touch`] tells it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    NoFault,
    ZeroFrame,
    ZeroFill,
    Copied,
    Resident,
    PagedIn,
    Refused,
    Other,
}

/// A chapter's accesses, counted by what they came to.
#[derive(Default)]
struct Tally {
    accesses: u64,
    faults: u64,
    seen: [u64; 8],
}

impl Tally {
    fn count(&self, s: Seen) -> u64 {
        self.seen[s as usize]
    }
}

impl core::fmt::Display for Tally {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} accesses, {} page faults", self.accesses, self.faults)?;
        let kinds = [
            (Seen::ZeroFill, "zero-filled"),
            (Seen::ZeroFrame, "mapped the shared zero frame"),
            (Seen::Copied, "copied on write"),
            (Seen::Resident, "mapped a resident page"),
            (Seen::PagedIn, "paged in from the RAM disk"),
            (Seen::Refused, "refused"),
            (Seen::Other, "other"),
        ];
        let mut sep = " (";
        for (kind, what) in kinds {
            if self.count(kind) > 0 {
                write!(f, "{sep}{} {what}", self.count(kind))?;
                sep = ", ";
            }
        }
        if sep == ", " {
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// Runs one load (`store == None`) or store on CPU `c`, tells what the MMU
/// did and what machvm made of any fault, and counts it in `t`. Returns
/// what the access gave.
fn touch(t: &mut Tally, c: usize, va: u64, store: Option<u64>) -> Result<u64, PageFaultInfo> {
    let before = sys().statistics();
    let taken = trap::fault_counts().0;
    vm::clear_last_fault(c);
    let r = smp::run_on(c, || match store {
        None => trap::probe_read_u64(va),
        Some(v) => trap::probe_write_u64(va, v).map(|()| v),
    });
    let after = sys().statistics();
    let faults = trap::fault_counts().0 - taken;
    let what = match (store, &r) {
        (None, Ok(v)) => format!("load  {va:#x} -> {v:#x}"),
        (Some(v), _) => format!("store {va:#x} <- {v:#x}"),
        (None, Err(_)) => format!("load  {va:#x}"),
    };
    let (seen, how) = explain(c, va, faults, &before, &after);
    t.accesses += 1;
    t.faults += faults;
    t.seen[seen as usize] += 1;
    println!("  cpu{c} {what}: {how}");
    r
}

/// What became of an access on CPU `c` that took `faults` page faults,
/// from the hook's record and machvm's statistics around it.
fn explain(c: usize, va: u64, faults: u64, before: &Stats, after: &Stats) -> (Seen, String) {
    let Some(f) = vm::last_fault(c) else {
        return match faults {
            0 => (Seen::NoFault, "no fault: the translation was there".into()),
            n => (Seen::Other, format!("{n} fault(s) machvm never saw")),
        };
    };
    let (seen, answer) = match f.outcome {
        Outcome::Resolved if after.cow_faults > before.cow_faults => (
            Seen::Copied,
            "machvm copied the page (copy-on-write)".to_string(),
        ),
        Outcome::Resolved if after.zero_fill_count > before.zero_fill_count => {
            (Seen::ZeroFill, "machvm zero-filled a frame".to_string())
        }
        Outcome::Resolved if after.pageins > before.pageins => (
            Seen::PagedIn,
            "machvm paged the page in from the RAM disk (one read, no zero-fill)".to_string(),
        ),
        Outcome::Resolved => match translation(c, va) {
            Some((pa, prot)) if Some(pa) == zero_frame() => (
                Seen::ZeroFrame,
                format!("machvm mapped the shared zero frame {pa:#x} {prot}, no frame taken"),
            ),
            Some((pa, prot)) => (
                Seen::Resident,
                format!("machvm mapped resident frame {pa:#x} {prot}"),
            ),
            None => (Seen::Other, "machvm resolved it".to_string()),
        },
        Outcome::Refused(e) => (Seen::Refused, format!("machvm refused: {}", e.name())),
        Outcome::NoMap | Outcome::Loop => (Seen::Other, format!("{:?}", f.outcome)),
    };
    (
        seen,
        format!("page fault ({}) -> {answer}", code_words(f.code)),
    )
}

/// The system's shared zero frame, as a physical address.
fn zero_frame() -> Option<u64> {
    sys().context().zero_frame().map(|pa| pa.as_u64())
}

/// The translation CPU `c`'s current map has for `va`: `(frame, rights)`.
fn translation(c: usize, va: u64) -> Option<(u64, VmProt)> {
    let map = vm::current_map(c)?;
    let t = sys()
        .context()
        .pmap()
        .extract(map.pmap(), VirtAddr::new(va & !(PG - 1)))?;
    Some((t.pa.as_u64(), t.prot))
}

/// A map's regions (`vm_region` from the bottom up): `(how many, bytes,
/// resident pages)`.
fn regions(map: &VmMap) -> (usize, u64, u64) {
    let (mut n, mut bytes, mut resident, mut addr) = (0, 0, 0, 0);
    while let Ok(r) = map.region(addr) {
        n += 1;
        bytes += r.size;
        resident += r.resident_pages;
        addr = r.start + r.size;
    }
    (n, bytes, resident)
}

fn run(c: usize, name: &str, map: &VmMap) {
    vm::switch_to(c, Some(map));
    println!(
        "cpu{c} runs {name}: pmap activated, CR3 = {:#x}",
        vm::root_of(map).unwrap_or(0)
    );
}

/// machvm takes over: the VM system, two task maps, their regions.
pub(super) fn setup() -> String {
    // Before the system exists (here, on first use): it takes frames too.
    let free_before = frames().free_frames();
    let s0 = sys().statistics();
    let free_at_start = s0.free_count;
    let (Ok(a), Ok(b)) = (sys().create_map(), sys().create_map()) else {
        println!("cannot create the task maps");
        return "failed: no task maps".into();
    };
    println!(
        "VmSystem::with_pager over the kernel's {} frames and a RAM-disk pager; X86Pmap roots copy PML4[256..512],",
        sys().statistics().total_pages
    );
    println!("its shootdowns go to KernelMmu::invalidate (IPIs); page faults go to vm_fault.");
    println!(
        "task A: pmap root {:#x}; task B: pmap root {:#x}",
        vm::root_of(&a).unwrap_or(0),
        vm::root_of(&b).unwrap_or(0)
    );
    let ok = a.allocate(TEXT, 4 * PG, false).is_ok()
        && a.allocate(SHARED, 2 * PG, false).is_ok()
        && a.allocate(SCRATCH, PG, false).is_ok()
        && a.inherit(SHARED, 2 * PG, VmInherit::Share).is_ok()
        && a.inherit(SCRATCH, PG, VmInherit::None).is_ok();
    if !ok {
        println!("allocating A's regions failed");
        return "failed: A's regions".into();
    }
    println!(
        "A allocates {TEXT:#x} (16 KiB), {SHARED:#x} (8 KiB, inherit share), {SCRATCH:#x} (4 KiB, inherit none)"
    );
    vmmap("A (no page yet: DEPTH 0, nothing resident)", &a);
    let (n, bytes, resident) = regions(&a);
    let zero = u64::from(zero_frame().is_some());
    let line = format!(
        "2 task maps; A has {n} regions ({} KiB), {resident} pages resident; machvm took {} frames: {} for page tables, {zero} shared zero frame",
        bytes >> 10,
        free_before - frames().free_frames(),
        sys().statistics().wire_count - s0.wire_count
    );
    *STORY.lock() = Some(Story {
        a,
        b,
        c: None,
        free_at_start,
    });
    line
}

/// Demand paging: a load of fresh memory maps the shared zero frame, the
/// first store zero-fills a frame of its own.
pub(super) fn demand() -> String {
    let Some((a, _, _)) = maps() else {
        return "skipped: no task maps".into();
    };
    let s0 = sys().statistics();
    let mut t = Tally::default();
    run(0, "A", &a);
    touch(&mut t, 0, TEXT, None).ok();
    touch(&mut t, 0, TEXT, Some(0xAAAA_0000)).ok();
    touch(&mut t, 0, TEXT + PG, Some(0xAAAA_0001)).ok();
    touch(&mut t, 0, SHARED, Some(0x5AAA_0000)).ok();
    touch(&mut t, 0, SCRATCH, Some(0x0AAA_0000)).ok();
    let s1 = sys().statistics();
    println!(
        "zero_fill_count {} -> {}, faults {} -> {}",
        s0.zero_fill_count, s1.zero_fill_count, s0.faults, s1.faults
    );
    format!(
        "{t}; frames taken: {} for pages, {} for page tables",
        s1.active_count - s0.active_count,
        s1.wire_count - s0.wire_count
    )
}

/// `vm_map_copy` from A to B: nothing copied until someone writes.
pub(super) fn copy() -> String {
    let Some((a, b, _)) = maps() else {
        return "skipped: no task maps".into();
    };
    let s0 = sys().statistics();
    if let Err(e) = vm_map_copy(&b, &a, COPY, 4 * PG, TEXT, true, false) {
        println!("vm_map_copy failed: {e}");
        return format!("failed: vm_map_copy: {e}");
    }
    let s1 = sys().statistics();
    println!(
        "vm_map_copy(B <- A, {COPY:#x} <- {TEXT:#x}, 16 KiB, dst_alloc): object pages {} -> {} (none copied)",
        s0.active_count, s1.active_count
    );
    let mut t = Tally::default();
    run(0, "B", &b);
    touch(&mut t, 0, COPY, None).ok();
    touch(&mut t, 0, COPY, Some(0xBBBB_0000)).ok();
    touch(&mut t, 0, COPY + PG, None).ok();
    run(0, "A", &a);
    touch(&mut t, 0, TEXT, None).ok();
    touch(&mut t, 0, TEXT + PG, Some(0xAAAA_0011)).ok();
    let s2 = sys().statistics();
    println!(
        "cow_faults {} -> {}; object pages {} -> {}: one copy per side that wrote",
        s0.cow_faults, s2.cow_faults, s1.active_count, s2.active_count
    );
    vmmap("B (needs-copy cleared where written)", &b);
    format!(
        "vm_map_copy copied {} pages up front; then {t}; object pages {} -> {}",
        s1.active_count - s0.active_count,
        s0.active_count,
        s2.active_count
    )
}

/// fork with the three inheritances.
pub(super) fn fork() -> String {
    let Some((a, _, _)) = maps() else {
        return "skipped: no task maps".into();
    };
    vmmap("A before fork", &a);
    let c = match a.fork() {
        Ok(c) => c,
        Err(e) => {
            println!("fork failed: {e}");
            return format!("failed: fork: {e}");
        }
    };
    vmmap(
        "C = fork(A): copy -> needs-copy, share -> same object, none -> absent",
        &c,
    );
    let mut t = Tally::default();
    run(0, "C", &c);
    touch(&mut t, 0, SHARED, Some(0x5CCC_0000)).ok();
    touch(&mut t, 0, TEXT, Some(0xCCCC_0000)).ok();
    touch(&mut t, 0, SCRATCH, None).ok();
    let other = if smp::cpu_count() > 1 { 1 } else { 0 };
    run(other, "A", &a);
    let shared = touch(&mut t, other, SHARED, None);
    let text = touch(&mut t, other, TEXT, None);
    vmmap("C after its stores", &c);
    let line = format!(
        "C inherited {} of A's {} regions; {t}; A then read {} from the shared page (C's store) and {} from its own copy",
        regions(&c).0,
        regions(&a).0,
        super::shown(&shared),
        super::shown(&text)
    );
    if let Some(s) = STORY.lock().as_mut() {
        s.c = Some(c);
    }
    line
}

/// A protect and a deallocate on cpu0 reach a translation cached on cpu1.
pub(super) fn shootdown() -> String {
    let Some((a, _, _)) = maps() else {
        return "skipped: no task maps".into();
    };
    if smp::cpu_count() < 2 {
        println!("(one CPU only: run with -smp 2)");
        return "skipped: one CPU".into();
    }
    let mut t = Tally::default();
    run(1, "A", &a);
    let va = TEXT + 2 * PG;
    touch(&mut t, 1, va, Some(0xAAAA_0002)).ok();
    touch(&mut t, 1, va, None).ok();
    let ipis = smp::ipis_taken(1);
    let ok = a.protect(va, PG, false, VmProt::READ).is_ok();
    let protect_ipis = smp::ipis_taken(1) - ipis;
    println!(
        "cpu0: A.protect({va:#x}, 4 KiB, r--) = {ok}; the pmap shot cpu1's TLB down ({protect_ipis} IPI)"
    );
    touch(&mut t, 1, va, Some(0xAAAA_0003)).ok();
    let ipis = smp::ipis_taken(1);
    let ok = a.deallocate(va, PG).is_ok();
    let dealloc_ipis = smp::ipis_taken(1) - ipis;
    println!("cpu0: A.deallocate({va:#x}, 4 KiB) = {ok} ({dealloc_ipis} IPI)");
    touch(&mut t, 1, va, None).ok();
    vmmap("A at the end (the hole at the third page)", &a);
    format!(
        "protect and deallocate on cpu0 reached cpu1's TLB with {} IPIs; cpu1: {t}",
        protect_ipis + dealloc_ipis
    )
}

/// Pageout: A's first pages go to the RAM disk, their translations with
/// them, and loads bring them back through page faults.
pub(super) fn pageout() -> String {
    let Some((a, _, _)) = maps() else {
        return "skipped: no task maps".into();
    };
    let mut t = Tally::default();
    run(0, "A", &a);
    let was = [TEXT, TEXT + PG].map(|va| touch(&mut t, 0, va, None).unwrap_or(0));
    let s0 = sys().statistics();
    let n = a.page_out(TEXT, 2 * PG).unwrap_or(0);
    println!(
        "cpu0: A.page_out({TEXT:#x}, 8 KiB) = {n}: written to the RAM disk, frames freed; translation of {TEXT:#x} now {:?}",
        translation(0, TEXT)
    );
    let now = [TEXT, TEXT + PG].map(|va| touch(&mut t, 0, va, None).unwrap_or(0));
    let s1 = sys().statistics();
    let same = if now == was {
        "the bytes stored before"
    } else {
        "NOT the bytes stored before"
    };
    println!(
        "pageouts {} -> {}, pageins {} -> {}, swap slots free {}",
        s0.pageouts, s1.pageouts, s0.pageins, s1.pageins, s1.swap_free_pages
    );
    format!(
        "{n} pages paged out and {} paged back in by page faults, holding {same}; cpu0: {t}",
        s1.pageins - s0.pageins
    )
}

static RETURNED: AtomicU64 = AtomicU64::new(0);

/// Frames the teardown chapter saw come back.
pub(super) fn frames_returned() -> u64 {
    RETURNED.load(Relaxed)
}

/// Every map goes; every frame comes back.
pub(super) fn teardown() -> String {
    let Some(story) = STORY.lock().take() else {
        return "skipped: no task maps".into();
    };
    vm::release_all();
    let before = sys().statistics().free_count;
    let Story {
        a,
        b,
        c,
        free_at_start,
    } = story;
    drop((a, b, c));
    let s = sys().statistics();
    RETURNED.store(s.free_count - before, Relaxed);
    println!(
        "every CPU back on the kernel CR3; A, B and C dropped: free frames {} -> {} (at the start: {})",
        before, s.free_count, free_at_start
    );
    let verdict = sys()
        .verify()
        .map_or_else(|e| e.to_string(), |()| "ok".into());
    let f = vm::fault_counts_all();
    println!(
        "VmSystem::verify: {verdict}; machvm resolved {} page faults and refused {}",
        f.resolved, f.refused
    );
    format!(
        "{} frames returned; free frames {} now, {} before the task maps existed; verify {verdict}",
        s.free_count - before,
        s.free_count,
        free_at_start
    )
}
