//! Conversions to and from the `x86_64` crate's address and frame types
//! (feature `x86_64`), so a kernel written against that crate passes its
//! values to machvm and back without spelling out `as_u64`.
//!
//! Both crates agree on physical addresses (at most 52 bits), so those
//! convert both ways infallibly. machvm's [`VirtAddr`] is any 64-bit value
//! (whether it is canonical is the pmap's question), so only the way into
//! machvm is infallible; the way out checks the canonical form. A frame is
//! a page-aligned physical address, so the way into a frame checks that.
//!
//! Architecture Invariant: these are conversions only. Nothing here
//! decides anything, and no other module of a machine-independent crate
//! names an `x86_64` type.

use x86_64::structures::paging::{PhysFrame, Size4KiB};

use crate::{AddrNotValid, PhysAddr, VirtAddr};

impl From<x86_64::PhysAddr> for PhysAddr {
    /// Infallible: the `x86_64` crate's physical addresses have the same
    /// 52-bit limit as machvm's.
    #[inline]
    fn from(pa: x86_64::PhysAddr) -> PhysAddr {
        PhysAddr::new_truncate(pa.as_u64())
    }
}

impl From<PhysAddr> for x86_64::PhysAddr {
    #[inline]
    fn from(pa: PhysAddr) -> x86_64::PhysAddr {
        x86_64::PhysAddr::new_truncate(pa.as_u64())
    }
}

impl From<x86_64::VirtAddr> for VirtAddr {
    #[inline]
    fn from(va: x86_64::VirtAddr) -> VirtAddr {
        VirtAddr::new(va.as_u64())
    }
}

impl TryFrom<VirtAddr> for x86_64::VirtAddr {
    type Error = AddrNotValid;

    /// Fails for a non-canonical address (bits 47..64 not all equal).
    #[inline]
    fn try_from(va: VirtAddr) -> Result<x86_64::VirtAddr, AddrNotValid> {
        x86_64::VirtAddr::try_new(va.as_u64()).map_err(|_| AddrNotValid(va.as_u64()))
    }
}

impl From<PhysFrame<Size4KiB>> for PhysAddr {
    /// The frame's first byte.
    #[inline]
    fn from(frame: PhysFrame<Size4KiB>) -> PhysAddr {
        frame.start_address().into()
    }
}

impl TryFrom<PhysAddr> for PhysFrame<Size4KiB> {
    type Error = AddrNotValid;

    /// The 4 KiB frame starting at `pa`; fails when `pa` is not
    /// page-aligned.
    #[inline]
    fn try_from(pa: PhysAddr) -> Result<PhysFrame<Size4KiB>, AddrNotValid> {
        PhysFrame::from_start_address(pa.into()).map_err(|_| AddrNotValid(pa.as_u64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_addresses_round_trip() {
        let pa = PhysAddr::new(0x1234_5000);
        let theirs: x86_64::PhysAddr = pa.into();
        assert_eq!(theirs.as_u64(), 0x1234_5000);
        assert_eq!(PhysAddr::from(theirs), pa);
        let top = x86_64::PhysAddr::new((1 << 52) - 1);
        assert_eq!(PhysAddr::from(top).as_u64(), (1 << 52) - 1);
    }

    #[test]
    fn only_canonical_virtual_addresses_leave_machvm() {
        let va = VirtAddr::new(0xFFFF_8000_0000_1000);
        let theirs = x86_64::VirtAddr::try_from(va).unwrap();
        assert_eq!(VirtAddr::from(theirs), va);
        let hole = VirtAddr::new(0x0000_8000_0000_0000);
        assert_eq!(
            x86_64::VirtAddr::try_from(hole),
            Err(AddrNotValid(hole.as_u64()))
        );
    }

    #[test]
    fn frames_are_page_aligned_addresses() {
        let frame = PhysFrame::<Size4KiB>::try_from(PhysAddr::new(0x7000)).unwrap();
        assert_eq!(PhysAddr::from(frame), PhysAddr::new(0x7000));
        let odd = PhysAddr::new(0x7008);
        assert_eq!(
            PhysFrame::<Size4KiB>::try_from(odd),
            Err(AddrNotValid(0x7008))
        );
    }
}
