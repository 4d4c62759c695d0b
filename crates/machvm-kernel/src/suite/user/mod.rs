//! User mode: SMEP and SMAP on every CPU, and the kernel's user-access
//! discipline (only the probes and copy routines set `RFLAGS.AC`).

use alloc::format;
use alloc::string::String;

use machvm::{Access, KernError, PAGE_SIZE, VmProt, VmStatistics};
use machvm_base::USER_MAX;
use machvm_user::abi::USER_TEXT_START;
use machvm_user::abi::scenario::{self as s, arg};

use crate::locks::VmMap;
use crate::proc::{self, ExitStatus};
use crate::suite::Test;
use crate::trap::{self, pf};
use crate::{cpu, ensure, ensure_eq, mem, smp, test, vm};

mod ipc;
mod loader;
mod programs;
mod raw;
mod regressions;
mod regressions2;
mod sched;
mod smap;

use ipc::*;
use loader::*;
use programs::*;
use raw::*;
use regressions::*;
use regressions2::*;
use sched::*;
use smap::*;

/// The user-mode suite, in order.
pub const TESTS: &[Test] = &[
    test!(smep_smap_on_every_cpu),
    test!(smap_faults_unchecked_kernel_access),
    test!(smep_faults_kernel_fetch_from_user_page),
    test!(loader_maps_segments_with_protections),
    test!(loader_rejects_bad_images),
    test!(raw_task_exits_with_its_code),
    test!(traps_kill_only_the_task),
    test!(refused_faults_name_address_and_access),
    test!(user_faults_resolved_by_machvm),
    test!(spinners_are_preempted_and_killed),
    test!(kill_takes_a_blocked_parent_and_its_zombie),
    test!(hello_exits_with_its_code),
    test!(touched_pages_are_zero_filled),
    test!(write_to_text_kills_only_that_task),
    test!(exec_from_data_kills),
    test!(unmapped_access_names_address),
    test!(syscalls_reject_bad_pointers),
    test!(vm_calls_round_trip),
    test!(vm_read_write_copy),
    test!(vm_map_copy_into_child),
    test!(fork_cow_isolation_both_ways),
    test!(fork_share_inheritance),
    test!(fork_none_inheritance),
    test!(wait_reaps_and_orphans),
    test!(ool_message_is_a_snapshot),
    test!(ool_src_destroy),
    test!(ool_copyout_keeps_page_offset),
    test!(ool_64mib_moves_without_copy),
    test!(port_queue_is_bounded),
    test!(round_robin_needs_preemption),
    test!(every_cpu_runs_tasks),
    test!(preempted_task_shot_down_by_another_cpu),
    test!(sixty_four_processes_return_every_frame),
    test!(init_demo_runs),
    test!(syscall_returning_to_noncanonical_rip_kills),
    test!(syscall_with_trap_flag_set),
    test!(requeued_message_wakes_the_next_receiver),
    test!(ports_cannot_exhaust_the_kernel_heap),
    test!(ports_die_with_their_creator),
    test!(kill_during_fork_kills_the_child),
    test!(no_task_escapes_the_kill),
    test!(fpu_instructions_kill_the_task),
    test!(syscall_fuzzer),
    test!(map_entries_and_the_kernel_heap_are_bounded),
    test!(queued_task_at_the_top_of_user_space_is_killed),
    test!(vm_map_copy_into_a_child_keeps_its_cap),
    test!(port_recv_keeps_the_receivers_cap),
    test!(fork_of_a_full_map_keeps_the_heap),
    test!(page_faults_keep_the_heap_reserve),
    test!(requeue_keeps_accepted_messages),
];

const PG: u64 = PAGE_SIZE;

/// The fault hook installed for the test; every CPU back on the kernel CR3
/// with no map when it goes.
struct Session;

impl Session {
    fn new() -> Session {
        vm::install_fault_hook();
        Session
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        vm::release_all();
    }
}

fn new_map() -> Result<VmMap, String> {
    vm::vm()
        .system
        .create_map()
        .map_err(|e| format!("create_map: {e}"))
}

fn ctx<T>(r: Result<T, KernError>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// `VmMap::verify`, then the whole system's.
fn verify(map: &VmMap) -> Result<(), String> {
    map.verify().map_err(|e| format!("map verify: {e}"))?;
    vm::vm()
        .system
        .verify()
        .map_err(|e| format!("VmSystem::verify(): {e}"))
}

/// Free frames, the VM system built first (on first use it takes its
/// zero frame).
fn free_frames() -> u64 {
    let _ = vm::vm();
    mem::frames().free_frames()
}

fn stats() -> VmStatistics {
    vm::vm().system.statistics()
}

/// Runs a raw-code task (`rdi = arg`) to its end.
fn run_raw(code: &[u8], arg: u64) -> Result<ExitStatus, String> {
    let pid = ctx(proc::spawn_code(code, arg), "spawn")?;
    proc::wait_exit(pid).ok_or(format!("pid {pid} vanished"))
}

/// Runs `utest` with `scenario` and `param` to its end.
fn utest(scenario: u64, param: u64) -> Result<ExitStatus, String> {
    let pid =
        proc::spawn("utest", arg(scenario, param)).map_err(|e| format!("spawn utest: {e}"))?;
    proc::wait_exit(pid).ok_or(format!("utest pid {pid} vanished"))
}

/// `utest` with `scenario` must exit 0 (else: the number of its failed
/// check), leaving the scheduler consistent.
fn passes(scenario: u64, param: u64, what: &str) -> Result<(), String> {
    match utest(scenario, param)? {
        ExitStatus::Exited(0) => proc::verify(),
        ExitStatus::Exited(n) => Err(format!("{what}: failed check {n}")),
        other => Err(format!("{what}: {other:?}")),
    }
}
