//! `cargo xtask`: project tasks that need more than one cargo command.
//!
//! - `setup`        idempotent prerequisites (scripts/setup.sh): rust-src, LLVM 22, bpf-linker, mounts
//! - `lint`         `cargo fmt --check` and `cargo clippy` (warnings are errors)
//! - `test`         setup, lint, build every binary, run every test (kernel tests need root),
//!   then the kernel tests again in a QEMU guest on each of `AGENTID_TEST_KERNELS`
//!   (default `linux-image-amd64`, Debian 12's 6.1 kernel; `none` skips)
//!   and `tests/systemd.rs` in a guest whose PID 1 is systemd (the first of those kernels)
//! - `test --kernel K` the kernel integration tests inside QEMU on kernel K (a vmlinuz, a
//!   `.deb`, or a Debian package name such as `linux-image-amd64`); see `vm.rs`
//! - `test --systemd [--kernel K]` only the systemd guest: the shipped unit under a real
//!   systemd PID 1
//! - `fuzz`         run every fuzz target N seconds (stable, coverage-free driver)
//! - `bench`        overhead vs auditd/bpftrace, completeness, throughput, resources, latency
//! - `run -- ARGS`  setup, build release, run `agentid ARGS`
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (idempotent; a fast no-op when all is there).
    Setup,
    /// rustfmt and clippy, warnings denied.
    Lint,
    /// Setup, lint, build all binaries, run the whole test suite, then the kernel tests on
    /// the kernels of `AGENTID_TEST_KERNELS` (default: `linux-image-amd64`; `none` skips) in QEMU.
    Test {
        /// Skip the lint step.
        #[arg(long)]
        no_lint: bool,
        /// Instead of the host suite: boot this kernel under QEMU (TCG) and run the kernel
        /// integration tests inside it. A vmlinuz path, a `.deb`, or a Debian package name
        /// (`linux-image-amd64`, `linux-image-6.1.0-…-cloud-amd64`) fetched with apt-get.
        #[arg(long, value_name = "PATH_OR_PACKAGE")]
        kernel: Option<String>,
        /// Instead of the host suite: boot the guest (`--kernel`, default
        /// `linux-image-amd64`) with systemd as PID 1 and run `tests/systemd.rs` there: the
        /// shipped `scripts/agentid.service`, installed by `scripts/install.sh`, must trace.
        #[arg(long)]
        systemd: bool,
        /// Guest time limit, in minutes (the guests only).
        #[arg(long, default_value_t = 20)]
        guest_timeout_mins: u64,
        /// Extra arguments for `cargo test` (after `--`); with `--kernel`, for the kernel
        /// test binary in the guest (test name filters, `--test-threads`, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the fuzz targets (tests/src/fuzz.rs) for N seconds each; crashes are saved
    /// under tests/fuzz/artifacts/ and fail the task.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// PRNG seed (a run is reproducible from it, up to timing).
        #[arg(long)]
        seed: Option<u64>,
        /// Only these targets (default: all).
        #[arg(long)]
        target: Vec<String>,
    },
    /// Setup, build release, run `agentid` with the given arguments.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build release, benchmark (needs root); results in target/bench/.
    Bench {
        /// A ~1-minute smoke run with small sizes.
        #[arg(long)]
        quick: bool,
        /// Only the daemon-resources run, sampled by `perf record`: the daemon's time per
        /// event by thread and by stage (`target/bench/profile.json`).
        #[arg(long, conflicts_with = "fleet")]
        profile: bool,
        /// Only the TLS client-overhead section (`target/bench/tls.json`).
        #[arg(long, conflicts_with = "profile")]
        tls: bool,
        /// Only the enforcement section: a connect storm by an enforced agent vs monitor
        /// mode vs no tracer, and resolve+connect cycles/s.
        #[arg(long, conflicts_with_all = ["profile", "tls"])]
        enforcement: bool,
        /// Only the fleet section (a 3-node `nats-server` cluster): publish throughput,
        /// cross-host alert latency, daemon CPU with the fleet on vs off
        /// (`target/bench/fleet.json`). The full run includes it; `--quick` does not.
        #[arg(long, conflicts_with_all = ["quick", "tls", "enforcement"])]
        fleet: bool,
        /// Only the scale curve: daemon CPU and RSS by event rate and by live processes,
        /// and the highest rate with zero ring-buffer drops (`target/bench/scale.json`).
        #[arg(long, conflicts_with_all = ["profile", "tls", "enforcement", "fleet"])]
        scale: bool,
        /// Only the kernel-path overhead section (connect, exec and mixed storms under no
        /// tracer, agentid, auditd and bpftrace; wall and CPU ratios, paired per round).
        #[arg(long, conflicts_with_all = ["profile", "tls", "enforcement", "fleet", "scale"])]
        overhead: bool,
        /// JSON results file (default `target/bench/results.json`; `results.md` beside it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The daemons' ring buffer in KiB (`ring_buffer_kib`), to compare sizes.
        #[arg(long)]
        ring_kib: Option<u32>,
    },
}

/// Wall-clock limit on the host test run (`cargo test --workspace`).
const HOST_TEST_LIMIT_MINS: u64 = 30;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn status(mut cmd: Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

/// Like [`status`], but a run that outlives `limit` is killed (its whole process group: test
/// binaries and the tracers they spawned) and reported, so one hung test fails CI in minutes
/// with its name on screen instead of eating the whole CI budget.
fn status_within(mut cmd: Command, limit: Duration) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawning {shown}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().context("waiting for the test run")? {
            if !st.success() {
                bail!("{shown} failed: {st}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pgid = i32::try_from(child.id()).context("pid")?;
            // SAFETY: signalling the process group we created above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            bail!(
                "{shown} still running after {} min: killed (a test hung; the last test \
                 named \"has been running for over 60 seconds\" above is the one)",
                limit.as_secs() / 60
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn setup() -> anyhow::Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/setup.sh"));
    status(cmd).context("setup (scripts/setup.sh)")
}

fn lint() -> anyhow::Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    status(fmt)?;
    let mut clippy = cargo();
    clippy
        .args(["clippy", "--workspace", "--all-targets"])
        .args(WITH_KAFKA)
        .args(["--", "-D", "warnings"]);
    status(clippy)
}

/// The Kafka sink and its test are behind a feature (librdkafka is a C build of ~1.5 min):
/// every debug build here turns it on (one feature set, so nothing is built twice); the
/// release builds (bench, `run`) leave it off.
const WITH_KAFKA: [&str; 2] = ["--features", "agentid-tests/kafka"];

/// Smoke-level fuzzing in `cargo xtask test`: 8 targets × 3 s keeps it under ~30 s.
const FUZZ_SMOKE_SECONDS: u64 = 3;

fn fuzz(seconds: u64, seed: Option<u64>, targets: &[String]) -> anyhow::Result<()> {
    // The debug profile: overflow checks on, and the test build already has it.
    let mut cmd = cargo();
    cmd.args(["run", "-q", "-p", "agentid-tests", "--bin", "agentid-fuzz"])
        .args(WITH_KAFKA)
        .arg("--")
        .args(["--seconds", &seconds.to_string()]);
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    for t in targets {
        cmd.args(["--target", t]);
    }
    status(cmd).context("fuzzing (inputs that crashed are in tests/fuzz/artifacts/)")
}

/// `cargo xtask test`: setup, lint, the host tests, the kernel tests on each other
/// kernel, the systemd guest, a fuzz smoke run and the quick bench.
fn test(
    no_lint: bool,
    kernel: Option<String>,
    systemd: bool,
    guest_timeout_mins: u64,
    args: &[String],
) -> anyhow::Result<()> {
    setup()?;
    if !no_lint {
        lint()?;
    }
    // Integration tests run the `agentid` binary of another package: build it first.
    let mut build = cargo();
    build
        .args(["build", "--workspace", "--bins"])
        .args(WITH_KAFKA);
    status(build)?;
    let guest_timeout = Duration::from_mins(guest_timeout_mins);
    if systemd {
        let kernel = kernel.as_deref().unwrap_or(DEFAULT_GUEST_KERNEL);
        return test_in_guest(kernel, guest_timeout, args, vm::GuestMode::Systemd);
    }
    if let Some(kernel) = kernel {
        return test_in_guest(&kernel, guest_timeout, args, vm::GuestMode::Chroot);
    }
    let mut test = cargo();
    test.args(["test", "--workspace"])
        .args(WITH_KAFKA)
        .arg("--")
        .args(args);
    // The host tests take ~5 minutes on 2 cores; 30 is a hang, not a slow machine.
    status_within(test, Duration::from_mins(HOST_TEST_LIMIT_MINS))?;
    // Then the kernel tests again on each other kernel (about 3.5 minutes each under
    // TCG): Debian 12's default kernel unless AGENTID_TEST_KERNELS says otherwise.
    let kernels = guest_kernels();
    for kernel in &kernels {
        test_in_guest(kernel, guest_timeout, &[], vm::GuestMode::Chroot)?;
    }
    // The shipped unit under a real systemd PID 1 (this host's PID 1 need not be
    // systemd): about a minute and a half more, on the first guest kernel.
    match kernels.first() {
        Some(kernel) => test_in_guest(kernel, guest_timeout, &[], vm::GuestMode::Systemd)?,
        None => eprintln!("SKIPPED the systemd guest: AGENTID_TEST_KERNELS=none"),
    }
    // A fuzz smoke run, so no target rots.
    fuzz(FUZZ_SMOKE_SECONDS, None, &[])?;
    // Last, the bench as a smoke test: every condition must run to the end (no
    // thresholds). Like the kernel tests, it skips without root unless
    // AGENTID_REQUIRE_BPF=1.
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if !root_user && std::env::var_os("AGENTID_REQUIRE_BPF").is_none_or(|v| v != "1") {
        eprintln!("SKIPPED cargo xtask bench --quick: needs root");
        return Ok(());
    }
    bench::run(
        &root(),
        &bench::Options {
            quick: true,
            only: None,
            out: None,
            ring_kib: None,
        },
    )
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => setup(),
        Task::Lint => lint(),
        Task::Test {
            no_lint,
            kernel,
            systemd,
            guest_timeout_mins,
            args,
        } => test(no_lint, kernel, systemd, guest_timeout_mins, &args),
        Task::Bench {
            quick,
            profile,
            tls,
            enforcement,
            fleet,
            scale,
            overhead,
            out,
            ring_kib,
        } => {
            setup()?;
            bench::run(
                &root(),
                &bench::Options {
                    quick,
                    only: [
                        (profile, bench::Only::Profile),
                        (tls, bench::Only::Tls),
                        (enforcement, bench::Only::Enforcement),
                        (fleet, bench::Only::Fleet),
                        (scale, bench::Only::Scale),
                        (overhead, bench::Only::Overhead),
                    ]
                    .into_iter()
                    .find_map(|(on, only)| on.then_some(only)),
                    out,
                    ring_kib,
                },
            )
        }
        Task::Fuzz {
            seconds,
            seed,
            target,
        } => fuzz(seconds, seed, &target),
        Task::Run { args } => {
            setup()?;
            let mut build = cargo();
            build.args(["build", "--release", "-p", "agentid-user"]);
            status(build)?;
            let mut agentid = Command::new(root().join("target/release/agentid"));
            agentid.args(args);
            status(agentid)
        }
    }
}

/// Kernels `cargo xtask test` also runs the kernel tests on, in a guest:
/// `AGENTID_TEST_KERNELS` (comma-separated, as `--kernel` takes them; empty or `none` for
/// none), by default Debian 12's standard kernel (6.1).
fn guest_kernels() -> Vec<String> {
    let spec =
        std::env::var("AGENTID_TEST_KERNELS").unwrap_or_else(|_| DEFAULT_GUEST_KERNEL.to_owned());
    spec.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty() && *k != "none")
        .map(str::to_owned)
        .collect()
}

/// Bookworm's meta-package: the current Debian 6.1 kernel.
const DEFAULT_GUEST_KERNEL: &str = "linux-image-amd64";

/// Builds one integration test binary on the host and returns its path (from cargo's JSON).
fn test_binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "agentid-tests",
        "--test",
        name,
        "--no-run",
        "--message-format=json",
    ])
    .args(WITH_KAFKA);
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("building the {name} tests failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == name
                && m["profile"]["test"] == true
        })
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("no {name} test executable in cargo's output"))
}

/// The kernel tests (or, under systemd, `tests/systemd.rs`) on `kernel`, in a QEMU guest;
/// the guest's test result is ours.
fn test_in_guest(
    kernel: &str,
    timeout: Duration,
    args: &[String],
    mode: vm::GuestMode,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (suite, extra_env): (&str, &[(&str, &str)]) = match mode {
        vm::GuestMode::Chroot => ("kernel", &[]),
        // Tells tests/systemd.rs that this machine is disposable and systemd-booted.
        vm::GuestMode::Systemd => ("systemd", &[("AGENTID_SYSTEMD_TEST", "1")]),
    };
    let binary = test_binary(suite)?;
    let cache = target_dir().join("kernel-vm");
    let image = vm::resolve_kernel(kernel, &cache)?;
    let work = cache.join("run").join(format!(
        "{}-{suite}",
        kernel.rsplit('/').next().unwrap_or(kernel).replace(
            |c: char| !c.is_ascii_alphanumeric() && !"-_.".contains(c),
            "_",
        )
    ));
    // The guest starts from an empty environment; these are passed through.
    let env = ["RUST_LOG", "RUST_TEST_THREADS"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
        .chain(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .collect();
    let code = vm::run_guest(&vm::GuestRun {
        kernel: &image,
        test_binary: &binary,
        test_args: args,
        env,
        work_dir: &work,
        timeout,
        mode,
    })?;
    let took = started.elapsed().as_secs();
    eprintln!(
        "xtask: {suite} tests on {} (guest): exit code {code}, {}m{:02}s",
        image.vmlinuz.display(),
        took / 60,
        took % 60
    );
    if code != 0 {
        bail!("{suite} tests failed in the guest (exit code {code})");
    }
    Ok(())
}
