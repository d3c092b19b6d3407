//! Fuzz targets: every parser and encoder that sees bytes from outside (the kernel, a
//! config or registration file, an API request, an audit log on disk, a workload's
//! arguments) as a function of one byte slice that must never panic.
//!
//! Two drivers share them: `agentid-fuzz` (stable, coverage-free: seeded PRNG mutations of
//! the seeds below and the corpus under `tests/fuzz/corpus/TARGET/`, run by
//! `cargo xtask fuzz`) and the coverage-guided libFuzzer crate in `tests/fuzz/`, built with
//! the address sanitizer (`scripts/fuzz-coverage.sh`, stable with `RUSTC_BOOTSTRAP=1`).
//! Besides "no panic", targets check the properties the rest of the system relies on (one
//! line per CEF/table row, JSON that parses back, frame
//! lengths), with `assert!`: a broken property is a crash like any other.
#![expect(
    clippy::expect_used,
    clippy::missing_panics_doc,
    reason = "a fuzz target reports a broken property by panicking"
)]
use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use agentid::{
    attribution::AttributedEvent,
    audit::{AuditLog, AuditOptions},
    config::Config,
    credentials::{FingerprintKey, Scanner},
    detect::Alert,
    event::{Detail, EventKind},
    identity::Registry,
    outputs::encode::{EncodeContext, cef, ecs, ocsf, syslog},
    sensor::decode::{Clock, decode},
};

/// One fuzz target: its name, the function, and built-in seeds.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "decode",
        run: decode_record,
        seeds: decode_seeds,
    },
    Target {
        name: "config",
        run: config,
        seeds: config_seeds,
    },
    Target {
        name: "registry",
        run: registry,
        seeds: registry_seeds,
    },
    Target {
        name: "since",
        run: since,
        seeds: since_seeds,
    },
    Target {
        name: "api",
        run: api,
        seeds: api_seeds,
    },
    Target {
        name: "encode",
        run: encode,
        seeds: encode_seeds,
    },
    Target {
        name: "credentials",
        run: credentials,
        seeds: credentials_seeds,
    },
    Target {
        name: "audit",
        run: audit,
        seeds: audit_seeds,
    },
];

/// `tests/fuzz/corpus/NAME`: seeds kept in the tree (crash reproducers included).
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

/// Splits `data` into `n` fields at `0xff` bytes (never valid UTF-8, so a separator no
/// string field needs), lossily decoded.
fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |&b| b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}

// ---- kernel records -------------------------------------------------------------------

fn decode_record(data: &[u8]) {
    let clock = Clock::now();
    let Ok(ev) = decode(data, &clock) else { return };
    // A decoded event survives the trace printers: one JSON object per line, one table
    // row per line.
    let a = attributed(ev);
    check_trace_output(&a);
}

fn attributed(event: agentid::event::Event) -> AttributedEvent {
    let mut a = agentid::audit::sample_event("fuzz", 1);
    a.event = event;
    a
}

/// The invariants `agentid trace` output must keep for any event.
pub fn check_trace_output(a: &AttributedEvent) {
    let json = serde_json::to_string(a).expect("event serialises");
    assert!(!json.contains('\n'), "JSON line holds a newline: {json}");
    let back: serde_json::Value = serde_json::from_str(&json).expect("JSON parses back");
    assert!(back.is_object());
    let mut row = Vec::new();
    agentid::cli::trace::write_row(&mut row, a).expect("row");
    let row = String::from_utf8(row).expect("row is UTF-8");
    assert_eq!(
        row.matches('\n').count(),
        1,
        "table row is not one line: {row:?}"
    );
    assert!(row.ends_with('\n'));
    assert!(
        !row.contains('\r'),
        "table row holds a carriage return: {row:?}"
    );
}

fn decode_seeds() -> Vec<Vec<u8>> {
    use agentid_ebpf::{
        ExecRecord, ExitRecord, ForkRecord, RequestRecord, SockRecord, kind, request_source,
    };
    fn bytes<T: Copy>(r: &T) -> Vec<u8> {
        // SAFETY: the record types are repr(C) without padding (checked at compile time in
        // agentid-ebpf), so every byte is initialised.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(r).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }
    // SAFETY: all-zero is a valid value of these plain-integer records.
    let mut exec: ExecRecord = unsafe { std::mem::zeroed() };
    exec.header.kind = kind::EXEC;
    exec.header.tgid = 42;
    exec.header.tid = 42;
    exec.header.comm[..4].copy_from_slice(b"curl");
    exec.filename[..13].copy_from_slice(b"/usr/bin/curl");
    exec.filename_len = 13;
    exec.argv[..18].copy_from_slice(b"curl\0-s\0http://x\0\0");
    exec.argv_len = 17;
    exec.env[..14].copy_from_slice(b"HOME=/root\0A=b");
    exec.env_len = 14;
    // SAFETY: as above.
    let mut fork: ForkRecord = unsafe { std::mem::zeroed() };
    fork.header.kind = kind::FORK;
    fork.child_tgid = 43;
    // SAFETY: as above.
    let mut exit: ExitRecord = unsafe { std::mem::zeroed() };
    exit.header.kind = kind::EXIT;
    exit.status = 9;
    // SAFETY: as above.
    let mut sock: SockRecord = unsafe { std::mem::zeroed() };
    sock.header.kind = kind::CONNECT;
    sock.family = 2;
    sock.port = 443;
    let mut sock6 = sock;
    sock6.header.kind = kind::SEND;
    sock6.family = 10;
    // SAFETY: as above.
    let mut request: Box<RequestRecord> = Box::new(unsafe { std::mem::zeroed() });
    request.header.kind = kind::REQUEST;
    request.source = request_source::SSL_WRITE_EX;
    let head =
        b"POST /v1/x?key=v HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer t\r\n\r\n";
    request.data[..head.len()].copy_from_slice(head);
    request.captured = u32::try_from(head.len()).unwrap_or(0);
    request.total_len = u64::from(request.captured);
    let mut h2 = request.clone();
    h2.source = request_source::NGHTTP2;
    h2.captured = 3;
    vec![
        bytes(&exec),
        bytes(&fork),
        bytes(&exit),
        bytes(&sock),
        bytes(&sock6),
        bytes(&*request),
        bytes(&*h2),
    ]
}

// ---- configuration and registrations -----------------------------------------------------

fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Errors must name the file (and never panic on a span at the end of the text).
    if let Err(e) = Config::parse(&text, Path::new("/etc/agentid/agentid.toml")) {
        assert!(e.to_string().starts_with("/etc/agentid/agentid.toml: "));
    }
}

fn config_seeds() -> Vec<Vec<u8>> {
    [
        "",
        "state_dir = \"/var/lib/agentid\"\nsocket = \"/run/agentid/agentid.sock\"\nsocket_group = \"agentid\"\n",
        "log_format = \"json\"\naudit_fsync = \"record\"\nwatch_cgroups = [\"/agents/**\"]\n[retention]\nmax_age = \"7d\"\nmax_size_mb = 10\n",
        "[[sinks]]\ntype = \"file\"\npath = \"/tmp/x.jsonl\"\nformat = \"ocsf\"\n",
        "[[sinks]]\ntype = \"syslog\"\naddress = \"127.0.0.1:514\"\nformat = \"cef\"\n",
        "retention = { max_age = \"1h 30m\" }\n",
        "state_dir = \"relative\"\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn registry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let r = Registry::parse_str(&text, "fuzz.toml");
    // All or nothing per file: either agents or errors, and every error is displayable.
    for e in r.errors() {
        let _ = e.to_string();
    }
    for a in r.agents() {
        assert!(!a.selectors.is_empty(), "an agent without selectors");
        assert!(r.get(&a.id).is_some());
    }
}

fn registry_seeds() -> Vec<Vec<u8>> {
    [
        "[[agent]]\nid = \"spiffe://example.org/agent/research-bot\"\nname = \"research-bot\"\nowner = \"ml@example.org\"\nenvironment = \"prod\"\n[[agent.selectors]]\ncgroup = \"/agents/research-bot\"\n[[agent.selectors]]\nexe = \"/usr/bin/python3*\"\nuid = 1001\n",
        "[[agent]]\nid = \"spiffe://example.org/agent/a\"\nname = \"a\"\nowner = \"a@x\"\n[[agent.selectors]]\ncontainer_image = \"ghcr.io/x/*\"\n[agent.policy]\negress = [\"10.0.0.0/8:443\", \"api.openai.com:443\"]\n[agent.credentials]\nfiles = [\"~/.config/gh/hosts.yml\"]\nshared_with = [\"spiffe://example.org/agent/b\"]\n",
        "[[agent]]\nid = \"not a spiffe id\"\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

// ---- API requests ----------------------------------------------------------------------

fn since(data: &[u8]) {
    let _ = agentid::cli::query::parse_since(&String::from_utf8_lossy(data));
}

fn since_seeds() -> Vec<Vec<u8>> {
    [
        "10m",
        "2h 30m",
        "2026-11-28T13:33:35Z",
        "2026-11-28 13:33:35",
        "0s",
        "584542y",
        "9999999999999999999d",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// A daemon state with an empty store and registry: enough to route and answer every
/// request (the live parts have nothing in them).
struct ApiHarness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn api_harness() -> &'static ApiHarness {
    static H: OnceLock<ApiHarness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("agentid-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        let config = Config {
            state_dir: dir.clone(),
            agents_dir: dir.join("agents"),
            ..Config::default()
        };
        let store = agentid::store::Store::open(&dir.join("agentid.db")).expect("store");
        let writer = store
            .writer(agentid::store::Retention {
                max_age: Duration::from_hours(1),
                max_bytes: 1 << 30,
            })
            .expect("writer");
        let stats = Arc::clone(&writer.stats);
        // The writer thread must outlive every request.
        std::mem::forget(writer);
        let registry = Arc::new(Registry::default());
        let pipeline = agentid::pipeline::Pipeline::new(
            registry,
            PathBuf::from("/sys/fs/cgroup"),
            FingerprintKey::ephemeral().expect("key"),
        );
        let detector = agentid::detect::Detector::new(None);
        let shared = Arc::new(agentid::state::Shared::new(
            config,
            pipeline,
            detector,
            store,
            stats,
            Vec::new(),
        ));
        ApiHarness {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            router: agentid::api::router(shared),
        }
    })
}

const ROUTES: &[&str] = &[
    "/v1/status",
    "/v1/agents",
    "/v1/agent",
    "/v1/sessions",
    "/v1/processes",
    "/v1/connections",
    "/v1/events",
    "/v1/alerts",
    "/v1/credentials",
    "/v1/credentials/revoke",
    "/v1/tokens",
];

fn api(data: &[u8]) {
    use tower::ServiceExt as _;
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(sel) % ROUTES.len()];
    // `follow=true` streams forever by design; the fuzzer asks for snapshots.
    let query = String::from_utf8_lossy(rest).replace("follow", "f");
    let method = if route.ends_with("revoke") {
        "POST"
    } else {
        "GET"
    };
    let uri = format!("{route}?{query}");
    let Ok(mut req) = axum::http::Request::builder()
        .method(method)
        .uri(&uri)
        .body(axum::body::Body::empty())
    else {
        return; // not a URI: hyper refuses it before any handler runs
    };
    // What the socket server attaches to every connection (the revoke route records who).
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(agentid::api::Peer {
            uid: 0,
            gid: 0,
            pid: None,
        }));
    let h = api_harness();
    let status = h.rt.block_on(async {
        let response = h.router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .expect("body");
        if !body.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
            if !status.is_success() {
                assert!(v["error"].is_string(), "error without a message: {v}");
            }
        }
        status
    });
    assert!(
        status.is_success() || status.is_client_error(),
        "{uri}: {status}"
    );
}

fn api_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, q) in [
        "",
        "agent=spiffe%3A%2F%2Fexample.org%2Fagent%2Fa&since=0&limit=10",
        "kind=exec&limit=4294967295",
        "id=spiffe://x/y",
        "rule=credential-reuse&since=18446744073709551615",
        "fingerprint=openai:0123456789ab",
        "limit=-1&since=x&bogus=1",
    ]
    .iter()
    .enumerate()
    {
        let mut v = vec![u8::try_from(i).unwrap_or(0)];
        v.extend_from_slice(q.as_bytes());
        out.push(v);
    }
    out
}

// ---- SIEM encoders ---------------------------------------------------------------------

#[expect(
    clippy::many_single_char_names,
    reason = "a, f, o, e, h: the alert, its fields and encodings, as in the encoder tests"
)]
fn encode(data: &[u8]) {
    let f = fields(data, 10);
    let mut a = Alert::sample();
    a.uid.clone_from(&f[0]);
    a.title.clone_from(&f[1]);
    a.description.clone_from(&f[2]);
    // Agent ids are validated SPIFFE IDs: a hostile one never reaches an encoder.
    if let Ok(id) = f[3].parse() {
        a.agents[0].id = agentid::detect::Principal::Agent(id);
    }
    a.agents[0].name = Some(f[4].clone());
    a.agents[1].session = Some(f[5].clone());
    a.evidence.processes[0].argv.push(f[6].clone());
    a.evidence.processes[0].cgroup = Some(f[7].clone());
    if let Some(c) = a.evidence.credential.as_mut() {
        c.fingerprint.clone_from(&f[8]);
        c.seen_as.push(f[9].clone());
    }
    a.count = u64::from(data.first().copied().unwrap_or(1));
    // Any time, before the epoch and after year 9999 included.
    let offset = Duration::from_secs(
        u64::from_le_bytes(
            data.get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        ) % (1 << 40),
    );
    a.first_seen = if data.get(3).is_some_and(|b| b & 1 == 1) {
        SystemTime::UNIX_EPOCH
            .checked_sub(offset)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        SystemTime::UNIX_EPOCH + offset
    };
    a.last_seen = a.first_seen;
    let ctx = EncodeContext {
        hostname: f[5].clone(),
        ocsf_ai_agent: data.len().is_multiple_of(2),
    };
    let o = ocsf::detection_finding(&a, &ctx).to_string();
    let _: serde_json::Value = serde_json::from_str(&o).expect("OCSF parses back");
    let _: serde_json::Value =
        serde_json::from_str(&ecs::alert(&a).to_string()).expect("ECS parses back");
    let line = cef::alert(&a);
    assert!(
        !line.contains('\n') && !line.contains('\r'),
        "CEF is not one line"
    );
    for payload in [o.as_str(), line.as_str()] {
        let h = syslog::Header {
            facility: data.get(1).copied().unwrap_or(0),
            severity: data.get(2).copied().unwrap_or(0),
            time: a.first_seen,
            hostname: &f[5],
            app_name: &f[4],
            procid: &f[0],
            msgid: &f[1],
        };
        let m = syslog::message(&h, &[("rule", a.rule), ("uid", &a.uid)], payload);
        let header: Vec<&str> = m.splitn(7, ' ').collect();
        assert_eq!(header.len(), 7, "syslog header fields: {m:?}");
        assert!(
            header[..6]
                .iter()
                .all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_graphic())),
            "syslog header: {m:?}"
        );
        let framed = syslog::octet_counted(m.as_bytes());
        assert!(framed.starts_with(format!("{} ", m.len()).as_bytes()));
    }
    // Activity encodings of an exec carrying the same hostile strings.
    let mut ev = agentid::audit::sample_event("fuzz", 1);
    ev.event.comm.clone_from(&f[4]);
    ev.event.cgroup = Some(f[7].clone());
    if let Detail::Exec { filename, argv, .. } = &mut ev.event.detail {
        filename.clone_from(&f[6]);
        argv.push(f[9].clone());
    }
    for kind in [EventKind::Exec, EventKind::Exit] {
        ev.event.kind = kind;
        if let Some(v) = ocsf::activity(&ev, &ctx) {
            let _: serde_json::Value = serde_json::from_str(&v.to_string()).expect("OCSF activity");
        }
        if let Some(v) = ecs::activity(&ev) {
            let _: serde_json::Value = serde_json::from_str(&v.to_string()).expect("ECS activity");
        }
        if let Some(l) = cef::activity(&ev) {
            assert!(!l.contains('\n') && !l.contains('\r'), "CEF activity line");
        }
    }
    ev.event.kind = EventKind::Exec;
    check_trace_output(&ev);
}

fn encode_seeds() -> Vec<Vec<u8>> {
    vec![
        b"uid\xfftitle|=\\]\xffdesc\nline2\xffspiffe://x/y\xffname\r\xffhost name\xffarg=1\xff/agents/a\nb\xffopenai:abc\xffenv:X".to_vec(),
        vec![0xff; 12],
        "é日\u{2028}\u{0}\u{7f}\u{85}".as_bytes().to_vec(),
    ]
}

// ---- credentials in workload bytes --------------------------------------------------------

fn credentials(data: &[u8]) {
    static SCANNER: OnceLock<std::sync::Mutex<Scanner>> = OnceLock::new();
    static REDACTOR: OnceLock<agentid::credentials::Redactor> = OnceLock::new();
    let mut s = SCANNER
        .get_or_init(|| {
            std::sync::Mutex::new(Scanner::new(FingerprintKey::ephemeral().expect("key")))
        })
        .lock()
        .expect("scanner lock");
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let _ = s.scan_env(parts.iter().copied());
    let _ = s.scan_argv(&parts);
    let _ = s.scan_file_content(Path::new("/root/.env"), data);
    // Redaction keeps the argument count and removes every value it reported.
    let mut argv: Vec<String> = parts
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let n = argv.len();
    let r = REDACTOR.get_or_init(|| {
        agentid::credentials::Redactor::new(FingerprintKey::ephemeral().expect("key"))
    });
    r.redact(&mut argv);
    assert_eq!(argv.len(), n);
}

fn credentials_seeds() -> Vec<Vec<u8>> {
    vec![
        b"OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz0123456789\0--token\0ghp_abcdefghijklmnopqrstuvwxyz0123456789\0--password=hunter2hunter2".to_vec(),
        b"curl\0-H\0Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl\0https://x".to_vec(),
        b"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\0AKIAIOSFODNN7EXAMPLE".to_vec(),
    ]
}

// ---- the audit-log reader ------------------------------------------------------------------

fn audit(data: &[u8]) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "agentid-fuzz-audit-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // Up to two files: an archive and the current log, split at the first 0xfe.
    match data.iter().position(|&b| b == 0xfe) {
        Some(i) => {
            std::fs::write(dir.join("audit-000001.log"), &data[..i]).expect("write");
            std::fs::write(dir.join("audit.log"), &data[i + 1..]).expect("write");
        }
        None => std::fs::write(dir.join("audit.log"), data).expect("write"),
    }
    if let Ok(report) = agentid::audit::verify(&dir, None) {
        let _ = report.to_string();
        assert!(report.is_ok() == report.damage.is_none());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn audit_seeds() -> Vec<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("agentid-fuzz-auditseed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let opts = AuditOptions {
        rotate_bytes: u64::MAX,
        ..AuditOptions::default()
    };
    let mut log = AuditLog::open(&dir, key, opts).expect("audit log");
    for i in 0..3 {
        log.append_event(&agentid::audit::sample_event("seed", i))
            .expect("append");
    }
    log.checkpoint().expect("checkpoint");
    log.append_alert(&Alert::sample()).expect("append");
    log.close().expect("close");
    let text = std::fs::read(dir.join("audit.log")).expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    let mut split = text.clone();
    if let Some(i) = split.iter().position(|&b| b == b'\n') {
        split.insert(i + 1, 0xfe);
    }
    vec![text, split]
}
