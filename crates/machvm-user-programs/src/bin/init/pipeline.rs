//! Chapter 2: producer → filter → consumer over two ports, the data out of
//! line. The filter forwards each range it receives without touching it;
//! a 64 MiB message crosses both hops without a page copied.

use machvm_user::abi::MsgDesc;
use machvm_user::{println, sys};
use machvm_user_programs::util::{
    Check, Mem, PAGE, ck, exited, recv_ool, recv_word, send_ool, send_word, spawn, touch_stack,
    wait_for,
};

/// Messages the producer sends: sizes in pages (the last is 64 MiB).
const SIZES: [u64; 3] = [1, 256, 16384];
/// The word of the last message: "stop".
const STOP: u64 = u64::MAX;

/// The byte pattern word of page `i` of message `m`.
fn word(m: u64, i: u64) -> u64 {
    m << 32 | i
}

/// Runs the chapter: the filter and the consumer as children, the
/// producer here.
pub fn run() -> Result<(), u64> {
    println!("[2] producer -> filter -> consumer, out-of-line messages over two ports");
    let (a, b) = (sys::port_create(2).check(1)?, sys::port_create(2).check(1)?);
    let ready = sys::port_create(2).check(1)?;
    let filter = spawn(|| forward(a, b, ready)).check(2)?;
    let consumer = spawn(|| consume(b, ready)).check(3)?;
    touch_stack();
    recv_word(ready).check(4)?;
    recv_word(ready).check(4)?;
    for (m, &pages) in SIZES.iter().enumerate() {
        let r = Mem::allocate(pages * PAGE).check(5)?;
        r.stamp_pages(|i| word(m as u64, i));
        let before = sys::stats().check(6)?.cow_faults;
        // SAFETY: `r` is not used after the send.
        unsafe { send_ool(a, before, r.addr, r.len, MsgDesc::SRC_DESTROY) }.check(7)?;
    }
    send_word(a, STOP).check(8)?;
    ck(exited(&wait_for(filter).check(9)?, 0), 10)?;
    ck(exited(&wait_for(consumer).check(11)?, 0), 12)
}

/// The filter: forwards every message from `a` to `b` as it came.
fn forward(a: u64, b: u64, ready: u64) -> Result<(), u64> {
    touch_stack();
    send_word(ready, 0).check(20)?;
    loop {
        let (w, m, _) = recv_ool(a).check(21)?;
        if w == STOP {
            send_word(b, STOP).check(22)?;
            return Ok(());
        }
        // SAFETY: `m` is not used after the send.
        unsafe { send_ool(b, w, m.addr, m.len, MsgDesc::SRC_DESTROY) }.check(23)?;
    }
}

/// The consumer: checks every page of every message, and counts the
/// pages copied on the way.
fn consume(b: u64, ready: u64) -> Result<(), u64> {
    touch_stack();
    send_word(ready, 0).check(30)?;
    for (m, &pages) in SIZES.iter().enumerate() {
        let (before, r, _) = recv_ool(b).check(31)?;
        ck(r.len == pages * PAGE, 32)?;
        ck(r.pages_are(|i| word(m as u64, i)), 33)?;
        let copied = sys::stats().check(34)?.cow_faults - before;
        println!(
            "    consumer: {} KiB through the filter, every page read, pages copied: {copied}",
            r.len / 1024
        );
        // SAFETY: `r` is not used again.
        unsafe { sys::vm_deallocate(r.addr, r.len) }.check(35)?;
    }
    ck(recv_word(b).check(36)? == STOP, 37)
}
