//! The report's rows: one per figure, and the small-copy crossover.
//!
//! A row is judged against its target only when both sides were measured
//! in this run, in a full run; otherwise it is informational or says why it
//! is not judged. Judged rows compare the same work, except the fault
//! targets (machvm's façade store with no trap against Linux's trapped
//! store), whose rows say what each side includes.

use super::ids;
use super::*;

/// Whether a row's target was judged.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Verdict {
    /// No target: a figure to read.
    Info,
    /// Judged in this run: met or not.
    Judged(bool),
    /// A target this run cannot judge, and why.
    NotJudged(&'static str),
}

/// Why a quick run judges nothing: its figures are short and noisy.
pub(super) const QUICK_NOT_JUDGED: &str = "quick run: not judged";
/// Why a target against Linux is not judged without `--vs-linux`.
pub(super) const LINUX_NOT_MEASURED: &str = "not judged: Linux not measured in this run";

/// One row of the main table.
pub(super) struct Row {
    pub(super) figure: String,
    pub(super) machvm: String,
    pub(super) reference: String,
    pub(super) ratio: Option<f64>,
    pub(super) target: String,
    pub(super) verdict: Verdict,
}

impl Row {
    /// A row without target.
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
            verdict: Verdict::Info,
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
            verdict: Verdict::Judged(ratio <= max),
        }
    }

    /// The row with its target left unjudged for `why` (an informational
    /// row stays so).
    pub(super) fn unjudged(mut self, why: &'static str) -> Row {
        if matches!(self.verdict, Verdict::Judged(_)) {
            self.verdict = Verdict::NotJudged(why);
        }
        self
    }
}

/// Every row of the main table, in figure order; a quick run judges none.
pub(super) fn main_rows(i: &Input) -> Vec<Row> {
    let threshold = i.footprint("small_copy_bytes").unwrap_or(8192.0) as u64;
    let mut rows = Vec::new();
    copy_rows(i, threshold, &mut rows);
    fault_rows(i, &mut rows);
    lookup_rows(i, &mut rows);
    fork_rows(i, &mut rows);
    crossover_rows(i, threshold, &mut rows);
    memory_rows(i, &mut rows);
    scaling_rows(i, &mut rows);
    paging_rows(i, &mut rows);
    if i.quick {
        rows = rows
            .into_iter()
            .map(|r| r.unjudged(QUICK_NOT_JUDGED))
            .collect();
    }
    rows
}

/// Figure 1. Virtual and eager copies against each other, `memcpy` and
/// Linux write-protecting the same pages.
fn copy_rows(i: &Input, threshold: u64, rows: &mut Vec<Row>) {
    untouched_rows(i, threshold, rows);
    let resident = i.params(&ids::prefix(ids::COPY, ids::VIRTUAL_RESIDENT));
    if let Some(&hi) = resident.last() {
        rows.extend(resident_row(i, hi));
        if let (Some(t), Some(m)) = (
            i.get(&ids::full(ids::COPY, ids::VIRTUAL_RESIDENT, hi)),
            i.get(&ids::full(ids::COPY, ids::MEMCPY, hi)),
        ) {
            let pages = hi as f64 / PAGE;
            // Per page, not GB/s: the virtual copy moves no byte.
            rows.push(Row::info(
                format!(
                    "1. Virtual copy, resident, per page ({}; moves no byte) vs `memcpy` \
                     of the same bytes",
                    fmt_bytes(hi)
                ),
                fmt_ns(t / pages),
                format!("{} per 4 KiB page (host `memcpy`)", fmt_ns(m / pages)),
                Some(t / m),
            ));
        }
        rows.extend(eager_row(i, hi));
    }
    if let (Some(bw), Some(bytes)) = (i.linux("linux_memcpy_gbps"), i.linux("linux_memcpy_bytes")) {
        rows.push(Row::info(
            format!(
                "1. `memcpy` bandwidth, Linux probe ({})",
                fmt_bytes(bytes as u64)
            ),
            "—".into(),
            format!("{bw:.2} GB/s"),
            None,
        ));
    }
}

/// The untouched virtual copy: its target compares copy-on-write copies
/// only (the smallest sizes are byte copies, other work); the smallest size
/// beside it, for information.
fn untouched_rows(i: &Input, threshold: u64, rows: &mut Vec<Row>) {
    let untouched = i.params(&ids::prefix(ids::COPY, ids::VIRTUAL_UNTOUCHED));
    let at = |s: u64| i.get(&ids::full(ids::COPY, ids::VIRTUAL_UNTOUCHED, s));
    let Some(&hi) = untouched.last() else {
        return;
    };
    if let Some(&lo) = untouched.iter().find(|&&s| s > threshold)
        && lo < hi
        && let (Some(a), Some(b)) = (at(lo), at(hi))
    {
        rows.push(Row::ratio_target(
            format!(
                "1. Virtual copy, untouched, per call: {} vs {} (smallest copy-on-write size)",
                fmt_bytes(hi),
                fmt_bytes(lo)
            ),
            b,
            (a, format!("machvm, {}", fmt_bytes(lo))),
            2.0,
        ));
    }
    if let Some(&lo) = untouched.first()
        && lo <= threshold
        && let (Some(a), Some(b)) = (at(lo), at(hi))
    {
        rows.push(Row::info(
            format!(
                "1. Virtual copy, untouched, per call: {} vs {} (a byte copy: at most \
                 `SMALL_COPY_BYTES`)",
                fmt_bytes(hi),
                fmt_bytes(lo)
            ),
            fmt_ns(b),
            format!("{} (machvm, {})", fmt_ns(a), fmt_bytes(lo)),
            Some(b / a),
        ));
    }
}

/// Write-protecting resident pages per page, machvm's way against Linux's:
/// `mprotect(PROT_READ)` is the same work, `fork` (a secondary reference)
/// also copies every page table entry and counts the page's mappings.
fn protect_reference(i: &Input) -> (String, Option<f64>) {
    let (f, label) = i.reference("linux_fork_per_page_ns", PUBLISHED_FORK_PER_PAGE_NS);
    let fork = format!(
        "Linux `fork` {} ({label}; also copies PTEs, counts mappings)",
        fmt_ns(f)
    );
    match i.linux("linux_mprotect_per_page_ns") {
        Some(m) => (
            format!(
                "{} (Linux `mprotect(PROT_READ)` per resident page, measured: the same \
                 work); {fork}",
                fmt_ns(m)
            ),
            Some(m),
        ),
        None => (
            format!("— (Linux `mprotect` not measured: pass `--vs-linux`); {fork}"),
            None,
        ),
    }
}

/// The resident virtual copy per page: it write-protects the source.
fn resident_row(i: &Input, hi: u64) -> Option<Row> {
    let t = i.get(&ids::full(ids::COPY, ids::VIRTUAL_RESIDENT, hi))?;
    let per_page = t / (hi as f64 / PAGE);
    let (reference, m) = protect_reference(i);
    Some(Row::info(
        format!(
            "1. Virtual copy, resident, per page ({}): write-protects the source, moves no byte",
            fmt_bytes(hi)
        ),
        fmt_ns(per_page),
        reference,
        m.map(|m| per_page / m),
    ))
}

/// The eager copy of `size` bytes against `memcpy`'s bandwidth, both
/// moving every byte (the only copies shown in GB/s).
fn eager_row(i: &Input, size: u64) -> Option<Row> {
    let t = i.get(&ids::full(ids::COPY, ids::EAGER, size))?;
    let m = i.get(&ids::full(ids::COPY, ids::MEMCPY, size))?;
    let ratio = m / t;
    Some(Row {
        figure: format!(
            "1. Eager copy, resident, {} vs `memcpy` bandwidth (both move every byte)",
            fmt_bytes(size)
        ),
        machvm: format!("{} ({:.2} GB/s)", fmt_ns(t), size as f64 / t),
        reference: format!("{} ({:.2} GB/s, host)", fmt_ns(m), size as f64 / m),
        ratio: Some(ratio),
        target: "≥ 0.8× bandwidth".into(),
        verdict: Verdict::Judged(ratio >= 0.8),
    })
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
                    verdict: Verdict::Judged(m <= 20.0),
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

/// Figure 5. `fork` per resident page and per untouched entry. machvm's
/// `fork` write-protects the parent's pages and maps nothing in the child:
/// Linux's `mprotect` is the same work, its `fork` more.
fn fork_rows(i: &Input, rows: &mut Vec<Row>) {
    let grid = fork_grid(i);
    let (Some(&m_hi), Some(&n_hi)) = (
        grid.iter().map(|(_, m)| m).max(),
        grid.iter().map(|(n, _)| n).max(),
    ) else {
        return;
    };
    let one = |m: u64| i.get(&ids::full(ids::FORK, ids::FORK, ids::fork_param(1, m)));
    let Some(base) = one(0) else {
        return;
    };
    if let Some(big) = one(m_hi)
        && m_hi > 0
    {
        let per_page = (big - base) / m_hi as f64;
        let (reference, m) = protect_reference(i);
        rows.push(Row::info(
            format!(
                "5. `fork` per resident page (1 entry, {m_hi} pages): write-protects the parent's"
            ),
            fmt_ns(per_page),
            reference,
            m.map(|m| per_page / m),
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
