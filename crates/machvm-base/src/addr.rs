//! Addresses and page ranges: [`PhysAddr`], [`VirtAddr`] (private
//! fields, checked construction and arithmetic) and [`VaRange`].

use core::fmt;

use crate::{KernError, PAGE_SHIFT, PAGE_SIZE, USER_MAX, USER_MIN, round_page, trunc_page};

macro_rules! addr_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

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
            /// `self + bytes`, or `None` when that is no valid address.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) if Self::is_valid(v) => Some(Self(v)),
                    Some(_) => None,
                    None => None,
                }
            }
            /// `self - bytes`, or `None` below zero.
            #[inline]
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl core::ops::Add<u64> for $name {
            type Output = Self;
            /// Panics when the sum is no valid address (use
            /// [`checked_add`](Self::checked_add) where that can happen).
            #[inline]
            #[track_caller]
            fn add(self, rhs: u64) -> Self {
                match self.checked_add(rhs) {
                    Some(a) => a,
                    None => panic!(concat!(stringify!($name), " arithmetic overflow")),
                }
            }
        }

        impl core::ops::Sub<$name> for $name {
            type Output = u64;
            /// The distance in bytes; panics when `rhs` is above `self`.
            #[inline]
            #[track_caller]
            fn sub(self, rhs: $name) -> u64 {
                match self.0.checked_sub(rhs.0) {
                    Some(d) => d,
                    None => panic!(concat!(stringify!($name), " subtraction below zero")),
                }
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

        impl From<$name> for u64 {
            #[inline]
            fn from(a: $name) -> u64 {
                a.0
            }
        }
    };
}

/// Physical addresses have at most this many bits (the x86_64
/// architectural limit, `MAXPHYADDR`, and more than any other machine
/// machvm targets needs).
pub const PHYS_ADDR_BITS: u32 = 52;

/// A value that is not a valid address of its kind, carried for the error
/// message (`try_new` returns it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrNotValid(pub u64);

impl fmt::Display for AddrNotValid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} is not a valid address", self.0)
    }
}

impl From<AddrNotValid> for KernError {
    fn from(_: AddrNotValid) -> KernError {
        KernError::InvalidAddress
    }
}

impl PhysAddr {
    /// The physical address `addr`; panics above [`PHYS_ADDR_BITS`] bits.
    ///
    /// ```
    /// use machvm_base::PhysAddr;
    /// assert_eq!(PhysAddr::new(0x1000).as_u64(), 0x1000);
    /// assert!(PhysAddr::try_new(1 << 52).is_err());
    /// assert_eq!(PhysAddr::new_truncate((1 << 52) | 0x1000), PhysAddr::new(0x1000));
    /// ```
    #[inline]
    #[track_caller]
    pub const fn new(addr: u64) -> PhysAddr {
        match PhysAddr::try_new(addr) {
            Ok(a) => a,
            Err(_) => panic!("physical address above the architectural limit"),
        }
    }

    const fn is_valid(addr: u64) -> bool {
        addr >> PHYS_ADDR_BITS == 0
    }

    /// The physical address `addr`, or the value back when it has bits
    /// above [`PHYS_ADDR_BITS`].
    #[inline]
    pub const fn try_new(addr: u64) -> Result<PhysAddr, AddrNotValid> {
        if PhysAddr::is_valid(addr) {
            Ok(PhysAddr(addr))
        } else {
            Err(AddrNotValid(addr))
        }
    }

    /// `addr` with the bits above [`PHYS_ADDR_BITS`] cleared (as a page
    /// table entry's address field is read).
    #[inline]
    pub const fn new_truncate(addr: u64) -> PhysAddr {
        PhysAddr(addr & ((1 << PHYS_ADDR_BITS) - 1))
    }
}

impl VirtAddr {
    /// The virtual address `addr`. Every 64-bit value is one: which ones a
    /// machine can translate (x86_64's canonical form, a task map's
    /// `[USER_MIN, USER_MAX)`) is for the pmap and the map to check, and a
    /// range's end lies one past its last byte.
    #[inline]
    pub const fn new(addr: u64) -> VirtAddr {
        VirtAddr(addr)
    }

    const fn is_valid(_: u64) -> bool {
        true
    }
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
    /// assert_eq!((r.start(), r.end()), (VirtAddr::new(0x1000), VirtAddr::new(0x3000)));
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
            start: VirtAddr::new(trunc_page(addr)),
            end: VirtAddr::new(end),
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

    /// The lower half `[0, USER_MAX)`: every address a task map can hold.
    pub const USER_HALF: VaRange = VaRange {
        start: VirtAddr(0),
        end: VirtAddr(USER_MAX),
    };

    /// The pages touching `[start, end)`: `start` rounded down, `end` up
    /// (at most to the last page boundary); empty when `end <= start`, as a
    /// Rust range is. Exact for page-aligned bounds, which is how the map
    /// uses it (entry bounds).
    ///
    /// ```
    /// use machvm_base::{VaRange, VirtAddr};
    /// let r = VaRange::covering(0x1000, 0x3000);
    /// assert_eq!((r.start(), r.end()), (VirtAddr::new(0x1000), VirtAddr::new(0x3000)));
    /// assert_eq!(VaRange::covering(0x1ff0, 0x2001).pages(), 2);
    /// assert!(VaRange::covering(0x5000, 0x1000).is_empty());
    /// ```
    pub const fn covering(start: u64, end: u64) -> VaRange {
        let s = trunc_page(start);
        let e = match round_page(end) {
            Some(e) => e,
            None => trunc_page(u64::MAX),
        };
        VaRange {
            start: VirtAddr(s),
            end: VirtAddr(if e > s { e } else { s }),
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
        (s..e).step_by(PAGE_SIZE as usize).map(VirtAddr::new)
    }
}

impl fmt::Debug for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.0, self.end.0)
    }
}

/// One piece of a byte range that lies within a single page: see
/// [`page_chunks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageChunk {
    /// The page the piece lies in.
    pub page: VirtAddr,
    /// Byte offset of the piece inside its page.
    pub offset: u64,
    /// Position of the piece in the range (bytes from its start).
    pub at: usize,
    /// Length in bytes (at least 1, at most a page).
    pub len: usize,
}

/// Splits `[addr, addr + len)` at page boundaries, in order: every data
/// path that moves bytes page by page walks a range this way.
///
/// ```
/// use machvm_base::{page_chunks, VirtAddr};
/// let c: Vec<_> = page_chunks(0x1ff0, 0x1020).map(|c| (c.page, c.offset, c.at, c.len)).collect();
/// assert_eq!(c, [
///     (VirtAddr::new(0x1000), 0xff0, 0, 0x10),
///     (VirtAddr::new(0x2000), 0, 0x10, 0x1000),
///     (VirtAddr::new(0x3000), 0, 0x1010, 0x10),
/// ]);
/// ```
pub fn page_chunks(addr: u64, len: usize) -> impl Iterator<Item = PageChunk> {
    let mut at = 0usize;
    core::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let va = addr.wrapping_add(at as u64);
        let offset = va & (PAGE_SIZE - 1);
        let n = ((PAGE_SIZE - offset) as usize).min(len - at);
        let chunk = PageChunk {
            page: VirtAddr(va - offset),
            offset,
            at,
            len: n,
        };
        at += n;
        Some(chunk)
    })
}

/// A page's place inside an object or a window, counted in pages (Mach's
/// `vm_page` `offset`, here never a byte count): distinct from a byte
/// offset, so that neither can be passed for the other.
///
/// ```
/// use machvm_base::PageIndex;
/// let i = PageIndex::in_window(0x40_0000, 0x40_3008);
/// assert_eq!(i, PageIndex::new(3));
/// assert_eq!(i.byte_offset(), 0x3000);
/// assert_eq!(i + 2, PageIndex::new(5));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PageIndex(u64);

impl PageIndex {
    /// The page at index `i`.
    #[inline]
    pub const fn new(i: u64) -> PageIndex {
        PageIndex(i)
    }

    /// The index as a number.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The index of the page holding `va` in a window mapped from `start`
    /// (`start <= va`; page-aligned `start`).
    #[inline]
    pub const fn in_window(start: u64, va: u64) -> PageIndex {
        debug_assert!(start <= va);
        PageIndex(va.saturating_sub(start) >> PAGE_SHIFT)
    }

    /// The byte offset of the page's first byte.
    #[inline]
    pub const fn byte_offset(self) -> u64 {
        self.0 << PAGE_SHIFT
    }

    /// The number of pages from `earlier` up to `self` (0 when `earlier`
    /// is not earlier).
    #[inline]
    pub const fn since(self, earlier: PageIndex) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl core::ops::Add<u64> for PageIndex {
    type Output = PageIndex;
    /// `pages` further on; panics on overflow.
    #[inline]
    #[track_caller]
    fn add(self, pages: u64) -> PageIndex {
        match self.0.checked_add(pages) {
            Some(i) => PageIndex(i),
            None => panic!("PageIndex overflow"),
        }
    }
}

impl fmt::Debug for PageIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.0)
    }
}
