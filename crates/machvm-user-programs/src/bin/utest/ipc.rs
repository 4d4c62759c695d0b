//! Ports and out-of-line messages.

use machvm_user::KernError;
use machvm_user::abi::{MsgDesc, RecvInfo};
use machvm_user::sys;
use machvm_user_programs::util::{
    Check, Mem, PAGE, ck, exited, recv_ool, recv_word, send_ool, send_word, spawn, touch_stack,
    wait_for,
};

/// The pattern of the out-of-line bytes.
fn pat(o: u64) -> u8 {
    (o * 7 % 253) as u8
}

/// The ports of a sender (the parent) and its receiver (a child).
#[derive(Clone, Copy)]
struct Pair {
    /// The messages.
    port: u64,
    /// The child's "ready" word.
    ready: u64,
}

impl Pair {
    /// The child's side of a quiet start: its stack made private, then
    /// "ready". Every later copy-on-write fault is a scenario's own.
    fn child_ready(self) -> Result<(), u64> {
        touch_stack();
        send_word(self.ready, 0).check(80).map(|_| ())
    }

    /// The parent's side: its stack made private, the child ready; the
    /// count of copy-on-write faults from there on.
    fn parent_ready(self) -> Result<u64, u64> {
        touch_stack();
        recv_word(self.ready).check(81)?;
        Ok(sys::stats().check(82)?.cow_faults)
    }
}

/// Two ports, and a child forked to run `child` on them; (ports, pid).
fn with_receiver(child: fn(Pair) -> Result<(), u64>) -> Result<(Pair, u64), u64> {
    let port = sys::port_create(4).check(90)?;
    let ready = sys::port_create(1).check(90)?;
    let p = Pair { port, ready };
    let pid = spawn(|| child(p)).check(91)?;
    Ok((p, pid))
}

/// The child's exit, as a check of the parent (0: passed).
fn child_result(pid: u64) -> Result<(), u64> {
    let st = wait_for(pid).check(92)?;
    if exited(&st, 0) {
        Ok(())
    } else {
        Err(if st.kind == 0 { st.code } else { 93 })
    }
}

/// [`machvm_user::abi::scenario::OOL_SNAPSHOT`]: writes after the send are
/// not in the message.
pub fn ool_snapshot() -> Result<(), u64> {
    let (p, pid) = with_receiver(|p| {
        let (w, m, _) = recv_ool(p.port).check(20)?;
        ck(w == 5 && m.len == 2 * PAGE, 21)?;
        ck(m.pages_are(|i| 0x51 + i), 22)
    })?;
    let m = Mem::allocate(2 * PAGE).check(1)?;
    m.stamp_pages(|i| 0x51 + i);
    // SAFETY: no SRC_DESTROY.
    unsafe { send_ool(p.port, 5, m.addr, m.len, 0) }.check(2)?;
    m.stamp_pages(|_| 0xbad);
    child_result(pid)
}

/// [`machvm_user::abi::scenario::OOL_SRC_DESTROY`]: the range moves; the
/// receiver reads it without a copy.
pub fn ool_src_destroy() -> Result<(), u64> {
    let (p, pid) = with_receiver(|p| {
        p.child_ready()?;
        let (before, m, _) = recv_ool(p.port).check(21)?;
        ck(m.pages_are(|i| 0xD0 + i), 22)?;
        ck(sys::stats().check(23)?.cow_faults == before, 24)
    })?;
    let m = Mem::allocate(8 * PAGE).check(1)?;
    m.stamp_pages(|i| 0xD0 + i);
    let before = p.parent_ready()?;
    // SAFETY: `m` is not used after the send.
    unsafe { send_ool(p.port, before, m.addr, m.len, MsgDesc::SRC_DESTROY) }.check(2)?;
    let gone = sys::vm_region(m.addr).map(|r| r.start >= m.addr + m.len);
    ck(gone.unwrap_or(true), 3)?;
    child_result(pid)
}

/// [`machvm_user::abi::scenario::OOL_PAGE_OFFSET`]: 3 pages + 17 bytes
/// from offset 0x123 arrive at offset 0x123.
pub fn ool_page_offset() -> Result<(), u64> {
    const OFF: u64 = 0x123;
    const LEN: u64 = 3 * PAGE + 17;
    let (p, pid) = with_receiver(|p| {
        let (_, m, info) = recv_ool(p.port).check(20)?;
        ck(info.ool_addr % PAGE == OFF, 21)?;
        ck(info.ool_len == LEN, 22)?;
        ck(m.bytes_are(pat), 23)
    })?;
    let base = Mem::allocate(5 * PAGE).check(1)?;
    // SAFETY: inside `base`, covered by no reference.
    let m = unsafe { Mem::from_raw(base.addr + OFF, LEN) };
    m.fill(pat);
    // SAFETY: no SRC_DESTROY.
    unsafe { send_ool(p.port, 0, m.addr, m.len, 0) }.check(2)?;
    child_result(pid)
}

/// Pages in the 64 MiB message.
const BIG_PAGES: u64 = 16384;

/// [`machvm_user::abi::scenario::OOL_64MIB`]: 16384 pages move with no
/// copy; one write then copies one.
pub fn ool_64mib() -> Result<(), u64> {
    let (p, pid) = with_receiver(|p| {
        p.child_ready()?;
        let (before, m, _) = recv_ool(p.port).check(20)?;
        ck(m.len == BIG_PAGES * PAGE, 21)?;
        ck(m.pages_are(|i| i ^ 0x64), 22)?;
        let read = sys::stats().check(23)?.cow_faults;
        ck(read == before, 24)?;
        m.wr(PAGE, 1);
        ck(sys::stats().check(25)?.cow_faults == read + 1, 26)
    })?;
    let m = Mem::allocate(BIG_PAGES * PAGE).check(1)?;
    m.stamp_pages(|i| i ^ 0x64);
    let before = p.parent_ready()?;
    // SAFETY: no SRC_DESTROY.
    unsafe { send_ool(p.port, before, m.addr, m.len, 0) }.check(3)?;
    child_result(pid)
}

/// [`machvm_user::abi::scenario::PORT_BOUNDED`]: capacity 4, 10 sends,
/// FIFO. `gated`: the receiver first waits on a gate port for the kernel.
pub fn port_bounded(gated: bool) -> Result<(), u64> {
    let port = sys::port_create(4).check(1)?;
    let gate = sys::port_create(1).check(2)?;
    let pid = spawn(|| {
        for i in 0..10 {
            send_word(port, 1000 + i).check(20 + i)?;
        }
        Ok(())
    })
    .check(3)?;
    if gated {
        // The kernel sends to the gate, or destroys it: either way, go.
        match recv_word(gate) {
            Ok(_) | Err(KernError::InvalidArgument) => {}
            Err(_) => return Err(4),
        }
    }
    for i in 0..10 {
        let mut buf = [0u8; 8];
        let mut info = RecvInfo::default();
        sys::port_recv(port, &mut buf, &mut info).check(5)?;
        ck(u64::from_le_bytes(buf) == 1000 + i, 6)?;
        ck(
            info.inline_len == 8 && info.sender == pid && info.ool_len == 0,
            7,
        )?;
    }
    child_result(pid)
}
