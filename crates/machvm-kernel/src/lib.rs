//! machvm's bare-metal x86_64 platform: boots under QEMU through the PVH
//! entry, runs in the higher half, and gives machvm a real MMU to drive.
//!
//! Everything here is compiled for `x86_64-unknown-none` only; on the host the
//! crate is empty so that workspace builds and tests are unaffected.
//!
//! Boot path: QEMU's PVH loader jumps to `machvm_pvh_start32` (`boot`) in
//! 32-bit protected mode; it builds the boot page tables, enables PAE, long
//! mode, NX and CR0.WP, and calls `kernel_main` in the higher half, which:
//! loads the boot CPU's GDT/TSS/IDT (`trap`, `smp`), copies the PVH start
//! info (`pvh`), drops the low identity map (`paging`), builds the heap
//! and machvm's frame allocator from the memory map (`mem`), brings up the
//! other CPUs (`smp`), then runs the test suite (`suite`) or, with
//! `-append demo`, the narrated demo (`demo`), and exits QEMU through
//! `isa-debug-exit` (`cpu::qemu_exit`).
//!
//! Hooks for machvm-backed tests:
//! - page faults: `trap::set_page_fault_hook`; accesses that may fault:
//!   `trap::probe_read_u8` and friends, `trap::copy_in` / `trap::copy_out`;
//! - address spaces: `paging::kernel_upper_half`, `paging::new_address_space`,
//!   `cpu::load_cr3`, `paging::kernel_pml4_pa`;
//! - CPUs: `smp::current_cpu`, `smp::run_on`, `smp::shootdown`;
//! - memory: `mem::frames` (a `FrameAllocator` over the direct map);
//! - machvm's locks: `locks::KernelLocks`, whose waits answer shootdowns,
//!   and the aliases (`locks::VmMap`, `locks::VmSystem`, …) of machvm's
//!   types over them;
//! - machvm itself: `vm` (the `Mmu` for machvm's x86_64 pmap, the
//!   machine's `VmSystem`, `vm::switch_to` to run a task map on a CPU, and
//!   the page-fault hook that calls `VmMap::fault`).
#![no_std]

#[cfg(target_os = "none")]
extern crate alloc;

/// Prints to the serial console.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

#[cfg(target_os = "none")]
pub mod acpi;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod demo;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod images;
#[cfg(target_os = "none")]
pub mod locks;
#[cfg(target_os = "none")]
pub mod mem;
#[cfg(target_os = "none")]
pub mod paging;
#[cfg(target_os = "none")]
pub mod proc;
#[cfg(target_os = "none")]
pub mod pvh;
#[cfg(target_os = "none")]
pub mod serial;
#[cfg(target_os = "none")]
mod shootdown;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod suite;
#[cfg(target_os = "none")]
pub mod timer;
#[cfg(target_os = "none")]
pub mod trap;
#[cfg(target_os = "none")]
pub mod vm;

#[cfg(target_os = "none")]
static BOOT_INFO: spin::Once<pvh::BootInfo> = spin::Once::new();

/// What the PVH loader passed (memory map, command line, RSDP).
#[cfg(target_os = "none")]
pub fn boot_info() -> &'static pvh::BootInfo {
    BOOT_INFO.get().expect("boot info not parsed yet")
}

/// The first Rust code, on the boot stack in the higher half, with
/// interrupts off and the boot page tables (identity + direct map + image).
#[cfg(target_os = "none")]
extern "C" fn kernel_main(start_info_pa: u64) -> ! {
    serial::init();
    smp::init_bsp();
    let info = BOOT_INFO.call_once(|| pvh::parse(start_info_pa));
    paging::drop_identity_map();
    mem::init(info);
    paging::init_kernel_half(smp::lapic_phys());
    smp::init_bsp_lapic();
    timer::calibrate();
    let low_ok = info
        .regions()
        .iter()
        .any(|r| r.kind == pvh::E820_RAM && r.start <= 0x8000 && r.end >= 0xA000);
    let aps = smp::start_aps(info.rsdp, low_ok);
    // Each CPU its own frame cache and counter lines.
    machvm::set_cpu_id(smp::current_cpu);
    let l = mem::layout();
    println!(
        "machvm-kernel: PVH boot, {} MiB RAM, {} CPU(s), {} free frames, cmdline {:?}",
        l.ram_total >> 20,
        1 + aps,
        mem::frames().free_frames(),
        info.cmdline()
    );
    for word in info.cmdline().split_ascii_whitespace() {
        if let Some(what) = word.strip_prefix("crash=") {
            crash(what);
        }
    }
    if info.has_arg("demo") {
        demo::run();
        cpu::qemu_exit(true)
    }
    let filter = info
        .cmdline()
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("filter="));
    let ok = suite::run(filter);
    cpu::qemu_exit(ok)
}

/// Deliberate crashes that check the failure paths (`-append crash=...`):
/// `double-fault` must report through the IST handler and fail the run;
/// `triple-fault` resets the machine, which the xtask must not count as a
/// pass (QEMU exits 0).
#[cfg(target_os = "none")]
fn crash(what: &str) {
    println!("crash={what}: deliberately crashing");
    match what {
        // An exception with an unmapped stack cannot be delivered: #DF.
        // SAFETY: deliberately fatal; nothing runs after it.
        "double-fault" => unsafe { core::arch::asm!("mov rsp, 0x1000", "ud2", options(noreturn)) },
        "triple-fault" => {
            use x86_64::structures::DescriptorTablePointer;
            let empty = DescriptorTablePointer {
                limit: 0,
                base: x86_64::VirtAddr::zero(),
            };
            // SAFETY: deliberately fatal: with an empty IDT the breakpoint
            // below cannot be delivered (#GP, then #DF, neither deliverable)
            // and the CPU shuts down.
            unsafe { x86_64::instructions::tables::lidt(&empty) };
            x86_64::instructions::interrupts::int3();
            unreachable!("the breakpoint did not triple-fault");
        }
        _ => println!("unknown crash {what:?}; ignored"),
    }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let cpu = smp::current_cpu_checked().map_or(-1, |c| c as i64);
    serial::print_fatal(format_args!("\n*** PANIC on cpu {cpu}: {info}\n"));
    cpu::qemu_exit(false)
}
