//! The demo's machvm chapters: task maps made by machvm, run on the real
//! MMU, with every page fault and its resolution told as it happens.
//!
//! The chapters share two task maps, A and B (and a child C of A, forked in
//! the fork chapter), kept in [`STORY`] between chapters.

use alloc::format;
use alloc::string::{String, ToString};

use machvm::{VmInherit, VmProt, vm_map_copy};

use crate::locks::{VmMap, VmSystem};
use machvm_base::VirtAddr;

use crate::smp;
use crate::trap::{self, pf};
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

/// Runs one load (`store == None`) or store on CPU `c` and tells what the
/// MMU did and what machvm made of any fault.
fn touch(c: usize, va: u64, store: Option<u64>) {
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
        (Some(v), Ok(_)) => format!("store {va:#x} <- {v:#x}"),
        (None, Err(_)) => format!("load  {va:#x}"),
        (Some(v), Err(_)) => format!("store {va:#x} <- {v:#x}"),
    };
    let how = match vm::last_fault(c) {
        None if faults == 0 => "no fault: the translation was there".to_string(),
        None => format!("{faults} fault(s) machvm never saw"),
        Some(f) => {
            let answer = match f.outcome {
                Outcome::Resolved if after.cow_faults > before.cow_faults => {
                    "machvm copied the page (copy-on-write)".to_string()
                }
                Outcome::Resolved if after.zero_fill_count > before.zero_fill_count => {
                    "machvm zero-filled a frame".to_string()
                }
                Outcome::Resolved => match translation(c, va) {
                    Some((pa, prot)) if Some(pa) == zero_frame() => {
                        format!(
                            "machvm mapped the shared zero frame {pa:#x} {prot}, no frame taken"
                        )
                    }
                    Some((pa, prot)) => format!("machvm mapped resident frame {pa:#x} {prot}"),
                    None => "machvm resolved it".to_string(),
                },
                Outcome::Refused(e) => format!("machvm refused: {}", e.name()),
                Outcome::NoMap | Outcome::Loop => format!("{:?}", f.outcome),
            };
            format!("page fault ({}) -> {answer}", code_words(f.code))
        }
    };
    println!("  cpu{c} {what}: {how}");
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

fn run(c: usize, name: &str, map: &VmMap) {
    vm::switch_to(c, Some(map));
    println!(
        "cpu{c} runs {name}: pmap activated, CR3 = {:#x}",
        vm::root_of(map).unwrap_or(0)
    );
}

/// machvm takes over: the VM system, two task maps, their regions.
pub(super) fn setup() {
    let free_at_start = sys().statistics().free_count;
    let (Ok(a), Ok(b)) = (sys().create_map(), sys().create_map()) else {
        println!("cannot create the task maps");
        return;
    };
    println!(
        "VmSystem::with_pmap over the kernel's {} frames; X86Pmap roots copy PML4[256..512],",
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
        return;
    }
    println!(
        "A allocates {TEXT:#x} (16 KiB), {SHARED:#x} (8 KiB, inherit share), {SCRATCH:#x} (4 KiB, inherit none)"
    );
    vmmap("A (no page yet: DEPTH 0, nothing resident)", &a);
    *STORY.lock() = Some(Story {
        a,
        b,
        c: None,
        free_at_start,
    });
}

/// Demand paging: a load of fresh memory maps the shared zero frame, the
/// first store zero-fills a frame of its own.
pub(super) fn demand() {
    let Some((a, _, _)) = maps() else { return };
    let s0 = sys().statistics();
    run(0, "A", &a);
    touch(0, TEXT, None);
    touch(0, TEXT, Some(0xAAAA_0000));
    touch(0, TEXT + PG, Some(0xAAAA_0001));
    touch(0, SHARED, Some(0x5AAA_0000));
    touch(0, SCRATCH, Some(0x0AAA_0000));
    let s1 = sys().statistics();
    println!(
        "zero_fill_count {} -> {}, faults {} -> {}",
        s0.zero_fill_count, s1.zero_fill_count, s0.faults, s1.faults
    );
}

/// `vm_map_copy` from A to B: nothing copied until someone writes.
pub(super) fn copy() {
    let Some((a, b, _)) = maps() else { return };
    let s0 = sys().statistics();
    if let Err(e) = vm_map_copy(&b, &a, COPY, 4 * PG, TEXT, true, false) {
        println!("vm_map_copy failed: {e}");
        return;
    }
    let s1 = sys().statistics();
    println!(
        "vm_map_copy(B <- A, {COPY:#x} <- {TEXT:#x}, 16 KiB, dst_alloc): object pages {} -> {} (none copied)",
        s0.active_count, s1.active_count
    );
    run(0, "B", &b);
    touch(0, COPY, None);
    touch(0, COPY, Some(0xBBBB_0000));
    touch(0, COPY + PG, None);
    run(0, "A", &a);
    touch(0, TEXT, None);
    touch(0, TEXT + PG, Some(0xAAAA_0011));
    let s2 = sys().statistics();
    println!(
        "cow_faults {} -> {}; object pages {} -> {}: one copy per side that wrote",
        s0.cow_faults, s2.cow_faults, s1.active_count, s2.active_count
    );
    vmmap("B (needs-copy cleared where written)", &b);
}

/// fork with the three inheritances.
pub(super) fn fork() {
    let Some((a, _, _)) = maps() else { return };
    vmmap("A before fork", &a);
    let c = match a.fork() {
        Ok(c) => c,
        Err(e) => {
            println!("fork failed: {e}");
            return;
        }
    };
    vmmap(
        "C = fork(A): copy -> needs-copy, share -> same object, none -> absent",
        &c,
    );
    run(0, "C", &c);
    touch(0, SHARED, Some(0x5CCC_0000));
    touch(0, TEXT, Some(0xCCCC_0000));
    touch(0, SCRATCH, None);
    let other = if smp::cpu_count() > 1 { 1 } else { 0 };
    run(other, "A", &a);
    touch(other, SHARED, None);
    touch(other, TEXT, None);
    vmmap("C after its stores", &c);
    if let Some(s) = STORY.lock().as_mut() {
        s.c = Some(c);
    }
}

/// A protect and a deallocate on cpu0 reach a translation cached on cpu1.
pub(super) fn shootdown() {
    let Some((a, _, _)) = maps() else { return };
    if smp::cpu_count() < 2 {
        println!("(one CPU only: run with -smp 2)");
        return;
    }
    run(1, "A", &a);
    let va = TEXT + 2 * PG;
    touch(1, va, Some(0xAAAA_0002));
    touch(1, va, None);
    let ipis = smp::ipis_taken(1);
    let ok = a.protect(va, PG, false, VmProt::READ).is_ok();
    println!(
        "cpu0: A.protect({va:#x}, 4 KiB, r--) = {ok}; the pmap shot cpu1's TLB down ({} IPI)",
        smp::ipis_taken(1) - ipis
    );
    touch(1, va, Some(0xAAAA_0003));
    let ipis = smp::ipis_taken(1);
    let ok = a.deallocate(va, PG).is_ok();
    println!(
        "cpu0: A.deallocate({va:#x}, 4 KiB) = {ok} ({} IPI)",
        smp::ipis_taken(1) - ipis
    );
    touch(1, va, None);
    vmmap("A at the end (the hole at the third page)", &a);
}

/// Every map goes; every frame comes back.
pub(super) fn teardown() {
    let Some(story) = STORY.lock().take() else {
        return;
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
    println!(
        "every CPU back on the kernel CR3; A, B and C dropped: free frames {} -> {} (at the start: {})",
        before, s.free_count, free_at_start
    );
    let verdict = sys()
        .verify()
        .map_or_else(|e| e.to_string(), |()| "ok".into());
    let (resolved, refused) = (0..smp::cpu_count())
        .map(vm::fault_counts)
        .fold((0, 0), |(r, f), (a, b)| (r + a, f + b));
    println!(
        "VmSystem::verify: {verdict}; machvm resolved {resolved} page faults and refused {refused}"
    );
}
