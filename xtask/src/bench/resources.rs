//! Daemon resources under a sustained event rate with many live processes in its table.
use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    kernel::udp_sink,
    stats::f,
    sys::{self, BenchCgroup, Daemon},
};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub live_processes: u32,
    pub events_per_s: u32,
    pub seconds: u64,
}

fn total_events(status: &Value) -> u64 {
    status["events"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// With `profile`, the daemon is sampled by `perf record` into that file during the load
/// and the result carries the per-stage breakdown. `config` is appended to the daemon's
/// (e.g. a `[fleet]` table).
pub(crate) fn run(
    ctx: &Ctx,
    sizes: Sizes,
    profile: Option<&std::path::Path>,
    config: &str,
) -> anyhow::Result<Value> {
    run_with(ctx, sizes, 1, profile, config)
}

/// [`run`] with the load made by `generators` threads (one tops out near 50k events/s).
pub(crate) fn run_with(
    ctx: &Ctx,
    sizes: Sizes,
    generators: u32,
    profile: Option<&std::path::Path>,
    config: &str,
) -> anyhow::Result<Value> {
    let (udp, _udp_sink) = udp_sink()?;
    // The sleepers start before the daemon, so it seeds them from /proc.
    let hold_cg = BenchCgroup::new("hold")?;
    let rate_cg = BenchCgroup::new("rate")?;
    let mut hold = hold_cg
        .command(&ctx.workload)
        .args(["hold", &sizes.live_processes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the sleepers")?;
    let mut ready = String::new();
    BufReader::new(hold.stdout.take().context("hold stdout")?).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        bail!("the sleepers did not start: {ready:?}");
    }
    let result = measure(
        ctx,
        (sizes, generators),
        (&hold_cg, &rate_cg),
        udp,
        profile,
        config,
    );
    hold_cg.kill_all();
    let _ = hold.wait();
    result
}

fn measure(
    ctx: &Ctx,
    (sizes, generators): (Sizes, u32),
    (hold_cg, rate_cg): (&BenchCgroup, &BenchCgroup),
    udp: std::net::SocketAddr,
    profile: Option<&std::path::Path>,
    config: &str,
) -> anyhow::Result<Value> {
    let ring = sys::ring_line(ctx.ring_kib);
    let mut d = Daemon::start_with(
        &ctx.agentid,
        &ctx.scratch.join("resources"),
        &[
            ("bench-idle", &hold_cg.rel, ""),
            ("bench-rate", &rate_cg.rel, ""),
        ],
        &format!("{ring}{config}"),
    )?;
    let pid = d.pid();
    let rss_start_kib = sys::proc_status_kib(pid, "VmRSS")?;
    let before = d.cli(&["status"])?;
    let live = before["processes"]["live"].as_u64().unwrap_or(0);
    let cpu0 = sys::proc_cpu_s(pid)?;
    let t0 = Instant::now();
    let child = rate_cg
        .command(&ctx.workload)
        .args([
            "rate",
            &udp.to_string(),
            &sizes.events_per_s.to_string(),
            &sizes.seconds.to_string(),
            &generators.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the rate workload")?;
    let recording = profile
        .map(|data| super::profile::start(pid, data))
        .transpose()?;
    // Resident memory under load, sampled: VmHWM also holds the load-time spike of parsing
    // the kernel's BTF (freed and trimmed before the daemon reports ready).
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = std::sync::Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut max_kib = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(kib) = sys::proc_status_kib(pid, "VmRSS") {
                    max_kib = max_kib.max(kib);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            max_kib
        })
    };
    let mut child = child;
    let mut made = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().context("rate stdout")?, &mut made)?;
    let (status, generator_cpu_s) = sys::wait_with_cpu(&child)?;
    if !sys::exited_ok(status) {
        bail!("rate workload failed (wait status {status:#x})");
    }
    // What the generator made and how long it took: when it cannot keep up, its run
    // outlasts `seconds` and the rate it reached is below the target.
    let made: Value = serde_json::from_str(made.trim()).unwrap_or(Value::Null);
    let generated = made["connects"].as_u64().unwrap_or(0) + made["sends"].as_u64().unwrap_or(0);
    // Let the daemon finish the backlog, then sample its counters (updated each second).
    std::thread::sleep(Duration::from_millis(1100));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = sys::proc_cpu_s(pid)? - cpu0;
    let perf_data = recording.map(super::profile::Recording::stop).transpose()?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let load_rss_kib = sampler.join().unwrap_or(0);
    let hwm_kib = sys::proc_status_kib(pid, "VmHWM")?;
    let rss_by_mapping = rss_by_mapping(pid);
    let rss_kib = sys::proc_status_kib(pid, "VmRSS")?;
    let after = d.cli(&["status"])?;
    d.check_alive()?;
    d.stop()?;
    let events = total_events(&after) - total_events(&before);
    let breakdown = match perf_data {
        Some(data) => super::profile::breakdown(&data, cpu_s, events)?,
        None => Value::Null,
    };
    let kernel_drops: u64 = after["drops"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    Ok(json!({
        "live_processes_in_table": live,
        "sleepers": sizes.live_processes,
        "target_events_per_s": sizes.events_per_s,
        "seconds": sizes.seconds,
        "events": events,
        "events_per_s": f(events) / elapsed,
        "generators": generators,
        // With the kernel's work in its context (probes, ring-buffer writes): when the
        // target is not reached, whether the generator or the daemon ran out of CPU.
        "generator_cpu_s": generator_cpu_s,
        "generated": made,
        "generated_per_s": made["seconds"].as_f64().filter(|s| *s > 0.0).map(|s| f(generated) / s),
        "daemon_cpu_s": cpu_s,
        "daemon_cpu_percent": 100.0 * cpu_s / elapsed,
        "rss_start_mib": f(rss_start_kib) / 1024.0,
        "rss_end_mib": f(rss_kib) / 1024.0,
        "peak_rss_mib": f(hwm_kib) / 1024.0,
        "max_rss_under_load_mib": f(load_rss_kib) / 1024.0,
        "kernel_drops": kernel_drops,
        "store_drops": after["store"]["dropped"].as_u64().unwrap_or(0),
        // Bytes on disk per event held, as `status` computes them: the store, and the audit
        // log with its plain `audit.log` (archives are compressed once closed).
        "store_bytes_per_event": after["store"]["bytes_per_event"],
        "audit_bytes_per_record": after["audit"]["bytes_per_record"],
        "memory": after["memory"],
        "profile": breakdown,
        "rss_by_mapping_mib": rss_by_mapping,
    }))
}

/// Resident memory by mapping (`[heap]`, anonymous, BPF maps, the binary), largest first,
/// from `/proc/PID/smaps`: where the daemon's RSS goes.
fn rss_by_mapping(pid: u32) -> Value {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Value::Null;
    };
    let mut by: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            *by.entry(name.clone()).or_default() += kib;
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-') && !w.ends_with(':'))
        {
            // A mapping header: address range, perms, offset, dev, inode, [path].
            line.split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .clone_into(&mut name);
        }
    }
    let mut rows: Vec<(String, u64)> = by.into_iter().filter(|(_, k)| *k >= 1024).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    rows.into_iter()
        .map(|(n, kib)| json!({"mapping": n, "mib": f(kib) / 1024.0}))
        .collect()
}
