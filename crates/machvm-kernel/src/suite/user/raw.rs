//! Tasks made of a few exact instructions: the trap paths from ring 3.

use super::*;

/// `mov $0, %eax; mov $code, %edi; syscall`: `exit(code)`.
fn exit_with(code: u8) -> [u8; 12] {
    [0xB8, 0, 0, 0, 0, 0xBF, code, 0, 0, 0, 0x0F, 0x05]
}

fn run(code: &[u8]) -> Result<ExitStatus, String> {
    run_raw(code, 0)
}

pub(super) fn raw_task_exits_with_its_code() -> Result<(), String> {
    let frames = free_frames();
    ensure_eq!(run(&exit_with(7))?, ExitStatus::Exited(7), "status");
    ensure_eq!(free_frames(), frames, "free frames after the exit");
    proc::verify()
}

pub(super) fn traps_kill_only_the_task() -> Result<(), String> {
    let cases: [(&[u8], u64, &str); 3] = [
        (&[0x0F, 0x0B], 6, "ud2"),
        (&[0xF4], 13, "hlt"),
        (&[0xCD, 0xF0], 13, "int $0xf0 (a DPL-0 gate)"),
    ];
    for (code, vector, what) in cases {
        let st = run(code)?;
        let want = ExitStatus::Trap {
            vector,
            rip: proc::CODE_BASE,
        };
        ensure_eq!(st, want, "{what}");
    }
    ensure_eq!(
        run(&exit_with(0))?,
        ExitStatus::Exited(0),
        "a task after them"
    );
    proc::verify()
}

pub(super) fn refused_faults_name_address_and_access() -> Result<(), String> {
    // movabs 0xdead0000, %rax
    let load = [0x48, 0xA1, 0, 0, 0xAD, 0xDE, 0, 0, 0, 0];
    let want = ExitStatus::Fault {
        addr: 0xDEAD_0000,
        access: Access::Read,
        error: KernError::InvalidAddress,
    };
    ensure_eq!(run(&load)?, want, "load from an unmapped address");
    // lea 0(%rip), %rbx; mov %al, (%rbx): a store into its own text.
    let store = [0x48, 0x8D, 0x1D, 0, 0, 0, 0, 0x88, 0x03];
    let want = ExitStatus::Fault {
        addr: proc::CODE_BASE + 7,
        access: Access::Write,
        error: KernError::ProtectionFailure,
    };
    ensure_eq!(run(&store)?, want, "store into text");
    proc::verify()
}

/// 60 stack pages touched from ring 3, each a zero-fill fault machvm
/// resolves; then `exit(0)`.
pub(super) fn user_faults_resolved_by_machvm() -> Result<(), String> {
    let code = [
        0x48, 0x89, 0xE3, // mov %rsp, %rbx
        0xB9, 60, 0, 0, 0, // mov $60, %ecx
        0x48, 0x81, 0xEB, 0, 0x10, 0, 0, // 1: sub $4096, %rbx
        0x88, 0x0B, // mov %cl, (%rbx)
        0xFF, 0xC9, // dec %ecx
        0x75, 0xF3, // jnz 1b
        0x31, 0xC0, 0x31, 0xFF, 0x0F, 0x05, // exit(0)
    ];
    let before = vm::vm().system.statistics().zero_fill_count;
    let hook = vm::fault_counts_all().resolved;
    ensure_eq!(run(&code)?, ExitStatus::Exited(0), "status");
    let zf = vm::vm().system.statistics().zero_fill_count - before;
    ensure!(zf >= 60, "zero fills {zf}, want at least 60");
    let resolved = vm::fault_counts_all().resolved - hook;
    ensure!(
        resolved >= 60,
        "faults resolved {resolved}, want at least 60"
    );
    proc::verify()
}

/// Tasks that never make a system call (`jmp .`), more than there are
/// CPUs: only the timer takes them off; the kernel kills them all.
pub(super) fn spinners_are_preempted_and_killed() -> Result<(), String> {
    let n = smp::cpu_count() + 1;
    let before = proc::stats().preemptions;
    let mut pids = alloc::vec::Vec::new();
    for _ in 0..n {
        pids.push(ctx(proc::spawn_code(&[0xEB, 0xFE], 0), "spawn")?);
    }
    let switched = || {
        pids.iter()
            .all(|&p| proc::stats_of(p).is_some_and(|s| s.switches >= 2))
    };
    proc::run_until(switched);
    ensure!(proc::stats().preemptions > before, "no preemption");
    ensure_eq!(proc::kill_all_and_reap(), n, "tasks killed");
    ensure!(proc::pids().is_empty(), "tasks left: {:?}", proc::pids());
    proc::verify()
}

/// A parent blocked in `PORT_RECV` with a dead, unreaped child: the kernel's
/// kill takes both (the child goes with its parent) without tripping on the
/// child it already removed.
pub(super) fn kill_takes_a_blocked_parent_and_its_zombie() -> Result<(), String> {
    let code = [
        0xB8, 3, 0, 0, 0, 0x0F, 0x05, // fork
        0x48, 0x85, 0xD2, // test %rdx, %rdx
        0x75, 0x06, // jnz parent
        0x31, 0xC0, 0x31, 0xFF, 0x0F, 0x05, // child: exit(0)
        0xB8, 30, 0, 0, 0, 0xBF, 1, 0, 0, 0, 0x0F, 0x05, // port_create(1)
        0x48, 0x89, 0xD7, 0x31, 0xF6, 0x31, 0xD2, // rdi = port, no buffer
        0x4C, 0x8D, 0x54, 0x24, 0xC0, // lea -64(%rsp), %r10: the info
        0xB8, 32, 0, 0, 0, 0x0F, 0x05, // port_recv: blocks
        0x0F, 0x0B, // ud2
    ];
    let parent = ctx(proc::spawn_code(&code, 0), "spawn")?;
    let child = || {
        proc::pids()
            .into_iter()
            .find(|&p| proc::parent_of(p) == Some(parent))
    };
    let ready = || {
        matches!(
            proc::state_of(parent),
            Some(proc::State::Blocked(proc::Wait::Recv(_)))
        ) && child().is_some_and(|c| matches!(proc::state_of(c), Some(proc::State::Zombie(_))))
    };
    proc::run_until(ready);
    ensure_eq!(proc::kill_all_and_reap(), 2, "tasks killed");
    ensure!(proc::pids().is_empty(), "tasks left: {:?}", proc::pids());
    proc::verify()
}
