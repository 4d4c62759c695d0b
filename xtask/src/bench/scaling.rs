//! Figure 8: zero-fill faults through the façade from one thread and two.

use super::ids;
use super::*;

/// One thread against two on two maps and on one map, and the control.
pub(super) fn scaling_rows(i: &Input, rows: &mut Vec<Row>) {
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
