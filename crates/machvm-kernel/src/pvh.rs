//! The PVH boot ABI: `hvm_start_info` (pointer in EBX at entry), its memory
//! map and command line, copied into the kernel before low memory is reused.

use core::ptr;

use crate::paging::phys_to_virt;

/// `XEN_HVM_START_MAGIC_VALUE`.
const START_MAGIC: u32 = 0x336e_c578;
/// Memory-map entry type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Most memory-map entries kept.
pub const MAX_REGIONS: usize = 64;
/// Longest command line kept.
pub const MAX_CMDLINE: usize = 256;

#[repr(C)]
#[derive(Clone, Copy)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// One entry of the firmware memory map: `[start, end)` of type `kind`
/// (1 = RAM, 2 = reserved, 3 = ACPI, 4 = NVS, ...).
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// E820 type.
    pub kind: u32,
}

/// What the boot loader told us, copied out of low memory.
pub struct BootInfo {
    regions: [MemRegion; MAX_REGIONS],
    nregions: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Physical address of the ACPI RSDP (0: not given).
    pub rsdp: u64,
    /// Physical address of `hvm_start_info`.
    pub start_info_pa: u64,
}

impl BootInfo {
    /// The firmware memory map.
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions[..self.nregions]
    }

    /// The kernel command line (`-append`), lossily as text.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// True when `word` is one of the command line's space-separated words.
    pub fn has_arg(&self, word: &str) -> bool {
        self.cmdline().split_ascii_whitespace().any(|w| w == word)
    }
}

fn read<T: Copy>(pa: u64) -> T {
    // SAFETY: the PVH structures lie in RAM below 4 GiB, which the boot
    // direct map covers; nothing else writes them at this point.
    unsafe { ptr::read_unaligned(phys_to_virt(pa) as *const T) }
}

/// Reads `hvm_start_info` at physical `pa`; panics on a bad magic or a
/// missing memory map (QEMU always provides version 1 with one).
pub fn parse(pa: u64) -> BootInfo {
    let si: StartInfo = read(pa);
    assert!(
        si.magic == START_MAGIC,
        "bad hvm_start_info magic {:#x} at {pa:#x}",
        si.magic
    );
    assert!(
        si.version >= 1 && si.memmap_entries > 0,
        "hvm_start_info has no memory map (version {})",
        si.version
    );
    let mut info = BootInfo {
        regions: [MemRegion::default(); MAX_REGIONS],
        nregions: 0,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp: si.rsdp_paddr,
        start_info_pa: pa,
    };
    let n = (si.memmap_entries as usize).min(MAX_REGIONS);
    for i in 0..n {
        let e: MemmapEntry = read(si.memmap_paddr + (i * size_of::<MemmapEntry>()) as u64);
        info.regions[i] = MemRegion {
            start: e.addr,
            end: e.addr.saturating_add(e.size),
            kind: e.kind,
        };
    }
    info.nregions = n;
    if si.cmdline_paddr != 0 {
        while info.cmdline_len < MAX_CMDLINE {
            let b: u8 = read(si.cmdline_paddr + info.cmdline_len as u64);
            if b == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = b;
            info.cmdline_len += 1;
        }
    }
    info
}
