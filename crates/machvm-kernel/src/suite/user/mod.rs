//! User mode: SMEP and SMAP on every CPU, and the kernel's user-access
//! discipline (only the probes and copy routines set `RFLAGS.AC`).

use alloc::format;
use alloc::string::String;

use machvm::{KernError, PAGE_SIZE, VmProt};

use crate::locks::VmMap;
use crate::suite::Test;
use crate::trap::{self, pf};
use crate::{cpu, ensure, ensure_eq, smp, test, vm};

mod smap;

use smap::*;

/// The user-mode suite, in order.
pub const TESTS: &[Test] = &[
    test!(smep_smap_on_every_cpu),
    test!(smap_faults_unchecked_kernel_access),
    test!(smep_faults_kernel_fetch_from_user_page),
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
