//! Privileged x86_64 instructions, all through the `x86_64` crate: control
//! registers, EFER, the TLB, the interrupt flag, `hlt`, and port I/O for
//! the PIT delay and QEMU's `isa-debug-exit`.

use x86_64::instructions::port::{Port, PortWriteOnly};
use x86_64::instructions::{hlt, interrupts, tlb};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr2, Cr3, Cr3Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Efer;
use x86_64::structures::paging::PhysFrame;

/// `EFER.NXE`: the NX bit of page-table entries is honoured.
pub const EFER_NXE: u64 = x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE.bits();
/// `CR0.WP`: ring 0 honours read-only pages.
pub const CR0_WP: u64 = x86_64::registers::control::Cr0Flags::WRITE_PROTECT.bits();

/// `CR0`.
#[inline]
pub fn read_cr0() -> u64 {
    Cr0::read_raw()
}

/// `CR2`: the linear address of the last page fault.
#[inline]
pub fn read_cr2() -> u64 {
    Cr2::read_raw()
}

/// `CR3`: physical address of the current PML4 (and PCD/PWT bits).
#[inline]
pub fn current_cr3() -> u64 {
    let (frame, flags) = Cr3::read_raw();
    frame.start_address().as_u64() | u64::from(flags)
}

/// `CR4`.
#[inline]
pub fn read_cr4() -> u64 {
    Cr4::read_raw()
}

/// `CR4.SMEP`: ring 0 cannot fetch instructions from user pages.
pub const CR4_SMEP: u64 = Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION.bits();
/// `CR4.SMAP`: ring 0 cannot touch user pages unless `RFLAGS.AC` is set.
pub const CR4_SMAP: u64 = Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION.bits();
/// `RFLAGS.AC`: with SMAP on, the kernel may touch user pages (`stac`).
pub const RFLAGS_AC: u64 = 1 << 18;

/// True when the CPU has SMEP and SMAP (CPUID leaf 7, EBX bits 7 and 20).
pub fn has_smep_smap() -> bool {
    // Leaf 0 gives the highest basic leaf, checked before leaf 7 is read.
    if core::arch::x86_64::__cpuid(0).eax < 7 {
        return false;
    }
    let ebx = core::arch::x86_64::__cpuid_count(7, 0).ebx;
    ebx & (1 << 7) != 0 && ebx & (1 << 20) != 0
}

/// Turns SMEP and SMAP on for this CPU. Ends the run (with a hint) on a CPU
/// without them: the user-access routines' `stac` would be undefined there.
pub fn enable_smep_smap() {
    if !has_smep_smap() {
        crate::serial::print_fatal(format_args!(
            "\n*** this CPU lacks SMEP/SMAP: run QEMU with -cpu qemu64,+smep,+smap\n"
        ));
        qemu_exit(false);
    }
    // SAFETY: the kernel's own pages never have the U bit (boot tables and
    // `paging` set it only in task maps), so neither bit stops kernel code.
    unsafe {
        Cr4::update(|f| {
            f.insert(
                Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION
                    | Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION,
            )
        })
    };
}

/// Makes every x87, MMX and SSE instruction fault on this CPU: CR0.EM and
/// MP set (x87 and MMX raise `#NM`), CR4.OSFXSR left clear (SSE raises
/// `#UD`). The kernel and its programs are soft-float and tasks have no
/// FPU state to switch, so a task that uses the FPU is killed rather than
/// left to read another task's registers.
pub fn deny_fpu() {
    // SAFETY: nothing in the kernel uses the FPU (the target is soft-float).
    unsafe {
        Cr0::update(|f| {
            f.insert(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::MONITOR_COPROCESSOR);
        })
    };
}

/// Runs `f` with SMEP off on this CPU (interrupts must be off, as in every
/// kernel path here), for the probe that executes task code on purpose.
pub(crate) fn without_smep<R>(f: impl FnOnce() -> R) -> R {
    let smep = Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION;
    let on = Cr4::read().contains(smep);
    // SAFETY: clearing SMEP only lets ring 0 fetch from user pages, which the
    // caller does on purpose; it is restored below.
    unsafe { Cr4::update(|c| c.remove(smep)) };
    let r = f();
    if on {
        // SAFETY: restores the bit cleared above.
        unsafe { Cr4::update(|c| c.insert(smep)) };
    }
    r
}

/// `IA32_EFER`.
#[inline]
pub fn read_efer() -> u64 {
    Efer::read_raw()
}

/// Switches this CPU to the address space whose PML4 is at physical
/// `pml4_pa`, flushing its non-global TLB entries.
///
/// # Safety
/// The PML4 must map the kernel half exactly as the kernel's own PML4 does
/// (entries 256..512 copied from [`crate::paging::kernel_upper_half`]), or
/// the kernel loses its code, stack and direct map.
#[inline]
pub unsafe fn load_cr3(pml4_pa: u64) {
    let frame = PhysFrame::containing_address(x86_64::PhysAddr::new_truncate(pml4_pa));
    // SAFETY: the caller guarantees the kernel half is present.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) }
}

/// Drops this CPU's TLB entry for the page holding `va` (`invlpg`).
#[inline]
pub fn invlpg(va: u64) {
    tlb::flush(x86_64::VirtAddr::new_truncate(va));
}

/// Flushes this CPU's non-global TLB entries by reloading `CR3`.
#[inline]
pub fn flush_tlb() {
    tlb::flush_all();
}

/// True when maskable interrupts are enabled on this CPU.
#[inline]
pub fn interrupts_enabled() -> bool {
    interrupts::are_enabled()
}

/// Busy-waits for about `us` microseconds on PIT channel 2 (gate through port
/// 0x61, speaker off), which QEMU clocks from virtual time.
pub fn pit_delay_us(mut us: u64) {
    const PIT_HZ: u64 = 1_193_182;
    let mut gate = Port::<u8>::new(0x61);
    let mut mode = PortWriteOnly::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    while us > 0 {
        let chunk = us.min(50_000);
        us -= chunk;
        let count = (PIT_HZ * chunk / 1_000_000).clamp(1, 0xFFFF) as u16;
        // SAFETY: the kernel owns the PIT and port 0x61; channel 2 drives
        // only the (disabled) speaker.
        unsafe {
            let g = gate.read();
            gate.write((g & !0x02) | 0x01);
            mode.write(0xB0); // channel 2, lo/hi byte, mode 0
            channel2.write(count as u8);
            channel2.write((count >> 8) as u8);
            while gate.read() & 0x20 == 0 {
                core::hint::spin_loop();
            }
        }
    }
}

/// Value written to `isa-debug-exit` for success: QEMU exits with 33.
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written to `isa-debug-exit` for failure: QEMU exits with 35.
pub const EXIT_FAILURE: u32 = 0x11;

/// Ends the QEMU run through `isa-debug-exit` (iobase 0xf4): status
/// `(value << 1) | 1`, so never 0 (a triple fault's status).
pub fn qemu_exit(success: bool) -> ! {
    let code = if success { EXIT_SUCCESS } else { EXIT_FAILURE };
    // SAFETY: port 0xf4 is QEMU's debug-exit device; writing ends the VM.
    unsafe { PortWriteOnly::<u32>::new(0xf4).write(code) };
    // Not under QEMU (or the device is missing): stop here for good.
    loop {
        interrupts::disable();
        hlt();
    }
}
