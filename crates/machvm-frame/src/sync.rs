//! The synchronisation primitives of the frame allocator, swapped for
//! loom's under `--cfg loom` so that `tests/loom.rs` can explore every
//! interleaving of concurrent allocations and frees.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64};

pub(crate) use machvm_base::sync::model::{Guard, Mutex as Lock};
