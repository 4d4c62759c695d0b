//! The VM calls from ring 3.

use machvm_user::KernError::{NoSpace, ProtectionFailure};
use machvm_user::abi::{inherit, map_copy, prot, scenario};
use machvm_user::sys;
use machvm_user_programs::util::{Check, Mem, PAGE, ck, exited, recv_word, send_word, wait_for};

/// [`scenario::TOUCH_PAGES`]: 64 fresh pages written and read back.
pub fn touch_pages() -> Result<(), u64> {
    let m = Mem::allocate(64 * PAGE).check(1)?;
    m.stamp_pages(|i| 0xA000 + i);
    ck(m.pages_are(|i| 0xA000 + i), 2)?;
    ck(m.rd(8) == 0 && m.rd(63 * PAGE + 4088) == 0, 3)
}

/// [`scenario::VM_ROUND_TRIP`]: allocate, region, protect, inherit, wire,
/// deallocate.
pub fn round_trip() -> Result<(), u64> {
    let a = scenario::FIXED_ADDR;
    let len = 4 * PAGE;
    ck(sys::vm_allocate(a, len, false).check(1)? == a, 1)?;
    sys::vm_allocate(a, PAGE, false).fails_with(NoSpace, 2)?;
    let r = sys::vm_region(a).check(3)?;
    ck(r.start == a && r.size == len, 4)?;
    ck(r.prot == 3 && r.max_prot == 7, 5)?;
    ck(r.inherit == inherit::COPY as u32 && r.shared == 0, 6)?;
    // Read-only in the middle page: three regions.
    sys::vm_protect(a + PAGE, PAGE, false, prot::READ).check(7)?;
    let r = sys::vm_region(a + PAGE).check(8)?;
    ck(r.start == a + PAGE && r.size == PAGE && r.prot == 1, 8)?;
    // Maximum lowered to r--: raising past it is refused.
    sys::vm_protect(a + PAGE, PAGE, true, prot::READ).check(9)?;
    let r = sys::vm_region(a + PAGE).check(10)?;
    ck(r.max_prot == 1, 10)?;
    sys::vm_protect(a + PAGE, PAGE, false, prot::READ | prot::WRITE)
        .fails_with(ProtectionFailure, 11)?;
    sys::vm_inherit(a + 2 * PAGE, 2 * PAGE, inherit::SHARE).check(12)?;
    let r = sys::vm_region(a + 2 * PAGE).check(13)?;
    ck(r.start == a + 2 * PAGE && r.size == 2 * PAGE, 13)?;
    ck(r.inherit == inherit::SHARE as u32, 14)?;
    // Wire the last two pages, then unwire: the bytes stay.
    // SAFETY: the range is this scenario's allocation, covered by no
    // reference.
    let m = unsafe { Mem::from_raw(a, len) };
    m.wr(2 * PAGE, 0x77);
    sys::vm_wire(a + 2 * PAGE, 2 * PAGE, prot::READ | prot::WRITE).check(16)?;
    m.wr(3 * PAGE, 0x78);
    sys::vm_wire(a + 2 * PAGE, 2 * PAGE, 0).check(17)?;
    ck(m.rd(2 * PAGE) == 0x77 && m.rd(3 * PAGE) == 0x78, 18)?;
    // SAFETY: no reference covers the range; `m` is not used again.
    unsafe { sys::vm_deallocate(a, len) }.check(19)?;
    let gone = sys::vm_region(a).map(|r| r.start >= a + len);
    ck(gone.unwrap_or(true), 20)
}

/// [`scenario::VM_READ_WRITE_COPY`]: snapshot, overwrite, memmove.
pub fn read_write_copy() -> Result<(), u64> {
    let m = Mem::allocate(8 * PAGE).check(1)?;
    m.stamp_pages(|i| 100 + i);
    // vm_read of 3 pages from offset 0x10: a snapshot at the same offset.
    let c = sys::vm_read(m.addr + 0x10, 3 * PAGE).check(2)?;
    ck(c % PAGE == 0x10, 3)?;
    // SAFETY: the kernel just mapped the copy: no reference covers it.
    let c = unsafe { Mem::from_raw(c - 0x10, 4 * PAGE) };
    m.wr(PAGE, 999);
    ck(c.rd(PAGE) == 101 && c.rd(2 * PAGE) == 102, 4)?;
    // vm_write: pages 4..6 become pages 0..2's bytes.
    // SAFETY: no reference covers `m`.
    unsafe { sys::vm_write(m.addr + 4 * PAGE, m.addr, 2 * PAGE) }.check(5)?;
    ck(m.rd(4 * PAGE) == 100 && m.rd(5 * PAGE) == 999, 6)?;
    // Overlapping vm_copy, forwards then backwards, at byte granularity.
    m.fill(|o| (o % 251) as u8);
    // SAFETY: as above.
    unsafe { sys::vm_copy(m.addr, 3 * PAGE, m.addr + PAGE + 5) }.check(7)?;
    let shifted = |o: u64| ((o - PAGE - 5) % 251) as u8;
    ck((PAGE + 5..4 * PAGE + 5).all(|o| m.rd8(o) == shifted(o)), 8)?;
    ck((0..PAGE + 5).all(|o| m.rd8(o) == (o % 251) as u8), 9)?;
    // SAFETY: as above.
    unsafe { sys::vm_copy(m.addr + PAGE + 5, 3 * PAGE, m.addr + 3) }.check(10)?;
    ck(
        (3..3 * PAGE + 3).all(|o| m.rd8(o) == ((o - 3) % 251) as u8),
        11,
    )
}

/// [`scenario::VM_MAP_COPY_CHILD`]: copies into a child with `DST_ALLOC`,
/// then with `SRC_DESTROY`.
pub fn map_copy_child() -> Result<(), u64> {
    let (go, done) = (sys::port_create(2).check(1)?, sys::port_create(2).check(1)?);
    let dst = scenario::FIXED_ADDR;
    let pid = match sys::fork().check(2)? {
        0 => sys::exit(child_checks(go, done).err().unwrap_or(0)),
        pid => pid,
    };
    let src = Mem::allocate(4 * PAGE).check(3)?;
    src.stamp_pages(|i| 0xC0 + i);
    // SAFETY: the destination is in the child's map.
    let at = unsafe { sys::vm_map_copy(pid, dst, 4 * PAGE, src.addr, map_copy::DST_ALLOC) };
    ck(at.check(4)? == dst, 4)?;
    src.wr(0, 1); // after the copy: the child must not see it
    send_word(go, dst).check(5)?;
    ck(recv_word(done).check(6)? == 0, 7)?;
    let flags = map_copy::DST_ALLOC | map_copy::SRC_DESTROY;
    // SAFETY: the source is destroyed; `src` is not used again.
    unsafe { sys::vm_map_copy(pid, dst + 8 * PAGE, 4 * PAGE, src.addr, flags) }.check(8)?;
    let gone = sys::vm_region(src.addr).map(|r| r.start >= src.addr + 4 * PAGE);
    ck(gone.unwrap_or(true), 9)?;
    send_word(go, dst + 8 * PAGE).check(10)?;
    ck(exited(&wait_for(pid).check(11)?, 0), 12)
}

/// The child of [`map_copy_child`]: checks each copy it is told of.
fn child_checks(go: u64, done: u64) -> Result<(), u64> {
    let a = recv_word(go).check(20)?;
    // SAFETY: the parent copied 4 pages there: no reference covers them.
    let m = unsafe { Mem::from_raw(a, 4 * PAGE) };
    ck(m.pages_are(|i| 0xC0 + i), 21)?;
    send_word(done, 0).check(22)?;
    let b = recv_word(go).check(23)?;
    // SAFETY: as above.
    let m = unsafe { Mem::from_raw(b, 4 * PAGE) };
    ck(m.pages_are(|i| if i == 0 { 1 } else { 0xC0 + i }), 24)
}
