//! A misaligned word access through `PhysMem` is refused (a panic) in
//! every build, never turned into a misaligned atomic (undefined
//! behaviour). `cargo xtask test` runs this file in a release build too,
//! where `debug_assert!` is off.

use core::ptr::NonNull;

use machvm_base::PhysAddr;
use machvm_frame::{HOSTED_PHYS_BASE, PhysMem};

fn mem() -> PhysMem {
    PhysMem::hosted(4 * 4096).unwrap()
}

const ODD: PhysAddr = PhysAddr::new(HOSTED_PHYS_BASE + 4);

#[test]
#[should_panic(expected = "misaligned physical word access")]
fn a_misaligned_load_is_refused() {
    let _ = mem().load_u64(ODD);
}

#[test]
#[should_panic(expected = "misaligned physical word access")]
fn a_misaligned_store_is_refused() {
    mem().store_u64(ODD, 1);
}

#[test]
#[should_panic(expected = "misaligned physical word access")]
fn a_misaligned_swap_is_refused() {
    let _ = mem().swap_u64(ODD, 1);
}

#[test]
#[should_panic(expected = "misaligned physical word access")]
fn a_misaligned_fetch_or_is_refused() {
    let _ = mem().fetch_or_u64(ODD, 1);
}

#[test]
#[should_panic(expected = "misaligned physical word access")]
fn a_misaligned_fetch_and_is_refused() {
    let _ = mem().fetch_and_u64(ODD, 1);
}

#[test]
#[should_panic(expected = "misaligned physical page")]
fn zeroing_a_misaligned_page_is_refused() {
    mem().zero_page(ODD);
}

#[test]
#[should_panic(expected = "misaligned physical page")]
fn copying_to_a_misaligned_page_is_refused() {
    mem().copy_page(ODD, PhysAddr::new(HOSTED_PHYS_BASE));
}

#[test]
#[should_panic(expected = "misaligned physical word access")]
fn a_direct_map_aligned_unlike_its_base_is_refused() {
    let mut ram = vec![0u64; 1024];
    // One byte in: the physical address is 8-aligned, its host address not.
    let virt = NonNull::new(ram.as_mut_ptr().cast::<u8>().wrapping_add(1)).unwrap();
    // SAFETY: `virt .. virt + 4096` lies inside `ram`, which outlives `m`
    // and is reached only through `m`.
    let m = unsafe { PhysMem::direct_map(virt, PhysAddr::new(0x1000), 4096) };
    let _ = m.load_u64(PhysAddr::new(0x1008));
}

#[test]
fn aligned_words_still_work() {
    let m = mem();
    let pa = PhysAddr::new(HOSTED_PHYS_BASE + 8);
    m.store_u64(pa, 7);
    assert_eq!(m.swap_u64(pa, 9), 7);
    assert_eq!(m.load_u64(pa), 9);
}
