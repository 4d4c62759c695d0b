//! machvm's shared vocabulary, the bottom of the crate stack.
//!
//! Everything above speaks in these terms: [`PAGE_SIZE`], the address newtypes
//! [`PhysAddr`] and [`VirtAddr`], page ranges ([`VaRange`]), protections
//! ([`VmProt`]), inheritance ([`VmInherit`]) and Mach's `kern_return_t` codes
//! ([`KernError`]). The values are fixed by SPEC §1.
//!
//! Invariants owned here:
//! - A [`VaRange`] is page-aligned at both ends and never empty-but-inverted:
//!   `start <= end`.
//! - Rounding never wraps: helpers that could overflow return `None`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use core::fmt;

/// Size of a base page in bytes (SPEC §1).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Size of an x86_64 large (2 MiB) page.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Lowest address of a task map: page 0 is never mappable.
pub const USER_MIN: u64 = 0x1000;
/// One past the highest address of a task map (the canonical lower half).
pub const USER_MAX: u64 = 0x0000_8000_0000_0000;

/// Rounds `x` down to a page boundary.
#[inline]
pub const fn trunc_page(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

/// Rounds `x` up to a page boundary, or `None` if that passes `u64::MAX`.
#[inline]
pub const fn round_page(x: u64) -> Option<u64> {
    match x.checked_add(PAGE_SIZE - 1) {
        Some(y) => Some(trunc_page(y)),
        None => None,
    }
}

/// Mach's `kern_return_t` failure codes (SPEC §1). Success is `Ok(_)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum KernError {
    /// `KERN_INVALID_ADDRESS`: the address is outside the map or not allocated.
    InvalidAddress = 1,
    /// `KERN_PROTECTION_FAILURE`: the access or change is not permitted.
    ProtectionFailure = 2,
    /// `KERN_NO_SPACE`: no room in the address map.
    NoSpace = 3,
    /// `KERN_INVALID_ARGUMENT`: an argument is malformed.
    InvalidArgument = 4,
    /// `KERN_FAILURE`: the operation failed for another reason.
    Failure = 5,
    /// `KERN_RESOURCE_SHORTAGE`: physical memory (or another resource) ran out.
    ResourceShortage = 6,
}

impl KernError {
    /// The numeric `kern_return_t` value.
    ///
    /// ```
    /// assert_eq!(machvm_base::KernError::NoSpace.code(), 3);
    /// ```
    #[inline]
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The error of a numeric `kern_return_t`, or `None` for 0 (success)
    /// and codes machvm does not know.
    ///
    /// ```
    /// use machvm_base::KernError;
    /// assert_eq!(KernError::from_code(2), Some(KernError::ProtectionFailure));
    /// assert_eq!(KernError::from_code(0), None);
    /// assert_eq!(KernError::from_code(99), None);
    /// ```
    pub const fn from_code(code: u64) -> Option<KernError> {
        Some(match code {
            1 => KernError::InvalidAddress,
            2 => KernError::ProtectionFailure,
            3 => KernError::NoSpace,
            4 => KernError::InvalidArgument,
            5 => KernError::Failure,
            6 => KernError::ResourceShortage,
            _ => return None,
        })
    }

    /// Mach's name for the code.
    pub const fn name(self) -> &'static str {
        match self {
            KernError::InvalidAddress => "KERN_INVALID_ADDRESS",
            KernError::ProtectionFailure => "KERN_PROTECTION_FAILURE",
            KernError::NoSpace => "KERN_NO_SPACE",
            KernError::InvalidArgument => "KERN_INVALID_ARGUMENT",
            KernError::Failure => "KERN_FAILURE",
            KernError::ResourceShortage => "KERN_RESOURCE_SHORTAGE",
        }
    }
}

impl fmt::Display for KernError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl core::error::Error for KernError {}

bitflags::bitflags! {
    /// Page protection, with Mach's bit values (SPEC §1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmProt: u32 {
        /// `VM_PROT_READ`.
        const READ = 1;
        /// `VM_PROT_WRITE`.
        const WRITE = 2;
        /// `VM_PROT_EXECUTE`.
        const EXECUTE = 4;
        /// `VM_PROT_DEFAULT`: read and write.
        const DEFAULT = 1 | 2;
        /// `VM_PROT_ALL`: read, write and execute.
        const ALL = 1 | 2 | 4;
    }
}

impl VmProt {
    /// `VM_PROT_NONE`.
    pub const NONE: VmProt = VmProt::empty();

    /// Checks caller-supplied bits: anything outside [`VmProt::ALL`] is
    /// `InvalidArgument` (SPEC §3).
    pub fn from_user(bits: u32) -> Result<VmProt, KernError> {
        VmProt::from_bits(bits).ok_or(KernError::InvalidArgument)
    }

    /// Compact `rwx` rendering, as `vmmap` prints it.
    pub fn rwx(self) -> [u8; 3] {
        [
            if self.contains(VmProt::READ) {
                b'r'
            } else {
                b'-'
            },
            if self.contains(VmProt::WRITE) {
                b'w'
            } else {
                b'-'
            },
            if self.contains(VmProt::EXECUTE) {
                b'x'
            } else {
                b'-'
            },
        ]
    }
}

impl fmt::Display for VmProt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.rwx();
        // rwx() only yields ASCII.
        // `pad` honours width and alignment, as `vmmap` columns need.
        f.pad(core::str::from_utf8(&s).unwrap_or("???"))
    }
}

/// What `fork` does with a range (SPEC §1). `Copy` is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum VmInherit {
    /// Parent and child share the memory: each sees the other's writes.
    Share,
    /// The child gets a copy-on-write copy.
    #[default]
    Copy,
    /// The range is left unallocated in the child.
    None,
}

impl fmt::Display for VmInherit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            VmInherit::Share => "share",
            VmInherit::Copy => "copy",
            VmInherit::None => "none",
        })
    }
}

mod addr;
pub mod sync;
mod violation;
#[cfg(feature = "x86_64")]
mod x86;

pub use addr::{
    AddrNotValid, PHYS_ADDR_BITS, PageChunk, PageIndex, PhysAddr, VaRange, VirtAddr, page_chunks,
};
pub use violation::Violation;

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> VaRange {
        VaRange::new(VirtAddr::new(s), VirtAddr::new(e)).unwrap()
    }

    #[test]
    fn intersect_and_split_around() {
        assert_eq!(
            r(0x1000, 0x5000).intersect(&r(0x3000, 0x9000)),
            Some(r(0x3000, 0x5000))
        );
        assert_eq!(r(0x1000, 0x3000).intersect(&r(0x3000, 0x9000)), None);
        assert_eq!(r(0x1000, 0x1000).intersect(&r(0, 0x9000)), None);
        let (lo, hi) = r(0x1000, 0x8000).split_around(&r(0x3000, 0x5000));
        assert_eq!((lo, hi), (r(0x1000, 0x3000), r(0x5000, 0x8000)));
        // `inner` reaching past either end leaves that part empty.
        let (lo, hi) = r(0x2000, 0x4000).split_around(&r(0x1000, 0x3000));
        assert_eq!((lo.len(), hi), (0, r(0x3000, 0x4000)));
        let (lo, hi) = r(0x2000, 0x4000).split_around(&r(0x3000, 0x9000));
        assert_eq!((lo, hi.len()), (r(0x2000, 0x3000), 0));
    }

    #[test]
    fn codes_match_mach() {
        assert_eq!(KernError::InvalidAddress.code(), 1);
        assert_eq!(KernError::ProtectionFailure.code(), 2);
        assert_eq!(KernError::NoSpace.code(), 3);
        assert_eq!(KernError::InvalidArgument.code(), 4);
        assert_eq!(KernError::Failure.code(), 5);
        assert_eq!(KernError::ResourceShortage.code(), 6);
        for code in 1..=6 {
            let e = KernError::from_code(code).unwrap();
            assert_eq!(u64::from(e.code()), code);
        }
    }

    #[test]
    fn prot_values_and_user_bits() {
        assert_eq!(VmProt::READ.bits(), 1);
        assert_eq!(VmProt::WRITE.bits(), 2);
        assert_eq!(VmProt::EXECUTE.bits(), 4);
        assert_eq!(VmProt::DEFAULT.bits(), 3);
        assert_eq!(VmProt::ALL.bits(), 7);
        assert_eq!(VmProt::from_user(8), Err(KernError::InvalidArgument));
        assert_eq!(VmProt::from_user(5), Ok(VmProt::READ | VmProt::EXECUTE));
        assert_eq!(VmInherit::default(), VmInherit::Copy);
    }

    #[test]
    fn rounding_never_wraps() {
        assert_eq!(round_page(0), Some(0));
        assert_eq!(round_page(1), Some(4096));
        assert_eq!(round_page(u64::MAX - 4095), Some(u64::MAX - 4095));
        assert_eq!(round_page(u64::MAX - 4094), None);
        assert!(VaRange::round_out(u64::MAX - 4094, 1).is_none());
        assert!(VaRange::round_out(1, u64::MAX).is_none());
        let r = VaRange::round_out(0x1001, 0).unwrap();
        assert_eq!(r.len(), 0x1000);
        assert!(VaRange::new(VirtAddr::new(0x2000), VirtAddr::new(0x1000)).is_none());
        assert!(VaRange::new(VirtAddr::new(0x1001), VirtAddr::new(0x2000)).is_none());
    }

    #[test]
    fn range_relations() {
        let a = VaRange::round_out(0x1000, 0x2000).unwrap();
        let b = VaRange::round_out(0x2000, 0x1000).unwrap();
        let c = VaRange::round_out(0x3000, 0x1000).unwrap();
        assert!(a.overlaps(&b) && !a.overlaps(&c));
        assert_eq!(a.pages(), 2);
        assert_eq!(a.iter_pages().count(), 2);
        assert!(a.is_user());
        assert!(!VaRange::round_out(0, 0x1000).unwrap().is_user());
    }
}

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
