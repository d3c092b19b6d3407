//! `agentid fleet …`: the fleet as the local daemon hears it. Tables by default,
//! `--json` for machines, like the local commands.
use std::{
    io::Write as _,
    time::{Duration, UNIX_EPOCH},
};

use super::{
    client::Client,
    query::{clean, query, show},
};
use crate::{
    api::FleetHost,
    fleet::{FleetAlert, Presence, Revocation, Sighting},
};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum FleetCommand {
    /// Hosts heard from, with their live agents; this host's link state.
    Hosts,
    /// Where each agent runs now (host, sessions, processes).
    Agents,
    /// Which hosts and agents hold each credential (fingerprints only); FP narrows to
    /// one credential (`kind:hex`, 12 hex digits or more).
    Credentials { fingerprint: Option<String> },
    /// Fleet alerts (claimed once in the fleet, naming every host involved).
    Alerts,
    /// Revoked credentials, with who revoked them and where.
    Revocations,
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub async fn run(client: &Client, cmd: FleetCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Hosts => show(client, "/v1/fleet/hosts", json, print_hosts).await,
        FleetCommand::Agents => show(client, "/v1/fleet/agents", json, print_agents).await,
        FleetCommand::Credentials { fingerprint } => {
            let path = format!(
                "/v1/fleet/credentials{}",
                query(&[("fingerprint", fingerprint)])
            );
            show(client, &path, json, print_credentials).await
        }
        FleetCommand::Alerts => show(client, "/v1/fleet/alerts", json, print_alerts).await,
        FleetCommand::Revocations => {
            show(client, "/v1/fleet/revocations", json, print_revocations).await
        }
    }
}

fn print_hosts(v: &Vec<FleetHost>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<24} {:>6} {:>9} {:<21} STATE",
        "HOST", "AGENTS", "PROCESSES", "HEARTBEAT"
    )?;
    for h in v {
        let state = match &h.link {
            Some(l) if l.connected => format!(
                "this host, connected ({} published, {} pending bytes, {} dropped)",
                l.stats.published, l.stats.pending_bytes, l.stats.dropped
            ),
            Some(l) => format!(
                "this host, NOT connected ({} pending bytes, {} dropped){}",
                l.stats.pending_bytes,
                l.stats.dropped,
                l.stats
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {}", clean(e)))
                    .unwrap_or_default()
            ),
            None if h.fresh => "live".into(),
            None => "silent".into(),
        };
        let hb = if h.last_heartbeat_ms == 0 {
            "-".into()
        } else {
            time(h.last_heartbeat_ms)
        };
        writeln!(
            o,
            "{:<24} {:>6} {:>9} {:<21} {state}",
            clean(&h.host),
            h.agents,
            h.processes,
            hb
        )?;
    }
    Ok(())
}

fn print_agents(v: &Vec<Presence>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:<24} {:>8} {:>9} HEARTBEAT",
        "AGENT", "HOST", "SESSIONS", "PROCESSES"
    )?;
    for p in v {
        writeln!(
            o,
            "{:<48} {:<24} {:>8} {:>9} {}",
            clean(&p.agent),
            clean(&p.host),
            p.sessions,
            p.processes,
            time(p.heartbeat_ms)
        )?;
    }
    Ok(())
}

fn print_credentials(v: &Vec<Sighting>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<22} {:<24} {:<48} {:<21} LAST SEEN",
        "FINGERPRINT", "HOST", "AGENT", "FIRST SEEN"
    )?;
    for s in v {
        writeln!(
            o,
            "{:<22} {:<24} {:<48} {:<21} {}",
            clean(&s.fingerprint),
            clean(&s.host),
            clean(&s.agent),
            time(s.first_seen_ms),
            time(s.last_seen_ms)
        )?;
    }
    Ok(())
}

fn print_alerts(v: &Vec<FleetAlert>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    for a in v {
        writeln!(
            o,
            "{} {:<8} {:<18} count={} raised by {} — {}",
            time(a.last_seen_ms),
            clean(&a.severity),
            clean(&a.rule),
            a.count,
            clean(&a.raised_by),
            clean(&a.description)
        )?;
    }
    Ok(())
}

fn print_revocations(v: &Vec<Revocation>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{:<30} {:<24} {:<12} TIME", "FINGERPRINT", "HOST", "BY")?;
    for r in v {
        writeln!(
            o,
            "{:<30} {:<24} {:<12} {}",
            clean(&r.prefix),
            clean(&r.host),
            clean(&r.by),
            time(r.time_ms)
        )?;
    }
    Ok(())
}
