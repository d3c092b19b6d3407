//! Operator commands that query the daemon: status, agents, ps, connections, events,
//! alerts, credentials. Tables by default, `--json` for machines.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::client::Client;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum QueryCommand {
    /// Probes, uptime, events/s per kind, drops, store, sinks.
    Status,
    /// Registered agents with live session/process counts (`agents show ID` for one).
    Agents {
        #[command(subcommand)]
        show: Option<AgentsShow>,
    },
    /// Live processes grouped by agent, with lineage.
    Ps {
        /// Only this agent (SPIFFE ID).
        #[arg(long)]
        agent: Option<String>,
        /// Show the process tree.
        #[arg(long)]
        tree: bool,
    },
    /// Outbound connections and UDP sends.
    Connections {
        #[arg(long)]
        agent: Option<String>,
        /// `10m`, `2h`, or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// Attributed events.
    Events {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, value_parser = ["exec", "fork", "exit", "connect", "send", "open"])]
        kind: Option<String>,
        #[arg(long)]
        since: Option<String>,
        /// Keep streaming new events.
        #[arg(short, long)]
        follow: bool,
    },
    /// Alerts.
    Alerts {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long)]
        follow: bool,
    },
    /// Credential fingerprints and the agents that used them (never the secret).
    Credentials {
        #[arg(long)]
        agent: Option<String>,
        #[command(subcommand)]
        action: Option<CredentialsAction>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CredentialsAction {
    /// Revoke a credential: any later use raises `credential-stale`. FP is
    /// `kind:hex` as shown by `agentid credentials` (12 hex digits or more).
    Revoke { fingerprint: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AgentsShow {
    /// One agent: registration, live processes, sessions.
    Show { id: String },
}

/// `--since` as ns since the epoch: a duration back from now, or an RFC 3339 time.
pub fn parse_since(s: &str) -> anyhow::Result<u64> {
    let t = match humantime::parse_duration(s) {
        Ok(d) => SystemTime::now().checked_sub(d).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s).with_context(|| {
            format!("--since {s:?}: expected a duration like 10m or 2h, or an RFC 3339 time")
        })?,
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(if q.is_empty() { '?' } else { '&' });
            let _ = write!(q, "{k}={}", encode(v));
        }
    }
    q
}

/// Percent-encodes a query value (SPIFFE IDs carry `:` and `/`).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

#[expect(
    clippy::too_many_lines,
    reason = "one arm per command, each a few lines"
)]
pub async fn run(client: &Client, cmd: QueryCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        QueryCommand::Status => {
            let v = client.get("/v1/status").await?;
            if json {
                print_json(&v)
            } else {
                print_status(&v)
            }
        }
        QueryCommand::Agents { show: None } => {
            let v = client.get("/v1/agents").await?;
            if json {
                print_json(&v)
            } else {
                print_agents(&v)
            }
        }
        QueryCommand::Agents {
            show: Some(AgentsShow::Show { id }),
        } => {
            let v = client
                .get(&format!("/v1/agent{}", query(&[("id", Some(id))])))
                .await?;
            if json {
                print_json(&v)
            } else {
                print_agent(&v)
            }
        }
        QueryCommand::Ps { agent, tree } => {
            let v = client
                .get(&format!("/v1/processes{}", query(&[("agent", agent)])))
                .await?;
            if json {
                print_json(&v)
            } else {
                print_ps(&v, tree)
            }
        }
        QueryCommand::Connections { agent, since } => {
            let since = since
                .as_deref()
                .map(parse_since)
                .transpose()?
                .map(|n| n.to_string());
            let v = client
                .get(&format!(
                    "/v1/connections{}",
                    query(&[("agent", agent), ("since", since)])
                ))
                .await?;
            if json {
                print_json(&v)
            } else {
                print_events(&v)
            }
        }
        QueryCommand::Events {
            agent,
            kind,
            since,
            follow,
        } => {
            let since = since
                .as_deref()
                .map(parse_since)
                .transpose()?
                .map(|n| n.to_string());
            let q = query(&[
                ("agent", agent),
                ("kind", kind),
                ("since", since),
                ("follow", follow.then(|| "true".into())),
            ]);
            stream_or_list(client, &format!("/v1/events{q}"), follow, json, event_line).await
        }
        QueryCommand::Alerts {
            agent,
            rule,
            since,
            follow,
        } => {
            let since = since
                .as_deref()
                .map(parse_since)
                .transpose()?
                .map(|n| n.to_string());
            let q = query(&[
                ("agent", agent),
                ("rule", rule),
                ("since", since),
                ("follow", follow.then(|| "true".into())),
            ]);
            stream_or_list(client, &format!("/v1/alerts{q}"), follow, json, alert_line).await
        }
        QueryCommand::Credentials {
            action: Some(CredentialsAction::Revoke { fingerprint }),
            ..
        } => {
            let v = client
                .post(&format!(
                    "/v1/credentials/revoke{}",
                    query(&[("fingerprint", Some(fingerprint))])
                ))
                .await?;
            if json {
                print_json(&v)
            } else {
                writeln!(std::io::stdout().lock(), "revoked {}", s(&v["revoked"]))?;
                Ok(())
            }
        }
        QueryCommand::Credentials {
            agent,
            action: None,
        } => {
            let v = client
                .get(&format!("/v1/credentials{}", query(&[("agent", agent)])))
                .await?;
            if json {
                print_json(&v)
            } else {
                print_credentials(&v)
            }
        }
    }
}

async fn stream_or_list(
    client: &Client,
    path: &str,
    follow: bool,
    json: bool,
    line: fn(&Value) -> String,
) -> anyhow::Result<()> {
    let emit = move |v: Value| -> anyhow::Result<()> {
        if v.get("lagged").is_some() {
            eprintln!(
                "agentid: warning: this terminal fell behind; {} items were skipped",
                v["lagged"]
            );
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", line(&v))?;
        }
        out.flush()?;
        Ok(())
    };
    if follow {
        return client.follow(path, emit).await;
    }
    let v = client.get(path).await?;
    if json {
        // A listing is one JSON array; only a follow is a stream of lines.
        return print_json(&v);
    }
    let Some(items) = v.as_array() else {
        bail!("unexpected answer from the daemon")
    };
    if items.is_empty() && !json {
        eprintln!("(none)");
    }
    for item in items {
        emit(item.clone())?;
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn agent_label(v: &Value) -> String {
    match v {
        Value::Object(_) => v["name"]
            .as_str()
            .map_or_else(|| s(&v["id"]), str::to_owned),
        other => s(other),
    }
}

fn short_time(v: &Value) -> String {
    v.as_str().map_or_else(
        || "-".into(),
        |t| t.get(..23).unwrap_or(t).replace('T', " "),
    )
}

fn event_line(v: &Value) -> String {
    let detail = match v["kind"].as_str() {
        Some("exec") => format!(
            "{} {}",
            s(&v["filename"]),
            v["argv"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        ),
        Some("connect" | "send") => {
            let ip = s(&v["dst_ip"]);
            let ip = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            };
            format!("{} {ip}:{}", s(&v["protocol"]), s(&v["dst_port"]))
        }
        Some("exit") => match (&v["exit_code"], &v["signal"]) {
            (Value::Number(c), _) => format!("code {c}"),
            (_, Value::Number(sig)) => format!("signal {sig}"),
            _ => String::new(),
        },
        Some("fork") => format!("child of {}", s(&v["ppid"])),
        Some("open") => s(&v["path"]),
        _ => String::new(),
    };
    let chain = v["acting_for"]
        .as_array()
        .filter(|a| !a.is_empty())
        .map(|a| {
            format!(
                "  (acting for {})",
                a.iter().map(s).collect::<Vec<_>>().join(" → ")
            )
        });
    format!(
        "{:<23} {:<7} {:>7} {:<16} {:<15} {}{}",
        short_time(&v["time"]),
        s(&v["kind"]),
        s(&v["pid"]),
        agent_label(&v["agent"]),
        s(&v["comm"]),
        detail,
        chain.unwrap_or_default()
    )
}

fn alert_line(v: &Value) -> String {
    let agents = v["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x["name"]
                        .as_str()
                        .map_or_else(|| s(&x["id"]), str::to_owned)
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "{:<23} {:<8} {:<22} x{:<4} [{}] {}",
        short_time(&v["last_seen"]),
        s(&v["severity"]),
        s(&v["rule"]),
        s(&v["count"]),
        agents,
        s(&v["title"])
    )
}

fn print_status(v: &Value) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "agentid {} (pid {}), up {}",
        s(&v["version"]),
        s(&v["pid"]),
        humantime::format_duration(Duration::from_secs(v["uptime_s"].as_u64().unwrap_or(0)))
    )?;
    let probes = v["probes"].as_array().map_or(0, Vec::len);
    writeln!(o, "probes:     {probes} attached")?;
    let mut line = String::new();
    if let Some(ev) = v["events"].as_object() {
        for (k, n) in ev {
            let _ = write!(
                line,
                " {k} {n} ({}/s, {} dropped)",
                v["events_per_s"][k], v["drops"][k]
            );
        }
    }
    writeln!(o, "events:    {line}")?;
    writeln!(o, "processes:  {} live", s(&v["processes"]["live"]))?;
    writeln!(
        o,
        "registry:   {} agents from {} ({} errors)",
        s(&v["registry"]["agents"]),
        s(&v["registry"]["dir"]),
        v["registry"]["errors"].as_array().map_or(0, Vec::len)
    )?;
    for e in v["registry"]["errors"].as_array().into_iter().flatten() {
        writeln!(o, "            ! {}", s(e))?;
    }
    writeln!(o, "alerts:     {}", s(&v["alerts"]))?;
    let st = &v["store"];
    writeln!(
        o,
        "store:      {} ({} KiB, {} written, {} dropped, {} errors)",
        s(&st["path"]),
        st["bytes"].as_u64().unwrap_or(0) / 1024,
        s(&st["written"]),
        s(&st["dropped"]),
        s(&st["errors"])
    )?;
    if let Some(d) = st["degraded"].as_str() {
        writeln!(
            o,
            "            ! DEGRADED, {} records lost: {d}",
            s(&st["lost"])
        )?;
    }
    let au = &v["audit"];
    if au.is_object() {
        writeln!(
            o,
            "audit:      {} ({} appended, {} dropped, {} errors)",
            s(&au["dir"]),
            s(&au["appended"]),
            s(&au["dropped"]),
            s(&au["errors"])
        )?;
        if let Some(d) = au["degraded"].as_str() {
            writeln!(
                o,
                "            ! DEGRADED, {} records lost: {d}",
                s(&au["lost"])
            )?;
        }
    }
    for sink in v["sinks"].as_array().into_iter().flatten() {
        writeln!(o, "sink:       {sink}")?;
    }
    Ok(())
}

fn print_agents(v: &Value) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:<16} {:<26} {:<8} {:>8} {:>9}",
        "ID", "NAME", "OWNER", "ENV", "SESSIONS", "PROCESSES"
    )?;
    for a in v["agents"].as_array().into_iter().flatten() {
        writeln!(
            o,
            "{:<48} {:<16} {:<26} {:<8} {:>8} {:>9}",
            s(&a["id"]),
            s(&a["name"]),
            s(&a["owner"]),
            s(&a["environment"]),
            s(&a["live_sessions"]),
            s(&a["live_processes"])
        )?;
    }
    writeln!(
        o,
        "unregistered processes: {}",
        s(&v["unregistered_processes"])
    )?;
    Ok(())
}

fn print_agent(v: &Value) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    let a = &v["agent"];
    writeln!(
        o,
        "{}  ({})\n  owner: {}  environment: {}  registered in {}",
        s(&a["id"]),
        s(&a["name"]),
        s(&a["owner"]),
        s(&a["environment"]),
        s(&a["registered_in"])
    )?;
    writeln!(
        o,
        "  live: {} sessions, {} processes",
        s(&a["live_sessions"]),
        s(&a["live_processes"])
    )?;
    drop(o);
    print_ps(&v["processes"], false)?;
    let mut o = std::io::stdout().lock();
    writeln!(o, "sessions:")?;
    for sess in v["sessions"].as_array().into_iter().flatten() {
        writeln!(
            o,
            "  {:<40} root {}  events {}",
            s(&sess["session"]),
            s(&sess["root_exec_id"]),
            s(&sess["events"])
        )?;
    }
    Ok(())
}

fn print_ps(v: &Value, tree: bool) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    let procs = v.as_array().cloned().unwrap_or_default();
    let mut by_agent: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in &procs {
        by_agent
            .entry(agent_label(&p["agent"]))
            .or_default()
            .push(p);
    }
    for (agent, list) in by_agent {
        writeln!(o, "{agent}:")?;
        let exec_ids: std::collections::HashSet<&str> =
            list.iter().filter_map(|p| p["exec_id"].as_str()).collect();
        let write_one =
            |p: &Value, depth: usize, o: &mut std::io::StdoutLock<'_>| -> anyhow::Result<()> {
                let argv = p["argv"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let chain = p["acting_for"]
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        format!(
                            " (acting for {})",
                            a.iter().map(s).collect::<Vec<_>>().join(" → ")
                        )
                    })
                    .unwrap_or_default();
                writeln!(
                    o,
                    "  {}{:>7} {:>7} {:>5} {:<28} {}{}",
                    "  ".repeat(depth),
                    s(&p["pid"]),
                    s(&p["ppid"]),
                    s(&p["uid"]),
                    s(&p["session"]),
                    if argv.is_empty() { s(&p["exe"]) } else { argv },
                    chain
                )?;
                Ok(())
            };
        if tree {
            // Roots: processes whose parent is not in this agent's list.
            fn walk<'a>(
                p: &'a Value,
                list: &[&'a Value],
                depth: usize,
                f: &mut dyn FnMut(&Value, usize) -> anyhow::Result<()>,
            ) -> anyhow::Result<()> {
                f(p, depth)?;
                for c in list.iter().filter(|c| c["parent_exec_id"] == p["exec_id"]) {
                    walk(c, list, depth + 1, f)?;
                }
                Ok(())
            }
            let roots: Vec<&Value> = list
                .iter()
                .copied()
                .filter(|p| {
                    !p["parent_exec_id"]
                        .as_str()
                        .is_some_and(|id| exec_ids.contains(id))
                })
                .collect();
            for r in roots {
                walk(r, &list, 0, &mut |p, d| write_one(p, d, &mut o))?;
            }
        } else {
            for p in list {
                write_one(p, 0, &mut o)?;
            }
        }
    }
    Ok(())
}

fn print_events(v: &Value) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    for e in v.as_array().into_iter().flatten() {
        writeln!(o, "{}", event_line(e))?;
    }
    Ok(())
}

fn print_credentials(v: &Value) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<22} {:<10} {:<48} {:>6} SEEN AS",
        "FINGERPRINT", "KIND", "AGENT", "COUNT"
    )?;
    for c in v.as_array().into_iter().flatten() {
        let sources = c["sources"]
            .as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        writeln!(
            o,
            "{:<22} {:<10} {:<48} {:>6} {}",
            s(&c["fingerprint"]),
            s(&c["kind"]),
            s(&c["agent"]),
            s(&c["count"]),
            sources
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_rfc3339() {
        let ten_min = u128::from(parse_since("10m").unwrap());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert!(now - ten_min >= 600_000_000_000 && now - ten_min < 660_000_000_000);
        assert_eq!(
            parse_since("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000_000_000
        );
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            query(&[
                ("agent", Some("spiffe://x/a b".into())),
                ("kind", None),
                ("since", Some("5".into()))
            ]),
            "?agent=spiffe%3A%2F%2Fx%2Fa%20b&since=5"
        );
    }

    proptest::proptest! {
        /// Any input: a time or an error that quotes it; never a panic (huge durations
        /// clamp to the epoch).
        #[test]
        fn since_never_panics(s in "([0-9]{1,25}(ns|us|ms|s|m|h|d|w|y| )|[0-9T:.Z+-]|\\PC){0,8}") {
            if let Err(e) = parse_since(&s) {
                proptest::prop_assert!(e.to_string().contains("--since"));
            }
        }
    }
}
