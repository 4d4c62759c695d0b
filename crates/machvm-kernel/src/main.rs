//! machvm's bare-metal test kernel: the binary only links the platform library
//! (`machvm_kernel`), whose PVH entry point and `kernel_main` do everything.
//! On the host it is an empty program so that workspace builds stay untouched.
#![cfg_attr(target_os = "none", no_std, no_main)]

// Linking the library brings in the boot code, panic handler and allocator.
#[cfg(target_os = "none")]
use machvm_kernel as _;

#[cfg(not(target_os = "none"))]
fn main() {}
