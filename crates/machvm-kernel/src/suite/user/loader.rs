//! The ELF loader: segments with their protections; bad images refused
//! with nothing changed.

use alloc::vec::Vec;

use super::*;

fn utest_image() -> Result<&'static [u8], String> {
    crate::images::image("utest").ok_or(String::from(
        "no user programs embedded: build the kernel through cargo xtask",
    ))
}

/// Text `r-x`, rodata `r--`, data `rw-`, each with the same maximum; no
/// region writable and executable.
pub(super) fn loader_maps_segments_with_protections() -> Result<(), String> {
    let map = new_map()?;
    let entry = proc::load(&map, utest_image()?).map_err(|e| format!("load: {e}"))?;
    let mut seen = Vec::new();
    let mut at = 0;
    while let Ok(r) = map.region(at) {
        ensure_eq!(
            r.protection,
            r.max_protection,
            "region {:#x} maximum",
            r.start
        );
        ensure!(
            !r.protection.contains(VmProt::WRITE | VmProt::EXECUTE),
            "region {:#x} is W+X",
            r.start
        );
        seen.push((r.start, r.size, r.protection));
        at = r.start + r.size;
    }
    let rx = VmProt::READ | VmProt::EXECUTE;
    let text = seen.iter().find(|(s, n, _)| (*s..s + n).contains(&entry));
    ensure_eq!(
        text.map(|t| t.2),
        Some(rx),
        "text around the entry {entry:#x}"
    );
    ensure!(
        seen.iter().any(|t| t.2 == VmProt::READ),
        "no r-- segment: {seen:x?}"
    );
    ensure!(
        seen.iter().any(|t| t.2 == VmProt::DEFAULT),
        "no rw- segment: {seen:x?}"
    );
    verify(&map)
}

fn u16_at(img: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([img[at], img[at + 1]]))
}

fn u64_at(img: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&img[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Offsets of the `PT_LOAD` program headers.
fn loads(img: &[u8]) -> Vec<usize> {
    let (off, size, n) = (
        u64_at(img, 0x20) as usize,
        u16_at(img, 0x36),
        u16_at(img, 0x38),
    );
    (0..n)
        .map(|i| off + i * size)
        .filter(|&p| img[p] == 1 && img[p + 1..p + 4] == [0, 0, 0])
        .collect()
}

fn patched(img: &[u8], f: impl Fn(&mut [u8], &[usize])) -> Vec<u8> {
    let mut v = img.to_vec();
    let ph = loads(&v);
    f(&mut v, &ph);
    v
}

/// A bad magic, a W+X segment, a segment in the kernel half and two
/// segments on one page are each refused, and the map keeps nothing.
pub(super) fn loader_rejects_bad_images() -> Result<(), String> {
    let img = utest_image()?;
    ensure!(loads(img).len() >= 2, "utest has fewer than 2 PT_LOADs");
    let kernel_half = 0xffff_8000_0000_0000u64.to_le_bytes();
    let cases: [(&str, Vec<u8>); 4] = [
        ("bad magic", patched(img, |v, _| v[1] = b'X')),
        ("W+X", patched(img, |v, ph| v[ph[0] + 4] |= 3)),
        (
            "kernel half",
            patched(img, |v, ph| {
                v[ph[0] + 16..ph[0] + 24].copy_from_slice(&kernel_half)
            }),
        ),
        (
            "shared page",
            patched(img, |v, ph| {
                let first = v[ph[0] + 16..ph[0] + 24].to_vec();
                v[ph[1] + 16..ph[1] + 24].copy_from_slice(&first);
            }),
        ),
    ];
    for (what, bad) in cases {
        ensure!(
            (bad.as_ptr() as usize).is_multiple_of(8),
            "{what}: copy not 8-aligned"
        );
        let map = new_map()?;
        let free = free_frames();
        match proc::load(&map, &bad) {
            Ok(e) => return Err(format!("{what}: loaded, entry {e:#x}")),
            Err(proc::LoadError::Vm(e)) => return Err(format!("{what}: machvm {e}")),
            Err(_) => {}
        }
        ensure!(map.region(0).is_err(), "{what}: the map holds a region");
        ensure_eq!(free_frames(), free, "{what}: frames");
        verify(&map)?;
    }
    Ok(())
}
