//! `agentid-fuzz`: a stable-toolchain, coverage-free fuzz driver for the targets in
//! `agentid_tests::fuzz`. Inputs are the built-in seeds and `tests/fuzz/corpus/TARGET/*`,
//! mutated by a seeded PRNG (bit flips, interesting bytes, dictionary tokens, splices,
//! insertions and deletions, stacked). A panic or a hang (> 10 s on one input) is a crash:
//! the input is saved to `tests/fuzz/artifacts/TARGET/` and the run exits 1.
//!
//! ```text
//! agentid-fuzz [--seconds N] [--seed S] [--target NAME]...    fuzz (default: all, 10 s each)
//! agentid-fuzz --target NAME --reproduce FILE                  replay one input
//! ```
#![expect(
    clippy::expect_used,
    reason = "a driver whose own failures are fatal and rare"
)]
#![expect(
    unused_crate_dependencies,
    reason = "a test helper binary in a package whose targets share one dependency list"
)]
use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agentid_tests::fuzz::{TARGETS, Target, corpus_dir};

/// Bytes that break parsers: separators, quotes, escapes, the fields' splitters.
const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xfe, 0xff, b'\n', b'\r', b'"', b'\'', b'\\', b'=', b'|', b']', b'[', b'%',
    b'&', b'{', b'}', b':', b'/', b'.', b' ',
];

const DICTIONARY: &[&str] = &[
    "[[agent]]\n",
    "[[agent.selectors]]\n",
    "[agent.policy]\n",
    "[[sinks]]\n",
    "[retention]\n",
    " = \"",
    "\"\n",
    "spiffe://",
    "cgroup = ",
    "exe_sha256 = ",
    "egress = [",
    "limit=",
    "since=",
    "agent=",
    "kind=",
    "id=",
    "fingerprint=",
    "%ff",
    "%00",
    "18446744073709551615",
    "4294967296",
    "-1",
    "\"seq\":",
    "\"prev\":",
    "\"type\":\"checkpoint\"",
    "\"hash\":",
    "sk-proj-",
    "ghp_",
    "eyJ",
    "Bearer ",
    "--token=",
    "\u{2028}",
    "\u{85}",
];

/// xorshift64*: small, fast, reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

fn mutate(rng: &mut Rng, pool: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    if pool.is_empty() || rng.below(50) == 0 {
        // Now and then, plain random bytes.
        let n = rng.below(256);
        out.extend((0..n).map(|_| rng.next().to_le_bytes()[0]));
        return;
    }
    out.extend_from_slice(&pool[rng.below(pool.len())]);
    let stacked = 1 + rng.below(8);
    for _ in 0..stacked {
        let len = out.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next().to_le_bytes()[0];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 => {
                let i = rng.below(len + 1);
                out.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            4 => {
                let i = rng.below(len + 1);
                let tok = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                out.splice(i..i, tok.iter().copied());
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                out.drain(i..i + n);
            }
            6 if len > 0 => {
                // Duplicate a chunk, sometimes many times (long values, deep nesting).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = out[i..i + n].to_vec();
                let times = if rng.below(8) == 0 { rng.below(200) } else { 1 };
                for _ in 0..times {
                    out.splice(i..i, chunk.iter().copied());
                }
            }
            7 => {
                // Splice in part of another pool entry.
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a) + 1;
                    let i = rng.below(len + 1);
                    out.splice(i..i, other[a..b].iter().copied());
                }
            }
            8 if len > 0 => out.truncate(rng.below(len)),
            _ => {
                // A run of one interesting byte.
                let i = rng.below(len + 1);
                let b = INTERESTING[rng.below(INTERESTING.len())];
                let n = rng.below(300);
                out.splice(i..i, std::iter::repeat_n(b, n));
            }
        }
    }
    out.truncate(1 << 16);
}

fn load_pool(t: &Target) -> Vec<Vec<u8>> {
    let mut pool = (t.seeds)();
    if let Ok(entries) = std::fs::read_dir(corpus_dir(t.name)) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        pool.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    pool
}

fn artifact(target: &str, input: &[u8]) -> PathBuf {
    // FNV-1a names the input.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in input {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/artifacts")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("crash-{h:016x}"));
    let _ = std::fs::write(&path, input);
    path
}

/// Runs one target for `secs`; returns (executions, crashes).
fn fuzz(
    t: &Target,
    secs: u64,
    seed: u64,
    current: &Mutex<(String, Vec<u8>)>,
    progress: &AtomicU64,
) -> (u64, u64) {
    let pool = load_pool(t);
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15 ^ (t.name.len() as u64) << 32 | 1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut execs, mut crashes) = (0u64, 0u64);
    let mut input = Vec::new();
    // Every seed once, unmutated, then mutations until the deadline.
    let mut seeds = pool.iter();
    while Instant::now() < deadline {
        match seeds.next() {
            Some(s) => input.clone_from(s),
            None => mutate(&mut rng, &pool, &mut input),
        }
        if let Ok(mut c) = current.lock() {
            c.0.clear();
            c.0.push_str(t.name);
            c.1.clone_from(&input);
        }
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        progress.fetch_add(1, Ordering::Relaxed);
        execs += 1;
        if r.is_err() {
            crashes += 1;
            let path = artifact(t.name, &input);
            eprintln!("fuzz {}: CRASH, input saved to {}", t.name, path.display());
            if crashes >= 5 {
                break;
            }
        }
    }
    (execs, crashes)
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: agentid-fuzz [--seconds N] [--seed S] [--target NAME]... | --target NAME --reproduce FILE\ntargets: {}",
        TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(" ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut secs = 10u64;
    let mut seed = 0x5eed_u64;
    let mut names = Vec::new();
    let mut reproduce = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--seconds", Some(v)) if v.parse::<u64>().is_ok() => secs = v.parse().unwrap_or(10),
            ("--seed", Some(v)) if v.parse::<u64>().is_ok() => seed = v.parse().unwrap_or(1),
            ("--target", Some(v)) => names.push(v),
            ("--reproduce", Some(v)) => reproduce = Some(PathBuf::from(v)),
            _ => return usage(),
        }
    }
    let mut targets: Vec<&Target> = Vec::new();
    for n in &names {
        match TARGETS.iter().find(|t| t.name == n) {
            Some(t) => targets.push(t),
            None => return usage(),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().collect();
    }
    if let Some(file) = reproduce {
        let [t] = targets[..] else { return usage() };
        let input = std::fs::read(&file).expect("reading the input");
        (t.run)(&input);
        println!("fuzz {}: {} ran without a crash", t.name, file.display());
        return ExitCode::SUCCESS;
    }

    // A watchdog: one input stuck for 10 s is a hang; save it and abort.
    let current = Arc::new(Mutex::new((String::new(), Vec::new())));
    let progress = Arc::new(AtomicU64::new(0));
    {
        let (current, progress) = (Arc::clone(&current), Arc::clone(&progress));
        std::thread::spawn(move || {
            let mut last = u64::MAX;
            loop {
                std::thread::sleep(Duration::from_secs(10));
                let now = progress.load(Ordering::Relaxed);
                if now == last {
                    let (name, input) = current.lock().map(|c| c.clone()).unwrap_or_default();
                    let path = artifact(&name, &input);
                    eprintln!(
                        "fuzz {name}: HANG (> 10 s), input saved to {}",
                        path.display()
                    );
                    std::process::exit(1);
                }
                last = now;
            }
        });
    }
    // Panics are expected outcomes here: report them in one line, not a backtrace each.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let mut failed = false;
    for t in targets {
        let started = Instant::now();
        let (execs, crashes) = fuzz(t, secs, seed, &current, &progress);
        let took = started.elapsed().as_secs_f64().max(0.001);
        #[expect(clippy::cast_precision_loss, reason = "a rate for humans")]
        let rate = execs as f64 / took;
        println!(
            "fuzz {:<12} {execs:>9} execs in {took:>5.1} s ({rate:>8.0}/s), crashes: {crashes}",
            t.name
        );
        failed |= crashes > 0;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
