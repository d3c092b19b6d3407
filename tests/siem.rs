//! SIEM sinks against real receivers on loopback: rsyslog (TCP, TLS), and local HTTP
//! servers playing Splunk HEC, Elasticsearch `_bulk` and a webhook; plus delivery faults.
//! Nothing here sends traffic anywhere but 127.0.0.1.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers and receivers: a failed step is a failed test"
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
    let app = Router::new()
        .route("/services/collector/event", post(hec))
        .route("/services/collector/ack", post(hec_ack))
        .route("/_bulk", post(bulk))
        .route("/hook", post(hook))
        .with_state(srv);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    let want: Vec<String> = (0..st.spooled).map(|i| format!("u-{i}")).collect();
    assert_eq!(uids, want, "the same alerts, by uid, in order");
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

fn start_rsyslog(dir: &Path, tls: bool) -> Option<(Rsyslog, u16)> {
    let Some(bin) = rsyslogd() else {
        assert!(
            std::env::var("AGENTID_REQUIRE_BPF").as_deref() != Ok("1"),
            "rsyslogd is missing (install rsyslog rsyslog-gnutls) and AGENTID_REQUIRE_BPF=1"
        );
        eprintln!("skipping: rsyslogd not installed");
        return None;
    };
    let port = free_port();
    let d = dir.display();
    let (global_tls, module) = if tls {
        (
            format!(
                " DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                 DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" DefaultNetstreamDriverKeyFile=\"{d}/key.pem\""
            ),
            "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")",
        )
    } else {
        (String::new(), "module(load=\"imtcp\")")
    };
    let conf = format!(
        "global(workDirectory=\"{d}\" maxMessageSize=\"256k\"{global_tls})\n{module}\n\
         input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
         template(name=\"t\" type=\"string\" string=\"%msgid%\\t%structured-data%\\t%msg%\\n\")\n\
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
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
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
    let Some((rs, port)) = start_rsyslog(&dir, tls) else {
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
    for a in &alerts(n) {
        m.submit_alert(a);
    }
    wait_for(&m, "syslog delivery", |s| {
        s.iter().all(|s| s.delivered == n as u64)
    })
    .await;
    m.shutdown(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&rs.out).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= 2 * n || t0.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
