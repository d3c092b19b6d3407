//! `cargo xtask bench [--quick] [--out FILE]`: kernel-path overhead against auditd and
//! bpftrace, agentid's completeness, userspace pipeline throughput, daemon resources,
//! alert latency and (full mode, or `--fleet` alone) the fleet on a 3-node cluster. Results go to a JSON file and a markdown table (`results.md` beside it).
//!
//! Nothing here asserts a threshold: figures are reported, and the bench fails only when
//! something crashes (a workload, the daemon, a tracer that started and then died).
mod enforce;
mod fleet;
mod kernel;
mod latency;
mod profile;
mod report;
mod resources;
mod scale;
mod stats;
mod sys;
mod tls;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub quick: bool,
    /// One section alone instead of the whole bench.
    pub only: Option<Only>,
    pub out: Option<PathBuf>,
    /// The daemons' ring buffer size (KiB); `None`: the daemon's default.
    pub ring_kib: Option<u32>,
}

/// A section run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Only {
    /// The daemon-resources section, sampled by `perf record`, with the per-stage
    /// breakdown of the daemon's time per event.
    Profile,
    /// The TLS client-overhead section.
    Tls,
    /// The enforcement section (enforced vs monitor vs no tracer; resolve+connect).
    Enforcement,
    /// The fleet section, with the full run's sizes.
    Fleet,
    /// The scale curve, with the full run's sizes.
    Scale,
    /// The kernel-path overhead section.
    Overhead,
}

/// Whether each peer tracer can be used, or why not.
#[derive(Debug, Clone)]
struct Tools {
    auditd: Result<(), String>,
    bpftrace: Result<(), String>,
}

/// What every section needs.
#[derive(Debug)]
struct Ctx {
    agentid: PathBuf,
    workload: PathBuf,
    /// Temporary configs and state of the daemons started here.
    scratch: PathBuf,
    tools: Tools,
    ring_kib: Option<u32>,
}

struct Plan {
    overhead: kernel::Sizes,
    resources: resources::Sizes,
    enforcement: enforce::Sizes,
    latency_trials: usize,
    tls: tls::Sizes,
    /// The fleet section; `None` in quick mode (a cluster and three daemon runs).
    fleet: Option<fleet::Sizes>,
    /// criterion arguments.
    criterion: &'static [&'static str],
}

/// The scale curve (full run, or `--scale` alone; `--quick` skips it: ~5 minutes).
const SCALE: scale::Sizes = scale::Sizes {
    rates: &[5_000, 20_000, 50_000],
    rate_live: 1_000,
    live: &[1_000, 10_000, 50_000],
    process_rate: 20_000,
    seconds: 15,
    search: &[30_000, 40_000, 50_000, 60_000, 70_000, 80_000, 100_000],
    search_seconds: 10,
};

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            overhead: kernel::Sizes {
                connects: 5_000,
                execs: 400,
                mixed_rounds: 50,
                reps: 2,
                // A smoke run: a peer that is slow to attach is reported, not waited for.
                attach_timeout: std::time::Duration::from_secs(45),
            },
            resources: resources::Sizes {
                live_processes: 2_000,
                events_per_s: 20_000,
                seconds: 10,
            },
            // A few seconds in CI: one daemon start, one run of each.
            enforcement: enforce::Sizes {
                connects: 2_000,
                cycles: 200,
                reps: 1,
                pairs: 1,
            },
            latency_trials: 10,
            tls: tls::Sizes {
                requests: 200,
                reps: 1,
            },
            fleet: None,
            criterion: &[
                "--warm-up-time",
                "0.5",
                "--measurement-time",
                "1",
                "--sample-size",
                "10",
            ],
        }
    } else {
        Plan {
            overhead: kernel::Sizes {
                connects: 50_000,
                execs: 4_000,
                mixed_rounds: 500,
                reps: 5,
                // bpftrace compiles its script with LLVM first: over a minute on a loaded
                // 2-core machine.
                attach_timeout: std::time::Duration::from_mins(3),
            },
            resources: resources::Sizes {
                live_processes: 10_000,
                events_per_s: 20_000,
                seconds: 60,
            },
            enforcement: enforce::Sizes {
                connects: 50_000,
                cycles: 5_000,
                reps: 4,
                pairs: 2,
            },
            latency_trials: 100,
            tls: tls::Sizes {
                requests: 2_000,
                reps: 6,
            },
            fleet: Some(fleet::Sizes {
                records: 20_000,
                latency_trials: 50,
                resources: resources::Sizes {
                    live_processes: 2_000,
                    events_per_s: 20_000,
                    seconds: 30,
                },
            }),
            criterion: &["--warm-up-time", "1", "--measurement-time", "3"],
        }
    }
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `./target`).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs auditd and bpftrace when missing; a failure is recorded, not fatal.
fn tools() -> Tools {
    let missing = !have("auditctl") || !have("auditd") || !have("bpftrace");
    let mut install_error = None;
    if missing {
        eprintln!("bench: installing auditd and bpftrace");
        let ok = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq auditd bpftrace",
            ])
            .status();
        if !ok.as_ref().is_ok_and(std::process::ExitStatus::success) {
            install_error = Some(format!("apt-get install auditd bpftrace failed: {ok:?}"));
        }
    }
    let check = |bins: &[&str]| match bins.iter().find(|b| !have(b)) {
        None => Ok(()),
        Some(b) => Err(install_error
            .clone()
            .unwrap_or_else(|| format!("{b} not installed"))),
    };
    Tools {
        auditd: check(&["auditd", "auditctl"]),
        bpftrace: check(&["bpftrace"]),
    }
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn status(mut cmd: Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

/// Runs the criterion benchmarks and reads events/s from their estimates.
fn pipeline(root: &Path, target: &Path, plan: &Plan) -> anyhow::Result<Value> {
    let mut bench = cargo(root);
    bench
        .args(["bench", "-p", "agentid-user", "--bench", "pipeline", "--"])
        .args(plan.criterion);
    status(bench)?;
    let mut out = serde_json::Map::new();
    for (key, dir) in [
        ("pipeline", "pipeline/decode_attribute_detect"),
        ("store_writer", "store/writer"),
    ] {
        let base = target.join("criterion").join(dir);
        let read = |f: &str| -> anyhow::Result<Value> {
            let p = base.join(f);
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(serde_json::from_str(&text)?)
        };
        let estimates = read("new/estimates.json")?;
        let meta = read("new/benchmark.json")?;
        let elements = meta["throughput"]["Elements"]
            .as_f64()
            .context("criterion throughput")?;
        let per_s = |ns: &Value| ns.as_f64().map(|ns| elements / (ns / 1e9));
        let mean = &estimates["mean"];
        // Lower time bound → higher rate, so the interval's ends swap.
        out.insert(
            key.into(),
            json!({
                "events_per_iteration": elements,
                "events_per_s": per_s(&mean["point_estimate"]),
                "events_per_s_low": per_s(&mean["confidence_interval"]["upper_bound"]),
                "events_per_s_high": per_s(&mean["confidence_interval"]["lower_bound"]),
            }),
        );
    }
    Ok(Value::Object(out))
}

fn machine() -> Value {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "kernel": sh("uname -r"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"),
        "cores": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "load_at_start": sh("cut -d' ' -f1-3 /proc/loadavg"),
    })
}

pub(crate) fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let target = target_dir(root);
    let plan = plan(opts.quick);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench loads BPF programs and creates cgroups: run it as root");
    }
    let mut build = cargo(root);
    build.args([
        "build",
        "--release",
        "-p",
        "agentid-user",
        "-p",
        "agentid-tests",
        "--bins",
    ]);
    status(build)?;
    let tools = tools();
    let scratch = std::env::temp_dir().join(format!("agentid-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let ctx = Ctx {
        agentid: target.join("release/agentid"),
        workload: target.join("release/agentid-workload"),
        scratch: scratch.clone(),
        tools,
        ring_kib: opts.ring_kib,
    };
    let machine = machine();
    if let Some(only) = opts.only {
        let section = run_only(only, &ctx, &plan, &target, opts.quick);
        let _ = std::fs::remove_dir_all(&scratch);
        let (name, mut results, markdown) = section?;
        results["machine"] = machine;
        results["duration_s"] = json!(started.elapsed().as_secs_f64());
        return section_only(&target, name, &results, markdown);
    }
    eprintln!("bench: kernel-path overhead");
    let overhead = kernel::run(&ctx, plan.overhead)?;
    eprintln!("bench: daemon resources");
    let resources = resources::run(&ctx, plan.resources, None, "")?;
    eprintln!("bench: alert latency");
    let latency = latency::run(&ctx, plan.latency_trials)?;
    eprintln!("bench: TLS client overhead");
    let tls = tls::run(&ctx, plan.tls)?;
    eprintln!("bench: enforcement");
    let enforcement = enforce::run(&ctx, plan.enforcement)?;
    eprintln!("bench: userspace pipeline (criterion)");
    let pipeline = pipeline(root, &target, &plan)?;
    let fleet = plan
        .fleet
        .map(|sizes| {
            eprintln!("bench: fleet");
            fleet::run(&ctx, sizes)
        })
        .transpose()?;
    let scale = (!opts.quick)
        .then(|| {
            eprintln!("bench: scale curve");
            scale::run(&ctx, SCALE)
        })
        .transpose()?;
    let _ = std::fs::remove_dir_all(&scratch);

    let results = json!({
        "mode": if opts.quick { "quick" } else { "full" },
        "command": if opts.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" },
        "machine": machine,
        "overhead": overhead,
        "pipeline": pipeline,
        "resources": resources,
        "alert_latency": latency,
        "tls": tls,
        "enforcement": enforcement,
        "fleet": fleet,
        "scale": scale,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    write_results(opts, &target, &results, started)
}

/// The JSON results and their markdown beside them.
fn write_results(
    opts: &Options,
    target: &Path,
    results: &Value,
    started: Instant,
) -> anyhow::Result<()> {
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| target.join("bench/results.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(results)?)?;
    let md = report::markdown(results);
    let md_path = out.with_file_name("results.md");
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    eprintln!(
        "bench: done in {:.0} s; {} and {}",
        started.elapsed().as_secs_f64(),
        out.display(),
        md_path.display()
    );
    Ok(())
}

/// One section alone (`--profile`, `--tls`, …): its name (the JSON file's), its results
/// and how they read as markdown.
type Section = (&'static str, Value, fn(&Value) -> String);

fn run_only(
    only: Only,
    ctx: &Ctx,
    plan: &Plan,
    target: &Path,
    quick: bool,
) -> anyhow::Result<Section> {
    let q = if quick { " --quick" } else { "" };
    eprintln!("bench: {only:?} alone");
    Ok(match only {
        Only::Profile => {
            // `perf record` on the daemon, `perf.data` beside the JSON.
            let dir = target.join("bench");
            std::fs::create_dir_all(&dir)?;
            let resources = resources::run(ctx, plan.resources, Some(&dir.join("perf.data")), "")?;
            (
                "profile",
                json!({"command": format!("cargo xtask bench{q} --profile"), "resources": resources}),
                report::profile_markdown,
            )
        }
        Only::Tls => (
            "tls",
            json!({"command": format!("cargo xtask bench{q} --tls"), "tls": tls::run(ctx, plan.tls)?}),
            report::tls_only,
        ),
        Only::Enforcement => (
            "enforcement",
            json!({
                "command": format!("cargo xtask bench{q} --enforcement"),
                "enforcement": enforce::run(ctx, plan.enforcement)?,
            }),
            report::markdown,
        ),
        Only::Fleet => {
            let sizes = plan
                .fleet
                .context("the fleet section is not part of --quick")?;
            (
                "fleet",
                json!({"command": "cargo xtask bench --fleet", "fleet": fleet::run(ctx, sizes)?}),
                |r| report::fleet_markdown(&r["fleet"]),
            )
        }
        Only::Overhead => (
            "overhead",
            json!({
                "command": format!("cargo xtask bench{q} --overhead"),
                "overhead": kernel::run(ctx, plan.overhead)?,
            }),
            report::markdown,
        ),
        Only::Scale => (
            "scale",
            json!({"command": "cargo xtask bench --scale", "scale": scale::run(ctx, SCALE)?}),
            |r| report::scale_markdown(&r["scale"]),
        ),
    })
}

/// Writes one section's results to `target/bench/NAME.json` and prints its markdown.
fn section_only(
    target: &Path,
    name: &str,
    results: &Value,
    markdown: fn(&Value) -> String,
) -> anyhow::Result<()> {
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{name}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(results)?)?;
    println!("{}", markdown(results));
    eprintln!(
        "bench: done in {:.0} s; {}",
        results["duration_s"].as_f64().unwrap_or_default(),
        out.display()
    );
    Ok(())
}
