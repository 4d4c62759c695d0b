//! A mutex of a [`Locks`] family that loom can model: the family's lock in
//! a build, loom's under `--cfg loom`, so that the layers' lock protocols
//! (the frame caches, an object's busy pages) are model-checked with the
//! code that runs. `lock_api`'s raw locks need a `const` initialiser, which
//! loom's primitives cannot give, hence the swap here rather than a loom
//! family.

use super::Locks;

/// A mutual-exclusion lock of family `L`, loom's under `--cfg loom`.
pub struct Mutex<L: Locks, T> {
    #[cfg(not(loom))]
    inner: super::Mutex<L, T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
    #[cfg(loom)]
    _family: core::marker::PhantomData<fn() -> L>,
}

/// The guard of a [`Mutex`].
#[cfg(not(loom))]
pub type Guard<'a, L, T> = super::MutexGuard<'a, L, T>;
/// The guard of a [`Mutex`] (loom's; the family is unused).
#[cfg(loom)]
pub struct Guard<'a, L, T>(loom::sync::MutexGuard<'a, T>, core::marker::PhantomData<L>);

#[cfg(loom)]
impl<L, T> core::ops::Deref for Guard<'_, L, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(loom)]
impl<L, T> core::ops::DerefMut for Guard<'_, L, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<L: Locks, T> Mutex<L, T> {
    /// A lock around `value`.
    pub fn new(value: T) -> Mutex<L, T> {
        Mutex {
            #[cfg(not(loom))]
            inner: super::Mutex::<L, T>::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
            #[cfg(loom)]
            _family: core::marker::PhantomData,
        }
    }

    /// The lock, waiting for it.
    #[inline]
    pub fn lock(&self) -> Guard<'_, L, T> {
        #[cfg(not(loom))]
        return self.inner.lock();
        #[cfg(loom)]
        return Guard(
            self.inner.lock().unwrap_or_else(|e| e.into_inner()),
            core::marker::PhantomData,
        );
    }

    /// The lock if it is free now.
    #[inline]
    pub fn try_lock(&self) -> Option<Guard<'_, L, T>> {
        #[cfg(not(loom))]
        return self.inner.try_lock();
        #[cfg(loom)]
        return self
            .inner
            .try_lock()
            .ok()
            .map(|g| Guard(g, core::marker::PhantomData));
    }

    /// The value, through exclusive access: no locking.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        return self.inner.get_mut();
        #[cfg(loom)]
        return self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
    }
}

impl<L: Locks, T: Default> Default for Mutex<L, T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

/// One turn of waiting for another thread (a busy page's filler): the
/// family's [`Locks::relax`], a yield to loom's scheduler under loom.
#[inline]
pub fn wait<L: Locks>() {
    #[cfg(not(loom))]
    L::relax();
    #[cfg(loom)]
    loom::thread::yield_now();
}
