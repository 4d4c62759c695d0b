//! Privileged x86_64 instructions: I/O ports, MSRs, control registers, the
//! TLB, the PIT delay and QEMU's `isa-debug-exit`. Control registers, the
//! TLB and the interrupt flag go through the `x86_64` crate.

use core::arch::asm;

use x86_64::instructions::{interrupts, tlb};
use x86_64::registers::control::{Cr0, Cr2, Cr3, Cr3Flags, Cr4};
use x86_64::registers::model_specific::Efer;
use x86_64::structures::paging::PhysFrame;

/// `IA32_EFER`.
pub const MSR_EFER: u32 = 0xC000_0080;
/// `IA32_GS_BASE`.
pub const MSR_GS_BASE: u32 = 0xC000_0101;
/// `IA32_APIC_BASE`.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// `EFER.NXE`: the NX bit of page-table entries is honoured.
pub const EFER_NXE: u64 = x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE.bits();
/// `CR0.WP`: ring 0 honours read-only pages.
pub const CR0_WP: u64 = x86_64::registers::control::Cr0Flags::WRITE_PROTECT.bits();

/// Writes a byte to an I/O port.
///
/// # Safety
/// The caller must own the device behind `port`; a write can reprogram
/// hardware in ways that break memory safety (DMA, interrupt routing).
#[inline]
pub unsafe fn outb(port: u16, val: u8) {
    // SAFETY: the caller owns the port (function contract).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reads can have device side effects.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller owns the port (function contract).
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline]
pub unsafe fn outl(port: u16, val: u32) {
    // SAFETY: the caller owns the port (function contract).
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a model-specific register.
///
/// # Safety
/// `msr` must exist on this CPU (else #GP).
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// `msr` must exist and the value must not break the kernel's assumptions
/// (paging mode, GS base of the per-CPU block, ...).
#[inline]
pub unsafe fn wrmsr(msr: u32, val: u64) {
    // SAFETY: the caller guarantees the write is sound.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32, options(nostack, preserves_flags))
    }
}

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
    while us > 0 {
        let chunk = us.min(50_000);
        us -= chunk;
        let count = (PIT_HZ * chunk / 1_000_000).clamp(1, 0xFFFF) as u16;
        // SAFETY: the kernel owns the PIT and port 0x61; channel 2 drives
        // only the (disabled) speaker.
        unsafe {
            let gate = inb(0x61);
            outb(0x61, (gate & !0x02) | 0x01);
            outb(0x43, 0xB0); // channel 2, lo/hi byte, mode 0
            outb(0x42, count as u8);
            outb(0x42, (count >> 8) as u8);
            while inb(0x61) & 0x20 == 0 {
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
    unsafe { outl(0xf4, code) };
    // Not under QEMU (or the device is missing): stop here.
    loop {
        // SAFETY: halting with interrupts off parks the CPU for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
