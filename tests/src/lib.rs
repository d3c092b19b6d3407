//! Harness for agentid's end-to-end tests: real probes, real processes, one fresh cgroup
//! per test so concurrent tests never see each other's events.
#![expect(
    clippy::expect_used,
    clippy::missing_panics_doc,
    clippy::match_wild_err_arm,
    reason = "test harness: a failed step is a failed test"
)]
#![cfg_attr(
    test,
    expect(
        unused_crate_dependencies,
        reason = "the dev-dependencies are the test files'; the harness's unit tests see them too"
    )
)]
pub mod daemon;
pub mod dns;
pub mod fuzz;
pub mod nats;
pub mod trace;

// The Workload API clients of the workload binary and the issuer tests, not the harness's.
use hyper_util as _;
use spiffe as _;
use tonic as _;
// The reader of tests/kafka.rs, not the harness's.
#[cfg(feature = "kafka")]
use rdkafka as _;

use std::{
    fs,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use agentid::{
    cgroup,
    event::Event,
    sensor::{Sensor, SensorOptions},
};

/// Whether kernel tests must fail (CI) instead of skipping when BPF is unavailable.
pub fn bpf_required() -> bool {
    std::env::var_os("AGENTID_REQUIRE_BPF").is_some_and(|v| v == "1")
}

/// Loads the real sensor. `None` (test skipped, with a note) only when BPF is unavailable
/// and `AGENTID_REQUIRE_BPF` is not set; with it set, unavailability fails the test.
pub fn sensor_or_skip(test: &str) -> Option<Sensor> {
    match Sensor::load(&SensorOptions::default()) {
        Ok(sensor) => Some(sensor),
        Err(e) if bpf_required() => panic!("{test}: BPF required but unavailable: {e}"),
        Err(e) => {
            eprintln!(
                "SKIPPED {test}: BPF unavailable ({e}); set AGENTID_REQUIRE_BPF=1 to fail instead"
            );
            None
        }
    }
}

/// A child cgroup v2 created for one test and removed when dropped.
#[derive(Debug)]
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Path relative to the hierarchy root, as `agentid trace --cgroup` takes it.
    pub rel: String,
    pub id: u64,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let root = cgroup::v2_root().expect("cgroup v2 hierarchy");
        let leaf = format!("agentid-test-{name}-{}", std::process::id());
        let dir = root.join(&leaf);
        if dir.exists() {
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        let id = cgroup::id_of(&dir).expect("cgroup id");
        Self {
            dir,
            rel: format!("/{leaf}"),
            id,
        }
    }

    /// A cgroup made inside this one, removed when dropped (drop it first: a cgroup
    /// with children cannot be removed).
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        let dir = self.dir.join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        let id = cgroup::id_of(&dir).expect("cgroup id");
        Self {
            dir,
            rel: format!("{}/{name}", self.rel),
            id,
        }
    }

    /// Runs `/bin/echo WORD` in this cgroup (a recognisable exec), asserting it succeeded.
    pub fn echo(&self, word: &str) {
        let status = self
            .command("/bin/echo")
            .arg(word)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("echo");
        assert!(status.success(), "echo {word}: {status}");
    }

    /// A command whose process joins this cgroup before it execs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: the closure only opens/writes a file, async-signal-safe enough for a
        // freshly forked single-threaded child.
        unsafe {
            cmd.pre_exec(move || {
                let mut f = fs::OpenOptions::new().write(true).open(&procs)?;
                f.write_all(b"0")
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Exited processes may take a moment to leave the cgroup.
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

/// Reads the sensor, turning each event into what the test keeps (`keep` sees every event,
/// in order), until `done` holds over the kept items; fails after `timeout` (a failure
/// guard, not a synchronisation sleep).
async fn drive_until<T: std::fmt::Debug>(
    sensor: &mut Sensor,
    timeout: Duration,
    mut keep: impl FnMut(Event) -> Option<T>,
    mut done: impl FnMut(&[T]) -> bool,
) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    let mut mine = Vec::new();
    let mut batch = Vec::new();
    while !done(&mine) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sensor.next_events(&mut batch)).await {
            Ok(r) => r.expect("reading the ring buffer"),
            Err(_elapsed) => panic!(
                "timed out after {timeout:?}; kept {} events, the last: {:#?}",
                mine.len(),
                mine.iter().rev().take(10).collect::<Vec<_>>()
            ),
        }
        mine.extend(batch.drain(..).filter_map(&mut keep));
    }
    mine
}

/// Collects this cgroup's events until `done` holds over them, failing after `timeout`.
pub async fn collect_until(
    sensor: &mut Sensor,
    cgroup_id: u64,
    timeout: Duration,
    done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    drive_until(
        sensor,
        timeout,
        |e| (e.cgroup_id == cgroup_id).then_some(e),
        done,
    )
    .await
}

/// Feeds every sensor event through `pipeline` (the process table must see them all) and
/// keeps the attributed events of `cgroup_ids`, until `done` holds or `timeout` fails.
pub async fn attributed_until(
    sensor: &mut Sensor,
    pipeline: &mut agentid::pipeline::Pipeline,
    cgroup_ids: &[u64],
    timeout: Duration,
    done: impl FnMut(&[agentid::attribution::AttributedEvent]) -> bool,
) -> Vec<agentid::attribution::AttributedEvent> {
    let keep = |e| {
        let (a, _) = pipeline.process(e);
        cgroup_ids.contains(&a.event.cgroup_id).then_some(a)
    };
    drive_until(sensor, timeout, keep, done).await
}

/// The `agentid` binary the tests run: `AGENTID_BIN`, else the one built next to this
/// test binary (`cargo build --bins` first; `cargo xtask test` does).
pub fn agentid_bin() -> PathBuf {
    // Another build of the daemon, e.g. the release one for a rate the debug build cannot
    // absorb (`tests/scale.rs`); used as given.
    if let Some(bin) = std::env::var_os("AGENTID_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "AGENTID_BIN={} is not a file", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/agentid
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("agentid");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --bins` (cargo xtask test does)",
        bin.display()
    );
    // A plain `cargo test` does not rebuild another package's binary: a test against a
    // stale daemon passes or fails for the wrong reason.
    let built = fs::metadata(&bin)
        .and_then(|m| m.modified())
        .expect("binary mtime");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for src in ["agentid-user/src", "agentid-ebpf/src"] {
        if let Some((newer, _)) = newest(&root.join(src)).filter(|(_, t)| *t > built) {
            panic!(
                "{} is older than {}: run `cargo build --workspace --bins` first (cargo xtask test does)",
                bin.display(),
                newer.display()
            );
        }
    }
    bin
}

/// The most recently modified file below `dir`.
fn newest(dir: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let mut best: Option<(PathBuf, std::time::SystemTime)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (path, t))
        };
        if let Some((p, t)) = found
            && best.as_ref().is_none_or(|(_, b)| t > *b)
        {
            best = Some((p, t));
        }
    }
    best
}

/// Runs the `agentid` CLI with `args` and waits for it (stdout and stderr captured).
pub fn agentid(args: &[&str]) -> std::process::Output {
    Command::new(agentid_bin())
        .args(args)
        .output()
        .expect("running agentid")
}

/// A finished command's status and both outputs, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Two agents (`a`, `b`) using one credential, a fake API key unique to `tag` and this test
/// process: one `credential-reuse` alert per tag (and, both running as root,
/// `human-privilege` ones).
pub fn raise_credential_reuse(a: &TestCgroup, b: &TestCgroup, tag: &str) {
    let secret = format!("sk-proj-T{tag}{}x7Q9mL2nP4rT6vW8yZ0aB", std::process::id());
    for cg in [a, b] {
        let st = cg
            .command("/bin/true")
            .env_clear()
            .env("OPENAI_API_KEY", &secret)
            .status()
            .expect("spawn");
        assert!(st.success());
    }
}
