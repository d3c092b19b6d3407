//! The API contract against a real daemon: every route's answer deserialises into its
//! type in `agentid::api::types` (and, where the type is the whole answer, serialises back
//! to the same JSON), with real agents, processes, connections, alerts and credentials
//! behind it. And activity reaches exactly the SIEM sinks that ask for it.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fmt::Write as _,
    net::TcpListener,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use agentid::{
    api::types::{
        AgentDetail, Agents, AlertRecord, CredentialRow, EventRecord, ProcessView, Revoked,
        SessionRow, Status,
    },
    cli::client::Client,
    event::EventKind,
};
use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
    raise_credential_reuse,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");
const ALPHA: &str = "spiffe://test.example/agent/alpha";
const BETA: &str = "spiffe://test.example/agent/beta";

struct Api {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Api {
    fn new(dir: &Path) -> Self {
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: Client::new(&dir.join("agentid.sock")),
        }
    }

    fn raw(&self, path: &str) -> Value {
        self.rt
            .block_on(self.client.get(path))
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    /// The answer, typed; panics naming the route and the field when it does not fit.
    fn get<T: DeserializeOwned>(&self, path: &str) -> (T, Value) {
        let raw = self.raw(path);
        let typed = serde_json::from_value(raw.clone())
            .unwrap_or_else(|e| panic!("GET {path} does not fit its type: {e}\n{raw:#}"));
        (typed, raw)
    }

    /// Re-queries until `pred` holds on the typed answer (the store commits in batches).
    fn until<T: DeserializeOwned>(&self, path: &str, pred: impl Fn(&T) -> bool) -> (T, Value) {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let (t, raw) = self.get::<T>(path);
            if pred(&t) {
                return (t, raw);
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never satisfied the check; last: {raw:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

/// Serialising the typed answer gives back the daemon's JSON: the type holds every field.
fn same_json<T: serde::Serialize>(typed: &T, raw: &Value, route: &str) {
    assert_eq!(
        &serde_json::to_value(typed).expect("serialise"),
        raw,
        "{route}: the type does not carry the whole answer"
    );
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one route after another against one daemon, read top to bottom"
)]
fn every_route_answers_in_its_type() {
    let dir = Daemon::dir("api-types");
    let (a, b) = (TestCgroup::new("at-a"), TestCgroup::new("at-b"));
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let api = Api::new(&dir);

    // A long-lived alpha process, a beta connection, and one credential used by both.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr");
    let mut waiting = a
        .command(WORKLOAD)
        .args(["wait-connect", &addr.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        b.command(WORKLOAD)
            .args(["connect", &addr.to_string(), "1"])
            .status()
            .expect("spawn")
            .success()
    );
    raise_credential_reuse(&a, &b, "api");

    // /v1/events: every stored event fits EventRecord (which refuses unknown fields).
    let (events, _) =
        api.until::<Vec<EventRecord>>(&format!("/v1/events?agent={}", enc(ALPHA)), |ev| {
            ev.iter().any(|e| {
                e.kind == EventKind::Exec
                    && e.pid == waiting.id()
                    && e.filename.as_deref() == Some(WORKLOAD)
            })
        });
    let exec = events
        .iter()
        .find(|e| e.kind == EventKind::Exec && e.pid == waiting.id())
        .expect("exec");
    let agent = exec.agent.as_ref().expect("attributed");
    assert_eq!(
        (agent.id.as_str(), agent.name.as_deref()),
        (ALPHA, Some("alpha"))
    );
    assert_eq!(
        exec.argv.as_deref(),
        Some(&[WORKLOAD.to_owned(), "wait-connect".into(), addr.to_string()][..])
    );
    assert!(
        events
            .iter()
            .all(|e| e.agent.as_ref().is_some_and(|g| g.id == ALPHA))
    );
    // Unfiltered: every kind the host produces fits too (exit, fork, unregistered ones).
    // Awaited: the store commits in batches, so the exits that followed alpha's exec may
    // land a moment after it.
    let (all, _) = api.until::<Vec<EventRecord>>("/v1/events?limit=2000", |all| {
        [EventKind::Exec, EventKind::Fork, EventKind::Exit]
            .iter()
            .all(|kind| all.iter().any(|e| e.kind == *kind))
    });
    for kind in [EventKind::Exec, EventKind::Fork, EventKind::Exit] {
        assert!(all.iter().any(|e| e.kind == kind), "no {kind:?} event");
    }

    // /v1/connections: beta's connect, typed.
    let (conns, _) = api
        .until::<Vec<EventRecord>>(&format!("/v1/connections?agent={}", enc(BETA)), |c| {
            !c.is_empty()
        });
    assert_eq!(conns[0].kind, EventKind::Connect);
    assert_eq!(conns[0].dst_ip, Some(addr.ip()));
    assert_eq!(conns[0].dst_port, Some(addr.port()));
    assert_eq!(
        conns[0].agent.as_ref().and_then(|g| g.name.as_deref()),
        Some("beta")
    );

    // /v1/processes: the waiting process with its identity; the type is the whole answer.
    let (procs, raw) = api
        .until::<Vec<ProcessView>>(&format!("/v1/processes?agent={}", enc(ALPHA)), |p| {
            p.iter().any(|p| p.process.pid == waiting.id())
        });
    same_json(&procs, &raw, "/v1/processes");
    let p = procs
        .iter()
        .find(|p| p.process.pid == waiting.id())
        .expect("waiting process");
    assert_eq!(p.process.exe, WORKLOAD);
    assert_eq!(p.agent.as_ref().map(|g| g.id.as_str()), Some(ALPHA));
    assert!(
        p.session
            .as_deref()
            .is_some_and(|s| s.starts_with("alpha/")),
        "{p:?}"
    );
    let (everyone, raw) = api.get::<Vec<ProcessView>>("/v1/processes");
    same_json(&everyone, &raw, "/v1/processes (all)");
    assert!(
        everyone.iter().any(|p| p.agent.is_none()),
        "no unregistered process"
    );
    assert!(
        everyone
            .windows(2)
            .all(|w| w[0].process.pid < w[1].process.pid)
    );

    // /v1/agents and /v1/agent.
    let (agents, raw) = api.get::<Agents>("/v1/agents");
    same_json(&agents, &raw, "/v1/agents");
    assert_eq!(agents.agents.len(), 2);
    let alpha = agents.agents.iter().find(|g| g.id == ALPHA).expect("alpha");
    assert_eq!(alpha.owner.as_deref(), Some("alpha@example.org"));
    assert!(
        alpha.live_processes >= 1 && alpha.live_sessions >= 1,
        "{alpha:?}"
    );
    assert!(agents.unregistered_processes > 0);
    let (detail, raw) = api.until::<AgentDetail>("/v1/agent?id=alpha", |d| !d.sessions.is_empty());
    same_json(&detail, &raw, "/v1/agent");
    assert_eq!(detail.agent.id, ALPHA);
    assert!(
        detail
            .processes
            .iter()
            .any(|p| p.process.pid == waiting.id())
    );
    assert!(detail.sessions.iter().all(|s| s.agent == ALPHA));

    // /v1/sessions.
    let (sessions, raw) = api.get::<Vec<SessionRow>>(&format!("/v1/sessions?agent={}", enc(BETA)));
    same_json(&sessions, &raw, "/v1/sessions");
    assert!(!sessions.is_empty() && sessions.iter().all(|s| s.agent == BETA && s.events > 0));

    // /v1/alerts and /v1/credentials: the reuse of one key by both agents.
    let (alerts, _) =
        api.until::<Vec<AlertRecord>>("/v1/alerts?rule=credential-reuse", |a| !a.is_empty());
    let reuse = &alerts[0];
    assert_eq!(reuse.rule, "credential-reuse");
    assert_eq!(reuse.severity, "high");
    let mut ids: Vec<&str> = reuse.agents.iter().map(|g| g.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [ALPHA, BETA]);
    // The daemon sees the whole host: other tests' keys show up as unregistered ones.
    let ours = |c: &&CredentialRow| c.kind == "openai" && (c.agent == ALPHA || c.agent == BETA);
    let (creds, raw) =
        api.until::<Vec<CredentialRow>>("/v1/credentials", |c| c.iter().filter(ours).count() >= 2);
    same_json(&creds, &raw, "/v1/credentials");
    let openai: Vec<&CredentialRow> = creds.iter().filter(ours).collect();
    assert_eq!(openai.len(), 2, "{openai:?}");
    assert_eq!(openai[0].fingerprint, openai[1].fingerprint);
    assert!(
        openai
            .iter()
            .all(|c| c.count >= 1 && c.sources == ["env:OPENAI_API_KEY"])
    );

    // /v1/status.
    let (status, raw) = api.until::<Status>("/v1/status", |s| s.events["exec"] >= 3);
    same_json(&status, &raw, "/v1/status");
    // 6 syscall tracepoints (open, openat, socket), 3 raw tracepoints, 4 cgroup socket
    // hooks, 2 cgroup packet hooks (DNS), 2 TLS uprobes.
    assert_eq!(status.probes.len(), 18, "{:?}", status.probes);
    assert!(status.probes.iter().any(|p| p == "sys_exit_socket"));
    assert!(status.probes.iter().any(|p| p == "tls_write"));
    // The system's libssl got the TLS request probes.
    assert!(
        status
            .tls
            .iter()
            .any(|t| t.error.is_none() && t.attached.iter().any(|f| f == "SSL_write")),
        "{:?}",
        status.tls
    );
    assert_eq!(status.registry.agents, 2);
    assert!(status.registry.errors.is_empty());
    assert_eq!(status.pid, d.child.id());
    assert!(status.processes.live > 0);
    assert!(status.audit.is_some());
    assert!(status.alerts >= 1);

    // POST /v1/credentials/revoke, and its error in the error type.
    let short = &openai[0].fingerprint;
    let revoked: Revoked = serde_json::from_value(
        api.rt
            .block_on(api.client.post(&format!(
                "/v1/credentials/revoke?fingerprint={}",
                enc(short)
            )))
            .expect("revoke"),
    )
    .expect("Revoked");
    assert_eq!(&revoked.revoked, short);
    let err = api
        .rt
        .block_on(
            api.client
                .post("/v1/credentials/revoke?fingerprint=openai%3A12"),
        )
        .expect_err("a short prefix is refused");
    assert!(
        err.to_string().starts_with("daemon answered 400: "),
        "{err}"
    );

    drop(listener);
    let _ = waiting.kill();
    let _ = waiting.wait();
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// OCSF records in a file sink with `class_uid` `class` about process `pid` (as the
/// process itself or as the actor).
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("sink line is JSON"))
        .collect()
}

fn about(records: &[Value], class: u64, pid: u32) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["class_uid"] == class)
        .filter(|r| r["process"]["pid"] == pid || r["actor"]["process"]["pid"] == pid)
        .collect()
}

/// `include_activity = true` carries the agent's exec and exit (OCSF 1007) and connect
/// (OCSF 4001) to that sink, once each; a sink without it gets none, only alerts (and the
/// audit checkpoints every sink anchors).
#[test]
fn activity_reaches_exactly_the_sinks_that_ask_for_it() {
    let dir = Daemon::dir("api-activity");
    let (a, b) = (TestCgroup::new("aa-a"), TestCgroup::new("aa-b"));
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    std::fs::write(dir.join("agents/b.toml"), registration("beta", &b)).expect("reg");
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    for (name, activity) in [("with", true), ("without", false)] {
        let _ = write!(
            config,
            "[[sinks]]\nname = \"{name}\"\ntype = \"file\"\npath = \"{}/{name}.jsonl\"\n\
             format = \"ocsf\"\ninclude_activity = {activity}\n",
            dir.display()
        );
    }
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    let Some(d) = Daemon::start(&dir) else { return };

    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    let child = a
        .command(WORKLOAD)
        .args(["connect", &addr, "1"])
        .spawn()
        .expect("spawn");
    let pid = child.id();
    assert!(child.wait_with_output().expect("wait").status.success());

    // Exec, connect and exit reach the sink in that order: once the exit is there, all are.
    let with = dir.join("with.jsonl");
    let deadline = Instant::now() + Duration::from_mins(1);
    while !about(&records(&with), 1007, pid)
        .iter()
        .any(|r| r["activity_name"] == "Terminate")
    {
        assert!(Instant::now() < deadline, "the exit never reached the sink");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then an alert both sinks take: queued behind the activity in each sink, so when it
    // is in `without`, any activity wrongly sent there is too.
    raise_credential_reuse(&a, &b, "act");
    let without = dir.join("without.jsonl");
    for sink in [&with, &without] {
        while !records(sink).iter().any(|r| r["class_uid"] == 2004) {
            assert!(Instant::now() < deadline, "no alert in {}", sink.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let with = records(&with);
    let launch: Vec<_> = about(&with, 1007, pid)
        .into_iter()
        .filter(|r| r["activity_name"] == "Launch")
        .collect();
    let exit: Vec<_> = about(&with, 1007, pid)
        .into_iter()
        .filter(|r| r["activity_name"] == "Terminate")
        .collect();
    let connect = about(&with, 4001, pid);
    assert_eq!(
        (launch.len(), exit.len(), connect.len()),
        (1, 1, 1),
        "{with:#?}"
    );
    assert_eq!(launch[0]["process"]["file"]["path"], WORKLOAD);
    assert_eq!(exit[0]["exit_code"], 0);
    assert_eq!(connect[0]["activity_name"], "Open");
    assert_eq!(
        connect[0]["dst_endpoint"]["port"].to_string(),
        addr.rsplit(':').next().expect("port")
    );
    let without = records(&without);
    let activity = without
        .iter()
        .filter(|r| r["class_uid"] == 1007 || r["class_uid"] == 4001)
        .count();
    assert_eq!(activity, 0, "activity in a sink without include_activity");
    // Alerts, and the audit checkpoints every sink anchors (OCSF 1008), nothing else.
    assert!(
        without
            .iter()
            .all(|r| r["class_uid"] == 2004 || r["class_uid"] == 1008),
        "{without:#?}"
    );

    drop(listener);
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An agent that puts terminal escapes, JSON punctuation and line breaks in its command
/// line: the API still answers in its types with the exact argument, and the CLI's tables
/// show it on one line with the control characters as `?` (it cannot drive the terminal or
/// forge a row).
#[test]
fn hostile_command_lines_fit_the_types_and_never_reach_the_terminal_raw() {
    const HOSTILE: &str = "\u{1b}[2J\"}{]\n  99999 forged-row\r\t\u{7f}end";
    let dir = Daemon::dir("api-hostile");
    let a = TestCgroup::new("ah-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let api = Api::new(&dir);
    let mut child = a
        .command("/bin/sh")
        .args(["-c", "read x", HOSTILE])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let path = format!("/v1/processes?agent={}", enc(ALPHA));
    let (procs, _) = api.until::<Vec<ProcessView>>(&path, |p| {
        p.iter()
            .any(|p| p.process.pid == pid && p.process.argv.len() == 4)
    });
    let p = procs.iter().find(|p| p.process.pid == pid).expect("sh");
    assert_eq!(p.process.argv, ["/bin/sh", "-c", "read x", HOSTILE]);
    // The store commits a moment after the table changes.
    let (events, _) = api
        .until::<Vec<EventRecord>>(&format!("/v1/events?agent={}&kind=exec", enc(ALPHA)), |e| {
            e.iter().any(|e| e.pid == pid)
        });
    let exec = events.iter().find(|e| e.pid == pid).expect("exec");
    assert_eq!(
        exec.argv
            .as_deref()
            .and_then(|a| a.get(3))
            .map(String::as_str),
        Some(HOSTILE)
    );
    for args in [&["ps", "--agent", ALPHA][..], &["events", "--agent", ALPHA]] {
        let out = std::process::Command::new(agentid_tests::agentid_bin())
            .arg("--socket")
            .arg(dir.join("agentid.sock"))
            .args(args)
            .output()
            .expect("cli");
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        assert!(
            !text.contains(['\u{1b}', '\r', '\t', '\u{7f}']),
            "{args:?} printed a control character: {text:?}"
        );
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("read x")).collect();
        assert!(!rows.is_empty(), "{args:?}: {text}");
        for row in rows {
            assert!(
                row.ends_with("?[2J\"}{]?  99999 forged-row???end"),
                "{args:?}: {row:?}"
            );
        }
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("99999")),
            "{text}"
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}
