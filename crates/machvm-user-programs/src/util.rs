//! Memory reached by address, checks, and one-word messages.

use core::sync::atomic::{AtomicU64, Ordering};

use machvm_user::KernError;
use machvm_user::abi::{MsgDesc, RecvInfo, WaitStatus};
use machvm_user::sys;

/// Bytes in a page.
pub const PAGE: u64 = 4096;

/// A range of memory this program maps through VM calls, which no Rust
/// reference covers: accessed by volatile loads and stores only. Another
/// task may write it (a `Share` range); an access the kernel refuses kills
/// the task, which is the point of some scenarios.
#[derive(Clone, Copy, Debug)]
pub struct Mem {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Mem {
    /// `len` bytes (rounded up to pages) allocated anywhere.
    pub fn allocate(len: u64) -> Result<Mem, KernError> {
        let addr = sys::vm_allocate(0, len, true)?;
        Ok(Mem { addr, len })
    }

    /// `len` bytes allocated exactly at `addr`.
    pub fn allocate_at(addr: u64, len: u64) -> Result<Mem, KernError> {
        let addr = sys::vm_allocate(addr, len, false)?;
        Ok(Mem { addr, len })
    }

    /// The range `[addr, +len)`.
    ///
    /// # Safety
    /// No Rust reference may cover the range (the kernel mapped it: a
    /// received message, a `vm_read` copy).
    pub const unsafe fn from_raw(addr: u64, len: u64) -> Mem {
        Mem { addr, len }
    }

    /// The address of byte `off`, checked against the length.
    fn at(&self, off: u64, size: u64) -> u64 {
        assert!(off + size <= self.len, "offset {off} out of {:?}", self);
        self.addr + off
    }

    /// The u64 at byte `off`.
    pub fn rd(&self, off: u64) -> u64 {
        let p = self.at(off, 8) as *const u64;
        // SAFETY: inside the range, which no reference covers (`Mem`'s
        // rule); a refused access kills the task.
        unsafe { p.read_volatile() }
    }

    /// Stores `v` at byte `off`.
    pub fn wr(&self, off: u64, v: u64) {
        let p = self.at(off, 8) as *mut u64;
        // SAFETY: as `rd`.
        unsafe { p.write_volatile(v) }
    }

    /// The byte at `off`.
    pub fn rd8(&self, off: u64) -> u8 {
        let p = self.at(off, 1) as *const u8;
        // SAFETY: as `rd`.
        unsafe { p.read_volatile() }
    }

    /// Stores the byte `v` at `off`.
    pub fn wr8(&self, off: u64, v: u8) {
        let p = self.at(off, 1) as *mut u8;
        // SAFETY: as `rd`.
        unsafe { p.write_volatile(v) }
    }

    /// Atomically adds `v` to the u64 at `off` (8-aligned); returns the old
    /// value.
    pub fn fetch_add(&self, off: u64, v: u64) -> u64 {
        let p = self.at(off, 8) as *mut u64;
        assert!(p.is_aligned());
        // SAFETY: aligned, inside the range, accessed only atomically or
        // volatile by every task sharing it.
        let a = unsafe { AtomicU64::from_ptr(p) };
        a.fetch_add(v, Ordering::SeqCst)
    }

    /// Writes `pattern(i)` as the first u64 of every page `i`.
    pub fn stamp_pages(&self, pattern: impl Fn(u64) -> u64) {
        for i in 0..self.len / PAGE {
            self.wr(i * PAGE, pattern(i));
        }
    }

    /// True if the first u64 of every page `i` is `pattern(i)`.
    pub fn pages_are(&self, pattern: impl Fn(u64) -> u64) -> bool {
        (0..self.len / PAGE).all(|i| self.rd(i * PAGE) == pattern(i))
    }

    /// Fills every byte with `f(offset)`.
    pub fn fill(&self, f: impl Fn(u64) -> u8) {
        for o in 0..self.len {
            self.wr8(o, f(o));
        }
    }

    /// True if every byte is `f(offset)`.
    pub fn bytes_are(&self, f: impl Fn(u64) -> u8) -> bool {
        (0..self.len).all(|o| self.rd8(o) == f(o))
    }
}

/// `Ok` if `cond`, else `Err(n)`: scenarios exit with the failed check.
pub fn ck(cond: bool, n: u64) -> Result<(), u64> {
    if cond { Ok(()) } else { Err(n) }
}

/// A system call's result as a check: its value, or `Err(n)`.
pub trait Check<T> {
    /// The value, or check `n` failed.
    fn check(self, n: u64) -> Result<T, u64>;
    /// Check `n`: the call failed with exactly `e`.
    fn fails_with(self, e: KernError, n: u64) -> Result<(), u64>;
}

impl<T> Check<T> for Result<T, KernError> {
    fn check(self, n: u64) -> Result<T, u64> {
        self.map_err(|_| n)
    }

    fn fails_with(self, e: KernError, n: u64) -> Result<(), u64> {
        ck(matches!(self, Err(x) if x == e), n)
    }
}

/// Sends one u64 inline on `port`.
pub fn send_word(port: u64, w: u64) -> Result<u64, KernError> {
    let bytes = w.to_le_bytes();
    let d = MsgDesc {
        inline_ptr: bytes.as_ptr() as u64,
        inline_len: 8,
        ..MsgDesc::default()
    };
    // SAFETY: no out-of-line range, nothing is destroyed.
    unsafe { sys::port_send(port, &d) }
}

/// Receives a message of one u64 on `port`.
pub fn recv_word(port: u64) -> Result<u64, KernError> {
    let mut buf = [0u8; 8];
    let mut info = RecvInfo::default();
    sys::port_recv(port, &mut buf, &mut info)?;
    Ok(u64::from_le_bytes(buf))
}

/// Sends `[addr, +len)` out of line on `port` with `flags` and one word
/// inline.
///
/// # Safety
/// With `SRC_DESTROY`, no reference may point into the range.
pub unsafe fn send_ool(
    port: u64,
    w: u64,
    addr: u64,
    len: u64,
    flags: u64,
) -> Result<u64, KernError> {
    let bytes = w.to_le_bytes();
    let d = MsgDesc {
        inline_ptr: bytes.as_ptr() as u64,
        inline_len: 8,
        ool_addr: addr,
        ool_len: len,
        flags,
    };
    // SAFETY: the caller's contract.
    unsafe { sys::port_send(port, &d) }
}

/// Receives a message with an out-of-line range: (inline word, the range).
pub fn recv_ool(port: u64) -> Result<(u64, Mem, RecvInfo), KernError> {
    let mut buf = [0u8; 8];
    let mut info = RecvInfo::default();
    sys::port_recv(port, &mut buf, &mut info)?;
    // SAFETY: the kernel just mapped the range: no reference covers it.
    let m = unsafe { Mem::from_raw(info.ool_addr, info.ool_len) };
    Ok((u64::from_le_bytes(buf), m, info))
}

/// `WAIT(pid)`: the child's status.
pub fn wait_for(pid: u64) -> Result<WaitStatus, KernError> {
    let mut st = WaitStatus::default();
    sys::wait(pid, &mut st)?;
    Ok(st)
}

/// True if `st` is an exit with `code`.
pub fn exited(st: &WaitStatus, code: u64) -> bool {
    st.kind == WaitStatus::EXITED && st.code == code
}

/// `FORK`, running `child` in the child (which exits with its value: 0 or
/// the failed check); the pid in the parent.
pub fn spawn(child: impl FnOnce() -> Result<(), u64>) -> Result<u64, KernError> {
    match sys::fork()? {
        0 => sys::exit(child().err().unwrap_or(0)),
        pid => Ok(pid),
    }
}

/// Writes to `len` bytes of the stack below the caller's frame, so its
/// pages are private before a scenario counts copy-on-write faults.
#[inline(never)]
pub fn touch_stack() {
    let mut buf = [0u8; 32 * 1024];
    for i in (0..buf.len()).step_by(512) {
        // SAFETY: a local buffer, written volatile so it is not elided.
        unsafe { core::ptr::write_volatile(&mut buf[i], 1) };
    }
    core::hint::black_box(&buf);
}
