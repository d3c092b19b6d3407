//! `cargo xtask`: project tasks that need more than one cargo command.
//!
//! - `setup`        idempotent prerequisites (scripts/setup.sh): rust-src, LLVM 22, bpf-linker, mounts
//! - `lint`         `cargo fmt --check` and `cargo clippy` (warnings are errors)
//! - `test`         setup, lint, build every binary, run every test (kernel tests need root)
//! - `run -- ARGS`  setup, build release, run `agentid ARGS`
//! - `bench`        overhead vs auditd/bpftrace, completeness, throughput, resources, latency
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
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
    /// Setup, lint, build all binaries, run the whole test suite.
    Test {
        /// Skip the lint step.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
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
        /// JSON results file (default `target/bench/results.json`; `results.md` beside it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

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

fn status(mut cmd: Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
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
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    status(clippy)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => setup(),
        Task::Lint => lint(),
        Task::Test { no_lint, args } => {
            setup()?;
            if !no_lint {
                lint()?;
            }
            // Integration tests run the `agentid` binary of another package: build it first.
            let mut build = cargo();
            build.args(["build", "--workspace", "--bins"]);
            status(build)?;
            let mut test = cargo();
            test.args(["test", "--workspace", "--"]).args(args);
            status(test)?;
            // Last, as a smoke test: every condition must run to the end (no thresholds).
            // Like the kernel tests, it skips without root unless AGENTID_REQUIRE_BPF=1.
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
                    out: None,
                },
            )
        }
        Task::Bench { quick, out } => {
            setup()?;
            bench::run(&root(), &bench::Options { quick, out })
        }
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
