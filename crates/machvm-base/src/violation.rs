//! [`Violation`]: how every layer's `verify()` reports a broken invariant.

use alloc::string::String;
use core::fmt;

/// A broken invariant: the rule — one per bullet of the owning module's
/// invariant list, as the layer's rule enum names it — and what was found.
///
/// ```
/// use machvm_base::Violation;
/// #[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// enum Rule { Sorted }
/// let v = Violation::new(Rule::Sorted, "entry 0x2000 before 0x1000");
/// assert_eq!(v.rule, Rule::Sorted);
/// assert_eq!(v.to_string(), "Sorted broken: entry 0x2000 before 0x1000");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation<R> {
    /// The rule broken.
    pub rule: R,
    /// What was found, for a person.
    pub detail: String,
}

impl<R> Violation<R> {
    /// A violation of `rule`.
    pub fn new(rule: R, detail: impl Into<String>) -> Violation<R> {
        Violation {
            rule,
            detail: detail.into(),
        }
    }

    /// A check's result with its rule named: how `verify()` runs the
    /// `check_<rule>` functions, which describe what they found.
    pub fn check<T>(rule: R, found: Result<T, String>) -> Result<T, Violation<R>> {
        found.map_err(|d| Violation::new(rule, d))
    }
}

impl<R: fmt::Debug> fmt::Display for Violation<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} broken: {}", self.rule, self.detail)
    }
}

impl<R: fmt::Debug> core::error::Error for Violation<R> {}
