//! The `vmmap`-style display of a map, and its `Debug` form.

use core::fmt;
use machvm_base::sync::Locks;

use machvm_object::{Holder, Objects};

use crate::{Entry, VmMap};

impl<L: Locks> fmt::Display for VmMap<L> {
    /// One line per entry, `vmmap` style: range, protection/maximum,
    /// inheritance, copy-on-write state, object chain depth, resident pages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0.inner.read();
        let objs = self.0.ctx.objects();
        writeln!(
            f,
            "{:<33} {:<7} {:<5} {:<4} {:>5} {:>8}",
            "START-END", "PRT/MAX", "INH", "COW", "DEPTH", "RESIDENT"
        )?;
        for (&start, e) in m.entries.iter() {
            display_entry(f, &objs, start, e)?;
        }
        Ok(())
    }
}

fn display_entry<L: Locks>(
    f: &mut fmt::Formatter<'_>,
    objs: &Objects<'_, L>,
    start: u64,
    e: &Entry,
) -> fmt::Result {
    let (depth, resident, nc) = match &e.object {
        Some(h) => (
            objs.chain_depth(h),
            objs.resident(h),
            matches!(objs.holder(h), Holder::NeedsCopy { .. }),
        ),
        None => (0, 0, false),
    };
    writeln!(
        f,
        "{:016x}-{:016x} {}/{} {:<5} {:<4} {:>5} {:>8}",
        start,
        e.end,
        e.protection,
        e.max_protection,
        e.inheritance,
        if nc { "nc" } else { "-" },
        depth,
        resident
    )
}

impl<L: Locks> fmt::Debug for VmMap<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmMap#{}", self.0.id)
    }
}
