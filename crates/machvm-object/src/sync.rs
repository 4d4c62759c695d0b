//! The page map's lock and its wait, swapped for loom's under `--cfg loom`
//! so that the busy/wait protocol (`pagemap.rs`) can be model-checked.

/// A mutual-exclusion lock: `spin`'s in a kernel, loom's under test.
#[derive(Default)]
pub(crate) struct Mutex<T> {
    #[cfg(not(loom))]
    inner: machvm_base::sync::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

#[cfg(not(loom))]
pub(crate) type Guard<'a, T> = machvm_base::sync::MutexGuard<'a, T>;
#[cfg(loom)]
pub(crate) type Guard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Mutex<T> {
        Mutex {
            #[cfg(not(loom))]
            inner: machvm_base::sync::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.lock();
        #[cfg(loom)]
        return self.inner.lock().unwrap_or_else(|e| e.into_inner());
    }

    /// The value, through exclusive access: no locking.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        return self.inner.get_mut();
        #[cfg(loom)]
        return self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
    }
}

/// One step of waiting for another thread (a busy page's filler).
#[inline]
pub(crate) fn wait() {
    #[cfg(not(loom))]
    machvm_base::sync::relax();
    #[cfg(loom)]
    loom::thread::yield_now();
}
