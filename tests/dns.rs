//! Names from the agents' own DNS, on the real kernel with a real resolver (`dnsmasq` on a
//! loopback address) and real clients (`curl`, Python's `socket`), each agent in a mount
//! namespace whose `/etc/resolv.conf` points at that resolver (the host's is never
//! touched).
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    net::{Ipv4Addr, TcpListener},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use agentid::{
    attribution::AttributedEvent,
    cgroup,
    credentials::FingerprintKey,
    detect::{Alert, Detector},
    event::{Detail, EventKind},
    identity::Registry,
    pipeline::Pipeline,
    sensor::Sensor,
};
use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
    dns::{ALLOWED, Dnsmasq, OUTSIDE, PYTHON, http_server, lo},
    sensor_or_skip,
};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Rig {
    sensor: Sensor,
    pipeline: Pipeline,
    detector: Detector,
    registry: Arc<Registry>,
}

impl Rig {
    fn new(test: &str, cg: &TestCgroup, policy: &str) -> Option<Self> {
        let mut sensor = sensor_or_skip(test)?;
        // What the daemon does for a registered agent's cgroup: its opens and DNS are seen.
        sensor.watch_opens(cg.id).expect("watch");
        let regs = format!(
            "[[agent]]\nid = \"spiffe://test.example/agent/{test}\"\nname = \"{test}\"\n\
             [[agent.selectors]]\ncgroup = \"{}\"\n[agent.policy]\n{policy}\n",
            cg.rel
        );
        let registry = Registry::parse_str(&regs, "test.toml");
        assert!(registry.errors().is_empty(), "{:?}", registry.errors());
        let registry = Arc::new(registry);
        let mut pipeline = Pipeline::new(
            Arc::clone(&registry),
            cgroup::v2_root().expect("cgroup v2"),
            FingerprintKey::ephemeral().expect("key"),
        );
        pipeline.seed();
        let mut detector = Detector::new(None);
        detector.set_registry(&registry);
        Some(Self {
            sensor,
            pipeline,
            detector,
            registry,
        })
    }

    /// This cgroup's events and alerts until `done` holds over the events.
    async fn run_until(
        &mut self,
        cg: &TestCgroup,
        done: impl Fn(&[AttributedEvent]) -> bool,
    ) -> (Vec<AttributedEvent>, Vec<Alert>) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let (mut events, mut alerts) = (Vec::new(), Vec::new());
        let mut batch = Vec::new();
        while !done(&events) {
            tokio::time::timeout_at(deadline, self.sensor.next_events(&mut batch))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out; this cgroup's connects so far: {:#?}",
                        connects(&events)
                    )
                })
                .expect("ring buffer");
            for ev in batch.drain(..) {
                let (a, findings) = self.pipeline.process(ev);
                let out = self.detector.observe(&a, &findings, &self.registry);
                if a.event.cgroup_id == cg.id {
                    alerts.extend(out.alerts);
                    events.push(a);
                }
            }
        }
        (events, alerts)
    }
}

/// `(ip, port, names)` of every connect.
fn connects(events: &[AttributedEvent]) -> Vec<(std::net::IpAddr, u16, Vec<String>)> {
    events
        .iter()
        .filter(|e| e.event.kind == EventKind::Connect)
        .filter_map(|e| match &e.event.detail {
            Detail::Sock {
                dst_ip,
                dst_port,
                dst_names,
                ..
            } => Some((*dst_ip, *dst_port, dst_names.clone())),
            _ => None,
        })
        .collect()
}

fn connected_to(events: &[AttributedEvent], ip: Ipv4Addr, port: u16) -> bool {
    connects(events)
        .iter()
        .any(|(i, p, _)| *i == std::net::IpAddr::V4(ip) && *p == port)
}

/// Each incident's last state (alerts update in place by uid).
fn incidents<'a>(alerts: &'a [Alert], rule: &str) -> Vec<&'a Alert> {
    let mut last = std::collections::BTreeMap::new();
    for a in alerts.iter().filter(|a| a.rule == rule) {
        last.insert(a.uid.as_str(), a);
    }
    last.into_values().collect()
}

/// Monitor mode: connects by name carry the name the agent resolved; the one outside the
/// policy raises one `egress-violation` naming the host, its twin inside the policy none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_by_name_carry_dst_names_and_only_the_name_outside_the_policy_alerts() {
    let cg = TestCgroup::new("dns-names");
    let dns = Dnsmasq::start("names", 5, &[(ALLOWED, lo(1)), (OUTSIDE, lo(2))]);
    let (pa, po) = (http_server(lo(1)), http_server(lo(2)));
    let policy = format!("egress = [\"{ALLOWED}:{pa}\", \"{}:53\"]", lo(53));
    let Some(mut rig) = Rig::new("dnsnames", &cg, &policy) else {
        return;
    };
    // curl (the allowed name) and Python's socket (the name outside), each resolving
    // through the agent's own resolv.conf.
    let url = format!("http://{ALLOWED}:{pa}/");
    let out = dns
        .agent(
            &cg,
            "curl",
            &["-sS", "-o", "/dev/null", "--max-time", "10", &url],
        )
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dns
        .agent(
            &cg,
            PYTHON,
            &[
                "-c",
                "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 10).close()",
                OUTSIDE,
                &po.to_string(),
            ],
        )
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (events, alerts) = rig
        .run_until(&cg, |e| {
            connected_to(e, lo(1), pa) && connected_to(e, lo(2), po)
        })
        .await;
    let c = connects(&events);
    assert!(
        c.contains(&(lo(1).into(), pa, vec![ALLOWED.to_owned()])),
        "curl's connect names {ALLOWED}: {c:#?}"
    );
    assert!(
        c.contains(&(lo(2).into(), po, vec![OUTSIDE.to_owned()])),
        "python's connect names {OUTSIDE}: {c:#?}"
    );
    let egress = incidents(&alerts, "egress-violation");
    assert_eq!(egress.len(), 1, "{egress:#?}");
    assert!(egress[0].title.contains(OUTSIDE), "{}", egress[0].title);
    let conn = &egress[0].evidence.connections[0];
    assert_eq!(
        (conn.dst_port, conn.dst_names.as_slice()),
        (po, [OUTSIDE.to_owned()].as_slice())
    );
    let json = serde_json::to_value(&events).expect("json");
    assert!(
        json.as_array()
            .expect("array")
            .iter()
            .any(|e| e["dst_names"] == serde_json::json!([ALLOWED])),
        "dst_names in the events' JSON"
    );
}

/// An agent that forges DNS answers to itself (unsolicited, and served by its own "resolver"
/// on port 53 for its own query) gains nothing: the address stays nameless and the connect
/// is still outside the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_forging_answers_to_itself_gains_nothing() {
    let cg = TestCgroup::new("dns-spoof");
    let dns = Dnsmasq::start("spoof", 5, &[(ALLOWED, lo(1))]);
    let target = lo(3);
    let listener = TcpListener::bind((target, 0)).expect("target");
    let port = listener.local_addr().expect("addr").port();
    let policy = format!("egress = [\"{ALLOWED}:{port}\", \"{}:53\"]", lo(53));
    let Some(mut rig) = Rig::new("dnsspoof", &cg, &policy) else {
        return;
    };
    let script = r"
import socket, struct, sys
name, target, port, fake = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def qname(n):
    return b''.join(bytes([len(l)]) + l.encode() for l in n.split('.')) + b'\0'
def query(txid):
    return struct.pack('>HHHHHH', txid, 0x0100, 1, 0, 0, 0) + qname(name) + struct.pack('>HH', 1, 1)
def answer(txid):
    return (struct.pack('>HHHHHH', txid, 0x8180, 1, 1, 0, 0) + qname(name) + struct.pack('>HH', 1, 1)
            + struct.pack('>HHHIH', 0xc00c, 1, 1, 3600, 4) + socket.inet_aton(target))
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.bind(('127.0.0.1', 0))
client.settimeout(10)
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((fake, 53))
server.settimeout(10)
# 1. an answer nobody asked for, from port 53
server.sendto(answer(0x1234), client.getsockname())
client.recv(512)
# 2. a query to our own 'resolver', answered by it
client.sendto(query(0x4321), (fake, 53))
data, addr = server.recvfrom(512)
server.sendto(answer(0x4321), addr)
client.recv(512)
socket.create_connection((target, port), 10).close()
";
    let out = dns
        .agent(
            &cg,
            PYTHON,
            &[
                "-c",
                script,
                ALLOWED,
                &target.to_string(),
                &port.to_string(),
                &lo(9).to_string(),
            ],
        )
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (events, alerts) = rig.run_until(&cg, |e| connected_to(e, target, port)).await;
    let c = connects(&events);
    assert!(
        c.contains(&(target.into(), port, Vec::new())),
        "the forged name must not stick to {target}: {c:#?}"
    );
    let egress = incidents(&alerts, "egress-violation");
    assert!(
        egress.iter().any(|a| a
            .evidence
            .connections
            .iter()
            .any(|c| c.dst_port == port && c.dst_names.is_empty())),
        "the connect is outside the policy: {egress:#?}"
    );
    assert!(
        egress.iter().all(|a| !a.title.contains(ALLOWED)),
        "{egress:#?}"
    );
    drop(listener);
}

/// The agent's work: curl to the allowed name, Python to the other name, both through its
/// own resolver.
fn agent_work(dns: &Dnsmasq, cg: &TestCgroup, pa: u16, po: u16) {
    let url = format!("http://{ALLOWED}:{pa}/");
    let out = dns
        .agent(
            cg,
            "curl",
            &["-sS", "-o", "/dev/null", "--max-time", "10", &url],
        )
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    python_connect(dns, cg, OUTSIDE, po);
}

fn python_connect(dns: &Dnsmasq, cg: &TestCgroup, host: &str, port: u16) {
    let out = dns
        .agent(
            cg,
            PYTHON,
            &[
                "-c",
                "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 10).close()",
                host,
                &port.to_string(),
            ],
        )
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn connects_named(v: &serde_json::Value, name: &str) -> usize {
    v.as_array().map_or(0, |a| {
        a.iter()
            .filter(|e| e["kind"] == "connect" && e["dst_names"] == serde_json::json!([name]))
            .count()
    })
}

/// Learn, then enforce: `policy suggest` after a monitored run prints a policy that,
/// pasted back as the registration, makes a replay of the same work raise no alert. The
/// daemon's `connections` show the names.
#[test]
fn policy_suggest_pasted_back_makes_a_replay_alert_free() {
    let cg = TestCgroup::new("dns-suggest");
    let dns = Dnsmasq::start(
        "suggest",
        5,
        &[
            (ALLOWED, lo(1)),
            (OUTSIDE, lo(2)),
            ("witness.agentid.test", lo(4)),
        ],
    );
    let (pa, po, pw) = (http_server(lo(1)), http_server(lo(2)), http_server(lo(4)));
    let dir = Daemon::dir("dns-suggest");
    let id = "spiffe://test.example/agent/learner";
    let base = registration("learner", &cg);
    std::fs::write(dir.join("agents/a.toml"), &base).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };

    agent_work(&dns, &cg, pa, po);
    let conns = d.cli_until(&["connections", "--agent", id], |v| {
        connects_named(v, ALLOWED) >= 1 && connects_named(v, OUTSIDE) >= 1
    });
    assert!(connects_named(&conns, ALLOWED) >= 1, "{conns:#}");

    let out = Command::new(agentid_tests::agentid_bin())
        .arg("--socket")
        .arg(dir.join("agentid.sock"))
        .args(["policy", "suggest", "--agent", id, "--since", "1h"])
        .output()
        .expect("suggest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let suggested = String::from_utf8(out.stdout).expect("utf-8");
    for want in [
        format!("\"{ALLOWED}:{pa}\""),
        format!("\"{OUTSIDE}:{po}\""),
        format!("\"{}:53\"", lo(53)),
        format!("\"{PYTHON}\""),
    ] {
        assert!(
            suggested.contains(&want),
            "{want} missing from:\n{suggested}"
        );
    }

    // Pasted back: the registration now carries the suggested policy.
    std::fs::write(dir.join("agents/a.toml"), format!("{base}{suggested}")).expect("reg");
    let reloads = |d: &Daemon| d.log_text().matches("registry reloaded").count();
    let before = reloads(&d);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(d.child.id()).expect("pid"), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reloads(&d) <= before {
        assert!(Instant::now() < deadline, "no reload:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = d.log_text();
    assert!(
        !log.contains("agent registry:"),
        "the suggestion must load cleanly:\n{log}"
    );

    // The replay, then a witness outside the policy: once its alert is in, every alert
    // of the replay would be too.
    agent_work(&dns, &cg, pa, po);
    python_connect(&dns, &cg, "witness.agentid.test", pw);
    let alerts = d.cli_until(&["alerts", "--agent", id], |v| {
        v.as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["title"]
                    .as_str()
                    .is_some_and(|t| t.contains("witness.agentid.test"))
            })
        })
    });
    let policy_alerts: Vec<&serde_json::Value> = alerts
        .as_array()
        .expect("array")
        .iter()
        .filter(|a| a["rule"] == "egress-violation" || a["rule"] == "tool-violation")
        .collect();
    assert_eq!(
        policy_alerts.len(),
        1,
        "only the witness: {policy_alerts:#?}"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
