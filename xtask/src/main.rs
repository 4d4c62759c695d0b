//! machvm's task runner, invoked as `cargo xtask <task>` (see `.cargo/config.toml`).
//!
//! Tasks (`cargo xtask <task> --help` for each one's options):
//! - `test`: every check, run to the end even after a failure, then a table
//!   of stages with PASS/FAIL and seconds (`test.rs`): the structure limits,
//!   formatting, clippy with warnings denied, the host test suite, rustdoc
//!   with warnings denied (host and bare metal), loom model checks, kernel
//!   clippy, `cargo package`, the out-of-workspace consumer crate, then the
//!   in-kernel suite under QEMU — README's test command.
//! - `bench`: the criterion suite and its report (`bench/`).
//! - `qemu`, `qemu-test`: build the bare-metal test kernel and boot it in
//!   QEMU, the narrated demo or the in-kernel suite (`qemu.rs`).
//! - `boot <elf>`: boot an already built kernel; `cargo run --target
//!   x86_64-unknown-none -p machvm-kernel` runs it as its runner.
//! - `soak`: the differential model test for millions of operations.
//! - `lint-structure`: the file and function size limits (`lint.rs`).
//! - `help [task]`: the task list, or one task's usage.
//!
//! Every build goes under [`target_dir`]: `$CARGO_TARGET_DIR` when set, as
//! cargo itself does.

mod bench;
mod install;
mod lint;
mod qemu;
mod soak;
mod test;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// One `cargo xtask` task.
struct Task {
    /// What follows `cargo xtask`.
    name: &'static str,
    /// Its line in the task list.
    summary: &'static str,
    /// Its `--help` text; `None` when the task answers `--help` itself.
    usage: Option<fn() -> String>,
    /// Runs it with the remaining arguments; `true` on success.
    run: fn(&[String]) -> bool,
}

/// Every task, in the order `help` lists them.
const TASKS: &[Task] = &[
    Task {
        name: "test",
        summary: "every check (all stages, then a PASS/FAIL table)",
        usage: Some(test::usage),
        run: test::test,
    },
    Task {
        name: "bench",
        summary: "the criterion suite and its report (never in CI)",
        usage: None,
        run: bench::bench,
    },
    Task {
        name: "qemu",
        summary: "build the test kernel, boot it in QEMU: the narrated demo",
        usage: Some(qemu::demo_usage),
        run: qemu::qemu_demo,
    },
    Task {
        name: "qemu-test",
        summary: "build the test kernel, boot it in QEMU: the in-kernel suite",
        usage: Some(qemu::test_usage),
        run: qemu::qemu_test,
    },
    Task {
        name: "boot",
        summary: "boot a built kernel ELF in QEMU (cargo run's runner)",
        usage: Some(qemu::boot_usage),
        run: qemu::boot_elf,
    },
    Task {
        name: "soak",
        summary: "the differential model test for millions of operations",
        usage: Some(soak::usage),
        run: soak::soak,
    },
    Task {
        name: "lint-structure",
        summary: "library files ≤ 600 lines, functions ≤ 80",
        usage: Some(lint::usage),
        run: lint::lint_structure,
    },
];

/// Runs the task named by the first argument; no argument lists them.
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let ok = match name {
        "help" | "--help" | "-h" => help(rest.first().map(String::as_str)),
        _ => match TASKS.iter().find(|t| t.name == name) {
            Some(task) => run(task, rest),
            None => {
                eprintln!("xtask: unknown task `{name}`\n");
                eprint!("{}", task_list());
                false
            }
        },
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `task`, or prints its usage when `-h`/`--help` is among `rest`.
fn run(task: &Task, rest: &[String]) -> bool {
    match task.usage {
        Some(usage) if rest.iter().any(|a| a == "-h" || a == "--help") => {
            eprintln!("{}", usage());
            true
        }
        _ => (task.run)(rest),
    }
}

/// `cargo xtask help [task]`: the task list, or one task's usage.
fn help(task: Option<&str>) -> bool {
    let name = match task {
        None | Some("-h" | "--help") => {
            eprint!("{}", task_list());
            return true;
        }
        Some(name) => name,
    };
    match TASKS.iter().find(|t| t.name == name) {
        Some(t) => run(t, &["--help".to_string()]),
        None => {
            eprintln!("xtask: unknown task `{name}`\n");
            eprint!("{}", task_list());
            false
        }
    }
}

/// The usage line and one line per task.
fn task_list() -> String {
    let mut s = String::from("usage: cargo xtask <task> [options]\n\ntasks:\n");
    for t in TASKS {
        s += &format!("  {:<16}{}\n", t.name, t.summary);
    }
    s += &format!("  {:<16}this list, or a task's usage\n", "help [task]");
    s += "\n`cargo xtask <task> --help` shows a task's options.\n";
    s
}

/// Runs a cargo command from the workspace root, echoing it first.
pub(crate) fn cargo(args: &[&str]) -> bool {
    cargo_env(args, &[])
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
pub(crate) fn workspace_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map(|p| p.to_path_buf()).unwrap_or(dir)
}

/// Cargo's target directory, as cargo itself resolves it
/// (`CARGO_TARGET_DIR`, `CARGO_BUILD_TARGET_DIR`, `build.target-dir`, else
/// `<root>/target`): asked of `cargo metadata` once. xtask's own
/// directories (`kernel`, `loom`, …) go under it.
pub(crate) fn target_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| metadata_target_dir().unwrap_or_else(|| workspace_root().join("target")))
        .clone()
}

/// `target_directory` from `cargo metadata`, run in the workspace root.
fn metadata_target_dir() -> Option<PathBuf> {
    let out = Command::new(env_cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let json = String::from_utf8(out.stdout).ok()?;
    let key = "\"target_directory\":\"";
    let start = json.find(key)? + key.len();
    let end = start + json[start..].find('"')?;
    // Paths are plain here; cargo escapes only quotes and backslashes.
    Some(PathBuf::from(json[start..end].replace("\\\\", "\\")))
}

/// [`target_dir`]`/<sub>` as a string, for a `--target-dir` argument.
pub(crate) fn target_subdir(sub: &str) -> String {
    target_dir().join(sub).to_string_lossy().into_owned()
}
