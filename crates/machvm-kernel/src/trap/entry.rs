//! Ring 3's ways in and out: the `syscall` entry stub, the per-CPU MSRs it
//! needs, and the switch between a CPU's idle context and a task.
//!
//! Every entry from ring 3 lands on the CPU's trap stack and builds the same
//! [`TrapFrame`] at its top (`trap_top - 176`): interrupts and exceptions
//! through `TSS.RSP0`, `syscall` through `machvm_syscall_entry`, which
//! pushes the hardware part itself and joins the common stub (`swapgs`
//! back first: the common stub swaps for any ring-3 frame, once, before it
//! touches GS). All of them leave through
//! `machvm_trap_return` (`iretq`, never `sysret`, whose non-canonical-RIP and
//! RFLAGS pitfalls are not worth a fast path under TCG).
//!
//! A CPU runs tasks from its *idle context* (the suite's stack on CPU 0, the
//! AP stack elsewhere): [`enter_user`] saves that context and jumps to the
//! return path with a task's frame; [`resume_idle`], called from a trap
//! handler when nothing is left to run, throws the trap stack away and
//! returns from `enter_user`. A task switch never needs a stack switch: the
//! scheduler copies the frame in the trap-stack slot out and the next one in.

use core::arch::global_asm;
use core::mem::offset_of;

use x86_64::VirtAddr;
use x86_64::registers::model_specific::{Efer, EferFlags, KernelGsBase, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::registers::segmentation::SegmentSelector;

use super::*;
use crate::smp::{CPUS, PerCpu};

global_asm!(
    r#"
    .pushsection .text.machvm_entry, "ax", @progbits
    .global machvm_syscall_entry
machvm_syscall_entry:
    swapgs
    mov %rsp, %gs:{user_rsp}
    mov %gs:{trap_top}, %rsp
    pushq ${user_ds}
    pushq %gs:{user_rsp}
    pushq %r11
    pushq ${user_cs}
    pushq %rcx
    pushq $0
    pushq ${sysvec}
    # The common stub saves the registers, and swaps GS again because the
    # frame says ring 3: give it the user's back first.
    swapgs
    jmp machvm_isr_common

    .global machvm_enter_user
machvm_enter_user:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %gs:{idle_rsp}
    mov %gs:{trap_top}, %rsp
    sub ${frame}, %rsp
    mov %rdi, %rsi
    mov %rsp, %rdi
    mov ${frame_words}, %ecx
    rep movsq
    jmp machvm_trap_return

    .global machvm_resume_idle
machvm_resume_idle:
    mov %gs:{idle_rsp}, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
    .popsection
"#,
    user_rsp = const offset_of!(PerCpu, user_rsp),
    trap_top = const offset_of!(PerCpu, trap_top),
    idle_rsp = const offset_of!(PerCpu, idle_rsp),
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    sysvec = const SYSCALL_VECTOR,
    frame = const size_of::<TrapFrame>(),
    frame_words = const size_of::<TrapFrame>() / 8,
    options(att_syntax)
);

unsafe extern "C" {
    static machvm_syscall_entry: u8;
    fn machvm_enter_user(frame: *const TrapFrame);
    fn machvm_resume_idle() -> !;
}

/// Sets up `syscall` on CPU `cpu` (which must be the running CPU): `STAR`
/// (kernel selectors in, user selectors out), `LSTAR` (the stub), `FMASK`
/// (IF, TF, DF, AC, NT and IOPL cleared on entry: the kernel runs with
/// interrupts off), `EFER.SCE`, and a null user GS base.
pub(crate) fn init_syscalls(cpu: usize) {
    CPUS[cpu].trap_top.store(trap_stack_top(cpu), Relaxed);
    Star::write(
        SegmentSelector(USER_CS),
        SegmentSelector(USER_DS),
        SegmentSelector(KERNEL_CS),
        SegmentSelector(KERNEL_DS),
    )
    .expect("GDT selectors fit STAR");
    LStar::write(VirtAddr::new(&raw const machvm_syscall_entry as u64));
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK
            | RFlags::IOPL_HIGH
            | RFlags::IOPL_LOW,
    );
    // SAFETY: enabling `syscall` changes nothing until LSTAR's stub, set
    // above, is entered from ring 3.
    unsafe { Efer::update(|f| f.insert(EferFlags::SYSTEM_CALL_EXTENSIONS)) };
    KernelGsBase::write(VirtAddr::zero());
}

/// Runs a task from this CPU's idle context: `frame` goes into the trap
/// stack's frame slot and the CPU returns to ring 3 with it. Returns when a
/// trap handler on this CPU calls [`resume_idle`].
///
/// # Safety
/// Interrupts off; `frame` is a ring-3 frame (`USER_CS`, `USER_DS`, IF set,
/// a canonical user RIP) and CR3 holds the task's address space. Nothing on
/// the trap stack may be live: it is overwritten.
pub(crate) unsafe fn enter_user(frame: &TrapFrame) {
    debug_assert!(frame.from_user() && frame.rip < USER_MAX);
    // SAFETY: the caller vouches for the frame and the CPU state; the stub
    // saves the callee-saved registers and the stack, which `resume_idle`
    // restores.
    unsafe { machvm_enter_user(frame) }
}

/// Abandons the trap stack and returns from this CPU's [`enter_user`].
///
/// # Safety
/// Called on the trap stack of a CPU that entered user mode through
/// `enter_user`, with interrupts off and the kernel's GS; every value on the
/// trap stack is dropped or leaked (hold no lock, no `Arc`).
pub(crate) unsafe fn resume_idle() -> ! {
    // SAFETY: as the caller guarantees.
    unsafe { machvm_resume_idle() }
}
