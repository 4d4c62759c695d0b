//! Passes the user linker script, only when building for bare metal.

fn main() {
    println!("cargo:rerun-if-changed=user.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-T{dir}/user.ld");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    }
}
