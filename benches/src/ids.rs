//! The benchmark ids criterion records and `cargo xtask bench` reads back,
//! in one place for both: a figure is `group/function/parameter` (or
//! `group/function` with no parameter).

/// Copies of growing size.
pub const COPY: &str = "copy";
/// `vm_map_copy` of untouched memory.
pub const VIRTUAL_UNTOUCHED: &str = "virtual_untouched";
/// `vm_map_copy` of resident memory.
pub const VIRTUAL_RESIDENT: &str = "virtual_resident";
/// A byte copy through `read_bytes` / `write_bytes`.
pub const EAGER: &str = "eager";
/// The host's `memcpy`, the physical limit.
pub const MEMCPY: &str = "memcpy";

/// Single faults.
pub const FAULT: &str = "fault";
/// A copy-on-write fault.
pub const COW: &str = "cow";
/// A zero-fill fault.
pub const ZERO_FILL: &str = "zero_fill";

/// The first 1-byte `write_bytes` to each page of fresh memory: the
/// zero-fill fault through the façade.
pub const FACADE_ZERO_FILL: &str = "facade_zero_fill";
/// The first 1-byte `write_bytes` to each page after `fork`: the
/// copy-on-write fault through the façade.
pub const FACADE_COW: &str = "facade_cow";

/// Zero-fill faults from one and two threads.
pub const PARALLEL: &str = "parallel";
/// One thread faults both ranges, one after the other.
pub const ONE_THREAD: &str = "one_thread";
/// Two threads, each on its own map.
pub const TWO_MAPS: &str = "two_threads_two_maps";
/// Two threads on disjoint ranges of one map.
pub const ONE_MAP: &str = "two_threads_one_map";
/// The control: two threads, each on a map of its own system (no lock,
/// cache line or frame in common): what this machine gives two threads
/// doing this work.
pub const TWO_SYSTEMS: &str = "two_threads_two_systems";

/// Entry lookups.
pub const LOOKUP: &str = "lookup";
/// The address patterns of the lookup group.
pub const LOOKUP_PATTERNS: [&str; 2] = ["random", "sequential"];

/// `fork` of maps of many entries and resident pages.
pub const FORK: &str = "fork";

/// Small copies: `vm_read` against a byte copy.
pub const SMALL_COPY: &str = "small_copy";
/// The transfer alone.
pub const TRANSFER: &str = "transfer";
/// The transfer and what copy-on-write defers.
pub const CYCLE: &str = "cycle";

/// Paging (SPEC §8), per page, on a system with swap
/// (`VmSystem::hosted_with_swap`, the default pager over `MemStore`).
pub const PAGING: &str = "paging";
/// The first 1-byte `write_bytes` to a page that `VmMap::page_out` paged
/// out: a page-in fault through the façade.
pub const PAGEIN_FAULT: &str = "pagein_fault";
/// The first 1-byte `write_bytes` to a never-touched page of the same
/// system: a zero-fill fault through the façade.
pub const PAGING_ZERO_FILL: &str = "zero_fill_fault";
/// `VmMap::page_out` of a resident range, per page; the parameter is the
/// range's pages.
pub const PAGEOUT: &str = "pageout";
/// `PhysMem::copy_page` of one frame to another: the page copy.
pub const COPY_PAGE: &str = "copy_page";
/// `Pager::page_in` of the default pager over `MemStore`: one slot read
/// into one frame, the store's part of a page-in.
pub const STORE_READ: &str = "store_read";
/// `Pager::page_out` of the default pager over `MemStore`: one frame
/// written to a new slot, the store's part of a pageout.
pub const STORE_WRITE: &str = "store_write";

/// `group/function/parameter`.
pub fn full(group: &str, function: &str, param: impl core::fmt::Display) -> String {
    format!("{group}/{function}/{param}")
}

/// `group/function`: a figure without parameter.
pub fn plain(group: &str, function: &str) -> String {
    format!("{group}/{function}")
}

/// `group/function/`: what every parameter of a function starts with.
pub fn prefix(group: &str, function: &str) -> String {
    format!("{group}/{function}/")
}

/// The lookup function of machvm's map (`machvm`) or of a plain
/// `BTreeMap`, for `pattern`.
pub fn lookup_fn(machvm: bool, pattern: &str) -> String {
    format!("{}_{pattern}", if machvm { "machvm" } else { "btreemap" })
}

/// The fork group's parameter: `n` entries, `m` resident pages.
pub fn fork_param(n: u64, m: u64) -> String {
    format!("n{n}_m{m}")
}

/// The small-copy function of `scenario` ([`TRANSFER`] or [`CYCLE`]), by
/// `vm_read` or by bytes.
pub fn small_copy_fn(scenario: &str, vm_read: bool) -> String {
    format!("{scenario}_{}", if vm_read { "vm_read" } else { "bytes" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_criterions_paths() {
        assert_eq!(full(COPY, EAGER, 4096), "copy/eager/4096");
        assert_eq!(plain(FAULT, COW), "fault/cow");
        assert_eq!(full(FORK, FORK, fork_param(1, 0)), "fork/fork/n1_m0");
        assert_eq!(lookup_fn(true, LOOKUP_PATTERNS[0]), "machvm_random");
        assert_eq!(small_copy_fn(CYCLE, false), "cycle_bytes");
        assert_eq!(plain(PAGING, PAGEIN_FAULT), "paging/pagein_fault");
        assert!(full(COPY, MEMCPY, 1).starts_with(&prefix(COPY, MEMCPY)));
    }
}
