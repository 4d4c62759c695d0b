//! A map's invariants, one check per rule (see the crate documentation),
//! and the consistency checks debug builds can run after every change
//! (FreeBSD's `VM_MAP_ASSERT_CONSISTENT` under `debug.vmmap_check`).

use alloc::format;
use alloc::string::String;
use machvm_base::sync::Locks;

use machvm_base::{PAGE_SIZE, PageIndex, USER_MAX, USER_MIN, VaRange, Violation, VirtAddr, VmProt};
use machvm_object::{Holder, ObjectRule, Objects};
use machvm_pmap::{Translation, effective_prot};

use crate::{MapInner, VmMap};

/// A map's invariants, one per bullet at the top of the crate: what a
/// [`Violation`] from [`VmMap::verify`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapRule {
    /// Entries are sorted, non-overlapping, page-aligned, non-empty and
    /// inside the task map, with protection within the maximum.
    WellFormed,
    /// An entry's hold is an entry holder of this map as long as the entry,
    /// and the graph holds no other record naming this map.
    HoldsExact,
    /// No two neighbouring entries could be one entry.
    Simplified,
    /// The lookup state is exact: `first_free` is the lowest free address
    /// at or above `USER_MIN`, the entry tree and the slab of slots agree,
    /// and the index's hint and flat copy name entries (bounds and slot)
    /// as they are.
    LookupExact,
    /// Every translation lies inside an entry, maps the page the entry's
    /// chain holds there, and allows at most the entry's protection.
    TranslationsJustified,
    /// No writable translation maps a page still shared copy-on-write.
    NoWritableShared,
    /// A wired entry writes its object directly, every page of its window
    /// is resident in that object with its frame wired, and entered wired
    /// (where its protection allows any access).
    WiredResident,
    /// The object graph's own invariants (its rule inside).
    Objects(ObjectRule),
}

impl<L: Locks> VmMap<L> {
    /// Checks every invariant in the crate documentation, the object
    /// graph's included, one check per rule; names the first one broken.
    pub fn verify(&self) -> Result<(), Violation<MapRule>> {
        let m = self.0.inner.read();
        let objs = self.0.ctx.objects();
        self.verify_locked(&m, &objs)
    }

    /// [`verify`](Self::verify) with the map and the graph locked.
    pub(crate) fn verify_locked(
        &self,
        m: &MapInner,
        objs: &Objects<'_, L>,
    ) -> Result<(), Violation<MapRule>> {
        use MapRule::*;
        Violation::check(WellFormed, check_well_formed(m))?;
        Violation::check(HoldsExact, self.check_holds_exact(m, objs))?;
        Violation::check(Simplified, check_simplified(m, objs))?;
        Violation::check(LookupExact, check_lookup_exact(m))?;
        self.check_translations(m, objs)?;
        Violation::check(WiredResident, self.check_wired(m, objs))?;
        objs.verify()
            .map_err(|v| Violation::new(Objects(v.rule), v.detail))
    }

    /// With the checks on in a debug build, panics when the map (locked,
    /// with the graph) breaks an invariant: called at the end of every
    /// change.
    #[track_caller]
    pub(crate) fn assert_consistent(&self, m: &MapInner, objs: &Objects<'_, L>) {
        if self.0.ctx.consistency_checks()
            && let Err(v) = self.verify_locked(m, objs)
        {
            panic!("map {} inconsistent: {v}", self.0.id);
        }
    }

    /// Each hold is one of this map's, as long as its entry, and the graph
    /// has no other record naming this map.
    fn check_holds_exact(&self, m: &MapInner, objs: &Objects<'_, L>) -> Result<(), String> {
        let mut held = 0;
        for (&start, e) in m.entries.iter() {
            let Some(h) = &e.object else { continue };
            held += 1;
            if objs.holder(h).map() != Some(self.0.id) {
                return Err(format!("entry {start:#x}: held as {:?}", objs.holder(h)));
            }
            let (s, t) = objs.window(h);
            if t.since(s) != e.pages(start) {
                return Err(format!(
                    "entry {start:#x}: window [{s:?}, {t:?}) of the wrong length"
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
    /// entry writes the page directly (two rules, named apart).
    fn check_translations(
        &self,
        m: &MapInner,
        objs: &Objects<'_, L>,
    ) -> Result<(), Violation<MapRule>> {
        let pm = self.0.ctx.pmap();
        let maps = pm.mappings(self.0.pmap, VaRange::USER_HALF);
        if maps.len() as u64 != pm.resident_count(self.0.pmap) {
            let d = "pmap resident count disagrees with its translations";
            return Err(Violation::new(MapRule::TranslationsJustified, d));
        }
        for (va, t) in maps {
            let depth = Violation::check(
                MapRule::TranslationsJustified,
                check_translation_justified(m, objs, va, t),
            )?;
            Violation::check(
                MapRule::NoWritableShared,
                check_not_writable_shared(m, objs, va, t, depth),
            )?;
        }
        Ok(())
    }
}

/// The translation of `va` lies in an entry, maps the page the entry's
/// chain holds there, and allows at most the entry's protection. Returns
/// the depth in the chain the page was found at.
fn check_translation_justified<L: Locks>(
    m: &MapInner,
    objs: &Objects<'_, L>,
    va: VirtAddr,
    t: Translation,
) -> Result<usize, String> {
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
    let page = PageIndex::in_window(start, va.as_u64());
    let Some(found) = objs.lookup(h, page) else {
        return check_zero_translation(objs, h, page, va, t).map(|_| 0);
    };
    if found.frame() != Some(t.pa) {
        return Err(format!(
            "translation of {va:?} to {:?}, chain holds {:?}",
            t.pa, found.page
        ));
    }
    Ok(found.depth)
}

/// A translation of `va` where the chain holds no page: only the zero
/// frame, read-only, and only where no other entry writes the object
/// directly (a store there must reach this entry at once).
fn check_zero_translation<L: Locks>(
    objs: &Objects<'_, L>,
    h: &machvm_object::Hold,
    page: PageIndex,
    va: VirtAddr,
    t: Translation,
) -> Result<(), String> {
    if objs.context().zero_frame() != Some(t.pa) {
        return Err(format!(
            "translation of {va:?} to {:?}, but no page in the chain",
            t.pa
        ));
    }
    if t.prot.contains(VmProt::WRITE) {
        return Err(format!("writable translation of {va:?} to the zero frame"));
    }
    if !objs.may_map_zero(h, page) {
        return Err(format!(
            "translation of {va:?} to the zero frame where a sibling writes"
        ));
    }
    Ok(())
}

/// A writable translation of `va` maps a page in the entry's own object
/// (`depth` 0) that the entry writes directly.
fn check_not_writable_shared<L: Locks>(
    m: &MapInner,
    objs: &Objects<'_, L>,
    va: VirtAddr,
    t: Translation,
    depth: usize,
) -> Result<(), String> {
    if !t.prot.contains(VmProt::WRITE) {
        return Ok(());
    }
    let direct = m
        .entries
        .range(..=va.as_u64())
        .next_back()
        .and_then(|(_, e)| e.object.as_ref())
        .is_some_and(|h| matches!(objs.holder(h), Holder::Direct { .. }));
    if depth != 0 || !direct {
        return Err(format!(
            "writable translation of {va:?} to a page still shared copy-on-write"
        ));
    }
    Ok(())
}

/// Entries are sorted, non-overlapping, page-aligned, non-empty, inside the
/// task map, with protection within the maximum.
fn check_well_formed(m: &MapInner) -> Result<(), String> {
    let mut prev_end = USER_MIN;
    for (&start, e) in m.entries.iter() {
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

/// `first_free` is the end of the run of entries from `USER_MIN` without a
/// hole, and the lookup index names entries as they are.
fn check_lookup_exact(m: &MapInner) -> Result<(), String> {
    let mut free = USER_MIN;
    for (&s, e) in m.entries.range(USER_MIN..) {
        if s != free {
            break;
        }
        free = e.end;
    }
    if m.first_free != free {
        return Err(format!(
            "first_free {:#x}, lowest free address {free:#x}",
            m.first_free
        ));
    }
    if !m.entries.slots_exact() {
        return Err("the entry slots and the entry tree disagree".into());
    }
    let (hs, he, hslot) = m.index.hint;
    if he != 0 && m.entries.slot(hs).zip(m.entries.get(&hs).map(|e| e.end)) != Some((hslot, he)) {
        return Err(format!(
            "lookup hint [{hs:#x}, {he:#x}) in slot {hslot} is no entry"
        ));
    }
    let flat = (0..m.index.starts.len()).filter_map(|i| m.index.flat_at(i));
    let exact = m.index.starts.len() == m.index.rest.len()
        && flat.eq(m
            .entries
            .range_slots(..)
            .map(|(s, slot, e)| (s, e.end, slot)));
    if m.index.valid && !exact {
        return Err("the flat lookup index differs from the entries".into());
    }
    Ok(())
}

/// No two neighbours could be one entry.
fn check_simplified<L: Locks>(m: &MapInner, objs: &Objects<'_, L>) -> Result<(), String> {
    match m.mergeable_pairs(objs) {
        0 => Ok(()),
        n => Err(format!("{n} pairs of neighbouring entries could be one")),
    }
}
