//! Just enough ACPI to list the CPUs: RSDP -> RSDT/XSDT -> MADT's local
//! APIC entries.

use alloc::vec::Vec;
use core::ptr;

use crate::paging::phys_to_virt;

fn rd<T: Copy>(pa: u64) -> T {
    // SAFETY: ACPI tables and the BIOS area lie below 4 GiB, inside the
    // direct map; firmware does not change them after boot.
    unsafe { ptr::read_unaligned(phys_to_virt(pa) as *const T) }
}

fn sig(pa: u64, s: &[u8]) -> bool {
    s.iter()
        .enumerate()
        .all(|(i, &b)| rd::<u8>(pa + i as u64) == b)
}

fn find_rsdp(hint: u64) -> Option<u64> {
    if hint != 0 && sig(hint, b"RSD PTR ") {
        return Some(hint);
    }
    let ebda = u64::from(rd::<u16>(0x40E)) << 4;
    let areas = [(ebda, ebda + 1024), (0xE0000, 0x100000)];
    areas
        .into_iter()
        .filter(|&(s, _)| s != 0)
        .flat_map(|(s, e)| (s..e).step_by(16))
        .find(|&p| sig(p, b"RSD PTR "))
}

/// Physical address of the table with signature `want`, if any.
fn find_table(rsdp: u64, want: &[u8; 4]) -> Option<u64> {
    let rev: u8 = rd(rsdp + 15);
    let xsdt: u64 = if rev >= 2 { rd(rsdp + 24) } else { 0 };
    let (root, width) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (u64::from(rd::<u32>(rsdp + 16)), 4)
    };
    let len = u64::from(rd::<u32>(root + 4));
    (0..(len.saturating_sub(36)) / width)
        .map(|i| {
            let at = root + 36 + i * width;
            if width == 8 {
                rd::<u64>(at)
            } else {
                u64::from(rd::<u32>(at))
            }
        })
        .find(|&t| sig(t, want))
}

/// APIC ids of the enabled processors in the MADT, in table order (the boot
/// CPU first on QEMU); empty when there is no ACPI.
pub fn cpu_apic_ids(rsdp_hint: u64) -> Vec<u32> {
    let mut ids = Vec::new();
    let Some(madt) = find_rsdp(rsdp_hint).and_then(|r| find_table(r, b"APIC")) else {
        return ids;
    };
    let len = u64::from(rd::<u32>(madt + 4));
    let mut p = madt + 44;
    while p + 2 <= madt + len {
        let (kind, elen): (u8, u8) = (rd(p), rd(p + 1));
        if elen < 2 {
            break;
        }
        match kind {
            0 if rd::<u32>(p + 4) & 1 != 0 => ids.push(u32::from(rd::<u8>(p + 3))),
            9 if rd::<u32>(p + 8) & 1 != 0 => ids.push(rd::<u32>(p + 4)),
            _ => {}
        }
        p += u64::from(elen);
    }
    ids
}
