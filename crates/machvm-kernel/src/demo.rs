//! The narrated demo (`-append demo`, `cargo xtask qemu`): tells what the
//! platform did at boot, then shows machvm at work on the real MMU (task
//! maps, demand paging, `vm_map_copy`, copy-on-write, fork, shootdowns),
//! then as the memory system of ring-3 processes (`init`).
//! With `-append platform` (`cargo xtask qemu --append platform`) it also
//! shows the bare platform: traps, a stale TLB entry, a raw address space.
//!
//! Every chapter returns its one-line summary, printed after it; the demo
//! ends with the figures of the whole run ([`summary`]). Every number is a
//! measurement: machvm's statistics, the kernel's counters, a value read.
//!
//! Adding a chapter is one line in [`CHAPTERS`] or [`PLATFORM_CHAPTERS`].

mod summary;
mod tasks;
mod user;

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering::Relaxed;

use machvm_base::PhysAddr;
use machvm_frame::FrameUse;

use crate::mem::{self, frames};
use crate::paging::{self, pte};
use crate::{boot_info, cpu, heap, smp, trap};

/// A chapter: tells its story and returns its one-line summary.
pub type Chapter = fn() -> String;

/// The demo's chapters, told in order: `(title, narrator)`.
pub const CHAPTERS: &[(&str, Chapter)] = &[
    ("boot: from PVH to the higher half", boot),
    ("machvm takes the MMU: two task maps", tasks::setup),
    (
        "demand paging: every first touch is a page fault",
        tasks::demand,
    ),
    ("vm_map_copy A -> B: copy-on-write", tasks::copy),
    ("fork: share, copy, none", tasks::fork),
    ("a shootdown machvm asked for", tasks::shootdown),
    ("pageout: pages to the RAM disk and back", tasks::pageout),
    ("teardown", tasks::teardown),
    ("user mode: init and its processes", user::init),
];

/// The bare platform's chapters, told after [`CHAPTERS`] with `platform` on
/// the command line.
pub const PLATFORM_CHAPTERS: &[(&str, Chapter)] = &[
    ("page faults through the recovery path", faults),
    (
        "a translation cached on another CPU, and its shootdown",
        shootdown,
    ),
    ("an address space of its own", address_space),
];

/// Tells every chapter, then the figures of the whole run.
pub fn run() {
    let start = summary::Counters::now();
    println!();
    println!("machvm on x86_64 - the Mach VM system on a real MMU, narrated");
    println!("Each chapter ends with a line starting with `=>` that sums it up;");
    println!("every figure is read from machvm's statistics or the kernel's counters.");
    let platform = if boot_info().has_arg("platform") {
        PLATFORM_CHAPTERS
    } else {
        &[]
    };
    for (i, (title, tell)) in CHAPTERS.iter().chain(platform).enumerate() {
        println!();
        println!("== {}. {title} ==", i + 1);
        let line = tell();
        println!("=> {line}");
    }
    summary::closing(&start);
}

/// What a probe gave: the value, or the fault.
fn shown<T: core::fmt::LowerHex>(r: &Result<T, trap::PageFaultInfo>) -> String {
    match r {
        Ok(v) => format!("{v:#x}"),
        Err(e) => format!("{e}"),
    }
}

fn kind(k: u32) -> &'static str {
    match k {
        1 => "RAM",
        2 => "reserved",
        3 => "ACPI",
        4 => "ACPI NVS",
        5 => "bad",
        _ => "other",
    }
}

fn boot() -> String {
    let info = boot_info();
    let l = mem::layout();
    println!(
        "QEMU loaded the ELF at its physical addresses and entered the PVH note's 32-bit entry"
    );
    // The memory map in full only for the platform tour.
    let platform = info.has_arg("platform");
    println!(
        "with hvm_start_info at {:#x}; command line {:?}; {} memory-map regions, {} MiB RAM{}",
        info.start_info_pa,
        info.cmdline(),
        info.regions().len(),
        l.ram_total >> 20,
        if platform { ":" } else { "." }
    );
    for r in info.regions().iter().filter(|_| platform) {
        println!(
            "  [{:#012x}, {:#012x})  {:>8} KiB  {}",
            r.start,
            r.end,
            (r.end - r.start) >> 10,
            kind(r.kind)
        );
    }
    println!(
        "The 32-bit code built page tables, enabled PAE, long mode, NX and CR0.WP (CR0 {:#x}, EFER {:#x}).",
        cpu::read_cr0(),
        cpu::read_efer()
    );
    boot_layout(&l);
    let recovered = trap::fault_counts().1;
    // The kernel's physical address, taken as a virtual one (lower half).
    let low = trap::probe_read_u8(l.kernel.0);
    let recovered = trap::fault_counts().1 - recovered;
    println!(
        "identity map  dropped: a load from phys-as-virtual {:#x} now gives {}",
        l.kernel.0,
        trap::describe(&low)
    );
    boot_cpus();
    format!(
        "{} CPU(s) up, {} MiB of RAM: {} frames for machvm, a {} MiB heap; {} page fault caught by a probe",
        smp::cpu_count(),
        l.ram_total >> 20,
        frames().total_frames(),
        (l.heap.1 - l.heap.0) >> 20,
        recovered
    )
}

/// Where boot put the kernel, the direct map, the frames and the heap.
fn boot_layout(l: &mem::Layout) {
    println!(
        "kernel image  phys [{:#x}, {:#x}) runs at {:#x} (PML4[511])",
        l.kernel.0,
        l.kernel.1,
        paging::KERNEL_VMA + l.kernel.0
    );
    println!(
        "direct map    phys [0, {:#x}) at {:#x} (PML4[256], no-execute, 2 MiB pages)",
        l.ram_end,
        paging::DIRECT_MAP_BASE
    );
    println!(
        "frames        {} managed by machvm_frame::FrameAllocator, {} free",
        frames().total_frames(),
        frames().free_frames(),
    );
    let h = heap::stats();
    println!(
        "heap          {} MiB at phys {:#x}, run by the talc allocator: {} KiB in use in {} allocations",
        (l.heap.1 - l.heap.0) >> 20,
        l.heap.0,
        h.in_use >> 10,
        h.allocations
    );
}

/// The kernel half every address space shares, and the CPUs.
fn boot_cpus() {
    let upper = paging::kernel_upper_half();
    let present: alloc::vec::Vec<usize> = (0..256)
        .filter(|&i| upper[i] & pte::P != 0)
        .map(|i| i + 256)
        .collect();
    println!(
        "kernel half   PML4 entries {present:?} are copied into every address space; 0..256 belong to tasks"
    );
    print!("CPUs          {} online:", smp::cpu_count());
    for c in 0..smp::cpu_count() {
        print!(" cpu{c}=APIC {}", smp::apic_id_of(c));
    }
    println!(" (the others came up by INIT-SIPI-SIPI through a trampoline at 0x8000)");
}

/// A frame for the demo, filled with `fill`.
fn frame(fill: u8) -> u64 {
    let pa = frames().alloc(FrameUse::Kernel).expect("demo frame");
    frames().mem().write(pa, &[fill; 4096]);
    pa.as_u64()
}

fn map(va: u64, pa: u64, flags: u64) {
    // SAFETY: demo frames hold no Rust object; `va` is a fresh window page.
    unsafe { paging::map_4k(paging::kernel_pml4_pa(), va, pa, flags) }.expect("demo mapping");
}

fn unmap(va: u64, pa: u64) {
    // SAFETY: the demo's own mapping.
    unsafe { paging::unmap_4k(paging::kernel_pml4_pa(), va) };
    smp::shootdown(smp::all_cpus_mask(), Some(&[va]));
    frames().free(PhysAddr::new(pa));
}

fn faults() -> String {
    let (taken, recovered, _) = trap::fault_counts();
    let va = paging::alloc_window(2);
    let pa = frame(0x5A);
    map(va, pa, pte::NX);
    println!("map {va:#x} read-only to a frame of 0x5a bytes");
    println!(
        "  load  {va:#x} -> {}",
        trap::describe(&trap::probe_read_u8(va))
    );
    println!(
        "  store {va:#x} -> {}: the handler refused it and resumed at the probe's recovery point",
        trap::describe(&trap::probe_write_u8(va, 1))
    );
    let code = va + 4096;
    let ret = frame(0xC3);
    map(code, ret, pte::W | pte::NX);
    // SAFETY: the page holds only `ret` instructions.
    let nx = unsafe { trap::probe_exec(code) };
    println!(
        "map {code:#x} writable, no-execute, full of `ret`; call it -> {}",
        trap::describe(&nx)
    );
    unmap(code, ret);
    unmap(va, pa);
    let gone = trap::probe_read_u8(va);
    println!(
        "unmap both and shoot the TLBs down; load {va:#x} -> {}",
        trap::describe(&gone)
    );
    let (t, r, _) = trap::fault_counts();
    format!(
        "{} page faults taken, {} of them returned to a probe as an error; the kernel kept running",
        t - taken,
        r - recovered
    )
}

fn shootdown() -> String {
    if smp::cpu_count() < 2 {
        println!("(one CPU only: run with -smp 2)");
        return "skipped: one CPU".into();
    }
    let va = paging::alloc_window(1);
    let (a, b) = (frame(0xAA), frame(0xBB));
    map(va, a, pte::NX);
    let read = || smp::run_on(1, || trap::probe_read_u8(va));
    let first = read();
    println!(
        "cpu1 loads {va:#x} -> {} (the translation is now in cpu1's TLB)",
        trap::describe(&first)
    );
    paging::leaf_entry(paging::kernel_pml4_pa(), va)
        .expect("demo PTE")
        .store(b | pte::P | pte::NX, Relaxed);
    println!("cpu0 points the PTE at a frame of 0xbb bytes, invalidating nothing");
    let stale = read();
    println!(
        "cpu1 loads {va:#x} -> {} (stale: the TLB is real)",
        trap::describe(&stale)
    );
    let ipis = smp::ipis_taken(1);
    smp::shootdown(1 << 1, Some(&[va]));
    let ipis = smp::ipis_taken(1) - ipis;
    println!("cpu0 shootdown(cpu1, [{va:#x}]): {ipis} IPI, cpu1 ran invlpg");
    let fresh = read();
    println!("cpu1 loads {va:#x} -> {}", trap::describe(&fresh));
    unmap(va, b);
    frames().free(PhysAddr::new(a));
    let cached = if stale == first { "stale" } else { "fresh" };
    format!(
        "cpu1 read {}, then {} ({cached}) after the PTE changed behind its back, then {} after {ipis} shootdown IPI",
        shown(&first),
        shown(&stale),
        shown(&fresh)
    )
}

fn address_space() -> String {
    let free = frames().free_frames();
    let space = paging::new_address_space().expect("demo PML4");
    let va = 0x40_0000;
    let pa = frame(0x42);
    // SAFETY: the demo's frame, in the fresh PML4's lower half.
    unsafe { paging::map_4k(space, va, pa, pte::W | pte::U | pte::NX) }.expect("demo mapping");
    println!("new PML4 at {space:#x}: kernel half copied, user page {va:#x} mapped");
    println!(
        "  under the kernel CR3: load {va:#x} -> {}",
        trap::describe(&trap::probe_read_u8(va))
    );
    let kernel = paging::kernel_pml4_pa();
    // SAFETY: `space` carries the kernel half.
    unsafe { cpu::load_cr3(space) };
    let r = trap::probe_read_u8(va);
    // SAFETY: back to the kernel PML4.
    unsafe { cpu::load_cr3(kernel) };
    println!(
        "  after load_cr3({space:#x}): load {va:#x} -> {}; the kernel kept running",
        trap::describe(&r)
    );
    let taken = free - frames().free_frames();
    // SAFETY: no CPU uses `space` any more; the CR3 reload flushed it.
    unsafe { paging::free_address_space(space) };
    frames().free(PhysAddr::new(pa));
    println!("  back on the kernel CR3; the PML4 and its tables are freed");
    format!(
        "{taken} frames (PML4, page tables, the page) built a second address space; {} returned",
        frames().free_frames() + taken - free
    )
}
