//! The native reference for `cargo xtask bench --vs-linux`: the host
//! kernel doing the work machvm's benchmarks time, measured in the same
//! run, printed as `key=value` lines.
//!
//! - zero-fill fault: first write to each page of a fresh anonymous mapping;
//! - copy-on-write fault: after `fork`, the child's first write to each
//!   resident page (timed in the child, sent back through a pipe);
//! - `mprotect(PROT_READ)` of a resident, writable range, at each size of
//!   the copy group's resident copies: write-protecting resident pages is
//!   the work a copy-on-write copy (and machvm's `fork`) does to its source;
//!   per page, t(R pages) minus t(one page), over R − 1;
//! - `fork`'s cost per resident page: `fork` with R resident pages minus
//!   `fork` with one, over R (the parent's view: until `fork` returns).
//!   Linux's `fork` also copies each page table entry and counts the page's
//!   mappings, which machvm's `fork` does not do: a secondary reference;
//! - `memcpy` bandwidth between two resident buffers.
//!
//! Every figure includes the hardware trap (fault) or the system call, with
//! the kernel entry and exit. Transparent huge pages are turned off for the
//! probe's mappings (`MADV_NOHUGEPAGE`) so that each 4 KiB page faults and
//! is protected on its own. Each figure is the median of several
//! repetitions.

#[cfg(target_os = "linux")]
fn main() {
    linux::run(machvm_benches::Profile::from_env());
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("linux-probe: not a Linux host");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::time::Instant;

    const PAGE: usize = 4096;

    /// An anonymous private mapping of `pages` pages, THP off.
    struct Region {
        ptr: *mut u8,
        len: usize,
    }

    impl Region {
        fn new(pages: usize) -> Region {
            let len = pages * PAGE;
            // SAFETY: a fresh anonymous mapping; no existing memory is
            // affected. The result is checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert!(ptr != libc::MAP_FAILED, "mmap failed");
            // SAFETY: `ptr..ptr+len` is the mapping just made. Failure only
            // leaves huge pages possible, which the figure would show.
            unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
            Region {
                ptr: ptr.cast(),
                len,
            }
        }

        fn pages(&self) -> usize {
            self.len / PAGE
        }

        /// Writes one byte in every page (faulting each on first use).
        fn touch(&self, v: u8) {
            for i in 0..self.pages() {
                // SAFETY: in bounds of the mapping, which is writable.
                unsafe { self.ptr.add(i * PAGE).write_volatile(v) };
            }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// Nanoseconds per page of the first write to fresh memory.
    fn zero_fill(pages: usize) -> f64 {
        let r = Region::new(pages);
        let s = Instant::now();
        r.touch(1);
        s.elapsed().as_nanos() as f64 / pages as f64
    }

    /// Nanoseconds per page of the child's first write after `fork`.
    fn cow_fault(pages: usize) -> f64 {
        let r = Region::new(pages);
        r.touch(1);
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        // SAFETY: the probe is single-threaded, so the child may run
        // ordinary code until it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let s = Instant::now();
            r.touch(2);
            let ns = (s.elapsed().as_nanos() as f64 / pages as f64).to_ne_bytes();
            // SAFETY: writes the 8 bytes of `ns` to the pipe, then leaves
            // without running the parent's destructors.
            unsafe {
                libc::write(fds[1], ns.as_ptr().cast(), ns.len());
                libc::_exit(0);
            }
        }
        let mut ns = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `ns`; the descriptors are ours.
        let got = unsafe { libc::read(fds[0], ns.as_mut_ptr().cast(), ns.len()) };
        reap(pid);
        // SAFETY: closing the two descriptors made above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_eq!(got, 8, "child sent no figure");
        f64::from_ne_bytes(ns)
    }

    fn reap(pid: libc::pid_t) {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }

    /// Nanoseconds `fork` takes in the parent with `pages` resident pages
    /// mapped (besides the probe's own few).
    fn fork_ns(pages: usize) -> f64 {
        let r = Region::new(pages);
        r.touch(1);
        let s = Instant::now();
        // SAFETY: single-threaded; the child exits at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: leaves the child immediately.
            unsafe { libc::_exit(0) };
        }
        let ns = s.elapsed().as_nanos() as f64;
        assert!(pid > 0, "fork failed");
        reap(pid);
        ns
    }

    /// Nanoseconds `mprotect(PROT_READ)` takes over `pages` resident,
    /// writable pages (the call, with its entry and exit).
    fn mprotect_ns(pages: usize) -> f64 {
        let r = Region::new(pages);
        r.touch(1);
        let s = Instant::now();
        // SAFETY: the range is exactly the mapping `r` owns; nothing reads
        // or writes it afterwards (it is unmapped on drop).
        let rc = unsafe { libc::mprotect(r.ptr.cast(), r.len, libc::PROT_READ) };
        let ns = s.elapsed().as_nanos() as f64;
        assert_eq!(rc, 0, "mprotect failed");
        ns
    }

    /// Median `mprotect(PROT_READ)` time at each resident copy size of the
    /// profile, printed as `linux_mprotect_ns_<bytes>`; the time per page
    /// from the smallest and largest (the call's fixed cost taken out).
    fn mprotect_sizes(profile: machvm_benches::Profile, reps: usize) -> Option<f64> {
        let sizes = profile.copy_sizes_resident();
        let mut times = Vec::new();
        for &bytes in &sizes {
            let pages = (bytes as usize).div_ceil(PAGE);
            // A few repetitions suffice where each touches ≥ 64 MiB.
            let n = if bytes >= 64 << 20 { reps.min(5) } else { reps };
            let t = median((0..n).map(|_| mprotect_ns(pages)).collect());
            println!("linux_mprotect_ns_{bytes}={t:.1}");
            times.push((pages, t));
        }
        let (&(p0, t0), &(p1, t1)) = (times.first()?, times.last()?);
        (p1 > p0).then(|| ((t1 - t0) / (p1 - p0) as f64).max(0.0))
    }

    /// Bytes per nanosecond (GB/s) of `memcpy` between resident buffers.
    fn memcpy_gbps(bytes: usize, reps: usize) -> f64 {
        let from = vec![0x5au8; bytes];
        let mut to = vec![0u8; bytes];
        median(
            (0..reps)
                .map(|_| {
                    let s = Instant::now();
                    to.copy_from_slice(std::hint::black_box(&from));
                    std::hint::black_box(&mut to);
                    bytes as f64 / s.elapsed().as_nanos() as f64
                })
                .collect(),
        )
    }

    /// `vm_area_struct`'s object size from `/proc/slabinfo`, if readable.
    fn vma_bytes() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/slabinfo").ok()?;
        let line = s.lines().find(|l| l.starts_with("vm_area_struct "))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    pub fn run(profile: machvm_benches::Profile) {
        let (pages, reps) = if profile.quick {
            (4096, 5)
        } else {
            (16384, 15)
        };
        // Warm the allocator and page tables once.
        zero_fill(pages);
        let zf = median((0..reps).map(|_| zero_fill(pages)).collect());
        let cow = median((0..reps).map(|_| cow_fault(pages)).collect());
        let small = median((0..reps).map(|_| fork_ns(1)).collect());
        let big = median((0..reps).map(|_| fork_ns(pages)).collect());
        let per_page = ((big - small) / (pages - 1) as f64).max(0.0);
        let memcpy_bytes = if profile.quick { 64 << 20 } else { 256 << 20 };
        let bw = memcpy_gbps(memcpy_bytes, reps);
        let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!("linux_release={}", uname.trim());
        println!("linux_pages={pages}");
        println!("linux_zero_fill_ns={zf:.1}");
        println!("linux_cow_fault_ns={cow:.1}");
        println!("linux_fork_base_ns={small:.0}");
        println!("linux_fork_ns={big:.0}");
        println!("linux_fork_per_page_ns={per_page:.1}");
        println!("linux_memcpy_gbps={bw:.2}");
        println!("linux_memcpy_bytes={memcpy_bytes}");
        if let Some(per_page) = mprotect_sizes(profile, reps) {
            println!("linux_mprotect_per_page_ns={per_page:.2}");
        }
        if let Some(v) = vma_bytes() {
            println!("linux_vma_bytes={v}");
        }
    }
}
