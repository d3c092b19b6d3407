//! Every detection rule on the real kernel: real processes in real cgroups, each rule shown
//! firing and not firing on its benign twin.
#![expect(
    clippy::expect_used,
    clippy::many_single_char_names,
    reason = "a failed step is a failed test; one-letter names for the agents' cgroups"
)]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{fmt::Write as _, net::TcpListener, sync::Arc, time::Duration};

use agentid::{
    attribution::AttributedEvent,
    cgroup,
    credentials::FingerprintKey,
    detect::{Alert, Detector},
    event::EventKind,
    identity::{GlobList, Registry},
    pipeline::Pipeline,
    sensor::Sensor,
};
use agentid_tests::{TestCgroup, sensor_or_skip};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");
const TIMEOUT: Duration = Duration::from_secs(30);

/// One agent registration: `extra` is appended inside the `[[agent]]` table (policy etc.).
fn reg(name: &str, cg: &TestCgroup, selector_extra: &str, extra: &str) -> String {
    format!(
        "[[agent]]\nid = \"spiffe://test.example/agent/{name}\"\nname = \"{name}\"\n\
         [[agent.selectors]]\ncgroup = \"{}\"\n{selector_extra}\n{extra}\n",
        cg.rel
    )
}

struct Rig {
    sensor: Sensor,
    pipeline: Pipeline,
    detector: Detector,
    registry: Arc<Registry>,
}

impl Rig {
    fn new(test: &str, registrations: &str, watch: Option<&str>) -> Option<Self> {
        let sensor = sensor_or_skip(test)?;
        let registry = Registry::parse_str(registrations, "test.toml");
        assert!(registry.errors().is_empty(), "{:?}", registry.errors());
        let registry = Arc::new(registry);
        let key = FingerprintKey::ephemeral().expect("key");
        let mut pipeline = Pipeline::new(
            Arc::clone(&registry),
            cgroup::v2_root().expect("cgroup v2"),
            key,
        );
        pipeline.seed();
        let watch = watch.map(|w| GlobList::new(&[w]).expect("glob"));
        let mut detector = Detector::new(watch);
        detector.set_registry(&registry);
        Some(Self {
            sensor,
            pipeline,
            detector,
            registry,
        })
    }

    /// Reports file opens in these cgroups (the daemon does this for agents' cgroups).
    fn watch_opens(&mut self, cgroups: &[&TestCgroup]) {
        for cg in cgroups {
            self.sensor.watch_opens(cg.id).expect("watch opens");
        }
    }

    /// Runs events through scan → attribution → rules until `exits` processes of these
    /// cgroups have exited (the workloads are done and every event of theirs is in).
    async fn run_until_exits(
        &mut self,
        cgroups: &[u64],
        exits: usize,
    ) -> (Vec<AttributedEvent>, Vec<Alert>) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let (mut events, mut alerts) = (Vec::new(), Vec::new());
        let mut batch = Vec::new();
        while events
            .iter()
            .filter(|e: &&AttributedEvent| e.event.kind == EventKind::Exit)
            .count()
            < exits
        {
            tokio::time::timeout_at(deadline, self.sensor.next_events(&mut batch))
                .await
                .expect("timed out waiting for the workloads")
                .expect("ring buffer");
            for ev in batch.drain(..) {
                let (a, findings) = self.pipeline.process(ev);
                let out = self.detector.observe(&a, &findings, &self.registry);
                if cgroups.contains(&a.event.cgroup_id) {
                    alerts.extend(out.alerts);
                    events.push(a);
                }
            }
        }
        (events, alerts)
    }
}

fn of_rule<'a>(alerts: &'a [Alert], rule: &str) -> Vec<&'a Alert> {
    alerts.iter().filter(|a| a.rule == rule).collect()
}

/// The last state of each incident (alerts update in place by uid).
fn incidents<'a>(alerts: &'a [Alert], rule: &str) -> Vec<&'a Alert> {
    let mut last: std::collections::BTreeMap<&str, &Alert> = std::collections::BTreeMap::new();
    for a in of_rule(alerts, rule) {
        last.insert(&a.uid, a);
    }
    last.into_values().collect()
}

/// A fresh, realistic-looking fake `OpenAI` key (never a real secret).
fn fake_openai_key() -> String {
    let mut k = String::from("sk-proj-");
    let mut x = u64::from(std::process::id())
        ^ 0x9E37_79B9_7F4A_7C15
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .subsec_nanos(),
        );
    for i in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            [usize::try_from(x % 62).expect("idx")];
        k.push(if i == 0 {
            'A'
        } else if i == 1 {
            '7'
        } else {
            char::from(c)
        });
    }
    k
}

/// `/bin/true` in `cg` with only `env` as its environment: short-lived on purpose (the
/// kernel captures the environment at exec; nothing races /proc).
fn run_with_env(cg: &TestCgroup, env: &[(&str, &str)]) {
    let mut cmd = cg.command("/bin/true");
    cmd.env_clear().envs(env.iter().copied());
    assert!(cmd.status().expect("spawn").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_reuse_fires_once_naming_both_and_not_for_distinct_or_exempt_keys() {
    let (a, b, c, d, e, f) = (
        TestCgroup::new("cr-a"),
        TestCgroup::new("cr-b"),
        TestCgroup::new("cr-c"),
        TestCgroup::new("cr-d"),
        TestCgroup::new("cr-e"),
        TestCgroup::new("cr-f"),
    );
    let mut regs = String::new();
    for (n, cg) in [("alpha", &a), ("beta", &b), ("gamma", &c), ("delta", &d)] {
        regs.push_str(&reg(n, cg, "", ""));
    }
    regs.push_str(&reg(
        "epsilon",
        &e,
        "",
        "[agent.credentials]\nshared_with = [\"spiffe://test.example/agent/zeta\"]",
    ));
    regs.push_str(&reg("zeta", &f, "", ""));
    let Some(mut rig) = Rig::new("cred-reuse", &regs, None) else {
        return;
    };
    let shared = fake_openai_key();
    let (other1, other2, exempt) = (fake_openai_key(), fake_openai_key(), fake_openai_key());
    run_with_env(&a, &[("OPENAI_API_KEY", &shared)]);
    run_with_env(&b, &[("OPENAI_API_KEY", &shared)]);
    run_with_env(&c, &[("OPENAI_API_KEY", &other1)]);
    run_with_env(&d, &[("OPENAI_API_KEY", &other2)]);
    run_with_env(&e, &[("OPENAI_API_KEY", &exempt)]);
    run_with_env(&f, &[("OPENAI_API_KEY", &exempt)]);
    let ids: Vec<u64> = [&a, &b, &c, &d, &e, &f].iter().map(|cg| cg.id).collect();
    let (_, alerts) = rig.run_until_exits(&ids, 6).await;
    let reuse = incidents(&alerts, "credential-reuse");
    assert_eq!(reuse.len(), 1, "exactly one incident: {reuse:#?}");
    let alert = reuse[0];
    let mut agents: Vec<&str> = alert.agents.iter().map(|x| x.id.as_str()).collect();
    agents.sort_unstable();
    assert_eq!(
        agents,
        [
            "spiffe://test.example/agent/alpha",
            "spiffe://test.example/agent/beta"
        ]
    );
    let cred = alert
        .evidence
        .credential
        .as_ref()
        .expect("credential evidence");
    assert!(cred.fingerprint.starts_with("openai:"), "{cred:?}");
    assert_eq!(cred.seen_as, ["env:OPENAI_API_KEY"]);
    assert_eq!(alert.tags.owasp, ["ASI03"]);
    assert_eq!(alert.tags.threats, ["T3", "T9"]);
    assert_eq!(alert.evidence.processes.len(), 2);
    assert!(
        alert
            .evidence
            .processes
            .iter()
            .all(|p| p.exe.as_deref() == Some("/bin/true"))
    );
    let text = serde_json::to_string(&alerts).expect("json");
    for secret in [&shared, &other1, &exempt] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret leaked into an alert"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_in_arguments_is_fingerprinted_and_redacted() {
    let (a, b) = (TestCgroup::new("ca-a"), TestCgroup::new("ca-b"));
    let regs = reg("alpha", &a, "", "") + &reg("beta", &b, "", "");
    let Some(mut rig) = Rig::new("cred-args", &regs, None) else {
        return;
    };
    let token = format!("ghp_{}", &fake_openai_key()[8..44]);
    for cg in [&a, &b] {
        let mut cmd = cg.command("/bin/true");
        cmd.env_clear().arg(format!("--token={token}"));
        assert!(cmd.status().expect("spawn").success());
    }
    let (events, alerts) = rig.run_until_exits(&[a.id, b.id], 2).await;
    let reuse = incidents(&alerts, "credential-reuse");
    assert_eq!(reuse.len(), 1);
    assert_eq!(
        reuse[0].evidence.credential.as_ref().expect("cred").kind,
        "github"
    );
    let all = serde_json::to_string(&events).expect("json")
        + &serde_json::to_string(&alerts).expect("json");
    assert!(
        !all.contains(&token),
        "the token never appears in events or alerts"
    );
    assert!(
        all.contains("--token=[REDACTED github:"),
        "argv keeps a redacted marker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_credential_after_max_age_or_revocation() {
    let (a, b) = (TestCgroup::new("st-a"), TestCgroup::new("st-b"));
    let regs = reg(
        "alpha",
        &a,
        "",
        "[agent.policy]\ncredential_max_age = \"1ms\"",
    ) + &reg("beta", &b, "", "");
    let Some(mut rig) = Rig::new("cred-stale", &regs, None) else {
        return;
    };
    let key = fake_openai_key();
    run_with_env(&a, &[("OPENAI_API_KEY", &key)]);
    run_with_env(&a, &[("OPENAI_API_KEY", &key)]);
    // beta's credential is fine until revoked.
    let revoked = fake_openai_key();
    run_with_env(&b, &[("OPENAI_API_KEY", &revoked)]);
    let (_, alerts) = rig.run_until_exits(&[a.id, b.id], 3).await;
    let stale = incidents(&alerts, "credential-stale");
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert_eq!(stale[0].agents[0].id, "spiffe://test.example/agent/alpha");
    assert!(stale[0].description.contains("credential_max_age"));
    assert_eq!(stale[0].reason, Some("max-age"));
    // Revoke beta's credential by the prefix an operator copies from `agentid credentials`:
    // the same value fingerprinted under the detector's key.
    let prefix = {
        let mut ev = agentid::event::Event {
            kind: EventKind::Exec,
            time: std::time::SystemTime::now(),
            ktime_ns: 0,
            proc_start_ns: None,
            pid: 1,
            ppid: None,
            tid: 1,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            cgroup: None,
            comm: String::new(),
            blocked: false,
            detail: agentid::event::Detail::Exec {
                filename: "/bin/true".into(),
                argv: vec![],
                argv_truncated: false,
                argv_missing: false,
                scan_incomplete: None,
                loginuid: None,
                env: agentid::event::SecretEnv::new(
                    format!("OPENAI_API_KEY={revoked}\0").as_bytes(),
                ),
            },
        };
        let obs = rig
            .pipeline
            .redactor_mut()
            .scan(&mut ev, &rig.registry)
            .observations;
        obs[0].fingerprint.to_string()
    };
    rig.detector.revoke(prefix.parse().expect("prefix"));
    run_with_env(&b, &[("OPENAI_API_KEY", &revoked)]);
    let (_, alerts) = rig.run_until_exits(&[b.id], 1).await;
    let stale = incidents(&alerts, "credential-stale");
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert!(stale[0].description.contains("revoked"));
    assert_eq!(stale[0].reason, Some("revoked"));
    assert_eq!(
        stale[0]
            .evidence
            .credential
            .as_ref()
            .expect("cred")
            .fingerprint,
        prefix
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_agents_by_scope_and_by_credential() {
    let (a, watched, other) = (
        TestCgroup::new("sh-a"),
        TestCgroup::new("sh-watch"),
        TestCgroup::new("sh-other"),
    );
    let regs = reg("alpha", &a, "", "");
    let Some(mut rig) = Rig::new("shadow", &regs, Some(&format!("{}/**", watched.rel))) else {
        return;
    };
    let key = fake_openai_key();
    run_with_env(&a, &[("OPENAI_API_KEY", &key)]);
    run_with_env(&watched, &[]);
    // Unregistered, not watched, but holding alpha's credential.
    run_with_env(&other, &[("OPENAI_API_KEY", &key)]);
    let (_, alerts) = rig.run_until_exits(&[a.id, watched.id, other.id], 3).await;
    let shadow = incidents(&alerts, "shadow-agent");
    assert_eq!(shadow.len(), 2, "{shadow:#?}");
    let scope = shadow
        .iter()
        .find(|s| s.severity == agentid::detect::Severity::Medium)
        .expect("scope alert");
    assert!(scope.title.contains(&watched.rel));
    let cred = shadow
        .iter()
        .find(|s| s.severity == agentid::detect::Severity::High)
        .expect("credential alert");
    assert!(
        cred.agents
            .iter()
            .any(|x| x.id == "spiffe://test.example/agent/alpha")
    );
    assert!(cred.agents.iter().any(|x| x.id == "unregistered"));
    assert!(
        cred.evidence
            .processes
            .iter()
            .any(|p| p.cgroup.as_deref() == Some(other.rel.as_str()))
    );
    // The registered agent alone is no shadow; the unwatched, credential-less cgroup neither.
    assert!(
        shadow
            .iter()
            .all(|s| !s.title.contains(&other.rel) && !s.title.contains(&a.rel))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_privilege_for_root_but_not_for_the_declared_uid() {
    let (a, b) = (TestCgroup::new("hp-a"), TestCgroup::new("hp-b"));
    let regs = reg("alpha", &a, "", "") + &reg("beta", &b, "uid = 65534", "");
    let Some(mut rig) = Rig::new("human", &regs, None) else {
        return;
    };
    run_with_env(&a, &[]);
    // Joining the cgroup needs root, so drop privileges after joining, with setpriv.
    let mut cmd = b.command("/usr/bin/setpriv");
    cmd.env_clear().args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "/bin/true",
    ]);
    assert!(cmd.status().expect("spawn").success());
    let (events, alerts) = rig.run_until_exits(&[a.id, b.id], 2).await;
    let beta_exec = events
        .iter()
        .find(|e| {
            e.event.cgroup_id == b.id && e.event.uid == 65534 && e.event.kind == EventKind::Exec
        })
        .expect("beta exec");
    assert_eq!(
        beta_exec.agent.as_ref().and_then(|x| x.name.as_deref()),
        Some("beta")
    );
    let hp = incidents(&alerts, "human-privilege");
    assert_eq!(hp.len(), 1, "{hp:#?}");
    assert_eq!(hp[0].agents[0].id, "spiffe://test.example/agent/alpha");
    assert!(hp[0].title.contains("runs as root"));
    assert_eq!(hp[0].tags.maestro, ["L6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_delegation_fires_and_a_declared_one_does_not() {
    let (s, w, ok) = (
        TestCgroup::new("dl-sup"),
        TestCgroup::new("dl-work"),
        TestCgroup::new("dl-ok"),
    );
    let regs = reg("supervisor", &s, "", "")
        + &reg("worker", &w, "", "")
        + &reg(
            "trusted",
            &ok,
            "",
            "[agent.policy]\naccepts_delegation_from = [\"spiffe://test.example/agent/supervisor\"]",
        );
    let Some(mut rig) = Rig::new("delegation", &regs, None) else {
        return;
    };
    for target in [&w, &ok] {
        let procs = target.dir.join("cgroup.procs");
        let mut cmd = s.command(WORKLOAD);
        cmd.env_clear()
            .args(["spawn-into", procs.to_str().expect("path"), "/bin/true"]);
        assert!(cmd.status().expect("spawn").success());
    }
    let (_, alerts) = rig.run_until_exits(&[s.id, w.id, ok.id], 4).await;
    let dl = incidents(&alerts, "undeclared-delegation");
    assert_eq!(dl.len(), 1, "{dl:#?}");
    let ids: Vec<&str> = dl[0].agents.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://test.example/agent/supervisor",
            "spiffe://test.example/agent/worker"
        ]
    );
    assert_eq!(
        dl[0].evidence.processes[0].acting_for,
        ["spiffe://test.example/agent/supervisor"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_and_tool_allowlists() {
    let a = TestCgroup::new("pol-a");
    let allowed = TcpListener::bind("127.0.0.1:0").expect("listener");
    let denied = TcpListener::bind("127.0.0.1:0").expect("listener");
    let (pa, pd) = (
        allowed.local_addr().expect("a").port(),
        denied.local_addr().expect("a").port(),
    );
    let mut policy = String::from("[agent.policy]\n");
    let _ = write!(
        policy,
        "egress = [\"127.0.0.1:{pa}\"]\ntools = [\"{WORKLOAD}\", \"/bin/true\"]"
    );
    let regs = reg("alpha", &a, "", &policy);
    let Some(mut rig) = Rig::new("policy", &regs, None) else {
        return;
    };
    for port in [pa, pd] {
        let mut cmd = a.command(WORKLOAD);
        cmd.env_clear()
            .args(["connect", &format!("127.0.0.1:{port}"), "1"]);
        assert!(cmd.status().expect("spawn").success());
    }
    run_with_env(&a, &[]);
    let mut echo = a.command("/bin/echo");
    echo.env_clear().stdout(std::process::Stdio::null());
    assert!(echo.status().expect("spawn").success());
    let (_, alerts) = rig.run_until_exits(&[a.id], 4).await;
    let egress = incidents(&alerts, "egress-violation");
    assert_eq!(egress.len(), 1, "{egress:#?}");
    assert_eq!(egress[0].evidence.connections[0].dst_port, pd);
    let tools = incidents(&alerts, "tool-violation");
    assert_eq!(tools.len(), 1, "{tools:#?}");
    assert!(tools[0].title.contains("/bin/echo"));
    assert_eq!(tools[0].severity, agentid::detect::Severity::Low);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_in_two_files_read_by_two_agents_is_one_reused_credential() {
    let (a, b, c, d) = (
        TestCgroup::new("cf-a"),
        TestCgroup::new("cf-b"),
        TestCgroup::new("cf-c"),
        TestCgroup::new("cf-d"),
    );
    let dir = std::env::temp_dir().join(format!("agentid-credfiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (fa, fb, fc, fd) = (
        dir.join("a.token"),
        dir.join("b.token"),
        dir.join("c.token"),
        dir.join("d.token"),
    );
    let files = format!(
        "[agent.credentials]\nfiles = [\"{}/*.token\"]",
        dir.display()
    );
    let regs = reg("alpha", &a, "", &files)
        + &reg("beta", &b, "", &files)
        + &reg("gamma", &c, "", &files)
        + &reg("delta", &d, "", &files);
    let Some(mut rig) = Rig::new("cred-files", &regs, None) else {
        return;
    };
    rig.watch_opens(&[&a, &b, &c, &d]);
    let token = format!("glpat-{}", &fake_openai_key()[8..28]);
    std::fs::write(&fa, format!("{token}\n")).expect("write");
    std::fs::write(&fb, &token).expect("write");
    std::fs::write(&fc, format!("glpat-{}", &fake_openai_key()[8..28])).expect("write");
    std::fs::write(&fd, format!("glpat-{}", &fake_openai_key()[8..28])).expect("write");
    for (cg, f) in [(&a, &fa), (&b, &fb), (&c, &fc), (&d, &fd)] {
        let mut cmd = cg.command("/bin/cat");
        cmd.env_clear().arg(f).stdout(std::process::Stdio::null());
        assert!(cmd.status().expect("cat").success());
    }
    let (events, alerts) = rig.run_until_exits(&[a.id, b.id, c.id, d.id], 4).await;
    assert!(events.iter().any(|e| e.event.kind == EventKind::Open && matches!(&e.event.detail, agentid::event::Detail::Open { path, .. } if path == fa.to_str().expect("utf8"))));
    let reuse = incidents(&alerts, "credential-reuse");
    assert_eq!(
        reuse.len(),
        1,
        "one credential in two files is one credential: {reuse:#?}"
    );
    let mut agents: Vec<&str> = reuse[0].agents.iter().map(|x| x.id.as_str()).collect();
    agents.sort_unstable();
    assert_eq!(
        agents,
        [
            "spiffe://test.example/agent/alpha",
            "spiffe://test.example/agent/beta"
        ]
    );
    let cred = reuse[0].evidence.credential.as_ref().expect("cred");
    assert!(cred.fingerprint.starts_with("gitlab:"), "{cred:?}");
    let mut seen = cred.seen_as.clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("file:{}", fa.display()),
            format!("file:{}", fb.display())
        ]
    );
    let text = serde_json::to_string(&alerts).expect("json")
        + &serde_json::to_string(&events).expect("json");
    assert!(!text.contains(&token));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reading_a_humans_credential_file_is_human_privilege() {
    let a = TestCgroup::new("hf-a");
    // The agent is declared to run as root, so only the file read can be the finding.
    let Some(mut rig) = Rig::new("human-file", &reg("alpha", &a, "uid = 0", ""), None) else {
        return;
    };
    rig.watch_opens(&[&a]);
    let home = std::path::PathBuf::from(format!("/home/agentid-test-{}", std::process::id()));
    std::fs::create_dir_all(home.join(".aws")).expect("home");
    let creds = home.join(".aws/credentials");
    std::fs::write(&creds, "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n").expect("write");
    std::os::unix::fs::chown(&creds, Some(1001), Some(1001)).expect("chown");
    let mut cmd = a.command("/bin/cat");
    cmd.env_clear()
        .arg(&creds)
        .stdout(std::process::Stdio::null());
    assert!(cmd.status().expect("cat").success());
    let (_, alerts) = rig.run_until_exits(&[a.id], 1).await;
    let hp = incidents(&alerts, "human-privilege");
    assert_eq!(hp.len(), 1, "{hp:#?}");
    assert_eq!(hp[0].severity, agentid::detect::Severity::High);
    assert!(
        hp[0].description.contains("owned by uid 1001"),
        "{}",
        hp[0].description
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// An agent that moves itself out of every identity is still the agent: `identity-escape`,
/// and its egress policy still applies. The declared hand-off twin (into an agent that
/// accepts it, whose policy allows the destination) raises neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_the_identity_is_seen_and_the_policy_follows() {
    let (a, twin, b, nowhere) = (
        TestCgroup::new("esc-a"),
        TestCgroup::new("esc-twin"),
        TestCgroup::new("esc-b"),
        TestCgroup::new("esc-nowhere"),
    );
    let allowed = TcpListener::bind("127.0.0.1:0").expect("listener");
    let outside = TcpListener::bind("127.0.0.1:0").expect("listener");
    let (pa, po) = (
        allowed.local_addr().expect("a").port(),
        outside.local_addr().expect("a").port(),
    );
    let egress = format!("[agent.policy]\negress = [\"127.0.0.1:{pa}\"]");
    let regs = reg("alpha", &a, "", &egress)
        + &reg("twin", &twin, "", &egress)
        + &reg(
            "bravo",
            &b,
            "",
            &format!(
                "[agent.policy]\negress = [\"127.0.0.1:{po}\"]\n\
                 accepts_delegation_from = [\"spiffe://test.example/agent/twin\"]"
            ),
        );
    let Some(mut rig) = Rig::new("escape", &regs, None) else {
        return;
    };
    let (first, then) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{po}"));
    for (from, to) in [(&a, &nowhere), (&twin, &b)] {
        let procs = to.dir.join("cgroup.procs");
        let mut cmd = from.command(WORKLOAD);
        cmd.env_clear()
            .args(["move-connect", procs.to_str().expect("path"), &first, &then]);
        assert!(cmd.status().expect("spawn").success());
    }
    let ids = [a.id, twin.id, b.id, nowhere.id];
    let (events, alerts) = rig.run_until_exits(&ids, 2).await;
    // The escaped connect is still alpha's, marked with where it went.
    let escaped = events
        .iter()
        .find(|e| e.event.kind == EventKind::Connect && e.event.cgroup_id == nowhere.id)
        .expect("connect after the move");
    assert_eq!(
        escaped.agent.as_ref().map(|x| x.id.as_str()),
        Some("spiffe://test.example/agent/alpha")
    );
    assert_eq!(escaped.escaped_to.as_deref(), Some(nowhere.rel.as_str()));
    let esc = incidents(&alerts, "identity-escape");
    assert_eq!(esc.len(), 1, "{esc:#?}");
    assert_eq!(esc[0].severity, agentid::detect::Severity::High);
    assert_eq!(esc[0].agents[0].id, "spiffe://test.example/agent/alpha");
    assert!(
        esc[0].description.contains(&nowhere.rel),
        "{}",
        esc[0].description
    );
    let egress = incidents(&alerts, "egress-violation");
    assert_eq!(egress.len(), 1, "only alpha's escaped connect: {egress:#?}");
    assert_eq!(egress[0].agents[0].id, "spiffe://test.example/agent/alpha");
    assert_eq!(egress[0].evidence.connections[0].dst_port, po);
    // The twin's move is a declared hand-off: bravo acting for twin, bravo's policy.
    let handed = events
        .iter()
        .find(|e| e.event.kind == EventKind::Connect && e.event.cgroup_id == b.id)
        .expect("connect after the hand-off");
    assert_eq!(
        handed.agent.as_ref().map(|x| x.id.as_str()),
        Some("spiffe://test.example/agent/bravo")
    );
    assert_eq!(handed.acting_for, ["spiffe://test.example/agent/twin"]);
    assert!(incidents(&alerts, "undeclared-delegation").is_empty());
}

/// A copy of `/bin/true` at a path of this test's own: a tool registered by its image.
fn tool_image(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agentid-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    std::fs::copy("/bin/true", &path).expect("copy");
    path
}

fn exe_reg(name: &str, exe: &std::path::Path, extra: &str) -> String {
    format!(
        "[[agent]]\nid = \"spiffe://test.example/agent/{name}\"\nname = \"{name}\"\n\
         [[agent.selectors]]\nexe = \"{}\"\n{extra}\n",
        exe.display()
    )
}

/// Agent A (by cgroup) starting a tool registered under its own identity (by image): the
/// tool is that agent acting for A — `undeclared-delegation` unless the tool accepts A;
/// an image two other agents claim is `ambiguous-identity` and stays A's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_a_registered_binary_hands_off_or_is_ambiguous() {
    let (a, b, c) = (
        TestCgroup::new("tool-a"),
        TestCgroup::new("tool-b"),
        TestCgroup::new("tool-c"),
    );
    let (mcp, trusted, contested) = (
        tool_image("mcp-tool"),
        tool_image("trusted-tool"),
        tool_image("contested-tool"),
    );
    let regs = reg("alpha", &a, "", "")
        + &reg("bravo", &b, "", "")
        + &reg("charlie", &c, "", "")
        + &exe_reg("mcp", &mcp, "")
        + &exe_reg(
            "trusted",
            &trusted,
            "[agent.policy]\naccepts_delegation_from = [\"spiffe://test.example/agent/bravo\"]",
        )
        + &exe_reg("claim-one", &contested, "")
        + &exe_reg("claim-two", &contested, "");
    let Some(mut rig) = Rig::new("tool-identity", &regs, None) else {
        return;
    };
    for (cg, tool) in [(&a, &mcp), (&b, &trusted), (&c, &contested)] {
        let mut cmd = cg.command(WORKLOAD);
        cmd.env_clear()
            .args(["exec", "1", tool.to_str().expect("path")]);
        assert!(cmd.status().expect("spawn").success());
    }
    let (events, alerts) = rig.run_until_exits(&[a.id, b.id, c.id], 6).await;
    let exec_of = |tool: &std::path::Path| {
        events
            .iter()
            .find(|e| {
                matches!(&e.event.detail, agentid::event::Detail::Exec { filename, .. }
                    if filename == tool.to_str().expect("path"))
            })
            .expect("the tool's exec")
    };
    let agent = |e: &AttributedEvent| e.agent.as_ref().map(|x| x.id.clone());
    let m = exec_of(&mcp);
    assert_eq!(agent(m).as_deref(), Some("spiffe://test.example/agent/mcp"));
    assert_eq!(m.acting_for, ["spiffe://test.example/agent/alpha"]);
    let t = exec_of(&trusted);
    assert_eq!(
        agent(t).as_deref(),
        Some("spiffe://test.example/agent/trusted")
    );
    assert_eq!(t.acting_for, ["spiffe://test.example/agent/bravo"]);
    let x = exec_of(&contested);
    assert_eq!(
        agent(x).as_deref(),
        Some("spiffe://test.example/agent/charlie"),
        "an ambiguous image stays the work of the agent that ran it"
    );
    assert_eq!(
        x.ambiguous,
        [
            "spiffe://test.example/agent/claim-one",
            "spiffe://test.example/agent/claim-two"
        ]
    );
    let dl = incidents(&alerts, "undeclared-delegation");
    assert_eq!(dl.len(), 1, "only alpha → mcp is undeclared: {dl:#?}");
    let ids: Vec<&str> = dl[0].agents.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://test.example/agent/alpha",
            "spiffe://test.example/agent/mcp"
        ]
    );
    let amb = incidents(&alerts, "ambiguous-identity");
    assert_eq!(amb.len(), 1, "{amb:#?}");
    let ids: Vec<&str> = amb[0].agents.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://test.example/agent/charlie",
            "spiffe://test.example/agent/claim-one",
            "spiffe://test.example/agent/claim-two"
        ]
    );
    let _ = std::fs::remove_dir_all(mcp.parent().expect("dir"));
}

/// A registered agent opening a raw ICMP socket and a packet socket talks past the connect
/// hooks: `raw-socket`, once per kind of socket; an unregistered process doing the same
/// raises nothing (it has no egress policy to bypass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_in_an_agent_is_seen() {
    let (a, u) = (TestCgroup::new("raw-a"), TestCgroup::new("raw-u"));
    let regs = reg("alpha", &a, "", "");
    let Some(mut rig) = Rig::new("raw-socket", &regs, None) else {
        return;
    };
    for cg in [&a, &u] {
        let mut cmd = cg.command(WORKLOAD);
        cmd.env_clear().args(["raw-sockets"]);
        assert!(cmd.status().expect("spawn").success());
    }
    let (events, alerts) = rig.run_until_exits(&[a.id, u.id], 2).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.kind == EventKind::Socket)
            .count(),
        4,
        "two sockets reported per process, netlink not"
    );
    let raw = incidents(&alerts, "raw-socket");
    assert_eq!(raw.len(), 2, "{raw:#?}");
    assert!(
        raw.iter()
            .all(|r| r.agents[0].id == "spiffe://test.example/agent/alpha")
    );
    let titles: Vec<&str> = raw.iter().map(|r| r.title.as_str()).collect();
    assert!(
        titles.contains(&"alpha opened a raw inet socket"),
        "{titles:?}"
    );
    assert!(
        titles.contains(&"alpha opened a raw packet socket"),
        "{titles:?}"
    );
}
