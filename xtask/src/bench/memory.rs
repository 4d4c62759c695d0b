//! Figure 7: memory per frame, per map entry and per resident page, and
//! the frames reading never-written memory takes.

use super::*;

/// Linux's `struct page` on x86_64 (its reverse-map fields included).
const LINUX_PAGE_BYTES: f64 = 64.0;
/// A page table entry.
const PTE_BYTES: f64 = 8.0;

/// Figure 7's rows, the per-frame one first.
pub(super) fn memory_rows(i: &Input, rows: &mut Vec<Row>) {
    rows.extend(per_frame_row(i));
    if let (Some(s), Some(h)) = (
        i.footprint("entry_struct_bytes"),
        i.footprint("entry_heap_bytes"),
    ) {
        let vma = i.linux("linux_vma_bytes");
        rows.push(Row::info(
            "7. Per map entry (untouched): struct + key / heap incl. B-tree".into(),
            format!("{s} B / {h:.1} B"),
            vma.map_or("—".into(), |v| {
                // Linux's tree nodes live in another slab (`maple_node`).
                format!("Linux `vm_area_struct` {v} B (slabinfo; tree nodes not counted)")
            }),
            vma.map(|v| h / v),
        ));
    }
    if let (Some(f), Some(h)) = (
        i.footprint("system_bytes_per_frame"),
        i.footprint("resident_page_heap_bytes"),
    ) {
        let b = f + h + PTE_BYTES;
        rows.push(Row::info(
            "7. Per resident page: `VmPage` + reverse-map head + object page index + PTE".into(),
            format!("{b:.1} B"),
            format!("Linux {LINUX_PAGE_BYTES} B + {PTE_BYTES} B PTE"),
            Some(b / (LINUX_PAGE_BYTES + PTE_BYTES)),
        ));
    }
    if let Some(t) = i.footprint("touched_entry_heap_bytes") {
        rows.push(Row::info(
            "7. First touch of an entry (object + first page's index)".into(),
            format!("{t:.1} B"),
            "—".into(),
            None,
        ));
    }
    untouched_read_row(i, rows);
}

/// Everything a frame of RAM costs in metadata, measured: the frame
/// allocator's `VmPage` and the x86_64 pmap's reverse-map head.
fn per_frame_row(i: &Input) -> Option<Row> {
    let page = i.footprint("frame_allocator_bytes_per_frame")?;
    let pv = i.footprint("pmap_bytes_per_frame")?;
    let total = i.footprint("system_bytes_per_frame")?;
    Some(Row {
        figure: "7. Per-frame metadata: `VmPage` + x86_64 pmap reverse-map head \
                 (pv list head and its lock)"
            .into(),
        machvm: format!("{total} B ({page} B + {pv} B)"),
        reference: format!(
            "Linux {LINUX_PAGE_BYTES} B (`struct page`), FreeBSD 104 B (`vm_page`): \
             reverse-map fields included"
        ),
        ratio: Some(total / LINUX_PAGE_BYTES),
        // Like for like: Linux's figure includes its reverse-map fields.
        target: format!("≤ {LINUX_PAGE_BYTES} B (Linux)"),
        verdict: Verdict::Judged(total <= LINUX_PAGE_BYTES),
    })
}

/// What reading 256 MiB never written takes.
fn untouched_read_row(i: &Input, rows: &mut Vec<Row>) {
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
        verdict: Verdict::Judged(objects == 0.0),
    });
}
