//! Alert latency: a credential-reuse exec in a second agent's cgroup to the alert line in
//! the daemon's alerts file.
use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    stats::{Summary, percentile},
    sys::{BenchCgroup, Daemon},
};

/// A fresh fake `OpenAI` project key per trial (so each trial is a new incident).
fn fake_key() -> anyhow::Result<String> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 48];
    fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let tail: String = raw
        .iter()
        .map(|b| char::from(ALNUM[usize::from(*b) % ALNUM.len()]))
        .collect();
    Ok(format!("sk-proj-{tail}"))
}

fn run_true(cg: &BenchCgroup, key: &str) -> anyhow::Result<()> {
    let st = cg
        .command("/bin/true")
        .env_clear()
        .env("OPENAI_API_KEY", key)
        .stdin(Stdio::null())
        .status()
        .context("running /bin/true")?;
    if !st.success() {
        bail!("/bin/true failed: {st}");
    }
    Ok(())
}

pub(crate) fn run(ctx: &Ctx, trials: usize) -> anyhow::Result<Value> {
    let a = BenchCgroup::new("cred-a")?;
    let b = BenchCgroup::new("cred-b")?;
    let mut d = Daemon::start(
        &ctx.agentid,
        &ctx.scratch.join("latency"),
        &[("bench-alpha", &a.rel), ("bench-beta", &b.rel)],
        ctx.ring_kib,
    )?;
    let alerts = d.alerts_file();
    let mut latencies_ms = Vec::with_capacity(trials);
    for trial in 0..trials {
        let key = fake_key()?;
        run_true(&a, &key)?;
        let offset = fs::metadata(&alerts).map_or(0, |m| m.len());
        let t0 = Instant::now();
        run_true(&b, &key)?;
        // Poll the file's tail: the measured path is exec → alert line on disk.
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let mut tail = String::new();
            if let Ok(mut file) = fs::File::open(&alerts) {
                file.seek(SeekFrom::Start(offset))?;
                file.read_to_string(&mut tail)?;
            }
            if tail.contains("credential-reuse") {
                latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                d.check_alive()?;
                bail!("trial {trial}: no credential-reuse alert within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    d.stop()?;
    Ok(json!({
        "trials": trials,
        "p50_ms": percentile(&latencies_ms, 50.0),
        "p99_ms": percentile(&latencies_ms, 99.0),
        "spread_ms": Summary::of(&latencies_ms).map(|s| s.json()),
    }))
}
