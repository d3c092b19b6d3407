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
        /// Full rows on a terminal too (by default a terminal's rows are cut to its
        /// width; output into a pipe or file is never cut).
        #[arg(short, long)]
        wide: bool,
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
                print_agent(&v, row_width(false))
            }
        }
        QueryCommand::Ps { agent, tree, wide } => {
            let v = client
                .get(&format!("/v1/processes{}", query(&[("agent", agent)])))
                .await?;
            if json {
                print_json(&v)
            } else {
                print_ps(&mut std::io::stdout().lock(), &v, tree, row_width(wide))
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

fn print_agent(v: &Value, width: Option<usize>) -> anyhow::Result<()> {
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
    print_ps(&mut o, &v["processes"], false, width)?;
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

/// How wide a `ps` row may be, in characters: on a terminal its width, unless `--wide`;
/// `None` (full rows) when stdout is not a terminal, as `ps` does: a pipe or a file gets
/// everything, for `grep` and for the record.
fn row_width(wide: bool) -> Option<usize> {
    use std::io::IsTerminal as _;
    let stdout = std::io::stdout();
    if wide || !stdout.is_terminal() {
        return None;
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only fills the winsize we pass, which outlives the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut ws) } == 0;
    Some(terminal_columns(
        ok.then_some(ws.ws_col),
        std::env::var("COLUMNS").ok().as_deref(),
    ))
}

/// A terminal's width: what the kernel says (`TIOCGWINSZ`), else `$COLUMNS`, else 80.
/// Zero means unknown (a serial console), never "no room".
fn terminal_columns(ioctl_cols: Option<u16>, columns_env: Option<&str>) -> usize {
    ioctl_cols
        .filter(|&c| c > 0)
        .map(usize::from)
        .or_else(|| {
            columns_env
                .and_then(|c| c.trim().parse::<usize>().ok())
                .filter(|&c| c > 0)
        })
        .unwrap_or(80)
}

/// `line` cut to at most `width` characters, the last one `…` when anything was cut.
/// Cuts only between characters (never inside a multi-byte UTF-8 sequence); a character
/// counts as one column, which over-fills a row only with wide (CJK, emoji) characters.
fn fit(line: &str, width: Option<usize>) -> std::borrow::Cow<'_, str> {
    let Some(width) = width else {
        return line.into();
    };
    if line.char_indices().nth(width).is_none() {
        return line.into();
    }
    // `width - 1` characters and the ellipsis.
    let end = line
        .char_indices()
        .nth(width.saturating_sub(1))
        .map_or(line.len(), |(i, _)| i);
    let mut cut = line[..end].to_owned();
    if width > 0 {
        cut.push('…');
    }
    cut.into()
}

fn print_ps(
    o: &mut impl std::io::Write,
    v: &Value,
    tree: bool,
    width: Option<usize>,
) -> anyhow::Result<()> {
    let procs = v.as_array().cloned().unwrap_or_default();
    let mut by_agent: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in &procs {
        by_agent
            .entry(agent_label(&p["agent"]))
            .or_default()
            .push(p);
    }
    for (agent, list) in by_agent {
        writeln!(o, "{}", fit(&format!("{agent}:"), width))?;
        let exec_ids: std::collections::HashSet<&str> =
            list.iter().filter_map(|p| p["exec_id"].as_str()).collect();
        let write_one =
            |p: &Value, depth: usize, o: &mut dyn std::io::Write| -> anyhow::Result<()> {
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
                let row = format!(
                    "  {}{:>7} {:>7} {:>5} {:<28} {}{}",
                    "  ".repeat(depth),
                    s(&p["pid"]),
                    s(&p["ppid"]),
                    s(&p["uid"]),
                    s(&p["session"]),
                    if argv.is_empty() { s(&p["exe"]) } else { argv },
                    chain
                );
                writeln!(o, "{}", fit(&row, width))?;
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
                walk(r, &list, 0, &mut |p, d| write_one(p, d, &mut *o))?;
            }
        } else {
            for p in list {
                write_one(p, 0, &mut *o)?;
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

    #[test]
    fn rows_are_cut_between_characters() {
        assert_eq!(fit("abcdef", None), "abcdef");
        assert_eq!(fit("abcdef", Some(6)), "abcdef");
        assert_eq!(fit("abcdef", Some(5)), "abcd…");
        assert_eq!(fit("abcdef", Some(1)), "…");
        assert_eq!(fit("abcdef", Some(0)), "");
        assert_eq!(fit("", Some(0)), "");
        // Multi-byte characters (2, 3 and 4 bytes) count once and are never split.
        assert_eq!(fit("héllo wörld", Some(11)), "héllo wörld");
        assert_eq!(fit("héllo wörld", Some(8)), "héllo w…");
        assert_eq!(fit("ééééé", Some(3)), "éé…");
        assert_eq!(fit("日本語のテキスト", Some(4)), "日本語…");
        assert_eq!(fit("🦀🦀🦀🦀", Some(3)), "🦀🦀…");
        assert_eq!(fit("a🦀", Some(2)), "a🦀");
    }

    proptest::proptest! {
        /// Whatever the text and width: valid UTF-8 (it is a `str`), at most `width`
        /// characters, and a prefix of the row (plus `…`).
        #[test]
        fn fit_is_a_prefix_within_the_width(line in "\\PC{0,40}", width in 0usize..50) {
            let cut = fit(&line, Some(width));
            proptest::prop_assert!(cut.chars().count() <= width);
            let kept = cut.strip_suffix('…').unwrap_or(&cut);
            proptest::prop_assert!(line.starts_with(kept));
            if line.chars().count() <= width {
                proptest::prop_assert_eq!(cut.as_ref(), line.as_str());
            }
        }
    }

    #[test]
    fn terminal_width_from_the_kernel_then_columns_then_80() {
        assert_eq!(terminal_columns(Some(132), Some("100")), 132);
        assert_eq!(terminal_columns(Some(0), Some("100")), 100);
        assert_eq!(terminal_columns(None, Some(" 90 ")), 90);
        assert_eq!(terminal_columns(None, Some("wide")), 80);
        assert_eq!(terminal_columns(None, Some("0")), 80);
        assert_eq!(terminal_columns(None, None), 80);
    }

    fn ps_rows(width: Option<usize>, tree: bool) -> Vec<String> {
        let long_arg = format!("--prompt={}", "ü".repeat(5000));
        let procs = serde_json::json!([
            {"pid": 10, "ppid": 1, "uid": 0, "session": "s1", "exec_id": "e10",
             "agent": {"name": "bot"}, "argv": ["/usr/bin/python3", "agent.py", long_arg]},
            {"pid": 11, "ppid": 10, "uid": 0, "session": "s1", "exec_id": "e11",
             "parent_exec_id": "e10", "agent": {"name": "bot"}, "argv": ["/bin/sh", "-c", "ls"]},
        ]);
        let mut out = Vec::new();
        print_ps(&mut out, &procs, tree, width).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn ps_rows_fit_the_terminal_and_wide_keeps_them_whole() {
        for tree in [false, true] {
            let cut = ps_rows(Some(80), tree);
            assert_eq!(cut.len(), 3, "{cut:?}");
            assert!(cut.iter().all(|r| r.chars().count() <= 80), "{cut:?}");
            assert!(
                cut[1].ends_with('…') && cut[1].contains("/usr/bin/python3 agent.py "),
                "{cut:?}"
            );
            // A short row is left alone.
            assert!(cut[2].ends_with("/bin/sh -c ls"), "{cut:?}");
            let full = ps_rows(None, tree);
            assert!(full[1].ends_with(&"ü".repeat(5000)), "{}", full[1].len());
        }
        // The tree indents the child under its parent.
        assert!(ps_rows(None, false)[2].starts_with(&format!("  {:>7} ", 11)));
        assert!(ps_rows(None, true)[2].starts_with(&format!("    {:>7} ", 11)));
    }

    #[test]
    fn ps_takes_wide() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: QueryCommand,
        }
        use clap::Parser as _;
        for (args, want) in [
            (&["x", "ps", "--tree"][..], false),
            (&["x", "ps", "--tree", "--wide"][..], true),
            (&["x", "ps", "-w"][..], true),
        ] {
            let Cli {
                cmd: QueryCommand::Ps { wide, .. },
            } = Cli::parse_from(args)
            else {
                panic!("{args:?} is not ps");
            };
            assert_eq!(wide, want, "{args:?}");
        }
        assert_eq!(row_width(true), None);
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
