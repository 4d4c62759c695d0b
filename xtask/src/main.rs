//! machvm's task runner, invoked as `cargo xtask <task>` (see `.cargo/config.toml`).
//!
//! Tasks:
//! - `test`: the structure limits, formatting, clippy with warnings denied, the host test suite,
//!   rustdoc with warnings denied, loom model checks, then the in-kernel suite under QEMU — README's test
//!   command.
//! - `qemu`, `qemu-test`: boot the bare-metal test kernel (see `qemu.rs`).
//! - `soak`: the differential model test for millions of operations.
//! - `lint-structure`: the file and function size limits (`lint.rs`).

mod bench;
mod lint;
mod qemu;
mod soak;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let ok = match task {
        "test" => test(rest),
        "bench" => bench::bench(rest),
        "qemu" => qemu::qemu_demo(rest),
        "qemu-test" => qemu::qemu_test(rest),
        "soak" => soak::soak(rest),
        "lint-structure" => lint::lint_structure(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\ntasks:\n  test        structure limits, fmt check, clippy -D warnings, host tests,\n              rustdoc, loom, QEMU suite\n  bench       the criterion suite and its report (--help for options)\n  soak        the model test for millions of operations (--ops N,\n              --snapshots K: keep K vm_read snapshots alive)\n  lint-structure  library files <= 600 lines, functions <= 80\n{}",
                qemu::USAGE
            );
            return if task == "help" || task == "--help" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs a cargo command from the workspace root, echoing it first.
pub(crate) fn cargo(args: &[&str]) -> bool {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(env_cargo())
        .args(args)
        .current_dir(workspace_root())
        .status();
    match status {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            false
        }
    }
}

/// Runs a cargo command with extra environment variables.
pub(crate) fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> bool {
    eprintln!("$ cargo {}", args.join(" "));
    let mut cmd = Command::new(env_cargo());
    cmd.args(args).current_dir(workspace_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            false
        }
    }
}

/// The cargo that invoked us (so the same toolchain is used).
pub(crate) fn env_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map(|p| p.to_path_buf()).unwrap_or(dir)
}

/// Every check: the structure limits, formatting, host clippy, host tests,
/// rustdoc, loom, kernel clippy, then the in-kernel suite under QEMU on two
/// CPUs and on four (`rest` goes to `qemu-test`).
fn test(rest: &[String]) -> bool {
    let steps: [&[&str]; 4] = [
        &["fmt", "--all", "--", "--check"],
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        // The machine-independent façade, without the hosted x86_64 backend.
        &[
            "clippy",
            "-p",
            "machvm",
            "--no-default-features",
            "--",
            "-D",
            "warnings",
        ],
        &["test", "--workspace"],
    ];
    if !lint::lint_structure(&[]) {
        eprintln!("xtask test: the structure limits are broken");
        return false;
    }
    for step in steps {
        if !cargo(step) {
            eprintln!("xtask test: `cargo {}` failed", step.join(" "));
            return false;
        }
    }
    // Documentation builds without a broken link.
    if !cargo_env(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    ) {
        eprintln!("xtask test: cargo doc found problems");
        return false;
    }
    if !loom_checks() {
        return false;
    }
    // The alignment checks that keep `PhysMem` sound, with debug
    // assertions off.
    let release = [
        "test",
        "-p",
        "machvm-frame",
        "--release",
        "--test",
        "alignment",
    ];
    if !cargo(&release) {
        eprintln!("xtask test: PhysMem's alignment checks failed in a release build");
        return false;
    }
    if !qemu::clippy_kernel() {
        eprintln!("xtask test: clippy for the kernel target failed");
        return false;
    }
    if !qemu::qemu_test(rest) {
        return false;
    }
    // Four CPUs at once in shared maps (a CPU waiting on a machvm lock
    // answers shootdowns only through the kernel's lock family).
    let mut four: Vec<String> = rest.to_vec();
    four.extend(["--smp".to_string(), "4".to_string()]);
    qemu::qemu_test(&four)
}

/// The loom model checks: the frame allocator and its per-CPU caches, and
/// the page map's busy/wait protocol (own target dir: the cfg changes
/// every crate's build).
fn loom_checks() -> bool {
    let loom = [
        "test",
        "-p",
        "machvm-frame",
        "--test",
        "loom",
        "--release",
        "--target-dir",
        "target/loom",
    ];
    if !cargo_env(&loom, &[("RUSTFLAGS", "--cfg loom")]) {
        eprintln!("xtask test: the loom model checks failed");
        return false;
    }
    // ... and of the page map's busy/wait protocol (the object crate's
    // unit tests under `--cfg loom` are its loom models alone).
    let loom_pages = [
        "test",
        "-p",
        "machvm-object",
        "--lib",
        "--release",
        "--target-dir",
        "target/loom",
    ];
    if !cargo_env(&loom_pages, &[("RUSTFLAGS", "--cfg loom")]) {
        eprintln!("xtask test: the page map's loom model checks failed");
        return false;
    }
    true
}
