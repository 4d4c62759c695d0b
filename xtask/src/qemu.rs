//! `cargo xtask qemu` and `cargo xtask qemu-test`: build the bare-metal
//! kernel (`crates/machvm-kernel`) and boot it in QEMU through its PVH entry;
//! `cargo xtask boot <elf>` boots one already built (the cargo runner of
//! `x86_64-unknown-none`, see `.cargo/config.toml`).
//!
//! The kernel is built in release for `x86_64-unknown-none` into its own
//! target directory (`kernel` under [`crate::target_dir`]), so host builds
//! are never blocked. QEMU runs with TCG (`/dev/kvm` may be a slow nested
//! hypervisor here), two CPUs and `isa-debug-exit`: the kernel writes 0x10
//! (QEMU exits 33) for success and 0x11 (35) for failure. A triple fault
//! exits QEMU with 0, so only 33 *and* a final `N passed, 0 failed` line
//! count as a pass.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::install::{ensure_qemu, ensure_target};
use crate::{cargo, cargo_env, target_dir, target_subdir};

/// The kernel's target triple.
pub(crate) const TARGET: &str = "x86_64-unknown-none";
/// The QEMU binary that boots it.
pub(crate) const QEMU: &str = "qemu-system-x86_64";
/// QEMU status when the kernel reported success (`(0x10 << 1) | 1`).
const EXIT_PASS: i32 = 33;
/// Seconds before QEMU is killed, unless `--timeout` says otherwise.
const DEFAULT_TIMEOUT: u64 = 120;

/// Which task is parsing its options.
#[derive(Clone, Copy, PartialEq)]
enum Task {
    /// `qemu`: build the kernel, run the demo.
    Demo,
    /// `qemu-test`: build the kernel, run the suite.
    Suite,
    /// `boot <elf>`: a built kernel, the demo unless `--suite`.
    Boot,
}

/// The tasks' options.
struct Opts {
    /// `--skip-invlpg`: build the deliberately broken kernel.
    skip_invlpg: bool,
    /// `--suite` (boot only): the in-kernel suite instead of the demo.
    suite: bool,
    /// The ELF to boot (boot only).
    elf: Option<PathBuf>,
    /// `--timeout`: QEMU is killed after it.
    timeout: Duration,
    /// `--smp`: the guest's CPUs.
    smp: u32,
    /// `--memory`: the guest's RAM, as QEMU's `-m`.
    memory: String,
    /// `--append`: kernel command-line words after the mode.
    append: Vec<String>,
}

/// Parses `task`'s options; an option it does not take is an error.
fn parse(args: &[String], task: Task) -> Result<Opts, String> {
    let mut o = Opts {
        skip_invlpg: false,
        suite: task == Task::Suite,
        elf: None,
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
            "--skip-invlpg" if task != Task::Boot => o.skip_invlpg = true,
            "--suite" if task == Task::Boot => o.suite = true,
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
            elf if task == Task::Boot && o.elf.is_none() && !elf.starts_with('-') => {
                o.elf = Some(elf.into());
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if task == Task::Boot && o.elf.is_none() {
        return Err("boot needs the kernel ELF's path".into());
    }
    Ok(o)
}

/// The options every task takes.
const OPTIONS: &str = "  --timeout SECS   kill QEMU after SECS seconds (default 120)
  --smp N          CPUs (default 2)
  --memory SIZE    RAM, as QEMU's -m (default 256M)
  --append WORD    kernel command line, repeatable: filter=SUBSTRING runs
                   only matching tests; platform adds the bare platform's
                   chapters to the demo; crash=double-fault|triple-fault
                   checks the failure paths";

/// The option of the tasks that build the kernel.
const BUILD_OPTION: &str =
    "  --skip-invlpg    deliberately broken TLB shootdown (the TLB tests must fail)";

/// `cargo xtask qemu --help`.
pub(crate) fn demo_usage() -> String {
    format!(
        "usage: cargo xtask qemu [OPTIONS]\n\
         Builds the test kernel and boots it in QEMU: the narrated demo.\n\n\
         options:\n{BUILD_OPTION}\n{OPTIONS}"
    )
}

/// `cargo xtask qemu-test --help`.
pub(crate) fn test_usage() -> String {
    format!(
        "usage: cargo xtask qemu-test [OPTIONS]\n\
         Builds the test kernel and boots it in QEMU: the in-kernel suite, a\n\
         pass only on QEMU status 33 and a final `N passed, 0 failed`.\n\n\
         options:\n{BUILD_OPTION}\n{OPTIONS}"
    )
}

/// `cargo xtask boot --help`.
pub(crate) fn boot_usage() -> String {
    format!(
        "usage: cargo xtask boot <ELF> [OPTIONS]\n\
         Boots an already built kernel in QEMU: the demo, as `cargo xtask qemu`.\n\
         The runner of `cargo run --target {TARGET} -p machvm-kernel`\n\
         (arguments after `--` come here).\n\n\
         options:\n  --suite          the in-kernel suite instead of the demo\n{OPTIONS}"
    )
}

/// Checks `qemu-test`'s options without running anything.
pub(crate) fn check_test_options(args: &[String]) -> Result<(), String> {
    parse(args, Task::Suite).map(|_| ())
}

/// `cargo xtask qemu-test`: true only if the kernel reported success through
/// `isa-debug-exit` and printed `N passed, 0 failed`.
pub(crate) fn qemu_test(args: &[String]) -> bool {
    build_and_run(args, Task::Suite)
}

/// `cargo xtask qemu`: the narrated demo.
pub(crate) fn qemu_demo(args: &[String]) -> bool {
    build_and_run(args, Task::Demo)
}

/// Builds the kernel and boots it.
fn build_and_run(args: &[String], task: Task) -> bool {
    let Some(opts) = options(args, task) else {
        return false;
    };
    if !ensure_target() {
        return false;
    }
    let Some(qemu) = ensure_qemu() else {
        return false;
    };
    let Some(user_bins) = build_user() else {
        return false;
    };
    let Some(elf) = build_kernel(opts.skip_invlpg, &user_bins) else {
        return false;
    };
    launch(&qemu, &elf, &opts)
}

/// `cargo xtask boot <elf>`: boots a kernel cargo built.
pub(crate) fn boot_elf(args: &[String]) -> bool {
    let Some(opts) = options(args, Task::Boot) else {
        return false;
    };
    let elf = opts.elf.as_deref().unwrap_or(Path::new(""));
    if !elf.is_file() {
        eprintln!("xtask boot: no kernel at {}", elf.display());
        return false;
    }
    let Some(qemu) = ensure_qemu() else {
        return false;
    };
    launch(&qemu, elf, &opts)
}

/// [`parse`], printing the error and the task's usage on failure.
fn options(args: &[String], task: Task) -> Option<Opts> {
    parse(args, task)
        .map_err(|e| {
            let usage = match task {
                Task::Demo => demo_usage(),
                Task::Suite => test_usage(),
                Task::Boot => boot_usage(),
            };
            eprintln!("xtask: {e}\n\n{usage}");
        })
        .ok()
}

/// Boots `elf` in the demo or the suite and judges the run.
fn launch(qemu: &Path, elf: &Path, opts: &Opts) -> bool {
    let mode = if opts.suite { "test" } else { "demo" };
    let append = std::iter::once(mode)
        .chain(opts.append.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let outcome = match boot(qemu, elf, &append, opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask: cannot run {}: {e}", qemu.display());
            return false;
        }
    };
    report(&outcome, !opts.suite)
}

/// What a QEMU run produced.
struct Outcome {
    /// QEMU's exit status (`None`: killed by a signal).
    status: Option<i32>,
    /// True if xtask killed it at the timeout.
    timed_out: bool,
    /// The last console line, if it was `N passed, M failed`.
    final_line: Option<(u64, u64)>,
    /// Wall time of the run.
    elapsed: Duration,
}

/// Judges a run and says why it failed; `demo` needs no summary line.
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

/// Runs QEMU on `elf` with kernel command line `append`, streaming the
/// serial console to stdout, and kills it at the timeout.
fn boot(qemu: &Path, elf: &Path, append: &str, o: &Opts) -> std::io::Result<Outcome> {
    let mut cmd = Command::new(qemu);
    // SMEP and SMAP: the kernel turns both on and refuses to run without.
    cmd.args(["-accel", "tcg", "-machine", "pc"])
        .args(["-cpu", "qemu64,+smep,+smap"])
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

/// Builds the user programs (`crates/machvm-user-programs`) the kernel
/// embeds, into the kernel's target directory; returns their directory,
/// for the kernel build's `MACHVM_USER_BINS`. Never from the kernel's
/// `build.rs`: a nested cargo would wait on the outer build's locks.
pub(crate) fn build_user() -> Option<String> {
    let dir = target_subdir("kernel");
    if !cargo(&bare_metal("build", &["machvm-user-programs"], &dir)) {
        eprintln!("xtask: building the user programs failed");
        return None;
    }
    let bins = target_dir().join(format!("kernel/{TARGET}/release"));
    Some(bins.to_string_lossy().into_owned())
}

/// Builds the kernel, embedding the user programs of `user_bins`, and
/// returns its ELF.
fn build_kernel(skip_invlpg: bool, user_bins: &str) -> Option<PathBuf> {
    let dir = target_subdir("kernel");
    let mut args = bare_metal("build", &["machvm-kernel"], &dir);
    if skip_invlpg {
        args.extend(["--features", "skip-invlpg"]);
    }
    if !cargo_env(&args, &[("MACHVM_USER_BINS", user_bins)]) {
        eprintln!("xtask: building the kernel failed");
        return None;
    }
    let elf = target_dir().join(format!("kernel/{TARGET}/release/machvm-kernel"));
    if !elf.exists() {
        eprintln!("xtask: no kernel at {}", elf.display());
        return None;
    }
    Some(elf)
}

/// `cargo clippy` for the kernel target, warnings denied.
pub(crate) fn clippy_kernel() -> bool {
    let dir = target_subdir("kernel");
    let packages = ["machvm-kernel", "machvm-user", "machvm-user-programs"];
    let mut args = bare_metal("clippy", &packages, &dir);
    args.extend(["--", "-D", "warnings"]);
    ensure_target() && cargo(&args)
}

/// `cargo <cmd> -p <packages>… --release` for the bare-metal target, into
/// `dir`.
fn bare_metal<'a>(cmd: &'a str, packages: &[&'a str], dir: &'a str) -> Vec<&'a str> {
    let mut args = vec![cmd];
    for p in packages {
        args.extend(["-p", p]);
    }
    args.extend(["--release", "--target", TARGET, "--target-dir", dir]);
    args
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
