//! The user side of machvm-kernel: what a ring-3 program needs to call the
//! kernel.
//!
//! - [`abi`] (every target): system-call numbers, the `repr(C)` structures
//!   and flags, the calling convention and each call's semantics, and the
//!   `utest` program's scenarios ([`abi::scenario`]). The kernel builds
//!   against it, so both sides share one definition.
//! - `sys` (bare metal only): the raw `syscall` stubs and typed wrappers
//!   returning `Result<u64, KernError>`.
//! - `rt` and the macros `entry!`, `print!`, `println!` (bare metal only):
//!   a `no_std` runtime without a heap.
//!
//! A program:
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use machvm_user::println;
//!
//! fn main(arg: u64) -> u64 {
//!     println!("hello, arg {arg}");
//!     0
//! }
//! machvm_user::entry!(main);
//! ```
//! linked non-PIE for `x86_64-unknown-none` (see `machvm-user-programs`'s
//! `user.ld`).
#![no_std]

pub mod abi;
#[cfg(target_os = "none")]
pub mod rt;
#[cfg(target_os = "none")]
pub mod sys;

pub use machvm_base::KernError;

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
