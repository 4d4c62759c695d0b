//! machvm on the real MMU: task maps made by machvm, run by loading their
//! pmap's root into CR3 ([`vm::switch_to`]), touched with real loads, stores
//! and calls through the probes. Every page fault goes to machvm's
//! `vm_fault` through the hook; the tests check both what the CPU saw (the
//! fault's address and error code) and what machvm answered.
//!
//! Each test ends with `VmMap::verify` and `VmSystem::verify` after its
//! mutations. The TLB tests first make the CPU cache a translation, then
//! change the map on the other side of machvm, then access again: only the
//! pmap's shootdown can make that access fault, so they fail under
//! `--skip-invlpg`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Debug;

use machvm::{
    KernError, PAGE_SIZE, SMALL_COPY_BYTES, VmInherit, VmProt, VmStatistics, vm_copy, vm_map_copy,
    vm_read, vm_write,
};

use machvm_base::VirtAddr;
use machvm_pmap::Pmap;

use crate::locks::{VmMap, VmSystem};
use crate::paging::{self, pte};
use crate::suite::Test;
use crate::trap::{self, PageFaultInfo, pf};
use crate::vm::{self, Outcome};
use crate::{cpu, ensure, ensure_eq, smp, test};

mod copy;
mod faults;
mod fixtures;
mod fork;
mod stress;
mod swap;
mod tlb;

use copy::*;
use faults::*;
use fixtures::*;
use fork::*;
use stress::*;
use swap::*;
use tlb::*;

/// The machvm suite.
pub const TESTS: &[Test] = &[
    test!(switch_loads_the_maps_root),
    test!(zero_fill_on_demand),
    test!(write_to_readonly_faults),
    test!(protect_none_and_maximum),
    test!(access_after_deallocate_faults),
    test!(partial_deallocate_splits),
    test!(deallocate_across_page_tables),
    test!(nx_without_execute),
    test!(wired_pages_take_no_page_fault),
    test!(vm_map_copy_is_copy_on_write),
    test!(vm_map_copy_src_destroy),
    test!(vm_map_copy_dst_alloc),
    test!(vm_copy_overlapping_is_memmove),
    test!(vm_read_copyout_vm_write),
    test!(copy_into_shared_region_reaches_sharers),
    test!(copy_of_shared_region_is_a_snapshot),
    test!(fork_share_copy_none),
    test!(fork_generations_outlive_parents),
    test!(same_map_on_two_cpus),
    test!(tlb_protect_invalidates_local),
    test!(tlb_deallocate_invalidates_local),
    test!(tlb_clear_modify_rearms_dirty_bit),
    test!(tlb_protect_shootdown_remote),
    test!(tlb_protect_of_wired_pages_remote),
    test!(tlb_deallocate_shootdown_remote),
    test!(tlb_fork_write_protects_remote),
    test!(tlb_cow_fault_shootdown_same_map),
    test!(tlb_copy_write_protects_remote_source),
    test!(tlb_copy_overwrite_reaches_remote_destination),
    test!(tlb_share_copy_up_reaches_remote_sharer),
    test!(smp_stress_shared_map),
    test!(paged_out_page_faults_back_in),
    test!(pageout_shoots_down_a_remote_tlb),
    test!(stores_race_pageouts_on_another_cpu),
    test!(pressure_pages_to_the_ram_disk),
    test!(frames_return_when_maps_go),
];

const PG: u64 = PAGE_SIZE;
