//! `agentid trace`: attach the probes and print every event live.
use std::{
    fmt::Write as _,
    io::{self, Write},
    path::PathBuf,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroup::{self, Resolver},
    event::{Detail, Event, EventKind},
    sensor::{Sensor, SensorOptions},
};

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Print JSON lines (stable field names) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only events from this cgroup v2 subtree: a path under the hierarchy root
    /// (e.g. `/agents/bot`) or the full filesystem path.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}

/// Runs until SIGINT/SIGTERM, then prints per-kind counts on stderr.
pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let mut resolver = Resolver::new(cgroup::v2_root().context("finding the cgroup v2 hierarchy")?);
    let filter = args
        .cgroup
        .as_deref()
        .map(|p| resolver.relative(p))
        .transpose()
        .context("--cgroup")?;
    let mut sensor = Sensor::load(&SensorOptions::default())?;
    // Tests and wrappers wait for this line: from here on no event is missed.
    eprintln!(
        "agentid trace: probes attached; tracing {}; Ctrl-C to stop",
        filter
            .as_deref()
            .map_or_else(|| "all cgroups".to_owned(), |c| format!("cgroup {c}"))
    );
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if !args.json {
        writeln!(
            out,
            "{:<30} {:<7} {:>7} {:>7} {:>5} {:<24} {:<16} DETAIL",
            "TIME", "KIND", "PID", "PPID", "UID", "CGROUP", "COMM"
        )?;
        out.flush()?;
    }
    let mut shown = [0u64; 6];
    let mut batch = Vec::new();
    let result = loop {
        tokio::select! {
            r = sensor.next_events(&mut batch) => {
                if let Err(e) = r { break Err(e.into()); }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
        if let Err(e) = print_batch(
            &mut out,
            &mut batch,
            &mut resolver,
            filter.as_deref(),
            args.json,
            &mut shown,
        ) {
            // A closed stdout (`| head`) ends the trace quietly.
            if e.kind() == io::ErrorKind::BrokenPipe {
                break Ok(());
            }
            break Err(e.into());
        }
    };
    // Whatever arrived before the signal is still printed.
    sensor.drain(&mut batch);
    let _ = print_batch(
        &mut out,
        &mut batch,
        &mut resolver,
        filter.as_deref(),
        args.json,
        &mut shown,
    );
    let _ = out.flush();
    drop(out);
    let drops = sensor.drops()?;
    let received = sensor.received();
    let mut summary = String::from("agentid trace:");
    for kind in EventKind::ALL {
        let k = kind.abi() as usize;
        let _ = write!(
            summary,
            " {kind}={}/{} (drops {})",
            shown[k], received[k], drops[k]
        );
    }
    eprintln!(
        "{summary}  [shown/received]; undecodable records: {}",
        sensor.decode_errors()
    );
    result
}

fn print_batch(
    out: &mut impl Write,
    batch: &mut Vec<Event>,
    resolver: &mut Resolver,
    filter: Option<&str>,
    json: bool,
    shown: &mut [u64; 6],
) -> io::Result<()> {
    for mut event in batch.drain(..) {
        let path = resolver.path(event.cgroup_id).map(str::to_owned);
        if let Some(prefix) = filter
            && !path
                .as_deref()
                .is_some_and(|p| cgroup::is_within(p, prefix))
        {
            continue;
        }
        event.cgroup = path;
        shown[event.kind.abi() as usize] += 1;
        if json {
            serde_json::to_writer(&mut *out, &event)?;
            out.write_all(b"\n")?;
        } else {
            write_row(out, &event)?;
        }
    }
    out.flush()
}

fn write_row(out: &mut impl Write, e: &Event) -> io::Result<()> {
    let ppid = e.ppid.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let detail = match &e.detail {
        Detail::Exec {
            filename,
            argv,
            argv_truncated,
            ..
        } => {
            let args: Vec<String> = argv.iter().map(|a| quote(a)).collect();
            let more = if *argv_truncated {
                " …(truncated)"
            } else {
                ""
            };
            format!("{} [{}]{more}", printable(filename), args.join(" "))
        }
        Detail::Fork {} => format!("child {}", e.pid),
        Detail::Exit {
            exit_code: Some(c), ..
        } => format!("code {c}"),
        Detail::Exit {
            signal: Some(s), ..
        } => format!("signal {s}"),
        Detail::Exit { .. } => String::new(),
        Detail::Sock {
            dst_ip,
            dst_port,
            protocol,
        } => match dst_ip {
            std::net::IpAddr::V6(ip) => format!("{protocol} [{ip}]:{dst_port}"),
            std::net::IpAddr::V4(ip) => format!("{protocol} {ip}:{dst_port}"),
        },
    };
    writeln!(
        out,
        "{:<30} {:<7} {:>7} {:>7} {:>5} {:<24} {:<16} {}",
        humantime::format_rfc3339_micros(e.time).to_string(),
        e.kind.as_str(),
        e.pid,
        ppid,
        e.uid,
        e.cgroup.as_deref().unwrap_or("?"),
        printable(&e.comm),
        detail
    )
}

/// Control characters escaped so one event stays one line whatever a workload puts in
/// its names and arguments.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// An argument as a shell would need it: quoted when empty or holding blanks/quotes.
fn quote(arg: &str) -> String {
    let p = printable(arg);
    if !p.is_empty()
        && !p
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    {
        p
    } else {
        format!("'{}'", p.replace('\'', r"'\''"))
    }
}
