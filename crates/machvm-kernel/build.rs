//! Passes the kernel linker script and embeds the user programs, only when
//! building for bare metal.
//!
//! The programs (`crates/machvm-user-programs`) are built first by `cargo
//! xtask` (never by a nested cargo here: it would wait on the outer build's
//! locks), which names their directory in `MACHVM_USER_BINS`;
//! `.cargo/config.toml` gives a default. This writes
//! `$OUT_DIR/user_images.rs` for `src/images.rs`: the programs found, or
//! none (with a warning) when they were not built.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The programs the kernel embeds.
const PROGRAMS: &[&str] = &["init", "utest"];

fn main() {
    println!("cargo:rerun-if-changed=kernel.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MACHVM_USER_BINS");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-T{dir}/kernel.ld");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bins = std::env::var_os("MACHVM_USER_BINS").map(PathBuf::from);
    let source = match bins {
        Some(dir) if target == "x86_64-unknown-none" => images_source(&dir),
        _ => empty_source(),
    };
    std::fs::write(out.join("user_images.rs"), source).expect("writing user_images.rs");
}

/// `IMAGES` with every program of `dir`, or none (and a warning) if one is
/// missing.
fn images_source(dir: &Path) -> String {
    let mut s = String::from("/// The embedded user programs, by name.\n");
    s += "pub static IMAGES: &[(&str, &Aligned<[u8]>)] = &[\n";
    for name in PROGRAMS {
        let path = dir.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.is_file() {
            println!(
                "cargo:warning=no user program at {}: build through `cargo xtask` (user tests will fail)",
                path.display()
            );
            return empty_source();
        }
        let _ = writeln!(
            s,
            "    ({name:?}, &Aligned(*include_bytes!({:?}))),",
            path.display().to_string()
        );
    }
    s + "];\n"
}

/// `IMAGES` empty (the host, or programs not built).
fn empty_source() -> String {
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        println!(
            "cargo:warning=MACHVM_USER_BINS names no user programs: build through `cargo xtask` (user tests will fail)"
        );
    }
    "/// The embedded user programs, by name: none in this build.\n\
     pub static IMAGES: &[(&str, &Aligned<[u8]>)] = &[];\n"
        .to_string()
}
