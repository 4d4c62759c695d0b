//! The per-CPU GDT and TSS (with the IST stacks) and the shared IDT.

use super::*;

#[repr(C, align(16))]
struct Idt([AtomicU64; 512]);

static IDT: Idt = Idt([const { AtomicU64::new(0) }; 512]);

/// A CPU's GDT (null, code, data, TSS low, TSS high) and TSS (104 bytes as
/// 32-bit words, because its 64-bit fields are misaligned).
#[repr(C, align(16))]
struct CpuTables {
    gdt: [AtomicU64; 5],
    tss: [AtomicU32; 26],
}

static TABLES: [CpuTables; MAX_CPUS] = [const {
    CpuTables {
        gdt: [const { AtomicU64::new(0) }; 5],
        tss: [const { AtomicU32::new(0) }; 26],
    }
}; MAX_CPUS];

const IST_STACK: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK]);

/// IST stacks: index 1 (double fault) and 2 (NMI) for every CPU. Only the CPU
/// itself ever runs on them, and only through the TSS.
static mut IST_STACKS: [[IstStack; 2]; MAX_CPUS] =
    [const { [const { IstStack([0; IST_STACK]) }; 2] }; MAX_CPUS];

#[repr(C, packed)]
struct Dtr {
    limit: u16,
    base: u64,
}

/// Fills the IDT. Called once on the boot CPU before any CPU loads it.
pub(crate) fn init_idt() {
    let stubs = &raw const machvm_isr_stubs as u64;
    for v in 0..256u64 {
        let h = stubs + 16 * v;
        let ist = match v {
            8 => 1,
            2 => 2,
            _ => 0,
        };
        let lo = (h & 0xFFFF)
            | (u64::from(KERNEL_CS) << 16)
            | (ist << 32)
            | (0x8E << 40)
            | (((h >> 16) & 0xFFFF) << 48);
        IDT.0[2 * v as usize].store(lo, Relaxed);
        IDT.0[2 * v as usize + 1].store(h >> 32, Relaxed);
    }
}

/// Loads the shared IDT on this CPU.
pub(crate) fn load_idt() {
    let dtr = Dtr {
        limit: (size_of::<Idt>() - 1) as u16,
        base: &raw const IDT as u64,
    };
    // SAFETY: the IDT is static and fully initialised by `init_idt`.
    unsafe { asm!("lidt [{}]", in(reg) &dtr, options(readonly, nostack, preserves_flags)) }
}

/// Builds CPU `cpu`'s GDT and TSS and loads them (CS, data segments, TR).
/// Leaves FS and GS null: the per-CPU GS base is set afterwards.
pub(crate) fn load_cpu_tables(cpu: usize) {
    let t = &TABLES[cpu];
    t.gdt[0].store(0, Relaxed);
    t.gdt[1].store(0x00AF_9B00_0000_FFFF, Relaxed);
    t.gdt[2].store(0x00CF_9300_0000_FFFF, Relaxed);
    // SAFETY: only the address of this CPU's IST stacks is taken.
    let ist = unsafe { &raw mut IST_STACKS[cpu] };
    let ist1 = ist as u64 + IST_STACK as u64;
    let ist2 = ist as u64 + 2 * IST_STACK as u64;
    for (i, v) in [(9, ist1), (11, ist2)] {
        t.tss[i].store(v as u32, Relaxed);
        t.tss[i + 1].store((v >> 32) as u32, Relaxed);
    }
    t.tss[25].store(104 << 16, Relaxed); // I/O map base past the limit: no map
    let base = &raw const t.tss as u64;
    let limit = 103u64;
    let lo = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    t.gdt[3].store(lo, Relaxed);
    t.gdt[4].store(base >> 32, Relaxed);
    let dtr = Dtr {
        limit: (size_of::<[u64; 5]>() - 1) as u16,
        base: &raw const t.gdt as u64,
    };
    // SAFETY: the GDT above has the same code/data layout as the boot GDT;
    // the far return reloads CS from it, then the data segments and TR.
    unsafe {
        asm!(
            "lgdt [{dtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "mov fs, {zero:x}",
            "mov gs, {zero:x}",
            "ltr {tss:x}",
            dtr = in(reg) &dtr,
            cs = in(reg) u64::from(KERNEL_CS),
            tmp = out(reg) _,
            ds = in(reg) u64::from(KERNEL_DS),
            zero = in(reg) 0u64,
            tss = in(reg) u64::from(TSS_SEL),
        );
    }
}
