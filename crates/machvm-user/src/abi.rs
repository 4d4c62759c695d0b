//! The system-call ABI between machvm-kernel and its ring-3 programs, built
//! on every target (the kernel compiles against it too).
//!
//! # Calling convention (x86_64, Linux-like)
//! - `syscall` with the number ([`nr`]) in `rax` and up to six arguments in
//!   `rdi, rsi, rdx, r10, r8, r9`.
//! - The kernel returns `rax` = `kern_return_t`: 0 for success, else
//!   [`KernError::code`](machvm_base::KernError::code) (1 `InvalidAddress`,
//!   2 `ProtectionFailure`, 3 `NoSpace`, 4 `InvalidArgument`, 5 `Failure`,
//!   6 `ResourceShortage`), and `rdx` = the call's value (0 when it has
//!   none, and on failure).
//! - `rcx` and `r11` are clobbered (the `syscall` instruction uses them);
//!   every other register is preserved.
//! - An unknown number returns `InvalidArgument`.
//!
//! # User pointers
//! Every pointer argument names user memory: a range that overflows or
//! ends above [`USER_MAX`](machvm_base::USER_MAX) (a kernel pointer, for
//! one), or that the kernel cannot read (or write, for results) because it
//! is unmapped or protected, makes the call return `InvalidAddress`, and
//! the task lives on. Results are written only when the call succeeds.
//!
//! # Limits
//! The kernel's memory for its own structures is bounded, and a call that
//! would go past a bound returns `ResourceShortage` and changes nothing:
//! [`MAX_TASKS`], [`MAX_PORTS`], [`MAX_MESSAGES`], [`MAX_PORT_CAPACITY`],
//! 4096 entries in one task's map and [`MAX_TOTAL_ENTRIES`] over all of
//! them (the calls that can add entries are refused at either), and a
//! reserve of kernel heap below which every call that allocates (fork, the
//! VM calls, the port calls) is refused.
//!
//! # Blocking
//! `WAIT`, `PORT_RECV` on an empty queue and `PORT_SEND` to a full one
//! block until they can complete; nothing else blocks.

/// System-call numbers (`rax`).
pub mod nr {
    /// `EXIT(code)`: ends the task with `code`; never returns. The parent's
    /// `WAIT` sees [`WaitStatus::EXITED`](super::WaitStatus::EXITED).
    pub const EXIT: u64 = 0;
    /// `CONSOLE_WRITE(ptr, len) -> bytes written`: writes the bytes to the
    /// kernel console (all of them on success); at most 64 KiB per call
    /// (`InvalidArgument` beyond).
    pub const CONSOLE_WRITE: u64 = 1;
    /// `YIELD()`: lets other runnable tasks run first.
    pub const YIELD: u64 = 2;
    /// `FORK() -> pid`: a child with a copy of the caller's map (each range
    /// per its inheritance: Share, Copy-on-write, None) and registers; the
    /// parent gets the child's pid, the child 0. `ResourceShortage` when
    /// the kernel holds its most tasks (512, zombies included).
    pub const FORK: u64 = 3;
    /// `WAIT(pid, status_ptr) -> pid`: reaps the child `pid` (0: any
    /// child) once it has ended, writing its
    /// [`WaitStatus`](super::WaitStatus) at `status_ptr`. Blocks while the
    /// child lives. `InvalidArgument` if the caller has no such child (or
    /// none at all); `InvalidAddress` for a bad `status_ptr`, and then
    /// nothing is reaped.
    pub const WAIT: u64 = 4;
    /// `GETPID() -> pid`.
    pub const GETPID: u64 = 5;
    /// `GETCPU() -> cpu`: the index of the CPU running the caller (it may
    /// have moved by the time the value is used).
    pub const GETCPU: u64 = 6;
    /// `STATS(ptr)`: writes the machine's VM counters as a
    /// [`VmStatsAbi`](super::VmStatsAbi) at `ptr`.
    pub const STATS: u64 = 7;
    /// `VM_ALLOCATE(addr, size, anywhere) -> addr`: zero-filled memory,
    /// `rw-` with maximum `rwx`, inheritance Copy. `anywhere` 1: the lowest
    /// free range at or above `addr`; 0: exactly at `addr` (`NoSpace` if
    /// anything is there).
    pub const VM_ALLOCATE: u64 = 10;
    /// `VM_DEALLOCATE(addr, size)`: removes the range; holes are ignored.
    pub const VM_DEALLOCATE: u64 = 11;
    /// `VM_PROTECT(addr, size, set_maximum, prot)`: sets the protection
    /// ([`prot`](super::prot) bits), or with `set_maximum` 1 lowers the
    /// maximum (and clips the protection to it). Raising past the maximum
    /// is `ProtectionFailure`.
    pub const VM_PROTECT: u64 = 12;
    /// `VM_INHERIT(addr, size, inherit)`: what `FORK` does with the range
    /// ([`inherit`](super::inherit): 0 Share, 1 Copy, 2 None).
    pub const VM_INHERIT: u64 = 13;
    /// `VM_REGION(addr, info_ptr) -> start`: describes the region
    /// containing `addr`, or else the first one above it, as a
    /// [`RegionInfoAbi`](super::RegionInfoAbi) at `info_ptr`; returns its
    /// start. `NoSpace` when no region lies at or above `addr`.
    pub const VM_REGION: u64 = 14;
    /// `VM_READ(addr, size) -> addr`: a copy-on-write snapshot of the range
    /// mapped anywhere in the caller's map, at the same page offset;
    /// returns the copy's address (of the byte that was at `addr`).
    pub const VM_READ: u64 = 15;
    /// `VM_WRITE(dst_addr, src_addr, size)`: overwrites the caller's
    /// allocated, writable `[dst_addr, +size)` with the bytes at
    /// `src_addr` (a snapshot taken when the call begins).
    pub const VM_WRITE: u64 = 16;
    /// `VM_COPY(src_addr, size, dst_addr)`: the same within the caller's
    /// map, virtually; overlapping ranges behave as `memmove`.
    pub const VM_COPY: u64 = 17;
    /// `VM_MAP_COPY(pid, dst_addr, len, src_addr, flags) -> dst_addr`:
    /// copies `len` bytes at `src_addr` in the caller's map to `dst_addr`
    /// in the map of `pid` (0: the caller; else one of its children,
    /// `InvalidArgument` otherwise). Flags: [`map_copy`](super::map_copy).
    pub const VM_MAP_COPY: u64 = 18;
    /// `VM_WIRE(addr, size, prot)`: wires the range for the accesses in
    /// `prot` (faulting the pages in); `prot` 0 unwires. At most 1 MiB
    /// wired per task (`ResourceShortage` beyond).
    pub const VM_WIRE: u64 = 19;
    /// `PORT_CREATE(capacity) -> port`: a port queuing at most `capacity`
    /// messages (1 to 64, `InvalidArgument` otherwise; `ResourceShortage`
    /// when 256 ports exist). Port names are global: a forked child uses
    /// its parent's ports as they are. A port dies with the task that
    /// created it, with its queued messages.
    pub const PORT_CREATE: u64 = 30;
    /// `PORT_SEND(port, desc_ptr)`: sends the message a
    /// [`MsgDesc`](super::MsgDesc) describes; blocks while the queue is
    /// full. The out-of-line range travels as a copy-on-write snapshot
    /// taken by the send (with `SRC_DESTROY`, the sender's range is
    /// deallocated, as Mach's copy-in consumes it: should the port die
    /// before the message is queued, the call fails and the data goes with
    /// it). `ResourceShortage` when 4096 messages are queued or being sent
    /// over all ports.
    pub const PORT_SEND: u64 = 31;
    /// `PORT_RECV(port, buf_ptr, buf_len, info_ptr)`: takes the oldest
    /// message (blocks while none is queued), copies its inline bytes to
    /// `buf_ptr` (`InvalidArgument` if `buf_len` is too small; the message
    /// stays queued), maps its out-of-line range anywhere in the caller's
    /// map at the page offset it had, and writes a
    /// [`RecvInfo`](super::RecvInfo) at `info_ptr`.
    pub const PORT_RECV: u64 = 32;
    /// `PORT_DESTROY(port)`: drops the port and its queued messages;
    /// blocked senders and receivers return `InvalidArgument`.
    pub const PORT_DESTROY: u64 = 33;
}

/// Protection bits, `machvm_base::VmProt`'s values (Mach's).
pub mod prot {
    /// `VM_PROT_READ`.
    pub const READ: u64 = 1;
    /// `VM_PROT_WRITE`.
    pub const WRITE: u64 = 2;
    /// `VM_PROT_EXECUTE`.
    pub const EXECUTE: u64 = 4;
}

/// `VM_INHERIT`'s values.
pub mod inherit {
    /// The child shares the memory.
    pub const SHARE: u64 = 0;
    /// The child gets a copy-on-write copy (the default).
    pub const COPY: u64 = 1;
    /// The range is left unallocated in the child.
    pub const NONE: u64 = 2;
}

/// `VM_MAP_COPY`'s flags.
pub mod map_copy {
    /// Allocate the destination's unallocated pages first.
    pub const DST_ALLOC: u64 = 1;
    /// Deallocate the source pages after a successful copy.
    pub const SRC_DESTROY: u64 = 2;
}

/// Top of the initial stack (exclusive): the loader maps
/// [`USER_STACK_SIZE`] bytes `rw-` below it and starts with
/// `rsp = USER_STACK_TOP - 8`.
pub const USER_STACK_TOP: u64 = 0x7fff_ffff_0000;
/// Size of the initial stack.
pub const USER_STACK_SIZE: u64 = 256 * 1024;
/// Most inline bytes in one message.
pub const MAX_INLINE: u64 = 256;
/// Most messages one port may queue (`PORT_CREATE`'s capacity).
pub const MAX_PORT_CAPACITY: u64 = 64;
/// Most ports at once, over every task.
pub const MAX_PORTS: u64 = 256;
/// Most messages queued or being sent at once, over every port.
pub const MAX_MESSAGES: u64 = 4096;
/// Most tasks at once, zombies included (`FORK` beyond: shortage).
pub const MAX_TASKS: u64 = 512;
/// Most map entries over every task: a call that may add entries (or a
/// `FORK` that would copy past it) is `ResourceShortage` at the budget.
pub const MAX_TOTAL_ENTRIES: u64 = 32768;
/// Most bytes one `CONSOLE_WRITE` prints.
pub const CONSOLE_MAX: u64 = 64 * 1024;
/// The first address above user memory (`machvm_base::USER_MAX`): a
/// range ending above it is `InvalidAddress`.
pub const USER_MAX: u64 = machvm_base::USER_MAX;
/// Where the loader places the text segment (`user.ld`).
pub const USER_TEXT_START: u64 = 0x40_0000;

/// How a child ended, as `WAIT` reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitStatus {
    /// The child's pid.
    pub pid: u64,
    /// [`EXITED`](Self::EXITED), [`FAULT`](Self::FAULT),
    /// [`TRAP`](Self::TRAP) or [`KILLED`](Self::KILLED).
    pub kind: u32,
    /// For a fault: the access refused ([`prot`] bits, 1 read, 2 write,
    /// 4 execute); else 0.
    pub access: u32,
    /// The exit code, the fault's `kern_return_t`, or the trap's vector.
    pub code: u64,
    /// The fault address, or the trapping instruction's address.
    pub addr: u64,
}

impl WaitStatus {
    /// Ended by `EXIT`: `code` is its argument.
    pub const EXITED: u32 = 0;
    /// Killed by a page fault machvm refused: `addr`, `access`, and `code`
    /// the `kern_return_t` (e.g. 2 `PROTECTION_FAILURE`).
    pub const FAULT: u32 = 1;
    /// Killed by another exception (`#UD`, `#GP`, ...): `code` the vector,
    /// `addr` the instruction's address.
    pub const TRAP: u32 = 2;
    /// Killed by the kernel (e.g. when a test ends).
    pub const KILLED: u32 = 3;
}

/// A message to send (`PORT_SEND`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgDesc {
    /// Address of the inline bytes.
    pub inline_ptr: u64,
    /// Inline length, at most [`MAX_INLINE`].
    pub inline_len: u64,
    /// Start of the out-of-line range (any alignment).
    pub ool_addr: u64,
    /// Out-of-line length (0: none).
    pub ool_len: u64,
    /// [`MsgDesc::SRC_DESTROY`] or 0.
    pub flags: u64,
}

impl MsgDesc {
    /// Deallocate the sender's out-of-line pages (rounded out) once sent:
    /// the message becomes their only holder.
    pub const SRC_DESTROY: u64 = 2;
}

/// What `PORT_RECV` received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvInfo {
    /// Inline bytes copied to the buffer.
    pub inline_len: u64,
    /// Where the out-of-line range now is in the receiver (0 if none); same
    /// page offset as the sender's.
    pub ool_addr: u64,
    /// Its length.
    pub ool_len: u64,
    /// The sender's pid.
    pub sender: u64,
}

/// One region, as `VM_REGION` describes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionInfoAbi {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Current protection ([`prot`] bits).
    pub prot: u32,
    /// Maximum protection.
    pub max_prot: u32,
    /// Inheritance ([`inherit`] values).
    pub inherit: u32,
    /// 1 if some page is reachable from another map without copy-on-write.
    pub shared: u32,
}

/// The machine's VM counters (`STATS`), machvm's `VmStats` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStatsAbi {
    /// Frames free.
    pub free_count: u64,
    /// Pages zero-filled on demand.
    pub zero_fill_count: u64,
    /// Page faults handled.
    pub faults: u64,
    /// Pages copied for copy-on-write.
    pub cow_faults: u64,
    /// Pages read back from the pager.
    pub pageins: u64,
    /// Pages written to the pager.
    pub pageouts: u64,
    /// Frames wired.
    pub wire_count: u64,
}

const _: () = {
    assert!(core::mem::size_of::<WaitStatus>() == 32);
    assert!(core::mem::size_of::<MsgDesc>() == 40);
    assert!(core::mem::size_of::<RecvInfo>() == 32);
    assert!(core::mem::size_of::<RegionInfoAbi>() == 32);
    assert!(core::mem::size_of::<VmStatsAbi>() == 56);
    assert!(prot::READ == machvm_base::VmProt::READ.bits() as u64);
    assert!(prot::WRITE == machvm_base::VmProt::WRITE.bits() as u64);
    assert!(prot::EXECUTE == machvm_base::VmProt::EXECUTE.bits() as u64);
};

pub mod scenario;
