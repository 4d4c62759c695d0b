//! The per-CPU GDT and TSS (with the IST stacks) and the shared IDT, as the
//! `x86_64` crate's [`GlobalDescriptorTable`], [`TaskStateSegment`] and
//! [`InterruptDescriptorTable`]. The IDT points at the `global_asm!` entry
//! stubs of `trap/mod.rs` (the `x86-interrupt` ABI is nightly-only).

use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, FS, GS, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;

use super::*;

/// IST slots (the crate counts from 0; the CPU's IST1 is slot 0).
const IST_DOUBLE_FAULT: u16 = 0;
const IST_NMI: u16 = 1;

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// A CPU's TSS and its GDT (null, kernel code, kernel data, TSS, user data,
/// user code: the order `STAR` needs), built once by the CPU itself at
/// bring-up and never changed after.
struct CpuTables {
    tss: spin::Once<TaskStateSegment>,
    gdt: spin::Once<GlobalDescriptorTable<7>>,
}

static TABLES: [CpuTables; MAX_CPUS] = [const {
    CpuTables {
        tss: spin::Once::new(),
        gdt: spin::Once::new(),
    }
}; MAX_CPUS];

const IST_STACK: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK]);

/// IST stacks: slot 0 (double fault) and 1 (NMI) for every CPU. Only the CPU
/// itself ever runs on them, and only through the TSS; Rust code never
/// takes a reference to them, only their addresses.
static mut IST_STACKS: [[IstStack; 2]; MAX_CPUS] =
    [const { [const { IstStack([0; IST_STACK]) }; 2] }; MAX_CPUS];

/// A CPU's trap stack: where every entry from ring 3 (interrupt, exception,
/// `syscall`) lands, through `TSS.RSP0` or the syscall stub.
pub(crate) const TRAP_STACK: usize = 128 * 1024;

#[repr(C, align(16))]
struct TrapStack([u8; TRAP_STACK]);

/// Trap stacks, one per CPU, used only by their CPU and only through their
/// top address; Rust never takes a reference to them.
static mut TRAP_STACKS: [TrapStack; MAX_CPUS] = [const { TrapStack([0; TRAP_STACK]) }; MAX_CPUS];

/// The top of CPU `cpu`'s trap stack (16-aligned).
pub(crate) fn trap_stack_top(cpu: usize) -> u64 {
    assert!(cpu < MAX_CPUS, "cpu {cpu} out of range");
    &raw mut TRAP_STACKS as u64 + ((cpu + 1) * TRAP_STACK) as u64
}

/// The entry stub of vector `v` (16 bytes each, from `machvm_isr_stubs`).
fn stub(v: u8) -> VirtAddr {
    VirtAddr::new(&raw const machvm_isr_stubs as u64 + 16 * u64::from(v))
}

/// Every vector the crate lets us set goes to its stub; the reserved
/// exception vectors (9, 15, 22..=27, 31), which the crate keeps private,
/// stay not-present: a CPU never raises them.
fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    macro_rules! to_stubs {
        ($($field:ident = $v:literal),* $(,)?) => {
            // SAFETY: each address is the stub of that vector, which pushes a
            // dummy error code exactly when the CPU does not (the list in
            // the stub table matches the exceptions with error codes), so
            // the common stub sees the same frame for every entry type.
            $( unsafe { idt.$field.set_handler_addr(stub($v)) }; )*
        };
    }
    to_stubs!(
        divide_error = 0,
        debug = 1,
        breakpoint = 3,
        overflow = 4,
        bound_range_exceeded = 5,
        invalid_opcode = 6,
        device_not_available = 7,
        invalid_tss = 10,
        segment_not_present = 11,
        stack_segment_fault = 12,
        general_protection_fault = 13,
        page_fault = 14,
        x87_floating_point = 16,
        alignment_check = 17,
        machine_check = 18,
        simd_floating_point = 19,
        virtualization = 20,
        cp_protection_exception = 21,
        hv_injection_exception = 28,
        vmm_communication_exception = 29,
        security_exception = 30,
    );
    // SAFETY: as above; the IST slots are set in every CPU's TSS
    // (`load_cpu_tables`) and used by nothing else.
    unsafe {
        idt.double_fault
            .set_handler_addr(stub(8))
            .set_stack_index(IST_DOUBLE_FAULT);
        idt.non_maskable_interrupt
            .set_handler_addr(stub(2))
            .set_stack_index(IST_NMI);
    }
    for (v, entry) in (32..=255).zip(idt.slice_mut(32..=255)) {
        // SAFETY: as above (no error code for any vector from 32 on).
        unsafe { entry.set_handler_addr(stub(v)) };
    }
    idt
}

/// Loads the shared IDT on this CPU, building it on first use (on the boot
/// CPU, after its GDT: the entries take the current CS).
pub(crate) fn load_idt() {
    IDT.call_once(build_idt).load();
}

/// Builds CPU `cpu`'s TSS and GDT and loads them (CS, data segments, TR).
/// Leaves FS and GS null: the per-CPU GS base is set afterwards.
pub(crate) fn load_cpu_tables(cpu: usize) {
    let t = &TABLES[cpu];
    let tss = t.tss.call_once(|| {
        // This CPU's pair of stacks (`cpu` is in range: `TABLES[cpu]` was).
        let pair = size_of::<[IstStack; 2]>() * cpu;
        let ist = &raw mut IST_STACKS as u64 + pair as u64;
        let mut tss = TaskStateSegment::new();
        for (slot, top) in [(IST_DOUBLE_FAULT, 1), (IST_NMI, 2)] {
            let end = ist + top * IST_STACK as u64;
            tss.interrupt_stack_table[usize::from(slot)] = VirtAddr::new(end);
        }
        tss.privilege_stack_table[0] = VirtAddr::new(trap_stack_top(cpu));
        tss
    });
    let gdt = t.gdt.call_once(|| {
        let mut gdt = GlobalDescriptorTable::empty();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        let udata = gdt.append(Descriptor::user_data_segment());
        let ucode = gdt.append(Descriptor::user_code_segment());
        assert_eq!(
            (code.0, data.0, tss.0, udata.0, ucode.0),
            (KERNEL_CS, KERNEL_DS, TSS_SEL, USER_DS, USER_CS),
            "GDT layout differs from the boot GDT's and STAR's"
        );
        gdt
    });
    gdt.load();
    let null = SegmentSelector(0);
    // SAFETY: the GDT just loaded has the boot GDT's code and data
    // descriptors at the same selectors, so reloading the segment
    // registers from it changes nothing the running code relies on; the TSS
    // descriptor is this CPU's own, loaded once (so not busy).
    unsafe {
        CS::set_reg(SegmentSelector(KERNEL_CS));
        DS::set_reg(SegmentSelector(KERNEL_DS));
        ES::set_reg(SegmentSelector(KERNEL_DS));
        SS::set_reg(SegmentSelector(KERNEL_DS));
        FS::set_reg(null);
        GS::set_reg(null);
        load_tss(SegmentSelector(TSS_SEL));
    }
}
