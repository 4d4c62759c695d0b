//! The synchronisation primitives of the frame allocator, swapped for
//! loom's under `--cfg loom` so that `tests/loom.rs` can explore every
//! interleaving of concurrent allocations and frees.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64};

/// A mutual-exclusion lock: `spin`'s in a kernel, loom's under test.
pub(crate) struct Lock<T> {
    #[cfg(not(loom))]
    inner: machvm_base::sync::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

#[cfg(not(loom))]
pub(crate) type Guard<'a, T> = machvm_base::sync::MutexGuard<'a, T>;
#[cfg(loom)]
pub(crate) type Guard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Lock<T> {
    pub(crate) fn new(value: T) -> Lock<T> {
        Lock {
            #[cfg(not(loom))]
            inner: machvm_base::sync::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// The lock if it is free now.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<Guard<'_, T>> {
        #[cfg(not(loom))]
        return self.inner.try_lock();
        #[cfg(loom)]
        return self.inner.try_lock().ok();
    }

    #[inline]
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.lock();
        #[cfg(loom)]
        return self.inner.lock().unwrap_or_else(|e| e.into_inner());
    }
}
