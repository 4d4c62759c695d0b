//! The system calls: raw `syscall` stubs ([`syscall0`] ... [`syscall6`])
//! and typed wrappers returning `Result<u64, KernError>` (the value in
//! `rdx`, or the `kern_return_t` in `rax` as a [`KernError`]).
//!
//! Bare metal only (`target_os = "none"`): they run in ring 3 under
//! machvm-kernel. The wrappers are safe: the kernel checks every pointer
//! (a bad one is `InvalidAddress`), and none of them changes memory Rust
//! code holds references to, except [`vm_deallocate`] and its kin, which
//! the caller must not use on memory it borrows (it would then fault, and
//! the kernel kills the task: no undefined behaviour reaches other tasks).

use core::arch::asm;

use machvm_base::KernError;

use crate::abi::{MsgDesc, RecvInfo, RegionInfoAbi, VmStatsAbi, WaitStatus, nr};

/// The kernel's answer: `(rax, rdx)` as a result.
fn result(rax: u64, rdx: u64) -> Result<u64, KernError> {
    match rax {
        0 => Ok(rdx),
        code => Err(KernError::from_code(code).unwrap_or(KernError::Failure)),
    }
}

/// `syscall` with no argument; returns `(rax, rdx)`.
///
/// # Safety
/// The call must not change memory the caller's Rust code relies on
/// (pointers the kernel writes through, ranges it unmaps).
#[inline]
pub unsafe fn syscall0(nr: u64) -> (u64, u64) {
    let (ret, val);
    // SAFETY: `syscall` enters the kernel, which preserves every register
    // but rax, rdx (declared outputs), rcx and r11 (clobbered) and uses no
    // user stack; memory effects are the caller's contract.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, lateout("rdx") val,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    (ret, val)
}

/// `syscall` with one argument (`rdi`).
///
/// # Safety
/// As [`syscall0`].
#[inline]
pub unsafe fn syscall1(nr: u64, a: u64) -> (u64, u64) {
    let (ret, val);
    // SAFETY: as in `syscall0`; rdi is an input the kernel preserves.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, lateout("rdx") val,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    (ret, val)
}

/// `syscall` with two arguments (`rdi, rsi`).
///
/// # Safety
/// As [`syscall0`].
#[inline]
pub unsafe fn syscall2(nr: u64, a: u64, b: u64) -> (u64, u64) {
    let (ret, val);
    // SAFETY: as in `syscall0`.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b,
             lateout("rdx") val, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    (ret, val)
}

/// `syscall` with three arguments (`rdi, rsi, rdx`).
///
/// # Safety
/// As [`syscall0`].
#[inline]
pub unsafe fn syscall3(nr: u64, a: u64, b: u64, c: u64) -> (u64, u64) {
    let (ret, val);
    // SAFETY: as in `syscall0`; rdx carries the third argument in and the
    // value out.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b,
             inlateout("rdx") c => val, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    (ret, val)
}

/// `syscall` with four arguments (`rdi, rsi, rdx, r10`).
///
/// # Safety
/// As [`syscall0`].
#[inline]
pub unsafe fn syscall4(nr: u64, a: u64, b: u64, c: u64, d: u64) -> (u64, u64) {
    let (ret, val);
    // SAFETY: as in `syscall3`.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b,
             inlateout("rdx") c => val, in("r10") d, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    (ret, val)
}

/// `syscall` with five arguments (`rdi, rsi, rdx, r10, r8`).
///
/// # Safety
/// As [`syscall0`].
#[inline]
pub unsafe fn syscall5(nr: u64, a: u64, b: u64, c: u64, d: u64, e: u64) -> (u64, u64) {
    let (ret, val);
    // SAFETY: as in `syscall3`.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b,
             inlateout("rdx") c => val, in("r10") d, in("r8") e, lateout("rcx") _,
             lateout("r11") _, options(nostack));
    }
    (ret, val)
}

/// `syscall` with six arguments (`rdi, rsi, rdx, r10, r8, r9`).
///
/// # Safety
/// As [`syscall0`].
#[inline]
pub unsafe fn syscall6(nr: u64, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> (u64, u64) {
    let (ret, val);
    // SAFETY: as in `syscall3`.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b,
             inlateout("rdx") c => val, in("r10") d, in("r8") e, in("r9") f,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    (ret, val)
}

/// `EXIT(code)`: ends the task.
pub fn exit(code: u64) -> ! {
    // SAFETY: EXIT touches no memory of the task and never returns.
    unsafe {
        syscall1(nr::EXIT, code);
    }
    // SAFETY: the kernel never returns from EXIT; if it ever did, `ud2`
    // raises #UD, which kills the task.
    unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// `CONSOLE_WRITE`: writes `bytes` to the console; returns the count.
pub fn console_write(bytes: &[u8]) -> Result<u64, KernError> {
    console_write_raw(bytes.as_ptr() as u64, bytes.len() as u64)
}

/// `CONSOLE_WRITE` of any address and length (for tests of bad
/// pointers): the kernel only reads the range.
pub fn console_write_raw(ptr: u64, len: u64) -> Result<u64, KernError> {
    // SAFETY: the kernel only reads [ptr, ptr+len), or refuses.
    let (a, d) = unsafe { syscall2(nr::CONSOLE_WRITE, ptr, len) };
    result(a, d)
}

/// `YIELD`.
pub fn yield_now() {
    // SAFETY: YIELD touches no memory.
    unsafe {
        syscall0(nr::YIELD);
    }
}

/// `FORK`: the child's pid in the parent, 0 in the child.
pub fn fork() -> Result<u64, KernError> {
    // SAFETY: the child continues with a copy of this state (registers and
    // map); nothing of the parent changes.
    let (a, d) = unsafe { syscall0(nr::FORK) };
    result(a, d)
}

/// `WAIT(pid or 0, status)`: reaps a child; returns its pid.
pub fn wait(pid: u64, status: &mut WaitStatus) -> Result<u64, KernError> {
    // SAFETY: `status` is an exclusive reference to a `WaitStatus`.
    unsafe { wait_raw(pid, status as *mut WaitStatus as u64) }
}

/// `WAIT` with any status address (for tests of bad pointers).
///
/// # Safety
/// `status_ptr` must be writable for a `WaitStatus` without breaking
/// Rust's aliasing rules, or an address the kernel refuses.
pub unsafe fn wait_raw(pid: u64, status_ptr: u64) -> Result<u64, KernError> {
    // SAFETY: the kernel writes a `WaitStatus` at `status_ptr` only if it
    // is writable user memory; callers pass their own `WaitStatus` or an
    // address they expect refused.
    let (a, d) = unsafe { syscall2(nr::WAIT, pid, status_ptr) };
    result(a, d)
}

/// `GETPID`.
pub fn getpid() -> u64 {
    // SAFETY: touches no memory.
    let (a, d) = unsafe { syscall0(nr::GETPID) };
    result(a, d).unwrap_or(0)
}

/// `GETCPU`.
pub fn getcpu() -> u64 {
    // SAFETY: touches no memory.
    let (a, d) = unsafe { syscall0(nr::GETCPU) };
    result(a, d).unwrap_or(0)
}

/// `STATS`: the machine's VM counters.
pub fn stats() -> Result<VmStatsAbi, KernError> {
    let mut s = VmStatsAbi::default();
    // SAFETY: `s` is a local `VmStatsAbi`, not borrowed.
    unsafe { stats_raw(&mut s as *mut VmStatsAbi as u64)? };
    Ok(s)
}

/// `STATS` into any address (for tests of bad pointers).
///
/// # Safety
/// `ptr` must be writable for a `VmStatsAbi` (as [`wait_raw`]).
pub unsafe fn stats_raw(ptr: u64) -> Result<u64, KernError> {
    // SAFETY: the kernel writes a `VmStatsAbi` at `ptr` only if writable.
    let (a, d) = unsafe { syscall1(nr::STATS, ptr) };
    result(a, d)
}

/// `VM_ALLOCATE(addr, size, anywhere)`: returns the start.
pub fn vm_allocate(addr: u64, size: u64, anywhere: bool) -> Result<u64, KernError> {
    // SAFETY: only adds memory to the map.
    let (a, d) = unsafe { syscall3(nr::VM_ALLOCATE, addr, size, anywhere as u64) };
    result(a, d)
}

/// `VM_DEALLOCATE(addr, size)`. The caller must hold no reference into
/// the range (an access after it kills the task).
///
/// # Safety
/// No reference may point into the range.
pub unsafe fn vm_deallocate(addr: u64, size: u64) -> Result<u64, KernError> {
    // SAFETY: Rust code of this crate holds no reference into memory it
    // did not allocate itself; a later access faults and kills the task.
    let (a, d) = unsafe { syscall2(nr::VM_DEALLOCATE, addr, size) };
    result(a, d)
}

/// `VM_PROTECT(addr, size, set_maximum, prot)`.
pub fn vm_protect(addr: u64, size: u64, set_maximum: bool, prot: u64) -> Result<u64, KernError> {
    // SAFETY: a later refused access kills the task; no memory changes.
    let (a, d) = unsafe { syscall4(nr::VM_PROTECT, addr, size, set_maximum as u64, prot) };
    result(a, d)
}

/// `VM_INHERIT(addr, size, inherit)`.
pub fn vm_inherit(addr: u64, size: u64, inherit: u64) -> Result<u64, KernError> {
    // SAFETY: changes only what a later fork does.
    let (a, d) = unsafe { syscall3(nr::VM_INHERIT, addr, size, inherit) };
    result(a, d)
}

/// `VM_REGION(addr)`: the region at or above `addr`.
pub fn vm_region(addr: u64) -> Result<RegionInfoAbi, KernError> {
    let mut info = RegionInfoAbi::default();
    // SAFETY: `info` is a local `RegionInfoAbi`, not borrowed.
    unsafe { vm_region_raw(addr, &mut info as *mut RegionInfoAbi as u64)? };
    Ok(info)
}

/// `VM_REGION` into any address (for tests of bad pointers).
///
/// # Safety
/// `info_ptr` must be writable for a `RegionInfoAbi` (as [`wait_raw`]).
pub unsafe fn vm_region_raw(addr: u64, info_ptr: u64) -> Result<u64, KernError> {
    // SAFETY: the kernel writes a `RegionInfoAbi` at `info_ptr` only if
    // writable.
    let (a, d) = unsafe { syscall2(nr::VM_REGION, addr, info_ptr) };
    result(a, d)
}

/// `VM_READ(addr, size)`: the address of a snapshot in this map.
pub fn vm_read(addr: u64, size: u64) -> Result<u64, KernError> {
    // SAFETY: only adds memory to the map.
    let (a, d) = unsafe { syscall2(nr::VM_READ, addr, size) };
    result(a, d)
}

/// `VM_WRITE(dst, src, size)`: overwrites `[dst, +size)` with the bytes at
/// `src`.
///
/// # Safety
/// No reference may point into `[dst, +size)`.
pub unsafe fn vm_write(dst: u64, src: u64, size: u64) -> Result<u64, KernError> {
    // SAFETY: the caller's Rust code holds no reference into `dst` (the
    // scenarios pass raw addresses of memory they allocated).
    let (a, d) = unsafe { syscall3(nr::VM_WRITE, dst, src, size) };
    result(a, d)
}

/// `VM_COPY(src, size, dst)`: memmove within this map.
///
/// # Safety
/// No reference may point into `[dst, +size)`.
pub unsafe fn vm_copy(src: u64, size: u64, dst: u64) -> Result<u64, KernError> {
    // SAFETY: as `vm_write`.
    let (a, d) = unsafe { syscall3(nr::VM_COPY, src, size, dst) };
    result(a, d)
}

/// `VM_MAP_COPY(pid, dst, len, src, flags)`: returns `dst`.
///
/// # Safety
/// With `pid` 0, no reference may point into `[dst, +len)`; with
/// `SRC_DESTROY`, none into `[src, +len)` (pages rounded out).
pub unsafe fn vm_map_copy(
    pid: u64,
    dst: u64,
    len: u64,
    src: u64,
    flags: u64,
) -> Result<u64, KernError> {
    // SAFETY: as `vm_write` for the destination, `vm_deallocate` for a
    // destroyed source.
    let (a, d) = unsafe { syscall5(nr::VM_MAP_COPY, pid, dst, len, src, flags) };
    result(a, d)
}

/// `VM_WIRE(addr, size, prot)`; `prot` 0 unwires.
pub fn vm_wire(addr: u64, size: u64, prot: u64) -> Result<u64, KernError> {
    // SAFETY: wiring changes no byte.
    let (a, d) = unsafe { syscall3(nr::VM_WIRE, addr, size, prot) };
    result(a, d)
}

/// `PORT_CREATE(capacity)`: the port's name.
pub fn port_create(capacity: u64) -> Result<u64, KernError> {
    // SAFETY: touches no memory.
    let (a, d) = unsafe { syscall1(nr::PORT_CREATE, capacity) };
    result(a, d)
}

/// `PORT_SEND(port, desc)`.
///
/// # Safety
/// With `SRC_DESTROY` in `desc.flags`, no reference may point into the
/// out-of-line range (pages rounded out).
pub unsafe fn port_send(port: u64, desc: &MsgDesc) -> Result<u64, KernError> {
    // SAFETY: the kernel reads the descriptor and the ranges it names; with
    // SRC_DESTROY it deallocates the out-of-line range (see
    // `vm_deallocate`).
    let (a, d) = unsafe { syscall2(nr::PORT_SEND, port, desc as *const MsgDesc as u64) };
    result(a, d)
}

/// `PORT_RECV(port, buf, info)`: the oldest message.
pub fn port_recv(port: u64, buf: &mut [u8], info: &mut RecvInfo) -> Result<u64, KernError> {
    let (b, n) = (buf.as_mut_ptr() as u64, buf.len() as u64);
    // SAFETY: `buf` and `info` are exclusive references of those sizes.
    unsafe { port_recv_raw(port, b, n, info as *mut RecvInfo as u64) }
}

/// `PORT_RECV` with any addresses (for tests of bad pointers).
///
/// # Safety
/// `[buf, +len)` and `info` (a `RecvInfo`) must be writable (as
/// [`wait_raw`]).
pub unsafe fn port_recv_raw(port: u64, buf: u64, len: u64, info: u64) -> Result<u64, KernError> {
    // SAFETY: the kernel writes at most `len` bytes at `buf` and a
    // `RecvInfo` at `info`, only where writable.
    let (a, d) = unsafe { syscall4(nr::PORT_RECV, port, buf, len, info) };
    result(a, d)
}

/// `PORT_DESTROY(port)`.
pub fn port_destroy(port: u64) -> Result<u64, KernError> {
    // SAFETY: touches no memory.
    let (a, d) = unsafe { syscall1(nr::PORT_DESTROY, port) };
    result(a, d)
}
