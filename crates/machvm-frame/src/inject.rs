//! Fault and interleaving injection for tests (feature `test-hooks`): a
//! failing allocation, or another thread's work placed at an exact point
//! inside a call. Without the feature only the checks on the allocation
//! path remain, and nothing can arm them.

#[cfg(any(test, feature = "test-hooks"))]
use alloc::boxed::Box;
use core::sync::atomic::Ordering::Relaxed;

use crate::FrameAllocator;
use machvm_base::sync::Locks;

impl<L: Locks> FrameAllocator<L> {
    /// Fault injection for tests: the `n`-th allocation from now (1 = the
    /// next) fails with `ResourceShortage`; 0 turns injection off.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn fail_nth_allocation(&self, n: u64) {
        *self.fail_hook.lock() = None;
        self.fail_countdown.store(n, Relaxed);
    }

    /// [`fail_nth_allocation`](Self::fail_nth_allocation), and the failing
    /// allocation first runs `hook` (with injection already off, so the
    /// hook's own allocations succeed): a test's way to put another
    /// thread's work at an exact point inside a call.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn fail_nth_allocation_with(&self, n: u64, hook: impl FnOnce() + Send + 'static) {
        *self.fail_hook.lock() = Some(Box::new(hook));
        self.fail_countdown.store(n, Relaxed);
    }

    /// Interleaving injection for tests: the next
    /// [`reserve`](Self::reserve) of at least one frame first runs `hook`,
    /// then reserves as usual. A multi-page call counts its frames under
    /// its locks and reserves them with the object graph unlocked; the hook
    /// is another thread's work placed exactly in that window. (Empty
    /// reservations, made with the graph locked, do not run it.)
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn before_next_reserve(&self, hook: impl FnOnce() + Send + 'static) {
        *self.reserve_hook.lock() = Some(Box::new(hook));
        self.reserve_hooked.store(true, Relaxed);
    }

    /// Runs and clears the hook of [`before_next_reserve`](Self::before_next_reserve).
    pub(crate) fn run_reserve_hook(&self) {
        // A plain load first: the common path takes no read-modify-write.
        if self.reserve_hooked.load(Relaxed) && self.reserve_hooked.swap(false, Relaxed) {
            let hook = self.reserve_hook.lock().take();
            if let Some(hook) = hook {
                hook();
            }
        }
    }
}
