//! `cargo xtask test`: every check of the workspace, README's test command.
//!
//! The stages are a table ([`STAGES`]); each runs even after another failed,
//! and the task ends with a table of stage, PASS/FAIL and seconds. It fails
//! if any stage failed.

use std::process::Command;
use std::time::Instant;

use crate::qemu::TARGET;
use crate::{cargo, cargo_env, install, lint, qemu, target_subdir, workspace_root};

/// One check: its name in the table, what it is for, and how to run it
/// (given `test`'s arguments, which go to the QEMU stages).
struct Stage {
    /// Its row in the final table.
    name: &'static str,
    /// Why it is there, for `--help`.
    about: &'static str,
    /// Runs it; `true` on success.
    run: fn(&[String]) -> bool,
}

/// Every stage, in order.
const STAGES: &[Stage] = &[
    Stage {
        name: "structure limits",
        about: "files ≤ 600 lines, functions ≤ 80",
        run: |_| lint::lint_structure(&[]),
    },
    Stage {
        name: "fmt check",
        about: "cargo fmt --check",
        run: |_| {
            install::ensure_component("rustfmt", "`cargo xtask test` checks formatting")
                && cargo(&["fmt", "--all", "--", "--check"])
        },
    },
    Stage {
        name: "clippy host",
        about: "every crate and target, warnings denied",
        run: |_| clippy(&["--workspace", "--all-targets"]),
    },
    Stage {
        name: "clippy machvm no-default",
        about: "the machine-independent façade (no hosted backend)",
        run: |_| clippy(&["-p", "machvm", "--no-default-features"]),
    },
    Stage {
        name: "interop feature",
        about: "features no other stage turns on: x86_64 interop, the pager's file store",
        run: |_| {
            let crates = [
                "-p",
                "machvm-base",
                "-p",
                "machvm-frame",
                "-p",
                "machvm-map",
            ];
            let mut lint = crates.to_vec();
            lint.extend(["-p", "machvm", "--all-targets", "--features", "x86_64"]);
            let mut test = vec!["test"];
            test.extend(crates);
            test.extend(["--features", "x86_64"]);
            let pager = ["test", "-p", "machvm-pager", "--features", "std"];
            clippy(&lint) && cargo(&test) && cargo(&pager)
        },
    },
    Stage {
        name: "host tests",
        about: "every test binary, even after a failure",
        run: |_| cargo(&["test", "--workspace", "--no-fail-fast"]),
    },
    Stage {
        name: "rustdoc host",
        about: "documentation without a warning or broken link",
        run: |_| doc(&["--workspace"]),
    },
    Stage {
        name: "rustdoc bare metal",
        about: "the library crates for x86_64-unknown-none",
        run: |_| doc_bare_metal(),
    },
    Stage {
        name: "loom frame allocator",
        about: "the frame allocator and its per-CPU caches",
        run: |_| loom(&["-p", "machvm-frame", "--test", "loom"]),
    },
    Stage {
        name: "loom page busy/wait",
        about: "the page map's busy/wait protocol",
        // The object crate's unit tests under `--cfg loom` are its loom models alone.
        run: |_| loom(&["-p", "machvm-object", "--lib"]),
    },
    Stage {
        name: "release alignment",
        about: "PhysMem's alignment checks with debug assertions off",
        run: |_| {
            cargo(&[
                "test",
                "-p",
                "machvm-frame",
                "--release",
                "--test",
                "alignment",
            ])
        },
    },
    Stage {
        name: "clippy kernel",
        about: "the test kernel, warnings denied",
        run: |_| qemu::clippy_kernel(),
    },
    Stage {
        name: "cargo package",
        about: "publishable crates package and build as packaged",
        run: |_| package(),
    },
    Stage {
        name: "consumer crate",
        about: "a crate outside the workspace, for bare metal",
        run: |_| consumer(),
    },
    Stage {
        name: "qemu-test --smp 2",
        about: "the in-kernel suite under QEMU on two CPUs",
        run: |rest| qemu::qemu_test(&with(&["--smp", "2"], rest, &[])),
    },
    Stage {
        name: "qemu-test --smp 4",
        // A CPU waiting on a machvm lock answers shootdowns only through the
        // kernel's lock family.
        about: "... on four CPUs at once in shared maps",
        run: |rest| qemu::qemu_test(&with(&[], rest, &["--smp", "4"])),
    },
];

/// The library crates that build for `x86_64-unknown-none`, documented for it.
const BARE_METAL_CRATES: &[&str] = &[
    "machvm-base",
    "machvm-frame",
    "machvm-pmap",
    "machvm-pmap-x86_64",
    "machvm-pager",
    "machvm-object",
    "machvm-map",
    "machvm-copy",
    "machvm",
    "machvm-user",
];

/// `--features` of the bare-metal rustdoc stage (all crates are built with
/// `--no-default-features`): comma-separated `crate/feature`, e.g.
/// `machvm/x86_64`; empty for none.
const BARE_METAL_FEATURES: &str = "machvm/x86_64";

/// The out-of-workspace crate that uses machvm as a dependent would,
/// relative to the workspace root.
const CONSUMER_MANIFEST: &str = "examples/x86_64-consumer/Cargo.toml";

/// `cargo xtask test --help`.
pub(crate) fn usage() -> String {
    let mut s = String::from(
        "usage: cargo xtask test [QEMU-TEST OPTIONS]\n\
         Runs every stage below, even after one fails, then prints a table\n\
         (stage, PASS/FAIL, seconds); fails if any stage failed. The options\n\
         go to both qemu-test stages (see `cargo xtask qemu-test --help`).\n\nstages:\n",
    );
    for st in STAGES {
        s += &format!("  {:<26}{}\n", st.name, st.about);
    }
    s
}

/// `cargo xtask test`: runs every stage, prints the table.
pub(crate) fn test(rest: &[String]) -> bool {
    // A typo in a QEMU option should not wait for ten minutes of stages.
    if let Err(e) = qemu::check_test_options(rest) {
        eprintln!("xtask test: {e}\n\n{}", usage());
        return false;
    }
    let start = Instant::now();
    let mut results = Vec::new();
    for (i, st) in STAGES.iter().enumerate() {
        eprintln!("\nxtask test: [{}/{}] {}", i + 1, STAGES.len(), st.name);
        let t = Instant::now();
        let ok = (st.run)(rest);
        let secs = t.elapsed().as_secs_f64();
        if !ok {
            eprintln!("xtask test: stage `{}` failed ({secs:.1} s)", st.name);
        }
        results.push((st.name, ok, secs));
    }
    eprint!("{}", table(&results, start.elapsed().as_secs_f64()));
    results.iter().all(|&(_, ok, _)| ok)
}

/// The final table: one row per stage, then the count of failures.
fn table(results: &[(&str, bool, f64)], total: f64) -> String {
    let mut s = format!("\n{:<26}{:<8}{:>9}\n", "stage", "result", "seconds");
    for &(name, ok, secs) in results {
        let verdict = if ok { "PASS" } else { "FAIL" };
        s += &format!("{name:<26}{verdict:<8}{secs:>9.1}\n");
    }
    let failed = results.iter().filter(|r| !r.1).count();
    s += &format!(
        "xtask test: {} of {} stages passed, {failed} failed ({total:.1} s)\n",
        results.len() - failed,
        results.len()
    );
    s
}

/// `before`, then `rest`, then `after`, as one argument list.
fn with(before: &[&str], rest: &[String], after: &[&str]) -> Vec<String> {
    let words = before.iter().map(|s| s.to_string());
    let words = words.chain(rest.iter().cloned());
    words.chain(after.iter().map(|s| s.to_string())).collect()
}

/// `cargo clippy <args> -- -D warnings`.
fn clippy(args: &[&str]) -> bool {
    let mut all = vec!["clippy"];
    all.extend(args);
    all.extend(["--", "-D", "warnings"]);
    install::ensure_component("clippy", "`cargo xtask test` lints with it") && cargo(&all)
}

/// `cargo doc --no-deps <args>` with rustdoc's warnings denied.
fn doc(args: &[&str]) -> bool {
    let mut all = vec!["doc", "--no-deps"];
    all.extend(args);
    cargo_env(&all, &[("RUSTDOCFLAGS", "-D warnings")])
}

/// [`doc`] of [`BARE_METAL_CRATES`] for the kernel target.
fn doc_bare_metal() -> bool {
    let mut args = vec!["--target", TARGET, "--no-default-features"];
    for c in BARE_METAL_CRATES {
        args.extend(["-p", c]);
    }
    if !BARE_METAL_FEATURES.is_empty() {
        args.extend(["--features", BARE_METAL_FEATURES]);
    }
    install::ensure_target() && doc(&args)
}

/// A loom model check in release, in its own target directory (the cfg
/// changes every crate's build).
fn loom(args: &[&str]) -> bool {
    let dir = target_subdir("loom");
    let mut all = vec!["test"];
    all.extend(args);
    all.extend(["--release", "--target-dir", &dir]);
    cargo_env(&all, &[("RUSTFLAGS", "--cfg loom")])
}

/// `cargo package --workspace`: every package (those with `publish = false`
/// too, which are never published) packaged and built from its package.
fn package() -> bool {
    // Cargo takes registry sources as immutable: a build of the same
    // version from an earlier run would be reused as it is. A fresh
    // target directory and unpacking each time, then.
    forget_local_unpackings();
    let dir = target_subdir("package");
    let _ = std::fs::remove_dir_all(&dir);
    let mut args = vec!["package", "--workspace", "--target-dir", &dir];
    if std::env::var_os("CI").is_none() && tree_is_dirty() {
        eprintln!("xtask test: the work tree has uncommitted changes: passing --allow-dirty");
        args.push("--allow-dirty");
    }
    cargo(&args)
}

/// Cargo verifies a package against the others unpacked from a temporary
/// local registry into `$CARGO_HOME/registry/src/-<hash>/`, and reuses an
/// unpacking of the same version from an earlier run: the verification
/// would build stale sources. Those unpackings of this workspace's
/// packages go first (only local registries' directories start with `-`).
fn forget_local_unpackings() {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return;
    };
    let ours = |name: &str| {
        name.rsplit_once('-').is_some_and(|(pkg, version)| {
            version.starts_with(|c: char| c.is_ascii_digit())
                && (pkg == "xtask" || pkg == "machvm" || pkg.starts_with("machvm-"))
        })
    };
    let local = std::fs::read_dir(&src).into_iter().flatten().flatten();
    for registry in local.filter(|d| d.file_name().to_string_lossy().starts_with('-')) {
        for unpacked in std::fs::read_dir(registry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if ours(&unpacked.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(unpacked.path());
            }
        }
    }
}

/// True if `git status --porcelain` lists anything (false without git).
fn tree_is_dirty() -> bool {
    Command::new("git")
        .args(["status", "--porcelain"])
        .current_dir(workspace_root())
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// Builds [`CONSUMER_MANIFEST`] for the kernel target in its own target
/// directory (it is not a workspace member).
fn consumer() -> bool {
    if !workspace_root().join(CONSUMER_MANIFEST).is_file() {
        eprintln!("xtask test: no consumer crate at {CONSUMER_MANIFEST}");
        return false;
    }
    let dir = target_subdir("consumer");
    let args = [
        "build",
        "--manifest-path",
        CONSUMER_MANIFEST,
        "--target",
        TARGET,
        "--target-dir",
        &dir,
    ];
    install::ensure_target() && cargo(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts_failures() {
        let t = table(&[("a", true, 1.0), ("b", false, 12.0)], 13.0);
        assert!(t.contains("\na                         PASS          1.0\n"));
        assert!(t.contains("\nb                         FAIL         12.0\n"));
        assert!(t.ends_with("1 of 2 stages passed, 1 failed (13.0 s)\n"));
    }

    #[test]
    fn stage_names_fit_the_table() {
        assert!(STAGES.iter().all(|s| s.name.len() < 26));
    }
}
