//! The fleet against a real 3-node `nats-server` JetStream cluster on loopback (full mode
//! and `--fleet` only: the cluster and the daemons cost minutes): the link's publish
//! throughput, cross-host alert latency (the second host's exec → the fleet alert in
//! either host's alerts file), and the daemon's CPU with the fleet on vs off at the
//! resources section's event rate.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, ChildStdin, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    latency::{await_line, fake_key, run_true},
    resources,
    stats::latency_json,
    sys::{BenchCgroup, Daemon},
};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Sightings published in the throughput run.
    pub records: u64,
    pub latency_trials: usize,
    pub resources: resources::Sizes,
}

/// The tests' cluster, run by `agentid-workload nats-cluster`: killed (nodes and dirs)
/// when its stdin closes, on drop.
struct Cluster {
    child: Child,
    stdin: Option<ChildStdin>,
    urls: String,
}

impl Cluster {
    fn start(ctx: &Ctx) -> anyhow::Result<Self> {
        if !super::have("nats-server") {
            bail!("nats-server is not installed (scripts/setup.sh installs it)");
        }
        let mut child = std::process::Command::new(&ctx.workload)
            .arg("nats-cluster")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning the NATS cluster")?;
        let stdin = child.stdin.take();
        let mut urls = String::new();
        BufReader::new(child.stdout.take().context("cluster stdout")?).read_line(&mut urls)?;
        if !urls.starts_with("nats://") {
            bail!("the NATS cluster did not start: {urls:?}");
        }
        Ok(Self {
            child,
            stdin,
            urls: urls.trim().to_owned(),
        })
    }

    /// `[fleet]` joined to this cluster as `host` (with the top-level fleet key before it).
    fn config(&self, key: &Path, host: &str) -> String {
        let servers: Vec<String> = self.urls.split(',').map(|u| format!("\"{u}\"")).collect();
        format!(
            "pin = false\nfleet_key_file = \"{}\"\n[fleet]\nservers = [{}]\nhost = \"{host}\"\n\
             replicas = 3\n",
            key.display(),
            servers.join(", ")
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

pub(crate) fn run(ctx: &Ctx, sizes: Sizes) -> anyhow::Result<Value> {
    let cluster = Cluster::start(ctx)?;
    let key = ctx.scratch.join("fleet.key");
    std::fs::write(&key, "5a".repeat(32))?;
    eprintln!("bench: fleet publish throughput");
    let publish = publish(ctx, &cluster, sizes.records)?;
    eprintln!("bench: cross-host alert latency");
    let latency = latency(ctx, &cluster, &key, sizes.latency_trials)?;
    eprintln!("bench: daemon CPU, fleet off");
    let off = resources::run(ctx, sizes.resources, None, "")?;
    eprintln!("bench: daemon CPU, fleet on");
    let on = resources::run(
        ctx,
        sizes.resources,
        None,
        &cluster.config(&key, "bench-cpu"),
    )?;
    let cpu = |r: &Value| {
        json!({
            "events_per_s": r["events_per_s"],
            "daemon_cpu_percent": r["daemon_cpu_percent"],
            "max_rss_under_load_mib": r["max_rss_under_load_mib"],
        })
    };
    Ok(json!({
        "cluster": "3 nats-server nodes on 127.0.0.1, R3",
        "publish": publish,
        "cross_host_alert_latency": latency,
        "cpu_fleet_off": cpu(&off),
        "cpu_fleet_on": cpu(&on),
    }))
}

/// The link's throughput: `agentid-workload fleet-publish` drives the daemon's own link.
fn publish(ctx: &Ctx, cluster: &Cluster, records: u64) -> anyhow::Result<Value> {
    let out = std::process::Command::new(&ctx.workload)
        .args(["fleet-publish", &cluster.urls, &records.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("spawning fleet-publish")?;
    if !out.status.success() {
        bail!(
            "fleet-publish failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("fleet-publish output")
}

/// Sightings of `host` the daemon `d` has heard from the fleet.
fn heard_from(d: &Daemon, host: &str) -> anyhow::Result<usize> {
    Ok(d.cli(&["fleet", "credentials"])?
        .as_array()
        .map_or(0, |rows| rows.iter().filter(|s| s["host"] == host).count()))
}

/// Per trial: a fresh key used on host 1 and heard by host 2, then timed from its use on
/// host 2 to the fleet `credential-reuse` in either host's alerts file.
fn latency(ctx: &Ctx, cluster: &Cluster, key: &Path, trials: usize) -> anyhow::Result<Value> {
    let (a, b) = (BenchCgroup::new("fleet-a")?, BenchCgroup::new("fleet-b")?);
    let start = |host: &str, agent: &str, cg: &BenchCgroup| {
        Daemon::start_with(
            &ctx.agentid,
            &ctx.scratch.join(host),
            &[(agent, &cg.rel, "")],
            &cluster.config(key, host),
        )
    };
    let mut h1 = start("bench-h1", "fleet-alpha", &a)?;
    let mut h2 = start("bench-h2", "fleet-beta", &b)?;
    let files = [h1.alerts_file(), h2.alerts_file()];
    let mut latencies_ms = Vec::with_capacity(trials);
    for trial in 0..trials {
        let secret = fake_key()?;
        run_true(&a, &secret)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while heard_from(&h2, "bench-h1")? <= trial {
            if Instant::now() > deadline {
                h1.check_alive()?;
                h2.check_alive()?;
                bail!("trial {trial}: host 2 did not hear host 1's sighting within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let offsets: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .collect();
        let t0 = Instant::now();
        run_true(&b, &secret)?;
        let found = await_line(&files, &offsets, t0 + Duration::from_secs(30), |l| {
            l.contains("credential-reuse") && l.contains("across hosts")
        })?;
        if !found {
            h1.check_alive()?;
            h2.check_alive()?;
            bail!("trial {trial}: no cross-host credential-reuse within 30 s");
        }
        latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    h1.stop()?;
    h2.stop()?;
    Ok(latency_json(&latencies_ms))
}
