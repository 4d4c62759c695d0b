//! The narrated demo (`-append demo`, `cargo xtask qemu`).

/// Tells what the platform did at boot and shows it working.
pub fn run() {
    println!("demo");
}
