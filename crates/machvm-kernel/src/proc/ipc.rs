//! Ports and messages with out-of-line memory: the use `vm_map_copy` has
//! in Mach.
//!
//! A port is a bounded queue with a global name (a forked child uses its
//! parent's ports as they are). Sending snapshots the out-of-line range
//! into a [`VmMapCopy`] (`vm_read`: whole pages become copy-on-write
//! spans, no byte moves), optionally deallocating the sender's pages so the
//! message becomes their only holder; receiving places the copy anywhere in
//! the receiver's map at the page offset it had (`copyout`). A message
//! outlives its sender.
//!
//! Blocking follows the scheduler's rule: a sender to a full port or a
//! receiver on an empty one joins the port's waiters and is marked blocked
//! under the port lock — the lock its waker takes — so no wake-up is lost;
//! woken, it makes the call again. Lock order: the port table, then
//! [`SCHED`]. Neither is held across machvm or a user copy, and messages
//! (which hold copies) are dropped outside both.

use alloc::collections::{BTreeMap, VecDeque};
use arrayvec::ArrayVec;

use machvm::{PAGE_SIZE, VmMapCopy};
use machvm_user::abi::{MAX_INLINE, MsgDesc, RecvInfo, nr};

use super::syscall::{Ret, my_map};
use super::usercopy::{self, Plain};
use super::*;
use crate::locks::KernelLocks;

// SAFETY: `repr(C)` structs of `u64` fields with no padding (sizes asserted
// in the ABI crate).
unsafe impl Plain for MsgDesc {}
// SAFETY: as above.
unsafe impl Plain for RecvInfo {}

/// Most messages a port may queue.
const MAX_CAPACITY: u64 = 1024;

struct Message {
    sender: Pid,
    inline: ArrayVec<u8, { MAX_INLINE as usize }>,
    ool: Option<VmMapCopy<KernelLocks>>,
}

struct Port {
    capacity: usize,
    queue: VecDeque<Message>,
    /// Sends under way: counted against the capacity before the snapshot.
    reserved: usize,
    recv_waiters: VecDeque<Pid>,
    send_waiters: VecDeque<Pid>,
}

struct Ports {
    ports: BTreeMap<u64, Port>,
    next: u64,
}

static PORTS: SchedLock<Ports> = SchedLock::new(Ports {
    ports: BTreeMap::new(),
    next: 1,
});

/// The port call `n` with arguments `a`.
pub(crate) fn call(n: u64, a: [u64; 6]) -> Ret {
    match n {
        nr::PORT_CREATE => Ret::Done(create(a[0])),
        nr::PORT_SEND => send(a[0], a[1]),
        nr::PORT_RECV => recv(a[0], a[1], a[2], a[3]),
        nr::PORT_DESTROY => Ret::Done(destroy(a[0]).map(|()| 0)),
        _ => Ret::Done(Err(KernError::InvalidArgument)),
    }
}

fn create(capacity: u64) -> Result<u64, KernError> {
    if !(1..=MAX_CAPACITY).contains(&capacity) {
        return Err(KernError::InvalidArgument);
    }
    let mut p = PORTS.lock();
    let name = p.next;
    p.next += 1;
    p.ports.insert(
        name,
        Port {
            capacity: capacity as usize,
            queue: VecDeque::new(),
            reserved: 0,
            recv_waiters: VecDeque::new(),
            send_waiters: VecDeque::new(),
        },
    );
    Ok(name)
}

/// Wakes the first of `waiters` still waiting for `w`.
fn wake_one(waiters: &mut VecDeque<Pid>, w: Wait) {
    let mut s = SCHED.lock();
    while let Some(pid) = waiters.pop_front() {
        if s.wake(pid, |x| x == w) {
            break;
        }
    }
}

/// Joins `waiters` and marks the caller blocked on `w`.
fn wait_on(waiters: &mut VecDeque<Pid>, w: Wait) -> Ret {
    let me = current();
    if !waiters.contains(&me) {
        waiters.push_back(me);
    }
    SCHED.lock().block(me, w);
    Ret::Blocked
}

fn send(name: u64, desc_ptr: u64) -> Ret {
    match prepare(desc_ptr) {
        Ok((desc, inline)) => send_message(name, desc, inline),
        Err(e) => Ret::Done(Err(e)),
    }
}

/// Copies the descriptor and the inline bytes in and checks them.
fn prepare(desc_ptr: u64) -> Result<(MsgDesc, ArrayVec<u8, { MAX_INLINE as usize }>), KernError> {
    let desc: MsgDesc = usercopy::read(desc_ptr)?;
    if desc.inline_len > MAX_INLINE || desc.flags & !MsgDesc::SRC_DESTROY != 0 {
        return Err(KernError::InvalidArgument);
    }
    usercopy::check_range(desc.ool_addr, desc.ool_len)?;
    let mut inline = ArrayVec::new();
    inline.extend(core::iter::repeat_n(0, desc.inline_len as usize));
    usercopy::copy_in(&mut inline, desc.inline_ptr)?;
    Ok((desc, inline))
}

fn send_message(name: u64, desc: MsgDesc, inline: ArrayVec<u8, { MAX_INLINE as usize }>) -> Ret {
    {
        let mut p = PORTS.lock();
        let Some(port) = p.ports.get_mut(&name) else {
            return Ret::Done(Err(KernError::InvalidArgument));
        };
        if port.queue.len() + port.reserved >= port.capacity {
            return wait_on(&mut port.send_waiters, Wait::Send(name));
        }
        port.reserved += 1;
    }
    let ool = match snapshot(&desc) {
        Ok(ool) => ool,
        Err(e) => {
            // A port destroyed meanwhile has no reservation left to undo.
            unreserve(name, None).ok();
            return Ret::Done(Err(e));
        }
    };
    let msg = Message {
        sender: current(),
        inline,
        ool,
    };
    Ret::Done(unreserve(name, Some(msg)).map(|()| 0))
}

/// The out-of-line snapshot (copy-in), then the sender's pages dropped if
/// asked.
fn snapshot(desc: &MsgDesc) -> Result<Option<VmMapCopy<KernelLocks>>, KernError> {
    if desc.ool_len == 0 {
        return Ok(None);
    }
    let map = my_map()?;
    let copy = machvm::vm_read(&map, desc.ool_addr, desc.ool_len)?;
    if desc.flags & MsgDesc::SRC_DESTROY != 0 {
        let start = desc.ool_addr & !(PAGE_SIZE - 1);
        let end = (desc.ool_addr + desc.ool_len).next_multiple_of(PAGE_SIZE);
        map.deallocate(start, end - start)?;
    }
    SCHED.lock().stats.ool_bytes += desc.ool_len;
    Ok(Some(copy))
}

/// Ends a send: the reservation goes, the message (if any) is queued and a
/// receiver woken; without one, a sender may use the room.
fn unreserve(name: u64, msg: Option<Message>) -> Result<(), KernError> {
    let mut p = PORTS.lock();
    let Some(port) = p.ports.get_mut(&name) else {
        drop(p);
        drop(msg);
        return Err(KernError::InvalidArgument);
    };
    port.reserved -= 1;
    match msg {
        Some(m) => {
            port.queue.push_back(m);
            wake_one(&mut port.recv_waiters, Wait::Recv(name));
        }
        None => wake_one(&mut port.send_waiters, Wait::Send(name)),
    }
    Ok(())
}

fn recv(name: u64, buf: u64, buf_len: u64, info_ptr: u64) -> Ret {
    let checked = usercopy::check_range(buf, buf_len)
        .and_then(|()| usercopy::write(info_ptr, &RecvInfo::default()));
    if let Err(e) = checked {
        return Ret::Done(Err(e));
    }
    let msg = {
        let mut p = PORTS.lock();
        let Some(port) = p.ports.get_mut(&name) else {
            return Ret::Done(Err(KernError::InvalidArgument));
        };
        match port.queue.pop_front() {
            Some(m) => m,
            None => return wait_on(&mut port.recv_waiters, Wait::Recv(name)),
        }
    };
    Ret::Done(deliver(name, msg, buf, buf_len, info_ptr))
}

/// Copies a taken message out; on failure it goes back to the queue's head.
fn deliver(
    name: u64,
    mut msg: Message,
    buf: u64,
    buf_len: u64,
    info_ptr: u64,
) -> Result<u64, KernError> {
    let inline_len = msg.inline.len() as u64;
    let placed = if inline_len > buf_len {
        Err(KernError::InvalidArgument)
    } else {
        usercopy::copy_out(buf, &msg.inline).and_then(|()| place_ool(&mut msg))
    };
    let (ool_addr, ool_len) = match placed {
        Ok(v) => v,
        Err(e) => {
            requeue(name, msg);
            return Err(e);
        }
    };
    let info = RecvInfo {
        inline_len,
        ool_addr,
        ool_len,
        sender: msg.sender,
    };
    drop(msg);
    let mut p = PORTS.lock();
    if let Some(port) = p.ports.get_mut(&name) {
        wake_one(&mut port.send_waiters, Wait::Send(name));
    }
    drop(p);
    usercopy::write(info_ptr, &info).map(|()| 0)
}

/// Maps the out-of-line copy into the receiver (copy-out): its address and
/// length. On failure the copy stays in the message.
fn place_ool(msg: &mut Message) -> Result<(u64, u64), KernError> {
    let Some(copy) = msg.ool.take() else {
        return Ok((0, 0));
    };
    let len = copy.len();
    let placed = match my_map() {
        Ok(map) => copy.copyout(&map),
        Err(e) => Err((e, copy)),
    };
    placed.map(|addr| (addr, len)).map_err(|(e, copy)| {
        msg.ool = Some(copy);
        e
    })
}

fn requeue(name: u64, msg: Message) {
    let mut p = PORTS.lock();
    match p.ports.get_mut(&name) {
        Some(port) => port.queue.push_front(msg),
        None => {
            drop(p);
            drop(msg);
        }
    }
}

/// `PORT_DESTROY`: the port, its messages and its waiters' waits end.
fn destroy(name: u64) -> Result<(), KernError> {
    let port = PORTS
        .lock()
        .ports
        .remove(&name)
        .ok_or(KernError::InvalidArgument)?;
    wake_all(&port, name);
    drop(port);
    Ok(())
}

fn wake_all(port: &Port, name: u64) {
    let mut s = SCHED.lock();
    for &pid in &port.recv_waiters {
        s.wake(pid, |w| w == Wait::Recv(name));
    }
    for &pid in &port.send_waiters {
        s.wake(pid, |w| w == Wait::Send(name));
    }
}

/// Drops every port and its messages (the suite's reset).
pub(crate) fn clear_ports() {
    let ports = core::mem::take(&mut PORTS.lock().ports);
    for (name, port) in &ports {
        wake_all(port, *name);
    }
    drop(ports);
}

/// Destroys port `name` from the kernel (its waiters' calls fail).
pub fn destroy_port(name: u64) -> Result<(), KernError> {
    destroy(name)
}

/// How many messages `name` holds (`None`: no such port).
pub fn queued(name: u64) -> Option<usize> {
    PORTS.lock().ports.get(&name).map(|p| p.queue.len())
}
