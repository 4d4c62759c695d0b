//! `init`: the first process of machvm-kernel's demo, narrating on the
//! console what machvm does for user processes:
//! 1. a fork tree of 8 processes sharing pages copy-on-write (the copies
//!    counted from `STATS`);
//! 2. producer → filter → consumer over two ports with out-of-line
//!    messages, one of 64 MiB that moves without a page copied;
//! 3. a child writing to its own text, killed (its `WaitStatus` printed);
//! 4. the machine's VM counters.
//!
//! Exits 0 when every chapter went as told, else the chapter's number.
//! On the host this is an empty program, so workspace builds are untouched.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pipeline;

#[cfg(target_os = "none")]
machvm_user::entry!(main);

#[cfg(target_os = "none")]
use machvm_user::abi::{VmStatsAbi, WaitStatus, inherit};
#[cfg(target_os = "none")]
use machvm_user::{KernError, println, sys};
#[cfg(target_os = "none")]
use machvm_user_programs::util::{Check, Mem, PAGE, ck, spawn, wait_for};

/// Runs the chapters; 0, or the number of the first that went wrong.
#[cfg(target_os = "none")]
fn main(_arg: u64) -> u64 {
    println!("init: pid {} on cpu {}", sys::getpid(), sys::getcpu());
    let chapters: [fn() -> Result<(), u64>; 4] = [fork_tree, pipeline::run, crasher, final_stats];
    for (i, chapter) in chapters.iter().enumerate() {
        if let Err(check) = chapter() {
            println!("init: chapter {} failed (check {check})", i + 1);
            return i as u64 + 1;
        }
    }
    println!("init: done");
    0
}

/// The VM counters, or zeros if the call failed.
#[cfg(target_os = "none")]
pub fn stats() -> VmStatsAbi {
    sys::stats().unwrap_or_default()
}

/// Processes in the fork tree.
#[cfg(target_os = "none")]
const TREE: u64 = 8;

/// Chapter 1: 8 processes forked from a page of data; each writes its own
/// word into the copy-on-write page and counts itself in a `Share` page.
#[cfg(target_os = "none")]
fn fork_tree() -> Result<(), u64> {
    println!("[1] fork tree of {TREE} processes over copy-on-write memory");
    let data = Mem::allocate(4 * PAGE).check(1)?;
    data.stamp_pages(|i| 0x1000 + i);
    let count = Mem::allocate(PAGE).check(2)?;
    sys::vm_inherit(count.addr, PAGE, inherit::SHARE).check(3)?;
    let before = stats();
    let reaped = tree(data, count, TREE.trailing_zeros() as u64)?;
    let after = stats();
    ck(reaped == TREE - 1 && count.rd(0) == TREE, 4)?;
    ck(data.pages_are(|i| 0x1000 + i), 5)?;
    println!(
        "    {} processes ran, each writing to a shared page: {} pages copied on write (stacks included)",
        count.rd(0),
        after.cow_faults - before.cow_faults
    );
    Ok(())
}

/// One node of the tree with `levels` below it: forks, writes, reaps;
/// returns the descendants reaped.
#[cfg(target_os = "none")]
fn tree(data: Mem, count: Mem, levels: u64) -> Result<u64, u64> {
    let mut pids = [0u64; 8];
    for (l, slot) in pids.iter_mut().enumerate().take(levels as usize) {
        match sys::fork().check(6)? {
            0 => sys::exit(tree(data, count, l as u64).unwrap_or(100)),
            pid => *slot = pid,
        }
    }
    data.wr(8, sys::getpid()); // this process's private copy of page 0
    count.fetch_add(0, 1);
    let mut reaped = 0;
    for &pid in &pids[..levels as usize] {
        let st = wait_for(pid).check(7)?;
        ck(st.kind == WaitStatus::EXITED && st.code < 100, 8)?;
        reaped += st.code + 1;
    }
    ck(data.rd(8) == sys::getpid(), 9)?;
    Ok(reaped)
}

/// Chapter 3: a child stores to its own text and is killed; nothing else
/// is.
#[cfg(target_os = "none")]
fn crasher() -> Result<(), u64> {
    println!("[3] a process writes to its own code");
    let pid = spawn(|| {
        let p = crasher as *const () as *mut u8;
        // SAFETY: deliberately wrong: the text is `r-x`; the store faults
        // and the kernel kills this process.
        unsafe { p.write_volatile(0xCC) };
        Err(1)
    })
    .check(1)?;
    let st = wait_for(pid).check(2)?;
    print_status(&st);
    ck(st.kind == WaitStatus::FAULT && st.access == 2, 3)
}

/// One line for a reaped child.
#[cfg(target_os = "none")]
fn print_status(st: &WaitStatus) {
    let access = match st.access {
        1 => "read",
        2 => "write",
        _ => "execute",
    };
    let error = KernError::from_code(st.code).map_or("?", KernError::name);
    match st.kind {
        WaitStatus::EXITED => println!("    pid {} exited with {}", st.pid, st.code),
        WaitStatus::FAULT => println!(
            "    pid {} killed: {access} at {:#x} refused ({error})",
            st.pid, st.addr
        ),
        WaitStatus::TRAP => println!(
            "    pid {} killed: exception {} at {:#x}",
            st.pid, st.code, st.addr
        ),
        _ => println!("    pid {} killed", st.pid),
    }
}

/// Chapter 4: the machine's counters.
#[cfg(target_os = "none")]
fn final_stats() -> Result<(), u64> {
    let s = sys::stats().check(1)?;
    println!("[4] machvm's counters");
    println!(
        "    free pages {}, zero-filled {}, faults {}, copy-on-write copies {}, wired {}",
        s.free_count, s.zero_fill_count, s.faults, s.cow_faults, s.wire_count
    );
    Ok(())
}

#[cfg(not(target_os = "none"))]
fn main() {}
