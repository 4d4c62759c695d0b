//! A map's invariants, one check per rule (see the crate documentation),
//! and the `vmmap`-style display.

use alloc::format;
use alloc::string::String;
use core::fmt;

use machvm_base::{PAGE_SHIFT, PAGE_SIZE, USER_MAX, USER_MIN, VaRange, VirtAddr, VmProt};
use machvm_object::{Holder, Objects};
use machvm_pmap::{Translation, effective_prot};

use crate::{Entry, MapInner, VmMap};

impl VmMap {
    /// Checks every invariant in the crate documentation, the object
    /// graph's included.
    pub fn verify(&self) -> Result<(), String> {
        let m = self.0.inner.lock();
        let objs = self.0.ctx.objects();
        check_entries(&m)?;
        self.check_holds(&m, &objs)?;
        check_simplified(&m, &objs)?;
        self.check_translations(&m, &objs)?;
        objs.verify()
    }

    /// Each hold is one of this map's, as long as its entry, and the graph
    /// has no other record naming this map.
    fn check_holds(&self, m: &MapInner, objs: &Objects<'_>) -> Result<(), String> {
        let mut held = 0;
        for (&start, e) in &m.entries {
            let Some(h) = &e.object else { continue };
            held += 1;
            if objs.holder(h).map() != Some(self.0.id) {
                return Err(format!("entry {start:#x}: held as {:?}", objs.holder(h)));
            }
            let (s, t) = objs.window(h);
            if t - s != e.pages(start) {
                return Err(format!(
                    "entry {start:#x}: window [{s}, {t}) of the wrong length"
                ));
            }
        }
        let recorded = objs.holds_of_map(self.0.id);
        if recorded != held {
            return Err(format!(
                "{held} entries hold objects, the graph records {recorded}"
            ));
        }
        Ok(())
    }

    /// Every translation is justified by an entry and the page its chain
    /// holds, allows no more than the entry, and is writable only where the
    /// entry writes the page directly.
    fn check_translations(&self, m: &MapInner, objs: &Objects<'_>) -> Result<(), String> {
        let all = VaRange::new(VirtAddr::new(0), VirtAddr::new(USER_MAX)).unwrap_or_default();
        let pm = self.0.ctx.pmap();
        let maps = pm.mappings(self.0.pmap, all);
        if maps.len() as u64 != pm.resident_count(self.0.pmap) {
            return Err("pmap resident count disagrees with its translations".into());
        }
        for (va, t) in maps {
            check_translation(m, objs, va, t)?;
        }
        Ok(())
    }
}

fn check_translation(
    m: &MapInner,
    objs: &Objects<'_>,
    va: VirtAddr,
    t: Translation,
) -> Result<(), String> {
    let Some((&start, e)) = m
        .entries
        .range(..=va.as_u64())
        .next_back()
        .filter(|(_, e)| va.as_u64() < e.end)
    else {
        return Err(format!("translation of {va:?} outside every entry"));
    };
    if !effective_prot(e.protection).contains(t.prot) {
        return Err(format!(
            "translation of {va:?} allows {} above entry's {}",
            t.prot, e.protection
        ));
    }
    let Some(h) = &e.object else {
        return Err(format!("translation of {va:?} in an entry without object"));
    };
    let Some(found) = objs.lookup(h, (va.as_u64() - start) >> PAGE_SHIFT) else {
        return Err(format!(
            "translation of {va:?} to {:?}, but no page in the chain",
            t.pa
        ));
    };
    if found.pa != t.pa {
        return Err(format!(
            "translation of {va:?} to {:?}, chain holds {:?}",
            t.pa, found.pa
        ));
    }
    let direct = matches!(objs.holder(h), Holder::Direct { .. });
    if t.prot.contains(VmProt::WRITE) && (found.depth != 0 || !direct) {
        return Err(format!(
            "writable translation of {va:?} to a page still shared copy-on-write"
        ));
    }
    Ok(())
}

/// Entries are sorted, non-overlapping, page-aligned, non-empty, inside the
/// task map, with protection within the maximum.
fn check_entries(m: &MapInner) -> Result<(), String> {
    let mut prev_end = USER_MIN;
    for (&start, e) in &m.entries {
        if start % PAGE_SIZE != 0 || e.end % PAGE_SIZE != 0 || start >= e.end {
            return Err(format!("entry [{start:#x}, {:#x}) malformed", e.end));
        }
        if start < prev_end || e.end > USER_MAX {
            return Err(format!(
                "entry [{start:#x}, {:#x}) overlaps or leaves the map",
                e.end
            ));
        }
        prev_end = e.end;
        if !e.max_protection.contains(e.protection) {
            return Err(format!("entry {start:#x}: protection above maximum"));
        }
    }
    Ok(())
}

/// No two neighbours could be one entry.
fn check_simplified(m: &MapInner, objs: &Objects<'_>) -> Result<(), String> {
    match m.mergeable_pairs(objs) {
        0 => Ok(()),
        n => Err(format!("{n} pairs of neighbouring entries could be one")),
    }
}

impl fmt::Display for VmMap {
    /// One line per entry, `vmmap` style: range, protection/maximum,
    /// inheritance, copy-on-write state, object chain depth, resident pages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0.inner.lock();
        let objs = self.0.ctx.objects();
        writeln!(
            f,
            "{:<33} {:<7} {:<5} {:<4} {:>5} {:>8}",
            "START-END", "PRT/MAX", "INH", "COW", "DEPTH", "RESIDENT"
        )?;
        for (&start, e) in &m.entries {
            display_entry(f, &objs, start, e)?;
        }
        Ok(())
    }
}

fn display_entry(
    f: &mut fmt::Formatter<'_>,
    objs: &Objects<'_>,
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

impl fmt::Debug for VmMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmMap#{}", self.0.id)
    }
}
