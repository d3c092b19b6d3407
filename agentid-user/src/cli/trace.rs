//! `agentid trace`: attach the probes and print every event live.
use std::{
    fmt::Write as _,
    io::{self, Write},
    path::PathBuf,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use std::sync::Arc;

use crate::{
    attribution::AttributedEvent,
    cgroup::{self, Resolver},
    credentials::FingerprintKey,
    event::{Detail, Event, EventKind},
    identity::{DEFAULT_AGENTS_DIR, Registry},
    pipeline::{Pipeline, load_registry},
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
    /// Agent registrations (`*.toml`) used to attribute events.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AGENTS_DIR)]
    pub agents_dir: PathBuf,
}

/// Runs until SIGINT/SIGTERM, then prints per-kind counts on stderr.
pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let root = cgroup::v2_root().context("finding the cgroup v2 hierarchy")?;
    let filter = args
        .cgroup
        .as_deref()
        .map(|p| Resolver::new(root.clone()).relative(p))
        .transpose()
        .context("--cgroup")?;
    let registry = if args.agents_dir.is_dir() {
        load_registry(&args.agents_dir)
    } else {
        Registry::default()
    };
    let agents = registry.agents().len();
    // trace keeps no fingerprints, but still never prints a secret: the pipeline redacts
    // with a throw-away key.
    let mut pipeline = Pipeline::new(Arc::new(registry), root, FingerprintKey::ephemeral()?);
    let mut sensor = Sensor::load(&SensorOptions::default())?;
    pipeline.seed();
    // Tests and wrappers wait for this line: from here on no event is missed.
    eprintln!(
        "agentid trace: probes attached; {agents} agents registered; tracing {}; Ctrl-C to stop",
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
            "{:<27} {:<7} {:>7} {:>7} {:>5} {:<16} {:<20} {:<15} DETAIL",
            "TIME", "KIND", "PID", "PPID", "UID", "AGENT", "CGROUP", "COMM"
        )?;
        out.flush()?;
    }
    let mut printer = Printer {
        filter,
        json: args.json,
        shown: [0; agentid_ebpf::kind::COUNT as usize],
    };
    let mut batch = Vec::new();
    let result = loop {
        tokio::select! {
            r = sensor.next_events(&mut batch) => {
                if let Err(e) = r { break Err(e.into()); }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
        if let Err(e) = printer.print(&mut out, &mut batch, &mut pipeline) {
            // A closed stdout (`| head`) ends the trace quietly.
            if e.kind() == io::ErrorKind::BrokenPipe {
                break Ok(());
            }
            break Err(e.into());
        }
    };
    // Whatever arrived before the signal is still printed.
    sensor.drain(&mut batch);
    let _ = printer.print(&mut out, &mut batch, &mut pipeline);
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
            printer.shown[k], received[k], drops[k]
        );
    }
    eprintln!(
        "{summary}  [shown/received]; undecodable records: {}",
        sensor.decode_errors()
    );
    result
}

struct Printer {
    filter: Option<String>,
    json: bool,
    shown: [u64; agentid_ebpf::kind::COUNT as usize],
}

impl Printer {
    fn print(
        &mut self,
        out: &mut impl Write,
        batch: &mut Vec<Event>,
        pipeline: &mut Pipeline,
    ) -> io::Result<()> {
        for event in batch.drain(..) {
            // Every event goes through the pipeline (the process table must see it all);
            // the filter only decides what is printed.
            let (attributed, _) = pipeline.process(event);
            if let Some(prefix) = &self.filter
                && !attributed
                    .event
                    .cgroup
                    .as_deref()
                    .is_some_and(|p| cgroup::is_within(p, prefix))
            {
                continue;
            }
            self.shown[attributed.event.kind.abi() as usize] += 1;
            if self.json {
                serde_json::to_writer(&mut *out, &attributed)?;
                out.write_all(b"\n")?;
            } else {
                write_row(out, &attributed)?;
            }
        }
        out.flush()
    }
}

/// One table row for `a`, newline-terminated. Public for the fuzz targets, which check
/// that every event stays one line.
#[doc(hidden)]
pub fn write_row(out: &mut impl Write, a: &AttributedEvent) -> io::Result<()> {
    let e = &a.event;
    let agent = a
        .agent
        .as_ref()
        .map_or("-", |ag| ag.name.as_deref().unwrap_or(ag.id.as_str()));
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
        Detail::Open {
            path,
            open_flags,
            inode,
        } => match inode {
            Some(i) => format!(
                "{} (flags {open_flags:#o}, dev {}:{} ino {})",
                printable(path),
                libc::major(i.dev),
                libc::minor(i.dev),
                i.ino
            ),
            None => format!("{} (flags {open_flags:#o})", printable(path)),
        },
        Detail::Socket {
            family,
            sock_type,
            protocol,
        } => format!("{family} type {sock_type} protocol {protocol}"),
        Detail::Request {
            method,
            host,
            path,
            http_version,
            credential_headers,
            ..
        } => {
            let creds = if credential_headers.is_empty() {
                String::new()
            } else {
                format!(", credentials in {}", credential_headers.join(" "))
            };
            format!(
                "{} {} {} (HTTP/{}{creds})",
                printable(method),
                printable(host.as_deref().unwrap_or("-")),
                printable(path),
                printable(http_version)
            )
        }
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
            dst_names,
        } => {
            let dst = match dst_ip {
                std::net::IpAddr::V6(ip) => format!("{protocol} [{ip}]:{dst_port}"),
                std::net::IpAddr::V4(ip) => format!("{protocol} {ip}:{dst_port}"),
            };
            if dst_names.is_empty() {
                dst
            } else {
                format!("{dst} ({})", dst_names.join(", "))
            }
        }
    };
    writeln!(
        out,
        "{:<27} {:<7} {:>7} {:>7} {:>5} {:<16} {:<20} {:<15} {}",
        humantime::format_rfc3339_micros(crate::event::rfc3339_range(e.time)).to_string(),
        e.kind.as_str(),
        e.pid,
        ppid,
        e.uid,
        printable(agent),
        printable(e.cgroup.as_deref().unwrap_or("?")),
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
