//! Exceptions and interrupts: per-CPU GDT and TSS, the shared IDT, entry
//! stubs (`global_asm!`), the page-fault hook and the recovery probes.
//!
//! Every vector enters through a 16-byte stub that pushes a dummy error code
//! when the CPU does not, then the vector, then jumps to a common stub that
//! saves the general registers as a [`TrapFrame`] and calls [`trap_dispatch`].
//!
//! A page fault first goes to the registered hook ([`set_page_fault_hook`],
//! machvm's fault handler). If the hook resolves it, the instruction is
//! retried. If it refuses, and the faulting instruction is one of the probe
//! instructions ([`probe_read_u8`] and friends, like a kernel's `copyin`
//! exception table), the handler rewrites the saved RIP to the probe's
//! recovery point, which returns the fault (CR2, error code) to the caller.
//! Any other refused fault is fatal: a report, then a failing QEMU exit.
//! The double fault runs on its own stack (IST 1) and reports instead of
//! triple-faulting.

use alloc::string::String;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use machvm_base::USER_MAX;

use crate::cpu;
use crate::paging::WINDOW_BASE;
use crate::smp::{self, MAX_CPUS};

/// Vector of the cross-CPU call IPI.
pub const IPI_VECTOR: u8 = 0xF0;
/// Vector of the local APIC's spurious interrupt.
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// First vector of the (remapped, masked) legacy PIC.
pub const PIC_BASE: u8 = 0x20;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
const TSS_SEL: u16 = 0x18;

/// Page-fault error-code bits.
pub mod pf {
    /// The page was present (protection violation).
    pub const P: u64 = 1;
    /// The access was a write.
    pub const W: u64 = 1 << 1;
    /// The access came from ring 3.
    pub const U: u64 = 1 << 2;
    /// A reserved bit was set in a paging entry.
    pub const RSVD: u64 = 1 << 3;
    /// The access was an instruction fetch.
    pub const I: u64 = 1 << 4;
}

/// The registers saved on a trap, in stack order.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    .pushsection .text.machvm_isr, "ax", @progbits
    .p2align 4
    .global machvm_isr_stubs
machvm_isr_stubs:
    .set machvm_vec, 0
    .rept 256
    .p2align 4
    .if (machvm_vec == 8) || (machvm_vec == 10) || (machvm_vec == 11) || (machvm_vec == 12) || (machvm_vec == 13) || (machvm_vec == 14) || (machvm_vec == 17) || (machvm_vec == 21) || (machvm_vec == 29) || (machvm_vec == 30)
    .else
    pushq $0
    .endif
    pushq $machvm_vec
    jmp machvm_isr_common
    .set machvm_vec, machvm_vec + 1
    .endr

machvm_isr_common:
    push %r15
    push %r14
    push %r13
    push %r12
    push %r11
    push %r10
    push %r9
    push %r8
    push %rbp
    push %rdi
    push %rsi
    push %rdx
    push %rcx
    push %rbx
    push %rax
    mov %rsp, %rdi
    cld
    call {dispatch}
    pop %rax
    pop %rbx
    pop %rcx
    pop %rdx
    pop %rsi
    pop %rdi
    pop %rbp
    pop %r8
    pop %r9
    pop %r10
    pop %r11
    pop %r12
    pop %r13
    pop %r14
    pop %r15
    add $16, %rsp
    iretq
    .popsection
"#,
    dispatch = sym trap_dispatch,
    options(att_syntax)
);

// The probes: each faulting instruction is followed by its recovery point
// (the `ret`). On success rdx = 0 and rax = the value; on a refused fault
// the handler sets rax = CR2 and rdx = error code | bit 63, then resumes at
// the recovery point. `machvm_probe_exec` calls the target: a fetch fault
// there is recognised by the return address on the stack.
global_asm!(
    r#"
    .pushsection .text.machvm_probe, "ax", @progbits
    .global machvm_probe_read_u8
machvm_probe_read_u8:
    xor %eax, %eax
    xor %edx, %edx
.Lprobe_r8:
    movzbl (%rdi), %eax
.Lprobe_r8_fix:
    ret

    .global machvm_probe_read_u64
machvm_probe_read_u64:
    xor %eax, %eax
    xor %edx, %edx
.Lprobe_r64:
    mov (%rdi), %rax
.Lprobe_r64_fix:
    ret

    .global machvm_probe_write_u8
machvm_probe_write_u8:
    xor %eax, %eax
    xor %edx, %edx
.Lprobe_w8:
    mov %sil, (%rdi)
.Lprobe_w8_fix:
    ret

    .global machvm_probe_write_u64
machvm_probe_write_u64:
    xor %eax, %eax
    xor %edx, %edx
.Lprobe_w64:
    mov %rsi, (%rdi)
.Lprobe_w64_fix:
    ret

    .global machvm_probe_exec
machvm_probe_exec:
    xor %eax, %eax
    xor %edx, %edx
    call *%rdi
    .global machvm_probe_exec_ret
machvm_probe_exec_ret:
    ret
    .popsection

    .pushsection .rodata.machvm_probe_table, "a", @progbits
    .p2align 3
    .global machvm_probe_table
machvm_probe_table:
    .quad .Lprobe_r8, .Lprobe_r8_fix
    .quad .Lprobe_r64, .Lprobe_r64_fix
    .quad .Lprobe_w8, .Lprobe_w8_fix
    .quad .Lprobe_w64, .Lprobe_w64_fix
    .popsection
"#,
    options(att_syntax)
);

#[repr(C)]
struct RawProbe {
    value: u64,
    status: u64,
}

const PROBE_FAULT: u64 = 1 << 63;

unsafe extern "C" {
    static machvm_isr_stubs: u8;
    static machvm_probe_table: [[u64; 2]; 4];
    static machvm_probe_exec_ret: u8;
    fn machvm_probe_read_u8(addr: u64) -> RawProbe;
    fn machvm_probe_read_u64(addr: u64) -> RawProbe;
    fn machvm_probe_write_u8(addr: u64, val: u8) -> RawProbe;
    fn machvm_probe_write_u64(addr: u64, val: u64) -> RawProbe;
    fn machvm_probe_exec(addr: u64) -> RawProbe;
}

// ---------------------------------------------------------------- tables --

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

// ------------------------------------------------------------ dispatch --

const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 FP",
    "alignment check",
    "machine check",
    "SIMD FP",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

static PAGE_FAULTS: AtomicU64 = AtomicU64::new(0);
static RECOVERED: AtomicU64 = AtomicU64::new(0);
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);

extern "C" fn trap_dispatch(frame: *mut TrapFrame) {
    // SAFETY: the common stub passes its own stack frame, live until we
    // return, and nothing else refers to it.
    let f = unsafe { &mut *frame };
    match f.vector {
        14 => page_fault(f),
        8 => fatal(f, "double fault (on its IST stack)"),
        v if v < 32 => fatal(f, NAMES[v as usize]),
        v if v == u64::from(IPI_VECTOR) => {
            smp::handle_ipi();
            smp::lapic_eoi();
        }
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v if (u64::from(PIC_BASE)..u64::from(PIC_BASE) + 16).contains(&v) => {
            // Masked legacy PIC: only spurious IRQ 7/15 can arrive; no EOI.
            UNEXPECTED.fetch_add(1, Relaxed);
        }
        _ => {
            UNEXPECTED.fetch_add(1, Relaxed);
            smp::lapic_eoi();
        }
    }
}

fn page_fault(f: &mut TrapFrame) {
    let cr2 = cpu::read_cr2();
    let err = f.error_code;
    PAGE_FAULTS.fetch_add(1, Relaxed);
    if page_fault_hook().is_some_and(|hook| hook(cr2, err)) {
        return;
    }
    if recover(f, cr2, err) {
        RECOVERED.fetch_add(1, Relaxed);
        return;
    }
    fatal(f, "page fault not resolved by the hook, outside a probe");
}

/// Sends a refused fault inside a probe to the probe's recovery point.
fn recover(f: &mut TrapFrame, cr2: u64, err: u64) -> bool {
    // SAFETY: a static table written by the assembler.
    let table = unsafe { &machvm_probe_table };
    for &[insn, fixup] in table {
        if f.rip == insn {
            f.rip = fixup;
            f.rax = cr2;
            f.rdx = err | PROBE_FAULT;
            return true;
        }
    }
    let exec_ret = &raw const machvm_probe_exec_ret as u64;
    if err & pf::I != 0 && f.rip == cr2 {
        // SAFETY: a fetch fault right after `call` leaves the return address
        // on the (kernel) stack the call pushed it to.
        let ret = unsafe { (f.rsp as *const u64).read() };
        if ret == exec_ret {
            f.rsp += 8;
            f.rip = exec_ret;
            f.rax = cr2;
            f.rdx = err | PROBE_FAULT;
            return true;
        }
    }
    false
}

fn fatal(f: &TrapFrame, what: &str) -> ! {
    let cr2 = cpu::read_cr2();
    crate::serial::print_fatal(format_args!(
        "\n*** FATAL on cpu {}: vector {} ({what}), error {:#x}\n    rip {:#018x} rsp {:#018x} rflags {:#x} cs {:#x}\n    cr2 {:#018x} cr3 {:#x}\n    rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}\n    rsi {:#x} rdi {:#x} rbp {:#x}\n",
        smp::current_cpu_checked().map_or(-1, |c| c as i64),
        f.vector,
        f.error_code,
        f.rip,
        f.rsp,
        f.rflags,
        f.cs,
        cr2,
        cpu::current_cr3(),
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
    ));
    cpu::qemu_exit(false)
}

// --------------------------------------------------------------- hooks --

/// machvm's page-fault entry: `(cr2, error code) -> resolved?`. Runs in the
/// trap handler with interrupts off on the faulting CPU; `true` retries the
/// faulting instruction, `false` refuses (recovery or fatal).
pub type PageFaultHook = fn(cr2: u64, err: u64) -> bool;

static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs `hook` (or removes it with `None`) for all CPUs, returning the
/// previous one.
pub fn set_page_fault_hook(hook: Option<PageFaultHook>) -> Option<PageFaultHook> {
    let old = HOOK.swap(hook.map_or(0, |h| h as usize), Relaxed);
    // SAFETY: non-zero values stored in HOOK are always `PageFaultHook`s.
    (old != 0).then(|| unsafe { core::mem::transmute::<usize, PageFaultHook>(old) })
}

/// The installed page-fault hook.
pub fn page_fault_hook() -> Option<PageFaultHook> {
    let v = HOOK.load(Relaxed);
    // SAFETY: as above.
    (v != 0).then(|| unsafe { core::mem::transmute::<usize, PageFaultHook>(v) })
}

/// Counters since boot: `(page faults taken, faults recovered by a probe,
/// unexpected interrupts)`.
pub fn fault_counts() -> (u64, u64, u64) {
    (
        PAGE_FAULTS.load(Relaxed),
        RECOVERED.load(Relaxed),
        UNEXPECTED.load(Relaxed),
    )
}

// -------------------------------------------------------------- probes --

/// A page fault returned by a probe instead of crashing the kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PageFaultInfo {
    /// The faulting linear address (CR2).
    pub addr: u64,
    /// The error code (see [`pf`]).
    pub code: u64,
}

impl PageFaultInfo {
    /// The page was present: a protection violation, not a missing page.
    pub fn present(&self) -> bool {
        self.code & pf::P != 0
    }
    /// The access was a write.
    pub fn write(&self) -> bool {
        self.code & pf::W != 0
    }
    /// The access was an instruction fetch.
    pub fn fetch(&self) -> bool {
        self.code & pf::I != 0
    }
}

impl core::fmt::Debug for PageFaultInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PageFault {{ addr: {:#x}, code: {:#x} }}",
            self.addr, self.code
        )
    }
}

impl core::fmt::Display for PageFaultInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "#PF at {:#x} code {:#x} ({}{}{})",
            self.addr,
            self.code,
            if self.present() { "P" } else { "not-present" },
            if self.write() { "|W" } else { "" },
            if self.fetch() { "|I" } else { "" }
        )
    }
}

fn finish(r: RawProbe) -> Result<u64, PageFaultInfo> {
    if r.status & PROBE_FAULT != 0 {
        Err(PageFaultInfo {
            addr: r.value,
            code: r.status & !PROBE_FAULT,
        })
    } else {
        Ok(r.value)
    }
}

/// True for addresses the safe probes may touch: the lower half (task maps)
/// and the scratch window — never kernel data.
fn probe_target(addr: u64) -> bool {
    addr < USER_MAX || (WINDOW_BASE..WINDOW_BASE + (1 << 39)).contains(&addr)
}

fn check_target(addr: u64, len: u64) {
    assert!(
        probe_target(addr) && probe_target(addr + len - 1),
        "probe target {addr:#x} is not in the lower half or the scratch window"
    );
}

/// Loads the byte at `addr` with a real `mov`, returning the page fault
/// (after the hook refused it) instead of crashing. `addr` must be in the
/// lower half or the scratch window (it panics otherwise): memory no Rust
/// object lives in, so the load cannot race with Rust code.
pub fn probe_read_u8(addr: u64) -> Result<u8, PageFaultInfo> {
    check_target(addr, 1);
    // SAFETY: the target holds no Rust object (checked); a fault recovers.
    finish(unsafe { machvm_probe_read_u8(addr) }).map(|v| v as u8)
}

/// Loads the aligned 64-bit word at `addr`, as [`probe_read_u8`].
pub fn probe_read_u64(addr: u64) -> Result<u64, PageFaultInfo> {
    assert!(addr.is_multiple_of(8), "unaligned probe");
    check_target(addr, 8);
    // SAFETY: as in probe_read_u8.
    finish(unsafe { machvm_probe_read_u64(addr) })
}

/// [`probe_read_u64`] for any canonical address (the direct map, the
/// kernel image).
///
/// # Safety
/// The word must not be written concurrently by non-atomic Rust code, and
/// `addr` must not be a device register with read side effects.
pub unsafe fn probe_read_u64_anywhere(addr: u64) -> Result<u64, PageFaultInfo> {
    assert!(addr.is_multiple_of(8), "unaligned probe");
    // SAFETY: the caller rules out races and side effects; a fault recovers.
    finish(unsafe { machvm_probe_read_u64(addr) })
}

/// Stores `val` at `addr` with a real `mov`, returning the page fault instead
/// of crashing. `addr` must be in the lower half or the scratch window (it
/// panics otherwise), where no Rust object lives.
pub fn probe_write_u8(addr: u64, val: u8) -> Result<(), PageFaultInfo> {
    check_target(addr, 1);
    // SAFETY: the target is outside kernel data (checked); faults recover.
    finish(unsafe { machvm_probe_write_u8(addr, val) }).map(|_| ())
}

/// Stores the aligned 64-bit `val` at `addr`, as [`probe_write_u8`].
pub fn probe_write_u64(addr: u64, val: u64) -> Result<(), PageFaultInfo> {
    assert!(addr.is_multiple_of(8), "unaligned probe");
    check_target(addr, 8);
    // SAFETY: as in probe_write_u8.
    finish(unsafe { machvm_probe_write_u64(addr, val) }).map(|_| ())
}

/// Calls `addr` with a real `call`, returning the fetch fault instead of
/// crashing when the page is not executable.
///
/// # Safety
/// If `addr` is executable, the code there must return at once without
/// side effects (put a `ret`, byte 0xC3, there).
pub unsafe fn probe_exec(addr: u64) -> Result<(), PageFaultInfo> {
    check_target(addr, 1);
    // SAFETY: the caller guarantees what runs there; a fetch fault recovers.
    finish(unsafe { machvm_probe_exec(addr) }).map(|_| ())
}

/// Copies `buf.len()` bytes from virtual `va` with probes (a `copyin`): the
/// first page fault the hook refuses ends the copy.
pub fn copy_in(va: u64, buf: &mut [u8]) -> Result<(), PageFaultInfo> {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = probe_read_u8(va + i as u64)?;
    }
    Ok(())
}

/// Copies `data` to virtual `va` with probes (a `copyout`); targets as for
/// [`probe_write_u8`].
pub fn copy_out(va: u64, data: &[u8]) -> Result<(), PageFaultInfo> {
    for (i, &b) in data.iter().enumerate() {
        probe_write_u8(va + i as u64, b)?;
    }
    Ok(())
}

/// Formats a probe result for test messages.
pub fn describe<T: core::fmt::Debug>(r: &Result<T, PageFaultInfo>) -> String {
    match r {
        Ok(v) => alloc::format!("Ok({v:#x?})"),
        Err(e) => alloc::format!("{e}"),
    }
}
