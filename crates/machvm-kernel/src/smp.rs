//! CPUs: per-CPU blocks (reached through GS), the local APIC, bringing up
//! the other CPUs (INIT-SIPI-SIPI into a real-mode trampoline below 1 MiB),
//! cross-CPU calls by IPI, and TLB shootdown.
//!
//! Cross-CPU calls: [`run_on`] posts a closure in the target's mailbox, sends
//! [`IPI_VECTOR`](crate::trap::IPI_VECTOR) and spins until it ran. While it
//! waits (and while it waits to post), the sender serves its own mailbox, so
//! two CPUs calling each other cannot deadlock even with interrupts off. The
//! boot CPU runs with interrupts off; the others idle in `sti; hlt` and run
//! their mailbox from the IPI handler.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use arrayvec::ArrayVec;

use crate::shootdown::FlushReq;
pub use crate::shootdown::{flush_local, flushes_served, serve_flush, shootdown};
use machvm_frame::FrameUse;

use x86_64::VirtAddr;
use x86_64::instructions::port::PortWriteOnly;
use x86_64::registers::model_specific::{ApicBase, GsBase};

use crate::cpu;
use crate::paging::{self, phys_to_virt, pte};
use crate::trap::{self, IPI_VECTOR, SPURIOUS_VECTOR};

/// Most CPUs the kernel brings up (a shootdown mask is a `u64`).
pub const MAX_CPUS: usize = 16;

/// Physical page of the AP trampoline (SIPI vector 0x08).
const TRAMPOLINE_PA: u64 = 0x8000;
/// Physical page of the trampoline's PML4 (identity map + kernel half).
const TRAMPOLINE_PML4_PA: u64 = 0x9000;
/// Order of an AP stack in frames: 64 pages, 256 KiB.
const AP_STACK_ORDER: u32 = 6;

struct JobPtr(*mut (dyn FnMut() + Send + 'static));
// SAFETY: the pointee is `Send`; the pointer only crosses to the CPU that runs
// it while the owner waits.
unsafe impl Send for JobPtr {}

/// One CPU's block; GS base points at it, so `gs:[8]` is the CPU index.
#[repr(C)]
pub struct PerCpu {
    self_ptr: AtomicU64,
    index: AtomicU64,
    pub(crate) apic_id: AtomicU32,
    online: AtomicBool,
    pending: AtomicBool,
    done: AtomicBool,
    job: spin::Mutex<Option<JobPtr>>,
    call_lock: spin::Mutex<()>,
    calls_served: AtomicU64,
    ipis: AtomicU64,
    /// The shootdown mailbox, apart from general calls: served by the IPI
    /// handler and by every wait on a machvm lock (`locks.rs`), so that
    /// a CPU spinning with interrupts off still answers.
    pub(crate) flush_lock: spin::Mutex<()>,
    pub(crate) flush_req: spin::Mutex<Option<FlushReq>>,
    pub(crate) flush_pending: AtomicBool,
    pub(crate) flush_done: AtomicBool,
    pub(crate) flushes_served: AtomicU64,
    /// Top of the trap stack (the syscall stub loads RSP from here).
    pub(crate) trap_top: AtomicU64,
    /// The user RSP while the syscall stub builds its frame.
    pub(crate) user_rsp: AtomicU64,
    /// The idle context's RSP while this CPU runs a task.
    pub(crate) idle_rsp: AtomicU64,
}

impl PerCpu {
    const fn new() -> PerCpu {
        PerCpu {
            self_ptr: AtomicU64::new(0),
            index: AtomicU64::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            done: AtomicBool::new(false),
            job: spin::Mutex::new(None),
            call_lock: spin::Mutex::new(()),
            calls_served: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
            flush_lock: spin::Mutex::new(()),
            flush_req: spin::Mutex::new(None),
            flush_pending: AtomicBool::new(false),
            flush_done: AtomicBool::new(false),
            flushes_served: AtomicU64::new(0),
            trap_top: AtomicU64::new(0),
            user_rsp: AtomicU64::new(0),
            idle_rsp: AtomicU64::new(0),
        }
    }
}

pub(crate) static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
static NCPUS: AtomicUsize = AtomicUsize::new(1);

/// Points this CPU's GS base at its block. Must follow `load_cpu_tables`
/// (loading GS would clear the base).
fn set_gs_base(cpu: usize) {
    let p = &CPUS[cpu];
    let addr = p as *const PerCpu as u64;
    p.self_ptr.store(addr, Ordering::Relaxed);
    p.index.store(cpu as u64, Ordering::Relaxed);
    // The kernel never loads GS afterwards (that would clear the base), and
    // `current_cpu` reads through it.
    GsBase::write(VirtAddr::new(addr));
}

/// Index of the CPU running this code (0 = boot CPU).
#[inline]
pub fn current_cpu() -> usize {
    let v: u64;
    // SAFETY: GS points at this CPU's `PerCpu` (set at CPU bring-up, before
    // any other code runs there); offset 8 is `index`.
    unsafe { asm!("mov {}, gs:[8]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v as usize
}

/// `current_cpu`, or `None` this early in boot (GS base not set yet): for
/// fatal reports.
pub(crate) fn current_cpu_checked() -> Option<usize> {
    (!GsBase::read().is_null()).then(current_cpu)
}

/// Number of CPUs online (indices `0..cpu_count()`).
pub fn cpu_count() -> usize {
    NCPUS.load(Ordering::Acquire)
}

/// Local APIC id of CPU `cpu`.
pub fn apic_id_of(cpu: usize) -> u32 {
    CPUS[cpu].apic_id.load(Ordering::Relaxed)
}

/// Cross-CPU calls CPU `cpu` has served since boot.
pub fn calls_served(cpu: usize) -> u64 {
    CPUS[cpu].calls_served.load(Ordering::Relaxed)
}

/// Call IPIs CPU `cpu` has taken since boot.
pub fn ipis_taken(cpu: usize) -> u64 {
    CPUS[cpu].ipis.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- LAPIC --

static LAPIC: AtomicU64 = AtomicU64::new(0);

const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xB0;
const LAPIC_SVR: u64 = 0xF0;
const LAPIC_ESR: u64 = 0x280;
const LAPIC_ICR_LO: u64 = 0x300;
const LAPIC_ICR_HI: u64 = 0x310;

/// Physical base of the local APIC (from `IA32_APIC_BASE`).
pub(crate) fn lapic_phys() -> u64 {
    ApicBase::read().0.start_address().as_u64()
}

pub(crate) fn lapic_read(reg: u64) -> u32 {
    // SAFETY: LAPIC registers are 32-bit MMIO in the (uncached) direct map.
    unsafe { ((LAPIC.load(Ordering::Relaxed) + reg) as *const u32).read_volatile() }
}

pub(crate) fn lapic_write(reg: u64, v: u32) {
    // SAFETY: as in lapic_read.
    unsafe { ((LAPIC.load(Ordering::Relaxed) + reg) as *mut u32).write_volatile(v) }
}

/// This CPU's local APIC id.
pub fn lapic_id() -> u32 {
    lapic_read(LAPIC_ID) >> 24
}

/// Enables this CPU's local APIC (spurious vector, accept all priorities).
fn lapic_init_local() {
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    lapic_write(LAPIC_ESR, 0);
    crate::timer::init_local();
}

/// Signals end of interrupt to this CPU's local APIC.
pub(crate) fn lapic_eoi() {
    lapic_write(LAPIC_EOI, 0);
}

pub(crate) fn lapic_icr(apic_id: u32, lo: u32) {
    while lapic_read(LAPIC_ICR_LO) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
    lapic_write(LAPIC_ICR_HI, apic_id << 24);
    lapic_write(LAPIC_ICR_LO, lo);
    while lapic_read(LAPIC_ICR_LO) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

/// Masks the legacy 8259 PICs after moving them to vectors 0x20..0x30, so a
/// stray IRQ can never look like an exception.
fn pic_disable() {
    for (cmd, data, base, cascade) in [(0x20, 0x21, 0x20, 4), (0xA0, 0xA1, 0x28, 2)] {
        let mut cmd = PortWriteOnly::<u8>::new(cmd);
        let mut data = PortWriteOnly::<u8>::new(data);
        // SAFETY: the kernel owns the PICs; this is the standard ICW
        // sequence (init, vector base, cascade, 8086 mode), then all masked.
        unsafe {
            cmd.write(0x11);
            data.write(base);
            data.write(cascade);
            data.write(0x01);
            data.write(0xFF);
        }
    }
}

// ---------------------------------------------------------- bring-up --

// Real-mode trampoline, copied to TRAMPOLINE_PA: loads the trampoline PML4
// (identity map + kernel half), enables PAE, long mode, NX, paging and WP in
// one go, far-jumps to 64-bit code and calls the entry from its data block.
global_asm!(
    r#"
    .pushsection .rodata.machvm_trampoline, "a", @progbits
    .p2align 12
    .global machvm_tramp_start
machvm_tramp_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    movl $0x20, %eax
    mov %eax, %cr4
    movl (machvm_tramp_cr3 - machvm_tramp_start), %eax
    mov %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    lgdtl (.Ltramp_gdtr - machvm_tramp_start)
    movl $0x80010001, %eax
    mov %eax, %cr0
    ljmpl $0x08, $({base} + .Ltramp_long - machvm_tramp_start)
    .code64
.Ltramp_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov ({base} + machvm_tramp_stack - machvm_tramp_start), %rsp
    mov ({base} + machvm_tramp_arg - machvm_tramp_start), %rdi
    mov ({base} + machvm_tramp_entry - machvm_tramp_start), %rax
    xor %ebp, %ebp
    call *%rax
1:  hlt
    jmp 1b
    .p2align 3
.Ltramp_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
.Ltramp_gdtr:
    .word 23
    .long {base} + .Ltramp_gdt - machvm_tramp_start
    .p2align 3
    .global machvm_tramp_cr3
machvm_tramp_cr3:
    .quad 0
    .global machvm_tramp_stack
machvm_tramp_stack:
    .quad 0
    .global machvm_tramp_arg
machvm_tramp_arg:
    .quad 0
    .global machvm_tramp_entry
machvm_tramp_entry:
    .quad 0
    .global machvm_tramp_end
machvm_tramp_end:
    .popsection
"#,
    base = const TRAMPOLINE_PA,
    options(att_syntax)
);

unsafe extern "C" {
    static machvm_tramp_start: u8;
    static machvm_tramp_cr3: u8;
    static machvm_tramp_stack: u8;
    static machvm_tramp_arg: u8;
    static machvm_tramp_entry: u8;
    static machvm_tramp_end: u8;
}

/// Offset of a trampoline symbol from its start.
fn tramp_off(sym: *const u8) -> u64 {
    sym as u64 - &raw const machvm_tramp_start as u64
}

fn tramp_set(sym: *const u8, v: u64) {
    let p = phys_to_virt(TRAMPOLINE_PA + tramp_off(sym)) as *mut u64;
    // SAFETY: inside the trampoline page we own (low memory, direct-mapped).
    unsafe { p.write_volatile(v) };
}

/// The boot CPU's part of SMP setup: its own tables, GS, LAPIC.
pub(crate) fn init_bsp() {
    trap::load_cpu_tables(0);
    set_gs_base(0);
    trap::load_idt();
    cpu::enable_smep_smap();
    cpu::deny_fpu();
    trap::init_syscalls(0);
}

/// After memory is up: enables the boot CPU's LAPIC and masks the PIC.
pub(crate) fn init_bsp_lapic() {
    LAPIC.store(phys_to_virt(lapic_phys()), Ordering::Relaxed);
    pic_disable();
    lapic_init_local();
    CPUS[0].apic_id.store(lapic_id(), Ordering::Relaxed);
    CPUS[0].online.store(true, Ordering::Release);
}

/// Starts every other enabled CPU of the MADT; returns how many came up.
pub(crate) fn start_aps(rsdp: u64, low_ram_ok: bool) -> usize {
    let ids = crate::acpi::cpu_apic_ids(rsdp);
    let bsp = lapic_id();
    if !low_ram_ok {
        crate::println!("smp: no RAM at {TRAMPOLINE_PA:#x}; staying on one CPU");
        return 0;
    }
    // Copy the trampoline and build its PML4: the kernel half plus the low
    // identity map (the direct map's PDPT, executable here).
    let len = tramp_off(&raw const machvm_tramp_end);
    // SAFETY: the trampoline page is RAM below 1 MiB that the frame allocator
    // never manages; the source is the kernel's rodata.
    unsafe {
        core::ptr::copy_nonoverlapping(
            &raw const machvm_tramp_start,
            phys_to_virt(TRAMPOLINE_PA) as *mut u8,
            len as usize,
        );
    }
    // SAFETY: TRAMPOLINE_PML4_PA is our low page, used as a table only here.
    let pml4 = unsafe { paging::table(TRAMPOLINE_PML4_PA) };
    let upper = paging::kernel_upper_half();
    for (i, e) in pml4.iter().enumerate() {
        let v = if i >= 256 { upper[i - 256] } else { 0 };
        e.store(v, Ordering::Relaxed);
    }
    pml4[0].store(upper[0] & !pte::NX, Ordering::Relaxed);
    tramp_set(&raw const machvm_tramp_cr3, TRAMPOLINE_PML4_PA);
    tramp_set(&raw const machvm_tramp_entry, ap_entry as *const () as u64);

    let mut started = 0;
    for id in ids.into_iter().filter(|&id| id != bsp) {
        let idx = 1 + started;
        if idx >= MAX_CPUS {
            break;
        }
        let frames = crate::mem::frames();
        let Ok(stack) = frames.alloc_order(AP_STACK_ORDER, FrameUse::Kernel) else {
            break;
        };
        let top = phys_to_virt(stack.as_u64()) + (4096u64 << AP_STACK_ORDER);
        CPUS[idx].apic_id.store(id, Ordering::Relaxed);
        tramp_set(&raw const machvm_tramp_stack, top);
        tramp_set(&raw const machvm_tramp_arg, idx as u64);
        // INIT, 10 ms, SIPI, then a second SIPI if it has not shown up.
        lapic_icr(id, 0x4500);
        cpu::pit_delay_us(10_000);
        let sipi = 0x4600 | (TRAMPOLINE_PA >> 12) as u32;
        lapic_icr(id, sipi);
        if !wait_online(idx, 2) {
            lapic_icr(id, sipi);
        }
        if !wait_online(idx, 1000) {
            crate::println!("smp: cpu with APIC id {id} did not start");
            frames.free(stack);
            continue;
        }
        started += 1;
        NCPUS.store(1 + started, Ordering::Release);
    }
    started
}

fn wait_online(idx: usize, ms: u64) -> bool {
    for _ in 0..ms * 10 {
        if CPUS[idx].online.load(Ordering::Acquire) {
            return true;
        }
        cpu::pit_delay_us(100);
    }
    CPUS[idx].online.load(Ordering::Acquire)
}

/// Where an AP lands in Rust, on its own stack, still on the trampoline PML4.
extern "C" fn ap_entry(idx: u64) -> ! {
    let idx = idx as usize;
    // SAFETY: the kernel PML4 has the kernel half this code runs from.
    unsafe { cpu::load_cr3(paging::kernel_pml4_pa()) };
    trap::load_cpu_tables(idx);
    set_gs_base(idx);
    trap::load_idt();
    cpu::enable_smep_smap();
    cpu::deny_fpu();
    trap::init_syscalls(idx);
    lapic_init_local();
    CPUS[idx].online.store(true, Ordering::Release);
    // Runs tasks, serves calls and shootdowns, halts when there is nothing
    // to do (`sti; hlt`: the interrupt shadow of `sti` covers `hlt`, so no
    // wake-up is lost; handlers run with interrupts off).
    crate::proc::idle_loop(&|| false);
    unreachable!("an AP's idle loop never ends")
}

/// Wakes CPU `cpu` from its idle halt (or makes it look at the run queue at
/// its next return to a task).
pub(crate) fn send_resched(cpu: usize) {
    lapic_icr(
        CPUS[cpu].apic_id.load(Ordering::Relaxed),
        u32::from(trap::RESCHED_VECTOR) | 0x4000,
    );
}

// --------------------------------------------------------------- calls --

/// Runs `f` on CPU `cpu` and returns its result, waiting until it finished
/// (directly when `cpu` is the current CPU). `f` runs in the target's IPI
/// handler with interrupts off; it may itself call [`run_on`].
///
/// Panics if `cpu` is not online.
pub fn run_on<R: Send>(cpu: usize, f: impl FnOnce() -> R + Send) -> R {
    if cpu == current_cpu() {
        return f();
    }
    assert!(
        cpu < MAX_CPUS && CPUS[cpu].online.load(Ordering::Acquire),
        "run_on: cpu {cpu} is not online"
    );
    let target = &CPUS[cpu];
    let mut f = Some(f);
    let mut out: Option<R> = None;
    {
        let mut call = || {
            if let Some(f) = f.take() {
                out = Some(f());
            }
        };
        let job: *mut (dyn FnMut() + Send + '_) = &mut call;
        // SAFETY: only the lifetime is erased; we wait for `done` below, so
        // `call` outlives every use of the pointer.
        let job: *mut (dyn FnMut() + Send + 'static) = unsafe { core::mem::transmute(job) };
        let guard = post(target, job);
        wait_done(target);
        drop(guard);
    }
    out.expect("remote call did not run")
}

/// Takes `target`'s call slot (answering calls and shootdowns sent here
/// meanwhile), posts `job` and sends the IPI. The slot stays taken until
/// the returned guard goes: after [`wait_done`].
fn post<'t>(
    target: &'t PerCpu,
    job: *mut (dyn FnMut() + Send + 'static),
) -> spin::MutexGuard<'t, ()> {
    let guard = loop {
        if let Some(g) = target.call_lock.try_lock() {
            break g;
        }
        poll_mailbox();
        serve_flush();
        core::hint::spin_loop();
    };
    *target.job.lock() = Some(JobPtr(job));
    target.done.store(false, Ordering::Relaxed);
    target.pending.store(true, Ordering::Release);
    lapic_icr(
        target.apic_id.load(Ordering::Relaxed),
        u32::from(IPI_VECTOR) | 0x4000,
    );
    guard
}

/// Waits until `target` has run the job posted to it, answering calls and
/// shootdowns sent here meanwhile.
fn wait_done(target: &PerCpu) {
    while !target.done.load(Ordering::Acquire) {
        poll_mailbox();
        serve_flush();
        core::hint::spin_loop();
    }
}

/// Runs `f(cpu)` on every online CPU at once, this one included, and
/// returns when all have finished. On the others `f` runs in the IPI
/// handler, with interrupts off: whatever it waits for there, it answers
/// shootdowns only through the kernel's machvm locks ([`serve_flush`]). `f` must
/// not [`run_on`] another CPU: this call holds every CPU's call slot until
/// all are done.
pub fn run_everywhere(f: &(dyn Fn(usize) + Sync)) {
    let me = current_cpu();
    let others: ArrayVec<usize, MAX_CPUS> = (0..cpu_count()).filter(|&c| c != me).collect();
    let mut calls: ArrayVec<_, MAX_CPUS> = others.iter().map(|&c| move || f(c)).collect();
    let mut guards = ArrayVec::<_, MAX_CPUS>::new();
    for (&c, call) in others.iter().zip(calls.iter_mut()) {
        let target = &CPUS[c];
        let job: *mut (dyn FnMut() + Send + '_) = call;
        // SAFETY: only the lifetime is erased; every target is waited for
        // below, before `calls` goes.
        let job: *mut (dyn FnMut() + Send + 'static) = unsafe { core::mem::transmute(job) };
        guards.push(post(target, job));
    }
    f(me);
    for &c in &others {
        wait_done(&CPUS[c]);
    }
    drop(guards);
}

/// Runs this CPU's pending cross-CPU call, if any.
pub(crate) fn poll_mailbox() {
    let me = &CPUS[current_cpu()];
    if me.pending.swap(false, Ordering::Acquire) {
        let job = me.job.lock().take();
        if let Some(JobPtr(p)) = job {
            // SAFETY: the sender keeps the closure alive until `done`.
            unsafe { (*p)() };
        }
        me.calls_served.fetch_add(1, Ordering::Relaxed);
        me.done.store(true, Ordering::Release);
    }
}

/// The call IPI's handler.
pub(crate) fn handle_ipi() {
    CPUS[current_cpu()].ipis.fetch_add(1, Ordering::Relaxed);
    serve_flush();
    poll_mailbox();
}

/// Mask of all online CPUs.
pub fn all_cpus_mask() -> u64 {
    (1u64 << cpu_count()) - 1
}
