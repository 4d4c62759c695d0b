//! User mode: SMEP and SMAP on every CPU, and the kernel's user-access
//! discipline (only the probes and copy routines set `RFLAGS.AC`).

use alloc::format;
use alloc::string::String;

use machvm::{Access, KernError, PAGE_SIZE, VmProt};

use crate::locks::VmMap;
use crate::proc::{self, ExitStatus};
use crate::suite::Test;
use crate::trap::{self, pf};
use crate::{cpu, ensure, ensure_eq, mem, smp, test, vm};

mod raw;
mod smap;

use raw::*;
use smap::*;

/// The user-mode suite, in order.
pub const TESTS: &[Test] = &[
    test!(smep_smap_on_every_cpu),
    test!(smap_faults_unchecked_kernel_access),
    test!(smep_faults_kernel_fetch_from_user_page),
    test!(raw_task_exits_with_its_code),
    test!(traps_kill_only_the_task),
    test!(refused_faults_name_address_and_access),
    test!(user_faults_resolved_by_machvm),
    test!(spinners_are_preempted_and_killed),
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

fn free_frames() -> u64 {
    mem::frames().free_frames()
}
