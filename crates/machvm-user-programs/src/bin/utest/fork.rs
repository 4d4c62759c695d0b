//! Fork, inheritance and wait.

use machvm_user::KernError::InvalidArgument;
use machvm_user::abi::{WaitStatus, inherit};
use machvm_user::sys;
use machvm_user_programs::util::{
    Check, Mem, PAGE, ck, exited, recv_word, send_word, spawn, wait_for,
};

/// [`machvm_user::abi::scenario::FORK_COW`]: writes after the fork stay
/// private on both sides; two ports order them.
pub fn cow() -> Result<(), u64> {
    let m = Mem::allocate(2 * PAGE).check(1)?;
    m.wr(0, 10);
    m.wr(PAGE, 20);
    let (to_child, to_parent) = (sys::port_create(1).check(2)?, sys::port_create(1).check(2)?);
    let before = sys::stats().check(3)?.cow_faults;
    let pid = spawn(|| {
        ck(m.rd(0) == 10 && m.rd(PAGE) == 20, 20)?;
        m.wr(0, 11); // the child's write
        send_word(to_parent, 1).check(21)?;
        recv_word(to_child).check(22)?; // the parent has written
        ck(m.rd(0) == 11 && m.rd(PAGE) == 20, 23)
    })
    .check(4)?;
    recv_word(to_parent).check(5)?;
    ck(m.rd(0) == 10, 6)?; // the child's write is not seen
    m.wr(PAGE, 21); // the parent's write
    send_word(to_child, 1).check(7)?;
    let st = wait_for(pid).check(8)?;
    ck(exited(&st, 0), 9)?;
    ck(m.rd(0) == 10 && m.rd(PAGE) == 21, 10)?;
    ck(sys::stats().check(11)?.cow_faults >= before + 2, 12)
}

/// [`machvm_user::abi::scenario::FORK_SHARE`]: the child's writes to a
/// `Share` range are the parent's.
pub fn share() -> Result<(), u64> {
    let m = Mem::allocate(PAGE).check(1)?;
    sys::vm_inherit(m.addr, PAGE, inherit::SHARE).check(2)?;
    m.wr(0, 1);
    let pid = spawn(|| {
        ck(m.rd(0) == 1, 20)?;
        m.wr(0, 2);
        Ok(())
    })
    .check(3)?;
    let st = wait_for(pid).check(4)?;
    ck(exited(&st, 0), 5)?;
    ck(m.rd(0) == 2, 6)
}

/// [`machvm_user::abi::scenario::FORK_NONE`]: the child has no `None`
/// range; its read is killed.
pub fn none() -> Result<(), u64> {
    let m = Mem::allocate(PAGE).check(1)?;
    m.wr(0, 1);
    sys::vm_inherit(m.addr, PAGE, inherit::NONE).check(2)?;
    let pid = spawn(|| {
        let v = m.rd(0);
        core::hint::black_box(v);
        Err(20)
    })
    .check(3)?;
    let st = wait_for(pid).check(4)?;
    ck(st.pid == pid && st.kind == WaitStatus::FAULT, 5)?;
    ck(st.access == 1 && st.code == 1 && st.addr == m.addr, 6)?;
    ck(m.rd(0) == 1, 7)
}

/// [`machvm_user::abi::scenario::WAIT_ORPHANS`]: exit before wait, wait
/// any, an orphan, no child.
pub fn wait_orphans() -> Result<(), u64> {
    let done = sys::port_create(1).check(1)?;
    // The first child exits before the parent waits: it tells so first.
    let a = spawn(|| {
        send_word(done, 1).check(20)?;
        Ok(())
    })
    .check(2)?;
    recv_word(done).check(3)?;
    let st = wait_for(a).check(4)?;
    ck(st.pid == a && exited(&st, 0), 5)?;
    // Two children, reaped by WAIT(0) in any order.
    let b = spawn(|| Err(3)).check(6)?;
    let c = spawn(|| Err(4)).check(6)?;
    let (s1, s2) = (wait_for(0).check(7)?, wait_for(0).check(7)?);
    let mut got = [(s1.pid, s1.code), (s2.pid, s2.code)];
    got.sort();
    let mut want = [(b, 3), (c, 4)];
    want.sort();
    ck(got == want, 8)?;
    // An orphan: the child forks a grandchild and exits first.
    let d = spawn(|| {
        spawn(|| {
            recv_word(done).check(30)?; // after its parent is reaped
            Ok(())
        })
        .check(31)?;
        Ok(())
    })
    .check(9)?;
    ck(exited(&wait_for(d).check(10)?, 0), 11)?;
    send_word(done, 2).check(12)?;
    sys::wait(0, &mut WaitStatus::default()).fails_with(InvalidArgument, 13)?;
    Ok(())
}
