//! Platform tests: the MMU, traps, probes, TLB and IPIs, with page tables
//! built by [`crate::paging`]'s helper (no machvm maps yet).

use alloc::string::String;

use crate::suite::Test;
use crate::test;

/// The platform suite.
pub const TESTS: &[Test] = &[test!(cpu_features_enabled)];

fn cpu_features_enabled() -> Result<(), String> {
    crate::ensure!(
        crate::cpu::read_cr0() & crate::cpu::CR0_WP != 0,
        "CR0.WP clear"
    );
    Ok(())
}
