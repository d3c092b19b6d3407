//! The fleet for real: a 3-node `nats-server` JetStream cluster on loopback and two
//! daemons as two hosts (own state dirs, host names, agents dirs, disjoint cgroups).
//! Cross-host `credential-reuse` raised once, none for distinct keys, `identity-sprawl`,
//! fleet revocation, a JetStream leader killed, the whole cluster down and back, and the
//! canary secret in 0 bytes of the cluster's store and the fleet's answers.
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
#![expect(
    clippy::expect_used,
    reason = "the scenario's helpers: a failed step is a failed test"
)]
use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use agentid::audit::Checkpoint;
use agentid_tests::{
    TestCgroup, agentid, bpf_required,
    daemon::{Daemon, registration},
    nats::{self, Cluster},
    text,
};
use serde_json::Value;

/// The cluster, or `None` (skipped, said) when `nats-server` is missing outside CI.
fn cluster(test: &str) -> Option<Cluster> {
    if nats::available() {
        return Some(Cluster::start(test));
    }
    assert!(
        !bpf_required(),
        "nats-server is not installed (scripts/setup.sh installs it)"
    );
    eprintln!("SKIPPED {test}: nats-server is not installed");
    None
}

/// A host's directory: `agents` (name → registration) and `[fleet]` joined to `cluster`
/// as `host`, with the fleet key shared by every host of the test.
fn host_dir(
    test: &str,
    host: &str,
    cluster: &Cluster,
    agents: &[(&str, String)],
) -> std::path::PathBuf {
    let dir = Daemon::dir(&format!("fleet-{test}-{host}"));
    for (name, reg) in agents {
        std::fs::write(dir.join(format!("agents/{name}.toml")), reg).expect("registration");
    }
    let key = cluster.dir.join("fleet.key");
    if !key.exists() {
        let hex = (0..32u32).fold(String::new(), |mut h, i| {
            let _ = write!(h, "{:02x}", (i * 37 + std::process::id()) % 256);
            h
        });
        std::fs::write(&key, hex).expect("fleet key");
    }
    let mut config = std::fs::read_to_string(dir.join("agentid.toml")).expect("config");
    let servers: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let _ = write!(
        config,
        "pin = false\nfleet_key_file = \"{}\"\n[fleet]\nservers = [{}]\nhost = \"{host}\"\nreplicas = 3\nheartbeat = \"1s\"\n",
        key.display(),
        servers.join(", ")
    );
    std::fs::write(dir.join("agentid.toml"), config).expect("config");
    dir
}

/// Adds `metrics_listen` on a free loopback port to the host's config; the address.
fn metrics_on(dir: &Path) -> std::net::SocketAddr {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let path = dir.join("agentid.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    // Top level: before the `[fleet]` table.
    let config = config.replacen(
        "[fleet]\n",
        &format!("metrics_listen = \"{addr}\"\n[fleet]\n"),
        1,
    );
    std::fs::write(&path, config).expect("config");
    addr
}

/// `GET /metrics` over HTTP/1.0: the body.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// Waits (bounded) for `agentid fleet ARGS` to satisfy `pred`; returns the answer.
fn fleet_until(
    d: &Daemon,
    args: &[&str],
    what: &str,
    limit: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut full = vec!["fleet"];
    full.extend_from_slice(args);
    loop {
        let v = d.cli(&full);
        let rows = v.as_array().cloned().unwrap_or_default();
        if pred(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; last `fleet {args:?}`: {v:#}\nlog:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connected(d: &Daemon) -> bool {
    d.cli(&["fleet", "hosts"])
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h["link"]["connected"] == true)
}

fn rule<'a>(alerts: &'a [Value], rule: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["rule"] == rule).collect()
}

fn hosts_of(alert: &Value) -> Vec<String> {
    let mut h: Vec<String> = alert["holders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["host"].as_str().map(str::to_owned))
        .collect();
    h.sort();
    h.dedup();
    h
}

fn agents_of(alert: &Value) -> Vec<String> {
    let mut a: Vec<String> = alert["holders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["agent"].as_str().map(str::to_owned))
        .collect();
    a.sort();
    a.dedup();
    a
}

/// A process in `cg` that used `secret` as its API key.
fn use_key(cg: &TestCgroup, secret: &str) {
    let st = cg
        .command("/bin/true")
        .env_clear()
        .env("OPENAI_API_KEY", secret)
        .status()
        .expect("spawn");
    assert!(st.success());
}

/// A long-lived process in a cgroup, killed on drop.
struct Resident(Child);

impl Resident {
    fn new(cg: &TestCgroup) -> Self {
        Self(
            cg.command("/bin/sleep")
                .arg("120")
                .stdout(Stdio::null())
                .spawn()
                .expect("sleep"),
        )
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn secret(tag: &str) -> String {
    format!(
        "sk-proj-FLEETcanary{tag}{}x7Q9mL2nP4rT6vW8yZ0aB",
        std::process::id()
    )
}

/// Local alerts of `rule` in a host's alerts file whose title says "across hosts".
fn fleet_alert_uids(dir: &Path, rule: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("alerts.jsonl")).unwrap_or_default();
    let mut uids: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| {
            a["rule"] == rule
                && a["title"]
                    .as_str()
                    .is_some_and(|t| t.contains("across hosts"))
        })
        .filter_map(|a| a["uid"].as_str().map(str::to_owned))
        .collect();
    uids.sort();
    uids.dedup();
    uids
}

const ALPHA: &str = "spiffe://test.example/agent/alpha";
const BETA: &str = "spiffe://test.example/agent/beta";
const SEC: Duration = Duration::from_secs(1);

/// Two hosts: the same key in agent alpha on h1 and agent beta on h2 makes exactly one
/// fleet `credential-reuse`, naming both; distinct keys make none; agent gamma live on
/// both with `max_hosts = 1` is `identity-sprawl`; a revocation on h1 makes h2's next use
/// `credential-stale`; and no secret reaches the cluster or the fleet's answers.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn two_hosts_share_one_reuse_alert_sprawl_and_revocation_and_no_secret() {
    let Some(cluster) = cluster("main") else {
        return;
    };
    let (a1, b2) = (TestCgroup::new("fl-a1"), TestCgroup::new("fl-b2"));
    let (g1, g2) = (TestCgroup::new("fl-g1"), TestCgroup::new("fl-g2"));
    let gamma = |cg: &TestCgroup| {
        format!(
            "{}[agent.policy]\nmax_hosts = 1\n",
            registration("gamma", cg)
        )
    };
    let dir1 = host_dir(
        "main",
        "h1",
        &cluster,
        &[("alpha", registration("alpha", &a1)), ("gamma", gamma(&g1))],
    );
    let dir2 = host_dir(
        "main",
        "h2",
        &cluster,
        &[("beta", registration("beta", &b2)), ("gamma", gamma(&g2))],
    );
    // h1 serves /metrics too: the fleet's gauges are checked against what the test caused.
    let metrics = metrics_on(&dir1);
    let Some(h1) = Daemon::start(&dir1) else {
        return;
    };
    let Some(h2) = Daemon::start(&dir2) else {
        return;
    };
    for h in [&h1, &h2] {
        fleet_until(h, &["hosts"], "joined the fleet", 60 * SEC, |_| {
            connected(h)
        });
    }

    // The same key on two hosts under two agents: one fleet alert, seen by both hosts.
    let s1 = secret("one");
    use_key(&a1, &s1);
    use_key(&b2, &s1);
    let reuse = |rows: &[Value]| rule(rows, "credential-reuse").len() == 1;
    let started = Instant::now();
    for h in [&h1, &h2] {
        let alerts = fleet_until(
            h,
            &["alerts"],
            "the cross-host credential-reuse",
            30 * SEC,
            reuse,
        );
        let a = rule(&alerts, "credential-reuse")[0];
        assert_eq!(hosts_of(a), ["h1", "h2"], "{a:#}");
        assert_eq!(agents_of(a), [ALPHA, BETA], "{a:#}");
    }
    eprintln!(
        "cross-host credential-reuse seen on both hosts {:?} after the second use",
        started.elapsed()
    );
    let text = scrape(metrics);
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    };
    assert!(
        (sample("agentid_fleet_connected") - 1.0).abs() < f64::EPSILON,
        "{text}"
    );
    assert!(sample("agentid_fleet_published_total") >= 1.0, "{text}");
    assert!(sample("agentid_fleet_alerts") >= 1.0, "{text}");
    assert!(
        (sample("agentid_fleet_dropped_total")).abs() < f64::EPSILON,
        "{text}"
    );
    let fp = rule(
        &h1.cli(&["fleet", "alerts"])
            .as_array()
            .cloned()
            .unwrap_or_default(),
        "credential-reuse",
    )[0]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    // Which hosts and agents hold it, by its fingerprint.
    let holders = fleet_until(
        &h2,
        &["credentials", &fp],
        "the credential's holders",
        10 * SEC,
        |r| r.len() >= 2,
    );
    assert!(
        holders.iter().all(|s| s["fingerprint"] == fp.as_str()),
        "{holders:#?}"
    );

    // Distinct keys: both sightings reach both hosts, and no alert follows.
    let (s2, s3) = (secret("two"), secret("three"));
    use_key(&a1, &s2);
    use_key(&b2, &s3);
    let both_seen = |rows: &[Value]| {
        let count = |agent: &str, host: &str| {
            rows.iter()
                .filter(|s| s["agent"] == agent && s["host"] == host)
                .count()
        };
        count(ALPHA, "h1") >= 2 && count(BETA, "h2") >= 2
    };
    for h in [&h1, &h2] {
        fleet_until(
            h,
            &["credentials"],
            "the distinct keys' sightings",
            30 * SEC,
            both_seen,
        );
        let alerts = h.cli(&["fleet", "alerts"]);
        let n = rule(
            alerts.as_array().map_or(&[][..], Vec::as_slice),
            "credential-reuse",
        )
        .len();
        assert_eq!(n, 1, "distinct keys raised a fleet alert: {alerts:#}");
    }

    // gamma live on both hosts, registered with max_hosts = 1 on each.
    let (_r1, _r2) = (Resident::new(&g1), Resident::new(&g2));
    for h in [&h1, &h2] {
        let alerts = fleet_until(h, &["alerts"], "identity-sprawl", 30 * SEC, |r| {
            rule(r, "identity-sprawl")
                .iter()
                .any(|a| hosts_of(a) == ["h1", "h2"])
        });
        assert_eq!(rule(&alerts, "identity-sprawl").len(), 1, "{alerts:#?}");
    }
    let agents = h1.cli(&["fleet", "agents"]);
    let gamma_hosts = agents
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["agent"] == "spiffe://test.example/agent/gamma")
        .count();
    assert_eq!(gamma_hosts, 2, "{agents:#}");

    // Revoked on h1: h2's detector has it within seconds, and h2's next use is stale.
    let revoked_at = Instant::now();
    let out = h1.cli(&["credentials", "revoke", &fp]);
    assert_eq!(out["revoked"], fp.as_str(), "{out:#}");
    let revs = fleet_until(
        &h2,
        &["revocations"],
        "the revocation on h2",
        10 * SEC,
        |r| r.iter().any(|x| x["prefix"] == fp.as_str()),
    );
    let rev = revs
        .iter()
        .find(|x| x["prefix"] == fp.as_str())
        .expect("revocation");
    assert_eq!(rev["host"], "h1", "{rev:#}");
    assert_eq!(rev["by"], "uid 0", "{rev:#}");
    eprintln!(
        "revocation on h1 reached h2 after {:?}",
        revoked_at.elapsed()
    );
    use_key(&b2, &s1);
    h2.cli_until(&["alerts", "--rule", "credential-stale"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    // Kept in h2's own revocation file too: it holds through a restart without NATS.
    let local = std::fs::read_to_string(dir2.join("state/revoked")).unwrap_or_default();
    assert!(local.contains(&fp), "h2's revoked file: {local:?}");

    // Exactly one host raised the one fleet credential-reuse to its own outputs.
    let raised: Vec<Vec<String>> = [&dir1, &dir2]
        .iter()
        .map(|d| fleet_alert_uids(d, "credential-reuse"))
        .collect();
    assert_eq!(
        raised.iter().map(Vec::len).sum::<usize>(),
        1,
        "fleet credential-reuse raised by: {raised:?}"
    );

    // The canary: no secret in the cluster's store (streams and buckets), the fleet's
    // answers or the fleet spools; the fingerprint is there, so the search is real.
    let mut haystack: Vec<(String, Vec<u8>)> = cluster
        .store_files()
        .into_iter()
        .map(|(p, b)| (p.display().to_string(), b))
        .collect();
    for h in [&h1, &h2] {
        for what in ["hosts", "agents", "credentials", "alerts", "revocations"] {
            haystack.push((
                format!("fleet {what}"),
                h.cli(&["fleet", what]).to_string().into_bytes(),
            ));
        }
    }
    let short_hex = fp.split_once(':').expect("kind:hex").1;
    assert!(
        haystack.iter().any(|(p, b)| p.contains("jetstream")
            && b.windows(short_hex.len())
                .any(|w| w == short_hex.as_bytes())),
        "the fingerprint is not in the cluster's store: the canary search would prove nothing"
    );
    for s in [&s1, &s2, &s3] {
        let core = &s[8..];
        for (place, bytes) in &haystack {
            assert!(
                !bytes.windows(core.len()).any(|w| w == core.as_bytes()),
                "a secret reached {place}"
            );
        }
    }
    assert!(h1.stop().success());
    assert!(h2.stop().success());
    for d in [dir1, dir2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The JetStream leader of the sightings bucket killed mid-run: detection goes on. The
/// whole cluster down: local detection goes on and the fleet records wait in the spool;
/// back: they are published and the cross-host alert appears. Nothing acknowledged is lost.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn detection_survives_a_dead_leader_and_a_cluster_outage() {
    let Some(mut cluster) = cluster("outage") else {
        return;
    };
    let (a1, c1, b2) = (
        TestCgroup::new("fo-a1"),
        TestCgroup::new("fo-c1"),
        TestCgroup::new("fo-b2"),
    );
    let dir1 = host_dir(
        "outage",
        "h1",
        &cluster,
        &[
            ("alpha", registration("alpha", &a1)),
            ("charlie", registration("charlie", &c1)),
        ],
    );
    let dir2 = host_dir(
        "outage",
        "h2",
        &cluster,
        &[("beta", registration("beta", &b2))],
    );
    let Some(h1) = Daemon::start(&dir1) else {
        return;
    };
    let Some(h2) = Daemon::start(&dir2) else {
        return;
    };
    for h in [&h1, &h2] {
        fleet_until(h, &["hosts"], "joined the fleet", 60 * SEC, |_| {
            connected(h)
        });
    }
    // A sighting acknowledged before anything fails.
    let s0 = secret("zero");
    use_key(&a1, &s0);
    fleet_until(
        &h2,
        &["credentials"],
        "h1's first sighting",
        30 * SEC,
        |r| r.iter().any(|s| s["agent"] == ALPHA && s["host"] == "h1"),
    );

    // The sightings bucket's leader dies; the next cross-host reuse is still found.
    let leader = cluster
        .stream_leader("KV_agentid_sightings")
        .expect("the sightings bucket's leader");
    cluster.kill(leader);
    let s4 = secret("four");
    use_key(&a1, &s4);
    use_key(&b2, &s4);
    let t = Instant::now();
    for h in [&h1, &h2] {
        fleet_until(
            h,
            &["alerts"],
            "credential-reuse after the leader died",
            60 * SEC,
            |r| rule(r, "credential-reuse").len() == 1,
        );
    }
    eprintln!(
        "with the leader killed, the cross-host alert came after {:?}",
        t.elapsed()
    );
    cluster.restart(leader);
    cluster.wait_ready();

    // The whole cluster down.
    for i in 0..3 {
        cluster.kill(i);
    }
    for h in [&h1, &h2] {
        fleet_until(
            h,
            &["hosts"],
            "the link noticing the outage",
            30 * SEC,
            |_| !connected(h),
        );
    }
    let s5 = secret("five");
    use_key(&a1, &s5);
    use_key(&b2, &s5);
    // Local detection goes on: two agents of h1 with one key.
    let s6 = secret("six");
    use_key(&a1, &s6);
    use_key(&c1, &s6);
    h1.cli_until(&["alerts", "--rule", "credential-reuse"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let pending = |h: &Daemon| {
        h.cli(&["fleet", "hosts"])
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|x| x["link"]["stats"]["pending_bytes"].as_u64())
            .unwrap_or(0)
    };
    fleet_until(&h1, &["hosts"], "h1's sightings spooled", 10 * SEC, |_| {
        pending(&h1) > 0
    });
    fleet_until(&h2, &["hosts"], "h2's sighting spooled", 10 * SEC, |_| {
        pending(&h2) > 0
    });

    // Back: the spools drain and the cross-host alert appears.
    let t = Instant::now();
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_ready();
    for h in [&h1, &h2] {
        fleet_until(
            h,
            &["alerts"],
            "credential-reuse from spooled sightings",
            90 * SEC,
            |r| rule(r, "credential-reuse").len() == 2,
        );
        fleet_until(h, &["hosts"], "the spool drained", 30 * SEC, |_| {
            pending(h) == 0
        });
    }
    eprintln!(
        "after the cluster came back, the spooled reuse was found in {:?}",
        t.elapsed()
    );
    // Nothing acknowledged was lost: the first sighting is still in the cluster (the views
    // were rebuilt from it after the reconnect).
    let creds = h2.cli(&["fleet", "credentials"]);
    let alpha_keys = creds
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["agent"] == ALPHA && s["host"] == "h1")
        .count();
    assert!(
        alpha_keys >= 4,
        "h1's sightings (s0, s4, s5, s6) in the fleet: {creds:#}"
    );
    // One raiser per fleet incident.
    let raised: usize = [&dir1, &dir2]
        .iter()
        .map(|d| fleet_alert_uids(d, "credential-reuse").len())
        .sum();
    assert_eq!(
        raised, 2,
        "each fleet credential-reuse raised by exactly one host"
    );
    assert!(h1.stop().success());
    assert!(h2.stop().success());
    for d in [dir1, dir2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// One daemon run of a host joined to the fleet: an exec in `cg`, seen in the store, then
/// a clean stop (whose final checkpoint the link publishes as it stops).
fn one_run(dir: &Path, cg: &TestCgroup, marker: &str) -> bool {
    let Some(d) = Daemon::start(dir) else {
        return false;
    };
    fleet_until(&d, &["hosts"], "joined the fleet", 60 * SEC, |_| {
        connected(&d)
    });
    d.exec_and_stop(cg, marker);
    true
}

/// The checkpoints a host's audit log holds now.
fn checkpoints(dir: &Path) -> Vec<Checkpoint> {
    std::fs::read_to_string(dir.join("state/audit/audit.log"))
        .expect("audit log")
        .lines()
        .filter_map(|l| Checkpoint::from_record(&serde_json::from_str(l).ok()?))
        .collect()
}

/// `agentid audit verify --anchors fleet` of the host in `dir` (pinned key `pk`).
fn verify_fleet(dir: &Path, pk: &str, extra: &[&str]) -> std::process::Output {
    let (audit, config) = (dir.join("state/audit"), dir.join("agentid.toml"));
    let mut args = vec![
        "audit",
        "verify",
        "--dir",
        audit.to_str().expect("utf-8"),
        "--pubkey",
        pk,
        "--expect-closed",
        "--config",
        config.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    agentid(&args)
}

/// Waits (bounded) until `verify --anchors fleet` passes with `wanted` in its output.
fn fleet_verifies(dir: &Path, pk: &str, wanted: &str) {
    let deadline = Instant::now() + 30 * SEC;
    loop {
        let o = verify_fleet(dir, pk, &["--anchors", "fleet"]);
        if o.status.success() && String::from_utf8_lossy(&o.stdout).contains(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`verify --anchors fleet` of {} never said {wanted:?}: {}",
            dir.display(),
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Item 9: every signed audit checkpoint is also an anchor in the fleet. Two runs of h1
/// (h2 beside it): the untouched log passes `verify --anchors fleet`; h2's checkpoints
/// (also published under h1's subject) and a forged one are not used for h1; the log cut
/// back to run 1's end fails, naming run 2's checkpoints.
#[test]
fn audit_anchors_in_the_fleet_catch_a_rollback() {
    let Some(cluster) = cluster("anchors") else {
        return;
    };
    let (a1, b2) = (TestCgroup::new("fla-a1"), TestCgroup::new("fla-b2"));
    let dir1 = host_dir(
        "anchors",
        "h1",
        &cluster,
        &[("alpha", registration("alpha", &a1))],
    );
    let dir2 = host_dir(
        "anchors",
        "h2",
        &cluster,
        &[("beta", registration("beta", &b2))],
    );
    // Run 1 of both hosts, side by side.
    let run2_of_h2 = std::thread::spawn({
        let (dir2, b2) = (dir2.clone(), b2);
        move || one_run(&dir2, &b2, "h2-run")
    });
    if !one_run(&dir1, &a1, "h1-run-one") {
        return;
    }
    assert!(run2_of_h2.join().expect("h2's run"), "h2 ran");
    let o = agentid(&[
        "audit",
        "pubkey",
        "--key",
        dir1.join("state/audit.key").to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pk = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let log = dir1.join("state/audit/audit.log");
    let run1 = checkpoints(&dir1);
    let run1_text = std::fs::read_to_string(&log).expect("log");
    let n1 = run1.len();
    fleet_verifies(&dir1, &pk, &format!("anchors: {n1} of {n1} anchored"));

    // Run 2 of h1.
    assert!(one_run(&dir1, &a1, "h1-run-two"), "h1 ran once, so again");
    let all = checkpoints(&dir1);
    let n = all.len();
    let run2: Vec<String> = all[n1..].iter().map(|c| c.seq.to_string()).collect();
    assert!(!run2.is_empty(), "run 2 made checkpoints");
    // Untouched: passes, every checkpoint of both runs anchored in the fleet.
    fleet_verifies(&dir1, &pk, &format!("anchors: {n} of {n} anchored"));

    // Under h1's subject: a checkpoint of h2 (genuine, but another key chain) and one of
    // h1's own with its seq changed (its signature no longer verifies): neither is used.
    let other = checkpoints(&dir2).pop().expect("h2's checkpoint");
    let mut forged = all.last().expect("a checkpoint").clone();
    forged.seq += 1000;
    forged.seq_to += 1000;
    for cp in [&other, &forged] {
        let msg =
            serde_json::json!({"type": "audit_checkpoint", "host": "h1", "audit_checkpoint": cp});
        cluster.publish("agentid.audit.h1", &msg.to_string());
    }
    fleet_verifies(
        &dir1,
        &pk,
        &format!(
            "anchors: {n} of {n} anchored checkpoints are in the log as published; 1 anchors of \
             other key chains ignored; 1 lines with unverifiable signatures ignored"
        ),
    );
    // h2's anchors are h2's: none continues h1's key chain.
    let o = verify_fleet(&dir1, &pk, &["--anchors", "fleet", "--host", "h2"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("none of the") && text(&o).contains("continues this log's key chain"),
        "{}",
        text(&o)
    );

    // Cut back to the end of run 1: the log alone still verifies, closed cleanly...
    std::fs::write(&log, &run1_text).expect("cut");
    let o = verify_fleet(&dir1, &pk, &[]);
    assert!(
        o.status.success(),
        "the cut is invisible alone: {}",
        text(&o)
    );
    // ...the fleet's anchors name what is missing.
    let o = verify_fleet(&dir1, &pk, &["--anchors", "fleet"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains(&format!(
            "lacks {} anchored checkpoint(s) at seq {}",
            run2.len(),
            run2.join(", ")
        )) && err.contains("rolled back")
            && err.contains("the fleet's anchors of host h1"),
        "{err}"
    );
}
