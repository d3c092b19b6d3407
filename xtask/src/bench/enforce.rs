//! What enforcement costs: a connect storm by an enforced agent, the same agent in monitor
//! mode and no tracer; and resolve+connect cycles a second through a real resolver
//! (`dnsmasq` on loopback, a 1 s TTL, no hold) with and without agentid. With the daemon
//! up the enforced and monitored runs alternate (ABAB…); the no-tracer runs come as a
//! block of their own, its place before or after the daemon's block swapped every
//! repetition.
use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    stats::{Summary, f},
    sys::{self, BenchCgroup, Daemon},
};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub connects: u32,
    pub cycles: u32,
    pub reps: usize,
    /// Enforced/monitored pairs per repetition (and no-tracer runs).
    pub pairs: usize,
}

const NAME: &str = "bench.agentid.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cond {
    NoTracer,
    Monitor,
    Enforced,
}

impl Cond {
    fn name(self) -> &'static str {
        match self {
            Self::NoTracer => "no tracer",
            Self::Monitor => "agentid, monitor",
            Self::Enforced => "agentid, enforced",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Load {
    Storm,
    Resolve,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    wall_s: f64,
    cpu_s: f64,
    refused: u64,
    /// Run time of agentid's socket-path programs during the run (ns; 0 without the
    /// daemon) and `connect4`'s calls among them.
    bpf_ns: f64,
    connect4: (f64, f64),
}

/// The programs a connect or a packet runs through: what enforcement can add to.
const SOCKET_PROGRAMS: [&str; 8] = [
    "sys_enter_socket",
    "sys_exit_socket",
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "dns_egress",
    "dns_ingress",
];

/// A loopback address of this run, apart from the tests' `127.77.0.0/16`.
fn lo(n: u8) -> Ipv4Addr {
    let x = u8::try_from(std::process::id() % 250).unwrap_or(0);
    Ipv4Addr::new(127, 79, x, n)
}

/// `dnsmasq` answering [`NAME`] with `lo(1)` at a 1 s TTL on `lo(53)`; killed on drop.
struct Resolver {
    child: Child,
    resolv: PathBuf,
}

impl Resolver {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let resolv = agentid_testkit::write_resolv_conf(dir, lo(53))?;
        let child = agentid_testkit::spawn_dnsmasq(dir, lo(53), 1, &[(NAME, lo(1))])
            .context("spawning dnsmasq (scripts/setup.sh installs dnsmasq-base)")?;
        let mut r = Self { child, resolv };
        r.wait_ready()?;
        Ok(r)
    }

    /// Asks it until it answers (a deadline, not a sleep).
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        agentid_testkit::await_answer(&mut self.child, lo(53), NAME, Duration::from_secs(10))
            .map_err(anyhow::Error::msg)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run of `load` in `cg`; the resolve cycles in a mount namespace whose
/// `/etc/resolv.conf` is the resolver's.
fn run_load(
    ctx: &Ctx,
    cg: &BenchCgroup,
    load: Load,
    sizes: Sizes,
    resolv: &Path,
) -> anyhow::Result<Sample> {
    let mut cmd = match load {
        Load::Storm => {
            let mut c = cg.command(&ctx.workload);
            c.args(["storm", &sizes.connects.to_string()]);
            c
        }
        Load::Resolve => {
            let mut c = cg.command("unshare");
            c.args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
            ])
            .arg(resolv)
            .arg(&ctx.workload)
            .args(["resolve", &sizes.cycles.to_string(), NAME]);
            c
        }
    };
    let before = sys::program_stats(&SOCKET_PROGRAMS);
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the workload")?;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    let (status, cpu_s) = sys::wait_with_cpu(&child)?;
    let wall_s = t0.elapsed().as_secs_f64();
    if !sys::exited_ok(status) {
        bail!("workload {load:?} failed (wait status {status:#x})");
    }
    let after = sys::program_stats(&SOCKET_PROGRAMS);
    let delta = |p: &str| {
        let (t0, c0) = before.get(p).copied().unwrap_or_default();
        let (t1, c1) = after.get(p).copied().unwrap_or_default();
        (f(t1.saturating_sub(t0)), f(c1.saturating_sub(c0)))
    };
    Ok(Sample {
        wall_s,
        cpu_s,
        refused: out.trim().parse().unwrap_or(0),
        bpf_ns: SOCKET_PROGRAMS.iter().map(|p| delta(p).0).sum(),
        connect4: delta("connect4"),
    })
}

/// Waits until the daemon enforces `n` cgroups (its first walk), with a deadline.
fn await_enforced(d: &Daemon, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = d.cli(&["status"])?;
        let got: u64 = st["enforced"]
            .as_array()
            .map_or(0, |a| a.iter().filter_map(|x| x["cgroups"].as_u64()).sum());
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the daemon did not enforce {n} cgroups within 30 s: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Samples = BTreeMap<(Load, Cond), Vec<Sample>>;

/// One repetition: the no-tracer block and the daemon's block (enforced and monitored
/// alternating), in the order `daemon_first` says.
fn repetition(
    ctx: &Ctx,
    sizes: Sizes,
    rep: usize,
    resolver: &Resolver,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let cg = |c: &str| BenchCgroup::new(&format!("enforce-{c}-{rep}"));
    let (none, mon, enf) = (cg("none")?, cg("monitor")?, cg("enforced")?);
    let policy = format!("egress = [\"127.0.0.1:*\", \"{NAME}:*\"]");
    let enforced = format!("enforce = true\n{policy}");
    let mut run = |cond: Cond, cg: &BenchCgroup| -> anyhow::Result<()> {
        for load in [Load::Storm, Load::Resolve] {
            let s = run_load(ctx, cg, load, sizes, &resolver.resolv)?;
            samples.entry((load, cond)).or_default().push(s);
        }
        Ok(())
    };
    let daemon_first = !rep.is_multiple_of(2);
    if !daemon_first {
        for _ in 0..sizes.pairs {
            run(Cond::NoTracer, &none)?;
        }
    }
    let d = Daemon::start_with(
        &ctx.agentid,
        &ctx.scratch.join("enforce"),
        &[
            ("bench-monitor", &mon.rel, &policy),
            ("bench-enforced", &enf.rel, &enforced),
        ],
        &format!(
            "[dns]\nresolvers = [\"{}\"]\nmin_hold = \"0s\"\ngrace = \"0s\"\n",
            lo(53)
        ),
    )?;
    await_enforced(&d, 1)?;
    // The kernel counts programs' run time only while this descriptor is held.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    for i in 0..sizes.pairs {
        let order = if (i + rep).is_multiple_of(2) {
            [(Cond::Enforced, &enf), (Cond::Monitor, &mon)]
        } else {
            [(Cond::Monitor, &mon), (Cond::Enforced, &enf)]
        };
        for (cond, cg) in order {
            run(cond, cg)?;
        }
    }
    drop(stats);
    d.stop()?;
    if daemon_first {
        for _ in 0..sizes.pairs {
            run(Cond::NoTracer, &none)?;
        }
    }
    Ok(())
}

pub(crate) fn run(ctx: &Ctx, sizes: Sizes) -> anyhow::Result<Value> {
    let resolver = Resolver::start(&ctx.scratch.join("enforce-dns"))?;
    let mut samples = Samples::new();
    for rep in 0..sizes.reps {
        repetition(ctx, sizes, rep, &resolver, &mut samples)
            .with_context(|| format!("enforcement rep {rep}"))?;
        eprintln!("bench: enforcement rep {}/{} done", rep + 1, sizes.reps);
    }
    drop(resolver);
    Ok(report(sizes, &samples))
}

fn report(sizes: Sizes, samples: &Samples) -> Value {
    let pick = |load, cond, get: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .get(&(load, cond))
            .map(|v| v.iter().map(get).collect())
            .unwrap_or_default()
    };
    let none_cpu = Summary::of(&pick(Load::Storm, Cond::NoTracer, |s| s.cpu_s));
    let conds = [Cond::NoTracer, Cond::Monitor, Cond::Enforced];
    let storm: Vec<Value> = conds
        .iter()
        .map(|&c| {
            let cpu = Summary::of(&pick(Load::Storm, c, |s| s.cpu_s));
            let over = |cpu: Option<Summary>| Some((cpu?.median / none_cpu?.median - 1.0) * 100.0);
            json!({
                "condition": c.name(),
                "wall_s": Summary::of(&pick(Load::Storm, c, |s| s.wall_s)).map(|s| s.json()),
                "cpu_s": cpu.map(|s| s.json()),
                "cpu_over_no_tracer_pct": over(cpu),
                "bpf_ns_per_connect": Summary::of(&pick(Load::Storm, c, |s| s.bpf_ns))
                    .map(|s| s.median / f(u64::from(sizes.connects))),
                "connect4_ns_per_call": Summary::of(&pick(Load::Storm, c, |s| {
                    s.connect4.0 / s.connect4.1.max(1.0)
                }))
                .map(|s| s.median),
            })
        })
        .collect();
    // Paired: each enforced run against the monitored run beside it, in points of the
    // no-tracer CPU (drift between pairs cancels out).
    let (enf, mon) = (
        pick(Load::Storm, Cond::Enforced, |s| s.cpu_s),
        pick(Load::Storm, Cond::Monitor, |s| s.cpu_s),
    );
    let pp: Vec<f64> = none_cpu.map_or_else(Vec::new, |n| {
        enf.iter()
            .zip(&mon)
            .map(|(e, m)| (e - m) / n.median * 100.0)
            .collect()
    });
    // The same pairs, counting only what the kernel ran in agentid's socket-path
    // programs: enforcement's own cost, without the noise of the whole workload's CPU.
    let (enf_bpf, mon_bpf) = (
        pick(Load::Storm, Cond::Enforced, |s| s.bpf_ns),
        pick(Load::Storm, Cond::Monitor, |s| s.bpf_ns),
    );
    let bpf_pp: Vec<f64> = none_cpu.map_or_else(Vec::new, |n| {
        enf_bpf
            .iter()
            .zip(&mon_bpf)
            .map(|(e, m)| (e - m) / (n.median * 1e9) * 100.0)
            .collect()
    });
    let resolve: Vec<Value> = conds
        .iter()
        .map(|&c| {
            let rate: Vec<f64> = pick(Load::Resolve, c, |s| s.wall_s)
                .iter()
                .map(|w| f(u64::from(sizes.cycles)) / w)
                .collect();
            let refused: u64 = samples
                .get(&(Load::Resolve, c))
                .map_or(0, |v| v.iter().map(|s| s.refused).sum());
            json!({
                "condition": c.name(),
                "cycles_per_s": Summary::of(&rate).map(|s| s.json()),
                "cpu_s": Summary::of(&pick(Load::Resolve, c, |s| s.cpu_s)).map(|s| s.json()),
                "refused": refused,
            })
        })
        .collect();
    json!({
        "sizes": {
            "connects": sizes.connects,
            "resolve_cycles": sizes.cycles,
            "repetitions": sizes.reps,
            "pairs_per_repetition": sizes.pairs,
        },
        "connect_storm": storm,
        "enforced_minus_monitor_cpu_pp": Summary::of(&pp).map(|s| s.json()),
        "enforced_minus_monitor_bpf_pp": Summary::of(&bpf_pp).map(|s| s.json()),
        "resolve_connect": resolve,
    })
}
