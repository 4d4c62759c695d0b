//! `cargo xtask soak [--ops N]`: the differential model test
//! (`crates/machvm/tests/model_check.rs`) for millions of operations, in
//! release mode, printing operations per second.

use crate::cargo_env;

/// Runs the soak; `args` may hold `--ops N` (default 1,000,000).
pub fn soak(args: &[String]) -> bool {
    let mut ops = String::from("1000000");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ops" => match it.next() {
                Some(n) if n.parse::<u64>().is_ok() => ops = n.clone(),
                _ => {
                    eprintln!("xtask soak: --ops takes a number");
                    return false;
                }
            },
            other => {
                eprintln!(
                    "xtask soak: unknown argument {other}\nusage: cargo xtask soak [--ops N]"
                );
                return false;
            }
        }
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
        &[("MACHVM_SOAK_OPS", &ops)],
    )
}
