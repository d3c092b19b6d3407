//! `cargo xtask`: project tasks that need more than one cargo command.
//!
//! - `setup`        idempotent prerequisites (scripts/setup.sh): rust-src, LLVM 22, bpf-linker, mounts
//! - `lint`         `cargo fmt --check` and `cargo clippy` (warnings are errors)
//! - `test`         setup, lint, build every binary, run every test (kernel tests need root)
//! - `fuzz`         run every fuzz target N seconds (stable, coverage-free driver)
//! - `run -- ARGS`  setup, build release, run `agentid ARGS`
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

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

/// Smoke-level fuzzing in `cargo xtask test`: 8 targets × 3 s keeps it under ~30 s.
const FUZZ_SMOKE_SECONDS: u64 = 3;

fn fuzz(seconds: u64, seed: Option<u64>, targets: &[String]) -> anyhow::Result<()> {
    // The debug profile: overflow checks on, and the test build already has it.
    let mut cmd = cargo();
    cmd.args([
        "run",
        "-q",
        "-p",
        "agentid-tests",
        "--bin",
        "agentid-fuzz",
        "--",
    ])
    .args(["--seconds", &seconds.to_string()]);
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    for t in targets {
        cmd.args(["--target", t]);
    }
    status(cmd).context("fuzzing (inputs that crashed are in tests/fuzz/artifacts/)")
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
            fuzz(FUZZ_SMOKE_SECONDS, None, &[])
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
