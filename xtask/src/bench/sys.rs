//! Processes, cgroups and `/proc` for the bench: child cgroups to run workloads in, the
//! real `agentid daemon` on a temporary config, and resource readings.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The cgroup v2 hierarchy's mount point (pure or hybrid), from `/proc/self/mountinfo`.
pub(crate) fn cgroup_v2_root() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mount) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mount));
        }
    }
    bail!("no cgroup v2 hierarchy mounted")
}

/// A child cgroup for one workload run, removed (its processes killed) when dropped.
#[derive(Debug)]
pub(crate) struct BenchCgroup {
    pub dir: PathBuf,
    /// Relative to the hierarchy root, as registrations' `cgroup` selectors take it.
    pub rel: String,
}

impl BenchCgroup {
    pub(crate) fn new(name: &str) -> anyhow::Result<Self> {
        let leaf = format!("agentid-bench-{name}-{}", std::process::id());
        let dir = cgroup_v2_root()?.join(&leaf);
        if dir.exists() {
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(Self {
            dir,
            rel: format!("/{leaf}"),
        })
    }

    /// A command whose process joins this cgroup before it execs.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: the hook only opens and writes one file, which a freshly forked
        // single-threaded child may do.
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, b"0"));
        }
        cmd
    }

    /// Kills every process in the cgroup.
    pub(crate) fn kill_all(&self) {
        if fs::write(self.dir.join("cgroup.kill"), b"1").is_ok() {
            return;
        }
        // Kernels before 5.14 have no cgroup.kill.
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2) of a pid we put in our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        self.kill_all();
        // Killed and exited processes take a moment to leave the cgroup.
        for _ in 0..250 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: warning: could not remove {}", self.dir.display());
    }
}

/// Waits for `child` with `wait4`, returning its exit status and the CPU time (user +
/// system, s) of it and every descendant it waited for.
pub(crate) fn wait_with_cpu(child: &Child) -> anyhow::Result<(i32, f64)> {
    let pid = libc::pid_t::try_from(child.id()).context("pid")?;
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut ru) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    let tv = |t: libc::timeval| {
        #[expect(clippy::cast_precision_loss, reason = "seconds of CPU time")]
        let s = t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        s
    };
    Ok((status, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

/// Whether a `wait4` status is a normal exit with code 0.
pub(crate) fn exited_ok(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// CPU time (user + system, s) of a live process, from `/proc/PID/stat`.
pub(crate) fn proc_cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm, which may itself hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
    Ok(super::stats::f(ticks) / hz.max(1) as f64)
}

/// A `VmXxx:` figure of `/proc/PID/status`, in KiB.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// The real daemon on a temporary config, state dir and socket.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    pub dir: PathBuf,
    bin: PathBuf,
    log: Arc<Mutex<String>>,
}

/// The config line for a ring buffer of `ring_kib` (none: the daemon's default).
pub(crate) fn ring_line(ring_kib: Option<u32>) -> String {
    ring_kib.map_or_else(String::new, |k| format!("ring_buffer_kib = {k}\n"))
}

impl Daemon {
    /// Writes a default config (plus a registration per `(name, cgroup)`) under `dir`,
    /// starts the daemon and waits until its API answers.
    /// With `ring_kib`, the daemon's ring buffer has that size (else its default).
    pub(crate) fn start(
        bin: &Path,
        dir: &Path,
        agents: &[(&str, &str)],
        ring_kib: Option<u32>,
    ) -> anyhow::Result<Self> {
        let agents: Vec<(&str, &str, &str)> = agents.iter().map(|(n, c)| (*n, *c, "")).collect();
        Self::start_with(bin, dir, &agents, &ring_line(ring_kib))
    }

    /// [`Daemon::start`] with `extra` appended to the config and each agent's
    /// `(name, cgroup, policy)`, the policy's lines under `[agent.policy]`.
    pub(crate) fn start_with(
        bin: &Path,
        dir: &Path,
        agents: &[(&str, &str, &str)],
        extra: &str,
    ) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("agents")).context("daemon dir")?;
        fs::write(
            dir.join("agentid.toml"),
            format!(
                "state_dir = \"{0}/state\"\nsocket = \"{0}/agentid.sock\"\n\
                 agents_dir = \"{0}/agents\"\nalerts_file = \"{0}/alerts.jsonl\"\n{extra}",
                dir.display()
            ),
        )?;
        for (name, cgroup, policy) in agents {
            let policy = if policy.is_empty() {
                String::new()
            } else {
                format!("[agent.policy]\n{policy}\n")
            };
            fs::write(
                dir.join(format!("agents/{name}.toml")),
                format!(
                    "[[agent]]\nid = \"spiffe://bench.example/agent/{name}\"\nname = \"{name}\"\n\
                     owner = \"bench@example.org\"\n[[agent.selectors]]\ncgroup = \"{cgroup}\"\n{policy}"
                ),
            )?;
        }
        let mut child = Command::new(bin)
            .args(["daemon", "--config"])
            .arg(dir.join("agentid.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning agentid daemon")?;
        let mut err = BufReader::new(child.stderr.take().context("daemon stderr")?);
        let mut log = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).context("reading the daemon log")? == 0 {
                let status = child.wait()?;
                bail!("the daemon exited ({status}) before listening:\n{log}");
            }
            log.push_str(&line);
            if line.contains("API listening") {
                break;
            }
        }
        // Keep draining the log so the daemon never blocks on a full pipe.
        let log = Arc::new(Mutex::new(log));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        Ok(Self {
            child,
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn alerts_file(&self) -> PathBuf {
        self.dir.join("alerts.jsonl")
    }

    pub(crate) fn store_path(&self) -> PathBuf {
        self.dir.join("state/agentid.db")
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails when the daemon has exited: a crash is a failed bench, never a missing row.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("agentid daemon died ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// `agentid --json ARGS` against this daemon.
    pub(crate) fn cli(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(&self.bin)
            .arg("--socket")
            .arg(self.dir.join("agentid.sock"))
            .arg("--json")
            .args(args)
            .output()
            .context("running the agentid CLI")?;
        if !out.status.success() {
            bail!(
                "agentid {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("agentid CLI JSON")
    }

    /// SIGTERM, then waits (the daemon flushes its store on the way out).
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.check_alive()?;
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("agentid daemon exited with {status}:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agentid daemon did not stop within a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Run time (ns) and run count per named BPF program, summed over its loaded instances:
/// what the kernel counted while a `aya::sys::enable_stats` descriptor was held.
pub(crate) fn program_stats(names: &[&'static str]) -> BTreeMap<&'static str, (u64, u64)> {
    let mut out = BTreeMap::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if let Some(p) = names.iter().find(|p| **p == name) {
            let e = out.entry(*p).or_insert((0, 0));
            e.0 += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            e.1 += info.run_count();
        }
    }
    out
}
