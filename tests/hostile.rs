//! Hostile workloads on the real kernel: names, arguments, environments, paths and cgroup
//! names built to break framing; very long values; a deep process tree; thousands of
//! short-lived processes; pid reuse. Every event must stay one line (table) or one JSON
//! object per line (`--json`), be attributed correctly, and never crash the tracer.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    clippy::await_holding_lock,
    reason = "QUIET orders whole tests; each test's future runs on its own thread"
)]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    ffi::OsStr,
    fmt::Write as _,
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use agentid::{
    attribution::AttributedEvent,
    event::{Detail, EventKind},
    identity::Registry,
    pipeline::Pipeline,
};
use agentid_tests::{TestCgroup, attributed_until, sensor_or_skip, trace::Trace};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");
const AGENT: &str = "spiffe://test.example/agent/hostile";

/// The storms here (thousands of processes a second) are run beside each other, but never
/// beside the two `agentid trace` children of `hostile_strings_stay_one_event_per_line`: a
/// debug-built tracer processes every event on the host and would fall behind, making that
/// test about load instead of framing.
static QUIET: RwLock<()> = RwLock::new(());

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentid-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn registry_for(cgroups: &[&TestCgroup]) -> Arc<Registry> {
    let mut text = String::new();
    for (i, cg) in cgroups.iter().enumerate() {
        let _ = write!(
            text,
            "[[agent]]\nid = \"{AGENT}{i}\"\nname = \"hostile{i}\"\n[[agent.selectors]]\ncgroup = {}\n",
            toml_string(&cg.rel)
        );
    }
    let r = Registry::parse_str(&text, "hostile.toml");
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    Arc::new(r)
}

/// A cgroup selector (a glob) matching exactly `path`.
fn glob_literal(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        if "*?[]{}\\!".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A TOML basic string for any text (control characters as \u escapes).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn pipeline(registry: Arc<Registry>) -> Pipeline {
    let root = agentid::cgroup::v2_root().expect("cgroup root");
    let key = agentid::credentials::FingerprintKey::ephemeral().expect("key");
    let mut p = Pipeline::new(registry, root, key);
    p.seed();
    p
}

fn execs_of<'a>(events: &'a [AttributedEvent], file: &str) -> Vec<&'a AttributedEvent> {
    events
        .iter()
        .filter(|a| matches!(&a.event.detail, Detail::Exec { filename, .. } if filename == file))
        .collect()
}

/// Names, arguments, environment, a > 256-byte path and a cgroup name full of control
/// characters, quotes, CEF/syslog separators and invalid UTF-8: `agentid trace` (JSON and
/// table, two real processes) keeps one event per line and attributes them.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn hostile_strings_stay_one_event_per_line() {
    let _alone = QUIET.write().unwrap_or_else(PoisonError::into_inner);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if rt.block_on(async { sensor_or_skip("hostile-strings").is_none() }) {
        return;
    }
    // cgroupfs takes any byte but '/' and '\n' (EINVAL) in a name.
    let cg = TestCgroup::new("x \"|=]\\\t\u{1b}[31m'\r");
    let dir = tmp("strings");
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).expect("agents");
    std::fs::write(
        agents.join("h.toml"),
        format!(
            "[[agent]]\nid = \"{AGENT}\"\nname = \"hostile\\nbot|=]\"\n[[agent.selectors]]\ncgroup = {}\n",
            toml_string(&glob_literal(&cg.rel))
        ),
    )
    .expect("registration");

    // Executables (symlinks to /bin/true: the kernel reports the name as executed) under a
    // > 256-byte path, and under a hostile, non-UTF-8 name.
    let mut deep = dir.clone();
    for i in 0..6 {
        deep.push(format!("{i}-{}", "d".repeat(60)));
    }
    std::fs::create_dir_all(&deep).expect("deep dir");
    let long_exe = deep.join("w");
    symlink("/bin/true", &long_exe).expect("symlink");
    assert!(long_exe.as_os_str().len() > 256);
    let exe = dir.join(OsStr::from_bytes(b"ev\nil|=]\"\xff\xfe\x1b[2J"));
    symlink("/bin/true", &exe).expect("symlink");

    let spawn_trace = |json: bool| {
        let mut args: Vec<&OsStr> = Vec::new();
        if json {
            args.push(OsStr::new("--json"));
        }
        args.extend([
            OsStr::new("--cgroup"),
            OsStr::new(cg.rel.as_str()),
            OsStr::new("--agents-dir"),
            agents.as_os_str(),
        ]);
        Trace::start(args)
    };
    let json = spawn_trace(true);
    let table = spawn_trace(false);

    let long_arg = "A".repeat(3000);
    let st = cg
        .command(&exe)
        .env_clear()
        .env("EVIL\nNAME", "v\n\"al|=]")
        .env(
            OsStr::from_bytes(b"BIN\xff"),
            OsStr::from_bytes(b"\xfe\xffx"),
        )
        .arg("hostile-args")
        .arg("line1\nline2\r\n\"quoted\" 'single' |=] \\ \t\u{7}\u{1b}[31m")
        .arg(OsStr::from_bytes(b"bad-utf8-\xff\xc3\x28"))
        .arg(&long_arg)
        .status()
        .expect("spawn hostile exe");
    assert!(st.success());
    let st = cg
        .command(&long_exe)
        .arg("long-path")
        .status()
        .expect("spawn long-path exe");
    assert!(st.success());
    // The marker: the last event we wait for.
    assert!(
        cg.command("/bin/echo")
            .arg("hostile-done")
            .stdout(Stdio::null())
            .status()
            .expect("echo")
            .success()
    );

    let read_until_marker = |trace: Trace, is_json: bool| -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let buf = trace
                .next_line(deadline)
                .unwrap_or_else(|| panic!("trace ended early: {lines:#?}"));
            let l = String::from_utf8(buf).expect("output is UTF-8");
            // The marker echo's exit is the last event we wait for.
            let done = if is_json {
                l.contains("\"kind\":\"exit\"") && l.contains("\"comm\":\"echo\"")
            } else {
                l.contains(" exit ") && l.contains(" echo ")
            };
            lines.push(l);
            if done {
                break;
            }
        }
        let _ = trace.stop();
        lines
    };
    let json_lines = read_until_marker(json, true);
    let table_lines = read_until_marker(table, false);

    let mut saw_hostile = false;
    for l in &json_lines {
        assert_eq!(l.matches('\n').count(), 1, "{l:?}");
        let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
        assert!(v.is_object());
        assert_eq!(v["cgroup"], cg.rel.as_str(), "{v}");
        assert_eq!(v["agent"]["id"], AGENT, "{v}");
        if v["kind"] == "exec" && v["argv"][1] == "long-path" {
            // The 256-byte filename buffer: a longer path is cut, never overrun.
            let file = v["filename"].as_str().expect("filename");
            assert!(file.len() <= 256 && file.len() > 200, "{file}");
            assert!(long_exe.display().to_string().starts_with(file), "{file}");
        }
        if v["kind"] == "exec" && v["argv"][1] == "hostile-args" {
            saw_hostile = true;
            let file = v["filename"].as_str().expect("filename");
            assert!(file.starts_with(&dir.display().to_string()), "{file}");
            assert!(file.contains("ev\nil|=]\""), "{file:?}");
            let argv = v["argv"].as_array().expect("argv");
            assert_eq!(
                argv[2], "line1\nline2\r\n\"quoted\" 'single' |=] \\ \t\u{7}\u{1b}[31m",
                "{v}"
            );
            assert!(argv[3].as_str().is_some_and(|s| s.starts_with("bad-utf8-")));
            // The whole argument list is captured (up to 256 KiB): the 3000-byte argument
            // arrives whole, and nothing is flagged.
            assert_eq!(argv[4].as_str().map(str::len), Some(3000), "{v}");
            assert_eq!(v["argv_truncated"], false, "{v}");
        }
    }
    assert!(saw_hostile, "no exec of the hostile exe: {json_lines:#?}");

    assert!(table_lines[0].starts_with("TIME"), "{:?}", table_lines[0]);
    for l in &table_lines[1..] {
        assert_eq!(l.matches('\n').count(), 1, "{l:?}");
        assert!(!l.contains('\r') && !l.contains('\u{1b}'), "{l:?}");
        assert!(
            l.starts_with("20") && l.as_bytes().get(4) == Some(&b'-'),
            "a table line that is not an event: {l:?}"
        );
    }
    assert!(
        table_lines
            .iter()
            .any(|l| l.contains(" exec ") && l.contains("ev\\nil|=]")),
        "{table_lines:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 200-level process tree (each level a live shell waiting for its child): the deepest
/// exec is still attributed to the agent, in the root's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_level_tree_is_attributed_to_the_root_agent() {
    let _beside = QUIET.read().unwrap_or_else(PoisonError::into_inner);
    let cg = TestCgroup::new("deep");
    let Some(mut sensor) = sensor_or_skip("deep") else {
        return;
    };
    let mut p = pipeline(registry_for(&[&cg]));
    let dir = tmp("deep");
    let script = dir.join("nest.sh");
    std::fs::write(
        &script,
        "d=$1\nif [ \"$d\" -gt 0 ]; then /bin/sh \"$0\" $((d - 1)); else /bin/echo deepest-leaf; fi\n",
    )
    .expect("script");
    let st = cg
        .command("/bin/sh")
        .arg(&script)
        .arg("200")
        .stdout(Stdio::null())
        .status()
        .expect("spawn");
    assert!(st.success());
    let events = attributed_until(&mut sensor, &mut p, &[cg.id], Duration::from_mins(1), |ev| {
        ev.iter().any(|a| {
            matches!(&a.event.detail, Detail::Exec { argv, .. } if argv.get(1).is_some_and(|x| x == "deepest-leaf"))
        })
    })
    .await;
    let shells = execs_of(&events, "/bin/sh");
    assert_eq!(shells.len(), 201, "every level's exec");
    let root_session = shells[0].session.clone();
    assert!(root_session.is_some());
    let leaf = execs_of(&events, "/bin/echo")[0];
    assert_eq!(
        leaf.agent.as_ref().map(|a| a.id.as_str()),
        Some(format!("{AGENT}0").as_str())
    );
    assert_eq!(
        leaf.session, root_session,
        "the leaf is in the root's session"
    );
    assert!(!leaf.lineage.is_empty());
    for a in &events {
        assert!(a.agent.is_some(), "unattributed: {a:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Thousands of short-lived processes at full speed: every exec is seen and attributed,
/// and the process table shrinks back once they are gone (bounded memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_short_lived_processes_are_all_attributed() {
    const N: usize = 3000;
    let _beside = QUIET.read().unwrap_or_else(PoisonError::into_inner);
    let cg = TestCgroup::new("storm");
    let Some(mut sensor) = sensor_or_skip("storm") else {
        return;
    };
    let mut p = pipeline(registry_for(&[&cg]));
    let before = p.table.live_count();
    let started = Instant::now();
    let mut child = cg
        .command(WORKLOAD)
        .env_clear()
        .args(["exec", &N.to_string(), "/bin/true"])
        .spawn()
        .expect("spawn");
    let events = attributed_until(
        &mut sensor,
        &mut p,
        &[cg.id],
        Duration::from_mins(2),
        |ev| {
            ev.iter()
                .filter(|a| a.event.kind == EventKind::Exit && a.event.comm == "true")
                .count()
                >= N
        },
    )
    .await;
    assert!(child.wait().expect("wait").success());
    let took = started.elapsed();
    let trues = execs_of(&events, "/bin/true");
    assert_eq!(trues.len(), N);
    assert!(trues.iter().all(|a| {
        a.agent
            .as_ref()
            .is_some_and(|g| g.id == format!("{AGENT}0"))
    }));
    let mut ids: Vec<_> = trues.iter().filter_map(|a| a.exec_id.clone()).collect();
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids.dedup();
    assert_eq!(ids.len(), N, "one exec id per process");
    assert_eq!(sensor.drops().expect("drops").iter().sum::<u64>(), 0);
    eprintln!(
        "{N} processes in {took:?} ({:.0}/s)",
        f64::from(u32::try_from(N).unwrap_or(u32::MAX)) / took.as_secs_f64()
    );
    // The storm is over: live processes back to (about) where they were.
    let after = p.table.live_count();
    assert!(
        after <= before + 50,
        "live processes grew from {before} to {after}"
    );
}

/// Over 10,000 short-lived processes per second (fork and exit, no exec: a fork+exec
/// cycle costs ~0.7 ms on these machines, which caps an exec storm near 1,500/s): every
/// one is seen and attributed to the agent, nothing is dropped, and the table stays
/// bounded (exited entries are kept for a grace period up to a fixed cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_processes_a_second_are_all_attributed() {
    const N: usize = 30_000;
    let _beside = QUIET.read().unwrap_or_else(PoisonError::into_inner);
    let cg = TestCgroup::new("forks");
    let Some(mut sensor) = sensor_or_skip("forks") else {
        return;
    };
    let mut p = pipeline(registry_for(&[&cg]));
    let before = p.table.live_count();
    let child = cg
        .command(WORKLOAD)
        .args(["forks", &N.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let workload = child.id();
    let events = attributed_until(
        &mut sensor,
        &mut p,
        &[cg.id],
        Duration::from_mins(3),
        |ev| {
            ev.iter()
                .filter(|a| a.event.kind == EventKind::Exit && a.event.pid != workload)
                .count()
                >= N
        },
    )
    .await;
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let rate = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let forks: Vec<_> = events
        .iter()
        .filter(|a| a.event.kind == EventKind::Fork)
        .collect();
    let exits = events
        .iter()
        .filter(|a| a.event.kind == EventKind::Exit && a.event.pid != workload)
        .count();
    assert_eq!(forks.len(), N);
    assert_eq!(exits, N);
    assert!(forks.iter().all(|a| a.event.ppid == Some(workload)));
    assert!(
        events.iter().all(|a| a
            .agent
            .as_ref()
            .is_some_and(|g| g.id == format!("{AGENT}0"))),
        "every event attributed to the agent"
    );
    let mut ids: Vec<_> = forks.iter().filter_map(|a| a.exec_id.clone()).collect();
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids.dedup();
    assert_eq!(ids.len(), N, "one exec id per process, pids reused or not");
    assert_eq!(sensor.drops().expect("drops").iter().sum::<u64>(), 0);
    eprintln!(
        "{N} processes at {rate}/s; ring buffer peak {} KiB of {} KiB",
        sensor.ring_peak() >> 10,
        sensor.ring_bytes() >> 10
    );
    assert!(
        p.table.live_count() <= before + 50,
        "live processes grew from {before} to {}",
        p.table.live_count()
    );
    assert!(
        p.table.exited_count() <= 16_385,
        "{}",
        p.table.exited_count()
    );
}

/// The same pid used by two processes one after the other (forced through
/// `ns_last_pid`): two exec events, two different exec ids, each attributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_reuse_gets_a_new_exec_id() {
    let _beside = QUIET.read().unwrap_or_else(PoisonError::into_inner);
    let cg = TestCgroup::new("pidreuse");
    let Some(mut sensor) = sensor_or_skip("pidreuse") else {
        return;
    };
    let mut p = pipeline(registry_for(&[&cg]));
    let ns_last_pid = Path::new("/proc/sys/kernel/ns_last_pid");
    let mut reused = None;
    // Other processes on the host may take the pid between the write and the fork: retry.
    for _ in 0..50 {
        let first = cg
            .command("/bin/echo")
            .arg("first")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = first.id();
        let out = first.wait_with_output().expect("wait");
        assert!(out.status.success());
        std::fs::write(ns_last_pid, (pid - 1).to_string()).expect("write ns_last_pid");
        let second = cg
            .command("/bin/echo")
            .arg("second")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid2 = second.id();
        assert!(second.wait_with_output().expect("wait").status.success());
        if pid2 == pid {
            reused = Some(pid);
            break;
        }
    }
    let pid = reused.expect("pid never reused in 50 tries");
    let events = attributed_until(&mut sensor, &mut p, &[cg.id], Duration::from_secs(20), |ev| {
        let n = |w: &str| {
            ev.iter().any(|a| {
                a.event.pid == pid
                    && matches!(&a.event.detail, Detail::Exec { argv, .. } if argv.get(1).is_some_and(|x| x == w))
            })
        };
        n("first") && n("second")
    })
    .await;
    let pick = |w: &str| {
        events
            .iter()
            .rev()
            .find(|a| {
                a.event.pid == pid
                    && matches!(&a.event.detail, Detail::Exec { argv, .. } if argv.get(1).is_some_and(|x| x == w))
            })
            .expect("exec")
    };
    let (a, b) = (pick("first"), pick("second"));
    assert_eq!(a.event.pid, b.event.pid);
    assert!(a.exec_id.is_some() && b.exec_id.is_some());
    assert_ne!(a.exec_id, b.exec_id, "a reused pid must get a new exec id");
    assert!(a.agent.is_some() && b.agent.is_some());
}
