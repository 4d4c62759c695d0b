//! Figures 2 and 3: one fault per page, through the façade (judged against
//! Linux's trapped fault) and by the handler alone (informational).

use super::ids;
use super::*;

/// One kind of fault: its figure number, name, the ids of its façade and
/// handler benchmarks, the probe's key, the published figure, and what
/// Linux's kernel does in it besides the trap.
struct Kind {
    n: u32,
    name: &'static str,
    facade: &'static str,
    handler: &'static str,
    linux_key: &'static str,
    published: f64,
    linux_work: &'static str,
}

/// Copy-on-write and zero-fill, in figure order.
const KINDS: [Kind; 2] = [
    Kind {
        n: 2,
        name: "Copy-on-write",
        facade: ids::FACADE_COW,
        handler: ids::COW,
        linux_key: "linux_cow_fault_ns",
        published: PUBLISHED_COW_NS,
        linux_work: "page copy",
    },
    Kind {
        n: 3,
        name: "Zero-fill",
        facade: ids::FACADE_ZERO_FILL,
        handler: ids::ZERO_FILL,
        linux_key: "linux_zero_fill_ns",
        published: PUBLISHED_ZERO_FILL_NS,
        linux_work: "zeroing",
    },
];

/// Per kind, the façade row (a task's store: the only one with a target)
/// and beside it the handler alone.
pub(super) fn fault_rows(i: &Input, rows: &mut Vec<Row>) {
    for k in &KINDS {
        let facade = i.get(&ids::plain(ids::FAULT, k.facade));
        rows.extend(facade.map(|t| facade_row(i, k, t)));
        if let Some(t) = i.get(&ids::plain(ids::FAULT, k.handler)) {
            rows.push(Row::info(
                format!(
                    "{}. {} fault, handler alone (`VmMap::fault`: no trap, no byte written), \
                     per page — informational",
                    k.n, k.name
                ),
                fmt_ns(t),
                facade.map_or("—".into(), |f| {
                    format!("{} (machvm through the façade)", fmt_ns(f))
                }),
                facade.map(|f| t / f),
            ));
        }
    }
}

/// The fault through the façade against Linux's trapped store, judged
/// only when Linux was measured in this run.
fn facade_row(i: &Input, k: &Kind, t: f64) -> Row {
    let (r, label) = i.reference(k.linux_key, k.published);
    let row = Row::ratio_target(
        format!(
            "{}. {} fault through the façade, per page (machvm: 1-byte `write_bytes`: checks, \
             walk, locks, fault, the byte)",
            k.n, k.name
        ),
        t,
        (
            r,
            format!(
                "{label}: a trapped store — trap, kernel handler, {}",
                k.linux_work
            ),
        ),
        0.2,
    );
    if i.linux(k.linux_key).is_some() {
        row
    } else {
        row.unjudged(LINUX_NOT_MEASURED)
    }
}
