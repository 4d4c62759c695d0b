//! Shared pieces of machvm's benchmark suite: the run profile
//! (`--quick` or full), the sizes each benchmark sweeps, and helpers that
//! build maps in a known state.
//!
//! The suite itself is `benches/vm.rs` (criterion); the untimed figures
//! (the memory figures) come from the `machvm-footprint` binary and Linux's from
//! `linux-probe`. `cargo xtask bench` runs all three and writes the summary.

pub mod ids;

use machvm::{Access, KernError, PAGE_SIZE, VmMap, VmProt};

/// Environment variable that selects the quick profile (CI smoke test).
pub const QUICK_ENV: &str = "MACHVM_BENCH_QUICK";

/// How long and how widely to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Short warm-up and measurement, fewer sizes: a smoke test.
    pub quick: bool,
}

impl Profile {
    /// The profile the environment asks for ([`QUICK_ENV`] set and not `0`).
    pub fn from_env() -> Profile {
        let quick = std::env::var(QUICK_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        Profile { quick }
    }

    /// Sizes of the copy group for the untouched virtual copy (cheap at any
    /// size, so 1 GiB even in the quick profile: it is the target's figure).
    pub fn copy_sizes_untouched(self) -> Vec<u64> {
        if self.quick {
            vec![4 << 10, 64 << 10, 1 << 20, 16 << 20, 1 << 30]
        } else {
            powers_of_4(4 << 10, 1 << 30)
        }
    }

    /// Sizes of the copy group for the copies that touch every page (resident
    /// virtual copy, eager copy, memcpy).
    pub fn copy_sizes_resident(self) -> Vec<u64> {
        if self.quick {
            vec![4 << 10, 64 << 10, 1 << 20, 16 << 20]
        } else {
            powers_of_4(4 << 10, 1 << 30)
        }
    }

    /// Pages faulted per round in the fault group.
    pub fn fault_pages(self) -> u64 {
        if self.quick { 256 } else { 1024 }
    }

    /// Entry counts of the lookup group.
    pub fn lookup_entries(self) -> Vec<u64> {
        vec![10, 1_000, 100_000]
    }

    /// (entries, resident pages) of the fork group.
    pub fn fork_grid(self) -> Vec<(u64, u64)> {
        let (ns, ms): (&[u64], &[u64]) = if self.quick {
            (&[1, 1_000], &[0, 4_096])
        } else {
            (&[1, 100, 10_000], &[0, 1_024, 65_536])
        };
        ns.iter()
            .flat_map(|&n| ms.iter().map(move |&m| (n, m)))
            .collect()
    }

    /// Byte counts of the small-copy group (1 byte … 16 pages).
    pub fn small_copy_sizes(self) -> Vec<u64> {
        if self.quick {
            vec![64, 4096, 8192, 12288, 16384, 65536]
        } else {
            vec![
                1, 64, 512, 2048, 4096, 8192, 12288, 16384, 24576, 32768, 49152, 65536,
            ]
        }
    }
}

/// `from, 4·from, 16·from, …` up to and including `to`.
pub fn powers_of_4(from: u64, to: u64) -> Vec<u64> {
    core::iter::successors(Some(from), |&s| s.checked_mul(4))
        .take_while(|&s| s <= to)
        .collect()
}

/// Number of pages `bytes` spans from a page boundary.
pub fn pages_of(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

/// Allocates `n` entries of `pages` pages each, contiguous, and returns the
/// lowest start. Every other entry has its maximum protection lowered to
/// `READ|WRITE` (its protection stays `READ|WRITE`), so that neighbours
/// differ and stay separate entries: machvm merges neighbours that could be
/// one (SPEC §6), and these benchmarks measure per-entry work.
pub fn distinct_entries(map: &VmMap, n: u64, pages: u64) -> Result<u64, KernError> {
    let mut base = u64::MAX;
    for i in 0..n {
        let a = map.allocate(0, pages * PAGE_SIZE, true)?;
        if i % 2 == 1 {
            map.protect(a, pages * PAGE_SIZE, true, VmProt::DEFAULT)?;
        }
        base = base.min(a);
    }
    Ok(base)
}

/// Write-faults every page of `[addr, addr + bytes)`: makes it resident
/// and writable again (after a copy left it copy-on-write). The handler
/// alone, no bytes move.
pub fn touch(map: &VmMap, addr: u64, bytes: u64) -> Result<(), KernError> {
    for i in 0..pages_of(bytes) {
        map.fault(addr + i * PAGE_SIZE, Access::Write)?;
    }
    Ok(())
}

/// A deterministic pseudo-random sequence (64-bit LCG, high bits): the same
/// addresses in every run and for every structure compared.
#[derive(Clone, Debug)]
pub struct Lcg(u64);

impl Lcg {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    /// A value in `[0, bound)` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 32) * bound) >> 32
    }
}

/// Simulated RAM to give a [`machvm::VmSystem`] that must hold `data_bytes`
/// of resident pages: the data, page tables (one 4 KiB table per 2 MiB,
/// doubled for two maps) and slack.
pub fn ram_for(data_bytes: u64) -> u64 {
    data_bytes + data_bytes / 256 + (32 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_the_targets() {
        let full = Profile { quick: false };
        let s = full.copy_sizes_untouched();
        assert_eq!((s[0], *s.last().unwrap()), (4096, 1 << 30));
        let small = full.small_copy_sizes();
        assert_eq!((small[0], *small.last().unwrap()), (1, 16 * 4096));
        assert_eq!(full.fork_grid().len(), 9);
        assert!(
            Profile { quick: true }
                .copy_sizes_untouched()
                .contains(&(1 << 30))
        );
    }

    #[test]
    fn lcg_stays_in_bounds_and_repeats() {
        let (mut a, mut b) = (Lcg::new(7), Lcg::new(7));
        for _ in 0..1000 {
            let x = a.below(10);
            assert!(x < 10);
            assert_eq!(x, b.below(10));
        }
    }

    #[test]
    fn distinct_entries_do_not_merge() {
        let vm = machvm::VmSystem::hosted(1 << 20);
        let map = vm.create_map().unwrap();
        let a = distinct_entries(&map, 5, 2).unwrap();
        assert_eq!(map.entry_count(), 5);
        assert_eq!(map.region(a).unwrap().size, 2 * PAGE_SIZE);
    }

    #[test]
    fn touch_makes_pages_resident() {
        let vm = machvm::VmSystem::hosted(1 << 20);
        let map = vm.create_map().unwrap();
        let a = map.allocate(0, 3 * PAGE_SIZE, true).unwrap();
        touch(&map, a, 3 * PAGE_SIZE).unwrap();
        assert_eq!(map.region(a).unwrap().resident_pages, 3);
    }
}
