//! Helpers shared by machvm's user programs (`init`, `utest`): memory the
//! program allocated through VM calls (`util::Mem`), checks that return
//! their number, and port messages of one word.
//!
//! Bare metal only; on the host the crate is empty, like the programs.
#![no_std]

#[cfg(target_os = "none")]
pub mod util;
