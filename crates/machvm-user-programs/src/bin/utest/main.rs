//! `utest`: the user-mode test scenarios of machvm-kernel's `user::`
//! suite. The argument (`rdi` at entry) picks one,
//! `machvm_user::abi::scenario::arg(scenario, param)`; each exits 0 when
//! every check passed, else the number of the failed check (see
//! `machvm_user::abi::scenario` for each one's checks and exit).
//!
//! On the host this is an empty program, so workspace builds are untouched.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod faults;
#[cfg(target_os = "none")]
mod fork;
#[cfg(target_os = "none")]
mod fuzz;
#[cfg(target_os = "none")]
mod ipc;
#[cfg(target_os = "none")]
mod sched;
#[cfg(target_os = "none")]
mod vm;

#[cfg(target_os = "none")]
machvm_user::entry!(main);

/// Runs the scenario `arg` names; its exit code.
#[cfg(target_os = "none")]
fn main(arg: u64) -> u64 {
    use machvm_user::abi::scenario::{self as s, split};
    let (scenario, param) = split(arg);
    let r = match scenario {
        s::HELLO => return faults::hello(),
        s::TOUCH_PAGES => vm::touch_pages(),
        s::WRITE_TEXT => faults::write_text(),
        s::WRITE_TEXT_CHILD => faults::write_text_child(),
        s::EXEC_DATA => faults::exec_data(),
        s::READ_UNMAPPED => faults::read_unmapped(),
        s::UD2 | s::HLT | s::INT_F0 => faults::trap(scenario),
        s::BAD_POINTERS => faults::bad_pointers(),
        s::VM_ROUND_TRIP => vm::round_trip(),
        s::VM_READ_WRITE_COPY => vm::read_write_copy(),
        s::VM_MAP_COPY_CHILD => vm::map_copy_child(),
        s::FORK_COW => fork::cow(),
        s::FORK_SHARE => fork::share(),
        s::FORK_NONE => fork::none(),
        s::OOL_SNAPSHOT => ipc::ool_snapshot(),
        s::OOL_SRC_DESTROY => ipc::ool_src_destroy(),
        s::OOL_PAGE_OFFSET => ipc::ool_page_offset(),
        s::OOL_64MIB => ipc::ool_64mib(),
        s::PORT_BOUNDED => ipc::port_bounded(param == 1),
        s::WAIT_ORPHANS => fork::wait_orphans(),
        s::SPIN_PREEMPT => sched::spin_preempt(param),
        s::EVERY_CPU => sched::every_cpu(param),
        s::FORK_TREE => return sched::fork_tree(),
        s::FUZZ => fuzz::fuzz(param),
        _ => Err(100),
    };
    r.err().unwrap_or(0)
}

#[cfg(not(target_os = "none"))]
fn main() {}
