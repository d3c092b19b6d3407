//! `cargo xtask bench --profile`: where the daemon's time per event goes.
//!
//! `perf record` samples the daemon (all its threads, with DWARF call graphs so inlined
//! Rust frames unwind) while the resources workload runs; the breakdown is read back from
//! `perf report`: the share of each thread, and, inside the event loop, the inclusive share
//! of the functions that begin each stage. Shares of samples become microseconds per event
//! through the daemon's measured CPU time, so the figures hold under load (they are CPU
//! time, not wall time), though a busy machine inflates them somewhat (shared caches).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::sys;

/// The stages of the event loop, each named by the functions whose inclusive time is
/// that stage (the first one found in the report counts).
const STAGES: &[(&str, &[&str])] = &[
    (
        "ring read (poll, copy out)",
        &["agentid::sensor::kernel::", "aya::maps::ring_buf::"],
    ),
    ("decode", &["agentid::sensor::decode::Decoder::decode"]),
    (
        "pipeline (scan, process table, attribution)",
        &["agentid::pipeline::Pipeline::process"],
    ),
    (
        "detection",
        &["agentid::detect::detector::Detector::observe"],
    ),
    (
        "outputs fan-out (store/audit/sink queues)",
        &[
            "agentid::outputs::manager::Outputs::event",
            "agentid::daemon::record",
        ],
    ),
];

/// A running `perf record` on one process.
pub(crate) struct Recording {
    child: Child,
    data: PathBuf,
}

/// Starts sampling `pid` (all threads) into `data`.
pub(crate) fn start(pid: u32, data: &Path) -> anyhow::Result<Recording> {
    let child = Command::new("perf")
        .args([
            "record",
            "-q",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-p",
        ])
        .arg(pid.to_string())
        .arg("-o")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record (apt install linux-perf)")?;
    Ok(Recording {
        child,
        data: data.to_owned(),
    })
}

impl Recording {
    /// Stops sampling and waits for perf to write its data.
    pub(crate) fn stop(mut self) -> anyhow::Result<PathBuf> {
        sys::signal(self.child.id(), libc::SIGINT);
        let status = self.child.wait().context("waiting for perf record")?;
        if !self.data.exists() {
            bail!("perf record wrote no data ({status})");
        }
        Ok(self.data)
    }
}

/// `(share %, name)` rows of one `perf report --stdio` table.
fn report(data: &Path, args: &[&str]) -> anyhow::Result<Vec<(f64, f64, String)>> {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "-g",
            "none",
            "--percent-limit",
            "0.2",
            "-i",
        ])
        .arg(data)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .context("running perf report")?;
    if !out.status.success() {
        bail!("perf report failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(a) = words.next().and_then(|w| w.strip_suffix('%')?.parse().ok()) else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        // With --children: Children% Self% [.] symbol; without: Self% name.
        let (b, name) = match rest.first().and_then(|w| w.strip_suffix('%')?.parse().ok()) {
            Some(b) => (b, rest[1..].join(" ")),
            None => (a, rest.join(" ")),
        };
        rows.push((a, b, name));
    }
    Ok(rows)
}

/// Per-thread and per-stage shares of the daemon's CPU time, in µs per event.
pub(crate) fn breakdown(data: &Path, cpu_s: f64, events: u64) -> anyhow::Result<Value> {
    #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
    let us_per_event = if events == 0 {
        0.0
    } else {
        cpu_s * 1e6 / events as f64
    };
    let threads: Vec<Value> = report(data, &["--no-children", "--sort", "comm"])?
        .into_iter()
        .map(|(share, _, comm)| {
            json!({"thread": comm, "share_percent": share, "us_per_event": us_per_event * share / 100.0})
        })
        .collect();
    let symbols = report(data, &["--children", "--sort", "symbol"])?;
    let stages: Vec<Value> = STAGES
        .iter()
        .map(|(stage, names)| {
            let share = symbols
                .iter()
                .filter(|(_, _, sym)| names.iter().any(|n| sym.contains(n)))
                .map(|(children, _, _)| *children)
                .fold(0.0, f64::max);
            json!({"stage": stage, "share_percent": share, "us_per_event": us_per_event * share / 100.0})
        })
        .collect();
    let top_self: Vec<Value> = report(data, &["--no-children", "--sort", "dso,symbol"])?
        .into_iter()
        .take(25)
        .map(|(share, _, sym)| json!({"symbol": sym, "self_percent": share}))
        .collect();
    Ok(json!({
        "perf_data": data,
        "daemon_us_per_event": us_per_event,
        "threads": threads,
        "stages": stages,
        "top_self": top_self,
    }))
}
