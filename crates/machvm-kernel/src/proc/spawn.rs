//! Making tasks: from raw code (tests of the trap paths) and, in `loader`,
//! from ELF images.

use machvm::{PAGE_SIZE, VmProt};

pub use machvm_user::abi::{USER_STACK_SIZE, USER_STACK_TOP};

use super::loader::{self, LoadError};
use super::*;
use crate::trap::{USER_CS, USER_DS};
use crate::vm;

/// Where [`spawn_code`] puts its code.
pub const CODE_BASE: u64 = 0x40_0000;

/// The first user context: `rip`, the top of the stack, `rdi = arg`,
/// interrupts on.
pub(crate) fn first_frame(rip: u64, arg: u64) -> TrapFrame {
    TrapFrame {
        rip,
        rsp: USER_STACK_TOP - 8,
        rdi: arg,
        cs: u64::from(USER_CS),
        ss: u64::from(USER_DS),
        rflags: 0x202,
        ..TrapFrame::default()
    }
}

/// Maps the user stack: [`USER_STACK_SIZE`] bytes of `rw-` below
/// [`USER_STACK_TOP`], never executable.
pub(crate) fn map_stack(map: &VmMap) -> Result<(), KernError> {
    let base = USER_STACK_TOP - USER_STACK_SIZE;
    map.allocate(base, USER_STACK_SIZE, false)?;
    map.protect(base, USER_STACK_SIZE, true, VmProt::DEFAULT)?;
    map.protect(base, USER_STACK_SIZE, false, VmProt::DEFAULT)
}

/// Queues a task and wakes an idle CPU for it; `ResourceShortage` if the
/// scheduler refuses it (too many tasks, or its parent is dying).
pub(crate) fn start(
    name: &'static str,
    parent: Pid,
    map: VmMap,
    frame: TrapFrame,
) -> Result<Pid, KernError> {
    vm::install_fault_hook();
    let inserted = SCHED.lock().insert(new_task(name, parent, map, frame));
    match inserted {
        Ok(pid) => {
            kick_idle();
            Ok(pid)
        }
        // Dropped here, outside the lock: its map's last handle.
        Err(task) => {
            drop(task);
            Err(KernError::ResourceShortage)
        }
    }
}

/// Starts a task (child of the kernel) whose text is `code`, `r-x` at
/// [`CODE_BASE`], with a stack and `rdi = arg`. For tests of the trap
/// paths that need a few exact instructions.
pub fn spawn_code(code: &[u8], arg: u64) -> Result<Pid, KernError> {
    spawn_code_in(&vm::vm().system.create_map()?, code, arg)
}

/// [`spawn_code`] in a fork of `base` (its ranges inherited as their
/// inheritance says: a `Share` range is shared with `base` and every other
/// fork of it). `base` must not hold [`CODE_BASE`] or the stack.
pub fn spawn_code_in(base: &VmMap, code: &[u8], arg: u64) -> Result<Pid, KernError> {
    let map = base.fork()?;
    let len = (code.len() as u64).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
    map.allocate(CODE_BASE, len, false)?;
    map.write_bytes(CODE_BASE, code)?;
    let rx = VmProt::READ | VmProt::EXECUTE;
    map.protect(CODE_BASE, len, true, rx)?;
    map.protect(CODE_BASE, len, false, rx)?;
    map_stack(&map)?;
    start("code", 0, map, first_frame(CODE_BASE, arg))
}

/// Starts the embedded user program `name` (child of the kernel) with
/// `rdi = arg`: its ELF image loaded into a fresh map, and a stack.
pub fn spawn(name: &'static str, arg: u64) -> Result<Pid, LoadError> {
    let image = crate::images::image(name).ok_or(LoadError::Format(
        "no such program embedded (build the kernel through cargo xtask)",
    ))?;
    spawn_image(name, image, arg)
}

/// Starts a task from the ELF `image`.
pub fn spawn_image(name: &'static str, image: &[u8], arg: u64) -> Result<Pid, LoadError> {
    let map = vm::vm().system.create_map()?;
    let entry = loader::load(&map, image)?;
    map_stack(&map)?;
    Ok(start(name, 0, map, first_frame(entry, arg))?)
}
