//! Platform tests: the MMU, traps, probes, TLB and IPIs, with page tables
//! built by [`crate::paging`]'s helper (no machvm maps yet). Every access
//! under test is a real load, store or call through the MMU.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::PhysAddr;
use machvm_frame::{FrameState, FrameUse};

use crate::mem::{self, frames};
use crate::paging::{self, pte};
use crate::suite::Test;
use crate::trap::{self, PageFaultInfo, pf};
use crate::{cpu, ensure, ensure_eq, heap, smp, test};

mod boot;
mod faults;
mod fixtures;
mod multi;

use boot::*;
use faults::*;
use fixtures::*;
use multi::*;

/// The platform suite.
pub const TESTS: &[Test] = &[
    test!(cpu_features_enabled),
    test!(kernel_in_higher_half),
    test!(identity_map_dropped),
    test!(direct_map_reaches_frames),
    test!(frame_allocator_excludes_kernel),
    test!(heap_alloc_and_free),
    test!(fault_unmapped_read),
    test!(fault_unmapped_write),
    test!(write_to_writable_page),
    test!(fault_write_to_readonly),
    test!(fault_exec_nx),
    test!(fault_exec_unmapped),
    test!(fault_hook_resolves),
    test!(fault_hook_refusal_recovers),
    test!(tlb_stale_until_invlpg),
    test!(tlb_protect_needs_invalidation),
    test!(ipi_round_trip),
    test!(ipi_many_and_nested),
    test!(tlb_shootdown_remote),
    test!(tlb_shootdown_remote_unmap),
    test!(tlb_shootdown_full_flush),
    test!(address_space_switch),
];
