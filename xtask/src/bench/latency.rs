//! Alert latency: a credential-reuse exec in a second agent's cgroup to the alert line in
//! the daemon's alerts file.
use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{
    Ctx,
    stats::latency_json,
    sys::{BenchCgroup, Daemon},
};

/// A fresh fake `OpenAI` project key per trial (so each trial is a new incident).
pub(super) fn fake_key() -> anyhow::Result<String> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 48];
    fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let tail: String = raw
        .iter()
        .map(|b| char::from(ALNUM[usize::from(*b) % ALNUM.len()]))
        .collect();
    Ok(format!("sk-proj-{tail}"))
}

pub(super) fn run_true(cg: &BenchCgroup, key: &str) -> anyhow::Result<()> {
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
        let found = await_line(
            std::slice::from_ref(&alerts),
            &[offset],
            t0 + Duration::from_secs(10),
            |l| l.contains("credential-reuse"),
        )?;
        if !found {
            d.check_alive()?;
            bail!("trial {trial}: no credential-reuse alert within 10 s");
        }
        latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    d.stop()?;
    Ok(latency_json(&latencies_ms))
}

/// Polls the tails of `files` (from `offsets`) until one holds a line `pred` accepts, or
/// `deadline`: the measured path is exec → alert line on disk.
pub(super) fn await_line(
    files: &[std::path::PathBuf],
    offsets: &[u64],
    deadline: Instant,
    pred: impl Fn(&str) -> bool,
) -> anyhow::Result<bool> {
    loop {
        for (path, offset) in files.iter().zip(offsets) {
            let mut tail = String::new();
            if let Ok(mut file) = fs::File::open(path) {
                file.seek(SeekFrom::Start(*offset))?;
                file.read_to_string(&mut tail)?;
            }
            if tail.lines().any(&pred) {
                return Ok(true);
            }
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
