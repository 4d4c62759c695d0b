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
//! woken, it makes the call again. Every change wakes *all* waiters of its
//! kind (a message queued, taken or put back; room made): a woken task
//! that cannot use the change (a buffer too small, a bad pointer) blocks
//! again or fails without stranding one that could. Lock order: the port
//! table, then [`SCHED`]. Neither is held across machvm or a user copy,
//! and messages (which hold copies) are dropped outside both.
//!
//! Limits keep a task from exhausting the kernel heap: `abi::MAX_PORTS`
//! ports, `abi::MAX_MESSAGES` messages queued or being sent (beyond
//! either: `ResourceShortage`), each port's queue allocated at creation. A
//! port dies with the task that created it (Mach's receive right), so the
//! frames its messages hold come back when that task ends.
//!
//! Invariants (checked by `verify`, through `proc::verify`): the message
//! count equals what every queue holds plus every reservation (a send
//! under way, or a message being delivered: it keeps its slot); no port
//! holds more than its capacity; the limits hold.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};

use machvm::{PAGE_SIZE, VmMapCopy};
use machvm_user::abi::{self, MAX_INLINE, MsgDesc, RecvInfo, nr};

use super::syscall::{Ret, my_map};
use super::usercopy::{self, Plain};
use super::*;
use crate::locks::KernelLocks;

// SAFETY: `repr(C)` structs of `u64` fields with no padding (sizes asserted
// in the ABI crate).
unsafe impl Plain for MsgDesc {}
// SAFETY: as above.
unsafe impl Plain for RecvInfo {}

const MAX_PORTS: usize = abi::MAX_PORTS as usize;
const MAX_MESSAGES: usize = abi::MAX_MESSAGES as usize;

struct Message {
    sender: Pid,
    inline: Box<[u8]>,
    ool: Option<VmMapCopy<KernelLocks>>,
}

struct Port {
    /// The task that created it; the port goes when it ends.
    owner: Pid,
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
    /// Messages queued or reserved, over every port.
    messages: usize,
}

static PORTS: SchedLock<Ports> = SchedLock::new(Ports {
    ports: BTreeMap::new(),
    next: 1,
    messages: 0,
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
    if !(1..=abi::MAX_PORT_CAPACITY).contains(&capacity) {
        return Err(KernError::InvalidArgument);
    }
    // Every allocation the queue will need, made now: a full queue never
    // grows, and a failure here is a clean `ResourceShortage`.
    let mut queue = VecDeque::new();
    queue
        .try_reserve_exact(capacity as usize)
        .map_err(|_| KernError::ResourceShortage)?;
    let mut p = PORTS.lock();
    if p.ports.len() >= MAX_PORTS {
        return Err(KernError::ResourceShortage);
    }
    let name = p.next;
    p.next += 1;
    let port = Port {
        owner: current(),
        capacity: capacity as usize,
        queue,
        reserved: 0,
        recv_waiters: VecDeque::new(),
        send_waiters: VecDeque::new(),
    };
    p.ports.insert(name, port);
    Ok(name)
}

/// Wakes every one of `waiters` still waiting for `w`.
fn wake_all(waiters: &mut VecDeque<Pid>, w: Wait) {
    let mut s = SCHED.lock();
    for pid in waiters.drain(..) {
        s.wake(pid, |x| x == w);
    }
}

/// Joins `waiters` and marks the caller blocked on `w`.
fn wait_on(waiters: &mut VecDeque<Pid>, w: Wait) -> Ret {
    let me = current();
    if !waiters.contains(&me) {
        if waiters.try_reserve(1).is_err() {
            return Ret::Done(Err(KernError::ResourceShortage));
        }
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
fn prepare(desc_ptr: u64) -> Result<(MsgDesc, Box<[u8]>), KernError> {
    let desc: MsgDesc = usercopy::read(desc_ptr)?;
    if desc.inline_len > MAX_INLINE || desc.flags & !MsgDesc::SRC_DESTROY != 0 {
        return Err(KernError::InvalidArgument);
    }
    usercopy::check_range(desc.ool_addr, desc.ool_len)?;
    let n = desc.inline_len as usize;
    let mut inline = Vec::new();
    inline
        .try_reserve_exact(n)
        .map_err(|_| KernError::ResourceShortage)?;
    inline.resize(n, 0);
    usercopy::copy_in(&mut inline, desc.inline_ptr)?;
    Ok((desc, inline.into_boxed_slice()))
}

fn send_message(name: u64, desc: MsgDesc, inline: Box<[u8]>) -> Ret {
    {
        let mut p = PORTS.lock();
        let total = p.messages;
        let Some(port) = p.ports.get_mut(&name) else {
            return Ret::Done(Err(KernError::InvalidArgument));
        };
        if port.queue.len() + port.reserved >= port.capacity {
            return wait_on(&mut port.send_waiters, Wait::Send(name));
        }
        if total >= MAX_MESSAGES {
            return Ret::Done(Err(KernError::ResourceShortage));
        }
        port.reserved += 1;
        p.messages += 1;
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
        // Destroyed meanwhile: its count went with it.
        drop(p);
        drop(msg);
        return Err(KernError::InvalidArgument);
    };
    port.reserved -= 1;
    match msg {
        Some(m) => {
            // Within the capacity reserved at creation: no allocation.
            port.queue.push_back(m);
            wake_all(&mut port.recv_waiters, Wait::Recv(name));
        }
        None => {
            wake_all(&mut port.send_waiters, Wait::Send(name));
            p.messages -= 1;
        }
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
            // Its slot stays taken (as a reservation) until it is
            // delivered or back at the head: no sender can take it.
            Some(m) => {
                port.reserved += 1;
                m
            }
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
    delivered(name);
    usercopy::write(info_ptr, &info).map(|()| 0)
}

/// Maps the out-of-line copy into the receiver (copy-out): its address and
/// length. On failure the copy stays in the message.
fn place_ool(msg: &mut Message) -> Result<(u64, u64), KernError> {
    let Some(copy) = msg.ool.take() else {
        return Ok((0, 0));
    };
    let len = copy.len();
    let map = my_map().and_then(|m| super::vmcalls::room_for_entries(&m).map(|()| m));
    let placed = match map {
        Ok(map) => copy.copyout(&map),
        Err(e) => Err((e, copy)),
    };
    placed.map(|addr| (addr, len)).map_err(|(e, copy)| {
        msg.ool = Some(copy);
        e
    })
}

/// A message left its port: its slot is free, and the senders are woken
/// for it. (A port destroyed meanwhile took the slot's count with it.)
fn delivered(name: u64) {
    let mut p = PORTS.lock();
    if let Some(port) = p.ports.get_mut(&name) {
        port.reserved -= 1;
        wake_all(&mut port.send_waiters, Wait::Send(name));
        p.messages -= 1;
    }
}

/// Puts a message the receiver could not take back at the queue's head, in
/// the slot it kept, and wakes the other receivers for it. (A port
/// destroyed meanwhile: the message goes with it.)
fn requeue(name: u64, msg: Message) {
    let mut p = PORTS.lock();
    match p.ports.get_mut(&name) {
        Some(port) => {
            port.reserved -= 1;
            port.queue.push_front(msg);
            wake_all(&mut port.recv_waiters, Wait::Recv(name));
        }
        None => {
            drop(p);
            drop(msg);
        }
    }
}

/// `PORT_DESTROY`: the port, its messages and its waiters' waits end.
fn destroy(name: u64) -> Result<(), KernError> {
    let port = remove(&mut PORTS.lock(), name).ok_or(KernError::InvalidArgument)?;
    drop(port);
    Ok(())
}

/// Takes port `name` out of the table, its messages uncounted and its
/// waiters woken; the caller drops it outside the lock.
fn remove(p: &mut Ports, name: u64) -> Option<Port> {
    let mut port = p.ports.remove(&name)?;
    p.messages -= port.queue.len() + port.reserved;
    wake_all(&mut port.recv_waiters, Wait::Recv(name));
    wake_all(&mut port.send_waiters, Wait::Send(name));
    Some(port)
}

/// Destroys the ports task `pid` created (at its exit).
pub(crate) fn drop_ports_of(pid: Pid) {
    let gone: Vec<Port> = {
        let mut p = PORTS.lock();
        let names: Vec<u64> = p
            .ports
            .iter()
            .filter(|(_, port)| port.owner == pid)
            .map(|(&n, _)| n)
            .collect();
        names
            .into_iter()
            .filter_map(|n| remove(&mut p, n))
            .collect()
    };
    drop(gone);
}

/// Drops every port and its messages (the suite's reset).
pub(crate) fn clear_ports() {
    let gone: Vec<Port> = {
        let mut p = PORTS.lock();
        let names: Vec<u64> = p.ports.keys().copied().collect();
        names
            .into_iter()
            .filter_map(|n| remove(&mut p, n))
            .collect()
    };
    drop(gone);
}

/// Creates a port owned by the kernel (it outlives every task; the
/// suite's reset drops it), for tests that pass it to raw-code tasks.
pub fn create_port(capacity: u64) -> Result<u64, KernError> {
    debug_assert_eq!(current(), 0, "a task's ports are made by PORT_CREATE");
    create(capacity)
}

/// Destroys port `name` from the kernel (its waiters' calls fail).
pub fn destroy_port(name: u64) -> Result<(), KernError> {
    destroy(name)
}

/// Checks the port table: the message count is what the queues and the
/// reservations hold, no queue is past its capacity, and the limits hold.
pub(crate) fn verify() -> Result<(), alloc::string::String> {
    let p = PORTS.lock();
    let held: usize = p.ports.values().map(|q| q.queue.len() + q.reserved).sum();
    if held != p.messages {
        return Err(alloc::format!(
            "{} messages counted, {held} held",
            p.messages
        ));
    }
    if let Some((n, q)) = p
        .ports
        .iter()
        .find(|(_, q)| q.queue.len() + q.reserved > q.capacity)
    {
        return Err(alloc::format!(
            "port {n} holds {} of {}",
            q.queue.len() + q.reserved,
            q.capacity
        ));
    }
    if p.ports.len() > MAX_PORTS || p.messages > MAX_MESSAGES {
        return Err(alloc::format!(
            "{} ports, {} messages",
            p.ports.len(),
            p.messages
        ));
    }
    Ok(())
}

/// How many messages `name` holds (`None`: no such port).
pub fn queued(name: u64) -> Option<usize> {
    PORTS.lock().ports.get(&name).map(|p| p.queue.len())
}
