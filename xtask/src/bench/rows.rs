//! The report's rows: one per figure, and the small-copy crossover.

use super::*;
use machvm_benches::ids;

/// One row of the main table.
pub(super) struct Row {
    pub(super) figure: String,
    pub(super) machvm: String,
    pub(super) reference: String,
    pub(super) ratio: Option<f64>,
    pub(super) target: String,
    pub(super) met: Option<bool>,
}

impl Row {
    pub(super) fn info(
        figure: String,
        machvm: String,
        reference: String,
        ratio: Option<f64>,
    ) -> Row {
        Row {
            figure,
            machvm,
            reference,
            ratio,
            target: "—".into(),
            met: None,
        }
    }

    /// A row whose target is `ratio <= max`.
    pub(super) fn ratio_target(
        figure: String,
        machvm: f64,
        reference: (f64, String),
        max: f64,
    ) -> Row {
        let ratio = machvm / reference.0;
        Row {
            figure,
            machvm: fmt_ns(machvm),
            reference: format!("{} ({})", fmt_ns(reference.0), reference.1),
            ratio: Some(ratio),
            target: format!("≤ {max}×"),
            met: Some(ratio <= max),
        }
    }
}

pub(super) fn main_rows(i: &Input) -> Vec<Row> {
    let threshold = i.footprint("small_copy_bytes").unwrap_or(8192.0) as u64;
    let mut rows = Vec::new();
    copy_rows(i, threshold, &mut rows);
    fault_rows(i, &mut rows);
    scaling_rows(i, &mut rows);
    lookup_rows(i, &mut rows);
    fork_rows(i, &mut rows);
    crossover_rows(i, threshold, &mut rows);
    size_rows(i, &mut rows);
    rows
}

/// Figure 1. Virtual and eager copies against each other and `memcpy`.
fn copy_rows(i: &Input, threshold: u64, rows: &mut Vec<Row>) {
    let untouched = i.params(&ids::prefix(ids::COPY, ids::VIRTUAL_UNTOUCHED));
    if let (Some(&lo), Some(&hi)) = (untouched.first(), untouched.last())
        && let (Some(a), Some(b)) = (
            i.get(&ids::full(ids::COPY, ids::VIRTUAL_UNTOUCHED, lo)),
            i.get(&ids::full(ids::COPY, ids::VIRTUAL_UNTOUCHED, hi)),
        )
    {
        rows.push(Row::ratio_target(
            format!(
                "1. Virtual copy, untouched: {} vs {}",
                fmt_bytes(hi),
                fmt_bytes(lo)
            ),
            b,
            (a, format!("machvm, {}", fmt_bytes(lo))),
            2.0,
        ));
    }
    // The smallest sizes are byte copies (`SMALL_COPY_BYTES`); compare with
    // the smallest copy-on-write one too.
    if let (Some(&lo), Some(&hi)) = (untouched.iter().find(|&&s| s > threshold), untouched.last())
        && lo < hi
        && let (Some(a), Some(b)) = (
            i.get(&ids::full(ids::COPY, ids::VIRTUAL_UNTOUCHED, lo)),
            i.get(&ids::full(ids::COPY, ids::VIRTUAL_UNTOUCHED, hi)),
        )
    {
        rows.push(Row::info(
            format!(
                "1. Virtual copy, untouched: {} vs {} (smallest copy-on-write size)",
                fmt_bytes(hi),
                fmt_bytes(lo)
            ),
            fmt_ns(b),
            fmt_ns(a),
            Some(b / a),
        ));
    }
    let resident = i.params(&ids::prefix(ids::COPY, ids::VIRTUAL_RESIDENT));
    if let Some(&hi) = resident.last() {
        if let Some(t) = i.get(&ids::full(ids::COPY, ids::VIRTUAL_RESIDENT, hi)) {
            let per_page = t / (hi as f64 / PAGE);
            let (r, label) = i.reference("linux_fork_per_page_ns", PUBLISHED_FORK_PER_PAGE_NS);
            rows.push(Row::ratio_target(
                format!(
                    "1. Virtual copy, resident, per page ({}) vs Linux `fork` per resident page",
                    fmt_bytes(hi)
                ),
                per_page,
                (r, label.into()),
                0.25,
            ));
        }
        if let (Some(t), Some(m)) = (
            i.get(&ids::full(ids::COPY, ids::VIRTUAL_RESIDENT, hi)),
            i.get(&ids::full(ids::COPY, ids::MEMCPY, hi)),
        ) {
            rows.push(Row::info(
                format!("1. Virtual copy, resident, {} vs `memcpy`", fmt_bytes(hi)),
                fmt_ns(t),
                format!("{} (host)", fmt_ns(m)),
                Some(t / m),
            ));
        }
        rows.extend(eager_row(i, hi));
    }
    if let Some(bw) = i.linux("linux_memcpy_gbps") {
        rows.push(Row::info(
            "1. `memcpy` bandwidth, Linux probe".into(),
            "—".into(),
            format!("{bw:.2} GB/s"),
            None,
        ));
    }
}

/// Figure 2, 3. The fault handler against Linux's trapped faults.
fn fault_rows(i: &Input, rows: &mut Vec<Row>) {
    for (n, name, id, key, published) in [
        (
            2,
            "Copy-on-write fault",
            ids::COW,
            "linux_cow_fault_ns",
            PUBLISHED_COW_NS,
        ),
        (
            3,
            "Zero-fill fault",
            ids::ZERO_FILL,
            "linux_zero_fill_ns",
            PUBLISHED_ZERO_FILL_NS,
        ),
    ] {
        if let Some(t) = i.get(&ids::plain(ids::FAULT, id)) {
            let (r, label) = i.reference(key, published);
            rows.push(Row::ratio_target(
                format!("{n}. {name}, per page (machvm: handler alone; Linux: with trap)"),
                t,
                (r, label.into()),
                0.25,
            ));
        }
    }
}

/// Figure 4. Entry lookup against a `BTreeMap`.
fn lookup_rows(i: &Input, rows: &mut Vec<Row>) {
    for n in i.params(&ids::prefix(
        ids::LOOKUP,
        &ids::lookup_fn(true, ids::LOOKUP_PATTERNS[0]),
    )) {
        for pattern in ids::LOOKUP_PATTERNS {
            let (Some(m), Some(b)) = (
                i.get(&ids::full(ids::LOOKUP, &ids::lookup_fn(true, pattern), n)),
                i.get(&ids::full(ids::LOOKUP, &ids::lookup_fn(false, pattern), n)),
            ) else {
                continue;
            };
            let figure = format!("4. Lookup, {n} entries, {pattern}");
            let reference = (b, "`BTreeMap` range lookup".to_string());
            rows.push(match (n, pattern) {
                (100_000, "random") => Row::ratio_target(figure, m, reference, 1.0),
                (100_000, _) => Row {
                    figure: format!("{figure} (hint)"),
                    machvm: fmt_ns(m),
                    reference: format!("{} (`BTreeMap`); target 20 ns", fmt_ns(b)),
                    ratio: Some(m / b),
                    target: "≤ 20 ns".into(),
                    met: Some(m <= 20.0),
                },
                _ => Row::info(
                    figure,
                    fmt_ns(m),
                    format!("{} (`BTreeMap`)", fmt_ns(b)),
                    Some(m / b),
                ),
            });
        }
    }
}

/// Figure 5. `fork` per resident page and per untouched entry.
fn fork_rows(i: &Input, rows: &mut Vec<Row>) {
    let grid = fork_grid(i);
    if let (Some(&m_hi), Some(&n_hi)) = (
        grid.iter().map(|(_, m)| m).max(),
        grid.iter().map(|(n, _)| n).max(),
    ) {
        let one = |m: u64| i.get(&ids::full(ids::FORK, ids::FORK, ids::fork_param(1, m)));
        if let (Some(base), Some(big)) = (one(0), one(m_hi)) {
            if m_hi > 0 {
                let per_page = (big - base) / m_hi as f64;
                let (r, label) = i.reference("linux_fork_per_page_ns", PUBLISHED_FORK_PER_PAGE_NS);
                rows.push(Row::info(
                    format!("5. `fork` per resident page (1 entry, {m_hi} pages)"),
                    fmt_ns(per_page),
                    format!("{} ({label})", fmt_ns(r)),
                    Some(per_page / r),
                ));
            }
            if let Some(many) = i.get(&ids::full(ids::FORK, ids::FORK, ids::fork_param(n_hi, 0)))
                && n_hi > 1
            {
                rows.push(Row::info(
                    format!("5. `fork` per untouched entry ({n_hi} entries)"),
                    fmt_ns((many - base) / (n_hi - 1) as f64),
                    "—".into(),
                    None,
                ));
            }
        }
    }
}

/// Figure 6. Where copy-on-write starts to beat bytes.
fn crossover_rows(i: &Input, threshold: u64, rows: &mut Vec<Row>) {
    for scenario in ["transfer", "cycle"] {
        if let Some(c) = crossover(i, scenario, threshold) {
            rows.push(Row::info(
                format!("6. Small-copy crossover, {scenario}"),
                c.describe(),
                format!("`SMALL_COPY_BYTES` = {threshold}"),
                None,
            ));
        }
    }
}

/// Figure 7. Memory per frame, per entry and per resident page.
fn size_rows(i: &Input, rows: &mut Vec<Row>) {
    if let Some(b) = i.footprint("vm_page_bytes") {
        rows.push(Row {
            figure: "7. Per-frame metadata (`VmPage`)".into(),
            machvm: format!("{b} B"),
            reference: "Linux 64 B (`struct page`), FreeBSD 104 B".into(),
            ratio: Some(b / 64.0),
            target: "≤ 32 B".into(),
            met: Some(b <= 32.0),
        });
    }
    if let (Some(s), Some(h)) = (
        i.footprint("entry_struct_bytes"),
        i.footprint("entry_heap_bytes"),
    ) {
        let vma = i.linux("linux_vma_bytes");
        rows.push(Row::info(
            "7. Per map entry (untouched): struct + key / heap incl. B-tree".into(),
            format!("{s} B / {h:.1} B"),
            vma.map_or("—".into(), |v| {
                format!("Linux `vm_area_struct` {v} B (slabinfo)")
            }),
            vma.map(|v| h / v),
        ));
    }
    if let (Some(p), Some(h)) = (
        i.footprint("vm_page_bytes"),
        i.footprint("resident_page_heap_bytes"),
    ) {
        rows.push(Row::info(
            "7. Per resident page: `VmPage` + object page index + PTE".into(),
            format!("{:.1} B", p + h + 8.0),
            "Linux 64 B + 8 B PTE".into(),
            Some((p + h + 8.0) / 72.0),
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
}

/// (entries, resident pages) of every fork result.
pub(super) fn fork_grid(i: &Input) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = i
        .medians
        .keys()
        .filter_map(|k| {
            let p = k
                .strip_prefix(&ids::prefix(ids::FORK, ids::FORK))?
                .strip_prefix('n')?;
            let (n, m) = p.split_once("_m")?;
            Some((n.parse().ok()?, m.parse().ok()?))
        })
        .collect();
    v.sort_unstable();
    v
}

/// Where copy-on-write starts to beat byte copying in the small-copy group.
pub(super) struct Crossover {
    /// Smallest whole-page size from which copy-on-write is cheaper at every
    /// larger size measured; `None`: bytes never lose.
    pub(super) from_bytes: Option<u64>,
    /// Whether copy-on-write below the current threshold was extrapolated.
    pub(super) extrapolated: bool,
    /// The crossover rounded down to a power of two (bytes still win
    /// there), as `SMALL_COPY_BYTES` would be set.
    pub(super) recommended: u64,
}

impl Crossover {
    pub(super) fn describe(&self) -> String {
        let at = match self.from_bytes {
            Some(b) => format!("copy-on-write cheaper from {} page(s) up", b / PAGE as u64),
            None => "bytes cheaper at every size measured".into(),
        };
        format!(
            "{at}{}; suggests {}",
            if self.extrapolated {
                " (below the threshold: linear fit)"
            } else {
                ""
            },
            self.recommended
        )
    }
}

/// Copy-on-write cost per size: measured above `threshold` (where
/// `vm_read` uses it), a least-squares line in pages below.
pub(super) fn crossover(i: &Input, scenario: &str, threshold: u64) -> Option<Crossover> {
    let bytes_id = |s: u64| ids::full(ids::SMALL_COPY, &ids::small_copy_fn(scenario, false), s);
    let read_id = |s: u64| ids::full(ids::SMALL_COPY, &ids::small_copy_fn(scenario, true), s);
    let sizes: Vec<u64> = i
        .params(&ids::prefix(
            ids::SMALL_COPY,
            &ids::small_copy_fn(scenario, false),
        ))
        .into_iter()
        .filter(|s| s % PAGE as u64 == 0)
        .collect();
    let cow: Vec<(f64, f64)> = sizes
        .iter()
        .filter(|&&s| s > threshold)
        .filter_map(|&s| Some((s as f64 / PAGE, i.get(&read_id(s))?)))
        .collect();
    let (a, b) = fit(&cow)?;
    let mut extrapolated = false;
    let mut points = Vec::new();
    for &s in &sizes {
        let bytes = i.get(&bytes_id(s))?;
        let c = if s > threshold {
            i.get(&read_id(s))?
        } else {
            extrapolated = true;
            a + b * (s as f64 / PAGE)
        };
        points.push((s, c < bytes));
    }
    // From the top down: the smallest size after which COW always wins.
    let mut from = None;
    for &(s, cow_wins) in points.iter().rev() {
        if !cow_wins {
            break;
        }
        from = Some(s);
    }
    let recommended = match from {
        Some(f) if f > PAGE as u64 => prev_power_of_two(f - PAGE as u64),
        Some(_) => 0,
        None => sizes.last().copied().map_or(0, prev_power_of_two),
    };
    Some(Crossover {
        from_bytes: from,
        extrapolated,
        recommended,
    })
}

pub(super) fn prev_power_of_two(x: u64) -> u64 {
    if x == 0 {
        0
    } else {
        1 << (63 - x.leading_zeros())
    }
}

/// Least-squares line `y = a + b·x`; needs two distinct x.
pub(super) fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    Some((my - b * mx, b))
}
