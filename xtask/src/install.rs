//! What a fresh machine may lack: the bare-metal target's standard library,
//! rustup components and QEMU. Each is installed only when missing, and
//! xtask first says what it installs, with what, and why.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::env_cargo;
use crate::qemu::{QEMU, TARGET};

/// Says, before it happens, what xtask installs, with what and why.
fn announce(what: &str, with: &str, why: &str) {
    eprintln!("xtask: installing {what} with {with}: {why}");
}

/// Runs `cmd`, true if it exited with success.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

/// Makes sure the bare-metal target's standard library is installed.
pub(crate) fn ensure_target() -> bool {
    // Ask rustc where the target's libraries would be: no rustup needed.
    let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output();
    if let Ok(out) = sysroot {
        let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if Path::new(&root).join("lib/rustlib").join(TARGET).exists() {
            return true;
        }
    }
    announce(
        &format!("target {TARGET}"),
        &format!("`rustup target add {TARGET}`"),
        "the test kernel and the bare-metal checks build for it",
    );
    let ok = succeeds(Command::new("rustup").args(["target", "add", TARGET]));
    if !ok {
        eprintln!("xtask: could not install it; run: rustup target add {TARGET}");
    }
    ok
}

/// Makes sure `cargo <subcommand>` works, adding rustup `component` (e.g.
/// `clippy`, whose subcommand is `clippy`; `rustfmt`'s is `fmt`) if not.
pub(crate) fn ensure_component(component: &str, why: &str) -> bool {
    let sub = if component == "rustfmt" {
        "fmt"
    } else {
        component
    };
    let works = |c: &mut Command| succeeds(c.args([sub, "--version"]).stdout(Stdio::null()));
    if works(Command::new(env_cargo()).stderr(Stdio::null())) {
        return true;
    }
    announce(
        &format!("rustup component {component}"),
        &format!("`rustup component add {component}`"),
        why,
    );
    let ok = succeeds(Command::new("rustup").args(["component", "add", component]))
        && works(&mut Command::new(env_cargo()));
    if !ok {
        eprintln!("xtask: `cargo {sub}` is missing; run: rustup component add {component}");
    }
    ok
}

/// `name`'s path on `$PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when running as root (apt-get may then install packages).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Finds QEMU, installing the Debian package when root.
pub(crate) fn ensure_qemu() -> Option<PathBuf> {
    if let Some(q) = on_path(QEMU) {
        return Some(q);
    }
    let hint = "sudo apt-get update && sudo apt-get install -y qemu-system-x86";
    if is_root() && on_path("apt-get").is_some() {
        announce(
            "qemu-system-x86",
            "apt-get (after `apt-get update`)",
            &format!("{QEMU} is missing and boots the test kernel"),
        );
        let ok = succeeds(Command::new("apt-get").arg("update"))
            && succeeds(
                Command::new("apt-get")
                    .args(["install", "-y", "qemu-system-x86"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            );
        if let Some(q) = on_path(QEMU).filter(|_| ok) {
            return Some(q);
        }
    }
    eprintln!("xtask: {QEMU} not found; install it, e.g.: {hint}");
    None
}
