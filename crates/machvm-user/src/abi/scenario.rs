//! The scenarios of the `utest` program (crate `machvm-user-programs`),
//! named for the kernel's tests.
//!
//! `utest` takes one argument (`rdi` at entry): [`arg`]`(scenario,
//! param)`. Unless said otherwise a scenario exits 0 when every check
//! passed, else with the number of the first failed check (1, 2, ...), and
//! 100 for an unknown scenario. "Killed" means the task must not survive
//! the access: if it does, it exits 1.
//!
//! ```
//! use machvm_user::abi::scenario::{self, arg, split};
//! assert_eq!(split(arg(scenario::SPIN_PREEMPT, 3)), (scenario::SPIN_PREEMPT, 3));
//! ```

/// Console write, then `exit(7)`.
pub const HELLO: u64 = 1;
/// `vm_allocate` 64 pages anywhere, write each, read each back.
pub const TOUCH_PAGES: u64 = 2;
/// Writes to its own text: killed, `FAULT`, access W, code 2
/// (`ProtectionFailure`), addr in the text.
pub const WRITE_TEXT: u64 = 3;
/// A parent and a forked crasher over a `Share` page: the child marks the
/// page, then writes to its text and is killed; the parent checks the
/// child's `WaitStatus` (`FAULT`, W, 2, the address) and the mark, writes
/// the page again, exits 0.
pub const WRITE_TEXT_CHILD: u64 = 4;
/// Calls a `ret` placed in a data page (NX): killed, `FAULT`, access X,
/// code 2, addr = that byte.
pub const EXEC_DATA: u64 = 5;
/// Reads [`UNMAPPED_ADDR`]: killed, `FAULT`, access R, code 1
/// (`InvalidAddress`).
pub const READ_UNMAPPED: u64 = 6;
/// `ud2`: killed, `TRAP`, vector 6.
pub const UD2: u64 = 7;
/// `hlt` in ring 3: killed, `TRAP`, vector 13.
pub const HLT: u64 = 8;
/// `int 0xF0` (a DPL-0 gate): killed, `TRAP`, vector 13.
pub const INT_F0: u64 = 9;
/// Bad pointers, each must return `InvalidAddress`: `CONSOLE_WRITE` of a
/// kernel pointer (check 1), of an unmapped range (2), of a range whose end
/// overflows (3), of a range straddling `USER_MAX` (4); `WAIT` with its
/// status into the text (5; a child that exited is waited for, and must
/// still be reapable with a good pointer: 6); `VM_REGION` (7) and
/// `STATS` (8) into the text; `PORT_RECV` with its buffer (9) and its info
/// (10) into the text (the message stays queued: 11).
pub const BAD_POINTERS: u64 = 10;
/// `VM_ALLOCATE` at [`FIXED_ADDR`] and anywhere, `VM_REGION` (start, size,
/// `rw-`/`rwx`, Copy, not shared), `VM_PROTECT` (current, then maximum,
/// then a raise past the maximum refused), `VM_INHERIT`, `VM_WIRE` and
/// unwire, `VM_DEALLOCATE` (the region is gone).
pub const VM_ROUND_TRIP: u64 = 11;
/// `VM_READ` is a snapshot (later writes to the source unseen, the copy at
/// the same page offset); `VM_WRITE` overwrites; overlapping `VM_COPY`
/// both ways behaves as `memmove`.
pub const VM_READ_WRITE_COPY: u64 = 12;
/// `VM_MAP_COPY` into a forked child at [`FIXED_ADDR`] with `DST_ALLOC`,
/// then again with `SRC_DESTROY`; the child, told by a port, checks both
/// copies' bytes; the parent's destroyed range is gone (`VM_REGION` finds
/// nothing there).
pub const VM_MAP_COPY_CHILD: u64 = 13;
/// Fork copy-on-write both ways, sequenced by two ports: each side writes
/// after the fork and must not see the other's write; `cow_faults` rises.
pub const FORK_COW: u64 = 14;
/// `Share` inheritance: the child writes and exits; the parent sees the
/// write after `WAIT`.
pub const FORK_SHARE: u64 = 15;
/// `None` inheritance: the child's read of the range kills it; the parent
/// checks `FAULT`, access R, code 1, the address.
pub const FORK_NONE: u64 = 16;
/// An out-of-line message is a snapshot: the sender writes after sending,
/// the receiver (child) sees the old bytes.
pub const OOL_SNAPSHOT: u64 = 17;
/// Out-of-line with `SRC_DESTROY`: the sender's range is gone, the
/// receiver has the bytes, reading them copies no page (`cow_faults`).
pub const OOL_SRC_DESTROY: u64 = 18;
/// 3 pages + 17 bytes from page offset 0x123: the received `ool_addr %
/// 4096 == 0x123`, the bytes are equal.
pub const OOL_PAGE_OFFSET: u64 = 19;
/// 64 MiB (16384 touched pages) out of line: the receiver reads every page
/// with no copy-on-write copy (`cow_faults` unchanged since before the
/// send), then one write copies exactly one page.
pub const OOL_64MIB: u64 = 20;
/// A port of capacity 4, 10 sends by a child, received in FIFO order. With
/// param 1 the receiving parent first blocks in `PORT_RECV` on a second
/// port (the gate) until the kernel sends to it or destroys it, so the
/// kernel can see the sender blocked with 4 queued.
pub const PORT_BOUNDED: u64 = 21;
/// `WAIT` for a child that exited before the call; `WAIT(0)` (any child);
/// an orphaned grandchild (its parent exits first); `WAIT` without a
/// child is `InvalidArgument`.
pub const WAIT_ORPHANS: u64 = 22;
/// param = n spinners forked over a `Share` page at [`SHARED_PAGE`]: each
/// marks its slot, then spins with no system call until every slot is
/// marked; the parent waits for all. Completes only with preemption when
/// n exceeds the CPUs.
pub const SPIN_PREEMPT: u64 = 23;
/// param = n CPUs: n children over a `Share` page at [`SHARED_PAGE`] mark
/// `GETCPU()` repeatedly until every CPU below n is marked.
pub const EVERY_CPU: u64 = 24;
/// A fork tree of 64 processes (each node forks 6, 5, ... levels below
/// it), each dirtying a copy-on-write page and counting itself in a
/// `Share` page. Exits [`FORK_TREE_EXIT`] (the descendants reaped), or
/// 200 + the failed check.
pub const FORK_TREE: u64 = 26;

/// param = seed: 3000 system calls with hostile numbers and arguments
/// (kernel, unmapped, overflowing and non-canonical pointers, huge sizes,
/// bad descriptors, foreign pids, ports destroyed under waiters), forking
/// up to two generations. Exits 0 if it lives through them; a refused
/// access may kill it. The kernel must neither panic nor hang.
pub const FUZZ: u64 = 27;
/// The root of [`FORK_TREE`] exits with this: 63 descendants.
pub const FORK_TREE_EXIT: u64 = 63;
/// The address [`READ_UNMAPPED`] reads.
pub const UNMAPPED_ADDR: u64 = 0xdead_0000;
/// The `Share` page of the spinner scenarios.
pub const SHARED_PAGE: u64 = 0x1000_0000;
/// Where scenarios place fixed allocations.
pub const FIXED_ADDR: u64 = 0x2000_0000;

/// The argument of `utest` running `scenario` with `param`.
pub const fn arg(scenario: u64, param: u64) -> u64 {
    scenario | param << 16
}

/// The (scenario, param) of an argument.
pub const fn split(arg: u64) -> (u64, u64) {
    (arg & 0xffff, arg >> 16)
}
