//! Scheduling: spinners that need preemption or every CPU, and a fork
//! tree of 64 processes.

use machvm_user::abi::{WaitStatus, inherit, scenario};
use machvm_user::sys;
use machvm_user_programs::util::{Check, Mem, PAGE, ck, exited, spawn, wait_for};

/// Most children a scenario forks (one u64 slot each in the page).
const MAX_CHILDREN: u64 = 64;
/// Byte offset of the child count in the shared page (after the slots).
const COUNT: u64 = 8 * MAX_CHILDREN;

/// Forks `n` children over a zeroed `Share` page at
/// [`scenario::SHARED_PAGE`] (holding `n` at [`COUNT`]), each running
/// `child(page, i)`; waits for all, checking each status with `ok`.
fn fork_all(
    n: u64,
    child: fn(Mem, u64) -> Result<(), u64>,
    ok: impl Fn(&WaitStatus, u64) -> bool,
) -> Result<(), u64> {
    ck((1..=MAX_CHILDREN).contains(&n), 1)?;
    let page = Mem::allocate_at(scenario::SHARED_PAGE, PAGE).check(2)?;
    sys::vm_inherit(page.addr, PAGE, inherit::SHARE).check(3)?;
    page.wr(COUNT, n);
    let mut pids = [0u64; MAX_CHILDREN as usize];
    for (i, pid) in pids.iter_mut().enumerate().take(n as usize) {
        *pid = spawn(|| child(page, i as u64)).check(4)?;
    }
    for (i, &pid) in pids.iter().enumerate().take(n as usize) {
        let st = wait_for(pid).check(5)?;
        ck(ok(&st, i as u64), 6)?;
    }
    Ok(())
}

/// True if every slot `0..n` of `page` is non-zero.
fn all_marked(page: &Mem, n: u64) -> bool {
    (0..n).all(|i| page.rd(8 * i) != 0)
}

/// [`scenario::SPIN_PREEMPT`]: `n` spinners, none making a system call
/// until all have marked the page.
pub fn spin_preempt(n: u64) -> Result<(), u64> {
    let spinner = |page: Mem, i: u64| {
        page.wr(8 * i, 1);
        let n = page.rd(COUNT);
        while !all_marked(&page, n) {
            core::hint::spin_loop();
        }
        Ok(())
    };
    fork_all(n, spinner, |st, _| exited(st, 0))
}

/// [`scenario::EVERY_CPU`]: children mark `GETCPU()` until CPUs `0..n`
/// are all marked.
pub fn every_cpu(n: u64) -> Result<(), u64> {
    let marker = |page: Mem, _| {
        let n = page.rd(COUNT);
        loop {
            let cpu = sys::getcpu();
            ck(cpu < n, 20)?;
            page.wr(8 * cpu, 1);
            if all_marked(&page, n) {
                return Ok(());
            }
            core::hint::spin_loop();
        }
    };
    fork_all(n, marker, |st, _| exited(st, 0))
}

/// Levels below the root of the fork tree: 2^6 = 64 processes.
const TREE_LEVELS: u64 = 6;

/// [`scenario::FORK_TREE`]: 64 processes, each dirtying a copy-on-write
/// page and counting itself in a `Share` page; exits with the descendants
/// reaped (63), or 200 + the failed check.
pub fn fork_tree() -> u64 {
    match tree_root() {
        Ok(n) => n,
        Err(c) => 200 + c,
    }
}

/// The root of [`fork_tree`]: the descendants it reaped.
fn tree_root() -> Result<u64, u64> {
    let cow = Mem::allocate(PAGE).check(1)?;
    let shared = Mem::allocate(PAGE).check(2)?;
    sys::vm_inherit(shared.addr, PAGE, inherit::SHARE).check(3)?;
    cow.wr(0, 0xC0);
    let n = tree_node(cow, shared, TREE_LEVELS, 0)?;
    ck(shared.rd(0) == 1 << TREE_LEVELS, 4)?;
    ck(cow.rd(0) == 0xC0, 5)?;
    ck(n == scenario::FORK_TREE_EXIT, 6)?;
    Ok(n)
}

/// One node at depth `depth` with `levels` below it: forks one child per
/// level (child `l` gets `l` levels), dirties the pages, reaps its
/// children; the descendants it reaped.
fn tree_node(cow: Mem, shared: Mem, levels: u64, depth: u64) -> Result<u64, u64> {
    let mut pids = [0u64; TREE_LEVELS as usize];
    let mut forked = 0;
    for l in 0..levels {
        match sys::fork().check(7)? {
            0 => {
                let r = tree_node(cow, shared, l, depth + 1);
                sys::exit(r.unwrap_or(1000));
            }
            pid => pids[forked] = pid,
        }
        forked += 1;
    }
    // Copy-on-write: a private value per process (one page copy each).
    cow.wr(8, depth);
    shared.fetch_add(0, 1);
    let mut reaped = 0;
    for &pid in &pids[..forked] {
        let st = wait_for(pid).check(8)?;
        ck(st.kind == WaitStatus::EXITED && st.code < 1000, 9)?;
        reaped += st.code + 1;
    }
    ck(cow.rd(8) == depth && cow.rd(0) == 0xC0, 10)?;
    Ok(reaped)
}
