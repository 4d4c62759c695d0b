//! Copying between the kernel and the running task's memory: the only way
//! the kernel touches user pages (SMAP refuses every other).
//!
//! A user range is checked first — `addr + len` must not overflow and must
//! stay at or below `USER_MAX` — and this check, not SMAP, is what refuses a
//! kernel pointer (SMAP guards user pages, not kernel ones). Then the copy
//! runs with `stac`; a page fault on the way goes to machvm like the task's
//! own, and a refused one ends the copy with `InvalidAddress`. No lock is
//! held across a copy: it may fault, and the fault handler takes machvm's.

use machvm::KernError;
use machvm_base::USER_MAX;

use crate::trap;

/// Checks that `[addr, addr + len)` lies in the lower half.
pub(crate) fn check_range(addr: u64, len: u64) -> Result<(), KernError> {
    match addr.checked_add(len) {
        Some(end) if end <= USER_MAX => Ok(()),
        _ => Err(KernError::InvalidAddress),
    }
}

/// Copies the task's bytes at `src` into `dst`.
pub(crate) fn copy_in(dst: &mut [u8], src: u64) -> Result<(), KernError> {
    let len = dst.len() as u64;
    check_range(src, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: `src` is task memory (checked), `dst` a kernel buffer we hold
    // exclusively.
    unsafe { trap::copy_user(dst.as_mut_ptr() as u64, src, len) }
        .map_err(|_| KernError::InvalidAddress)
}

/// Copies `src` into the task's memory at `dst`.
pub(crate) fn copy_out(dst: u64, src: &[u8]) -> Result<(), KernError> {
    let len = src.len() as u64;
    check_range(dst, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: `dst` is task memory (checked), `src` a kernel buffer.
    unsafe { trap::copy_user(dst, src.as_ptr() as u64, len) }.map_err(|_| KernError::InvalidAddress)
}

/// A plain-data ABI structure: any bit pattern is a valid value, so it can
/// be filled from user bytes.
///
/// # Safety
/// Implement only for `repr(C)` structs of integers with no padding.
pub(crate) unsafe trait Plain: Copy + Default {}

/// Reads a `T` from the task's memory at `addr`.
pub(crate) fn read<T: Plain>(addr: u64) -> Result<T, KernError> {
    let mut v = T::default();
    // SAFETY: `T: Plain`: its bytes may be any pattern and have no padding.
    let bytes =
        unsafe { core::slice::from_raw_parts_mut(&mut v as *mut T as *mut u8, size_of::<T>()) };
    copy_in(bytes, addr)?;
    Ok(v)
}

/// Writes `v` into the task's memory at `addr`.
pub(crate) fn write<T: Plain>(addr: u64, v: &T) -> Result<(), KernError> {
    // SAFETY: `T: Plain` has no padding, so every byte is initialised.
    let bytes = unsafe { core::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) };
    copy_out(addr, bytes)
}
