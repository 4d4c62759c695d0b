//! `cargo xtask qemu` and `cargo xtask qemu-test`: build the bare-metal
//! kernel (`crates/machvm-kernel`) and boot it in QEMU through its PVH entry.
//!
//! The kernel is built in release for `x86_64-unknown-none` into its own
//! target directory (`target/kernel`), so host builds are never blocked.
//! QEMU runs with TCG (`/dev/kvm` may be a slow nested hypervisor here), two
//! CPUs and `isa-debug-exit`: the kernel writes 0x10 (QEMU exits 33) for
//! success and 0x11 (35) for failure. A triple fault exits QEMU with 0, so
//! only 33 *and* a final `N passed, 0 failed` line count as a pass.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, workspace_root};

const TARGET: &str = "x86_64-unknown-none";
const QEMU: &str = "qemu-system-x86_64";
/// QEMU status when the kernel reported success (`(0x10 << 1) | 1`).
const EXIT_PASS: i32 = 33;
const DEFAULT_TIMEOUT: u64 = 120;

/// Options shared by both tasks.
struct Opts {
    skip_invlpg: bool,
    timeout: Duration,
    smp: u32,
    memory: String,
    append: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        skip_invlpg: false,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        smp: 2,
        memory: "256M".into(),
        append: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--skip-invlpg" => o.skip_invlpg = true,
            "--timeout" => {
                let v = value("--timeout")?;
                o.timeout =
                    Duration::from_secs(v.parse().map_err(|_| format!("bad --timeout {v}"))?);
            }
            "--smp" => {
                let v = value("--smp")?;
                o.smp = v.parse().map_err(|_| format!("bad --smp {v}"))?;
            }
            "-m" | "--memory" => o.memory = value("--memory")?,
            "--append" => o.append.push(value("--append")?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// Usage text of the two tasks.
pub(crate) const USAGE: &str = concat!(
    "  qemu        boot the kernel in QEMU and narrate what it does (demo)\n",
    "  qemu-test   boot the kernel in QEMU and run the in-kernel suite\n",
    "              options (both): --skip-invlpg (deliberately broken TLB\n",
    "              shootdown: the TLB tests must fail), --timeout SECS\n",
    "              (default 120), --smp N (default 2), --memory SIZE (default\n",
    "              256M), --append WORD (kernel command line, repeatable:\n",
    "              filter=SUBSTRING runs only matching tests; platform\n",
    "              adds the bare platform's chapters to the demo;\n",
    "              crash=double-fault|triple-fault checks the failure paths)"
);

/// `cargo xtask qemu-test`: true only if the kernel reported success through
/// `isa-debug-exit` and printed `N passed, 0 failed`.
pub(crate) fn qemu_test(args: &[String]) -> bool {
    run(args, false)
}

/// `cargo xtask qemu`: the narrated demo.
pub(crate) fn qemu_demo(args: &[String]) -> bool {
    run(args, true)
}

fn run(args: &[String], demo: bool) -> bool {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask: {e}\n{USAGE}");
            return false;
        }
    };
    if !ensure_target() {
        return false;
    }
    let Some(qemu) = ensure_qemu() else {
        return false;
    };
    let Some(elf) = build_kernel(opts.skip_invlpg) else {
        return false;
    };
    let mode = if demo { "demo" } else { "test" };
    let append = std::iter::once(mode)
        .chain(opts.append.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let outcome = match boot(&qemu, &elf, &append, &opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask: cannot run {}: {e}", qemu.display());
            return false;
        }
    };
    report(&outcome, demo)
}

/// What a QEMU run produced.
struct Outcome {
    status: Option<i32>,
    timed_out: bool,
    final_line: Option<(u64, u64)>,
    elapsed: Duration,
}

fn report(o: &Outcome, demo: bool) -> bool {
    let secs = o.elapsed.as_secs_f64();
    if o.timed_out {
        eprintln!("xtask: QEMU timed out after {secs:.1} s and was killed");
        return false;
    }
    let status = o.status;
    let exit_ok = status == Some(EXIT_PASS);
    if !exit_ok {
        let why = match (status, o.final_line) {
            (Some(0), _) => {
                "status 0: the guest reset (triple fault?) without reporting".to_string()
            }
            (Some(35), Some((p, f))) => {
                format!("the kernel reported failure: {f} test(s) failed, {p} passed")
            }
            (Some(35), None) => "the kernel reported failure".to_string(),
            (Some(s), _) => format!("status {s}"),
            (None, _) => "killed by a signal".to_string(),
        };
        eprintln!("xtask: QEMU exited after {secs:.1} s: {why}");
        return false;
    }
    if demo {
        eprintln!("xtask: demo finished in {secs:.1} s");
        return true;
    }
    match o.final_line {
        Some((passed, 0)) if passed > 0 => {
            eprintln!("xtask: in-kernel suite passed ({passed} tests, {secs:.1} s of QEMU)");
            true
        }
        Some((passed, failed)) => {
            eprintln!("xtask: {failed} in-kernel test(s) failed ({passed} passed)");
            false
        }
        None => {
            eprintln!(
                "xtask: the kernel exited 'successfully' without its final `N passed, M failed` line"
            );
            false
        }
    }
}

/// Parses the harness's final line `N passed, M failed`.
fn summary(line: &str) -> Option<(u64, u64)> {
    let (p, rest) = line.trim().split_once(" passed, ")?;
    let f = rest.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

fn boot(qemu: &Path, elf: &Path, append: &str, o: &Opts) -> std::io::Result<Outcome> {
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg", "-machine", "pc", "-cpu", "qemu64"])
        .args(["-smp", &o.smp.to_string(), "-m", &o.memory])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args([
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ])
        .arg("-kernel")
        .arg(elf)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!(
        "$ {} {}",
        qemu.display(),
        cmd.get_args()
            .map(|a| {
                let a = a.to_string_lossy();
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    );
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    // Stream the serial console live and remember the last summary line.
    let reader = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut last = None;
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            let _ = writeln!(out, "{}", text.trim_end_matches('\r'));
            let _ = out.flush();
            let s = summary(&text);
            // A summary only counts as the final line if nothing follows it.
            last = s;
        }
        last
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s.code();
        }
        if start.elapsed() > o.timeout {
            timed_out = true;
            // Kill only the QEMU we started, by its handle.
            let _ = child.kill();
            break child.wait()?.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    // QEMU has exited, so its stdout reaches end-of-file: wait for the
    // reader however slowly the console drains, never on a timer.
    let final_line = reader.join().ok().flatten();
    Ok(Outcome {
        status,
        timed_out,
        final_line,
        elapsed,
    })
}

/// Builds the kernel and returns its ELF.
fn build_kernel(skip_invlpg: bool) -> Option<PathBuf> {
    let mut args = vec![
        "build",
        "-p",
        "machvm-kernel",
        "--release",
        "--target",
        TARGET,
        "--target-dir",
        "target/kernel",
    ];
    if skip_invlpg {
        args.extend(["--features", "skip-invlpg"]);
    }
    if !cargo(&args) {
        eprintln!("xtask: building the kernel failed");
        return None;
    }
    let elf = workspace_root().join(format!("target/kernel/{TARGET}/release/machvm-kernel"));
    if !elf.exists() {
        eprintln!("xtask: no kernel at {}", elf.display());
        return None;
    }
    Some(elf)
}

/// Makes sure the bare-metal target's standard library is installed.
fn ensure_target() -> bool {
    // Ask rustc where the target's libraries would be: no rustup needed.
    let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output();
    if let Ok(out) = sysroot {
        let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if Path::new(&root).join("lib/rustlib").join(TARGET).exists() {
            return true;
        }
    }
    eprintln!("xtask: target {TARGET} missing; running `rustup target add {TARGET}`");
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("xtask: could not install it; run: rustup target add {TARGET}");
    }
    ok
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Finds QEMU, installing the Debian package when root.
fn ensure_qemu() -> Option<PathBuf> {
    if let Some(q) = on_path(QEMU) {
        return Some(q);
    }
    let hint = "sudo apt-get update && sudo apt-get install -y qemu-system-x86";
    if is_root() && on_path("apt-get").is_some() {
        eprintln!("xtask: {QEMU} missing; installing qemu-system-x86 with apt-get");
        let ok = Command::new("apt-get")
            .arg("update")
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "qemu-system-x86"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if let Some(q) = on_path(QEMU).filter(|_| ok) {
            return Some(q);
        }
    }
    eprintln!("xtask: {QEMU} not found; install it, e.g.: {hint}");
    None
}

/// `cargo clippy` for the kernel target, warnings denied.
pub(crate) fn clippy_kernel() -> bool {
    ensure_target()
        && cargo(&[
            "clippy",
            "-p",
            "machvm-kernel",
            "--release",
            "--target",
            TARGET,
            "--target-dir",
            "target/kernel",
            "--",
            "-D",
            "warnings",
        ])
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn summary_line() {
        assert_eq!(summary("22 passed, 0 failed"), Some((22, 0)));
        assert_eq!(summary("3 passed, 1 failed\r"), Some((3, 1)));
        assert_eq!(summary("platform::x ... ok"), None);
        assert_eq!(summary("passed, failed"), None);
    }
}
