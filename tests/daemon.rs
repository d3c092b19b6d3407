//! The real daemon on a temporary config, state dir and socket, queried through the real
//! CLI: attribution, follow, restart, SIGHUP, permissions, single instance.
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup, agentid_bin,
    daemon::{Daemon, has_exec_of, registration},
};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn daemon_attributes_events_and_serves_the_cli() {
    let dir = Daemon::dir("main");
    let (a, b) = (TestCgroup::new("dm-a"), TestCgroup::new("dm-b"));
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };

    // A long-lived alpha process (for `ps`) and a beta connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut waiting = a
        .command(WORKLOAD)
        .args(["wait-connect", &addr])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        b.command(WORKLOAD)
            .args(["connect", &addr, "1"])
            .status()
            .expect("spawn")
            .success()
    );

    let alpha = "spiffe://test.example/agent/alpha";
    let beta = "spiffe://test.example/agent/beta";
    let ev = d.cli_until(&["events", "--agent", alpha], |v| has_exec_of(v, WORKLOAD));
    let exec = ev
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["kind"] == "exec")
        .expect("exec");
    assert_eq!(exec["agent"]["name"], "alpha");
    assert_eq!(exec["agent"]["owner"], "alpha@example.org");
    assert_eq!(exec["pid"], waiting.id());

    let ps = d.cli(&["ps", "--agent", alpha]);
    let procs = ps.as_array().expect("array");
    assert!(
        procs
            .iter()
            .any(|p| p["pid"] == waiting.id() && p["agent"]["id"] == alpha),
        "{ps:#}"
    );
    assert!(procs.iter().all(|p| p["agent"]["id"] == alpha));

    let conns = d.cli_until(&["connections", "--agent", beta], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let c = &conns[0];
    assert_eq!(
        c["dst_port"].to_string(),
        addr.rsplit(':').next().expect("port")
    );
    assert_eq!(c["agent"]["name"], "beta");

    let agents = d.cli(&["agents"]);
    let list = agents["agents"].as_array().expect("agents");
    let alpha_row = list
        .iter()
        .find(|x| x["id"] == alpha)
        .expect("alpha listed");
    assert_eq!(alpha_row["live_processes"], 1);
    assert_eq!(alpha_row["live_sessions"], 1);

    // Kernel counters are sampled once a second.
    let status = d.cli_until(&["status"], |v| v["events"]["exec"].as_u64() >= Some(2));
    assert_eq!(status["probes"].as_array().map(Vec::len), Some(18));
    assert_eq!(status["drops"]["exec"], 0);
    assert_eq!(status["registry"]["agents"], 2);

    // Bad requests get a 4xx with a message, not a crash.
    let out = Command::new(agentid_bin())
        .arg("--socket")
        .arg(dir.join("agentid.sock"))
        .args(["agents", "show", "spiffe://test.example/agent/nobody"])
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404: no registered agent"),
        "{out:?}"
    );

    // Not root and not in the group: a clear permission error.
    let out = Command::new(agentid_bin())
        .arg("--socket")
        .arg(dir.join("agentid.sock"))
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("cli as nobody");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(err.lines().count(), 1);

    // A second daemon on the same state dir refuses, naming the first.
    let out = Command::new(agentid_bin())
        .args(["daemon", "--config"])
        .arg(dir.join("agentid.toml"))
        .output()
        .expect("second daemon");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "another agentid daemon is running (pid {})",
            d.child.id()
        )),
        "{err}"
    );

    writeln!(waiting.stdin.take().expect("stdin")).expect("release");
    assert!(waiting.wait().expect("wait").success());
    assert!(d.stop().success(), "SIGTERM → exit 0");
    assert!(!dir.join("agentid.sock").exists(), "socket removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn follow_restart_and_sighup() {
    let dir = Daemon::dir("follow");
    let (a, c) = (TestCgroup::new("df-a"), TestCgroup::new("df-c"));
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let alpha = "spiffe://test.example/agent/alpha";

    // --follow streams an event made after it started.
    let mut follow = Command::new(agentid_bin())
        .arg("--socket")
        .arg(dir.join("agentid.sock"))
        .args(["--json", "events", "-f", "--agent", alpha, "--kind", "exec"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("follow");
    // Lines arrive on a thread, so a stream that stays silent fails the test at its
    // deadline instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The follower is connected once the daemon has accepted it: an exec made before
    // that may be neither history nor live, so one more is made until one shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while !seen {
        assert!(Instant::now() < deadline, "follow never delivered the exec");
        assert!(
            a.command("/bin/echo")
                .arg("followed")
                .stdout(Stdio::null())
                .status()
                .expect("echo")
                .success()
        );
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            let v: Value = serde_json::from_str(&line.expect("line")).expect("JSON line");
            assert_eq!(v["agent"]["id"], alpha);
            if v["argv"] == serde_json::json!(["/bin/echo", "followed"]) {
                seen = true;
                break;
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // SIGHUP picks up a new registration.
    std::fs::write(dir.join("agents/c.toml"), registration("gamma", &c)).expect("reg");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(d.child.id()).expect("pid"), libc::SIGHUP) };
    d.cli_until(&["agents"], |v| {
        v["agents"].as_array().is_some_and(|a| a.len() == 2)
    });
    assert!(c.command("/bin/true").status().expect("true").success());
    d.cli_until(
        &["events", "--agent", "spiffe://test.example/agent/gamma"],
        |v| has_exec_of(v, "/bin/true"),
    );

    // Restart keeps history.
    assert!(d.stop().success());
    let Some(d) = Daemon::start(&dir) else { return };
    let ev = d.cli(&["events", "--agent", alpha, "--kind", "exec"]);
    assert!(
        ev.as_array()
            .is_some_and(|a| a.iter().any(|e| e["argv"][1] == "followed")),
        "{ev:#}"
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A canary secret planted in the environment and the arguments of two agents' processes
/// goes through the whole pipeline (detection, store, alerts file, a SIEM file sink, the
/// audit log, the API, the daemon's log) and appears in none of them.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn canary_secrets_never_leave_and_the_audit_log_verifies() {
    let dir = Daemon::dir("canary");
    let (a, b) = (TestCgroup::new("cn-a"), TestCgroup::new("cn-b"));
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("reg");
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    let _ = write!(
        config,
        "[[sinks]]\ntype = \"file\"\npath = \"{}/sink.jsonl\"\nformat = \"ocsf\"\n",
        dir.display()
    );
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    let Some(d) = Daemon::start(&dir) else { return };

    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ 0x5eed_cafe
    );
    let env_secret = format!("sk-proj-CANARYenv{nonce}Q7x9Lm2Np4Rt6Vw8Yz");
    let arg_secret = format!("CANARYarg{nonce}pw");
    let flag_secret = format!("ghp_CANARYflag{nonce}aB3dE5gH7jK9mN1pQ3sT");
    for cg in [&a, &b] {
        let st = cg
            .command("/bin/true")
            .env_clear()
            .env("OPENAI_API_KEY", &env_secret)
            .arg(format!("--password={arg_secret}"))
            .args(["--token", &flag_secret])
            .status()
            .expect("spawn");
        assert!(st.success());
    }
    let alerts = d.cli_until(&["alerts", "--rule", "credential-reuse"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let creds = d.cli_until(&["credentials"], |v| {
        v.as_array().is_some_and(|a| a.len() >= 6)
    });
    let mut outputs = vec![alerts.to_string(), creds.to_string()];
    for args in [
        &["events"][..],
        &["ps"],
        &["status"],
        &["agents"],
        &["connections"],
    ] {
        outputs.push(d.cli(args).to_string());
    }
    // The sink delivered the alert (the file sink writes it out).
    let sink = dir.join("sink.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&sink)
        .unwrap_or_default()
        .contains("credential-reuse")
    {
        assert!(
            Instant::now() < deadline,
            "the file sink never got the alert"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = d.log.clone();
    assert!(d.stop().success());

    // Every byte agentid wrote or answered.
    let mut haystack: Vec<(String, Vec<u8>)> = outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| (format!("api#{i}"), o.into_bytes()))
        .collect();
    haystack.push((
        "daemon log".into(),
        log.lock().expect("log").clone().into_bytes(),
    ));
    let mut stack = vec![dir.clone()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|e| e != "toml") {
                haystack.push((
                    path.display().to_string(),
                    std::fs::read(&path).expect("read"),
                ));
            }
        }
    }
    assert!(
        haystack.iter().any(|(n, _)| n.ends_with("agentid.db")),
        "the store was searched"
    );
    assert!(
        haystack.iter().any(|(n, _)| n.ends_with("audit.log")),
        "the audit log was searched"
    );
    for secret in [&env_secret, &arg_secret, &flag_secret] {
        for (name, bytes) in &haystack {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "a canary secret leaked into {name}");
        }
    }
    // And the evidence is there: the alert names both agents by fingerprint only.
    let alert = &alerts[0];
    assert_eq!(alert["agents"].as_array().map(Vec::len), Some(2));
    assert!(
        alert["evidence"]["credential"]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("openai:"))
    );

    // The audit log the daemon wrote verifies offline against its public key.
    let pubkey = Command::new(agentid_bin())
        .args(["audit", "pubkey", "--key"])
        .arg(dir.join("state/audit.key"))
        .output()
        .expect("pubkey");
    assert!(pubkey.status.success());
    let pubkey = String::from_utf8_lossy(&pubkey.stdout).trim().to_owned();
    let verify = Command::new(agentid_bin())
        .args([
            "audit",
            "verify",
            "--expect-closed",
            "--pubkey",
            &pubkey,
            "--dir",
        ])
        .arg(dir.join("state/audit"))
        .output()
        .expect("verify");
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(out.contains("ok "), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

use std::os::unix::process::CommandExt as _;

/// `agentid LISTING | head`: a reader that goes away ends every listing command quietly,
/// with status 0 and nothing on stderr (as `ps` and `git log` do), whether the pipe is gone
/// before the first row or closes in the middle of a `--follow`.
#[test]
fn a_closed_stdout_ends_listings_quietly() {
    let dir = Daemon::dir("epipe");
    let a = TestCgroup::new("de-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let alpha = "spiffe://test.example/agent/alpha";
    a.echo("piped");
    d.cli_until(&["events", "--agent", alpha], |v| {
        has_exec_of(v, "/bin/echo")
    });

    // The reader is gone before the command starts: its first write fails with EPIPE.
    // (`alerts` and `connections` print `(none)` on stderr when empty, so only as JSON.)
    let listings: &[&[&str]] = &[
        &["events"],
        &["--json", "events"],
        &["events", "--agent", alpha, "--kind", "exec"],
        &["ps"],
        &["ps", "--tree"],
        &["--json", "ps"],
        &["agents"],
        &["--json", "agents"],
        &["agents", "show", alpha],
        &["status"],
        &["--json", "status"],
        &["--json", "alerts"],
        &["--json", "connections"],
        &["credentials"],
        &["--json", "credentials"],
        &["completions", "bash"],
        &["rules"],
        &["--json", "rules"],
    ];
    for args in listings {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(agentid_bin())
            .arg("--socket")
            .arg(dir.join("agentid.sock"))
            .args(*args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("cli");
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).as_ref()
            ),
            (Some(0), ""),
            "agentid {args:?} into a closed pipe"
        );
    }

    // `events --follow | head -1`: the reader takes one line and leaves; the next event
    // the follower writes ends it.
    let mut follow = Command::new(agentid_bin())
        .arg("--socket")
        .arg(dir.join("agentid.sock"))
        .args(["events", "-f", "--agent", alpha, "--kind", "exec"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        // Dropping the reader here closes the pipe, as `head -1` exits.
        let _ = first_tx.send(line);
    });
    // Events until the follower has printed one line, then until it notices the closed
    // pipe and exits (each echo is an event it must write).
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "the follower never ended on its closed stdout"
        );
        if let Some(status) = follow.try_wait().expect("try_wait") {
            break status;
        }
        a.echo("more");
        std::thread::sleep(Duration::from_millis(50));
    };
    let first = first_rx.recv().expect("the reader's line");
    assert!(first.contains("exec"), "first followed line: {first:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!((status.code(), err.as_str()), (Some(0), ""));
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// First start on a fresh machine: the agents directory (and its parent) does not exist.
/// The daemon creates it, 0755 whatever its own umask, and `status` shows an empty
/// registry with no errors, not `No such file or directory`.
#[test]
fn a_missing_agents_dir_is_an_empty_registry() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Daemon::dir("noagents");
    std::fs::remove_dir(dir.join("agents")).expect("rmdir agents");
    let agents_dir = dir.join("etc-agentid/agents.d");
    let config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    let config = config.replace(
        &format!("agents_dir = \"{}/agents\"", dir.display()),
        &format!("agents_dir = \"{}\"", agents_dir.display()),
    );
    assert!(config.contains("etc-agentid/agents.d"), "{config}");
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    let Some(d) = Daemon::start(&dir) else { return };

    let status = d.cli(&["status"]);
    assert_eq!(status["registry"]["agents"], 0, "{status:#}");
    assert_eq!(
        status["registry"]["errors"],
        serde_json::json!([]),
        "{status:#}"
    );
    for p in [agents_dir.parent().expect("parent"), agents_dir.as_path()] {
        let mode = std::fs::metadata(p).expect("created").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{}", p.display());
    }
    // The table says so too, and the daemon warned about no registry problem.
    let out = Command::new(agentid_bin())
        .arg("--socket")
        .arg(dir.join("agentid.sock"))
        .arg("status")
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("registry:   0 agents from "), "{table}");
    assert!(table.contains("(0 errors)"), "{table}");
    let log = d.log_text();
    assert!(
        !log.contains("No such file") && !log.contains("agent registry"),
        "{log}"
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process whose image two agents claim is never given one of them at random: it is
/// `ambiguous-identity`, and `status` lists it with both candidates.
#[test]
fn an_ambiguous_process_shows_in_status() {
    let dir = Daemon::dir("ambiguous");
    let image = dir.join("contested-sleep");
    std::fs::copy("/bin/sleep", &image).expect("copy");
    let claim = |name: &str| {
        format!(
            "[[agent]]\nid = \"spiffe://test.example/agent/{name}\"\n[[agent.selectors]]\nexe = \"{}\"\n",
            image.display()
        )
    };
    std::fs::write(
        dir.join("agents/claims.toml"),
        claim("claim-one") + &claim("claim-two"),
    )
    .expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let mut child = Command::new(&image).arg("30").spawn().expect("spawn");
    let pid = child.id();
    let status = d.cli_until(&["status"], |v| {
        v["registry"]["ambiguous"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["pid"] == pid))
    });
    let issue = status["registry"]["ambiguous"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["pid"] == pid))
        .expect("listed")
        .clone();
    assert_eq!(issue["agent"], "unregistered");
    assert_eq!(
        issue["detail"],
        serde_json::json!([
            "spiffe://test.example/agent/claim-one",
            "spiffe://test.example/agent/claim-two"
        ])
    );
    let alerts = d.cli_until(&["alerts", "--rule", "ambiguous-identity"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts:#}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ring buffer is made at the configured size (not the object's), and `status` says
/// where the memory goes: RSS, the ring and how much of it the reader ever let fill, the
/// process table per live process. A size the kernel would refuse is refused at start.
#[test]
fn the_ring_buffer_has_the_configured_size_and_status_reports_memory() {
    let dir = Daemon::dir("ringsize");
    let config = dir.join("agentid.toml");
    let base = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{base}ring_buffer_kib = 3000\n")).expect("config");
    let out = Command::new(agentid_bin())
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .expect("daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 3000 KiB ring was accepted: {err}");
    assert!(
        err.contains("ring_buffer_kib") && err.contains("power of two"),
        "{err}"
    );

    std::fs::write(&config, format!("{base}ring_buffer_kib = 1024\n")).expect("config");
    let Some(d) = Daemon::start(&dir) else { return };
    // The ring's size is published with the counters, once a second.
    let status = d.cli_until(&["status"], |v| {
        v["memory"]["ring_bytes"].as_u64() != Some(0)
    });
    let m = &status["memory"];
    assert_eq!(m["ring_bytes"], 1 << 20, "{m:#}");
    assert!(
        m["ring_peak_bytes"].as_u64().is_some_and(|p| p <= 1 << 20),
        "{m:#}"
    );
    assert!(
        m["rss_bytes"].as_u64().is_some_and(|r| r > 1 << 20),
        "{m:#}"
    );
    assert!(status["processes"]["live"].as_u64().is_some_and(|n| n > 0));
    // A process costs its struct, strings and map slots: well above nothing, well below
    // the 4 KiB a page per process would be.
    let per = m["table_bytes_per_live"].as_u64().expect("per live");
    assert!((100..4096).contains(&per), "{m:#}");
    let out = Command::new(agentid_bin())
        .arg("--socket")
        .arg(dir.join("agentid.sock"))
        .arg("status")
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("memory:     RSS ") && table.contains(" B per live process)"),
        "{table}"
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}
