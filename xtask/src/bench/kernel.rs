//! Kernel-path overhead: the same workloads with no tracer, agentid, auditd and bpftrace,
//! interleaved across repetitions so that drift on a shared machine hits every condition.
use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    stats::{Summary, f, ratio},
    sys::{self, BenchCgroup, Daemon},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cond {
    NoTracer,
    Agentid,
    Auditd,
    Bpftrace,
}

impl Cond {
    pub(crate) const ALL: [Self; 4] = [Self::NoTracer, Self::Agentid, Self::Auditd, Self::Bpftrace];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::NoTracer => "no tracer",
            Self::Agentid => "agentid",
            Self::Auditd => "auditd",
            Self::Bpftrace => "bpftrace",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub connects: u32,
    pub execs: u32,
    pub mixed_rounds: u32,
    pub reps: usize,
    /// How long a peer tracer may take to attach before it is reported as unable to run.
    pub attach_timeout: Duration,
}

/// A workload and the events agentid must capture from it, by kind. Each run also
/// contributes the workload binary's own exec and exit (it joins the cgroup before exec;
/// its fork happens outside).
#[derive(Debug)]
struct Workload {
    name: &'static str,
    args: Vec<String>,
    /// Added to the workload's environment (which its execs inherit).
    env: Vec<(String, String)>,
    expected: BTreeMap<&'static str, u64>,
}

/// Bytes of extra environment of the "exec storm, 24 KiB environment" workload: past the
/// exec record's own 4 KiB, so every exec also sends chunk records (a Kubernetes pod in
/// a busy namespace carries this much in service variables).
const BIG_ENV_BYTES: usize = 24 * 1024;

/// ~`bytes` of `*_SERVICE_HOST`-like variables.
fn big_env(bytes: usize) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut used = 0;
    while used < bytes {
        let i = env.len();
        let name = format!("BENCH_SVC_{i:04}_SERVICE_HOST");
        let value = format!("10.96.{}.{}", i / 250, i % 250);
        used += name.len() + value.len() + 2;
        env.push((name, value));
    }
    env
}

fn workloads(sizes: Sizes, udp: SocketAddr) -> Vec<Workload> {
    let (c, e, m) = (
        u64::from(sizes.connects),
        u64::from(sizes.execs),
        u64::from(sizes.mixed_rounds),
    );
    let counts = |fork: u64, exec: u64, connect: u64, send: u64| {
        BTreeMap::from([
            ("exec", exec + 1),
            ("fork", fork),
            ("exit", exec + 1),
            ("connect", connect),
            ("send", send),
        ])
    };
    vec![
        Workload {
            name: "connect storm",
            args: vec!["storm".into(), c.to_string()],
            env: Vec::new(),
            expected: counts(0, 0, c, 0),
        },
        Workload {
            name: "exec storm",
            args: vec!["exec".into(), e.to_string(), "/bin/true".into()],
            env: Vec::new(),
            expected: counts(e, e, 0, 0),
        },
        Workload {
            name: "exec storm, 24 KiB environment",
            args: vec!["exec".into(), e.to_string(), "/bin/true".into()],
            env: big_env(BIG_ENV_BYTES),
            expected: counts(e, e, 0, 0),
        },
        Workload {
            name: "mixed agent",
            args: vec!["mixed".into(), m.to_string(), udp.to_string()],
            env: Vec::new(),
            expected: counts(m, m, 4 * m, 4 * m),
        },
    ]
}

/// A loopback UDP socket that receives (and drops) the workloads' datagrams. TCP needs no
/// peer here: the workloads accept their own connections, so that no other thread's
/// scheduling sits in the measured path.
pub(crate) fn udp_sink() -> anyhow::Result<(SocketAddr, UdpSocket)> {
    let udp = UdpSocket::bind("127.0.0.1:0").context("UDP sink")?;
    Ok((udp.local_addr()?, udp))
}

/// A tracer running for one repetition.
enum Tracer {
    None,
    Agentid(Daemon),
    Auditd(Child),
    Bpftrace(Child, PathBuf),
}

/// `auditctl -a|-d` arguments: execve and connect, the syscalls agentid's probes cover.
const AUDIT_RULE: [&str; 9] = [
    "always,exit",
    "-F",
    "arch=b64",
    "-S",
    "execve",
    "-S",
    "connect",
    "-k",
    "agentid-bench",
];

fn auditctl(op: &str) -> anyhow::Result<()> {
    let out = Command::new("auditctl")
        .arg(op)
        .args(AUDIT_RULE)
        .output()
        .context("running auditctl")?;
    if !out.status.success() {
        bail!(
            "auditctl {op}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

const BPFTRACE_SCRIPT: &str = r#"
BEGIN { printf("ready\n"); }
tracepoint:syscalls:sys_enter_execve { printf("%d %s execve %s\n", pid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_connect { printf("%d %s connect\n", pid, comm); }
"#;

/// auditd in the foreground with the benchmark's rules, once it registered with the kernel.
fn start_auditd(ctx: &Ctx) -> anyhow::Result<Tracer> {
    ctx.tools.auditd.clone().map_err(anyhow::Error::msg)?;
    fs::create_dir_all("/var/log/audit")?;
    // Foreground (-n) so that this process owns its lifetime; `-s enable` turns
    // kernel auditing on while it runs.
    let mut child = Command::new("auditd")
        .args(["-n", "-s", "enable"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning auditd")?;
    // auditd registers itself with the kernel as the audit daemon; wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("auditd exited at start ({status}): {}", err.trim());
        }
        let st = Command::new("auditctl").arg("-s").output()?;
        let text = String::from_utf8_lossy(&st.stdout);
        if text.contains(&format!("pid {}", child.id())) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("auditd did not register with the kernel within 10 s: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = auditctl("-a") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(Tracer::Auditd(child))
}

fn start(
    ctx: &Ctx,
    cond: Cond,
    cgroups: &[BenchCgroup],
    names: &[String],
    attach_timeout: Duration,
) -> anyhow::Result<Tracer> {
    match cond {
        Cond::NoTracer => Ok(Tracer::None),
        Cond::Agentid => {
            let agents: Vec<(&str, &str)> = names
                .iter()
                .zip(cgroups)
                .map(|(n, c)| (n.as_str(), c.rel.as_str()))
                .collect();
            Ok(Tracer::Agentid(Daemon::start(
                &ctx.agentid,
                &ctx.scratch.join("overhead"),
                &agents,
                ctx.ring_kib,
            )?))
        }
        Cond::Auditd => start_auditd(ctx),
        Cond::Bpftrace => {
            ctx.tools.bpftrace.clone().map_err(anyhow::Error::msg)?;
            let out = ctx.scratch.join("bpftrace.out");
            let _ = fs::remove_file(&out);
            let mut child = Command::new("bpftrace")
                .arg("-o")
                .arg(&out)
                .args(["-e", BPFTRACE_SCRIPT])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawning bpftrace")?;
            // Attached = its two tracepoint programs loaded and, besides its per-CPU output
            // buffers, one perf event per tracepoint open in the process. Not BEGIN's
            // "ready" line: with `-o`, bpftrace buffers its output fully, so the line stays
            // in its buffer until exit (which is why earlier runs never saw it attach).
            // bpftrace compiles its script with LLVM first, which can take a minute on a
            // loaded 2-core machine.
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            let deadline = Instant::now() + attach_timeout;
            while !bpftrace_attached(child.id(), cpus) {
                if let Some(status) = child.try_wait()? {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    bail!("bpftrace exited at start ({status}): {}", err.trim());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "bpftrace did not attach within {}",
                        humanize(attach_timeout)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Tracer::Bpftrace(child, out))
        }
    }
}

/// Tracepoints in [`BPFTRACE_SCRIPT`].
const BPFTRACE_TRACEPOINTS: usize = 2;

/// Whether bpftrace (`pid`) holds its tracepoint programs and their perf events, beside one
/// perf-buffer event per CPU.
fn bpftrace_attached(pid: u32, cpus: usize) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let (mut progs, mut perf) = (0, 0);
    for target in dir
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
    {
        let t = target.to_string_lossy();
        if t.contains("bpf-prog") {
            progs += 1;
        } else if t.contains("perf_event") {
            perf += 1;
        }
    }
    progs >= BPFTRACE_TRACEPOINTS && perf >= BPFTRACE_TRACEPOINTS + cpus
}

/// What agentid captured in one repetition, per workload.
#[derive(Debug, Default)]
struct Capture {
    by_workload: BTreeMap<String, BTreeMap<String, u64>>,
    kernel_drops: u64,
    store_drops: u64,
}

/// Stops the tracer; a tracer that died during the run fails the bench.
fn stop(tracer: Tracer, names: &[String]) -> anyhow::Result<Option<Capture>> {
    match tracer {
        Tracer::None => Ok(None),
        Tracer::Agentid(mut d) => {
            d.check_alive()?;
            // Kernel counters are sampled once a second.
            std::thread::sleep(Duration::from_millis(1100));
            let status = d.cli(&["status"])?;
            let kernel_drops = status["drops"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            let store_drops = status["store"]["dropped"].as_u64().unwrap_or(0);
            let db = d.store_path();
            d.stop()?;
            let mut cap = Capture {
                kernel_drops,
                store_drops,
                ..Capture::default()
            };
            let out = Command::new("sqlite3")
                .arg(&db)
                .arg(
                    // Compact rows keep their agent in their context.
                    "SELECT coalesce(e.agent, c.agent) AS a, e.kind, count(*) FROM events e \
                     LEFT JOIN contexts c ON c.id = e.ctx WHERE a IS NOT NULL \
                     AND e.kind != 'open' GROUP BY a, e.kind",
                )
                .output()
                .context("running sqlite3 on the daemon's store")?;
            if !out.status.success() {
                bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut it = line.split('|');
                let (Some(agent), Some(kind), Some(n)) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                let Some(name) = names.iter().find(|n| agent.ends_with(&format!("/{n}"))) else {
                    continue;
                };
                cap.by_workload
                    .entry(name.clone())
                    .or_default()
                    .insert(kind.to_owned(), n.parse().unwrap_or(0));
            }
            Ok(Some(cap))
        }
        Tracer::Auditd(mut child) => {
            let rule = auditctl("-d");
            if let Some(status) = child.try_wait()? {
                bail!("auditd died during the run ({status})");
            }
            sys::signal(child.id(), libc::SIGTERM);
            child.wait()?;
            rule.map(|()| None)
        }
        Tracer::Bpftrace(mut child, out) => {
            if let Some(status) = child.try_wait()? {
                bail!("bpftrace died during the run ({status})");
            }
            sys::signal(child.id(), libc::SIGINT);
            child.wait()?;
            let _ = fs::remove_file(out);
            Ok(None)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    wall_s: f64,
    cpu_s: f64,
    /// The repetition, to pair a tracer's run with the no-tracer run of the same round.
    rep: usize,
    /// CPU time the agentid daemon spent during the run (s): on 2 cores it competes with
    /// the workload, which is what a wall ratio above the CPU ratio shows.
    daemon_cpu_s: Option<f64>,
}

fn run_workload(ctx: &Ctx, cg: &BenchCgroup, w: &Workload, rep: usize) -> anyhow::Result<Sample> {
    let t0 = Instant::now();
    let child = cg
        .command(&ctx.workload)
        .args(&w.args)
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning workload {}", w.name))?;
    let (status, cpu_s) = sys::wait_with_cpu(&child)?;
    let wall_s = t0.elapsed().as_secs_f64();
    if !sys::exited_ok(status) {
        bail!("workload {} failed (wait status {status:#x})", w.name);
    }
    Ok(Sample {
        wall_s,
        cpu_s,
        rep,
        daemon_cpu_s: None,
    })
}

#[expect(
    clippy::too_many_lines,
    reason = "the interleaved measurement loop, then its report"
)]
pub(crate) fn run(ctx: &Ctx, sizes: Sizes) -> anyhow::Result<Value> {
    let (udp, _udp_sink) = udp_sink()?;
    let workloads = workloads(sizes, udp);
    // One per workload, in the same order.
    let names: Vec<String> = ["connect", "exec", "exec-env", "mixed"]
        .iter()
        .map(|n| format!("bench-{n}"))
        .collect();
    let mut samples: BTreeMap<(Cond, &str), Vec<Sample>> = BTreeMap::new();
    let mut unavailable: BTreeMap<Cond, String> = BTreeMap::new();
    let mut captures: Vec<Capture> = Vec::new();
    let mut start_failures: Vec<Value> = Vec::new();
    for rep in 0..sizes.reps {
        // Rotate the order too, so that no condition always runs first after a pause.
        for i in 0..Cond::ALL.len() {
            let cond = Cond::ALL[(i + rep) % Cond::ALL.len()];
            if unavailable.contains_key(&cond) {
                continue;
            }
            let cgroups = names
                .iter()
                .map(|n| BenchCgroup::new(&format!("{n}-{rep}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let tracer = match start(ctx, cond, &cgroups, &names, sizes.attach_timeout) {
                Ok(t) => t,
                // agentid must run; a peer that cannot is reported with the reason. One
                // that ran before and failed to start once is retried in the next round.
                Err(e) if cond != Cond::Agentid => {
                    let ran_before = samples.keys().any(|(c, _)| *c == cond);
                    eprintln!("bench: {} cannot run: {e:#}", cond.name());
                    if ran_before {
                        start_failures.push(json!({
                            "condition": cond.name(), "rep": rep, "error": format!("{e:#}"),
                        }));
                    } else {
                        unavailable.insert(cond, format!("{e:#}"));
                    }
                    continue;
                }
                Err(e) => return Err(e.context("starting agentid")),
            };
            let daemon = match &tracer {
                Tracer::Agentid(d) => Some(d.pid()),
                _ => None,
            };
            let mut run = || -> anyhow::Result<()> {
                for (w, cg) in workloads.iter().zip(&cgroups) {
                    let before = daemon.map(sys::proc_cpu_s).transpose()?;
                    let mut s = run_workload(ctx, cg, w, rep)?;
                    if let (Some(pid), Some(before)) = (daemon, before) {
                        s.daemon_cpu_s = Some(sys::proc_cpu_s(pid)? - before);
                    }
                    samples.entry((cond, w.name)).or_default().push(s);
                }
                Ok(())
            };
            let ran = run();
            let stopped = stop(tracer, &names);
            ran.with_context(|| format!("{} rep {rep}", cond.name()))?;
            if let Some(cap) = stopped.with_context(|| format!("stopping {}", cond.name()))? {
                captures.push(cap);
            }
            eprintln!(
                "bench: overhead rep {}/{} {} done",
                rep + 1,
                sizes.reps,
                cond.name()
            );
        }
    }

    // Report: per workload, per condition.
    let mut rows = Vec::new();
    for (wi, w) in workloads.iter().enumerate() {
        let base = |pick: fn(&Sample) -> f64| {
            samples
                .get(&(Cond::NoTracer, w.name))
                .and_then(|v| Summary::of(&v.iter().map(pick).collect::<Vec<_>>()))
        };
        let (base_wall, base_cpu) = (base(|s| s.wall_s), base(|s| s.cpu_s));
        let mut conds = Vec::new();
        for cond in Cond::ALL {
            let v = samples.get(&(cond, w.name));
            let wall = v.and_then(|v| Summary::of(&v.iter().map(|s| s.wall_s).collect::<Vec<_>>()));
            let cpu = v.and_then(|v| Summary::of(&v.iter().map(|s| s.cpu_s).collect::<Vec<_>>()));
            let mut row = json!({
                "condition": cond.name(),
                "wall_s": wall.map(|s| s.json()),
                "cpu_s": cpu.map(|s| s.json()),
                "wall_ratio": ratio(wall.map(|s| s.median), base_wall.map(|s| s.median)),
                "cpu_ratio": ratio(cpu.map(|s| s.median), base_cpu.map(|s| s.median)),
                "daemon_cpu_s": v.and_then(|v| Summary::of(&v.iter().filter_map(|s| s.daemon_cpu_s).collect::<Vec<_>>())).map(|s| s.json()),
                "wall_ratio_paired": paired(v, samples.get(&(Cond::NoTracer, w.name)), |s| s.wall_s),
                "cpu_ratio_paired": paired(v, samples.get(&(Cond::NoTracer, w.name)), |s| s.cpu_s),
                "unavailable": unavailable.get(&cond),
            });
            if cond == Cond::Agentid {
                let name = &names[wi];
                let expected: u64 = w.expected.values().sum();
                let per_rep: Vec<f64> = captures
                    .iter()
                    .map(|c| {
                        let got = c.by_workload.get(name);
                        f(got.map_or(0, |m| m.values().sum())) / f(expected)
                    })
                    .collect();
                let last = captures.last().and_then(|c| c.by_workload.get(name));
                row["completeness"] = json!({
                    "expected_per_run": w.expected,
                    "captured_last_run": last,
                    "ratio": Summary::of(&per_rep).map(|s| s.json()),
                });
            }
            conds.push(row);
        }
        rows.push(json!({ "workload": w.name, "args": w.args.join(" "), "conditions": conds }));
    }
    Ok(json!({
        "sizes": {
            "connects": sizes.connects,
            "execs": sizes.execs,
            "mixed_rounds": sizes.mixed_rounds,
            "repetitions": sizes.reps,
        },
        "workloads": rows,
        "agentid_kernel_drops": captures.iter().map(|c| c.kernel_drops).sum::<u64>(),
        "agentid_store_drops": captures.iter().map(|c| c.store_drops).sum::<u64>(),
        "start_failures": start_failures,
        "unavailable": unavailable.iter().map(|(c, r)| (c.name(), r)).collect::<BTreeMap<_, _>>(),
    }))
}

/// Each repetition's figure over the no-tracer figure of the same repetition (run minutes
/// apart at most, so slow drift of a shared machine cancels): median and spread.
fn paired(
    runs: Option<&Vec<Sample>>,
    base: Option<&Vec<Sample>>,
    pick: fn(&Sample) -> f64,
) -> Value {
    let (Some(runs), Some(base)) = (runs, base) else {
        return Value::Null;
    };
    let ratios: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            let b = base.iter().find(|b| b.rep == r.rep)?;
            ratio(Some(pick(r)), Some(pick(b)))
        })
        .collect();
    Summary::of(&ratios).map_or(Value::Null, |s| s.json())
}

/// `3 minutes`, `45 s`.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} minutes", s / 60)
    } else {
        format!("{s} s")
    }
}
