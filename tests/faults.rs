//! Faults: a full or read-only state directory (at start, and turning read-only under the
//! running daemon), SIGKILL and restart, a corrupted registry.
//! (The ring-buffer overflow lives in `overflow.rs`: its burst would starve these tests.)
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use agentid_tests::{
    TestCgroup, agentid_bin,
    daemon::{Daemon, has_exec_of, registration},
    raise_credential_reuse,
};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

const ALPHA: &str = "spiffe://test.example/agent/alpha";

fn mount_tmpfs(dir: &Path, size: &str) {
    std::fs::create_dir_all(dir).expect("mount point");
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(dir)
        .status()
        .expect("mount");
    assert!(st.success(), "mount tmpfs on {}", dir.display());
}

/// Unmounts on drop, so a failed test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem at `dir` (one file, written until ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

fn exec_count(d: &Daemon, marker: &str) -> usize {
    d.cli(&["events", "--agent", ALPHA, "--kind", "exec"])
        .as_array()
        .map_or(0, |a| {
            a.iter()
                .filter(|e| e["argv"][1].as_str() == Some(marker))
                .count()
        })
}

/// The state dir on a 1 MiB tmpfs: full, then read-only. The daemon keeps serving (and
/// says what fails), and once space returns new events are stored again.
#[test]
fn disk_full_and_read_only_state_degrade_and_recover() {
    let dir = Daemon::dir("diskfull");
    let a = TestCgroup::new("df-full");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let state = dir.join("state");
    // Big enough that, once the filler is gone, the audit log of a busy host (every event,
    // ~900 bytes) cannot fill it again before the recovery check runs.
    mount_tmpfs(&state, "64m");
    let mounted = Mounted(state.clone());
    let Some(mut d) = Daemon::start(&dir) else {
        return;
    };
    let echo = |word: &str| a.echo(word);
    echo("before");
    d.cli_until(&["events", "--agent", ALPHA], |v| {
        has_exec_of(v, "/bin/echo")
    });

    // Full: hundreds of events with nowhere to go.
    let filler = fill(&state);
    for _ in 0..300 {
        echo("while-full");
    }
    let status = d.cli_until(&["status"], |v| {
        v["store"]["errors"].as_u64() > Some(0) || v["audit"]["errors"].as_u64() > Some(0)
    });
    assert!(
        d.child_alive(),
        "the daemon died on a full disk: {}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("No space left on device") || log.contains("full"),
        "no clear error in the log: {log}\nstatus: {status:#}"
    );

    // Space returns: new events are stored again.
    std::fs::remove_file(&filler).expect("remove filler");
    d.cli_until(&["status"], |_| {
        echo("after-full");
        exec_count(&d, "after-full") > 0
    });
    // The store says so once each way, and no longer shows a failure.
    let status = d.cli_until(&["status"], |v| v["store"]["degraded"].is_null());
    if status["store"]["errors"].as_u64() > Some(0) {
        let log = await_log(&d, "store writes resumed");
        assert_eq!(log.matches("store writes failing").count(), 1, "{log}");
        assert_eq!(log.matches("store writes resumed").count(), 1, "{log}");
    }

    // Read-only (a remount needs the daemon's files closed): a refusal to start that
    // names the problem, then a normal start once it is writable again.
    assert!(d.stop().success());
    let remount = |opt: &str| {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&state)
            .status()
            .expect("remount");
        assert!(st.success());
    };
    remount("ro");
    let out = Command::new(agentid_bin())
        .args(["daemon", "--config"])
        .arg(dir.join("agentid.toml"))
        .output()
        .expect("daemon on a read-only state dir");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Read-only file system") && err.contains(&state.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    remount("rw");
    let Some(d) = Daemon::start(&dir) else { return };
    assert!(exec_count(&d, "after-full") > 0, "history kept");
    assert!(d.stop().success());
    drop(mounted);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL, then a restart: a process started before the kill is attributed from /proc,
/// and the alert raised before it is still in the store and the alerts file.
#[test]
fn sigkill_and_restart_rebuild_the_process_table_and_keep_alerts() {
    let dir = Daemon::dir("sigkill");
    let (a, b) = (TestCgroup::new("kill-a"), TestCgroup::new("kill-b"));
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    raise_credential_reuse(&a, &b, "kill");
    let before = d.cli_until(&["alerts", "--rule", "credential-reuse"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let uid = before[0]["uid"].clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut waiting = a
        .command(WORKLOAD)
        .args(["wait-connect", &addr])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    d.cli_until(&["ps", "--agent", ALPHA], |v| {
        v.as_array()
            .is_some_and(|p| p.iter().any(|p| p["pid"] == waiting.id()))
    });
    d.kill9();

    let Some(d) = Daemon::start(&dir) else {
        let _ = waiting.kill();
        let _ = waiting.wait();
        return;
    };
    // Seeded from /proc: the process is live and alpha's.
    let ps = d.cli(&["ps", "--agent", ALPHA]);
    assert!(
        ps.as_array()
            .is_some_and(|p| p.iter().any(|p| p["pid"] == waiting.id())),
        "{ps:#}"
    );
    // Its first event after the restart is attributed to alpha.
    writeln!(waiting.stdin.take().expect("stdin")).expect("release");
    assert!(waiting.wait().expect("wait").success());
    d.cli_until(&["connections", "--agent", ALPHA], |v| {
        v.as_array()
            .is_some_and(|c| c.iter().any(|c| c["pid"] == waiting.id()))
    });
    // No alert lost.
    let after = d.cli(&["alerts", "--rule", "credential-reuse"]);
    assert!(
        after
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["uid"] == uid)),
        "{after:#}"
    );
    let file = std::fs::read_to_string(dir.join("alerts.jsonl")).expect("alerts file");
    assert!(
        file.lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["uid"] == uid)),
        "{file}"
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A registration corrupted, then the whole agents directory removed, while the daemon
/// runs: the last good registry stays in force and `status` reports the errors.
#[test]
fn a_corrupted_or_deleted_registry_keeps_the_last_good_one() {
    let dir = Daemon::dir("regfault");
    let a = TestCgroup::new("reg-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let echo = |word: &str| a.echo(word);
    std::fs::write(
        dir.join("agents/a.toml"),
        "[[agent]]\nid = \"spiffe://test.example/ag",
    )
    .expect("corrupt");
    let status = d.cli_until(&["status"], |v| {
        v["registry"]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    assert_eq!(status["registry"]["agents"], 1, "{status:#}");
    assert!(
        status["registry"]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("a.toml")),
        "{status:#}"
    );
    echo("corrupted");
    d.cli_until(&["events", "--agent", ALPHA], |v| {
        v.as_array()
            .is_some_and(|e| e.iter().any(|e| e["argv"][1] == "corrupted"))
    });

    std::fs::remove_dir_all(dir.join("agents")).expect("rm agents");
    let status = d.cli_until(&["status"], |v| {
        v["registry"]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("agents directory"))
    });
    assert_eq!(status["registry"]["agents"], 1, "{status:#}");
    echo("dir-gone");
    d.cli_until(&["events", "--agent", ALPHA], |v| {
        v.as_array()
            .is_some_and(|e| e.iter().any(|e| e["argv"][1] == "dir-gone"))
    });

    // Restored: no errors.
    std::fs::create_dir_all(dir.join("agents")).expect("agents");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    d.cli_until(&["status"], |v| {
        v["registry"]["errors"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && v["registry"]["agents"] == 1
    });
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file-backed ext4 on a loop device, mounted with `errors=remount-ro`: a filesystem
/// that can be made to fail under open files, as a failing disk does. Unmounted and
/// detached on drop.
struct Ext4Loop {
    device: String,
    mount: PathBuf,
}

impl Ext4Loop {
    fn new(image: &Path, mount: &Path) -> Self {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image");
        let ok = |cmd: &mut Command| {
            let out = cmd.output().expect("spawn");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        let device = ok(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image));
        let fs = Self {
            device,
            mount: mount.to_owned(),
        };
        std::fs::create_dir_all(mount).expect("mount point");
        fs.mount();
        fs
    }

    fn mount(&self) {
        let st = Command::new("mount")
            .args(["-t", "ext4", "-o", "errors=remount-ro", &self.device])
            .arg(&self.mount)
            .status()
            .expect("mount");
        assert!(st.success(), "mount {}", self.device);
        std::fs::set_permissions(
            &self.mount,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
    }

    /// ext4's own error path, as on an I/O error in its metadata: with
    /// `errors=remount-ro` every later write fails with EROFS.
    fn trigger_error(&self) {
        let name = Path::new(&self.device)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("loop name");
        let trigger = Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error");
        std::fs::write(&trigger, "1").unwrap_or_else(|e| panic!("{}: {e}", trigger.display()));
    }

    fn umount(&self) {
        let st = Command::new("umount")
            .arg(&self.mount)
            .status()
            .expect("umount");
        assert!(st.success(), "umount {}", self.mount.display());
    }
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// `agentid events -f --agent A`, its JSON lines read on a thread; killed on drop.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<Value>,
}

impl Follower {
    fn start(dir: &Path, agent: &str) -> Self {
        let mut child = Command::new(agentid_bin())
            .arg("--socket")
            .arg(dir.join("agentid.sock"))
            .args(["--json", "events", "--agent", agent, "-f"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("follower");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next exec event whose first argument is `marker`.
    fn await_exec(&self, marker: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_mins(1);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("follower: no {marker} exec: {e}"));
            if v["kind"] == "exec" && v["argv"][1] == marker {
                return v;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator's recovery from a failed state filesystem: unmount, fsck, mount, start
/// the daemon again. The history from before the failure is there, new events are stored,
/// nothing is degraded, and the audit trail verifies (records lost while read-only were
/// never chained; a torn tail, if any, is cut at start).
fn recover_by_restart(fs: &Ext4Loop, dir: &Path, cg: &TestCgroup) {
    fs.umount();
    let fsck = Command::new("e2fsck")
        .args(["-f", "-y", &fs.device])
        .output()
        .expect("e2fsck");
    // 0: clean, 1: errors corrected.
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck: {}\n{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout)
    );
    fs.mount();
    let Some(d) = Daemon::start(dir) else { return };
    assert!(exec_count(&d, "before") > 0, "history lost");
    d.cli_until(&["status"], |_| {
        assert!(
            cg.command("/bin/echo")
                .arg("after")
                .stdout(Stdio::null())
                .status()
                .expect("echo")
                .success()
        );
        exec_count(&d, "after") > 0
    });
    let status = d.cli(&["status"]);
    assert!(status["store"]["degraded"].is_null(), "{status:#}");
    assert!(status["audit"]["degraded"].is_null(), "{status:#}");
    assert!(d.stop().success());
    let verify = Command::new(agentid_bin())
        .args(["audit", "verify", "--dir"])
        .arg(dir.join("state/audit"))
        .output()
        .expect("verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// The daemon's log once it contains `needle` (its stderr is read on a thread: a line the
/// daemon wrote may not be in `log_text` yet).
fn await_log(d: &Daemon, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = d.log_text();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time (user + system, in clock ticks) of a process so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the parenthesised comm: state is the 1st, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// The state dir's filesystem fails under the running daemon (ext4 turns itself
/// read-only, as on a disk error). The daemon stays up and keeps tracing and serving: a
/// live follower still gets events, `status` shows the store and the audit log degraded
/// with the filesystem's reason and what was lost, the log says so once per output, it
/// does not spin, and it stops cleanly. Recovery is the operator's: this ext4 cannot
/// be remounted read-write while the daemon holds its files (ro remount: EBUSY; the
/// `emergency_ro` state survives an rw remount), so unmount, fsck, mount, restart — then
/// the history from before the failure is there and new events are stored.
#[test]
fn state_dir_turning_read_only_at_runtime_degrades_once_and_recovers_after_restart() {
    let dir = Daemon::dir("runtime-ro");
    let a = TestCgroup::new("rt-ro");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let state = dir.join("state");
    let fs = Ext4Loop::new(&dir.join("state.img"), &state);
    let Some(mut d) = Daemon::start(&dir) else {
        return;
    };
    let echo = |word: &str| a.echo(word);
    echo("before");
    d.cli_until(&["status"], |_| exec_count(&d, "before") > 0);

    // A follower of live events: what cannot be stored must still reach it. Its history
    // part shows it is connected.
    let follower = Follower::start(&dir, ALPHA);
    follower.await_exec("before");

    // What was stored before the failure is on disk, as it would be after any commit
    // interval; then the filesystem fails.
    assert!(
        Command::new("sync")
            .arg("-f")
            .arg(&state)
            .status()
            .expect("sync")
            .success()
    );
    fs.trigger_error();
    let status = d.cli_until(&["status"], |v| {
        echo("while-ro");
        v["store"]["degraded"].is_string() && v["audit"]["degraded"].is_string()
    });
    for part in ["store", "audit"] {
        let reason = status[part]["degraded"].as_str().expect("degraded");
        assert!(
            reason.contains("Read-only file system"),
            "{part} does not name the cause: {reason}"
        );
        assert!(status[part]["lost"].as_u64() > Some(0), "{status:#}");
    }
    let live = follower.await_exec("while-ro");
    assert_eq!(live["agent"]["id"], ALPHA, "{live:#}");
    assert!(d.child_alive(), "the daemon died: {}", d.log_text());
    // History stays queryable from the read-only store.
    assert!(exec_count(&d, "before") > 0);
    assert_eq!(exec_count(&d, "while-ro"), 0, "stored on a read-only fs?");

    // Quiet for a moment: a daemon retrying in a loop would burn a core here.
    let pid = d.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - before;
    assert!(spent < 100, "{spent} ticks of CPU in 2 s while degraded");

    // One error per output, however many records failed.
    await_log(&d, "store writes failing");
    let log = await_log(&d, "audit log writes failing");
    assert_eq!(log.matches("store writes failing").count(), 1, "{log}");
    assert_eq!(log.matches("audit log writes failing").count(), 1, "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(follower);
    let shared_log = std::sync::Arc::clone(&d.log);
    assert!(d.stop().success(), "stop while degraded failed");
    let log = shared_log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(log.contains("stopped"), "{log}");
    // Nothing was written after the failure: no recovery may be claimed (the last,
    // empty commit at shutdown once did).
    assert!(!log.contains("writes resumed"), "{log}");

    recover_by_restart(&fs, &dir, &a);
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Killing a daemon that runs without pinned probes (`pin = false`) leaves a mark: the
/// next start raises one `telemetry-gap` naming the window and the process an agent started
/// inside it; a clean stop and start raise none.
#[test]
fn sigkill_without_pins_leaves_a_telemetry_gap_naming_the_window() {
    let dir = Daemon::dir("blind");
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    config.push_str("pin = false\n");
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    let a = TestCgroup::new("blind-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    assert_eq!(d.pin_dir(), None, "pin = false pins nothing");
    let first_pid = d.child.id();
    // A clean stop leaves no mark.
    assert!(d.stop().success());
    let Some(d) = Daemon::start(&dir) else { return };
    let gaps = |d: &Daemon| -> Vec<Value> {
        d.cli(&["alerts", "--rule", "telemetry-gap"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(gaps(&d).is_empty(), "a clean restart is no gap");
    let killed_pid = d.child.id();
    assert_ne!(killed_pid, first_pid);
    d.kill9();
    // While nobody watches, the agent starts something (it waits on stdin).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut unseen = a
        .command(WORKLOAD)
        .args(["wait-connect", &addr])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    let Some(d) = Daemon::start(&dir) else {
        let _ = unseen.kill();
        let _ = unseen.wait();
        return;
    };
    let gap = d.cli_until(&["alerts", "--rule", "telemetry-gap"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let gap = gap.as_array().expect("alerts");
    assert_eq!(gap.len(), 1, "{gap:#?}");
    let g = &gap[0];
    assert_eq!(g["severity"], "high");
    let desc = g["description"].as_str().expect("description");
    assert!(
        desc.contains(&format!(
            "(pid {killed_pid}) stopped without a clean shutdown"
        )),
        "{desc}"
    );
    let pids: Vec<u64> = g["evidence"]["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert!(
        pids.contains(&u64::from(unseen.id())),
        "the process started while the daemon was down is named: {pids:?}"
    );
    let _ = unseen.kill();
    let _ = unseen.wait();
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent that kills the daemon to act unseen: the pinned probes keep recording while
/// no daemon runs, so its exec and connection made meanwhile reach the store, attributed
/// to it, once the daemon is back — and no gap is claimed, since nothing was lost. A clean
/// stop then unpins: nothing is left recording.
#[test]
fn sigkill_within_the_buffer_loses_nothing_and_a_clean_stop_unpins() {
    let dir = Daemon::dir("pinned");
    let a = TestCgroup::new("pinned-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let pins = d.pin_dir().expect("probes pinned by default").to_owned();
    assert!(pins.is_dir(), "{}", pins.display());
    let killed = d.child.id();
    d.kill9();

    // While nobody reads, the agent runs something and connects.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let status = a
        .command(WORKLOAD)
        .args(["connect", &addr, "1"])
        .status()
        .expect("connect while down");
    assert!(status.success(), "{status}");
    a.echo("while-the-daemon-was-down");

    let Some(d) = Daemon::start(&dir) else { return };
    assert_eq!(d.pin_dir(), Some(pins.as_path()), "the same set, resumed");
    assert!(d.log_text().contains("(Resumed)"), "{}", d.log_text());
    let port: u64 = listener.local_addr().expect("addr").port().into();
    d.cli_until(&["events", "--agent", ALPHA, "--kind", "exec"], |v| {
        v.as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["argv"][1].as_str() == Some("while-the-daemon-was-down"))
        })
    });
    d.cli_until(&["connections", "--agent", ALPHA], |v| {
        v.as_array()
            .is_some_and(|c| c.iter().any(|c| c["dst_port"] == port))
    });
    let gaps = d.cli(&["alerts", "--rule", "telemetry-gap"]);
    assert_eq!(
        gaps.as_array().map(Vec::len),
        Some(0),
        "nothing was lost while pid {killed} was down: {gaps:#}"
    );

    let log = std::sync::Arc::clone(&d.log);
    assert!(d.stop().success());
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(log.contains("probes unpinned"), "{log}");
    assert!(!pins.exists(), "a clean stop leaves nothing pinned");
    let _ = std::fs::remove_dir_all(&dir);
}
