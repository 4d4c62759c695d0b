//! The memory figures (reported, not timed): machvm's memory per frame, per map
//! entry and per resident page, and the frames reading never-written memory
//! takes, as `key=value` lines for `cargo xtask bench`.
//!
//! Heap bytes are counted by a wrapper around the system allocator while
//! 100,000 entries (or resident pages) are made, so B-tree node overhead is
//! included, not just `size_of`. Per frame of RAM, the heap a hosted system
//! takes besides the RAM itself is measured the same way: the frame
//! allocator's part (`VmPage`s) and the x86_64 pmap's (a reverse-map head per
//! frame, which `size_of::<VmPage>()` leaves out).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use machvm::{PAGE_SIZE, SMALL_COPY_BYTES, VmSystem};
use machvm_benches::{distinct_entries, ram_for, touch};

/// The system allocator, counting live heap bytes.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        // (Forwarded so the simulated RAM stays lazily zeroed by the host.)
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: `ptr` came from `System` with `layout` (every allocation
        // goes through `alloc`/`realloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: u64 = 100_000;

fn main() {
    println!("small_copy_bytes={SMALL_COPY_BYTES}");
    println!(
        "vm_page_bytes={}",
        std::mem::size_of::<machvm_frame::VmPage>()
    );
    println!("entry_struct_bytes={}", machvm_map::ENTRY_BYTES);
    per_frame();

    let vm = VmSystem::hosted(ram_for(N * PAGE_SIZE));
    let map = vm.create_map().expect("map");

    // Untouched entries: the entry and its share of the tree.
    let before = LIVE.load(Relaxed);
    distinct_entries(&map, N, 1).expect("allocate");
    assert_eq!(map.entry_count() as u64, N, "entries must not merge");
    let per_entry = (LIVE.load(Relaxed) - before) as f64 / N as f64;
    println!("entry_heap_bytes={per_entry:.1}");

    // First touch of each of those entries: its object (and first page).
    let first = map.region(0).expect("region").start;
    let before = LIVE.load(Relaxed);
    touch(&map, first, N * PAGE_SIZE).expect("touch");
    let per_object = (LIVE.load(Relaxed) - before) as f64 / N as f64;
    println!("touched_entry_heap_bytes={per_object:.1}");
    drop(map);

    untouched_read();

    // Resident pages of one big entry: the object's page index.
    let map = vm.create_map().expect("map");
    let a = map.allocate(0, N * PAGE_SIZE, true).expect("allocate");
    let before = LIVE.load(Relaxed);
    touch(&map, a, N * PAGE_SIZE).expect("touch");
    let per_page = (LIVE.load(Relaxed) - before) as f64 / N as f64;
    println!("resident_page_heap_bytes={per_page:.1}");
}

/// Heap bytes per frame of simulated RAM that `make(bytes)` allocates
/// besides the RAM: the difference between two sizes (4 MiB multiples, so
/// the frame span grows by exactly their difference), fixed parts cancel.
fn heap_per_frame<T>(make: impl Fn(u64) -> T) -> f64 {
    let (small, big): (u64, u64) = (64 << 20, 128 << 20);
    let grown = |bytes| {
        let before = LIVE.load(Relaxed);
        let made = make(bytes);
        let grown = LIVE.load(Relaxed) - before;
        drop(made);
        grown
    };
    let (a, b) = (grown(small), grown(big));
    let ram = (big - small) as i64;
    (b - a - ram) as f64 / ((big - small) / PAGE_SIZE) as f64
}

/// Metadata per frame: the frame allocator's (`VmPage`) and the rest of a
/// hosted system's, the x86_64 pmap's reverse-map head (measured, since its
/// type is private to the pmap crate).
fn per_frame() {
    let frames = heap_per_frame(|b| machvm_frame::FrameAllocator::hosted(b).expect("frames"));
    let system = heap_per_frame(VmSystem::hosted);
    println!("frame_allocator_bytes_per_frame={frames}");
    println!("system_bytes_per_frame={system}");
    println!("pmap_bytes_per_frame={}", system - frames);
}

/// Frames taken by reading 256 MiB never written, one byte per page
/// through `read_bytes`: object frames (the shared zero frame is mapped
/// instead) and, apart, the page-table frames the translations need.
fn untouched_read() {
    let bytes: u64 = 256 << 20;
    let vm = VmSystem::hosted(64 << 20);
    let map = vm.create_map().expect("map");
    let a = map.allocate(0, bytes, true).expect("allocate");
    let before = vm.statistics();
    let mut b = [0u8; 1];
    for i in 0..bytes / PAGE_SIZE {
        map.read_bytes(a + i * PAGE_SIZE, &mut b).expect("read");
    }
    let after = vm.statistics();
    println!(
        "untouched_read_object_frames={}",
        after.active_count - before.active_count
    );
    println!(
        "untouched_read_table_frames={}",
        after.wire_count - before.wire_count
    );
}
