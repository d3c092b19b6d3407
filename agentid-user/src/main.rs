//! `agentid`: thin entry point; commands live in `agentid::cli` and `agentid::daemon`.
#![expect(
    unused_crate_dependencies,
    reason = "a thin front over the `agentid` library: the package's dependencies are the library's"
)]
use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agentid",
    version,
    about = "Runtime identity tracer for AI agents"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "AGENTID_SOCKET", default_value = agentid::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host daemon (root): probes, attribution, store, API.
    Daemon {
        /// Configuration file (default /etc/agentid/agentid.toml; absent = built-in defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Attach the kernel probes and print events live, without the daemon (root).
    Trace(agentid::cli::trace::TraceArgs),
    /// Verify the tamper-evident audit log, print its public key, export evidence (offline).
    Audit(agentid::cli::audit::AuditArgs),
    #[command(flatten)]
    Query(agentid::cli::query::QueryCommand),
    /// List the detection rules: id, default severity, threat tags, description (offline).
    Rules,
    /// `token fetch --aud X`: a JWT-SVID for this process's agent from the issuer's socket.
    Token(agentid::cli::token::TokenArgs),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon { config } => {
            let cfg = agentid::config::Config::load(config.as_deref())?;
            init_logging(cfg.log_format == agentid::config::LogFormat::Json);
            agentid::daemon::run(cfg, config).await
        }
        Command::Trace(args) => {
            init_logging(false);
            agentid::cli::trace::run(args).await
        }
        Command::Audit(args) => agentid::cli::audit::run(args).await,
        Command::Rules => agentid::cli::rules::run(cli.json),
        Command::Token(args) => agentid::cli::token::run(args, cli.json).await,
        Command::Query(q) => {
            let client = agentid::cli::client::Client::new(&cli.socket);
            agentid::cli::query::run(&client, q, cli.json).await
        }
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write, and a closed
            // stdout must end the command quietly like every other printing path.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "agentid", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A daemon that loses a pipe must say so; a command printing to a reader that went
    // away (`agentid events | head`) has simply finished.
    let quiet_on_closed_output = !matches!(cli.command, Command::Daemon { .. });
    if !quiet_on_closed_output {
        agentid::sys::limit_malloc_arenas();
    }
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
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if quiet_on_closed_output && agentid::cli::is_closed_output(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole context chain, no backtrace.
            eprintln!("agentid: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
