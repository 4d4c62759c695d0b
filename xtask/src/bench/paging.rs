//! Figure 9: paging (SPEC §8), per page, on a system with swap in host
//! memory. Informational only: SPEC §8 sets no paging target, and each
//! row says what its two sides do differently.

use super::ids;
use super::*;

/// `ns` per page as a bandwidth of page bytes.
fn gbps(ns: f64) -> String {
    format!("{:.2} GB/s", PAGE / ns)
}

/// The page-in fault against a zero-fill fault and against a page copy;
/// pageout and the store's own transfers against a page copy.
pub(super) fn paging_rows(i: &Input, rows: &mut Vec<Row>) {
    let get = |f: &str| i.get(&ids::plain(ids::PAGING, f));
    let copy = get(ids::COPY_PAGE);
    let copy_ref = |c: f64, what: &str| {
        format!(
            "{} ({}; `PhysMem::copy_page` of one page: {what})",
            fmt_ns(c),
            gbps(c)
        )
    };
    if let Some(t) = get(ids::PAGEIN_FAULT) {
        if let Some(z) = get(ids::PAGING_ZERO_FILL) {
            rows.push(Row::info(
                "9. Page-in fault through the façade, per page (1-byte `write_bytes` to a \
                 paged-out page: checks, walk, locks, fault, a frame, the slot read into it, \
                 pmap enter, the slot freed, the byte) vs a zero-fill fault — the same store \
                 on the same system, zeroing a frame where the page-in reads a slot"
                    .into(),
                fmt_ns(t),
                format!("{} (zero-fill fault through the façade)", fmt_ns(z)),
                Some(t / z),
            ));
        }
        if let Some(c) = copy {
            rows.push(Row::info(
                "9. Page-in fault through the façade, per page, vs a page copy — other work: \
                 the fault moves the same 4 KiB and also faults, maps and writes"
                    .into(),
                fmt_ns(t),
                copy_ref(c, "the copy alone"),
                Some(t / c),
            ));
        }
    }
    // The parameter: pages per `page_out` call.
    let pageout = ids::prefix(ids::PAGING, ids::PAGEOUT);
    if let Some(&n) = i.params(&pageout).last()
        && let (Some(t), Some(c)) = (i.get(&ids::full(ids::PAGING, ids::PAGEOUT, n)), copy)
    {
        rows.push(Row::info(
            format!(
                "9. Pageout, per page (`VmMap::page_out` of {n} resident pages: map walk, \
                 unmapping, one TLB shootdown per 32 pages, the write to a slot, the frame \
                 freed) vs a page copy — other work: pageout moves the same 4 KiB and also \
                 unmaps and frees"
            ),
            format!("{} ({})", fmt_ns(t), gbps(t)),
            copy_ref(c, "the copy alone"),
            Some(t / c),
        ));
    }
    let store: [(&str, &str); 2] = [
        (
            ids::STORE_READ,
            "page-in's part: `MemStore` slot read into a frame",
        ),
        (
            ids::STORE_WRITE,
            "pageout's part: a slot taken, a frame written to it",
        ),
    ];
    for (id, what) in store {
        if let (Some(t), Some(c)) = (get(id), copy) {
            rows.push(Row::info(
                format!(
                    "9. Store transfer alone, per page ({what}) vs a page copy — both move \
                     4 KiB memory to memory"
                ),
                format!("{} ({})", fmt_ns(t), gbps(t)),
                copy_ref(c, "frame to frame"),
                Some(t / c),
            ));
        }
    }
}
