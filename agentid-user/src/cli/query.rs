//! Operator commands that query the daemon: status, agents, ps, connections, events,
//! alerts, credentials. Tables by default, `--json` for machines.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::Client;
use crate::{
    api::types::{
        AgentDetail, Agents, AlertRecord, CredentialRow, EventRecord, Lagged, ProcessView,
        RegistryStatus, Revoked, Status,
    },
    attribution::AgentRef,
    event::EventKind,
    process::ExecId,
};

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
        #[arg(long, value_parser = ["exec", "fork", "exit", "connect", "send", "open", "socket", "request"])]
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
    /// Policy help: `policy suggest --agent ID` prints the `[agent.policy]` that would
    /// have allowed everything the agent did (learn in monitor mode, then enforce).
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Credential fingerprints and the agents that used them (never the secret).
    Credentials {
        #[arg(long)]
        agent: Option<String>,
        #[command(subcommand)]
        action: Option<CredentialsAction>,
    },
    /// The fleet as this host hears it (with `[fleet]`): hosts, agents, credentials,
    /// fleet alerts, revocations.
    Fleet {
        #[command(subcommand)]
        what: super::fleet::FleetCommand,
    },
    /// JWT-SVIDs the issuer minted: jti, agent, session, audience, times, fingerprint, state
    /// (never the tokens).
    Tokens {
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyAction {
    /// Print an `[agent.policy]` (egress by name where its DNS said, else by address;
    /// tools) that allows everything this agent did, ready to paste.
    Suggest {
        /// The agent (SPIFFE ID).
        #[arg(long)]
        agent: String,
        /// `24h` (default), `7d`, or an RFC 3339 time.
        #[arg(long, default_value = "24h")]
        since: String,
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

pub(super) fn query(pairs: &[(&str, Option<String>)]) -> String {
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

/// The daemon's answer as the API type the table is printed from.
fn typed<T: DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context(
        "the daemon's answer does not match this agentid's API (a different version of the daemon?)",
    )
}

/// `GET path`: with `--json` the answer as the daemon sent it; otherwise a table.
pub(super) async fn show<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    json: bool,
    table: impl FnOnce(&T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let v = client.get(path).await?;
    if json {
        print_json(&v)
    } else {
        table(&typed(v)?)
    }
}

fn since_ns(since: Option<&str>) -> anyhow::Result<Option<String>> {
    Ok(since.map(parse_since).transpose()?.map(|n| n.to_string()))
}

pub async fn run(client: &Client, cmd: QueryCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        QueryCommand::Status => show(client, "/v1/status", json, print_status).await,
        QueryCommand::Agents { show: None } => show(client, "/v1/agents", json, print_agents).await,
        QueryCommand::Agents {
            show: Some(AgentsShow::Show { id }),
        } => {
            let path = format!("/v1/agent{}", query(&[("id", Some(id))]));
            show(client, &path, json, |a: &AgentDetail| {
                print_agent(a, row_width(false))
            })
            .await
        }
        QueryCommand::Ps { agent, tree, wide } => {
            let path = format!("/v1/processes{}", query(&[("agent", agent)]));
            show(client, &path, json, |p: &Vec<ProcessView>| {
                print_ps(&mut std::io::stdout().lock(), p, tree, row_width(wide))
            })
            .await
        }
        QueryCommand::Connections { agent, since } => {
            let q = query(&[("agent", agent), ("since", since_ns(since.as_deref())?)]);
            let path = format!("/v1/connections{q}");
            show(client, &path, json, |e: &Vec<EventRecord>| {
                print_lines(e, event_line)
            })
            .await
        }
        QueryCommand::Events {
            agent,
            kind,
            since,
            follow,
        } => {
            let q = history_query(agent, ("kind", kind), since.as_deref(), follow)?;
            stream_or_list(client, &format!("/v1/events{q}"), follow, json, event_line).await
        }
        QueryCommand::Alerts {
            agent,
            rule,
            since,
            follow,
        } => {
            let q = history_query(agent, ("rule", rule), since.as_deref(), follow)?;
            stream_or_list(client, &format!("/v1/alerts{q}"), follow, json, alert_line).await
        }
        QueryCommand::Policy {
            action: PolicyAction::Suggest { agent, since },
        } => suggest(client, agent, &since, json).await,
        QueryCommand::Credentials {
            action: Some(CredentialsAction::Revoke { fingerprint }),
            ..
        } => revoke(client, fingerprint, json).await,
        QueryCommand::Credentials {
            agent,
            action: None,
        } => {
            let path = format!("/v1/credentials{}", query(&[("agent", agent)]));
            show(client, &path, json, print_credentials).await
        }
        QueryCommand::Fleet { what } => super::fleet::run(client, what, json).await,
        QueryCommand::Tokens { agent } => {
            let path = format!("/v1/tokens{}", query(&[("agent", agent)]));
            show(client, &path, json, print_tokens).await
        }
    }
}

/// The agent's exec, connect and send events since `since` (the store's newest 100,000 of
/// each kind at most), reduced to a policy.
async fn suggest(client: &Client, agent: String, since: &str, json: bool) -> anyhow::Result<()> {
    let since_q = since_ns(Some(since))?;
    let mut events: Vec<EventRecord> = Vec::new();
    for kind in ["exec", "connect", "send"] {
        let q = query(&[
            ("agent", Some(agent.clone())),
            ("kind", Some(kind.into())),
            ("since", since_q.clone()),
            ("limit", Some("100000".into())),
        ]);
        events.extend(typed::<Vec<EventRecord>>(
            client.get(&format!("/v1/events{q}")).await?,
        )?);
    }
    let s = crate::identity::suggest::Suggestion::from_events(&events);
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({"egress": s.egress, "tools": s.tools, "events": s.events});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        out.write_all(s.to_toml(&agent, since).as_bytes())?;
    }
    Ok(())
}

async fn revoke(client: &Client, fingerprint: String, json: bool) -> anyhow::Result<()> {
    let v = client
        .post(&format!(
            "/v1/credentials/revoke{}",
            query(&[("fingerprint", Some(fingerprint))])
        ))
        .await?;
    if json {
        return print_json(&v);
    }
    let r: Revoked = typed(v)?;
    writeln!(std::io::stdout().lock(), "revoked {}", clean(&r.revoked))?;
    Ok(())
}

/// Events or alerts: a listing, or (following) the history then live items as lines.
/// The query string of `events`/`alerts`: agent, their own filter, since, follow.
fn history_query(
    agent: Option<String>,
    filter: (&'static str, Option<String>),
    since: Option<&str>,
    follow: bool,
) -> anyhow::Result<String> {
    Ok(query(&[
        ("agent", agent),
        filter,
        ("since", since_ns(since)?),
        ("follow", follow.then(|| "true".into())),
    ]))
}

async fn stream_or_list<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    follow: bool,
    json: bool,
    line: fn(&T) -> String,
) -> anyhow::Result<()> {
    let emit = move |v: Value| -> anyhow::Result<()> {
        if let Ok(Lagged { lagged }) = serde_json::from_value::<Lagged>(v.clone()) {
            eprintln!("agentid: warning: this terminal fell behind; {lagged} items were skipped");
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", line(&typed(v)?))?;
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
    let items: Vec<T> = typed(v)?;
    if items.is_empty() {
        eprintln!("(none)");
    }
    print_lines(&items, line)
}

fn print_lines<T>(items: &[T], line: fn(&T) -> String) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    for item in items {
        writeln!(o, "{}", line(item))?;
    }
    Ok(())
}

/// Text from the daemon with control characters shown as `?` (a hostile process name
/// must not drive the terminal).
pub(super) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// An optional value, `-` when absent.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| clean(&v.to_string()))
}

fn joined(items: &[String], sep: &str) -> String {
    items.iter().map(|s| clean(s)).collect::<Vec<_>>().join(sep)
}

fn agent_label(a: Option<&AgentRef>) -> String {
    a.map_or_else(
        || "unregistered".into(),
        |a| clean(a.name.as_deref().unwrap_or(&a.id)),
    )
}

fn short_time(t: &str) -> String {
    t.get(..23).unwrap_or(t).replace('T', " ")
}

/// `POST api.openai.com /v1/chat (HTTP/2, credentials in authorization)`.
fn request_line(e: &EventRecord) -> String {
    let creds = e
        .credential_headers
        .as_deref()
        .filter(|h| !h.is_empty())
        .map(|h| format!(", credentials in {}", joined(h, " ")))
        .unwrap_or_default();
    format!(
        "{} {} {} (HTTP/{}{creds})",
        opt(e.method.as_deref()),
        opt(e.host.as_deref()),
        opt(e.path.as_deref()),
        opt(e.http_version.as_deref()),
    )
}

fn event_line(e: &EventRecord) -> String {
    let detail = match e.kind {
        EventKind::Exec => format!(
            "{} {}",
            opt(e.filename.as_deref()),
            e.argv
                .as_deref()
                .map(|a| joined(a, " "))
                .unwrap_or_default()
        ),
        EventKind::Connect | EventKind::Send => {
            let ip = match e.dst_ip {
                Some(IpAddr::V6(ip)) => format!("[{ip}]"),
                Some(IpAddr::V4(ip)) => ip.to_string(),
                None => "-".into(),
            };
            let protocol = e.protocol.map_or_else(
                || "-".into(),
                |p| match serde_json::to_value(p) {
                    Ok(Value::String(s)) => s,
                    Ok(other) => other.to_string(),
                    Err(_) => "-".into(),
                },
            );
            match e.dst_names.as_deref() {
                Some(names) if !names.is_empty() => {
                    format!("{protocol} {ip}:{} ({})", opt(e.dst_port), names.join(", "))
                }
                _ => format!("{protocol} {ip}:{}", opt(e.dst_port)),
            }
        }
        EventKind::Exit => match (e.exit_code, e.signal) {
            (Some(c), _) => format!("code {c}"),
            (_, Some(sig)) => format!("signal {sig}"),
            _ => String::new(),
        },
        EventKind::Fork => format!("child of {}", opt(e.ppid)),
        EventKind::Socket => format!(
            "{} type {} protocol {}",
            opt(e.family.as_deref()),
            opt(e.sock_type),
            e.protocol.map_or_else(|| "-".into(), |p| p.to_string())
        ),
        EventKind::Open => opt(e.path.as_deref()),
        EventKind::Request => request_line(e),
    };
    let chain = if e.acting_for.is_empty() {
        String::new()
    } else {
        format!("  (acting for {})", joined(&e.acting_for, " → "))
    };
    format!(
        "{:<23} {:<7} {:>7} {:<16} {:<15} {}{}",
        short_time(&e.time),
        e.kind.as_str(),
        e.pid,
        agent_label(e.agent.as_ref()),
        clean(&e.comm),
        detail,
        chain
    )
}

fn alert_line(a: &AlertRecord) -> String {
    let agents = a
        .agents
        .iter()
        .map(|x| clean(x.name.as_deref().unwrap_or(&x.id)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{:<23} {:<8} {:<22} x{:<4} [{}] {}",
        short_time(&a.last_seen),
        clean(&a.severity),
        clean(&a.rule),
        a.count,
        agents,
        clean(&a.title)
    )
}

fn print_status(v: &Status) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "agentid {} (pid {}), up {}",
        clean(&v.version),
        v.pid,
        humantime::format_duration(Duration::from_secs(v.uptime_s))
    )?;
    writeln!(o, "probes:     {} attached", v.probes.len())?;
    if let Some(i) = &v.issuer {
        writeln!(
            o,
            "issuer:     {} (ttl {}s): {} live session keys, {} retired, {} tokens issued",
            clean(&i.socket),
            i.ttl_secs,
            i.live_keys,
            i.retired_keys,
            i.issued
        )?;
    }
    for t in &v.tls {
        let path = clean(&t.path.display().to_string());
        if !t.attached.is_empty() {
            writeln!(o, "  tls       {path}: {}", clean(&t.attached.join(", ")))?;
        }
        if let Some(e) = &t.error {
            writeln!(o, "  tls       {path}: ! {}", clean(e))?;
        }
    }
    for a in &v.enforced {
        writeln!(
            o,
            "enforced:   {} ({}; {} cgroups)",
            clean(&a.id),
            clean(&a.enforces.join(", ")),
            a.cgroups
        )?;
    }
    let mut line = String::new();
    for (k, n) in &v.events {
        // Rates print as JSON numbers (`0.0`), as they always have.
        let rate = v
            .events_per_s
            .get(k)
            .map_or_else(|| "null".into(), |r| Value::from(*r).to_string());
        let drops = v
            .drops
            .get(k)
            .map_or_else(|| "null".into(), ToString::to_string);
        let _ = write!(line, " {k} {n} ({rate}/s, {drops} dropped)");
    }
    writeln!(o, "events:    {line}")?;
    writeln!(o, "processes:  {} live", v.processes.live)?;
    let m = &v.memory;
    writeln!(
        o,
        "memory:     RSS {} MiB (ring buffer {} MiB, counted twice, peak {} KiB used; process table {} KiB, {} B per live process)",
        m.rss_bytes >> 20,
        m.ring_bytes >> 20,
        m.ring_peak_bytes >> 10,
        m.table_bytes >> 10,
        m.table_bytes_per_live
    )?;
    print_registry(&mut o, &v.registry)?;
    writeln!(o, "alerts:     {}", v.alerts)?;
    print_outputs(&mut o, v)
}

fn print_registry(o: &mut impl std::io::Write, r: &RegistryStatus) -> std::io::Result<()> {
    writeln!(
        o,
        "registry:   {} agents from {} ({} errors)",
        r.agents,
        clean(&r.dir.display().to_string()),
        r.errors.len()
    )?;
    let issues = [
        ("ambiguous", "matches", &r.ambiguous),
        ("escaped", "left for", &r.escaped),
    ];
    for (what, verb, list) in issues {
        for i in list {
            let (pid, agent, detail) = (i.pid, clean(&i.agent), clean(&i.detail.join(", ")));
            writeln!(o, "  {what:<10} pid {pid} ({agent}) {verb} {detail}")?;
        }
    }
    for e in &r.errors {
        writeln!(o, "            ! {}", clean(e))?;
    }
    Ok(())
}

/// The store, the audit log and the sinks: where the evidence goes, and whether it got there.
fn print_outputs(o: &mut impl std::io::Write, v: &Status) -> anyhow::Result<()> {
    let st = &v.store;
    writeln!(
        o,
        "store:      {} ({} KiB, {} written, {} dropped, {} errors)",
        clean(&st.path.display().to_string()),
        st.bytes / 1024,
        st.written,
        st.dropped,
        st.errors
    )?;
    if let Some(d) = &st.degraded {
        writeln!(
            o,
            "            ! DEGRADED, {} records lost: {}",
            st.lost,
            clean(d)
        )?;
    }
    if let Some(au) = &v.audit {
        writeln!(
            o,
            "audit:      {} ({} appended, {} dropped, {} errors)",
            clean(&au.dir.display().to_string()),
            au.appended,
            au.dropped,
            au.errors
        )?;
        if let Some(d) = &au.degraded {
            writeln!(
                o,
                "            ! DEGRADED, {} records lost: {}",
                au.lost,
                clean(d)
            )?;
        }
        writeln!(
            o,
            "disk:       {} B/event (store {} B for {} events, audit {} B for {} records, {} KiB)",
            st.bytes_per_event + au.bytes_per_record,
            st.bytes_per_event,
            st.events,
            au.bytes_per_record,
            au.records,
            au.bytes / 1024
        )?;
    }
    for sink in &v.sinks {
        // One JSON object per sink, keys sorted, as before the types.
        writeln!(o, "sink:       {}", serde_json::to_value(sink)?)?;
    }
    Ok(())
}

fn print_agents(v: &Agents) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:<16} {:<26} {:<8} {:>8} {:>9}",
        "ID", "NAME", "OWNER", "ENV", "SESSIONS", "PROCESSES"
    )?;
    for a in &v.agents {
        writeln!(
            o,
            "{:<48} {:<16} {:<26} {:<8} {:>8} {:>9}",
            clean(&a.id),
            opt(a.name.as_deref()),
            opt(a.owner.as_deref()),
            opt(a.environment.as_deref()),
            a.live_sessions,
            a.live_processes
        )?;
    }
    writeln!(o, "unregistered processes: {}", v.unregistered_processes)?;
    Ok(())
}

fn print_agent(v: &AgentDetail, width: Option<usize>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    let a = &v.agent;
    writeln!(
        o,
        "{}  ({})\n  owner: {}  environment: {}  registered in {}",
        clean(&a.id),
        opt(a.name.as_deref()),
        opt(a.owner.as_deref()),
        opt(a.environment.as_deref()),
        clean(&a.registered_in)
    )?;
    writeln!(
        o,
        "  live: {} sessions, {} processes",
        a.live_sessions, a.live_processes
    )?;
    print_ps(&mut o, &v.processes, false, width)?;
    writeln!(o, "sessions:")?;
    for sess in &v.sessions {
        writeln!(
            o,
            "  {:<40} root {}  events {}",
            clean(&sess.session),
            clean(&sess.root_exec_id),
            sess.events
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

fn ps_row(p: &ProcessView, depth: usize) -> String {
    let argv = joined(&p.process.argv, " ");
    let chain = if p.acting_for.is_empty() {
        String::new()
    } else {
        format!(" (acting for {})", joined(&p.acting_for, " → "))
    };
    format!(
        "  {}{:>7} {:>7} {:>5} {:<28} {}{}",
        "  ".repeat(depth),
        p.process.pid,
        p.process.ppid,
        p.process.uid,
        opt(p.session.as_deref()),
        if argv.is_empty() {
            clean(&p.process.exe)
        } else {
            argv
        },
        chain
    )
}

/// Prints `p` and, indented, its descendants in `list`.
fn walk(
    p: &ProcessView,
    list: &[&ProcessView],
    depth: usize,
    o: &mut impl std::io::Write,
    width: Option<usize>,
) -> anyhow::Result<()> {
    writeln!(o, "{}", fit(&ps_row(p, depth), width))?;
    for c in list
        .iter()
        .filter(|c| c.process.parent_exec_id.as_ref() == Some(&p.process.exec_id))
    {
        walk(c, list, depth + 1, o, width)?;
    }
    Ok(())
}

fn print_ps(
    o: &mut impl std::io::Write,
    procs: &[ProcessView],
    tree: bool,
    width: Option<usize>,
) -> anyhow::Result<()> {
    let mut by_agent: BTreeMap<String, Vec<&ProcessView>> = BTreeMap::new();
    for p in procs {
        by_agent
            .entry(agent_label(p.agent.as_ref()))
            .or_default()
            .push(p);
    }
    for (agent, list) in by_agent {
        writeln!(o, "{}", fit(&format!("{agent}:"), width))?;
        if !tree {
            for p in list {
                writeln!(o, "{}", fit(&ps_row(p, 0), width))?;
            }
            continue;
        }
        // Roots: processes whose parent is not in this agent's list.
        let exec_ids: std::collections::HashSet<&ExecId> =
            list.iter().map(|p| &p.process.exec_id).collect();
        for r in list.iter().filter(|p| {
            !p.process
                .parent_exec_id
                .as_ref()
                .is_some_and(|id| exec_ids.contains(id))
        }) {
            walk(r, &list, 0, o, width)?;
        }
    }
    Ok(())
}

fn print_credentials(v: &Vec<CredentialRow>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<22} {:<10} {:<48} {:>6} SEEN AS",
        "FINGERPRINT", "KIND", "AGENT", "COUNT"
    )?;
    for c in v {
        writeln!(
            o,
            "{:<22} {:<10} {:<48} {:>6} {}",
            clean(&c.fingerprint),
            clean(&c.kind),
            clean(&c.agent),
            c.count,
            joined(&c.sources, ", ")
        )?;
    }
    Ok(())
}

fn print_tokens(v: &Vec<crate::issuer::IssuedToken>) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<22} {:<40} {:<28} {:<16} {:<20} {:<20} {:<16} STATE",
        "JTI", "AGENT", "SESSION", "AUD", "ISSUED", "EXPIRES", "FINGERPRINT"
    )?;
    let at =
        |s: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string();
    for t in v {
        writeln!(
            o,
            "{:<22} {:<40} {:<28} {:<16} {:<20} {:<20} {:<16} {}",
            clean(&t.jti),
            clean(&t.agent),
            clean(&t.session),
            clean(&t.aud),
            at(t.issued),
            at(t.expires),
            clean(&t.fingerprint),
            clean(&t.state)
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
        // The rows as the API sends them (typed), with what `ps` does not show left plain.
        let plain = serde_json::json!({"start_ticks": 1, "exe": "/x", "comm": "x", "gid": 0,
            "cgroup_id": 1, "cgroup": "/", "acting_for": [], "lineage": []});
        let mut procs = serde_json::json!([
            {"pid": 10, "ppid": 1, "uid": 0, "session": "s1", "exec_id": "e10",
             "agent": {"id": "spiffe://t/bot", "name": "bot"},
             "argv": ["/usr/bin/python3", "agent.py", long_arg]},
            {"pid": 11, "ppid": 10, "uid": 0, "session": "s1", "exec_id": "e11",
             "parent_exec_id": "e10", "agent": {"id": "spiffe://t/bot", "name": "bot"},
             "argv": ["/bin/sh", "-c", "ls"]},
        ]);
        for p in procs.as_array_mut().unwrap() {
            for (k, v) in plain.as_object().unwrap() {
                p[k] = v.clone();
            }
        }
        let procs: Vec<ProcessView> = serde_json::from_value(procs).unwrap();
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
