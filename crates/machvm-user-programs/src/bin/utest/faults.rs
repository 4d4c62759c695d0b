//! Scenarios that must be killed, and system calls given bad pointers.

use core::arch::asm;

use machvm_user::KernError::{InvalidAddress, InvalidArgument};
use machvm_user::abi::{USER_MAX, WaitStatus, scenario};
use machvm_user::{println, sys};
use machvm_user_programs::util::{self, Check, Mem, ck, exited, spawn, wait_for};

/// [`scenario::HELLO`]: a line on the console, exit 7.
pub fn hello() -> u64 {
    let msg = b"hello from ring 3\n";
    match sys::console_write(msg) {
        Ok(n) if n == msg.len() as u64 => 7,
        _ => 1,
    }
}

/// An address in this program's text: the first byte of this function.
#[inline(never)]
pub fn text_addr() -> u64 {
    text_addr as *const () as u64
}

/// Stores to the text; returns only if the store was allowed.
#[inline(never)]
fn store_to_text() {
    let p = text_addr() as *mut u8;
    // SAFETY: deliberately wrong: the text is `r-x`, so the store faults
    // and the kernel kills the task; nothing Rust relies on changes.
    unsafe { p.write_volatile(0xCC) };
}

/// [`scenario::WRITE_TEXT`]: killed by its store to the text.
pub fn write_text() -> Result<(), u64> {
    store_to_text();
    Err(1)
}

/// [`scenario::WRITE_TEXT_CHILD`]: a forked child marks a `Share` page and
/// is killed by a store to its text; the parent lives on with the page.
pub fn write_text_child() -> Result<(), u64> {
    let p = Mem::allocate(4096).check(2)?;
    sys::vm_inherit(p.addr, 4096, machvm_user::abi::inherit::SHARE).check(3)?;
    let pid = spawn(|| {
        p.wr(0, 0x5eed);
        store_to_text();
        Err(1)
    })
    .check(4)?;
    let st = wait_for(pid).check(5)?;
    ck(st.pid == pid && st.kind == WaitStatus::FAULT, 6)?;
    ck(st.access == 2 && st.code == 2, 7)?;
    ck(st.addr == text_addr(), 8)?;
    ck(p.rd(0) == 0x5eed, 9)?;
    p.wr(8, 1);
    ck(p.rd(8) == 1, 10)
}

/// A `ret` in `.data` (writable, so never executable).
static mut RET_IN_DATA: [u8; 16] = [0xC3; 16];

/// [`scenario::EXEC_DATA`]: a call into `.data` is killed (NX).
pub fn exec_data() -> Result<(), u64> {
    let target = (&raw const RET_IN_DATA) as usize;
    // SAFETY: deliberately wrong: the page is `rw-` and mapped NX, so the
    // fetch faults and the kernel kills the task. Were it executed, the
    // byte is a `ret`, which returns here with nothing changed.
    let f: extern "C" fn() = unsafe { core::mem::transmute(target) };
    f();
    Err(1)
}

/// [`scenario::READ_UNMAPPED`]: a load from [`scenario::UNMAPPED_ADDR`].
pub fn read_unmapped() -> Result<(), u64> {
    let p = scenario::UNMAPPED_ADDR as *const u64;
    // SAFETY: deliberately wrong: nothing is mapped there, the load faults
    // and the kernel kills the task.
    let v = unsafe { p.read_volatile() };
    core::hint::black_box(v);
    Err(1)
}

/// [`scenario::UD2`], [`scenario::HLT`], [`scenario::INT_F0`]: killed by
/// the trap.
pub fn trap(which: u64) -> Result<(), u64> {
    // SAFETY: each instruction only raises an exception in ring 3 (#UD,
    // #GP, #GP through the DPL-0 gate); the kernel kills the task.
    unsafe {
        match which {
            scenario::UD2 => asm!("ud2", options(nomem, nostack)),
            scenario::HLT => asm!("hlt", options(nomem, nostack)),
            _ => asm!("int 0xF0", options(nomem, nostack)),
        }
    }
    Err(1)
}

/// [`scenario::BAD_POINTERS`]: each bad pointer is `InvalidAddress`.
pub fn bad_pointers() -> Result<(), u64> {
    sys::console_write_raw(0xffff_8000_0000_0000, 8).fails_with(InvalidAddress, 1)?;
    sys::console_write_raw(scenario::UNMAPPED_ADDR, 8).fails_with(InvalidAddress, 2)?;
    sys::console_write_raw(u64::MAX - 3, 8).fails_with(InvalidAddress, 3)?;
    sys::console_write_raw(USER_MAX - 8, 16).fails_with(InvalidAddress, 4)?;
    let text = text_addr();
    let pid = spawn(|| Ok(())).check(12)?;
    // SAFETY: the kernel must refuse the text (read-only); were it to
    // write, it would change code this scenario does not run again.
    unsafe { sys::wait_raw(pid, text) }.fails_with(InvalidAddress, 5)?;
    let st = wait_for(pid).check(6)?;
    ck(exited(&st, 0) && st.pid == pid, 6)?;
    // SAFETY: as above.
    unsafe { sys::vm_region_raw(0, text) }.fails_with(InvalidAddress, 7)?;
    // SAFETY: as above.
    unsafe { sys::stats_raw(text) }.fails_with(InvalidAddress, 8)?;
    recv_into_text(text)?;
    sys::wait(0, &mut WaitStatus::default()).fails_with(InvalidArgument, 13)?;
    println!("utest: bad pointers refused");
    Ok(())
}

/// `PORT_RECV` with the buffer, then the info, in the text: refused, the
/// message stays queued.
fn recv_into_text(text: u64) -> Result<(), u64> {
    let port = sys::port_create(1).check(14)?;
    util::send_word(port, 42).check(15)?;
    let mut info = machvm_user::abi::RecvInfo::default();
    let info_ptr = &mut info as *mut _ as u64;
    // SAFETY: the kernel must refuse the text; `info` is a local.
    unsafe { sys::port_recv_raw(port, text, 8, info_ptr) }.fails_with(InvalidAddress, 9)?;
    let mut buf = [0u8; 8];
    let buf_ptr = buf.as_mut_ptr() as u64;
    // SAFETY: `buf` is a local; the kernel must refuse the text for the info.
    unsafe { sys::port_recv_raw(port, buf_ptr, 8, text) }.fails_with(InvalidAddress, 10)?;
    let w = util::recv_word(port).check(11)?;
    ck(w == 42, 11)?;
    sys::port_destroy(port).check(16)?;
    Ok(())
}
