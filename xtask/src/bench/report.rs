//! The Markdown summary.

use super::ids;
use super::*;

/// The Markdown summary: the provenance, the main table, how the figures
/// are taken, the small-copy and fork tables, and every median.
pub(super) fn summary(i: &Input) -> String {
    let mut s = String::new();
    intro(&mut s, i);
    main_table(&mut s, i);
    method(&mut s);
    small_copy_table(&mut s, i);
    fork_table(&mut s, i);
    all_medians(&mut s, i);
    s
}

/// Title, provenance and what the figures include.
fn intro(s: &mut String, i: &Input) {
    let _ = writeln!(s, "# machvm benchmarks\n");
    let _ = writeln!(
        s,
        "{} · {} · commit {} · {} profile · {} s · medians of one run (criterion)\n",
        i.date,
        i.machine,
        i.commit,
        if i.quick {
            "quick (smoke test: short, noisy; no target is judged)"
        } else {
            "full"
        },
        i.seconds
    );
    let _ = writeln!(
        s,
        "machvm runs on the host x86_64 backend over simulated RAM, with no trap: \
         its fault figures through the façade are a task's 1-byte store \
         (`write_bytes`: checks, walk, locks, fault, the byte) and are the ones \
         judged; the handler alone (`VmMap::fault`) is shown beside them for \
         information. {}\n",
        match i.linux.as_ref().and_then(|l| l.get("linux_release")) {
            Some(r) => format!(
                "Linux's figures were measured in this run by `linux-probe` on Linux {r} \
                 (THP off for the probe's mappings, median of repeats): a fault is a \
                 trapped store (trap, kernel handler, zeroing or copy, return), \
                 `mprotect` and `fork` are system calls."
            ),
            None => "Linux was not measured in this run (pass `--vs-linux`): its \
                     figures are typical published ones, shown but never judged."
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
}

/// The main table: one row per figure.
fn main_table(s: &mut String, i: &Input) {
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
            match r.verdict {
                Verdict::Judged(true) => "**met**",
                Verdict::Judged(false) => "**missed**",
                Verdict::NotJudged(why) => why,
                Verdict::Info => "—",
            }
        );
    }
}

/// How the figures are taken.
fn method(s: &mut String) {
    let _ = writeln!(
        s,
        "\nHow the figures are taken: each copy, fork or fault starts from the same \
         state (the source resident and writable), restored untimed between iterations. \
         A target is judged only in a full run, when both sides were measured in it. \
         Judged rows compare the same work, except the fault rows (2, 3), whose \
         targets set machvm's store through the façade, with no trap (the host \
         backend has none), against Linux's trapped store: each says what its side \
         includes. Virtual copies move no byte: they are shown per call or \
         per page, never in GB/s. Eager copy: the same `vm_map_copy` with the \
         destination 8 bytes off a page boundary, which forces bytes. Resident virtual \
         copy and machvm's `fork` per page write-protect the source's pages; Linux's \
         `mprotect(PROT_READ)` of a resident range does that work: (t(R pages) − \
         t(1 page)) / (R − 1), R the largest resident copy size; Linux's `fork` (also \
         copying every PTE and counting the page's mappings) is a secondary reference. \
         Lookup: entries of 4 pages, timed per lookup \
         under one lock per batch (`VmMap::lookup_many`); the sequential sweep visits \
         every page in order, so the hint can hit 3 times in 4. `fork` per resident page: \
         (t(1 entry, M pages) − t(1 entry, 0)) / M. Small-copy crossover: the smallest \
         whole-page size from which copy-on-write stays cheaper; below \
         `SMALL_COPY_BYTES` it is a least-squares line through the copy-on-write sizes; \
         *suggests* is the size below it rounded down to a power of two (0: only \
         sub-page copies as bytes). Per-frame metadata: the heap a hosted system takes \
         per frame of RAM besides the RAM (two sizes, differenced), split into the \
         frame allocator's (`VmPage`) and the x86_64 pmap's (its reverse-map head). \
         Paging (9): per page, on a system with swap in host memory (the default pager \
         over `MemStore`) and RAM to spare, so nothing pages out on its own while timed; \
         every row is information (SPEC §8 sets no target). The page-in fault is a 1-byte \
         `write_bytes` to a page `VmMap::page_out` paged out in the untimed set-up (its \
         slot still warm in the caches), the zero-fill fault the same store to a \
         never-touched page of the same system; pageout is one `VmMap::page_out` of a \
         resident, written range, divided by its pages; the store rows are the pager \
         alone on memory of its own. The page copy is `PhysMem::copy_page` over as many \
         distinct pages as a round faults: a fault or a pageout moves the same 4 KiB \
         and does more, so those ratios compare different work."
    );
}

/// The plot's link and every median.
fn all_medians(s: &mut String, i: &Input) {
    let _ = writeln!(
        s,
        "\n![copy time against size](copy.svg)\n\n## All medians\n\n| Benchmark | Median |\n|---|---|"
    );
    for (k, v) in &i.medians {
        let _ = writeln!(s, "| `{k}` | {} |", fmt_ns(*v));
    }
}

pub(super) fn small_copy_table(s: &mut String, i: &Input) {
    let sizes = i.params(&ids::prefix(
        ids::SMALL_COPY,
        &ids::small_copy_fn(ids::TRANSFER, false),
    ));
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
            i.get(&ids::full(ids::SMALL_COPY, id, size))
                .map_or("—".into(), fmt_ns)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            fmt_bytes(size),
            cell(&ids::small_copy_fn(ids::TRANSFER, true)),
            cell(&ids::small_copy_fn(ids::TRANSFER, false)),
            cell(&ids::small_copy_fn(ids::CYCLE, true)),
            cell(&ids::small_copy_fn(ids::CYCLE, false)),
        );
    }
}

pub(super) fn fork_table(s: &mut String, i: &Input) {
    let grid = fork_grid(i);
    if grid.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## 5. `fork` (entries × resident pages)\n\n| Entries | Resident pages | Time |\n|---|---|---|"
    );
    for (n, m) in grid {
        if let Some(t) = i.get(&ids::full(ids::FORK, ids::FORK, ids::fork_param(n, m))) {
            let _ = writeln!(s, "| {n} | {m} | {} |", fmt_ns(t));
        }
    }
}
