//! The shipped unit, `scripts/agentid.service`, under a real systemd PID 1: installed by
//! `scripts/install.sh`, started with `systemctl`, it must attach the probes and attribute a
//! workload's exec and connect with every sandboxing directive in force, reload, then stop
//! cleanly.
//!
//! It changes the machine (installs the unit, a group, /etc/agentid), so it runs only where
//! `AGENTID_SYSTEMD_TEST=1` says the machine is disposable: the systemd guest of
//! `cargo xtask test` (`cargo xtask test --systemd` alone). Elsewhere it skips, saying so.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use agentid_tests::agentid_bin;
use serde_json::Value;

const SOCKET: &str = "/run/agentid/agentid.sock";
const AGENT: &str = "spiffe://test.example/agent/systemd-check";
const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");
/// Software emulation is slow: a debug daemon's first start (BTF, /proc seeding) under TCG
/// takes tens of seconds. A failure guard, not a wait.
const PATIENCE: Duration = Duration::from_mins(3);

fn output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = output(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `systemctl show UNIT -p P --value`.
fn unit_property(unit: &str, property: &str) -> String {
    ok(
        "systemctl",
        &["show", unit, "-p", property, "--value", "--no-pager"],
    )
    .trim()
    .to_owned()
}

/// `agentid --json ARGS` against the unit's socket; `None` while it does not answer.
fn cli(args: &[&str]) -> Option<Value> {
    let out = Command::new(agentid_bin())
        .args(["--socket", SOCKET, "--json"])
        .args(args)
        .output()
        .expect("agentid");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Re-queries until `pred` holds (the daemon starts, the store commits in batches).
fn cli_until(args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = cli(args);
        if let Some(v) = v.as_ref().filter(|v| pred(v)) {
            return v.clone();
        }
        assert!(
            Instant::now() < deadline,
            "agentid {args:?} never satisfied the check; last: {v:?}\njournal:\n{}",
            journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The daemon's first `status`, once its probes are attached. A daemon that exits (and
/// is restarted by `Restart=on-failure`) fails the test at once, with its journal.
fn await_api() -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) =
            cli(&["status"]).filter(|v| v["probes"].as_array().is_some_and(|p| !p.is_empty()))
        {
            return v;
        }
        let restarts = unit_property("agentid.service", "NRestarts");
        assert_eq!(
            restarts,
            "0",
            "agentid.service exited and was restarted; journal:\n{}",
            journal()
        );
        assert!(
            Instant::now() < deadline,
            "no answer on {SOCKET}; journal:\n{}",
            journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn journal() -> String {
    String::from_utf8_lossy(
        &output("journalctl", &["-u", "agentid", "-o", "cat", "--no-pager"]).stdout,
    )
    .into_owned()
}

/// A `/proc/PID/status` field.
fn proc_status(pid: &str, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} not in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The mount options of `path` as process `pid` sees it.
fn mount_options(pid: &str, path: &str) -> String {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    // The last mount of `path` is the one on top.
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(path))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_else(|| panic!("{path} not a mount point for {pid}:\n{info}"))
        .to_owned()
}

#[test]
fn the_shipped_unit_traces_under_systemd() {
    if std::env::var_os("AGENTID_SYSTEMD_TEST").is_none_or(|v| v != "1") {
        eprintln!(
            "SKIPPED the_shipped_unit_traces_under_systemd: it installs the unit, so it runs \
             in the systemd guest of `cargo xtask test` (AGENTID_SYSTEMD_TEST=1)"
        );
        return;
    }
    let pid1 = std::fs::read_to_string("/proc/1/comm").expect("comm of PID 1");
    assert_eq!(pid1.trim(), "systemd", "PID 1 is not systemd");
    assert!(Path::new("/run/systemd/system").is_dir());

    install();
    let workload_unit = format!("agentid-check-{}.service", std::process::id());
    // The workload is a unit: its own cgroup, made by systemd, matched by the
    // `systemd_unit` selector as on a real host.
    std::fs::write(
        "/etc/agentid/agents.d/check.toml",
        format!(
            "[[agent]]\nid = \"{AGENT}\"\nname = \"systemd-check\"\n\
             [[agent.selectors]]\nsystemd_unit = \"{workload_unit}\"\n"
        ),
    )
    .expect("registration");

    ok("systemctl", &["start", "agentid.service"]);
    // Serving means loaded and attached: a probe that fails ends the daemon.
    let status = await_api();
    let main_pid = unit_property("agentid.service", "MainPID");
    assert_eq!(status["pid"].to_string(), main_pid, "{status:#}");
    for probe in ["sched_process_exec", "connect4", "connect6"] {
        assert!(
            status["probes"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x == probe)),
            "{probe} not among the daemon's programs: {status:#}"
        );
    }
    assert_eq!(status["registry"]["agents"], 1, "{status:#}");
    assert_eq!(status["registry"]["errors"], serde_json::json!([]));

    assert_sandboxed(&main_pid);
    workload_is_attributed(&workload_unit);
    reloads(&main_pid);
    stops_cleanly();
}

/// `systemctl reload` (the unit's `ExecReload`, a SIGHUP) re-reads the registry in place.
fn reloads(main_pid: &str) {
    std::fs::write(
        "/etc/agentid/agents.d/second.toml",
        "[[agent]]\nid = \"spiffe://test.example/agent/second\"\nname = \"second\"\n\
         [[agent.selectors]]\nsystemd_unit = \"agentid-second.service\"\n",
    )
    .expect("registration");
    ok("systemctl", &["reload", "agentid.service"]);
    let status = cli_until(&["status"], |v| v["registry"]["agents"] == 2);
    assert_eq!(status["pid"].to_string(), main_pid, "not the same process");
    assert_eq!(unit_property("agentid.service", "NRestarts"), "0");
}

/// `scripts/install.sh`, as an operator runs it on a machine without agentid: whatever the
/// image carries (a host's /etc/agentid or state, seen through the guest's overlay) is
/// removed first, so the config is install.sh's default and the audit log is new.
fn install() {
    for dir in [
        "/etc/agentid",
        "/var/lib/agentid",
        "/var/log/agentid",
        "/run/agentid",
    ] {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{dir}: {e}"),
            _ => {}
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let install = Command::new("bash")
        .arg(repo.join("scripts/install.sh"))
        .env("AGENTID_BIN", agentid_bin())
        .output()
        .expect("install.sh");
    assert!(
        install.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    // What runs is the shipped unit, not a copy adapted for the test.
    assert_eq!(
        std::fs::read("/etc/systemd/system/agentid.service").expect("installed unit"),
        std::fs::read(repo.join("scripts/agentid.service")).expect("shipped unit")
    );
}

/// What the unit asks of systemd is really in force on the daemon.
fn assert_sandboxed(main_pid: &str) {
    assert_eq!(proc_status(main_pid, "NoNewPrivs:"), "1");
    assert_eq!(
        proc_status(main_pid, "Seccomp:"),
        "2",
        "no system-call filter"
    );
    let bounding = u64::from_str_radix(&proc_status(main_pid, "CapBnd:"), 16).expect("hex");
    // CapabilityBoundingSet=: CAP_CHOWN 0, CAP_DAC_READ_SEARCH 2, CAP_FOWNER 3,
    // CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21, CAP_SYS_RESOURCE 24,
    // CAP_PERFMON 38, CAP_BPF 39.
    let expected: u64 = [0, 2, 3, 12, 19, 21, 24, 38, 39]
        .iter()
        .map(|b| 1u64 << b)
        .sum();
    assert_eq!(bounding, expected, "CapBnd {bounding:x}");
    assert!(
        mount_options(main_pid, "/").split(',').any(|o| o == "ro"),
        "ProtectSystem=strict: / is writable"
    );
    assert!(
        mount_options(main_pid, "/var/lib/agentid")
            .split(',')
            .any(|o| o == "rw"),
        "the state directory is not writable"
    );
}

/// An exec and a connect of a workload in another unit reach the daemon, attributed.
fn workload_is_attributed(workload_unit: &str) {
    // A unit file, not `systemd-run`: that needs D-Bus, which need not run (the guest
    // boots to basic.target only).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    std::fs::write(
        format!("/etc/systemd/system/{workload_unit}"),
        format!("[Service]\nType=oneshot\nExecStart={WORKLOAD} connect 127.0.0.1:{port} 1\n"),
    )
    .expect("workload unit");
    ok("systemctl", &["daemon-reload"]);
    ok("systemctl", &["start", workload_unit]);
    assert_eq!(unit_property(workload_unit, "Result"), "success");
    let cgroup = format!("/system.slice/{workload_unit}");
    let events = cli_until(&["events", "--agent", AGENT], |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["kind"] == "exec" && e["filename"] == WORKLOAD)
                && a.iter().any(|e| e["kind"] == "connect")
        })
    });
    let exec = events
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "exec"))
        .expect("exec");
    assert_eq!(exec["agent"]["id"], AGENT, "{exec:#}");
    assert_eq!(exec["cgroup"], cgroup.as_str(), "{exec:#}");
    assert_eq!(exec["argv"][1], "connect", "{exec:#}");
    let connect = events
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "connect"))
        .expect("connect");
    assert_eq!(connect["dst_ip"], "127.0.0.1", "{connect:#}");
    assert_eq!(connect["dst_port"], port, "{connect:#}");
    assert_eq!(connect["protocol"], "tcp", "{connect:#}");
    assert_eq!(connect["agent"]["id"], AGENT, "{connect:#}");
}

/// SIGTERM, exit 0, nothing refused by the sandbox, the audit log closed with a signed
/// checkpoint.
fn stops_cleanly() {
    ok("systemctl", &["stop", "agentid.service"]);
    assert_eq!(unit_property("agentid.service", "ActiveState"), "inactive");
    assert_eq!(unit_property("agentid.service", "Result"), "success");
    assert_eq!(unit_property("agentid.service", "ExecMainStatus"), "0");
    let log = journal();
    assert!(log.contains("API listening"), "{log}");
    // Pinned under the sandbox (bpffs under /sys stays writable), unpinned by the stop.
    assert!(
        log.contains("probes pinned at"),
        "{log}\nbpf mounts: {:?}",
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("bpf"))
            .collect::<Vec<_>>()
    );
    assert!(log.contains("probes unpinned"), "{log}");
    let left: Vec<_> = std::fs::read_dir("/sys/fs/bpf/agentid")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a clean stop leaves nothing pinned: {left:?}"
    );
    // Nothing the sandbox refused: no error, no EPERM from the system-call filter.
    for bad in ["ERROR", "Operation not permitted", "panicked"] {
        assert!(!log.contains(bad), "{bad} in the daemon's journal:\n{log}");
    }
    let verify = ok(
        agentid_bin().to_str().expect("utf-8 path"),
        &[
            "audit",
            "verify",
            "--dir",
            "/var/lib/agentid/audit",
            "--expect-closed",
        ],
    );
    assert!(verify.starts_with("ok "), "{verify}");
    assert!(verify.contains("closed cleanly"), "{verify}");
}
