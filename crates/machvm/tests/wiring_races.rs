//! SPEC §7 under concurrency: a copy racing a wiring of its destination
//! (the shape of XNU's "Landa" bug, CVE-2023-41974: a destination checked
//! once, then wired and made read-only while the copy had it unlocked).
//! Interleavings are forced with the frame allocator's reservation hook, or
//! run free behind a barrier with assertions that hold in every order.

mod common;

use std::sync::{Arc, Barrier};

use common::{P, check};
use machvm::{KernError, VmInherit, VmMap, VmProt, VmSystem, vm_copy, vm_read, vm_write};

const RW: VmProt = VmProt::DEFAULT;

fn system() -> VmSystem {
    let vm = VmSystem::hosted(4 << 20);
    vm.set_consistency_checks(true);
    vm
}

fn first_bytes(map: &VmMap, at: u64, pages: u64) -> Vec<u8> {
    (0..pages)
        .map(|i| {
            let mut b = [0u8];
            map.read_bytes(at + i * P, &mut b).unwrap();
            b[0]
        })
        .collect()
}

/// A store into a destination half wired and half shared with another
/// map, whose owner wires its half while the store reserves frames: the
/// destination stays locked throughout, and every page ends with the
/// copy's bytes, the wired ones still wired.
#[test]
fn a_sibling_wiring_during_a_copy_reservation_loses_nothing() {
    const N: u64 = 8;
    let vm = system();
    let p = vm.create_map().unwrap();
    let d = p.allocate(0, N * P, true).unwrap();
    p.inherit(d + N / 2 * P, N / 2 * P, VmInherit::Share)
        .unwrap();
    let c = p.fork().unwrap();
    p.wire(d, N / 2 * P, RW).unwrap();
    let src = p.allocate(0, N * P, true).unwrap();
    p.write_bytes(src, &vec![9u8; (N * P) as usize]).unwrap();
    let data = vm_read(&p, src, N * P).unwrap();
    let (p2, c2) = (p.clone(), c.clone());
    vm.context().frames().before_next_reserve(move || {
        assert!(
            p2.is_locked(),
            "the destination is locked through the window"
        );
        c2.wire(d + N / 2 * P, N / 2 * P, RW).unwrap();
    });
    vm_write(&p, d, data).unwrap();
    assert_eq!(first_bytes(&p, d, N), vec![9; N as usize]);
    assert_eq!(
        first_bytes(&c, d + N / 2 * P, N / 2),
        vec![9; N as usize / 2]
    );
    assert_eq!(p.region(d).unwrap().wired_pages, N / 2);
    assert_eq!(c.region(d + N / 2 * P).unwrap().wired_pages, N / 2);
    check(&vm, &[&p, &c]);
}

/// One thread wires, unwires and flips the protection of a range while
/// another copies into it: every copy either lands whole or, refused,
/// leaves the destination's bytes as they were; nothing wired is lost.
#[test]
fn copies_racing_wiring_and_protection_of_their_destination() {
    const N: u64 = 4;
    const ROUNDS: u8 = 200;
    let vm = system();
    let map = vm.create_map().unwrap();
    let d = map.allocate(0, N * P, true).unwrap();
    let src = map.allocate(0, N * P, true).unwrap();
    let go = Arc::new(Barrier::new(2));
    let wirer = {
        let (map, go) = (map.clone(), go.clone());
        std::thread::spawn(move || {
            go.wait();
            for i in 0..ROUNDS {
                map.wire(d, N * P, VmProt::READ).unwrap();
                let prot = if i % 2 == 0 { VmProt::READ } else { RW };
                map.protect(d, N * P, false, prot).unwrap();
                map.wire(d, N * P, VmProt::NONE).unwrap();
            }
            map.protect(d, N * P, false, RW).unwrap();
        })
    };
    go.wait();
    for i in 1..=ROUNDS {
        map.write_bytes(src, &vec![i; (N * P) as usize]).unwrap();
        let before = first_bytes(&map, d, N);
        match vm_copy(&map, src, N * P, d) {
            Ok(()) => assert_eq!(first_bytes(&map, d, N), vec![i; N as usize]),
            Err(KernError::ProtectionFailure) => assert_eq!(first_bytes(&map, d, N), before),
            Err(e) => panic!("vm_copy: {e:?}"),
        }
    }
    wirer.join().unwrap();
    assert_eq!(map.region(d).unwrap().wired_pages, 0);
    assert_eq!(
        vm.context().frames().wired_frames(),
        0,
        "every wiring undone"
    );
    check(&vm, &[&map]);
}
