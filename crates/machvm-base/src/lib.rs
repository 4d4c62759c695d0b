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

macro_rules! addr_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// True when the address is on a page boundary.
            #[inline]
            pub const fn is_page_aligned(self) -> bool {
                self.0 & (PAGE_SIZE - 1) == 0
            }
            /// True when the address is aligned to `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// Rounded down to its page.
            #[inline]
            pub const fn page_base(self) -> Self {
                Self(trunc_page(self.0))
            }
            /// Byte offset inside its page.
            #[inline]
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }
            /// Page number (address / PAGE_SIZE).
            #[inline]
            pub const fn page_number(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }
            /// `self + bytes`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl core::ops::Add<u64> for $name {
            type Output = Self;
            #[inline]
            fn add(self, rhs: u64) -> Self {
                Self(self.0 + rhs)
            }
        }

        impl core::ops::Sub<$name> for $name {
            type Output = u64;
            #[inline]
            fn sub(self, rhs: $name) -> u64 {
                self.0 - rhs.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

addr_newtype!(
    /// A physical address (of RAM, simulated or real).
    PhysAddr
);
addr_newtype!(
    /// A virtual address in some address map.
    VirtAddr
);

/// A page-aligned, half-open range of virtual addresses `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VaRange {
    start: VirtAddr,
    end: VirtAddr,
}

impl VaRange {
    /// A range from page-aligned bounds; `None` if unaligned or inverted.
    pub const fn new(start: VirtAddr, end: VirtAddr) -> Option<VaRange> {
        if start.is_page_aligned() && end.is_page_aligned() && start.0 <= end.0 {
            Some(VaRange { start, end })
        } else {
            None
        }
    }

    /// The pages touched by `[addr, addr + size)`, rounded out
    /// (`[trunc_page(addr), round_page(addr + size))`). `None` when the end
    /// overflows or rounds up past `u64::MAX`.
    ///
    /// ```
    /// use machvm_base::{VaRange, VirtAddr};
    /// let r = VaRange::round_out(0x1ff0, 0x20).unwrap();
    /// assert_eq!((r.start(), r.end()), (VirtAddr(0x1000), VirtAddr(0x3000)));
    /// assert!(VaRange::round_out(u64::MAX - 10, 5).is_none());
    /// ```
    pub const fn round_out(addr: u64, size: u64) -> Option<VaRange> {
        let end = match addr.checked_add(size) {
            Some(e) => e,
            None => return None,
        };
        let end = match round_page(end) {
            Some(e) => e,
            None => return None,
        };
        Some(VaRange {
            start: VirtAddr(trunc_page(addr)),
            end: VirtAddr(end),
        })
    }

    /// Validates a data-moving call's byte range `[addr, addr + len)` (the
    /// rule `read_bytes`, `write_bytes` and the copy family share):
    /// `Ok(None)` for length 0, else the pages it touches, which must lie
    /// in a task map; `InvalidAddress` when it overflows, rounds past
    /// `u64::MAX` or leaves the task map.
    ///
    /// ```
    /// use machvm_base::{KernError, VaRange, USER_MAX};
    /// assert_eq!(VaRange::of_data(0x1000, 0), Ok(None));
    /// assert_eq!(VaRange::of_data(0x1ff0, 0x20).unwrap().unwrap().pages(), 2);
    /// assert_eq!(VaRange::of_data(USER_MAX - 1, 2), Err(KernError::InvalidAddress));
    /// ```
    pub const fn of_data(addr: u64, len: u64) -> Result<Option<VaRange>, KernError> {
        if len == 0 {
            return Ok(None);
        }
        match VaRange::round_out(addr, len) {
            Some(r) if r.is_user() => Ok(Some(r)),
            _ => Err(KernError::InvalidAddress),
        }
    }

    /// The pages both ranges hold; `None` when they share none.
    pub const fn intersect(&self, other: &VaRange) -> Option<VaRange> {
        let start = if self.start.0 > other.start.0 {
            self.start
        } else {
            other.start
        };
        let end = if self.end.0 < other.end.0 {
            self.end
        } else {
            other.end
        };
        if start.0 < end.0 {
            Some(VaRange { start, end })
        } else {
            None
        }
    }

    /// The parts of `self` below and above `inner`, a range within it
    /// (either part may be empty).
    pub const fn split_around(&self, inner: &VaRange) -> (VaRange, VaRange) {
        let mid_start = if inner.start.0 > self.start.0 {
            inner.start
        } else {
            self.start
        };
        let mid_end = if inner.end.0 < self.end.0 {
            inner.end
        } else {
            self.end
        };
        let below_end = if mid_start.0 < self.end.0 {
            mid_start
        } else {
            self.end
        };
        let above_start = if mid_end.0 > below_end.0 {
            mid_end
        } else {
            below_end
        };
        (
            VaRange {
                start: self.start,
                end: below_end,
            },
            VaRange {
                start: above_start,
                end: self.end,
            },
        )
    }

    /// First address.
    #[inline]
    pub const fn start(&self) -> VirtAddr {
        self.start
    }
    /// One past the last address.
    #[inline]
    pub const fn end(&self) -> VirtAddr {
        self.end
    }
    /// Length in bytes.
    #[inline]
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Number of pages.
    #[inline]
    pub const fn pages(&self) -> u64 {
        self.len() >> PAGE_SHIFT
    }
    /// True for an empty range.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.start.0 == self.end.0
    }
    /// True when `va` lies inside.
    #[inline]
    pub const fn contains(&self, va: VirtAddr) -> bool {
        self.start.0 <= va.0 && va.0 < self.end.0
    }
    /// True when the two ranges share at least one page.
    #[inline]
    pub const fn overlaps(&self, other: &VaRange) -> bool {
        self.start.0 < other.end.0 && other.start.0 < self.end.0
    }
    /// True when the range lies within a task map, `[USER_MIN, USER_MAX)`.
    #[inline]
    pub const fn is_user(&self) -> bool {
        self.start.0 >= USER_MIN && self.end.0 <= USER_MAX
    }
    /// Iterates over the page addresses of the range.
    pub fn iter_pages(&self) -> impl Iterator<Item = VirtAddr> + use<> {
        let (s, e) = (self.start.0, self.end.0);
        (s..e).step_by(PAGE_SIZE as usize).map(VirtAddr)
    }
}

impl fmt::Debug for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.0, self.end.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> VaRange {
        VaRange::new(VirtAddr(s), VirtAddr(e)).unwrap()
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
        assert!(VaRange::new(VirtAddr(0x2000), VirtAddr(0x1000)).is_none());
        assert!(VaRange::new(VirtAddr(0x1001), VirtAddr(0x2000)).is_none());
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
