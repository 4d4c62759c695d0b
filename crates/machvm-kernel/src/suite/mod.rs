//! The in-kernel test harness.
//!
//! A test is a plain `fn() -> Result<(), String>` that returns `Err(why)` on
//! failure (use [`ensure!`](crate::ensure) / [`ensure_eq!`](crate::ensure_eq)).
//! A panic ends the whole run as a failure (no unwinding on bare metal), so
//! tests return errors instead. Each result is printed as `name ... ok` or
//! `name ... FAILED: why`; the run ends with the plain line
//! `N passed, M failed`.
//!
//! Adding a test is one line in its suite's `TESTS` list
//! (`test!(my_test),`); adding a suite is one line in [`SUITES`].
//! After every test the harness removes the page-fault hook and puts every
//! CPU back on the kernel's CR3 (deactivating any machvm pmap), so a failing
//! test cannot poison the next.
//!
//! Suites: `platform` (the MMU, traps and IPIs with hand-built page tables),
//! `machvm` ([`tasks`]: machvm's task maps on the real MMU) and `user`
//! ([`user`]: ring 3, SMEP and SMAP).

use alloc::string::String;

use crate::{cpu, paging, smp, trap, vm};

pub mod platform;
pub mod tasks;
pub mod user;

/// A test's body.
pub type TestFn = fn() -> Result<(), String>;

/// A named test.
pub struct Test {
    /// Printed before ` ... ok`.
    pub name: &'static str,
    /// The body.
    pub run: TestFn,
}

/// `test!(f)` is the [`Test`] named after the function `f`.
#[macro_export]
macro_rules! test {
    ($f:ident) => {
        $crate::suite::Test {
            name: stringify!($f),
            run: $f,
        }
    };
}

/// Fails the test with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(::alloc::format!($($arg)+));
        }
    };
}

/// Fails the test unless `left == right`, showing both and the message.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(::alloc::format!(
                        "{}: {:?} != {:?}",
                        ::alloc::format!($($arg)+),
                        l,
                        r
                    ));
                }
            }
        }
    };
}

/// Every suite, run in order: `(name, tests)`.
pub const SUITES: &[(&str, &[Test])] = &[
    ("platform", platform::TESTS),
    ("machvm", tasks::TESTS),
    ("user", user::TESTS),
];

/// Puts the machine back in its base state between tests.
fn reset_after_test() {
    // Tasks first: their CPUs go back to their idle loops.
    crate::proc::kill_all_and_reap();
    // Deactivates machvm pmaps too, should a test have left one running.
    vm::release_all();
    trap::set_page_fault_hook(None);
    let kernel = paging::kernel_pml4_pa();
    for c in 0..smp::cpu_count() {
        smp::run_on(c, || {
            if cpu::current_cr3() & paging::pte::ADDR != kernel {
                // SAFETY: the kernel PML4 always maps the kernel half.
                unsafe { cpu::load_cr3(kernel) };
            }
        });
    }
}

/// Runs every suite (only tests whose `suite::name` contains `filter`, when
/// given: `-append filter=tlb`); true when no test failed.
pub fn run(filter: Option<&str>) -> bool {
    let selected = |suite: &str, name: &str| {
        filter.is_none_or(|f| alloc::format!("{suite}::{name}").contains(f))
    };
    let total = SUITES
        .iter()
        .flat_map(|(s, tests)| tests.iter().map(move |t| (*s, t.name)))
        .filter(|(s, n)| selected(s, n))
        .count();
    println!("running {total} tests on {} CPU(s)", smp::cpu_count());
    let (mut passed, mut failed) = (0, 0);
    for (suite, tests) in SUITES {
        for t in tests.iter().filter(|t| selected(suite, t.name)) {
            let r = (t.run)();
            reset_after_test();
            match r {
                Ok(()) => {
                    passed += 1;
                    println!("{suite}::{} ... ok", t.name);
                }
                Err(why) => {
                    failed += 1;
                    println!("{suite}::{} ... FAILED: {why}", t.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    failed == 0
}
