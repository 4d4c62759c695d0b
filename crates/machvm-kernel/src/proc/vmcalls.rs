//! The Mach VM calls on the caller's own map (and `vm_map_copy` into a
//! child's): thin wrappers that check the arguments' form, call machvm and
//! copy results out. machvm itself checks ranges, protections and
//! atomicity (SPEC §3–§4).

use machvm::{PAGE_SIZE, VmInherit, VmProt};
use machvm_user::abi::{MAX_TOTAL_ENTRIES, RegionInfoAbi, inherit, map_copy, nr};

use super::syscall::my_map;
use super::usercopy::{self, Plain};
use super::*;

// SAFETY: a `repr(C)` struct of `u64`/`u32` fields with no padding (size
// asserted in the ABI crate).
unsafe impl Plain for RegionInfoAbi {}

/// Most bytes a task may have wired.
const WIRE_LIMIT: u64 = 1 << 20;

/// Most entries a task's map may hold before the calls that can add
/// entries are `ResourceShortage` (Linux's `vm.max_map_count`): entries
/// live in the kernel heap.
pub const MAX_MAP_ENTRIES: usize = 4096;

/// `ResourceShortage` if `map` holds [`MAX_MAP_ENTRIES`] entries: checked
/// before every call that may add entries to it (a copy into it adds at
/// most as many as its source holds, itself capped).
///
/// The kernel-wide budget is checked too: every task's entries, as last
/// recorded, below `abi::MAX_TOTAL_ENTRIES`. Entries, and the objects
/// behind them, live in the kernel heap, whose free bytes are scattered
/// among small allocations: bounding their number keeps the heap mostly
/// free, so a large allocation still finds room.
pub(crate) fn room_for_entries(map: &VmMap) -> Result<(), KernError> {
    let total = super::total_entries();
    if map.entry_count() >= MAX_MAP_ENTRIES || total >= MAX_TOTAL_ENTRIES as usize {
        return Err(KernError::ResourceShortage);
    }
    Ok(())
}

/// The VM call `n` with arguments `a`.
pub(crate) fn call(n: u64, a: [u64; 6]) -> Result<u64, KernError> {
    let map = my_map()?;
    if !matches!(n, nr::VM_DEALLOCATE | nr::VM_REGION) {
        room_for_entries(&map)?;
    }
    match n {
        nr::VM_ALLOCATE => map.allocate(a[0], a[1], flag(a[2])?),
        nr::VM_DEALLOCATE => map.deallocate(a[0], a[1]).map(|()| 0),
        nr::VM_PROTECT => map
            .protect(a[0], a[1], flag(a[2])?, prot(a[3])?)
            .map(|()| 0),
        nr::VM_INHERIT => map.inherit(a[0], a[1], inheritance(a[2])?).map(|()| 0),
        nr::VM_REGION => region(&map, a[0], a[1]),
        nr::VM_READ => read(&map, a[0], a[1]),
        nr::VM_WRITE => write(&map, a[0], a[1], a[2]).map(|()| 0),
        nr::VM_COPY => machvm::vm_copy(&map, a[0], a[1], a[2]).map(|()| 0),
        nr::VM_MAP_COPY => map_copy_to(&map, a),
        nr::VM_WIRE => wire(&map, a[0], a[1], a[2]).map(|()| 0),
        _ => Err(KernError::InvalidArgument),
    }
}

fn flag(v: u64) -> Result<bool, KernError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(KernError::InvalidArgument),
    }
}

fn prot(v: u64) -> Result<VmProt, KernError> {
    let bits = u32::try_from(v).map_err(|_| KernError::InvalidArgument)?;
    VmProt::from_user(bits)
}

fn inheritance(v: u64) -> Result<VmInherit, KernError> {
    match v {
        inherit::SHARE => Ok(VmInherit::Share),
        inherit::COPY => Ok(VmInherit::Copy),
        inherit::NONE => Ok(VmInherit::None),
        _ => Err(KernError::InvalidArgument),
    }
}

/// `VM_REGION(addr, info_ptr) -> start`.
fn region(map: &VmMap, addr: u64, info: u64) -> Result<u64, KernError> {
    usercopy::check_range(info, size_of::<RegionInfoAbi>() as u64)?;
    let r = map.region(addr)?;
    let out = RegionInfoAbi {
        start: r.start,
        size: r.size,
        prot: r.protection.bits(),
        max_prot: r.max_protection.bits(),
        inherit: match r.inheritance {
            VmInherit::Share => inherit::SHARE,
            VmInherit::Copy => inherit::COPY,
            VmInherit::None => inherit::NONE,
        } as u32,
        shared: u32::from(r.shared),
    };
    usercopy::write(info, &out)?;
    Ok(r.start)
}

/// `VM_READ(addr, size) -> addr`: a snapshot copied out anywhere in the
/// caller's map.
fn read(map: &VmMap, addr: u64, size: u64) -> Result<u64, KernError> {
    let copy = machvm::vm_read(map, addr, size)?;
    copy.copyout(map).map_err(|(e, copy)| {
        drop(copy);
        e
    })
}

/// `VM_WRITE(dst, src, size)`: a snapshot of `src` written over `dst`.
fn write(map: &VmMap, dst: u64, src: u64, size: u64) -> Result<(), KernError> {
    let copy = machvm::vm_read(map, src, size)?;
    machvm::vm_write(map, dst, copy)
}

/// `VM_MAP_COPY(pid, dst, len, src, flags) -> dst` into the caller's own map
/// (pid 0) or a child's.
fn map_copy_to(map: &VmMap, a: [u64; 6]) -> Result<u64, KernError> {
    let [pid, dst, len, src, flags, _] = a;
    if flags & !(map_copy::DST_ALLOC | map_copy::SRC_DESTROY) != 0 {
        return Err(KernError::InvalidArgument);
    }
    let target = if pid == 0 {
        map.clone()
    } else {
        child_map(pid)?
    };
    room_for_entries(&target)?;
    let alloc = flags & map_copy::DST_ALLOC != 0;
    let destroy = flags & map_copy::SRC_DESTROY != 0;
    let r = machvm::vm_map_copy(&target, map, dst, len, src, alloc, destroy);
    if pid != 0 {
        super::note_entries(pid, &target);
    }
    r.map(|()| dst)
}

/// The map of the caller's live child `pid`.
fn child_map(pid: Pid) -> Result<VmMap, KernError> {
    let me = current();
    let s = SCHED.lock();
    s.tasks
        .get(&pid)
        .filter(|t| t.parent == me && !t.orphan)
        .and_then(|t| t.map.clone())
        .ok_or(KernError::InvalidArgument)
}

/// `VM_WIRE(addr, size, prot)`: at most [`WIRE_LIMIT`] wired per task.
fn wire(map: &VmMap, addr: u64, size: u64, access: u64) -> Result<(), KernError> {
    let access = prot(access)?;
    if !access.is_empty() && wired_bytes(map).saturating_add(size) > WIRE_LIMIT {
        return Err(KernError::ResourceShortage);
    }
    map.wire(addr, size, access)
}

/// Bytes the map has wired, summed over its regions.
fn wired_bytes(map: &VmMap) -> u64 {
    let mut total = 0;
    let mut at = 0;
    while let Ok(r) = map.region(at) {
        total += r.wired_pages * PAGE_SIZE;
        at = r.start + r.size;
    }
    total
}
