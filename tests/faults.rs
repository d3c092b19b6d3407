//! Faults: a full or read-only state directory, SIGKILL and restart, a corrupted registry.
//! (The ring-buffer overflow lives in `overflow.rs`: its burst would starve these tests.)
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, has_exec_of, registration},
};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

const ALPHA: &str = "spiffe://test.example/agent/alpha";

/// Two agents using one credential: a `credential-reuse` alert.
fn raise_credential_reuse(a: &TestCgroup, b: &TestCgroup, tag: &str) {
    let secret = format!(
        "sk-proj-FAULT{tag}{}x7Q9mL2nP4rT6vW8yZ0aB",
        std::process::id()
    );
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
    let echo = |word: &str| {
        assert!(
            a.command("/bin/echo")
                .arg(word)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("echo")
                .success()
        );
    };
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
    let out = Command::new(agentid_tests::agentid_bin())
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
        .stdin(std::process::Stdio::piped())
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
    let echo = |word: &str| {
        assert!(
            a.command("/bin/echo")
                .arg(word)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("echo")
                .success()
        );
    };
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
