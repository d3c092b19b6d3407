//! `agentid audit`: check the tamper-evident audit log, print its public key, export an
//! agent's evidence. Offline: no daemon, no probes; only read access to the files.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, bail};

use crate::{
    audit::{
        self, DEFAULT_AUDIT_DIR, DEFAULT_KEY_PATH, VerifyOptions, parse_public_key,
        public_key_base64,
    },
    identity::{DEFAULT_AGENTS_DIR, Registry},
};

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Check every hash, the chain and the checkpoint signatures of the audit log (or of an
    /// exported bundle). Exits non-zero on damage, naming the first damaged record.
    Verify {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_AUDIT_DIR)]
        dir: PathBuf,
        /// The public key the checkpoints must be signed with (base64, or a file holding
        /// it). Without it the key embedded in the log is used, which a forger can replace.
        #[arg(long, value_name = "KEY")]
        pubkey: Option<String>,
        /// Verify this exported bundle instead of the log.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// The daemon stopped cleanly: a log without its final checkpoint is truncated.
        #[arg(long)]
        expect_closed: bool,
        /// What a SIEM sink received (e.g. a `file` sink's JSON lines, or syslog lines),
        /// or `fleet`: what the fleet's NATS cluster holds for this host (`[fleet]` of
        /// --config). Fails if the log lacks an anchored checkpoint (rolled back, cut) or
        /// disagrees with one (rewritten). A file named `fleet`: `./fleet`.
        #[arg(long, value_name = "FILE|fleet", conflicts_with = "bundle")]
        anchors: Option<PathBuf>,
        /// With `--anchors fleet`: the configuration whose `[fleet]` names the cluster.
        #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// With `--anchors fleet`: whose anchors (default: the configuration's host).
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// Print the audit key chain's first public key (base64), to pin somewhere the host
    /// can't change. The key rotates at every checkpoint; this first key stays what
    /// `verify --pubkey` walks the chain from.
    Pubkey {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_KEY_PATH)]
        key: PathBuf,
    },
    /// Export one agent's records, with the signed chain segment that proves them, to a
    /// bundle `agentid audit verify --bundle` checks on any machine.
    Export {
        /// The agent's SPIFFE ID.
        #[arg(long, value_name = "ID")]
        agent: String,
        /// From this time: RFC 3339 (`2025-11-28T10:00:00Z`) or a duration ago (`2h`).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Up to this time, same forms as --since.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        #[arg(long, value_name = "DIR", default_value = DEFAULT_AUDIT_DIR)]
        dir: PathBuf,
        /// Registrations to include the agent's from (skipped when absent).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_AGENTS_DIR)]
        agents_dir: PathBuf,
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify {
            dir,
            pubkey,
            bundle,
            expect_closed,
            anchors,
            config,
            host,
        } => {
            let pubkey = pubkey.as_deref().map(read_pubkey).transpose()?;
            if let Some(bundle) = bundle {
                let report = audit::verify_bundle(&bundle, pubkey)?;
                if !report.is_ok() {
                    bail!("bundle {}: {report}", bundle.display());
                }
                writeln!(std::io::stdout().lock(), "{report}")?;
            } else {
                let anchors = match anchors {
                    Some(path) => Some(read_anchors(&path, &config, host.as_deref()).await?),
                    None => None,
                };
                verify_log(&dir, pubkey, expect_closed, anchors)?;
            }
        }
        AuditCommand::Pubkey { key } => {
            let origin = audit::chain_origin(&key).with_context(|| {
                format!(
                    "reading {} (the daemon creates it at first start)",
                    key.display()
                )
            })?;
            writeln!(std::io::stdout().lock(), "{}", public_key_base64(&origin))?;
        }
        AuditCommand::Export {
            agent,
            since,
            until,
            dir,
            agents_dir,
            output,
        } => {
            let now = SystemTime::now();
            let since = since.as_deref().map(|s| parse_when(s, now)).transpose()?;
            let until = until.as_deref().map(|s| parse_when(s, now)).transpose()?;
            let registration = registration(&agents_dir, &agent)?;
            let summary = audit::export_bundle(&dir, &agent, since, until, registration, &output)?;
            writeln!(
                std::io::stdout().lock(),
                "wrote {}: {} records of {agent} in a chain segment of {} (seq {}..={}){}",
                output.display(),
                summary.relevant,
                summary.records,
                summary.first_seq,
                summary.last_seq,
                if summary.covered {
                    ""
                } else {
                    "; the newest are not signed by a checkpoint yet: export again after the \
                     next one"
                }
            )?;
        }
    }
    Ok(())
}

/// `--anchors`: what a sink received (a file), or what the fleet holds for a host. Returns
/// the anchors and where they came from, for the messages.
async fn read_anchors(
    path: &Path,
    config: &Path,
    host: Option<&str>,
) -> anyhow::Result<(audit::Anchors, String)> {
    if path != Path::new("fleet") {
        let found = audit::Anchors::read(path)
            .with_context(|| format!("reading anchors {}", path.display()))?;
        return Ok((found, path.display().to_string()));
    }
    let cfg = crate::config::Config::load(Some(config))?;
    let Some(fleet) = &cfg.fleet else {
        bail!(
            "--anchors fleet: {} has no [fleet] (the cluster to ask)",
            config.display()
        );
    };
    let host = host.map_or_else(|| fleet.host_name(), str::to_owned);
    let (found, messages) = crate::fleet::anchors::read(fleet, &host)
        .await
        .with_context(|| format!("reading host {host}'s anchors from the fleet"))?;
    Ok((
        found,
        format!(
            "the fleet's anchors of host {host} ({messages} messages on {})",
            crate::fleet::anchors::subject(&host)
        ),
    ))
}

/// `verify` of a log, and with `--anchors`, against what a sink or the fleet received.
fn verify_log(
    dir: &Path,
    pubkey: Option<ed25519_dalek::VerifyingKey>,
    expect_closed: bool,
    anchors: Option<(audit::Anchors, String)>,
) -> anyhow::Result<()> {
    let (found, source) = anchors.unzip();
    // A log whose oldest files were removed starts at a later key: the anchors of the
    // removed checkpoints lead there from the pinned first key.
    let start = match (pubkey, &found) {
        (Some(pk), Some(found)) => Some(audit::start_key(dir, found, pk)?),
        _ => pubkey,
    };
    let report = audit::verify_with(
        dir,
        &VerifyOptions {
            pubkey: start,
            expect_closed,
        },
    )?;
    if !report.is_ok() {
        bail!("audit log {}: {report}", dir.display());
    }
    let mut out = std::io::stdout().lock();
    if let (Some(source), Some(found)) = (source, found) {
        let check = audit::check_anchors(dir, &found, pubkey)?;
        if !check.is_ok() {
            bail!("audit log {} against {source}: {check}", dir.display());
        }
        writeln!(out, "{report}\n{check}")?;
    } else {
        writeln!(out, "{report}")?;
    }
    Ok(())
}

/// `--pubkey`: the base64 key itself, or a file holding it.
fn read_pubkey(arg: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_owned()
    };
    parse_public_key(&text).context("--pubkey")
}

fn parse_when(text: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text)
        .with_context(|| format!("{text:?} is neither an RFC 3339 time nor a duration"))?;
    now.checked_sub(ago)
        .with_context(|| format!("{text:?} ago is before the epoch"))
}

fn registration(agents_dir: &Path, agent: &str) -> anyhow::Result<Option<serde_json::Value>> {
    if !agents_dir.is_dir() {
        return Ok(None);
    }
    let registry = Registry::load_dir(agents_dir);
    registry
        .agents()
        .iter()
        .find(|a| a.id.as_str() == agent)
        .map(|a| serde_json::to_value(a.as_ref()))
        .transpose()
        .context("encoding the registration")
}
