//! `agentid`: thin entry point; commands live in `agentid::cli`.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agentid",
    version,
    about = "Runtime identity tracer for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach the kernel probes and print exec/fork/exit/connect/send events live (root).
    Trace(agentid::cli::trace::TraceArgs),
    /// Verify the tamper-evident audit log, print its public key, export evidence (offline).
    Audit(agentid::cli::audit::AuditArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentid: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => agentid::cli::trace::run(args).await,
            Command::Audit(args) => agentid::cli::audit::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole context chain, no backtrace.
            eprintln!("agentid: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
