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
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use machvm_base::USER_MAX;

use crate::cpu;
use crate::paging::WINDOW_BASE;
use crate::smp::{self, MAX_CPUS};

mod entry;
mod probes;
mod tables;

pub(crate) use entry::{enter_user, init_syscalls, resume_idle};
pub use probes::*;
pub(crate) use tables::{load_cpu_tables, load_idt, trap_stack_top};

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
/// User data selector (RPL 3): `SYSRET`'s SS is `STAR[63:48] + 8`.
pub const USER_DS: u16 = 0x28 | 3;
/// User code selector (RPL 3): `SYSRET`'s 64-bit CS is `STAR[63:48] + 16`.
pub const USER_CS: u16 = 0x30 | 3;
/// The pseudo-vector a `syscall` entry carries in its [`TrapFrame`] (above
/// every IDT vector).
pub const SYSCALL_VECTOR: u64 = 0x100;
/// Vector of the local APIC timer (the scheduler's quantum).
pub const TIMER_VECTOR: u8 = 0xEE;
/// Vector of the wake-up IPI sent to an idle CPU when a task becomes
/// runnable.
pub const RESCHED_VECTOR: u8 = 0xF1;

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

/// The registers saved on a trap, in stack order. A task's saved user
/// context is one of these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
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

// The stubs below push exactly this many bytes; 176 keeps the Rust call
// 16-byte aligned.
const _: () = assert!(size_of::<TrapFrame>() == 176);

impl TrapFrame {
    /// The frame came from ring 3.
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
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

    .global machvm_isr_common
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
    testb $3, 144(%rsp)
    jz 1f
    swapgs
1:
    mov %rsp, %rdi
    clac
    cld
    call {dispatch}
    .global machvm_trap_return
machvm_trap_return:
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
    testb $3, 8(%rsp)
    jz 2f
    swapgs
2:
    iretq
    .popsection
"#,
    dispatch = sym trap_dispatch,
    options(att_syntax)
);

// The probes: each faulting instruction is followed by its recovery point.
// On success rdx = 0 and rax = the value; on a refused fault the handler
// sets rax = CR2 and rdx = error code | bit 63, then resumes at the recovery
// point. `machvm_probe_exec` calls the target: a fetch fault there is
// recognised by the return address on the stack.
//
// SMAP: each probe sets RFLAGS.AC (`stac`) just before its access and
// clears it (`clac`) at the recovery point, which both paths reach; the
// entry stub clears AC for the handler and `iretq` restores it. The
// `_unchecked` and `_smep` probes leave AC clear on purpose: they show that
// SMAP and SMEP stop a kernel access outside the user-access routines.
global_asm!(
    r#"
    .pushsection .text.machvm_probe, "ax", @progbits
    .global machvm_probe_read_u8
machvm_probe_read_u8:
    xor %eax, %eax
    xor %edx, %edx
    stac
.Lprobe_r8:
    movzbl (%rdi), %eax
.Lprobe_r8_fix:
    clac
    ret

    .global machvm_probe_read_u64
machvm_probe_read_u64:
    xor %eax, %eax
    xor %edx, %edx
    stac
.Lprobe_r64:
    mov (%rdi), %rax
.Lprobe_r64_fix:
    clac
    ret

    .global machvm_probe_write_u8
machvm_probe_write_u8:
    xor %eax, %eax
    xor %edx, %edx
    stac
.Lprobe_w8:
    mov %sil, (%rdi)
.Lprobe_w8_fix:
    clac
    ret

    .global machvm_probe_write_u64
machvm_probe_write_u64:
    xor %eax, %eax
    xor %edx, %edx
    stac
.Lprobe_w64:
    mov %rsi, (%rdi)
.Lprobe_w64_fix:
    clac
    ret

    .global machvm_probe_exec
machvm_probe_exec:
    xor %eax, %eax
    xor %edx, %edx
    stac
    call *%rdi
    .global machvm_probe_exec_ret
machvm_probe_exec_ret:
    clac
    ret

    .global machvm_probe_exec_smep
machvm_probe_exec_smep:
    xor %eax, %eax
    xor %edx, %edx
    call *%rdi
    .global machvm_probe_exec_smep_ret
machvm_probe_exec_smep_ret:
    ret

    .global machvm_copy_user
machvm_copy_user:
    mov %rdx, %rcx
    xor %eax, %eax
    xor %edx, %edx
    stac
.Lcopy_user:
    rep movsb
.Lcopy_user_fix:
    clac
    ret

    .global machvm_probe_read_u8_unchecked
machvm_probe_read_u8_unchecked:
    xor %eax, %eax
    xor %edx, %edx
.Lprobe_r8u:
    movzbl (%rdi), %eax
.Lprobe_r8u_fix:
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
    .quad .Lprobe_r8u, .Lprobe_r8u_fix
    .quad .Lcopy_user, .Lcopy_user_fix
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
    static machvm_probe_table: [[u64; 2]; 6];
    static machvm_probe_exec_ret: u8;
    static machvm_probe_exec_smep_ret: u8;
    fn machvm_probe_read_u8(addr: u64) -> RawProbe;
    fn machvm_probe_read_u64(addr: u64) -> RawProbe;
    fn machvm_probe_write_u8(addr: u64, val: u8) -> RawProbe;
    fn machvm_probe_write_u64(addr: u64, val: u64) -> RawProbe;
    fn machvm_probe_exec(addr: u64) -> RawProbe;
    fn machvm_probe_exec_smep(addr: u64) -> RawProbe;
    fn machvm_probe_read_u8_unchecked(addr: u64) -> RawProbe;
    fn machvm_copy_user(dst: u64, src: u64, len: u64) -> RawProbe;
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
    let user = f.from_user();
    match f.vector {
        14 => page_fault(f),
        8 => fatal(f, "double fault (on its IST stack)"),
        // NMI and machine check stay fatal whoever was running.
        v if v < 32 && user && v != 2 && v != 18 => crate::proc::user_exception(f),
        v if v < 32 => fatal(f, NAMES[v as usize]),
        SYSCALL_VECTOR => crate::proc::syscall(f),
        v if v == u64::from(TIMER_VECTOR) => crate::proc::on_timer(f),
        v if v == u64::from(RESCHED_VECTOR) => smp::lapic_eoi(),
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
    if user {
        crate::proc::return_to_user(f);
    }
}

fn page_fault(f: &mut TrapFrame) {
    let cr2 = cpu::read_cr2();
    let err = f.error_code;
    PAGE_FAULTS.fetch_add(1, Relaxed);
    if f.from_user() {
        crate::proc::user_page_fault(f, cr2);
        return;
    }
    if !smap_violation(f, cr2) && page_fault_hook().is_some_and(|hook| hook(cr2, err)) {
        return;
    }
    if recover(f, cr2, err) {
        RECOVERED.fetch_add(1, Relaxed);
        return;
    }
    if smap_violation(f, cr2) {
        fatal(
            f,
            "SMAP/SMEP: ring 0 touched user memory outside the user-access routines",
        );
    }
    fatal(f, "page fault not resolved by the hook, outside a probe");
}

/// A ring-0 fault on a user address with `RFLAGS.AC` clear: the kernel
/// reached user memory without `stac`, so SMAP (or SMEP) refused it. machvm
/// never sees it: resolving it would retry the same refused access.
fn smap_violation(f: &TrapFrame, cr2: u64) -> bool {
    f.cs & 3 == 0 && cr2 < USER_MAX && f.rflags & cpu::RFLAGS_AC == 0
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
    let exec_rets = [
        &raw const machvm_probe_exec_ret as u64,
        &raw const machvm_probe_exec_smep_ret as u64,
    ];
    if err & pf::I != 0 && f.rip == cr2 {
        // SAFETY: a fetch fault right after `call` leaves the return address
        // on the (kernel) stack the call pushed it to.
        let ret = unsafe { (f.rsp as *const u64).read() };
        if let Some(&exec_ret) = exec_rets.iter().find(|&&r| r == ret) {
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
