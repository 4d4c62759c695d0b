//! The lock family this kernel gives machvm: spin's locks, whose every
//! turn of a wait first serves this CPU's pending TLB shootdown.
//!
//! machvm sends shootdowns while holding its locks and waits for every
//! CPU to answer. A CPU spinning on one of those locks — with interrupts
//! off, in a fault handler or a cross-CPU call — would never take the IPI,
//! and the two CPUs would wait on each other. With these locks a waiting
//! CPU answers from inside the wait, so the rule is code, not a comment.

use machvm::Locks;

/// What a CPU does on each turn of a wait on a machvm lock: answer a
/// shootdown sent to it, then pause.
pub struct ServeShootdowns;

impl spin::relax::RelaxStrategy for ServeShootdowns {
    #[inline]
    fn relax() {
        crate::smp::serve_flush();
        core::hint::spin_loop();
    }
}

/// The kernel's [`Locks`]: spin's, waiting by [`ServeShootdowns`].
pub struct KernelLocks;

impl Locks for KernelLocks {
    type Mutex = spin::mutex::SpinMutex<(), ServeShootdowns>;
    type RwLock = spin::rwlock::RwLock<(), ServeShootdowns>;

    #[inline]
    fn relax() {
        <ServeShootdowns as spin::relax::RelaxStrategy>::relax();
    }
}

/// The kernel's VM system.
pub type VmSystem = machvm::VmSystem<KernelLocks>;
/// A task map of the kernel's VM system.
pub type VmMap = machvm::VmMap<KernelLocks>;
/// The kernel's frame allocator.
pub type FrameAllocator = machvm_frame::FrameAllocator<KernelLocks>;
/// The kernel's x86_64 pmap module.
pub type X86Pmap = machvm_pmap_x86_64::X86Pmap<KernelLocks>;
