//! Typed violations, and the debug-build checks after every change.

use super::*;
use machvm_base::VmProt;

#[test]
fn verify_names_the_broken_rule() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0x10000, 2 * P, false).unwrap();
    map.write_bytes(a, b"x").unwrap();
    verified(&map);
    let rule = || map.verify().unwrap_err().rule;
    // Protection above the maximum.
    map.0
        .inner
        .write()
        .entries
        .get_mut(&a)
        .unwrap()
        .max_protection = VmProt::READ;
    assert_eq!(rule(), MapRule::WellFormed);
    map.0
        .inner
        .write()
        .entries
        .get_mut(&a)
        .unwrap()
        .max_protection = VmProt::ALL;
    // A translation allowing more than its entry.
    map.0.inner.write().entries.get_mut(&a).unwrap().protection = VmProt::READ;
    assert_eq!(rule(), MapRule::TranslationsJustified);
    map.0.inner.write().entries.get_mut(&a).unwrap().protection = VmProt::DEFAULT;
    // First fit starting past a hole.
    map.0.inner.write().first_free = a + 2 * P;
    assert_eq!(rule(), MapRule::LookupExact);
    map.0.inner.write().first_free = USER_MIN;
    // A lookup hint naming no entry.
    map.0.inner.write().index.hint = (a, a + P, u32::MAX);
    assert_eq!(rule(), MapRule::LookupExact);
    // A hint with the right bounds naming another slot.
    let slot = map.0.inner.read().entries.slot(a).unwrap();
    map.0.inner.write().index.hint = (a, a + 2 * P, slot + 1);
    assert_eq!(rule(), MapRule::LookupExact);
    map.0.inner.write().index.hint = (a, a + 2 * P, slot);
    verified(&map);
    map.0.inner.write().index.hint = (0, 0, 0);
    // Two neighbours that could be one.
    let mut m = map.0.inner.write();
    m.clip(&mut c.objects(), a + P);
    drop(m);
    assert_eq!(rule(), MapRule::Simplified);
    let mut m = map.0.inner.write();
    m.simplify(&mut c.objects(), a, a + 2 * P);
    drop(m);
    verified(&map);
}

#[test]
#[cfg_attr(
    debug_assertions,
    should_panic(expected = "inconsistent: WellFormed broken")
)]
fn a_change_that_leaves_a_broken_map_panics_once_checks_are_on() {
    let c = ctx(64);
    let map = VmMap::new(&c).unwrap();
    let a = map.allocate(0x10000, P, false).unwrap();
    map.0
        .inner
        .write()
        .entries
        .get_mut(&a)
        .unwrap()
        .max_protection = VmProt::NONE;
    c.set_consistency_checks(true);
    // The next change checks the whole map, and finds the broken entry.
    let r = map.allocate(0x40000, P, false);
    // Release builds never check.
    assert!(r.is_ok() && !cfg!(debug_assertions));
}
