//! The `utest` program's scenarios (`machvm_user::abi::scenario`): each
//! checks itself and exits 0, or with the number of its failed check; the
//! kernel side checks the exit status and machvm's counters.

use super::*;

pub(super) fn hello_exits_with_its_code() -> Result<(), String> {
    ensure_eq!(utest(s::HELLO, 0)?, ExitStatus::Exited(7), "hello");
    proc::verify()
}

pub(super) fn touched_pages_are_zero_filled() -> Result<(), String> {
    let before = stats().zero_fill_count;
    passes(s::TOUCH_PAGES, 0, "64 pages allocated, written, read back")?;
    let zf = stats().zero_fill_count - before;
    ensure!(zf >= 64, "zero fills {zf}, want at least 64");
    Ok(())
}

pub(super) fn write_to_text_kills_only_that_task() -> Result<(), String> {
    match utest(s::WRITE_TEXT, 0)? {
        ExitStatus::Fault {
            addr,
            access: Access::Write,
            error: KernError::ProtectionFailure,
        } if (USER_TEXT_START..USER_TEXT_START + (1 << 20)).contains(&addr) => {}
        other => return Err(format!("write to text: {other:?}")),
    }
    passes(
        s::WRITE_TEXT_CHILD,
        0,
        "a Share sibling outlives the crasher",
    )
}

pub(super) fn exec_from_data_kills() -> Result<(), String> {
    match utest(s::EXEC_DATA, 0)? {
        ExitStatus::Fault {
            access: Access::Execute,
            error: KernError::ProtectionFailure,
            ..
        } => proc::verify(),
        other => Err(format!("call into a data page (NX): {other:?}")),
    }
}

pub(super) fn unmapped_access_names_address() -> Result<(), String> {
    let want = ExitStatus::Fault {
        addr: s::UNMAPPED_ADDR,
        access: Access::Read,
        error: KernError::InvalidAddress,
    };
    ensure_eq!(
        utest(s::READ_UNMAPPED, 0)?,
        want,
        "read of an unmapped page"
    );
    proc::verify()
}

pub(super) fn syscalls_reject_bad_pointers() -> Result<(), String> {
    passes(
        s::BAD_POINTERS,
        0,
        "kernel, unmapped, overflowing, straddling and read-only pointers",
    )
}

pub(super) fn vm_calls_round_trip() -> Result<(), String> {
    passes(
        s::VM_ROUND_TRIP,
        0,
        "allocate, region, protect, inherit, wire, deallocate",
    )
}

pub(super) fn vm_read_write_copy() -> Result<(), String> {
    passes(
        s::VM_READ_WRITE_COPY,
        0,
        "vm_read snapshot, vm_write, memmove vm_copy",
    )
}

pub(super) fn vm_map_copy_into_child() -> Result<(), String> {
    passes(
        s::VM_MAP_COPY_CHILD,
        0,
        "dst_alloc, then src_destroy, into a child",
    )
}

pub(super) fn fork_cow_isolation_both_ways() -> Result<(), String> {
    let before = stats().cow_faults;
    passes(
        s::FORK_COW,
        0,
        "post-fork writes invisible to the other side",
    )?;
    ensure!(stats().cow_faults > before, "no copy-on-write copy");
    Ok(())
}

pub(super) fn fork_share_inheritance() -> Result<(), String> {
    passes(s::FORK_SHARE, 0, "the parent sees the child's write")
}

pub(super) fn fork_none_inheritance() -> Result<(), String> {
    passes(s::FORK_NONE, 0, "the child's read of a None range kills it")
}

pub(super) fn wait_reaps_and_orphans() -> Result<(), String> {
    passes(
        s::WAIT_ORPHANS,
        0,
        "wait before and after exit, any child, orphans",
    )?;
    // The orphaned grandchild may outlive the root; it is reaped on exit.
    proc::run_until(|| proc::pids().is_empty());
    proc::verify()
}

/// 64 processes fork, dirty copy-on-write and `Share` pages and exit: every
/// frame comes back and nothing is left.
pub(super) fn sixty_four_processes_return_every_frame() -> Result<(), String> {
    vm::install_fault_hook();
    let free0 = stats().free_count;
    let created = proc::stats().created;
    let want = ExitStatus::Exited(s::FORK_TREE_EXIT);
    ensure_eq!(utest(s::FORK_TREE, 0)?, want, "the root reaped 63");
    ensure_eq!(proc::stats().created - created, 64, "processes created");
    ensure!(proc::pids().is_empty(), "tasks left: {:?}", proc::pids());
    vm::release_all();
    ensure_eq!(stats().free_count, free0, "free frames after 64 processes");
    vm::vm()
        .system
        .verify()
        .map_err(|e| format!("VmSystem::verify(): {e}"))?;
    proc::verify()
}

/// The demo's `init`: a fork tree, a pipeline of out-of-line messages
/// (one of 64 MiB), a child killed for writing its text, the statistics.
pub(super) fn init_demo_runs() -> Result<(), String> {
    let pid = proc::spawn("init", 0).map_err(|e| format!("spawn init: {e}"))?;
    let killed = proc::stats().killed;
    match proc::wait_exit(pid) {
        Some(ExitStatus::Exited(0)) => {}
        other => {
            return Err(format!(
                "init: {other:?} (a nonzero exit names its chapter)"
            ));
        }
    }
    proc::run_until(|| proc::pids().is_empty());
    ensure_eq!(
        proc::stats().killed - killed,
        1,
        "processes killed (the crasher)"
    );
    proc::verify()
}
