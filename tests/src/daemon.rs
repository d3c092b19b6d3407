//! The real daemon on a temporary config, state dir and socket, driven through the real
//! CLI (shared by the daemon, fault and security tests).
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TestCgroup, agentid_bin, bpf_required};

#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    /// Everything the daemon logged.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Its pinned probes, removed when the test ends however it ends.
    pins: PinGuard,
}

/// A daemon's pin set (`PIN_DIR/abi-HASH`, as its log names it): removed on drop — also
/// when a test fails — unless the test killed the daemon to restart it on the same set.
/// Every set a test process saw is checked once more at exit: one still there is a leak,
/// and fails the test binary.
#[derive(Debug, Default)]
pub struct PinGuard {
    dir: Option<PathBuf>,
    keep: bool,
}

static SEEN_PINS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn check_pins_at_exit() {
    let seen = SEEN_PINS.lock().map(|s| s.clone()).unwrap_or_default();
    let leaked: Vec<_> = seen.iter().filter(|d| d.exists()).collect();
    if leaked.is_empty() {
        return;
    }
    for d in &leaked {
        let _ = std::fs::remove_dir_all(d);
        let _ = d.parent().map(std::fs::remove_dir);
    }
    eprintln!("LEAK: daemons' pinned probes were left behind: {leaked:?}");
    // SAFETY: ends the process at once, as exit would, with a failing status.
    unsafe { libc::_exit(1) };
}

impl PinGuard {
    /// Takes the set named in a daemon's start-up log (none when pinning is off).
    fn from_log(log: &str) -> Self {
        let dir = log.lines().find_map(|l| {
            let rest = &l[l.find("probes pinned at ")? + "probes pinned at ".len()..];
            Some(PathBuf::from(rest.split(" (").next()?.trim()))
        });
        if let Some(d) = &dir {
            static AT_EXIT: std::sync::Once = std::sync::Once::new();
            // SAFETY: registers a plain function.
            AT_EXIT.call_once(|| unsafe {
                libc::atexit(check_pins_at_exit);
            });
            if let Ok(mut seen) = SEEN_PINS.lock() {
                seen.push(d.clone());
            }
        }
        Self { dir, keep: false }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(d) = self.dir.as_ref().filter(|_| !self.keep) {
            let _ = std::fs::remove_dir_all(d);
            // The per-state-dir directory holding it, once empty.
            let _ = d.parent().map(std::fs::remove_dir);
        }
    }
}

pub fn registration(name: &str, cg: &TestCgroup) -> String {
    format!(
        "[[agent]]\nid = \"spiffe://test.example/agent/{name}\"\nname = \"{name}\"\nowner = \"{name}@example.org\"\n\
         [[agent.selectors]]\ncgroup = \"{}\"\n",
        cg.rel
    )
}

impl Daemon {
    pub fn dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("agentid-daemon-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("agents")).expect("agents dir");
        std::fs::write(
            dir.join("agentid.toml"),
            format!(
                "state_dir = \"{0}/state\"\nsocket = \"{0}/agentid.sock\"\nagents_dir = \"{0}/agents\"\n\
                 alerts_file = \"{0}/alerts.jsonl\"\n",
                dir.display()
            ),
        )
        .expect("config");
        dir
    }

    /// Starts the daemon and waits until its API answers (its log says so).
    pub fn start(dir: &Path) -> Option<Self> {
        let child = Command::new(agentid_bin())
            .args(["daemon", "--config"])
            .arg(dir.join("agentid.toml"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        Self::adopt(child, dir)
    }

    /// Takes a daemon started some other way (its stderr piped; e.g. under a sandbox) and
    /// waits until its API answers.
    pub fn adopt(mut child: Child, dir: &Path) -> Option<Self> {
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut log = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).expect("read log") == 0 {
                let status = child.wait().expect("wait");
                assert!(
                    !bpf_required() && log.contains("needs root"),
                    "daemon exited ({status}) before listening:\n{log}"
                );
                eprintln!("SKIPPED: {log}");
                return None;
            }
            log.push_str(&line);
            if line.contains("API listening") {
                break;
            }
        }
        // Keep draining the log so the daemon never blocks on a full pipe.
        let shared = std::sync::Arc::new(std::sync::Mutex::new(log));
        let sink = std::sync::Arc::clone(&shared);
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let pins = PinGuard::from_log(&shared.lock().map(|l| l.clone()).unwrap_or_default());
        Some(Self {
            child,
            dir: dir.to_owned(),
            log: shared,
            pins,
        })
    }

    pub fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(agentid_bin())
            .arg("--socket")
            .arg(self.dir.join("agentid.sock"))
            .arg("--json")
            .args(args)
            .output()
            .expect("cli");
        assert!(
            out.status.success(),
            "agentid {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cli JSON")
    }

    /// Re-queries until `pred` holds: the store commits in batches, so a just-made
    /// event becomes queryable a moment later.
    pub fn cli_until(&self, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let v = self.cli(args);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "agentid {args:?} never satisfied the check; last: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).expect("pid"), libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn has_exec_of(v: &Value, file: &str) -> bool {
    v.as_array().is_some_and(|a| {
        a.iter()
            .any(|e| e["kind"] == "exec" && e["filename"] == file)
    })
}

impl Daemon {
    /// The end of a run: `/bin/echo MARKER` in `cg`, awaited in the store, then a clean
    /// stop (the final audit checkpoint).
    pub fn exec_and_stop(self, cg: &TestCgroup, marker: &str) {
        let st = cg.command("/bin/echo").arg(marker).status().expect("spawn");
        assert!(st.success());
        self.cli_until(&["events", "--kind", "exec"], |v| {
            has_exec_of(v, "/bin/echo")
        });
        assert!(self.stop().success());
    }

    /// `agentid --socket S --json ARGS`, whatever its exit status.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(agentid_bin())
            .arg("--socket")
            .arg(self.dir.join("agentid.sock"))
            .arg("--json")
            .args(args)
            .output()
            .expect("cli")
    }

    /// SIGKILL: no flush, no final checkpoint, the socket left behind — and the pinned
    /// probes left recording, for the next start on this directory to resume (its own
    /// guard removes them).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.pins.keep = true;
    }

    /// Where the daemon pinned its probes (`None`: pinning off or impossible).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.dir()
    }

    /// Whether the daemon process is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

// ------------------------------------------------ helpers of the sink tests (siem, kafka)

/// `(rule, uid)` of every line of the daemon's alerts file.
pub fn alerts_file(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["rule"].as_str().expect("alert rule").to_owned(),
                v["uid"].as_str().expect("alert uid").to_owned(),
            )
        })
        .collect()
}

pub fn sink_status(d: &Daemon, name: &str) -> Value {
    let st = d.cli(&["status"]);
    st["sinks"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no sink {name} in status: {st:#}"))
}

/// Polls `f` until it returns a value; fails after `timeout` (a failure guard).
pub fn poll<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    try_poll(timeout, f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `f` until it returns a value, or `None` after `timeout`.
pub fn try_poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn daemon_with_sinks(test: &str, sinks: &str) -> (PathBuf, TestCgroup, TestCgroup) {
    let dir = Daemon::dir(test);
    let mut cfg = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    cfg.push_str(sinks);
    std::fs::write(dir.join("agentid.toml"), cfg).expect("config");
    let (a, b) = (
        TestCgroup::new(&format!("{test}-a")),
        TestCgroup::new(&format!("{test}-b")),
    );
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("agent a");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("agent b");
    (dir, a, b)
}
