//! [`scenario::FUZZ`](machvm_user::abi::scenario::FUZZ): a ring-3
//! system-call fuzzer. Hostile arguments everywhere; the kernel must
//! neither panic nor hang. Exits 0 after its calls (a refused access may
//! kill it: also fine).

use machvm_user::abi::{MsgDesc, USER_MAX, nr};
use machvm_user::sys;

const SCR: u64 = 0x3000_0000;
const SCR_LEN: u64 = 64 * 4096;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn addr(r: &mut Rng) -> u64 {
    match r.below(16) {
        0 => 0,
        1 => 0xffff_8000_0000_0000,
        2 => 0xffff_ffff_8000_0000 + r.below(0x10_0000),
        3 => USER_MAX - 8 * r.below(4),
        4 => USER_MAX - 4096,
        5 => 0x0000_8000_0000_0000 + r.below(1 << 20),
        6 => u64::MAX - r.below(64),
        7 => super::faults::text_addr(),
        8 => 0xdead_0000,
        9 => 0x7fff_ffff_f000 + r.below(4096),
        _ => SCR + r.below(SCR_LEN + 8192),
    }
}

fn size(r: &mut Rng) -> u64 {
    match r.below(12) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => 1 << 47,
        4 => USER_MAX - SCR,
        5 => (1u64 << 63) + 4096,
        6 => r.next(),
        _ => r.below(SCR_LEN + 8192),
    }
}

fn word(r: &mut Rng, ports: u64) -> u64 {
    match r.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => r.below(8),
        3 => r.below(ports + 4),
        4 => r.next(),
        _ => r.below(4),
    }
}

/// The scenario: `param` is the seed. 3000 calls (500 more in each forked
/// child, two generations at most); exits 0 if it lives through them.
pub fn fuzz(param: u64) -> Result<(), u64> {
    let mut r = Rng(param.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    sys::vm_allocate(SCR, SCR_LEN, false).map_err(|_| 1u64)?;
    let (mut generation, mut ports) = (0, 8u64);
    let (mut iters, mut i) = (3000u64, 0);
    while i < iters {
        i += 1;
        let n = number(&mut r);
        if n == nr::FORK {
            if generation >= 2 || r.below(20) != 0 {
                continue;
            }
            // SAFETY: a fork copies the caller; nothing is unmapped.
            let (a, d) = unsafe { sys::syscall0(nr::FORK) };
            if a == 0 && d == 0 {
                generation += 1;
                iters = i + 500;
            }
            continue;
        }
        let (rax, rdx) = issue(&mut r, n, ports);
        if n == nr::PORT_CREATE && rax == 0 {
            ports = ports.max(rdx);
        }
    }
    Ok(())
}

/// A call number: every real one, and some that are not.
fn number(r: &mut Rng) -> u64 {
    const CALLS: [u64; 24] = [
        nr::CONSOLE_WRITE,
        nr::YIELD,
        nr::FORK,
        nr::WAIT,
        nr::STATS,
        nr::VM_ALLOCATE,
        nr::VM_DEALLOCATE,
        nr::VM_PROTECT,
        nr::VM_INHERIT,
        nr::VM_REGION,
        nr::VM_READ,
        nr::VM_WRITE,
        nr::VM_COPY,
        nr::VM_MAP_COPY,
        nr::VM_WIRE,
        nr::PORT_CREATE,
        nr::PORT_CREATE,
        nr::PORT_SEND,
        nr::PORT_SEND,
        nr::PORT_RECV,
        nr::PORT_DESTROY,
        0, // replaced by a bogus number below
        nr::GETPID,
        nr::GETCPU,
    ];
    match r.below(24) {
        21 => [8, 9, 20, 29, 34, 1000, u64::MAX, 1 << 32][r.below(8) as usize],
        k => CALLS[k as usize],
    }
}

/// Makes call `n` (not `FORK`) with hostile arguments.
fn issue(r: &mut Rng, n: u64, ports: u64) -> (u64, u64) {
    let (a0, a1, a2) = (addr(r), size(r), word(r, ports));
    // SAFETY: every pointer given to the kernel is in the scratch region,
    // in the text (read-only), or outside the user half; ranges unmapped or
    // made inaccessible are the scratch region's.
    unsafe {
        match n {
            // Hostile pointers only: readable bytes would garble the log.
            nr::CONSOLE_WRITE => sys::syscall2(n, a0 | 0xffff_0000_0000_0000, a1.min(64)),
            nr::VM_ALLOCATE..=nr::VM_WIRE => vm_call(r, n, a0, a1, a2),
            nr::PORT_SEND => send(r, a0, a1, a2, ports),
            nr::PORT_RECV => {
                let buf = SCR + r.below(SCR_LEN);
                let info = if r.below(4) == 0 {
                    addr(r)
                } else {
                    SCR + r.below(SCR_LEN)
                };
                sys::syscall4(n, r.below(ports + 2), buf, a1.min(4096), info)
            }
            nr::PORT_CREATE => {
                sys::syscall1(n, [1, 2, 1024, 0, 1025, u64::MAX][r.below(6) as usize])
            }
            nr::PORT_DESTROY => sys::syscall1(n, r.below(ports + 2)),
            nr::WAIT => {
                let st = if r.below(3) == 0 {
                    addr(r)
                } else {
                    SCR + r.below(SCR_LEN)
                };
                sys::syscall2(n, [0, a2, sys::getpid() + 1][r.below(3) as usize], st)
            }
            nr::STATS => {
                let p = if r.below(2) == 0 {
                    addr(r)
                } else {
                    SCR + r.below(SCR_LEN)
                };
                sys::syscall2(n, a0, p)
            }
            _ => sys::syscall6(
                n,
                a0,
                a1,
                a2,
                word(r, ports),
                word(r, ports),
                word(r, ports),
            ),
        }
    }
}

/// A VM call (`VM_ALLOCATE` … `VM_WIRE`) with hostile arguments.
///
/// # Safety
/// Whatever it unmaps or protects is the scratch region, or outside the
/// user half.
unsafe fn vm_call(r: &mut Rng, n: u64, a0: u64, a1: u64, a2: u64) -> (u64, u64) {
    // SAFETY: destructive calls get the scratch region or the kernel half;
    // copies write only into the scratch region or a hostile address.
    unsafe {
        match n {
            nr::VM_ALLOCATE => sys::syscall3(n, a0, a1, r.below(3)),
            nr::VM_DEALLOCATE | nr::VM_PROTECT | nr::VM_INHERIT | nr::VM_WIRE => {
                let (at, len) = if r.below(2) == 0 {
                    (SCR + 4096 * r.below(64), 4096 * r.below(8))
                } else {
                    (0xffff_8000_0000_0000 | r.next(), a1)
                };
                sys::syscall4(n, at, len, r.below(3), r.below(9))
            }
            nr::VM_MAP_COPY => {
                let flags = r.below(5);
                let src = if flags & 2 != 0 {
                    SCR + 4096 * r.below(64)
                } else {
                    a0
                };
                let pid = [0, sys::getpid() + 1, a2, 0][r.below(4) as usize];
                sys::syscall5(n, pid, addr(r), a1, src, flags)
            }
            nr::VM_WRITE | nr::VM_COPY => {
                // The destination: scratch or hostile, never the program.
                let dst = if r.below(2) == 0 {
                    SCR + r.below(SCR_LEN)
                } else {
                    addr(r)
                };
                let inside = (SCR..SCR + SCR_LEN).contains(&dst);
                let dst = if inside {
                    dst
                } else {
                    dst | 0xffff_0000_0000_0000
                };
                if n == nr::VM_WRITE {
                    sys::syscall3(n, dst, a0, a1)
                } else {
                    sys::syscall3(n, a0, a1, dst)
                }
            }
            nr::VM_READ => sys::syscall2(n, a0, a1),
            // VM_REGION: its result into the scratch region or hostile.
            _ => {
                let p = if r.below(2) == 0 {
                    addr(r)
                } else {
                    SCR + r.below(SCR_LEN)
                };
                sys::syscall2(n, a0, p)
            }
        }
    }
}

/// `PORT_SEND` with a hostile descriptor (or a hostile pointer to one).
///
/// # Safety
/// `SRC_DESTROY` ranges are the scratch region's.
unsafe fn send(r: &mut Rng, a0: u64, a1: u64, a2: u64, ports: u64) -> (u64, u64) {
    let mut d = MsgDesc {
        inline_ptr: addr(r),
        inline_len: [0, 8, 256, 257, u64::MAX][r.below(5) as usize],
        ool_addr: a0,
        ool_len: a1,
        flags: [0, 0, 2, 1, u64::MAX][r.below(5) as usize],
    };
    if d.flags == 2 {
        d.ool_addr = SCR + r.below(SCR_LEN);
        d.ool_len = r.below(SCR_LEN);
    }
    let p = if r.below(6) == 0 {
        addr(r)
    } else {
        &d as *const MsgDesc as u64
    };
    // SAFETY: as the caller guarantees.
    unsafe { sys::syscall2(nr::PORT_SEND, a2.max(r.below(ports + 2)), p) }
}
