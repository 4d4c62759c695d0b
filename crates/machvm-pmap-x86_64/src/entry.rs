//! **API Boundary**: the x86_64 page-table entry and side-effect-free walks
//! — the definitions this pmap builds its tables from, public so that a
//! kernel reads and edits its own tables (the kernel half, test fixtures)
//! with the same ones instead of a second copy.
//!
//! Entries are read and written through [`PhysMem`] (relaxed atomics), as
//! the pmap does: the MMU and other CPUs may set accessed and dirty bits
//! at any moment.

use machvm_base::{KernError, PhysAddr, VirtAddr};
use machvm_frame::PhysMem;
pub use x86_64::structures::paging::PageTableFlags;

/// One page-table entry: a frame's address and [`PageTableFlags`].
///
/// ```
/// use machvm_base::PhysAddr;
/// use machvm_pmap_x86_64::entry::{PageTableFlags as F, Pte};
/// let e = Pte::new(PhysAddr::new(0x20_0000), F::PRESENT | F::WRITABLE | F::HUGE_PAGE);
/// assert!(e.is_present() && e.is_large());
/// assert_eq!(e.addr(), PhysAddr::new(0x20_0000));
/// assert_eq!(Pte::from_bits(e.bits()), e);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Pte(u64);

impl Pte {
    /// The physical-address field of an entry.
    pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
    /// An entry with nothing in it.
    pub const EMPTY: Pte = Pte(0);

    /// The entry with these raw bits.
    #[inline]
    pub const fn from_bits(bits: u64) -> Pte {
        Pte(bits)
    }

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// An entry for the frame (or table) at `pa` with `flags`; the bits of
    /// `pa` outside the address field are dropped.
    #[inline]
    pub const fn new(pa: PhysAddr, flags: PageTableFlags) -> Pte {
        Pte((pa.as_u64() & Self::ADDR_MASK) | (flags.bits() & !Self::ADDR_MASK))
    }

    /// The frame or table the entry points at (for a large leaf, its
    /// first frame, the low bits of its field included).
    #[inline]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr::new_truncate(self.0 & Self::ADDR_MASK)
    }

    /// The flags.
    #[inline]
    pub const fn flags(self) -> PageTableFlags {
        PageTableFlags::from_bits_truncate(self.0 & !Self::ADDR_MASK)
    }

    /// True when the entry is present.
    #[inline]
    pub const fn is_present(self) -> bool {
        self.0 & PageTableFlags::PRESENT.bits() != 0
    }

    /// True for a 2 MiB or 1 GiB leaf (`PS` in a directory entry).
    #[inline]
    pub const fn is_large(self) -> bool {
        self.0 & PageTableFlags::HUGE_PAGE.bits() != 0
    }
}

impl core::fmt::Debug for Pte {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Pte({:?} {:?})", self.addr(), self.flags())
    }
}

/// The lowest virtual-address bit an entry at `level` maps (1: page table,
/// 2: page directory, 3: PDPT, 4: PML4).
#[inline]
pub const fn shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

/// Index of `va`'s entry in its table at `level`.
#[inline]
pub const fn index(va: u64, level: u32) -> usize {
    ((va >> shift(level)) & 511) as usize
}

/// The address of entry `i` of the table at `table` (a page-aligned
/// table and `i < 512` keep it inside the table's page, so no check is
/// needed on this hot path).
#[inline]
pub const fn slot(table: PhysAddr, i: usize) -> PhysAddr {
    debug_assert!(i < 512);
    PhysAddr::new_truncate(table.as_u64() + (i as u64 & 511) * 8)
}

/// Where a walk ended: the entry and its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Physical address of the entry.
    pub addr: PhysAddr,
    /// The entry as read.
    pub pte: Pte,
    /// The level of its table (1 for a 4 KiB leaf).
    pub level: u32,
}

/// Reads the walk of `va` under the PML4 at `root`, setting no accessed or
/// dirty bit: the present leaf (4 KiB, 2 MiB or 1 GiB), or the first entry
/// that is not present.
pub fn walk(mem: &PhysMem, root: PhysAddr, va: VirtAddr) -> Slot {
    let mut table = root;
    let mut level = 4;
    loop {
        let addr = slot(table, index(va.as_u64(), level));
        let pte = Pte::from_bits(mem.load_u64(addr));
        let leaf = level == 1 || (level < 4 && pte.is_large());
        if !pte.is_present() || leaf {
            return Slot { addr, pte, level };
        }
        table = pte.addr();
        level -= 1;
    }
}

/// The physical address `va` translates to under `root`, by
/// [`walk`], or `None`.
pub fn translate(mem: &PhysMem, root: PhysAddr, va: VirtAddr) -> Option<PhysAddr> {
    let s = walk(mem, root, va);
    s.pte.is_present().then(|| {
        let mask = (1u64 << shift(s.level)) - 1;
        PhysAddr::new((s.pte.addr().as_u64() & !mask) | (va.as_u64() & mask))
    })
}

/// The address of `va`'s 4 KiB leaf entry under `root`, creating missing
/// tables from `alloc` (which returns zeroed frames, or the error to stop
/// with) linked with `link` flags. `InvalidArgument` when a large leaf is
/// in the way.
pub fn leaf_slot(
    mem: &PhysMem,
    root: PhysAddr,
    va: VirtAddr,
    link: PageTableFlags,
    mut alloc: impl FnMut() -> Result<PhysAddr, KernError>,
) -> Result<PhysAddr, KernError> {
    let mut table = root;
    for level in (2..=4).rev() {
        let addr = slot(table, index(va.as_u64(), level));
        let pte = Pte::from_bits(mem.load_u64(addr));
        table = if !pte.is_present() {
            let t = alloc()?;
            mem.store_u64(addr, Pte::new(t, link | PageTableFlags::PRESENT).bits());
            t
        } else if pte.is_large() {
            return Err(KernError::InvalidArgument);
        } else {
            pte.addr()
        };
    }
    Ok(slot(table, index(va.as_u64(), 1)))
}
