//! SIEM sinks against real receivers on loopback: rsyslog (TCP, TLS), and local HTTP
//! servers playing Splunk HEC, Elasticsearch `_bulk` and a webhook; plus delivery faults.
//! Nothing here sends traffic anywhere but 127.0.0.1.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers and receivers: a failed step is a failed test"
)]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agentid::{
    detect::Alert,
    outputs::{DropReason, OutputContext, SinkConfig, SinkManager, SinkStats},
};
use agentid_tests::{
    daemon::{Daemon, alerts_file, daemon_with_sinks, poll, sink_status, try_poll},
    raise_credential_reuse,
};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

fn tmp(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "agentid-siem-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn alerts(n: usize) -> Vec<Alert> {
    (0..n)
        .map(|i| {
            let mut a = Alert::sample();
            a.uid = format!("u-{i}");
            a.title = format!("t{i} | pipe = eq \"q\" ] \\ back\nnewline é");
            a.description = format!("d{i}\r\n{}", "x".repeat(i * 50));
            a
        })
        .collect()
}

fn start(
    sinks: Vec<Value>,
    spool: &Path,
) -> (
    SinkManager,
    tokio::sync::mpsc::Receiver<agentid::outputs::DropNotice>,
) {
    let cfg: Vec<SinkConfig> = sinks
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    SinkManager::start(
        &cfg,
        &OutputContext {
            spool_root: spool.to_owned(),
            hostname: "testhost".into(),
        },
    )
    .unwrap()
}

async fn wait_for(m: &SinkManager, what: &str, done: impl Fn(&[SinkStats]) -> bool) {
    let t0 = Instant::now();
    loop {
        let s = m.stats();
        if done(&s) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- HTTP receivers

#[derive(Default)]
struct Srv {
    /// Statuses to answer with before behaving normally.
    fail: Mutex<VecDeque<u16>>,
    requests: Mutex<Vec<(HeaderMap, String)>>,
    /// Per-item statuses for the next `_bulk` responses (consumed per item).
    bulk_items: Mutex<VecDeque<u16>>,
}

type S = State<Arc<Srv>>;

fn take_fail(s: &Srv) -> Option<StatusCode> {
    s.fail
        .lock()
        .unwrap()
        .pop_front()
        .map(|c| StatusCode::from_u16(c).unwrap())
}

async fn hec(State(s): S, h: HeaderMap, body: String) -> (StatusCode, String) {
    if let Some(c) = take_fail(&s) {
        return (c, r#"{"text":"busy","code":9}"#.into());
    }
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Splunk tok-123") {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"text":"Invalid token","code":4}"#.into(),
        );
    }
    s.requests.lock().unwrap().push((h, body));
    let n = s.requests.lock().unwrap().len();
    (
        StatusCode::OK,
        json!({"text": "Success", "code": 0, "ackId": n}).to_string(),
    )
}

async fn hec_ack(State(_s): S, h: HeaderMap, body: String) -> (StatusCode, String) {
    assert!(h.get("x-splunk-request-channel").is_some());
    let v: Value = serde_json::from_str(&body).unwrap();
    let id = v["acks"][0].as_u64().unwrap();
    (
        StatusCode::OK,
        json!({"acks": {id.to_string(): true}}).to_string(),
    )
}

async fn bulk(State(s): S, h: HeaderMap, body: String) -> (StatusCode, String) {
    if let Some(c) = take_fail(&s) {
        return (c, String::new());
    }
    assert_eq!(h.get("content-type").unwrap(), "application/x-ndjson");
    assert!(body.ends_with('\n'));
    let lines: Vec<&str> = body.lines().collect();
    let mut items = Vec::new();
    for pair in lines.chunks(2) {
        let action: Value = serde_json::from_str(pair[0]).unwrap();
        assert!(action["create"]["_id"].is_string());
        let _doc: Value = serde_json::from_str(pair[1]).unwrap();
        let status = s.bulk_items.lock().unwrap().pop_front().unwrap_or(201);
        if status == 201 {
            s.requests
                .lock()
                .unwrap()
                .push((h.clone(), pair[1].to_owned()));
        }
        items.push(json!({"create": {"status": status, "error": {"type": format!("e{status}"), "reason": "test"}}}));
    }
    (
        StatusCode::OK,
        json!({"errors": true, "items": items}).to_string(),
    )
}

async fn hook(State(s): S, h: HeaderMap, body: String) -> StatusCode {
    if let Some(c) = take_fail(&s) {
        return c;
    }
    s.requests.lock().unwrap().push((h, body));
    StatusCode::NO_CONTENT
}

async fn serve(srv: Arc<Srv>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(l, srv)
}

fn serve_on(l: tokio::net::TcpListener, srv: Arc<Srv>) -> SocketAddr {
    let app = Router::new()
        .route("/services/collector/event", post(hec))
        .route("/services/collector/ack", post(hec_ack))
        .route("/_bulk", post(bulk))
        .route("/hook", post(hook))
        .with_state(srv);
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

fn fast(mut v: Value) -> Value {
    v["retry_initial_ms"] = json!(20);
    v["retry_max_ms"] = json!(200);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_with_ack_and_503_burst() {
    let srv = Arc::new(Srv::default());
    srv.fail.lock().unwrap().extend([503, 503, 429]);
    let addr = serve(Arc::clone(&srv)).await;
    let dir = tmp("hec");
    let (m, _drops) = start(
        vec![fast(
            json!({"type": "splunk_hec", "url": format!("http://{addr}"), "token": "tok-123",
            "ack": true, "index": "sec", "batch_max": 7}),
        )],
        &dir,
    );
    let all = alerts(30);
    for a in &all {
        m.submit_alert(a);
    }
    wait_for(&m, "hec delivery", |s| s[0].delivered == 30).await;
    let st = &m.stats()[0];
    assert!(st.retried >= 3, "{st:?}");
    let reqs = srv.requests.lock().unwrap().clone();
    let mut uids = Vec::new();
    for (h, body) in &reqs {
        assert!(h.get("x-splunk-request-channel").is_some());
        // Envelopes stacked back to back.
        for env in serde_json::Deserializer::from_str(body).into_iter::<Value>() {
            let env = env.unwrap();
            assert_eq!(env["index"], "sec");
            assert_eq!(env["sourcetype"], "agentid:ocsf");
            assert!(env["time"].as_f64().unwrap() > 1.7e9);
            assert_eq!(env["event"]["class_uid"], 2004);
            uids.push(
                env["event"]["finding_info"]["uid"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 30);
    m.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_retries_429_items_and_dead_letters_400() {
    let srv = Arc::new(Srv::default());
    // First bulk: item 2 throttled, item 3 malformed.
    srv.bulk_items
        .lock()
        .unwrap()
        .extend([201, 429, 400, 201, 201]);
    let addr = serve(Arc::clone(&srv)).await;
    let dir = tmp("es");
    let (m, _drops) = start(
        vec![fast(
            json!({"type": "elasticsearch", "url": format!("http://{addr}/"), "api_key": "aWQ6a2V5",
            "name": "es"}),
        )],
        &dir,
    );
    let all = alerts(5);
    for a in &all {
        m.submit_alert(a);
    }
    wait_for(&m, "es delivery", |s| {
        s[0].delivered == 4 && s[0].dead_lettered == 1
    })
    .await;
    let st = &m.stats()[0];
    assert!(st.retried >= 1);
    let docs = srv.requests.lock().unwrap().clone();
    assert_eq!(docs.len(), 4);
    assert_eq!(docs[0].0.get("authorization").unwrap(), "ApiKey aWQ6a2V5");
    let ids: Vec<String> = docs
        .iter()
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["event"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        ids.contains(&"u-1".to_owned()),
        "the 429 item was retried: {ids:?}"
    );
    assert!(!ids.contains(&"u-2".to_owned()));
    let dl = std::fs::read_to_string(dir.join("es").join("dead-letter.jsonl")).unwrap();
    assert_eq!(dl.lines().count(), 1);
    let line: Value = serde_json::from_str(dl.trim()).unwrap();
    assert_eq!(line["uid"], "u-2");
    assert!(line["reason"].as_str().unwrap().contains("400"));
    m.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_hmac_filters_and_receiver_down_then_up() {
    // Reserve a port, leave it closed: the receiver is down.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let dir = tmp("hook");
    let (m, _drops) = start(
        vec![fast(
            json!({"type": "webhook", "url": format!("http://{addr}/hook"), "hmac_secret": "s3cret",
            "min_severity": "high", "rules": ["credential-reuse"]}),
        )],
        &dir,
    );
    let mut all = alerts(10);
    all[0].severity = agentid::detect::Severity::Low; // filtered out
    for a in &all {
        m.submit_alert(a);
    }
    wait_for(&m, "retries while down", |s| {
        s[0].retried > 0 && s[0].spooled == 9
    })
    .await;
    // Receiver comes up on that port.
    let srv = Arc::new(Srv::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(Arc::clone(&srv));
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    wait_for(&m, "delivery after the receiver came up", |s| {
        s[0].delivered == 9
    })
    .await;
    let reqs = srv.requests.lock().unwrap().clone();
    let mut n = 0;
    for (h, body) in &reqs {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"s3cret").unwrap();
        mac.update(body.as_bytes());
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            h.get("x-agentid-signature").unwrap().to_str().unwrap(),
            want
        );
        let arr: Vec<Value> = serde_json::from_str(body).unwrap();
        n += arr.len();
        assert!(arr.iter().all(|v| v["finding_info"]["uid"] != "u-0"));
    }
    assert_eq!(n, 9);
    m.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_delivery_redelivers_and_full_spool_reports_drops() {
    let srv = Arc::new(Srv::default());
    srv.fail.lock().unwrap().extend([503; 1000]);
    let addr = serve(Arc::clone(&srv)).await;
    let dir = tmp("kill");
    let cfg = || {
        vec![fast(
            json!({"type": "webhook", "url": format!("http://{addr}/hook"), "name": "w",
            "spool_max_bytes": 40_000}),
        )]
    };
    let (m, mut drops) = start(cfg(), &dir);
    let all = alerts(40);
    for a in &all {
        m.submit_alert(a);
    }
    wait_for(&m, "spooling and drops", |s| {
        s[0].spooled + s[0].dropped == 40 && s[0].retried > 0
    })
    .await;
    let st = m.stats()[0].clone();
    assert!(st.dropped > 0 && st.spooled > 0, "{st:?}");
    let notice = drops.try_recv().unwrap();
    assert_eq!(
        (notice.sink.as_str(), notice.reason),
        ("w", DropReason::SpoolFull)
    );
    // "SIGKILL": drop without shutdown while deliveries fail.
    drop(m);
    srv.fail.lock().unwrap().clear();
    let (m, _drops) = start(cfg(), &dir);
    wait_for(&m, "redelivery", |s| s[0].delivered == st.spooled).await;
    let mut uids: Vec<String> = srv
        .requests
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, b)| serde_json::from_str::<Vec<Value>>(b).unwrap())
        .map(|v| v["finding_info"]["uid"].as_str().unwrap().to_owned())
        .collect();
    uids.sort_by_key(|u| u[2..].parse::<u32>().unwrap());
    // At-least-once: a request the dropped manager had already handed to its HTTP
    // connection task may still arrive after the receiver recovered, and the restarted
    // manager sends it again; a repeat of a spooled uid is allowed, nothing else.
    uids.dedup();
    let want: Vec<String> = (0..st.spooled).map(|i| format!("u-{i}")).collect();
    assert_eq!(uids, want, "the same alerts, by uid");
    m.shutdown(Duration::from_secs(1)).await;
}

/// A TCP syslog receiver that accepts and then stops reading (a stalled peer): once the
/// kernel buffers are full the write times out (`timeout_secs`), the sink drops the
/// connection, reconnects and delivers the rest. What the stalled connection holds is read
/// at the end (its last frame may be cut); together, every alert uid arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_peer_that_stops_reading_is_dropped_and_retried() {
    use tokio::io::AsyncReadExt as _;
    type Bytes = Arc<Mutex<Vec<u8>>>;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Per connection, what was read from it; the first one is never read.
    let conns: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let stalled: Arc<Mutex<Option<tokio::net::TcpStream>>> = Arc::default();
    tokio::spawn({
        let conns = Arc::clone(&conns);
        let stalled = Arc::clone(&stalled);
        async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
                let first = {
                    let mut c = conns.lock().unwrap();
                    c.push(Arc::clone(&buf));
                    c.len() == 1
                };
                if first {
                    *stalled.lock().unwrap() = Some(s);
                    continue;
                }
                tokio::spawn(async move {
                    let mut chunk = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = s.read(&mut chunk).await {
                        buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                    }
                });
            }
        }
    });
    let dir = tmp("syslog-stall");
    let (m, _drops) = start(
        vec![fast(
            json!({"type": "syslog", "transport": "tcp", "name": "t",
            "address": addr.to_string(), "timeout_secs": 1, "batch_max": 4}),
        )],
        &dir,
    );
    // 64 alerts of 256 KiB: far more than a socket's send and receive buffers hold.
    let n: u64 = 64;
    let all: Vec<Alert> = (0..n)
        .map(|i| {
            let mut a = Alert::sample();
            a.uid = format!("u-{i}");
            a.description = "x".repeat(256 << 10);
            a
        })
        .collect();
    for a in &all {
        m.submit_alert(a);
    }
    wait_for(&m, "delivery after the stalled connection", |s| {
        s[0].delivered == n
    })
    .await;
    let st = m.stats()[0].clone();
    assert!(st.retried > 0, "{st:?}");
    let conns = conns.lock().unwrap().clone();
    assert!(conns.len() >= 2, "reconnected");
    // The stalled peer reads at last: what the kernel buffered, up to the sink's close.
    let mut s = stalled.lock().unwrap().take().unwrap();
    let mut held = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut held))
        .await
        .unwrap()
        .unwrap();
    *conns[0].lock().unwrap() = held;
    // Octet-counted frames; only the stalled connection may end in a cut frame.
    let mut uids = std::collections::BTreeSet::new();
    for (i, c) in conns.iter().enumerate() {
        let data = c.lock().unwrap().clone();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let cut = |what: &str| assert_eq!(i, 0, "{what} on a connection that was read");
            let Some(sp) = rest.iter().position(|&b| b == b' ') else {
                cut("a cut length");
                break;
            };
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            if rest.len() < sp + 1 + len {
                cut("a cut frame");
                break;
            }
            let msg = std::str::from_utf8(&rest[sp + 1..sp + 1 + len]).unwrap();
            let (_, params, _) = parse_rfc5424(msg);
            uids.insert(params.iter().find(|(k, _)| k == "uid").unwrap().1.clone());
            rest = &rest[sp + 1 + len..];
        }
    }
    let want: std::collections::BTreeSet<String> = (0..n).map(|i| format!("u-{i}")).collect();
    assert_eq!(uids, want);
    m.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------- rsyslog

fn rsyslogd() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

struct Rsyslog {
    child: Child,
    out: PathBuf,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// Whether something listens on UDP `port` of 127.0.0.1 (`/proc/net/udp`, state 07).
fn udp_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
    })
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// rsyslogd on 127.0.0.1 writing, one line per message, `%msgid%`, `%structured-data%` and
/// `%msg%` to `out.log`, or with `raw` `%protocol-version%`, `%msgid%` and the message as
/// received (`%rawmsg%`).
fn start_rsyslog(dir: &Path, transport: Transport, raw: bool) -> Option<(Rsyslog, u16)> {
    let port = if transport == Transport::Udp {
        free_udp_port()
    } else {
        free_port()
    };
    start_rsyslog_on(dir, transport, raw, port)
}

fn start_rsyslog_on(
    dir: &Path,
    transport: Transport,
    raw: bool,
    port: u16,
) -> Option<(Rsyslog, u16)> {
    let Some(bin) = rsyslogd() else {
        assert!(
            std::env::var("AGENTID_REQUIRE_BPF").as_deref() != Ok("1"),
            "rsyslogd is missing (install rsyslog rsyslog-gnutls) and AGENTID_REQUIRE_BPF=1"
        );
        eprintln!("skipping: rsyslogd not installed");
        return None;
    };
    let d = dir.display();
    let (global_tls, module) = if transport == Transport::Tls {
        (
            format!(
                " DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                 DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" DefaultNetstreamDriverKeyFile=\"{d}/key.pem\""
            ),
            "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")",
        )
    } else if transport == Transport::Udp {
        (String::new(), "module(load=\"imudp\")")
    } else {
        (String::new(), "module(load=\"imtcp\")")
    };
    let input = if transport == Transport::Udp {
        "imudp"
    } else {
        "imtcp"
    };
    let template = if raw {
        "%protocol-version%\\t%msgid%\\t%rawmsg%\\n"
    } else {
        "%msgid%\\t%structured-data%\\t%msg%\\n"
    };
    let conf = format!(
        "global(workDirectory=\"{d}\" maxMessageSize=\"256k\"{global_tls})\n{module}\n\
         input(type=\"{input}\" port=\"{port}\" address=\"127.0.0.1\")\n\
         template(name=\"t\" type=\"string\" string=\"{template}\")\n\
         action(type=\"omfile\" file=\"{d}/out.log\" template=\"t\")\n"
    );
    std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
    let child = Command::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(dir.join("rsyslog.conf"))
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .spawn()
        .unwrap();
    let r = Rsyslog {
        child,
        out: dir.join("out.log"),
    };
    let t0 = Instant::now();
    while if transport == Transport::Udp {
        !udp_listening(port)
    } else {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    } {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "rsyslogd did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((r, port))
}

fn make_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "agentid test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

async fn rsyslog_roundtrip(tls: bool) {
    let dir = tmp(if tls { "rsyslog-tls" } else { "rsyslog-tcp" });
    if tls {
        make_certs(&dir);
    }
    let transport = if tls { Transport::Tls } else { Transport::Tcp };
    let Some((rs, port)) = start_rsyslog(&dir, transport, false) else {
        return;
    };
    let mut sinks = Vec::new();
    for format in ["ocsf", "cef"] {
        let mut s = json!({"type": "syslog", "transport": if tls { "tls" } else { "tcp" },
            "address": format!("127.0.0.1:{port}"), "format": format, "name": format});
        if tls {
            s["ca_file"] = json!(dir.join("ca.pem"));
            s["server_name"] = json!("localhost");
        }
        sinks.push(fast(s));
    }
    let (m, _drops) = start(sinks, &dir.join("spool"));
    let n = 25;
    let lines = deliver_and_read(m, n, &rs.out, "syslog delivery").await;
    assert_eq!(
        lines.len(),
        2 * n,
        "every alert arrives once per format:\n{}",
        lines.join("\n")
    );
    let (mut ocsf, mut cef) = (Vec::new(), Vec::new());
    for l in &lines {
        let mut f = l.splitn(3, '\t');
        let (msgid, sd, msg) = (
            f.next().unwrap(),
            f.next().unwrap(),
            f.next().unwrap().trim_start(),
        );
        assert_eq!(msgid, "credential-reuse");
        assert!(
            sd.starts_with("[agentid@32473 rule=\"credential-reuse\" uid=\"u-"),
            "{sd}"
        );
        if msg.starts_with("CEF:0|") {
            // Header: 7 unescaped pipes before the extension.
            let mut pipes = 0;
            let mut esc = false;
            for c in msg.chars() {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '|') => pipes += 1,
                    _ => {}
                }
            }
            assert_eq!(pipes, 7, "{msg}");
            let uid = msg
                .split("externalId=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            cef.push(uid.to_owned());
        } else {
            let v: Value = serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
            assert_eq!(v["class_uid"], 2004);
            ocsf.push(v["finding_info"]["uid"].as_str().unwrap().to_owned());
        }
    }
    for got in [&mut ocsf, &mut cef] {
        got.sort();
        let mut want: Vec<String> = (0..n).map(|i| format!("u-{i}")).collect();
        want.sort();
        assert_eq!(*got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_tcp_ocsf_and_cef() {
    rsyslog_roundtrip(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_tls_ocsf_and_cef() {
    rsyslog_roundtrip(true).await;
}

/// Parses one RFC 5424 message (§6) strictly: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID
/// MSGID SD [SP MSG]`. Returns the MSGID, the SD params (unescaped) and the MSG.
fn parse_rfc5424(m: &str) -> (String, Vec<(String, String)>, String) {
    let rest = m.strip_prefix('<').unwrap_or_else(|| panic!("no PRI: {m}"));
    let (pri, rest) = rest.split_once('>').unwrap();
    assert!(
        (1..=3).contains(&pri.len()) && pri.parse::<u8>().is_ok_and(|p| p <= 191),
        "PRI {pri}: {m}"
    );
    let rest = rest
        .strip_prefix("1 ")
        .unwrap_or_else(|| panic!("VERSION: {m}"));
    let mut f = rest.splitn(6, ' ');
    let ts = f.next().unwrap();
    let b = ts.as_bytes();
    assert!(
        ts.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && (ts.ends_with('Z') || ts.as_bytes()[ts.len() - 6] == b'+'),
        "TIMESTAMP {ts}: {m}"
    );
    let mut fields = Vec::new();
    for max in [255, 48, 128, 32] {
        let v = f.next().unwrap();
        assert!(
            !v.is_empty() && v.len() <= max && v.bytes().all(|c| (33..=126).contains(&c)),
            "header field {v:?}: {m}"
        );
        fields.push(v);
    }
    let sd_and_msg = f.next().unwrap();
    let mut params = Vec::new();
    let mut chars = sd_and_msg.char_indices().peekable();
    let msg_at = if sd_and_msg.starts_with('-') {
        1
    } else {
        // SD-ELEMENTs: "[" SD-ID *(SP SD-PARAM) "]", PARAM-VALUE escaping `"` `\` `]`.
        let mut end = 0;
        while let Some(&(_, '[')) = chars.peek() {
            chars.next();
            let mut id = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == ' ' || c == ']' {
                    break;
                }
                id.push(c);
                chars.next();
            }
            assert!(!id.is_empty(), "SD-ID: {m}");
            loop {
                match chars.next() {
                    Some((i, ']')) => {
                        end = i + 1;
                        break;
                    }
                    Some((_, ' ')) => {
                        let mut name = String::new();
                        for (_, c) in chars.by_ref() {
                            if c == '=' {
                                break;
                            }
                            assert!(c != ' ' && c != ']' && c != '"', "SD-NAME: {m}");
                            name.push(c);
                        }
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "{m}");
                        let mut value = String::new();
                        loop {
                            match chars.next().unwrap_or_else(|| panic!("open value: {m}")).1 {
                                '\\' => {
                                    let (_, c) = chars.next().unwrap();
                                    if !matches!(c, '"' | '\\' | ']') {
                                        value.push('\\');
                                    }
                                    value.push(c);
                                }
                                '"' => break,
                                ']' => panic!("unescaped ] in a PARAM-VALUE: {m}"),
                                c => value.push(c),
                            }
                        }
                        params.push((name, value));
                    }
                    other => panic!("SD element at {other:?}: {m}"),
                }
            }
        }
        assert!(end > 0, "STRUCTURED-DATA: {m}");
        end
    };
    let msg = match &sd_and_msg[msg_at..] {
        "" => "",
        r => r
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("SP before MSG: {m}")),
    };
    (fields[3].to_owned(), params, msg.to_owned())
}

#[test]
fn rfc5424_parser_rejects_what_it_should() {
    let ok = "<131>1 2026-11-28T16:00:00.123456Z h agentid 42 credential-reuse [agentid@32473 rule=\"a\\]b\\\"c\" uid=\"u-1\"] body";
    let (msgid, params, msg) = parse_rfc5424(ok);
    assert_eq!(
        (msgid.as_str(), params[0].1.as_str(), msg.as_str()),
        ("credential-reuse", "a]b\"c", "body")
    );
    for bad in [
        "<131>2 2026-11-28T16:00:00Z h a 1 m - x",
        "<131>1 2026-11-28T16:00:00Z h a 1 m [x k=\"v]\"] y",
        "131>1 2026-11-28T16:00:00Z h a 1 m - x",
        "<131>1 2026-11-28T16:00:00Z h a 1 m [x k=\"v\"]y",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_rfc5424(bad)).is_err(),
            "{bad}"
        );
    }
}

/// UDP syslog into a real rsyslogd (`imudp`): every alert arrives once per format, each
/// datagram one RFC 5424 message that rsyslog parsed as version 1 and that parses here
/// field by field, its `uid` param matching the payload's alert uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_udp_ocsf_and_cef() {
    let dir = tmp("rsyslog-udp");
    let Some((rs, port)) = start_rsyslog(&dir, Transport::Udp, true) else {
        return;
    };
    let sinks = ["ocsf", "cef"]
        .iter()
        .map(|format| {
            fast(json!({"type": "syslog", "transport": "udp",
                "address": format!("127.0.0.1:{port}"), "format": format, "name": format}))
        })
        .collect();
    let (m, _drops) = start(sinks, &dir.join("spool"));
    let n = 25;
    let lines = deliver_and_read(m, n, &rs.out, "udp syslog delivery").await;
    assert_eq!(
        lines.len(),
        2 * n,
        "one message per alert and format:\n{}",
        lines.join("\n")
    );
    let (mut ocsf, mut cef) = (Vec::new(), Vec::new());
    for l in &lines {
        let mut f = l.splitn(3, '\t');
        let (version, rs_msgid, raw) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        assert_eq!(version, "1", "rsyslog parsed RFC 5424: {l}");
        let (msgid, params, msg) = parse_rfc5424(raw);
        assert_eq!(
            (rs_msgid, msgid.as_str()),
            ("credential-reuse", "credential-reuse")
        );
        let uids: Vec<&String> = params
            .iter()
            .filter(|(k, _)| k == "uid")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(uids.len(), 1, "one uid param: {raw}");
        let uid = uids[0].clone();
        assert!(params.contains(&("rule".to_owned(), "credential-reuse".to_owned())));
        if msg.starts_with("CEF:0|") {
            let ext = msg.split("externalId=").nth(1).unwrap();
            assert_eq!(ext.split(' ').next().unwrap(), uid);
            cef.push(uid);
        } else {
            let v: Value = serde_json::from_str(&msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
            assert_eq!(v["class_uid"], 2004);
            assert_eq!(v["finding_info"]["uid"], uid.as_str());
            ocsf.push(uid);
        }
    }
    let mut want: Vec<String> = (0..n).map(|i| format!("u-{i}")).collect();
    want.sort();
    for got in [&mut ocsf, &mut cef] {
        got.sort();
        assert_eq!(*got, want, "each alert exactly once");
    }
}

// ---------------------------------------------------------------- the real daemon

/// A webhook receiver for tests that drive the daemon (on its own runtime: those tests
/// block on the CLI). It can hold requests (a receiver hanging mid-delivery) and answer
/// each one only after a delay (a slow receiver).
struct Hook {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    g: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    /// Requests from this index on are held until `released`.
    hold_from: Mutex<Option<usize>>,
    released: std::sync::atomic::AtomicBool,
    /// Held requests answer 503 (not accepted) once released.
    fail_held: std::sync::atomic::AtomicBool,
    /// Every answer is delayed this long.
    delay: Mutex<Duration>,
    /// The alert uids of each request, as it arrived and once accepted (answered 204).
    arrived: Mutex<Vec<Vec<String>>>,
    accepted: Mutex<Vec<Vec<String>>>,
}

impl Gate {
    fn accepted_uids(&self) -> std::collections::BTreeSet<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}

async fn gated_hook(State(g): State<Arc<Gate>>, body: String) -> StatusCode {
    use std::sync::atomic::Ordering::SeqCst;
    let uids: Vec<String> = serde_json::from_str::<Vec<Value>>(&body)
        .unwrap()
        .iter()
        .map(|v| v["finding_info"]["uid"].as_str().unwrap().to_owned())
        .collect();
    let index = {
        let mut a = g.arrived.lock().unwrap();
        a.push(uids.clone());
        a.len() - 1
    };
    let held = g.hold_from.lock().unwrap().is_some_and(|n| index >= n);
    if held {
        while !g.released.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if g.fail_held.load(SeqCst) {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let delay = *g.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    g.accepted.lock().unwrap().push(uids);
    StatusCode::NO_CONTENT
}

impl Hook {
    fn start(g: Gate) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let g = Arc::new(g);
        let app = Router::new()
            .route("/hook", post(gated_hook))
            .with_state(Arc::clone(&g));
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = l.local_addr().unwrap();
        rt.spawn(async move { axum::serve(l, app).await.unwrap() });
        Self { _rt: rt, addr, g }
    }
}

/// The daemon is killed (SIGKILL) while a webhook batch is in flight (the receiver holds it)
/// and the rest wait in the spool; restarted on the same state dir, it delivers every
/// alert it had raised. Checked by uid: the receiver's accepted uids cover every uid of
/// the alerts file as it was at the kill, the held batch's uids among them; nothing the
/// daemon did not raise arrives (a duplicate can only be a repeat of a raised uid).
#[test]
fn daemon_sigkilled_mid_delivery_delivers_every_alert_after_restart() {
    const N: usize = 5;
    let hook = Hook::start(Gate {
        hold_from: Mutex::new(Some(1)),
        ..Gate::default()
    });
    let (dir, a, b) = daemon_with_sinks(
        "siem-kill",
        &format!(
            "[[sinks]]\ntype = \"webhook\"\nname = \"w\"\nurl = \"http://{}/hook\"\nbatch_max = 2\n\
             retry_initial_ms = 50\nretry_max_ms = 500\n",
            hook.addr
        ),
    );
    let Some(d) = Daemon::start(&dir) else { return };
    for i in 0..N {
        raise_credential_reuse(&a, &b, &format!("k{i}"));
    }
    // Every alert raised so far is spooled (the alerts file is read first: the sink may
    // have more), one batch was accepted and the next is held in flight.
    let raised = poll(
        "alerts spooled, a batch in flight",
        Duration::from_mins(1),
        || {
            let alerts = alerts_file(&dir);
            let reuse: std::collections::BTreeSet<&String> = alerts
                .iter()
                .filter(|(r, _)| r == "credential-reuse")
                .map(|(_, u)| u)
                .collect();
            let spooled = sink_status(&d, "w")["spooled"].as_u64().unwrap();
            let in_flight = hook.g.arrived.lock().unwrap().len() >= 2;
            (reuse.len() == N && spooled >= alerts.len() as u64 && in_flight).then(|| {
                alerts
                    .into_iter()
                    .map(|(_, u)| u)
                    .collect::<std::collections::BTreeSet<String>>()
            })
        },
    );
    let held = hook.g.arrived.lock().unwrap()[1].clone();
    let before = hook.g.accepted_uids();
    assert!(!held.is_empty());
    assert!(
        raised.len() > before.len() + held.len(),
        "records left in the spool at the kill: raised {raised:?}, accepted {before:?}"
    );
    d.kill9();
    {
        use std::sync::atomic::Ordering::SeqCst;
        *hook.g.hold_from.lock().unwrap() = None;
        hook.g.fail_held.store(true, SeqCst);
        hook.g.released.store(true, SeqCst);
    }

    let d = Daemon::start(&dir).unwrap();
    // On a timeout the assertion below names the missing uids.
    let got = try_poll(Duration::from_mins(1), || {
        let got = hook.g.accepted_uids();
        raised.is_subset(&got).then_some(got)
    })
    .unwrap_or_else(|| hook.g.accepted_uids());
    let missing: Vec<&String> = raised.difference(&got).collect();
    assert_eq!(
        missing,
        Vec::<&String>::new(),
        "every raised alert delivered"
    );
    for u in &held {
        assert!(
            got.contains(u),
            "the batch in flight at the kill was redelivered: {u}"
        );
    }
    let all: std::collections::BTreeSet<String> =
        alerts_file(&dir).into_iter().map(|(_, u)| u).collect();
    let foreign: Vec<&String> = got.difference(&all).collect();
    assert_eq!(foreign, Vec::<&String>::new(), "only raised uids arrive");
    let st = sink_status(&d, "w");
    assert!(st["delivered"].as_u64() > Some(0), "{st:#}");
    eprintln!(
        "raised {}, accepted before the kill {}, held in flight {}, accepted in all {} in {} requests",
        raised.len(),
        before.len(),
        held.len(),
        got.len(),
        hook.g.accepted.lock().unwrap().len()
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webhook receiver taking 3 s per request does not hold up the file sink, which has
/// every alert while the slow one is still behind, nor the event pipeline: an exec made
/// meanwhile shows up in `agentid events`. The slow sink gets everything in the end.
#[test]
fn a_slow_receiver_holds_up_neither_other_sinks_nor_the_pipeline() {
    const N: usize = 4;
    let hook = Hook::start(Gate {
        delay: Mutex::new(Duration::from_secs(3)),
        ..Gate::default()
    });
    let out = std::env::temp_dir().join(format!("agentid-siem-slow-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let (dir, a, b) = daemon_with_sinks(
        "siem-slow",
        &format!(
            "[[sinks]]\ntype = \"webhook\"\nname = \"slow\"\nurl = \"http://{}/hook\"\nbatch_max = 1\n\
             [[sinks]]\ntype = \"file\"\nname = \"f\"\npath = \"{}\"\n",
            hook.addr,
            out.display()
        ),
    );
    let Some(d) = Daemon::start(&dir) else { return };
    for i in 0..N {
        raise_credential_reuse(&a, &b, &format!("s{i}"));
    }
    let raised = poll(
        "the file sink has every alert",
        Duration::from_mins(1),
        || {
            let raised: std::collections::BTreeSet<String> =
                alerts_file(&dir).into_iter().map(|(_, u)| u).collect();
            let in_file: std::collections::BTreeSet<String> = std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["finding_info"]["uid"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            let reuse = alerts_file(&dir)
                .into_iter()
                .filter(|(r, _)| r == "credential-reuse")
                .map(|(_, u)| u)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            (reuse >= N && raised == in_file).then_some(raised)
        },
    );
    let slow = hook.g.accepted_uids();
    assert!(
        slow.len() < raised.len(),
        "the slow receiver is still behind ({} of {}) when the file sink is done",
        slow.len(),
        raised.len()
    );
    // The pipeline keeps going: a new exec is attributed and queryable meanwhile.
    let marker = format!("siem-slow-marker-{}", std::process::id());
    assert!(
        a.command("/bin/echo")
            .arg(&marker)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    d.cli_until(
        &[
            "events",
            "--agent",
            "spiffe://test.example/agent/alpha",
            "--kind",
            "exec",
        ],
        |v| {
            v.as_array()
                .is_some_and(|e| e.iter().any(|e| e["argv"][1] == marker.as_str()))
        },
    );
    let slow_now = hook.g.accepted_uids().len();
    assert!(
        slow_now < raised.len(),
        "events flowed while the slow sink was behind ({slow_now} of {})",
        raised.len()
    );
    // Nothing lost on the slow sink either.
    let got = try_poll(Duration::from_mins(2), || {
        let got = hook.g.accepted_uids();
        raised.is_subset(&got).then_some(got)
    })
    .unwrap_or_else(|| hook.g.accepted_uids());
    let missing: Vec<&String> = raised.difference(&got).collect();
    assert_eq!(missing, Vec::<&String>::new());
    assert!(d.stop().success());
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- benchmark (by hand)

/// Submits `all` to the one sink of `m` and waits until the receiver accepted them all:
/// the elapsed time from the first submission (encode, spool with fsync, send).
async fn time_delivery(m: &SinkManager, all: &[Alert]) -> Duration {
    let t0 = Instant::now();
    for a in all {
        m.submit_alert(a);
    }
    let n = all.len() as u64;
    loop {
        let s = &m.stats()[0];
        assert_eq!((s.dropped, s.dead_lettered), (0, 0), "{s:?}");
        if s.delivered >= n {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_mins(10), "{s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn lines_of(rs: &Rsyslog) -> usize {
    std::fs::read_to_string(&rs.out).map_or(0, |t| t.lines().count())
}

/// `n` typical alerts (`Alert::sample`, two agents with evidence), uids `b-0`...
fn bench_alerts(n: usize) -> Vec<Alert> {
    (0..n)
        .map(|i| {
            let mut a = Alert::sample();
            a.uid = format!("b-{i}");
            a
        })
        .collect()
}

/// Lines rsyslog wrote, once `n` are there or none came for 5 s.
async fn rsyslog_lines(rs: &Rsyslog, n: usize) -> usize {
    let (mut last, mut since) = (lines_of(rs), Instant::now());
    loop {
        let got = lines_of(rs);
        if got >= n || since.elapsed() > Duration::from_secs(5) {
            return got;
        }
        if got != last {
            (last, since) = (got, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receiver down for `outage` with `alerts` spooled, then up: the time from "listening
/// again" to the first acceptance (the backoff still running) and to an empty spool.
/// Default retry settings (500 ms doubling to 30 s, ±25 % jitter).
async fn time_recovery(
    sink: Value,
    spool: &Path,
    alerts: &[Alert],
    outage: Duration,
    up: impl FnOnce() -> Box<dyn std::any::Any>,
) -> (Duration, Duration) {
    let (m, _drops) = start(vec![sink], spool);
    for a in alerts {
        m.submit_alert(a);
    }
    let n = alerts.len() as u64;
    wait_for(&m, "spooled while down", |s| {
        s[0].spooled == n && s[0].retried > 0
    })
    .await;
    // The outage itself: part of the scenario, not a synchronisation.
    tokio::time::sleep(outage).await;
    let receiver = up();
    let t_up = Instant::now();
    let mut first = None;
    loop {
        let s = &m.stats()[0];
        if first.is_none() && s.delivered > 0 {
            first = Some(t_up.elapsed());
        }
        if s.delivered >= n && s.pending_bytes == 0 {
            break;
        }
        assert!(t_up.elapsed() < Duration::from_mins(5), "{s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let empty = t_up.elapsed();
    m.shutdown(Duration::from_secs(1)).await;
    drop(receiver);
    (first.unwrap_or(empty), empty)
}

/// Delivery throughput per sink type against local receivers (rsyslog for syslog, the
/// HTTP receivers above for HEC, `_bulk` and webhook), and the recovery time after an
/// outage. Figures only, no thresholds. Run by hand, in release:
///
/// `CARGO_TARGET_DIR=… cargo test --release -p agentid-tests --test siem -- --ignored --nocapture sink_bench`
///
/// `AGENTID_SINK_BENCH_N` alerts per sink (default 4000, at most 4000: the queue in front
/// of a spool holds 4096), `AGENTID_SINK_BENCH_REPS` runs per sink (default 5, the median
/// is reported), `AGENTID_SINK_BENCH_OUTAGE_S` the outage (default 10).
#[ignore = "benchmark, run by hand: see the doc comment"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_bench_throughput_and_recovery() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = usize::try_from(env("AGENTID_SINK_BENCH_N", 4000).min(4000)).unwrap();
    let outage = Duration::from_secs(env("AGENTID_SINK_BENCH_OUTAGE_S", 10));
    let reps = usize::try_from(env("AGENTID_SINK_BENCH_REPS", 5).max(1)).unwrap();
    let all = bench_alerts(n);
    let dir = tmp("bench");
    let srv = Arc::new(Srv::default());
    let addr = serve(Arc::clone(&srv)).await;
    let sub = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (udp_dir, tcp_dir, tls_dir) = (sub("rs-udp"), sub("rs-tcp"), sub("rs-tls"));
    make_certs(&tls_dir);
    let (udp, udp_port) = start_rsyslog(&udp_dir, Transport::Udp, false).unwrap();
    let (tcp, tcp_port) = start_rsyslog(&tcp_dir, Transport::Tcp, false).unwrap();
    let (tls, tls_port) = start_rsyslog(&tls_dir, Transport::Tls, false).unwrap();
    let syslog = |t: &str, port: u16| {
        let mut s = json!({"type": "syslog", "transport": t,
            "address": format!("127.0.0.1:{port}"), "format": "ocsf"});
        if t == "tls" {
            s["ca_file"] = json!(tls_dir.join("ca.pem"));
            s["server_name"] = json!("localhost");
        }
        s
    };
    let cases: Vec<(&str, Value, Option<&Rsyslog>)> = vec![
        (
            "file",
            json!({"type": "file", "path": dir.join("out.jsonl")}),
            None,
        ),
        ("syslog udp", syslog("udp", udp_port), Some(&udp)),
        ("syslog tcp", syslog("tcp", tcp_port), Some(&tcp)),
        ("syslog tls", syslog("tls", tls_port), Some(&tls)),
        (
            "splunk_hec",
            json!({"type": "splunk_hec", "url": format!("http://{addr}"), "token": "tok-123"}),
            None,
        ),
        (
            "splunk_hec ack",
            json!({"type": "splunk_hec", "url": format!("http://{addr}"), "token": "tok-123", "ack": true}),
            None,
        ),
        (
            "elasticsearch",
            json!({"type": "elasticsearch", "url": format!("http://{addr}/")}),
            None,
        ),
        (
            "webhook",
            json!({"type": "webhook", "url": format!("http://{addr}/hook")}),
            None,
        ),
    ];
    let mut report = vec![format!(
        "| sink (batch_max 100) | {n} alerts delivered in (median of {reps}) | alerts/s median (min–max) | receiver got, per run |"
    )];
    report.push("|---|---|---|---|".into());
    for (i, (label, cfg, rs)) in cases.into_iter().enumerate() {
        let mut runs = Vec::new();
        let mut received = Vec::new();
        for r in 0..reps {
            let before = rs.map_or(0, lines_of);
            let (m, _drops) = start(vec![cfg.clone()], &dir.join(format!("spool-{i}-{r}")));
            runs.push(time_delivery(&m, &all).await);
            m.shutdown(Duration::from_secs(1)).await;
            received.push(match rs {
                Some(rs) => (rsyslog_lines(rs, before + n).await - before).to_string(),
                None => "all".into(),
            });
        }
        runs.sort();
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let median = runs[runs.len() / 2];
        report.push(format!(
            "| {label} | {:.2} s | {:.0} ({:.0}–{:.0}) | {} |",
            median.as_secs_f64(),
            rate(median),
            rate(runs[runs.len() - 1]),
            rate(runs[0]),
            received.join(", ")
        ));
        eprintln!("{}", report.last().unwrap());
    }
    drop((udp, tcp, tls));

    report.extend(bench_recovery(&dir, &all, outage).await);
    println!("\n{}\n", report.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The recovery rows of the benchmark: webhook and syslog TCP (rsyslog), each down for
/// `outage` with `all` spooled.
async fn bench_recovery(dir: &Path, all: &[Alert], outage: Duration) -> Vec<String> {
    let n = all.len();
    let mut report = vec![String::new()];
    report.push(format!(
        "| recovery: {n} alerts spooled, receiver down {} s | up → first accepted | up → spool empty |",
        outage.as_secs()
    ));
    report.push("|---|---|---|".into());
    // Webhook: the port reserved, closed, then served.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = l.local_addr().unwrap();
    drop(l);
    let srv2 = Arc::new(Srv::default());
    let (first, empty) = time_recovery(
        json!({"type": "webhook", "url": format!("http://{hook_addr}/hook")}),
        &dir.join("spool-rec-hook"),
        all,
        outage,
        || {
            let l = std::net::TcpListener::bind(hook_addr).unwrap();
            l.set_nonblocking(true).unwrap();
            serve_on(tokio::net::TcpListener::from_std(l).unwrap(), srv2);
            Box::new(())
        },
    )
    .await;
    report.push(format!(
        "| webhook | {:.2} s | {:.2} s |",
        first.as_secs_f64(),
        empty.as_secs_f64()
    ));
    eprintln!("{}", report.last().unwrap());
    // Syslog TCP: rsyslog started on the port after the outage.
    let port = free_port();
    let rec_dir = dir.join("rs-rec");
    std::fs::create_dir_all(&rec_dir).unwrap();
    let (first, empty) = time_recovery(
        json!({"type": "syslog", "transport": "tcp",
            "address": format!("127.0.0.1:{port}"), "format": "ocsf"}),
        &dir.join("spool-rec-syslog"),
        all,
        outage,
        || Box::new(start_rsyslog_on(&rec_dir, Transport::Tcp, false, port).unwrap()),
    )
    .await;
    report.push(format!(
        "| syslog tcp (rsyslog) | {:.2} s | {:.2} s |",
        first.as_secs_f64(),
        empty.as_secs_f64()
    ));
    report
}

/// Submits `n` alerts, waits until every sink delivered them, stops the manager, and returns
/// the receiver's output lines once it holds two per alert (one per format) or after 10 s.
async fn deliver_and_read(m: SinkManager, n: usize, out: &Path, what: &str) -> Vec<String> {
    for a in &alerts(n) {
        m.submit_alert(a);
    }
    wait_for(&m, what, |s| s.iter().all(|s| s.delivered == n as u64)).await;
    m.shutdown(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= 2 * n || t0.elapsed() > Duration::from_secs(10) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
