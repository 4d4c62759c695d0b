//! fork: the Share / Copy / None matrix with writes on both sides, three
//! generations and parents exiting in every order; and 1,000 generations of
//! fork -> child writes -> parent exits with short shadow chains and no leak.

mod common;

use common::*;
use machvm::{KernError, VmInherit, VmMap, VmSystem};

fn byte(map: &VmMap, addr: u64) -> u8 {
    peek(map, addr, 1)[0]
}

/// A map with three pages, one per inheritance, each holding its index.
fn three_regions(vm: &VmSystem) -> (VmMap, u64) {
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, 3 * P, true).unwrap();
    for i in 0..3 {
        map.write_bytes(a + i * P, &[10 + i as u8]).unwrap();
    }
    map.inherit(a, P, VmInherit::Share).unwrap();
    map.inherit(a + P, P, VmInherit::Copy).unwrap();
    map.inherit(a + 2 * P, P, VmInherit::None).unwrap();
    (map, a)
}

#[test]
fn matrix_writes_on_both_sides() {
    let vm = system();
    let (parent, a) = three_regions(&vm);
    let child = parent.fork().unwrap();
    check(&vm, &[&parent, &child]);
    assert_eq!((byte(&child, a), byte(&child, a + P)), (10, 11));
    assert_eq!(
        child.read_bytes(a + 2 * P, &mut [0]),
        Err(KernError::InvalidAddress)
    );
    // Child writes.
    child.write_bytes(a, &[20]).unwrap();
    child.write_bytes(a + P, &[21]).unwrap();
    check(&vm, &[&parent, &child]);
    assert_eq!(byte(&parent, a), 20, "Share: parent sees the child's write");
    assert_eq!(byte(&parent, a + P), 11, "Copy: parent does not");
    // Parent writes.
    parent.write_bytes(a, &[30]).unwrap();
    parent.write_bytes(a + P, &[31]).unwrap();
    parent.write_bytes(a + 2 * P, &[32]).unwrap();
    check(&vm, &[&parent, &child]);
    assert_eq!(byte(&child, a), 30);
    assert_eq!(byte(&child, a + P), 21);
    // Untouched pages: copy-on-write for non-resident pages too.
    let z = parent.allocate(0, P, true).unwrap();
    let c2 = parent.fork().unwrap();
    c2.write_bytes(z, &[1]).unwrap();
    assert_eq!(byte(&parent, z), 0);
    parent.write_bytes(z, &[2]).unwrap();
    assert_eq!(byte(&c2, z), 1);
    check(&vm, &[&parent, &child, &c2]);
}

#[test]
fn copy_write_protects_the_parent_and_copies_once_per_side() {
    let vm = system();
    let map = vm.create_map().unwrap();
    let n = 16;
    let a = map.allocate(0, n * P, true).unwrap();
    map.write_bytes(a, &vec![1u8; (n * P) as usize]).unwrap();
    let before = vm.statistics();
    let child = map.fork().unwrap();
    let after_fork = vm.statistics();
    assert_eq!(
        after_fork.cow_faults, before.cow_faults,
        "fork copies no page"
    );
    assert_eq!(after_fork.active_count, before.active_count);
    check(&vm, &[&map, &child]);
    for i in 0..4 {
        map.write_bytes(a + i * P, &[2]).unwrap();
    }
    let s = vm.statistics();
    assert_eq!(s.cow_faults - before.cow_faults, 4);
    assert_eq!(s.active_count - before.active_count, 4);
    // Writing the same pages again copies nothing more.
    map.write_bytes(a, &[3]).unwrap();
    assert_eq!(vm.statistics().cow_faults - before.cow_faults, 4);
    check(&vm, &[&map, &child]);
}

#[test]
fn share_after_copy_shares_the_written_object() {
    // A needs-copy entry inherited Share: the shadow is made first, so both
    // sharers write the same object (and not the one below it).
    let vm = system();
    let map = vm.create_map().unwrap();
    let a = map.allocate(0, P, true).unwrap();
    map.write_bytes(a, &[1]).unwrap();
    let sibling = map.fork().unwrap(); // map's entry is now needs-copy
    map.inherit(a, P, VmInherit::Share).unwrap();
    let child = map.fork().unwrap();
    child.write_bytes(a, &[2]).unwrap();
    assert_eq!(byte(&map, a), 2);
    map.write_bytes(a, &[3]).unwrap();
    assert_eq!(byte(&child, a), 3);
    assert_eq!(byte(&sibling, a), 1, "the earlier copy is untouched");
    check(&vm, &[&map, &child, &sibling]);
}

#[test]
fn copy_of_a_shared_region_is_private() {
    // Parent shares a page with child A, then forks child B with Copy:
    // B's copy must not follow A's later writes, and A and the parent must
    // keep sharing.
    let vm = system();
    let parent = vm.create_map().unwrap();
    let a = parent.allocate(0, 2 * P, true).unwrap();
    parent.write_bytes(a, &[1, 1]).unwrap();
    parent.inherit(a, 2 * P, VmInherit::Share).unwrap();
    let sharer = parent.fork().unwrap();
    parent.inherit(a, 2 * P, VmInherit::Copy).unwrap();
    let copy = parent.fork().unwrap();
    sharer.write_bytes(a, &[5]).unwrap();
    parent.write_bytes(a + 1, &[6]).unwrap();
    assert_eq!(peek(&parent, a, 2), [5, 6]);
    assert_eq!(peek(&sharer, a, 2), [5, 6]);
    assert_eq!(peek(&copy, a, 2), [1, 1]);
    copy.write_bytes(a, &[9]).unwrap();
    assert_eq!(byte(&parent, a), 5);
    check(&vm, &[&parent, &sharer, &copy]);
}

#[test]
fn three_generations_parents_exit_in_every_order() {
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let vm = system();
        let start = vm.statistics().free_count;
        let (g0, a) = three_regions(&vm);
        let g1 = g0.fork().unwrap();
        g1.write_bytes(a + P, &[41]).unwrap();
        g1.inherit(a + 2 * P, P, VmInherit::Copy).unwrap_err();
        let g2 = g1.fork().unwrap();
        g2.write_bytes(a, &[50]).unwrap();
        g2.write_bytes(a + P, &[51]).unwrap();
        check(&vm, &[&g0, &g1, &g2]);
        assert_eq!(byte(&g0, a), 50, "Share reaches the grandparent");
        assert_eq!(byte(&g0, a + P), 11);
        assert_eq!(byte(&g1, a + P), 41);
        let mut gens = [Some(g0), Some(g1), Some(g2)];
        for (k, &who) in order.iter().enumerate() {
            gens[who] = None;
            let alive: Vec<&VmMap> = gens.iter().flatten().collect();
            check(&vm, &alive);
            for m in &alive {
                assert_eq!(byte(m, a), 50, "order {order:?} step {k}: shared page");
            }
            if let Some(g1) = &gens[1] {
                assert_eq!(byte(g1, a + P), 41);
            }
            if let Some(g2) = &gens[2] {
                assert_eq!(byte(g2, a + P), 51);
                assert!(g2.max_chain_depth() <= 3);
            }
        }
        assert_eq!(
            vm.statistics().free_count,
            start,
            "order {order:?}: frames leaked"
        );
        vm.verify().unwrap();
    }
}

#[test]
fn a_thousand_generations_keep_chains_short_and_leak_nothing() {
    let vm = system();
    let start = vm.statistics().free_count;
    let mut map = vm.create_map().unwrap();
    let a = map.allocate(0, 8 * P, true).unwrap();
    map.write_bytes(a, &[0u8; 8 * P as usize]).unwrap();
    let mut longest = 0;
    for g in 1..=1000u64 {
        let child = map.fork().unwrap();
        let page = g % 8;
        child.write_bytes(a + page * P, &g.to_le_bytes()).unwrap();
        longest = longest.max(child.max_chain_depth());
        drop(map); // the parent exits
        map = child;
        if g % 100 == 0 {
            check(&vm, &[&map]);
        }
        assert!(
            map.max_chain_depth() <= 3,
            "generation {g}: chain {}",
            map.max_chain_depth()
        );
    }
    assert!(longest <= 3, "longest chain {longest}");
    // The last write of each page survives.
    for page in 0..8 {
        let last = (993..=1000).find(|g| g % 8 == page).unwrap();
        assert_eq!(peek(&map, a + page * P, 8), last.to_le_bytes());
    }
    check(&vm, &[&map]);
    drop(map);
    assert_eq!(vm.statistics().free_count, start, "frames leaked");
    vm.verify().unwrap();
}
