//! The rows of faults at scale: one thread against two, the fault through
//! the façade against Linux's, the frames reads of never-written memory
//! take, and the eager copy against `memcpy`'s bandwidth.

use super::*;
use machvm_benches::ids;

/// Figure 8 and the façade rows of figures 2 and 3.
pub(super) fn scaling_rows(i: &Input, rows: &mut Vec<Row>) {
    parallel_rows(i, rows);
    facade_rows(i, rows);
    untouched_rows(i, rows);
}

/// Figure 8. Zero-fill faults through the façade from one and two threads.
fn parallel_rows(i: &Input, rows: &mut Vec<Row>) {
    let get = |f: &str| i.get(&ids::plain(ids::PARALLEL, f));
    if let (Some(one), Some(two)) = (get(ids::ONE_THREAD), get(ids::TWO_MAPS)) {
        rows.push(Row::ratio_target(
            "8. Zero-fill faults: two threads on two maps vs one thread doing both".into(),
            two,
            (one, "one thread".into()),
            0.6,
        ));
    }
    if let (Some(one), Some(two)) = (get(ids::ONE_THREAD), get(ids::TWO_SYSTEMS)) {
        // The control: the same work with nothing shared, so a reader sees
        // what this machine gives two threads before judging the target.
        rows.push(Row::info(
            "8. Control: two threads on two separate systems (nothing shared) \
             vs one thread doing both"
                .into(),
            fmt_ns(two),
            format!("{} (one thread)", fmt_ns(one)),
            Some(two / one),
        ));
    }
    if let (Some(maps), Some(map)) = (get(ids::TWO_MAPS), get(ids::ONE_MAP)) {
        rows.push(Row::ratio_target(
            "8. Zero-fill faults: two threads on one map vs on two maps".into(),
            map,
            (maps, "two threads, two maps".into()),
            1.15,
        ));
    }
}

/// Figures 2 and 3 through the façade: a 1-byte `write_bytes` per page
/// (checks, walker, locks, the fault, the byte) against Linux's store to
/// the page (trap, fault, return).
fn facade_rows(i: &Input, rows: &mut Vec<Row>) {
    for (n, name, id, key, published) in [
        (
            2,
            "Copy-on-write",
            ids::FACADE_COW,
            "linux_cow_fault_ns",
            PUBLISHED_COW_NS,
        ),
        (
            3,
            "Zero-fill",
            ids::FACADE_ZERO_FILL,
            "linux_zero_fill_ns",
            PUBLISHED_ZERO_FILL_NS,
        ),
    ] {
        if let Some(t) = i.get(&ids::plain(ids::FAULT, id)) {
            let (r, label) = i.reference(key, published);
            rows.push(Row::ratio_target(
                format!(
                    "{n}. {name} fault through the façade, per page \
                     (machvm: 1-byte `write_bytes`; Linux: a store, with trap)"
                ),
                t,
                (r, label.into()),
                0.2,
            ));
        }
    }
}

/// Figure 7. What reading 256 MiB never written takes.
fn untouched_rows(i: &Input, rows: &mut Vec<Row>) {
    let (Some(objects), Some(tables)) = (
        i.footprint("untouched_read_object_frames"),
        i.footprint("untouched_read_table_frames"),
    ) else {
        return;
    };
    rows.push(Row {
        figure: "7. Reading 256 MiB never written: object frames (page tables apart)".into(),
        machvm: format!("{objects} frames (+ {tables} page-table frames)"),
        reference: "Linux: the shared zero page (+ page tables)".into(),
        ratio: None,
        target: "0 frames".into(),
        met: Some(objects == 0.0),
    });
}

/// The eager copy of `size` bytes against `memcpy`'s bandwidth.
pub(super) fn eager_row(i: &Input, size: u64) -> Option<Row> {
    let t = i.get(&ids::full(ids::COPY, ids::EAGER, size))?;
    let m = i.get(&ids::full(ids::COPY, ids::MEMCPY, size))?;
    let ratio = m / t;
    Some(Row {
        figure: format!(
            "1. Eager copy, resident, {} vs `memcpy` bandwidth",
            fmt_bytes(size)
        ),
        machvm: format!("{} ({:.2} GB/s)", fmt_ns(t), size as f64 / t),
        reference: format!("{} ({:.2} GB/s, host)", fmt_ns(m), size as f64 / m),
        ratio: Some(ratio),
        target: "≥ 0.8× bandwidth".into(),
        met: Some(ratio >= 0.8),
    })
}
