//! Ports and out-of-line messages between tasks.

use super::*;

pub(super) fn ool_message_is_a_snapshot() -> Result<(), String> {
    passes(s::OOL_SNAPSHOT, 0, "the sender's later write unseen")
}

pub(super) fn ool_src_destroy() -> Result<(), String> {
    passes(s::OOL_SRC_DESTROY, 0, "the sender's range gone, no copy")
}

pub(super) fn ool_copyout_keeps_page_offset() -> Result<(), String> {
    passes(
        s::OOL_PAGE_OFFSET,
        0,
        "3 pages + 17 bytes from offset 0x123",
    )
}

/// 16384 touched pages travel and are read on the other side without a
/// page copied (the program checks `cow_faults` around the receive), and
/// the message's bytes are counted.
pub(super) fn ool_64mib_moves_without_copy() -> Result<(), String> {
    let bytes = proc::stats().ool_bytes;
    passes(s::OOL_64MIB, 0, "64 MiB by out-of-line message")?;
    let sent = proc::stats().ool_bytes - bytes;
    ensure!(sent >= 64 << 20, "out-of-line bytes sent: {sent}");
    Ok(())
}

/// A port of capacity 4: the sender is seen blocked on it with 4 queued
/// before the receiver (held at a gate port) takes anything; then all 10
/// arrive in order.
pub(super) fn port_queue_is_bounded() -> Result<(), String> {
    let pid = proc::spawn("utest", arg(s::PORT_BOUNDED, 1)).map_err(|e| format!("spawn: {e}"))?;
    let blocked = |want: fn(proc::Wait) -> Option<u64>| {
        proc::pids()
            .into_iter()
            .find_map(|p| match proc::state_of(p) {
                Some(proc::State::Blocked(w)) => want(w),
                _ => None,
            })
    };
    let full = || {
        blocked(|w| match w {
            proc::Wait::Send(port) => Some(port),
            _ => None,
        })
        .is_some_and(|port| proc::queued(port) == Some(4))
    };
    let gated = || {
        blocked(|w| match w {
            proc::Wait::Recv(port) => Some(port),
            _ => None,
        })
        .is_some()
    };
    proc::run_until(|| full() && gated());
    let gate = blocked(|w| match w {
        proc::Wait::Recv(port) => Some(port),
        _ => None,
    })
    .ok_or("the receiver left its gate")?;
    ctx(proc::destroy_port(gate), "open the gate")?;
    match proc::wait_exit(pid) {
        Some(ExitStatus::Exited(0)) => proc::verify(),
        other => Err(format!("receiver: {other:?}")),
    }
}
