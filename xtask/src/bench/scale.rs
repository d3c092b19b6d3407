//! `cargo xtask bench --scale`: how the daemon's cost grows with the work — CPU (share of
//! one core and µs per event) and RSS by event rate and by live processes, and the
//! highest rate it absorbs with zero ring-buffer drops. Each point is the daemon-resources
//! load ([`super::resources`]) on a fresh daemon.
use std::fs;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{Ctx, resources, stats::f};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// The rate curve's targets (events/s), with [`Sizes::rate_live`] live processes.
    pub rates: &'static [u32],
    pub rate_live: u32,
    /// The process curve's live processes, at [`Sizes::process_rate`] events/s.
    pub live: &'static [u32],
    pub process_rate: u32,
    pub seconds: u64,
    /// The zero-drop search: rates tried in order until one drops records.
    pub search: &'static [u32],
    pub search_seconds: u64,
}

/// One event generator thread makes ~50k events/s at most on a 2-core VM; more threads
/// share the target above that.
fn generators(rate: u32) -> u32 {
    rate.div_ceil(40_000).clamp(1, 2)
}

/// `kernel.pid_max` raised for the run (50,000 sleepers need more than the common 32,768)
/// and put back when dropped.
struct PidMax {
    before: Option<String>,
}

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl PidMax {
    fn at_least(n: u32) -> anyhow::Result<Self> {
        let before = fs::read_to_string(PID_MAX).context("reading pid_max")?;
        let current: u32 = before.trim().parse().context("pid_max")?;
        if current >= n {
            return Ok(Self { before: None });
        }
        fs::write(PID_MAX, n.to_string()).context("raising pid_max")?;
        eprintln!("bench: kernel.pid_max {} -> {n} for the run", before.trim());
        Ok(Self {
            before: Some(before),
        })
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(b) = &self.before
            && fs::write(PID_MAX, b.trim()).is_err()
        {
            eprintln!(
                "bench: warning: could not restore kernel.pid_max to {}",
                b.trim()
            );
        }
    }
}

/// One point: the resources run, reduced to what the curve shows.
fn point(ctx: &Ctx, live: u32, rate: u32, seconds: u64) -> anyhow::Result<Value> {
    eprintln!("bench: scale: {live} live processes, {rate} events/s target, {seconds} s");
    let r = resources::run_with(
        ctx,
        resources::Sizes {
            live_processes: live,
            events_per_s: rate,
            seconds,
        },
        generators(rate),
        None,
        "",
    )?;
    let events = r["events"].as_u64().unwrap_or(0);
    let cpu_s = r["daemon_cpu_s"].as_f64().unwrap_or(0.0);
    // The rate over the generator's own run (it outlasts `seconds` when it falls behind).
    let gen_s = r["generated"]["seconds"]
        .as_f64()
        .unwrap_or(f(seconds))
        .max(1e-3);
    let drops = r["kernel_drops"].as_u64().unwrap_or(0);
    eprintln!(
        "bench: scale:   {:.0} events/s, {:.1}% CPU, {:.1} MiB, {drops} drops",
        f(events) / gen_s,
        r["daemon_cpu_percent"].as_f64().unwrap_or(0.0),
        r["max_rss_under_load_mib"].as_f64().unwrap_or(0.0)
    );
    Ok(json!({
        "live_processes_in_table": r["live_processes_in_table"],
        "target_events_per_s": rate,
        "generator_threads": r["generators"],
        "generated_per_s": r["generated_per_s"],
        "generator_cpu_percent": r["generator_cpu_s"].as_f64().map(|c| 100.0 * c / gen_s),
        "events": events,
        "events_per_s": f(events) / gen_s,
        "daemon_cpu_percent": r["daemon_cpu_percent"],
        "daemon_us_per_event": if events == 0 { Value::Null } else { json!(cpu_s * 1e6 / f(events)) },
        "max_rss_under_load_mib": r["max_rss_under_load_mib"],
        "kernel_drops": drops,
        "store_drops": r["store_drops"],
        "ring_peak_kib": r["memory"]["ring_peak_bytes"].as_u64().map(|b| b >> 10),
        "table_bytes_per_live": r["memory"]["table_bytes_per_live"],
    }))
}

pub(crate) fn run(ctx: &Ctx, sizes: Sizes) -> anyhow::Result<Value> {
    let most = sizes.live.iter().copied().max().unwrap_or(0);
    // Room for the sleepers beside whatever else runs on the host.
    let _pid_max = PidMax::at_least(most.saturating_add(65_536))?;
    let mut by_rate = Vec::new();
    for &rate in sizes.rates {
        by_rate.push(point(ctx, sizes.rate_live, rate, sizes.seconds)?);
    }
    let mut by_processes = Vec::new();
    for &live in sizes.live {
        // The rate curve already holds this point.
        let same = by_rate.iter().find(|p| {
            live == sizes.rate_live && p["target_events_per_s"] == json!(sizes.process_rate)
        });
        by_processes.push(match same {
            Some(p) => p.clone(),
            None => point(ctx, live, sizes.process_rate, sizes.seconds)?,
        });
    }
    // Step the rate up until records are dropped (or the steps run out).
    let mut search = Vec::new();
    for &rate in sizes.search {
        let p = point(ctx, sizes.rate_live, rate, sizes.search_seconds)?;
        let dropped = p["kernel_drops"].as_u64().unwrap_or(0) > 0;
        search.push(p);
        if dropped {
            break;
        }
    }
    let reached = |p: &&Value| p["events_per_s"].as_f64().unwrap_or(0.0);
    let last_clean = search
        .iter()
        .filter(|p| p["kernel_drops"] == json!(0))
        .max_by(|a, b| reached(a).total_cmp(&reached(b)))
        .cloned();
    let first_drops = search
        .iter()
        .find(|p| p["kernel_drops"].as_u64().unwrap_or(0) > 0)
        .cloned();
    Ok(json!({
        "seconds": sizes.seconds,
        "rate_live_processes": sizes.rate_live,
        "process_rate": sizes.process_rate,
        "by_rate": by_rate,
        "by_processes": by_processes,
        "zero_drop_search": {
            "seconds": sizes.search_seconds,
            "steps": search,
            "highest_zero_drop": last_clean,
            "first_with_drops": first_drops,
        },
    }))
}
