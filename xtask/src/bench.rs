//! `cargo xtask bench`: runs the criterion suite of `benches/` (issue 6),
//! reads criterion's medians and writes `target/machvm-bench/summary.md`
//! (figure, machvm, reference, ratio, target met?) and `copy.svg` (copy
//! time against size: virtual, eager, memcpy).
//!
//! - `--vs-linux` also runs `linux-probe` (in the same run) for Linux's
//!   zero-fill fault, copy-on-write fault, `fork` per resident page and
//!   `memcpy` bandwidth; without it the references are the issue's figures.
//! - `--quick` is the CI smoke test: short measurements, fewer sizes, under
//!   two minutes once built; no threshold fails it.
//!
//! Builds go to `target/bench` so that they never wait on other builds. The
//! task fails only if something did not run; a missed target is reported.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::{env_cargo, workspace_root};

pub(crate) const USAGE: &str = concat!(
    "  bench       run the criterion suite (benches/), write\n",
    "              target/machvm-bench/summary.md and copy.svg\n",
    "              options: --quick (CI smoke test, < 2 min), --vs-linux\n",
    "              (measure Linux beside machvm in the same run)"
);

const PAGE: f64 = 4096.0;

/// Keeps glibc's memcpy off `rep movsb` (see [`Runner::command`]).
const MEMCPY_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=1000000000000";

/// The issue's Linux figures, used when `--vs-linux` is not given.
const ISSUE_FORK_PER_PAGE_NS: f64 = 130.0;
const ISSUE_COW_NS: f64 = 4000.0;
const ISSUE_ZERO_FILL_NS: f64 = 3000.0;

/// `cargo xtask bench [--quick] [--vs-linux]`.
pub(crate) fn bench(rest: &[String]) -> bool {
    let (mut quick, mut vs_linux) = (false, false);
    for a in rest {
        match a.as_str() {
            "--quick" => quick = true,
            "--vs-linux" => vs_linux = true,
            "-h" | "--help" => {
                eprintln!("usage: cargo xtask bench [--quick] [--vs-linux]\n{USAGE}");
                return true;
            }
            other => {
                eprintln!("xtask bench: unknown option {other}\n{USAGE}");
                return false;
            }
        }
    }
    let started = Instant::now();
    let root = workspace_root();
    let target = root.join("target").join("bench");
    let criterion_dir = target.join("criterion");
    // Stale results of another profile would mix into the table.
    if criterion_dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&criterion_dir)
    {
        eprintln!("xtask bench: cannot clear {}: {e}", criterion_dir.display());
        return false;
    }
    let run = Runner {
        root: &root,
        target: &target,
        quick,
    };
    if !run.cargo(&["bench", "-p", "machvm-benches", "--bench", "vm"]) {
        eprintln!("xtask bench: the criterion suite failed");
        return false;
    }
    let Some(footprint) = run.bin("machvm-footprint") else {
        return false;
    };
    let linux = if vs_linux {
        match run.bin("linux-probe") {
            Some(l) => Some(l),
            None => return false,
        }
    } else {
        None
    };
    let medians = match read_medians(&criterion_dir) {
        Ok(m) if !m.is_empty() => m,
        Ok(_) => {
            eprintln!("xtask bench: no results in {}", criterion_dir.display());
            return false;
        }
        Err(e) => {
            eprintln!("xtask bench: reading results: {e}");
            return false;
        }
    };
    let input = Input {
        medians,
        footprint,
        linux,
        quick,
        machine: machine(),
        date: today(),
        seconds: started.elapsed().as_secs(),
    };
    let out = root.join("target").join("machvm-bench");
    let summary = summary(&input);
    let svg = copy_svg(&input.medians);
    let written = std::fs::create_dir_all(&out)
        .and_then(|()| std::fs::write(out.join("summary.md"), &summary))
        .and_then(|()| std::fs::write(out.join("copy.svg"), &svg));
    if let Err(e) = written {
        eprintln!("xtask bench: writing {}: {e}", out.display());
        return false;
    }
    println!("{summary}");
    eprintln!(
        "xtask bench: wrote {} and copy.svg ({} s)",
        out.join("summary.md").display(),
        input.seconds
    );
    true
}

/// Runs cargo with the bench target directory and profile environment.
struct Runner<'a> {
    root: &'a Path,
    target: &'a Path,
    quick: bool,
}

impl Runner<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env_cargo());
        c.args(args)
            .current_dir(self.root)
            // Absolute: criterion writes its results under it, and runs
            // from the package directory.
            .env("CARGO_TARGET_DIR", self.target);
        // glibc's `rep movsb` memcpy (2 KiB up to L2 size) runs at about
        // 2 GB/s on this host's CPUs, 30x below its vector loop: the
        // reference is the machine's limit, not that quirk.
        if std::env::var_os("GLIBC_TUNABLES").is_none() {
            c.env("GLIBC_TUNABLES", MEMCPY_TUNABLE);
        }
        if self.quick {
            c.env("MACHVM_BENCH_QUICK", "1");
        } else {
            c.env_remove("MACHVM_BENCH_QUICK");
        }
        c
    }

    fn cargo(&self, args: &[&str]) -> bool {
        eprintln!(
            "$ CARGO_TARGET_DIR={} cargo {}",
            self.target.display(),
            args.join(" ")
        );
        match self.command(args).status() {
            Ok(s) => s.success(),
            Err(e) => {
                eprintln!("xtask bench: cannot run cargo: {e}");
                false
            }
        }
    }

    /// Runs a binary of the benches package; its `key=value` lines.
    fn bin(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let args = [
            "run",
            "--quiet",
            "--profile",
            "bench",
            "-p",
            "machvm-benches",
            "--bin",
            name,
        ];
        eprintln!("$ cargo {}", args.join(" "));
        let out = match self.command(&args).output() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("xtask bench: cannot run cargo: {e}");
                return None;
            }
        };
        if !out.status.success() {
            eprintln!(
                "xtask bench: {name} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        eprint!("{text}");
        Some(parse_key_values(&text))
    }
}

/// `key=value` lines into a map (other lines ignored).
fn parse_key_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Every `<id>/new/` result under `dir`: criterion's full id → median (ns).
fn read_medians(dir: &Path) -> Result<BTreeMap<String, f64>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "new") {
                let bench = std::fs::read_to_string(p.join("benchmark.json"));
                let est = std::fs::read_to_string(p.join("estimates.json"));
                if let (Ok(b), Ok(e)) = (bench, est)
                    && let (Some(id), Some(m)) = (json_string(&b, "full_id"), median_ns(&e))
                {
                    out.insert(id, m);
                }
            } else {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

/// The string value of `"key":"…"` in flat JSON (ids hold no quotes).
fn json_string(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let at = json.find(&pat)? + pat.len();
    let end = json[at..].find('"')?;
    Some(json[at..at + end].to_string())
}

/// `median.point_estimate` of criterion's `estimates.json`.
fn median_ns(json: &str) -> Option<f64> {
    let m = json.find("\"median\":")?;
    let pat = "\"point_estimate\":";
    let at = m + json[m..].find(pat)? + pat.len();
    let end = json[at..].find([',', '}']).map_or(json.len(), |e| at + e);
    json[at..end].trim().parse().ok()
}

/// Everything the summary is made from.
struct Input {
    medians: BTreeMap<String, f64>,
    footprint: BTreeMap<String, String>,
    linux: Option<BTreeMap<String, String>>,
    quick: bool,
    machine: String,
    date: String,
    seconds: u64,
}

impl Input {
    fn get(&self, id: &str) -> Option<f64> {
        self.medians.get(id).copied()
    }

    fn linux(&self, key: &str) -> Option<f64> {
        self.linux.as_ref()?.get(key)?.parse().ok()
    }

    fn footprint(&self, key: &str) -> Option<f64> {
        self.footprint.get(key)?.parse().ok()
    }

    /// Parameters (as numbers) measured for `prefix/…`, ascending.
    fn params(&self, prefix: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .medians
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// A Linux figure, or the issue's when not measured; and its label.
    fn reference(&self, key: &str, issue: f64) -> (f64, &'static str) {
        match self.linux(key) {
            Some(v) => (v, "Linux, measured"),
            None => (issue, "Linux, issue's figure"),
        }
    }
}

/// One row of the main table.
struct Row {
    figure: String,
    machvm: String,
    reference: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn info(figure: String, machvm: String, reference: String, ratio: Option<f64>) -> Row {
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
    fn ratio_target(figure: String, machvm: f64, reference: (f64, String), max: f64) -> Row {
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

fn main_rows(i: &Input) -> Vec<Row> {
    let mut rows = Vec::new();
    // 1. Virtual copy.
    let untouched = i.params("copy/virtual_untouched/");
    if let (Some(&lo), Some(&hi)) = (untouched.first(), untouched.last())
        && let (Some(a), Some(b)) = (
            i.get(&format!("copy/virtual_untouched/{lo}")),
            i.get(&format!("copy/virtual_untouched/{hi}")),
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
    let threshold = i.footprint("small_copy_bytes").unwrap_or(8192.0) as u64;
    if let (Some(&lo), Some(&hi)) = (untouched.iter().find(|&&s| s > threshold), untouched.last())
        && lo < hi
        && let (Some(a), Some(b)) = (
            i.get(&format!("copy/virtual_untouched/{lo}")),
            i.get(&format!("copy/virtual_untouched/{hi}")),
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
    let resident = i.params("copy/virtual_resident/");
    if let Some(&hi) = resident.last() {
        if let Some(t) = i.get(&format!("copy/virtual_resident/{hi}")) {
            let per_page = t / (hi as f64 / PAGE);
            let (r, label) = i.reference("linux_fork_per_page_ns", ISSUE_FORK_PER_PAGE_NS);
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
        for (what, id) in [
            ("Virtual copy", "virtual_resident"),
            ("Eager copy", "eager"),
        ] {
            if let (Some(t), Some(m)) = (
                i.get(&format!("copy/{id}/{hi}")),
                i.get(&format!("copy/memcpy/{hi}")),
            ) {
                rows.push(Row::info(
                    format!("1. {what}, resident, {} vs `memcpy`", fmt_bytes(hi)),
                    format!("{} ({:.2} GB/s)", fmt_ns(t), hi as f64 / t),
                    format!("{} ({:.2} GB/s, host)", fmt_ns(m), hi as f64 / m),
                    Some(t / m),
                ));
            }
        }
    }
    if let Some(bw) = i.linux("linux_memcpy_gbps") {
        rows.push(Row::info(
            "1. `memcpy` bandwidth, Linux probe".into(),
            "—".into(),
            format!("{bw:.2} GB/s"),
            None,
        ));
    }
    // 2, 3. Faults.
    for (n, name, id, key, issue) in [
        (
            2,
            "Copy-on-write fault",
            "fault/cow",
            "linux_cow_fault_ns",
            ISSUE_COW_NS,
        ),
        (
            3,
            "Zero-fill fault",
            "fault/zero_fill",
            "linux_zero_fill_ns",
            ISSUE_ZERO_FILL_NS,
        ),
    ] {
        if let Some(t) = i.get(id) {
            let (r, label) = i.reference(key, issue);
            rows.push(Row::ratio_target(
                format!("{n}. {name}, per page (machvm: handler alone; Linux: with trap)"),
                t,
                (r, label.into()),
                0.25,
            ));
        }
    }
    // 4. Lookup.
    for n in i.params("lookup/machvm_random/") {
        for pattern in ["random", "sequential"] {
            let (Some(m), Some(b)) = (
                i.get(&format!("lookup/machvm_{pattern}/{n}")),
                i.get(&format!("lookup/btreemap_{pattern}/{n}")),
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
    // 5. Fork.
    let grid = fork_grid(i);
    if let (Some(&m_hi), Some(&n_hi)) = (
        grid.iter().map(|(_, m)| m).max(),
        grid.iter().map(|(n, _)| n).max(),
    ) {
        let one = |m: u64| i.get(&format!("fork/fork/n1_m{m}"));
        if let (Some(base), Some(big)) = (one(0), one(m_hi)) {
            if m_hi > 0 {
                let per_page = (big - base) / m_hi as f64;
                let (r, label) = i.reference("linux_fork_per_page_ns", ISSUE_FORK_PER_PAGE_NS);
                rows.push(Row::info(
                    format!("5. `fork` per resident page (1 entry, {m_hi} pages)"),
                    fmt_ns(per_page),
                    format!("{} ({label})", fmt_ns(r)),
                    Some(per_page / r),
                ));
            }
            if let Some(many) = i.get(&format!("fork/fork/n{n_hi}_m0"))
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
    // 6. Small-copy crossover.
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
    // 7. Sizes.
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
    rows
}

/// (entries, resident pages) of every fork result.
fn fork_grid(i: &Input) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = i
        .medians
        .keys()
        .filter_map(|k| {
            let p = k.strip_prefix("fork/fork/n")?;
            let (n, m) = p.split_once("_m")?;
            Some((n.parse().ok()?, m.parse().ok()?))
        })
        .collect();
    v.sort_unstable();
    v
}

/// Where copy-on-write starts to beat byte copying in benchmark 6.
struct Crossover {
    /// Smallest whole-page size from which copy-on-write is cheaper at every
    /// larger size measured; `None`: bytes never lose.
    from_bytes: Option<u64>,
    /// Whether copy-on-write below the current threshold was extrapolated.
    extrapolated: bool,
    /// The crossover rounded down to a power of two (bytes still win
    /// there), as `SMALL_COPY_BYTES` would be set.
    recommended: u64,
}

impl Crossover {
    fn describe(&self) -> String {
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
fn crossover(i: &Input, scenario: &str, threshold: u64) -> Option<Crossover> {
    let bytes_id = |s: u64| format!("small_copy/{scenario}_bytes/{s}");
    let read_id = |s: u64| format!("small_copy/{scenario}_vm_read/{s}");
    let sizes: Vec<u64> = i
        .params(&format!("small_copy/{scenario}_bytes/"))
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

fn prev_power_of_two(x: u64) -> u64 {
    if x == 0 {
        0
    } else {
        1 << (63 - x.leading_zeros())
    }
}

/// Least-squares line `y = a + b·x`; needs two distinct x.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
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

fn summary(i: &Input) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# machvm benchmarks\n");
    let _ = writeln!(
        s,
        "{} · {} · {} profile · {} s · medians of one run (criterion)\n",
        i.date,
        i.machine,
        if i.quick {
            "quick (smoke test: short, noisy)"
        } else {
            "full"
        },
        i.seconds
    );
    let _ = writeln!(
        s,
        "machvm runs on the host x86_64 backend over simulated RAM; its fault \
         figures are the handler alone (`VmMap::fault`, no trap). {}\n",
        match i.linux.as_ref().and_then(|l| l.get("linux_release")) {
            Some(r) => format!(
                "Linux's figures were measured in this run by `linux-probe` on Linux {r} \
                 (THP off for the probe's mappings, median of repeats): they include the \
                 hardware trap, kernel entry and exit — machvm's do not."
            ),
            None => "Linux's figures are the issue's (not measured in this run; pass \
                     `--vs-linux`); they include the hardware trap — machvm's do not."
                .into(),
        }
    );
    let _ = writeln!(
        s,
        "Copies of at most `SMALL_COPY_BYTES` ({} B) are byte copies, so the \
         smallest virtual copies are not copy-on-write. The host `memcpy` is glibc's \
         with `{MEMCPY_TUNABLE}` (unless `GLIBC_TUNABLES` was set): its `rep movsb` \
         path runs at about 2 GB/s on this host.\n",
        i.footprint("small_copy_bytes").unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        s,
        "| Figure | machvm | Reference | Ratio | Target | Met? |\n|---|---|---|---|---|---|"
    );
    for r in main_rows(i) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.figure,
            r.machvm,
            r.reference,
            r.ratio.map_or("—".into(), |x| format!("{x:.3}")),
            r.target,
            match r.met {
                Some(true) => "**met**",
                Some(false) => "**missed**",
                None => "—",
            }
        );
    }
    let _ = writeln!(
        s,
        "\nHow the figures are taken: each copy, fork or fault starts from the same \
         state (the source resident and writable), restored untimed between iterations. \
         Eager copy: the same `vm_map_copy` with the destination 8 bytes off a page \
         boundary, which forces bytes. Lookup: entries of 4 pages, timed per lookup \
         under one lock per batch (`VmMap::lookup_many`); the sequential sweep visits \
         every page in order, so the hint can hit 3 times in 4. `fork` per resident page: \
         (t(1 entry, M pages) − t(1 entry, 0)) / M. Small-copy crossover: the smallest \
         whole-page size from which copy-on-write stays cheaper; below \
         `SMALL_COPY_BYTES` it is a least-squares line through the copy-on-write sizes; \
         *suggests* is the size below it rounded down to a power of two (0: only \
         sub-page copies as bytes)."
    );
    small_copy_table(&mut s, i);
    fork_table(&mut s, i);
    let _ = writeln!(
        s,
        "\n![copy time against size](copy.svg)\n\n## All medians\n\n| Benchmark | Median |\n|---|---|"
    );
    for (k, v) in &i.medians {
        let _ = writeln!(s, "| `{k}` | {} |", fmt_ns(*v));
    }
    s
}

fn small_copy_table(s: &mut String, i: &Input) {
    let sizes = i.params("small_copy/transfer_bytes/");
    if sizes.is_empty() {
        return;
    }
    let threshold = i.footprint("small_copy_bytes").unwrap_or(8192.0) as u64;
    let _ = writeln!(
        s,
        "\n## 6. `vm_read` + `copyout`, bytes against copy-on-write\n\n\
         `vm_read` copies bytes up to `SMALL_COPY_BYTES` = {threshold} and is \
         copy-on-write above; *bytes* is a byte copy at every size (`read_bytes`, \
         `allocate`, `write_bytes`). *Cycle* adds what copy-on-write defers: the \
         receiver reads each page, the sender writes each page while the copy \
         lives, the receiver deallocates.\n\n\
         | Size | transfer: vm_read | transfer: bytes | cycle: vm_read | cycle: bytes |\n\
         |---|---|---|---|---|"
    );
    for size in sizes {
        let cell = |id: &str| {
            i.get(&format!("small_copy/{id}/{size}"))
                .map_or("—".into(), fmt_ns)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            fmt_bytes(size),
            cell("transfer_vm_read"),
            cell("transfer_bytes"),
            cell("cycle_vm_read"),
            cell("cycle_bytes"),
        );
    }
}

fn fork_table(s: &mut String, i: &Input) {
    let grid = fork_grid(i);
    if grid.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## 5. `fork` (entries × resident pages)\n\n| Entries | Resident pages | Time |\n|---|---|---|"
    );
    for (n, m) in grid {
        if let Some(t) = i.get(&format!("fork/fork/n{n}_m{m}")) {
            let _ = writeln!(s, "| {n} | {m} | {} |", fmt_ns(t));
        }
    }
}

/// One plotted line: label, colour, (bytes, ns) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// The copy plot: time against size, log-log, one line per kind of copy.
fn copy_svg(medians: &BTreeMap<String, f64>) -> String {
    let series = [
        ("virtual_untouched", "virtual copy, untouched", "#1f77b4"),
        ("virtual_resident", "virtual copy, resident", "#2ca02c"),
        ("eager", "eager copy (bytes)", "#d62728"),
        ("memcpy", "memcpy (host)", "#7f7f7f"),
    ];
    let lines: Vec<Series> = series
        .iter()
        .map(|&(id, label, colour)| {
            let prefix = format!("copy/{id}/");
            let mut pts: Vec<(f64, f64)> = medians
                .iter()
                .filter_map(|(k, &v)| Some((k.strip_prefix(&prefix)?.parse::<f64>().ok()?, v)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (label, colour, pts)
        })
        .collect();
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    let (w, h, left, right, top, bottom) = (760.0, 480.0, 80.0, 230.0, 30.0, 50.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">machvm: copy time against size (median, log-log)</text>\n"
    );
    if all.is_empty() {
        svg.push_str("<text x=\"80\" y=\"100\">no copy results</text>\n</svg>\n");
        return svg;
    }
    let lg = |v: f64| v.max(1e-3).log10();
    let x0 = all.iter().map(|p| lg(p.0)).fold(f64::MAX, f64::min);
    let x1 = all
        .iter()
        .map(|p| lg(p.0))
        .fold(f64::MIN, f64::max)
        .max(x0 + 1.0);
    let y0 = all.iter().map(|p| lg(p.1)).fold(f64::MAX, f64::min).floor();
    let y1 = all
        .iter()
        .map(|p| lg(p.1))
        .fold(f64::MIN, f64::max)
        .ceil()
        .max(y0 + 1.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let px = |v: f64| left + (lg(v) - x0) / (x1 - x0) * pw;
    let py = |v: f64| top + ph - (lg(v) - y0) / (y1 - y0) * ph;
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>"
    );
    // Decades of time.
    let mut d = y0 as i32;
    while d as f64 <= y1 {
        let v = 10f64.powi(d);
        let y = py(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + pw,
            left - 6.0,
            y + 4.0,
            fmt_decade(d)
        );
        d += 1;
    }
    // Sizes: every power of 4 in range.
    let mut s = 10f64.powf(x0).round();
    while lg(s) <= x1 + 1e-9 {
        let x = px(s);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + ph,
            top + ph + 16.0,
            fmt_bytes(s as u64)
        );
        s *= 4.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">bytes copied</text>",
        left + pw / 2.0,
        h - 10.0
    );
    for (k, (label, colour, pts)) in lines.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                px(x),
                py(y)
            );
        }
        let ly = top + 20.0 + 20.0 * k as f64;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            lx + 20.0,
            lx + 26.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Nanoseconds, human-readable.
fn fmt_ns(ns: f64) -> String {
    let a = ns.abs();
    if a >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if a >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if a >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else if a >= 1.0 {
        format!("{ns:.1} ns")
    } else {
        format!("{ns:.3} ns")
    }
}

/// `10^d` nanoseconds as an axis label (`100 ns`, `1 µs`, …).
fn fmt_decade(d: i32) -> String {
    let (unit, base) = match d {
        ..=2 => ("ns", 0),
        3..=5 => ("µs", 3),
        6..=8 => ("ms", 6),
        _ => ("s", 9),
    };
    if d < 0 {
        return format!("{} ns", 10f64.powi(d));
    }
    format!("{} {unit}", 10u64.pow((d - base) as u32))
}

/// Bytes as B / KiB / MiB / GiB (exact powers shown without decimals).
fn fmt_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (u, n) in UNITS {
        if b >= n && b.is_multiple_of(n) {
            return format!("{} {u}", b / n);
        }
    }
    format!("{b} B")
}

/// CPU model, cores and kernel, from `/proc`.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil(secs / 86_400)
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_criterion_files() {
        let b = r#"{"group_id":"copy","function_id":"eager","value_str":"4096","throughput":null,"full_id":"copy/eager/4096","directory_name":"copy/eager/4096"}"#;
        assert_eq!(
            json_string(b, "full_id").as_deref(),
            Some("copy/eager/4096")
        );
        let e = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0,"standard_error":0.1},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.5,"upper_bound":2.5},"point_estimate":1796.25,"standard_error":0.2}}"#;
        assert_eq!(median_ns(e), Some(1796.25));
    }

    #[test]
    fn dates_and_units() {
        assert_eq!(civil(0), "1970-01-01");
        assert_eq!(civil(19_782), "2024-02-29");
        assert_eq!(fmt_bytes(1 << 30), "1 GiB");
        assert_eq!(fmt_bytes(12288), "12 KiB");
        assert_eq!(fmt_bytes(64), "64 B");
        assert_eq!(fmt_ns(1500.0), "1.500 µs");
        assert_eq!(prev_power_of_two(12288), 8192);
        assert_eq!(fmt_decade(2), "100 ns");
        assert_eq!(fmt_decade(4), "10 µs");
        assert_eq!(fmt_decade(9), "1 s");
    }

    fn input(medians: &[(&str, f64)]) -> Input {
        Input {
            medians: medians.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            footprint: parse_key_values("small_copy_bytes=8192\nvm_page_bytes=32\n"),
            linux: None,
            quick: true,
            machine: "test".into(),
            date: "2024-01-01".into(),
            seconds: 0,
        }
    }

    #[test]
    fn crossover_uses_measured_and_fitted_points() {
        // Copy-on-write costs 1000 + 100·pages; bytes 700·pages.
        let mut m = Vec::new();
        let ids: Vec<(String, f64)> = [1u64, 2, 3, 4, 8]
            .iter()
            .flat_map(|&p| {
                let s = p * 4096;
                let mut v = vec![(format!("small_copy/cycle_bytes/{s}"), 700.0 * p as f64)];
                if s > 8192 {
                    v.push((
                        format!("small_copy/cycle_vm_read/{s}"),
                        1000.0 + 100.0 * p as f64,
                    ));
                }
                v
            })
            .collect();
        for (k, v) in &ids {
            m.push((k.as_str(), *v));
        }
        let i = input(&m);
        let c = crossover(&i, "cycle", 8192).unwrap();
        // 2 pages: 1200 < 1400, 1 page: 1100 > 700.
        assert_eq!(c.from_bytes, Some(8192));
        assert!(c.extrapolated);
        assert_eq!(c.recommended, 4096);
    }

    #[test]
    fn summary_marks_targets() {
        let i = input(&[
            ("copy/virtual_untouched/4096", 1000.0),
            ("copy/virtual_untouched/1073741824", 1500.0),
            ("lookup/machvm_random/100000", 300.0),
            ("lookup/btreemap_random/100000", 200.0),
        ]);
        let s = summary(&i);
        assert!(s.contains("1 GiB vs 4 KiB"), "{s}");
        assert!(s.contains("| 1.500 | ≤ 2× | **met** |"), "{s}");
        assert!(s.contains("| 1.500 | ≤ 1× | **missed** |"), "{s}");
        assert!(copy_svg(&i.medians).contains("<polyline"));
    }
}
