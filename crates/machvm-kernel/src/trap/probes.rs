//! The recovery probes: loads, stores and calls that return a refused page
//! fault to the caller instead of ending the kernel, and the checked
//! `copy_in` / `copy_out` built on them.

use super::*;

/// A page fault returned by a probe instead of crashing the kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PageFaultInfo {
    /// The faulting linear address (CR2).
    pub addr: u64,
    /// The error code (see [`pf`]).
    pub code: u64,
}

impl PageFaultInfo {
    /// The page was present: a protection violation, not a missing page.
    pub fn present(&self) -> bool {
        self.code & pf::P != 0
    }
    /// The access was a write.
    pub fn write(&self) -> bool {
        self.code & pf::W != 0
    }
    /// The access was an instruction fetch.
    pub fn fetch(&self) -> bool {
        self.code & pf::I != 0
    }
}

impl core::fmt::Debug for PageFaultInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PageFault {{ addr: {:#x}, code: {:#x} }}",
            self.addr, self.code
        )
    }
}

impl core::fmt::Display for PageFaultInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "#PF at {:#x} code {:#x} ({}{}{})",
            self.addr,
            self.code,
            if self.present() { "P" } else { "not-present" },
            if self.write() { "|W" } else { "" },
            if self.fetch() { "|I" } else { "" }
        )
    }
}

fn finish(r: RawProbe) -> Result<u64, PageFaultInfo> {
    if r.status & PROBE_FAULT != 0 {
        Err(PageFaultInfo {
            addr: r.value,
            code: r.status & !PROBE_FAULT,
        })
    } else {
        Ok(r.value)
    }
}

/// True for addresses the safe probes may touch: the lower half (task maps)
/// and the scratch window — never kernel data.
fn probe_target(addr: u64) -> bool {
    addr < USER_MAX || (WINDOW_BASE..WINDOW_BASE + (1 << 39)).contains(&addr)
}

fn check_target(addr: u64, len: u64) {
    assert!(
        probe_target(addr) && probe_target(addr + len - 1),
        "probe target {addr:#x} is not in the lower half or the scratch window"
    );
}

/// Loads the byte at `addr` with a real `mov`, returning the page fault
/// (after the hook refused it) instead of crashing. `addr` must be in the
/// lower half or the scratch window (it panics otherwise): memory no Rust
/// object lives in, so the load cannot race with Rust code.
pub fn probe_read_u8(addr: u64) -> Result<u8, PageFaultInfo> {
    check_target(addr, 1);
    // SAFETY: the target holds no Rust object (checked); a fault recovers.
    finish(unsafe { machvm_probe_read_u8(addr) }).map(|v| v as u8)
}

/// Loads the aligned 64-bit word at `addr`, as [`probe_read_u8`].
pub fn probe_read_u64(addr: u64) -> Result<u64, PageFaultInfo> {
    assert!(addr.is_multiple_of(8), "unaligned probe");
    check_target(addr, 8);
    // SAFETY: as in probe_read_u8.
    finish(unsafe { machvm_probe_read_u64(addr) })
}

/// [`probe_read_u64`] for any canonical address (the direct map, the
/// kernel image).
///
/// # Safety
/// The word must not be written concurrently by non-atomic Rust code, and
/// `addr` must not be a device register with read side effects.
pub unsafe fn probe_read_u64_anywhere(addr: u64) -> Result<u64, PageFaultInfo> {
    assert!(addr.is_multiple_of(8), "unaligned probe");
    // SAFETY: the caller rules out races and side effects; a fault recovers.
    finish(unsafe { machvm_probe_read_u64(addr) })
}

/// Stores `val` at `addr` with a real `mov`, returning the page fault instead
/// of crashing. `addr` must be in the lower half or the scratch window (it
/// panics otherwise), where no Rust object lives.
pub fn probe_write_u8(addr: u64, val: u8) -> Result<(), PageFaultInfo> {
    check_target(addr, 1);
    // SAFETY: the target is outside kernel data (checked); faults recover.
    finish(unsafe { machvm_probe_write_u8(addr, val) }).map(|_| ())
}

/// Stores the aligned 64-bit `val` at `addr`, as [`probe_write_u8`].
pub fn probe_write_u64(addr: u64, val: u64) -> Result<(), PageFaultInfo> {
    assert!(addr.is_multiple_of(8), "unaligned probe");
    check_target(addr, 8);
    // SAFETY: as in probe_write_u8.
    finish(unsafe { machvm_probe_write_u64(addr, val) }).map(|_| ())
}

/// Calls `addr` with a real `call`, returning the fetch fault instead of
/// crashing when the page is not executable.
///
/// # Safety
/// If `addr` is executable, the code there must return at once without
/// side effects (put a `ret`, byte 0xC3, there).
pub unsafe fn probe_exec(addr: u64) -> Result<(), PageFaultInfo> {
    check_target(addr, 1);
    // SMEP forbids ring 0 to fetch from a user page at all; this probe is
    // about the page's own NX and presence, so it lifts SMEP for the call.
    // SAFETY: the caller guarantees what runs there; a fetch fault recovers.
    finish(crate::cpu::without_smep(|| unsafe {
        machvm_probe_exec(addr)
    }))
    .map(|_| ())
}

/// [`probe_exec`] with SMEP left on: a call into a user page must fault
/// (present, fetch) even when the page is executable.
///
/// # Safety
/// As [`probe_exec`]: should SMEP be off, the code at `addr` runs.
pub unsafe fn probe_exec_smep(addr: u64) -> Result<(), PageFaultInfo> {
    check_target(addr, 1);
    // SAFETY: the caller guarantees what runs there; a fetch fault recovers.
    finish(unsafe { machvm_probe_exec_smep(addr) }).map(|_| ())
}

/// [`probe_read_u8`] without `stac`: the kernel touching a user page outside
/// the user-access routines, which SMAP must refuse (a present-page fault
/// that machvm never sees).
pub fn probe_read_u8_unchecked(addr: u64) -> Result<u8, PageFaultInfo> {
    check_target(addr, 1);
    // SAFETY: as in probe_read_u8.
    finish(unsafe { machvm_probe_read_u8_unchecked(addr) }).map(|v| v as u8)
}

/// Copies `buf.len()` bytes from virtual `va` with probes (a `copyin`): the
/// first page fault the hook refuses ends the copy.
pub fn copy_in(va: u64, buf: &mut [u8]) -> Result<(), PageFaultInfo> {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = probe_read_u8(va + i as u64)?;
    }
    Ok(())
}

/// Copies `data` to virtual `va` with probes (a `copyout`); targets as for
/// [`probe_write_u8`].
pub fn copy_out(va: u64, data: &[u8]) -> Result<(), PageFaultInfo> {
    for (i, &b) in data.iter().enumerate() {
        probe_write_u8(va + i as u64, b)?;
    }
    Ok(())
}

/// Copies `len` bytes from `src` to `dst` with `rep movsb` under `stac`: the
/// kernel's user-copy primitive. A fault machvm resolves (zero fill, copy
/// on write, page-in) lets the copy go on where it stopped; a refused one
/// ends it and is returned.
///
/// # Safety
/// Exactly one of the two ranges is task memory (the lower half, checked
/// by the caller against `USER_MAX` with overflow); the other is kernel
/// memory valid for the access and not otherwise borrowed.
pub(crate) unsafe fn copy_user(dst: u64, src: u64, len: u64) -> Result<(), PageFaultInfo> {
    // SAFETY: as the caller guarantees; a fault in the task's range recovers
    // through the probe table.
    finish(unsafe { machvm_copy_user(dst, src, len) }).map(|_| ())
}

/// Formats a probe result for test messages.
pub fn describe<T: core::fmt::Debug>(r: &Result<T, PageFaultInfo>) -> String {
    match r {
        Ok(v) => alloc::format!("Ok({v:#x?})"),
        Err(e) => alloc::format!("{e}"),
    }
}
