//! Concurrency: threads running random operations on shared and private
//! maps at once, bounded in iterations; invariants verified at quiescence.

mod common;

use std::sync::Barrier;

use common::*;
use machvm::{KernError, VmInherit, VmMap, VmProt, vm_copy, vm_map_copy, vm_read};

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const PAGES: u64 = 32;

fn allowed(r: Result<(), KernError>) {
    match r {
        Ok(()) | Err(KernError::InvalidAddress) | Err(KernError::ProtectionFailure) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn random_operations_on_shared_and_private_maps() {
    let vm = system();
    let shared_a = vm.create_map().unwrap();
    let base = shared_a.allocate(0, PAGES * P, true).unwrap();
    shared_a
        .write_bytes(base, &vec![1u8; (PAGES * P) as usize])
        .unwrap();
    shared_a
        .inherit(base, PAGES * P / 2, VmInherit::Share)
        .unwrap();
    let shared_b = shared_a.fork().unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (sa, sb) = (shared_a.clone(), shared_b.clone());
            let vm = vm.clone();
            s.spawn(move || {
                let mut r = Rng(0x9E37_79B9 ^ ((t + 1) * 0x1234_5678));
                let private = vm.create_map().unwrap();
                private.allocate(base, PAGES * P, false).unwrap();
                for _ in 0..1500 {
                    let maps: [&VmMap; 3] = [&sa, &sb, &private];
                    let m = maps[r.below(3) as usize];
                    let other = maps[r.below(3) as usize];
                    let addr = base + r.below(PAGES * P - 64);
                    match r.below(10) {
                        0..=2 => allowed(m.write_bytes(addr, &[t as u8; 40])),
                        3 => {
                            let mut buf = [0u8; 40];
                            allowed(m.read_bytes(addr, &mut buf));
                        }
                        4 | 5 => allowed(vm_map_copy(
                            other,
                            m,
                            base + r.below(PAGES * P - 3 * P),
                            2 * P + 7,
                            addr,
                            false,
                            false,
                        )),
                        6 => allowed(vm_copy(m, addr, 50, base + r.below(PAGES * P - 64))),
                        7 => {
                            if let Ok(child) = m.fork() {
                                allowed(child.write_bytes(addr, &[9]));
                            }
                        }
                        8 => {
                            let prot = if r.below(2) == 0 {
                                VmProt::READ
                            } else {
                                VmProt::DEFAULT
                            };
                            allowed(m.protect(addr, P, false, prot));
                        }
                        _ => {
                            if std::ptr::eq(m, &private) {
                                let page = base + r.below(PAGES) * P;
                                private.deallocate(page, P).unwrap();
                                private.allocate(page, P, false).unwrap();
                            } else if let Ok(c) = vm_read(m, addr, 3 * P) {
                                let _ = c.copyout(&private);
                            }
                        }
                    }
                }
                private.verify().unwrap();
            });
        }
    });
    check(&vm, &[&shared_a, &shared_b]);
    // The shared half is still shared.
    shared_a.protect(base, P, false, VmProt::DEFAULT).unwrap();
    shared_b.protect(base, P, false, VmProt::DEFAULT).unwrap();
    shared_a.write_bytes(base, &[0x5A]).unwrap();
    assert_eq!(peek(&shared_b, base, 1), [0x5A]);
    drop((shared_a, shared_b));
    let s = vm.statistics();
    assert_eq!(s.free_count, s.total_pages, "frames leaked");
    vm.verify().unwrap();
}

/// A copy racing a `protect` of its destination returns success or
/// `ProtectionFailure`, nothing else, and never writes a page while it is
/// read-only. A copy and a `protect` of one map serialise on its lock, so
/// there are two orders; a barrier forces each of them in turn, every
/// round (no outcome depends on the scheduler). Then the two threads run
/// free for a fixed number of rounds, where any outcome must be one of
/// those two and a read-only page must never change.
#[test]
fn copy_racing_protect_of_its_destination() {
    let vm = system();
    let (src, dst) = (vm.create_map().unwrap(), vm.create_map().unwrap());
    let a = src.allocate(0, 4 * P, true).unwrap();
    let b = dst.allocate(0, 4 * P, true).unwrap();
    let copy = |i: u8| {
        src.write_bytes(a, &[i; 64]).unwrap();
        src.write_bytes(a + 3 * P, &[i; 64]).unwrap();
        vm_map_copy(&dst, &src, b + 3, 4 * P - 3, a + 3, false, false)
    };
    let turn = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..50u8 {
                turn.wait(); // protect first
                assert_eq!(copy(i), Err(KernError::ProtectionFailure));
                turn.wait();
                turn.wait(); // copy first
                assert_eq!(copy(i), Ok(()));
                turn.wait();
            }
        });
        for round in 0..50u64 {
            let target = b + (round % 4) * P;
            dst.protect(target, P, false, VmProt::READ).unwrap();
            let frozen = peek(&dst, target, P as usize);
            turn.wait();
            turn.wait();
            assert_eq!(
                peek(&dst, target, P as usize),
                frozen,
                "a read-only page was written"
            );
            dst.protect(target, P, false, VmProt::DEFAULT).unwrap();
            turn.wait();
            turn.wait();
            let n = (4 * P - 3) as usize;
            assert_eq!(
                peek(&dst, b + 3, n),
                peek(&src, a + 3, n),
                "the copy did not land"
            );
        }
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..400u32 {
                match copy(i as u8) {
                    Ok(()) | Err(KernError::ProtectionFailure) => {}
                    Err(e) => panic!("copy racing protect returned {e:?}"),
                }
            }
        });
        for round in 0..400 {
            let target = b + (round % 4) * P;
            dst.protect(target, P, false, VmProt::READ).unwrap();
            let frozen = peek(&dst, b, 4 * P as usize);
            std::thread::yield_now();
            let again = peek(&dst, b, 4 * P as usize);
            let page = (target - b) as usize;
            assert_eq!(
                frozen[page..page + P as usize],
                again[page..page + P as usize],
                "a read-only page was written"
            );
            dst.protect(target, P, false, VmProt::DEFAULT).unwrap();
        }
    });
    check(&vm, &[&src, &dst]);
}
