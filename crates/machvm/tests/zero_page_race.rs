//! A load and a store of one never-written page by two threads of one map,
//! both on the shared fault path: the load must never leave the zero frame
//! mapped over the page the store put in (found by review: the load
//! decided on the zero frame, the store claimed, filled and mapped the
//! page, then the load's translation replaced the store's). Fails before
//! the fix, which enters the zero frame with the page map locked.
//!
//! The interleaving is forced, not timed: a pmap wrapper runs the store
//! when the load enters the zero frame, and waits until the store either
//! finished (the bug's window) or spins on a machvm lock (the fix: it waits
//! for the load), which this test's lock family counts: its locks are
//! spin's, with a relax step that counts every turn of a wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use machvm::{Access, KernError, Locks, PAGE_SIZE, Violation, VmMap, VmProt, VmSystem};
use machvm_base::VaRange;
use machvm_frame::FrameAllocator;
use machvm_pmap::{
    EnterError, FaultCode, PhysAddr, Pmap, PmapId, PmapRule, TlbFlush, Translation, VirtAddr,
};
use machvm_pmap_x86_64::X86Pmap;

const P: u64 = PAGE_SIZE;

/// Turns of a wait on a lock of [`Counting`] (or on a busy page).
static SPINS: AtomicU64 = AtomicU64::new(0);

/// spin's locks, counting every turn of every wait.
struct Counting;

impl spin::relax::RelaxStrategy for Counting {
    fn relax() {
        SPINS.fetch_add(1, SeqCst);
        std::hint::spin_loop();
    }
}

impl Locks for Counting {
    type Mutex = spin::mutex::SpinMutex<(), Counting>;
    type RwLock = spin::rwlock::RwLock<(), Counting>;
    fn relax() {
        <Counting as spin::relax::RelaxStrategy>::relax();
    }
}

type Hook = Box<dyn FnOnce() + Send>;

/// The x86_64 pmap, with a hook run once at the first `enter` of `when`.
struct HookPmap {
    inner: X86Pmap<Counting>,
    when: Mutex<Option<(PhysAddr, Hook)>>,
}

impl Pmap for HookPmap {
    fn create(&self) -> Result<PmapId, KernError> {
        self.inner.create()
    }
    fn destroy(&self, p: PmapId) {
        self.inner.destroy(p)
    }
    fn enter(
        &self,
        p: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError> {
        let hook = {
            let mut w = self.when.lock().unwrap();
            match &*w {
                Some((at, _)) if *at == pa => w.take().map(|(_, h)| h),
                _ => None,
            }
        };
        if let Some(h) = hook {
            h();
        }
        self.inner.enter(p, va, pa, prot, wired)
    }
    fn enter_large(
        &self,
        p: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError> {
        self.inner.enter_large(p, va, pa, prot, wired)
    }
    fn reserve_tables(&self, p: PmapId, r: VaRange) -> Result<(), KernError> {
        self.inner.reserve_tables(p, r)
    }
    fn release_tables(&self, p: PmapId) {
        self.inner.release_tables(p)
    }
    fn remove(&self, p: PmapId, r: VaRange) -> TlbFlush {
        self.inner.remove(p, r)
    }
    fn protect(&self, p: PmapId, r: VaRange, prot: VmProt) -> TlbFlush {
        self.inner.protect(p, r, prot)
    }
    fn extract(&self, p: PmapId, va: VirtAddr) -> Option<Translation> {
        self.inner.extract(p, va)
    }
    fn translate(
        &self,
        p: PmapId,
        va: VirtAddr,
        a: Access,
        user: bool,
    ) -> Result<PhysAddr, FaultCode> {
        self.inner.translate(p, va, a, user)
    }
    fn page_protect(&self, pa: PhysAddr, prot: VmProt) -> TlbFlush {
        self.inner.page_protect(pa, prot)
    }
    fn is_modified(&self, pa: PhysAddr) -> bool {
        self.inner.is_modified(pa)
    }
    fn clear_modify(&self, pa: PhysAddr) -> TlbFlush {
        self.inner.clear_modify(pa)
    }
    fn is_referenced(&self, pa: PhysAddr) -> bool {
        self.inner.is_referenced(pa)
    }
    fn clear_reference(&self, pa: PhysAddr) -> TlbFlush {
        self.inner.clear_reference(pa)
    }
    fn change_wiring(&self, p: PmapId, va: VirtAddr, wired: bool) {
        self.inner.change_wiring(p, va, wired)
    }
    fn activate(&self, p: PmapId, cpu: usize) {
        self.inner.activate(p, cpu)
    }
    fn deactivate(&self, p: PmapId, cpu: usize) {
        self.inner.deactivate(p, cpu)
    }
    fn flush(&self, f: TlbFlush) {
        self.inner.flush(f)
    }
    fn resident_count(&self, p: PmapId) -> u64 {
        self.inner.resident_count(p)
    }
    fn mappings(&self, p: PmapId, r: VaRange) -> Vec<(VirtAddr, Translation)> {
        self.inner.mappings(p, r)
    }
    fn mapping_count(&self, pa: PhysAddr) -> usize {
        self.inner.mapping_count(pa)
    }
    fn verify(&self) -> Result<(), Violation<PmapRule>> {
        self.inner.verify()
    }
}

/// What the task's own load of `n` bytes at `va` reads, through its page
/// tables (`read_bytes` reads through the objects and would not tell).
fn mmu_load(
    pm: &HookPmap,
    frames: &FrameAllocator<Counting>,
    map: &VmMap<Counting>,
    va: u64,
    n: usize,
) -> Vec<u8> {
    let pa = pm
        .inner
        .translate(map.pmap(), VirtAddr::new(va), Access::Read, true)
        .expect("mapped after the faults");
    let mut b = vec![0u8; n];
    frames.mem().read(pa, &mut b);
    b
}

#[test]
fn a_load_never_maps_the_zero_frame_over_a_concurrent_store() {
    let frames = Arc::new(FrameAllocator::<Counting>::hosted_with_locks(16 << 20).unwrap());
    let pm = Arc::new(HookPmap {
        inner: X86Pmap::new(frames.clone(), Default::default()).unwrap(),
        when: Mutex::new(None),
    });
    let vm = VmSystem::with_pmap(frames.clone(), pm.clone());
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 4 * P, true).unwrap();
    // The entry gets its object (and page tables); page `a` stays untouched.
    map.write_bytes(a + P, b"x").unwrap();
    let zero = frames.zero_frame().expect("a zero frame");
    let store_done = Arc::new(AtomicBool::new(false));
    let store = Arc::new(Mutex::new(None));
    let (m2, done2, store2) = (map.clone(), store_done.clone(), store.clone());
    *pm.when.lock().unwrap() = Some((
        zero,
        Box::new(move || {
            let spins = SPINS.load(SeqCst);
            let t = std::thread::spawn(move || {
                m2.write_bytes(a, b"hello").unwrap();
                done2.store(true, SeqCst);
            });
            // The store runs to its end (the bug's window) or waits on a
            // machvm lock for this load (the fix).
            while !store_done.load(SeqCst) && SPINS.load(SeqCst) == spins {
                std::thread::yield_now();
            }
            *store2.lock().unwrap() = Some(t);
        }),
    ));
    map.fault(a, Access::Read).unwrap();
    let t = store.lock().unwrap().take().expect("the hook ran");
    t.join().unwrap();
    assert_eq!(
        mmu_load(&pm, &frames, &map, a, 5),
        b"hello",
        "the task's load reads the store, not the zero frame"
    );
    map.verify().unwrap();
    vm.verify().unwrap();
}
