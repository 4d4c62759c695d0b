//! `cargo xtask soak [--ops N] [--snapshots K]`: the differential model
//! test (`crates/machvm/tests/model_check.rs`) for millions of operations,
//! in release mode, with SPEC §6's audit checked after every operation,
//! printing operations per second and the audit's peaks. One world in
//! four pages: tiny RAM and 1 MiB of swap (SPEC §8), half of them with
//! injected allocation failures too. `--snapshots K`
//! keeps up to K `vm_read` snapshots alive at once (and makes snapshot
//! operations eight times as likely), so that object chains grow.

use crate::cargo_env;

/// `cargo xtask soak --help`.
pub(crate) fn usage() -> String {
    "usage: cargo xtask soak [--ops N] [--snapshots K]\n\
     The differential model test in release, SPEC §6's audit after every\n\
     operation.\n\n\
     options:\n  \
     --ops N          operations (default 1000000)\n  \
     --snapshots K    keep up to K vm_read snapshots alive (object chains grow)"
        .into()
}

/// Runs the soak; `args` may hold `--ops N` (default 1,000,000) and
/// `--snapshots K`.
pub(crate) fn soak(args: &[String]) -> bool {
    let mut ops = String::from("1000000");
    let mut snapshots: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--ops" => &mut ops,
            "--snapshots" => snapshots.get_or_insert_with(String::new),
            other => {
                eprintln!("xtask soak: unknown option {other}\n\n{}", usage());
                return false;
            }
        };
        match it.next() {
            Some(n) if n.parse::<u64>().is_ok() => *slot = n.clone(),
            _ => {
                eprintln!("xtask soak: {a} takes a number");
                return false;
            }
        }
    }
    let mut env = vec![("MACHVM_SOAK_OPS", ops.as_str())];
    if let Some(k) = &snapshots {
        env.push(("MACHVM_SOAK_SNAPSHOTS", k.as_str()));
    }
    cargo_env(
        &[
            "test",
            "--release",
            "-p",
            "machvm",
            "--test",
            "model_check",
            "--",
            "--ignored",
            "--exact",
            "soak",
            "--nocapture",
        ],
        &env,
    )
}
