//! Reaching the bytes of physical frames.
//!
//! [`PhysMem`] turns a physical address into memory access. On the host it
//! owns a page-aligned arena that stands in for RAM; on bare metal it wraps the
//! kernel's direct map. Either way a physical address `pa` lives at
//! `ptr + (pa - base)`.
//!
//! Invariants:
//! - Every access is bounds-checked against `[base, base + len)` — a byte
//!   access against the whole 8-byte words around it; an access outside is
//!   a caller bug and panics (never touches foreign memory).
//! - Every word access is alignment-checked on the host pointer it makes,
//!   in every build: a misaligned `AtomicU64` would be undefined behaviour,
//!   so a misaligned word address (or a direct map whose virtual start is
//!   not aligned like its physical base) panics instead.
//! - Bytes are moved with relaxed 8-byte atomic operations only, never plain
//!   ones and never atomics of another size (racing atomics of different
//!   sizes on the same bytes is undefined behaviour in Rust):
//!   two CPUs (or two host threads) may legitimately race on a shared page,
//!   exactly as on real RAM, and the MMU updates accessed/dirty bits in page
//!   tables concurrently. A race tears values; it is never undefined
//!   behaviour.
//!
//! This module and the x86_64 pmap backend are the only places in machvm that
//! hold `unsafe` for raw memory.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::{KernError, PAGE_SIZE, PhysAddr};

/// Physical address at which the host arena's first byte lives. Not zero, so
/// that a zero physical address is never a valid frame.
pub const HOSTED_PHYS_BASE: u64 = 0x10_0000;

/// Access to physical memory: a simulated arena on the host, or the direct map
/// on bare metal.
pub struct PhysMem {
    base: u64,
    len: u64,
    ptr: NonNull<u8>,
    /// Host arena to free on drop; `None` for a direct map.
    owned: Option<core::alloc::Layout>,
}

// SAFETY: PhysMem hands out no references into the memory it covers; every
// access goes through the atomic accessors below, so sharing it between
// threads cannot cause a data race in the Rust sense.
unsafe impl Send for PhysMem {}
// SAFETY: as for Send.
unsafe impl Sync for PhysMem {}

impl PhysMem {
    /// A zeroed, page-aligned host arena of `bytes` (rounded up to a page),
    /// reachable at physical addresses from [`HOSTED_PHYS_BASE`].
    ///
    /// Fails with `ResourceShortage` when the host cannot provide it and
    /// `InvalidArgument` for a zero size.
    ///
    /// ```
    /// use machvm_frame::PhysMem;
    /// use machvm_base::PhysAddr;
    /// let mem = PhysMem::hosted(4 * 4096).unwrap();
    /// let pa = PhysAddr::new(machvm_frame::HOSTED_PHYS_BASE + 4096);
    /// mem.write(pa, b"mach");
    /// let mut buf = [0u8; 4];
    /// mem.read(pa, &mut buf);
    /// assert_eq!(&buf, b"mach");
    /// ```
    pub fn hosted(bytes: u64) -> Result<PhysMem, KernError> {
        let len = machvm_base::round_page(bytes).ok_or(KernError::InvalidArgument)?;
        if len == 0 {
            return Err(KernError::InvalidArgument);
        }
        let size = usize::try_from(len).map_err(|_| KernError::ResourceShortage)?;
        let layout = core::alloc::Layout::from_size_align(size, PAGE_SIZE as usize)
            .map_err(|_| KernError::ResourceShortage)?;
        // SAFETY: the layout has non-zero size (checked above).
        let raw = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(KernError::ResourceShortage)?;
        Ok(PhysMem {
            base: HOSTED_PHYS_BASE,
            len,
            ptr,
            owned: Some(layout),
        })
    }

    /// Physical memory `[base, base + len)` reachable through a direct map
    /// starting at `virt`.
    ///
    /// # Safety
    /// `virt .. virt + len` must be mapped readable and writable for as long
    /// as the returned value lives, must map exactly the physical range
    /// `base .. base + len`, and must not be used by anything else except
    /// through this `PhysMem` (or atomically, as the MMU does). Its safe
    /// methods take any covered address, so cover only memory that nothing
    /// else touches: the RAM given to machvm, not the kernel's image, stack
    /// or heap.
    ///
    /// Alignment is not part of the contract: word and page accesses check
    /// the host address they make, so a `virt` not aligned like `base`
    /// makes them panic, never misbehave.
    pub unsafe fn direct_map(virt: NonNull<u8>, base: PhysAddr, len: u64) -> PhysMem {
        PhysMem {
            base: base.as_u64(),
            len,
            ptr: virt,
            owned: None,
        }
    }

    /// Lowest physical address covered.
    pub fn base(&self) -> PhysAddr {
        PhysAddr::new(self.base)
    }

    /// Number of bytes covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if no byte is covered (never, for a constructed `PhysMem`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `[pa, pa + len)` is covered.
    pub fn contains(&self, pa: PhysAddr, len: u64) -> bool {
        pa.as_u64() >= self.base
            && pa
                .as_u64()
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.len)
    }

    /// Host pointer for `[pa, pa + len)`; panics when not covered.
    #[inline]
    fn at(&self, pa: PhysAddr, len: u64) -> *mut u8 {
        assert!(
            self.contains(pa, len),
            "physical access {:#x}+{:#x} outside [{:#x}, {:#x})",
            pa.as_u64(),
            len,
            self.base,
            self.base + self.len
        );
        // SAFETY: in bounds of the covered region, checked just above.
        unsafe { self.ptr.as_ptr().add((pa.as_u64() - self.base) as usize) }
    }

    /// Host pointer to the 64-bit word at `pa`; panics when it is not
    /// covered or not 8-aligned.
    #[inline]
    fn word(&self, pa: PhysAddr) -> *mut u64 {
        let p = self.at(pa, 8);
        assert!(
            (p as usize).is_multiple_of(8),
            "misaligned physical word access at {:#x}",
            pa.as_u64()
        );
        p.cast()
    }

    /// Host pointer to the page at `pa`, as words; panics when it is not
    /// covered or `pa` is not page-aligned (or its host address not
    /// 8-aligned).
    #[inline]
    fn page_words(&self, pa: PhysAddr) -> *mut u64 {
        assert!(
            pa.is_page_aligned(),
            "misaligned physical page at {:#x}",
            pa.as_u64()
        );
        let p = self.at(pa, PAGE_SIZE);
        assert!(
            (p as usize).is_multiple_of(8),
            "misaligned physical page at {:#x}",
            pa.as_u64()
        );
        p.cast()
    }

    /// Atomically loads the 64-bit word at `pa` (8-aligned, or this
    /// panics).
    #[inline]
    pub fn load_u64(&self, pa: PhysAddr) -> u64 {
        let p = self.word(pa);
        // SAFETY: `p` is in bounds and 8-aligned (checked by `word`), and
        // all accesses to this memory are atomic (module invariant).
        unsafe { AtomicU64::from_ptr(p) }.load(Relaxed)
    }

    /// Atomically stores the aligned 64-bit word at `pa`.
    #[inline]
    pub fn store_u64(&self, pa: PhysAddr, v: u64) {
        let p = self.word(pa);
        // SAFETY: as in `load_u64`.
        unsafe { AtomicU64::from_ptr(p) }.store(v, Relaxed)
    }

    /// Atomically clears `mask` in the word at `pa`, returning the old value
    /// (how a pmap clears accessed/dirty bits the MMU may be setting).
    #[inline]
    pub fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> u64 {
        let p = self.word(pa);
        // SAFETY: as in `load_u64`.
        unsafe { AtomicU64::from_ptr(p) }.fetch_and(mask, Relaxed)
    }

    /// Atomically replaces the word at `pa` by `v`, returning the old value
    /// (how a pmap clears an entry without losing a dirty bit the MMU sets
    /// at the same moment).
    #[inline]
    pub fn swap_u64(&self, pa: PhysAddr, v: u64) -> u64 {
        let p = self.word(pa);
        // SAFETY: as in `load_u64`.
        unsafe { AtomicU64::from_ptr(p) }.swap(v, Relaxed)
    }

    /// Atomically sets `bits` in the word at `pa`, returning the old value
    /// (how the software walker sets accessed/dirty bits, like the MMU).
    #[inline]
    pub fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> u64 {
        let p = self.word(pa);
        // SAFETY: as in `load_u64`.
        unsafe { AtomicU64::from_ptr(p) }.fetch_or(bits, Relaxed)
    }

    /// Host pointer to the 8-byte words covering `[pa, pa + len)` (`len >
    /// 0`), and their count; panics when they are not covered or the host
    /// address is not 8-aligned.
    #[inline]
    fn words(&self, pa: PhysAddr, len: usize) -> (*mut u64, usize) {
        let first = pa.as_u64() & !7;
        let end = pa
            .as_u64()
            .checked_add(len as u64)
            .and_then(|e| e.checked_add(7))
            .map(|e| e & !7);
        let Some(end) = end else {
            panic!("physical access {:#x}+{:#x} overflows", pa.as_u64(), len);
        };
        let p = self.at(PhysAddr::new(first), end - first);
        assert!(
            (p as usize).is_multiple_of(8),
            "misaligned physical word access at {first:#x}"
        );
        (p.cast(), ((end - first) / 8) as usize)
    }

    /// Copies `buf.len()` bytes starting at `pa` into `buf`. Only 8-byte
    /// atomic loads touch the memory, whatever the alignment, so no access
    /// here races one of another size (which Rust leaves undefined).
    pub fn read(&self, pa: PhysAddr, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let (p, n) = self.words(pa, buf.len());
        let word = |k: usize| {
            debug_assert!(k < n);
            // SAFETY: word `k < n` (every call below) of the covered,
            // 8-aligned span `words` checked; all accesses to this memory
            // are atomic.
            unsafe { AtomicU64::from_ptr(p.add(k)) }.load(Relaxed)
        };
        let head = (pa.as_u64() & 7) as usize;
        let (mut done, mut k) = (0, 0);
        if head != 0 {
            let take = (8 - head).min(buf.len());
            buf[..take].copy_from_slice(&word(0).to_ne_bytes()[head..head + take]);
            (done, k) = (take, 1);
        }
        let whole = (buf.len() - done) / 8;
        let (mid, tail) = buf[done..].split_at_mut(whole * 8);
        for (i, chunk) in mid.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&word(k + i).to_ne_bytes());
        }
        if !tail.is_empty() {
            // The tail's word is the last one: `n` counts it.
            debug_assert_eq!(k + whole + 1, n);
            let rest = tail.len();
            tail.copy_from_slice(&word(k + whole).to_ne_bytes()[..rest]);
        }
    }

    /// Copies `data` to physical memory starting at `pa`. Only 8-byte
    /// atomic operations touch the memory: whole words are stored, the
    /// partial words at the edges are merged in by compare-and-swap (a
    /// concurrent writer of the other bytes keeps its bytes).
    pub fn write(&self, pa: PhysAddr, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let (p, n) = self.words(pa, data.len());
        let word = |k: usize| {
            debug_assert!(k < n);
            // SAFETY: as in `read`.
            unsafe { AtomicU64::from_ptr(p.add(k)) }
        };
        let head = (pa.as_u64() & 7) as usize;
        let (mut done, mut k) = (0, 0);
        if head != 0 {
            let put = (8 - head).min(data.len());
            merge_bytes(word(0), head, &data[..put]);
            (done, k) = (put, 1);
        }
        let whole = (data.len() - done) / 8;
        let (mid, tail) = data[done..].split_at(whole * 8);
        for (i, chunk) in mid.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            word(k + i).store(u64::from_ne_bytes(w), Relaxed);
        }
        if !tail.is_empty() {
            debug_assert_eq!(k + whole + 1, n);
            merge_bytes(word(k + whole), 0, tail);
        }
    }

    /// Fills the page at `pa` with zeros.
    pub fn zero_page(&self, pa: PhysAddr) {
        let p = self.page_words(pa);
        for i in 0..(PAGE_SIZE as usize / 8) {
            // SAFETY: in bounds and aligned.
            unsafe { AtomicU64::from_ptr(p.add(i)) }.store(0, Relaxed);
        }
    }

    /// Copies the page at `src` to the page at `dst`.
    pub fn copy_page(&self, dst: PhysAddr, src: PhysAddr) {
        let d = self.page_words(dst);
        let s = self.page_words(src);
        // SAFETY: both pages are covered and 8-aligned (`page_words`).
        unsafe { copy_words(d, s, PAGE_SIZE as usize / 8) };
    }

    /// Copies `len` bytes from `src` to `dst`, memory to memory with no
    /// buffer in between when both lie at the same offset in their 8-byte
    /// words (the partial words at the edges merged in as by
    /// [`write`](Self::write)); otherwise through a small stack buffer.
    /// Overlapping ranges copy as if word by word from the lowest.
    ///
    /// ```
    /// use machvm_frame::{HOSTED_PHYS_BASE, PhysMem};
    /// use machvm_base::PhysAddr;
    /// let mem = PhysMem::hosted(2 * 4096).unwrap();
    /// let (a, b) = (PhysAddr::new(HOSTED_PHYS_BASE), PhysAddr::new(HOSTED_PHYS_BASE + 4096));
    /// mem.write(a + 3, b"copied");
    /// mem.copy(b + 11, a + 3, 6);
    /// let mut buf = [0u8; 6];
    /// mem.read(b + 11, &mut buf);
    /// assert_eq!(&buf, b"copied");
    /// ```
    pub fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        let head = (8 - (src.as_u64() & 7) as usize) & 7;
        if (dst.as_u64() ^ src.as_u64()) & 7 != 0 || len < head + 8 {
            return self.copy_buffered(dst, src, len);
        }
        self.copy_buffered(dst, src, head);
        let words = (len - head) / 8;
        let (d, _) = self.words(dst + head as u64, words * 8);
        let (s, _) = self.words(src + head as u64, words * 8);
        // SAFETY: `words` checked both spans covered and 8-aligned.
        unsafe { copy_words(d, s, words) };
        let done = (head + words * 8) as u64;
        self.copy_buffered(dst + done, src + done, len - done as usize);
    }

    /// [`copy`](Self::copy) through a 256-byte stack buffer.
    fn copy_buffered(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        let mut buf = [0u8; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            self.read(src + done as u64, &mut buf[..n]);
            self.write(dst + done as u64, &buf[..n]);
            done += n;
        }
    }
}

/// Copies `n` words from `s` to `d` with relaxed atomic loads and stores,
/// four at a time (the loop the compiler keeps in registers).
///
/// # Safety
/// `s..s+n` and `d..d+n` are covered by a `PhysMem` and 8-aligned.
#[inline]
unsafe fn copy_words(d: *mut u64, s: *mut u64, n: usize) {
    // SAFETY: word `i < n` of two spans the caller vouches for.
    let word = |p: *mut u64, i: usize| unsafe { AtomicU64::from_ptr(p.add(i)) };
    let mut i = 0;
    while i + 4 <= n {
        let w = [
            word(s, i).load(Relaxed),
            word(s, i + 1).load(Relaxed),
            word(s, i + 2).load(Relaxed),
            word(s, i + 3).load(Relaxed),
        ];
        for (k, w) in w.into_iter().enumerate() {
            word(d, i + k).store(w, Relaxed);
        }
        i += 4;
    }
    while i < n {
        word(d, i).store(word(s, i).load(Relaxed), Relaxed);
        i += 1;
    }
}

impl Drop for PhysMem {
    fn drop(&mut self) {
        if let Some(layout) = self.owned {
            // SAFETY: allocated in `hosted` with exactly this layout.
            unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl core::fmt::Debug for PhysMem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PhysMem([{:#x}, {:#x}){})",
            self.base,
            self.base + self.len,
            if self.owned.is_some() { ", hosted" } else { "" }
        )
    }
}

/// Writes `bytes` at byte `from` of the word `w`, keeping its other bytes
/// even against a concurrent writer of them.
#[inline]
fn merge_bytes(w: &AtomicU64, from: usize, bytes: &[u8]) {
    let mut old = w.load(Relaxed);
    loop {
        let mut b = old.to_ne_bytes();
        b[from..from + bytes.len()].copy_from_slice(bytes);
        match w.compare_exchange_weak(old, u64::from_ne_bytes(b), Relaxed, Relaxed) {
            Ok(_) => return,
            Err(now) => old = now,
        }
    }
}
