//! Encoder tests: fixed samples, then arbitrary hostile strings in every text field.
use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use proptest::prelude::*;
use serde_json::Value;

use super::{EncodeContext, Item, cef, ecs, ocsf, syslog};
use crate::{
    attribution::{AgentRef, AttributedEvent, ProcIdentity},
    detect::{Alert, ConnectionEvidence},
    event::{Detail, Event, EventKind, Protocol},
};

fn ctx() -> EncodeContext {
    EncodeContext {
        hostname: "node1".into(),
        ocsf_ai_agent: true,
    }
}

#[test]
fn ocsf_detection_finding_fields() {
    let mut a = Alert::sample();
    let v = ocsf::detection_finding(&a, &ctx());
    assert_eq!(v["class_uid"], 2004);
    assert_eq!(v["category_uid"], 2);
    assert_eq!(v["activity_id"], 1);
    assert_eq!(v["type_uid"], 200_401);
    assert_eq!(v["severity_id"], 4);
    assert_eq!(v["time"], 1_764_335_000_123_u64);
    assert_eq!(v["metadata"]["version"], "1.8.0");
    assert_eq!(v["metadata"]["product"]["name"], "agentid");
    assert_eq!(v["metadata"]["product"]["vendor_name"], "agentid");
    assert_eq!(v["finding_info"]["uid"], a.uid);
    assert_eq!(v["finding_info"]["analytic"]["type_id"], 1);
    assert_eq!(v["finding_info"]["analytic"]["name"], "credential-reuse");
    assert_eq!(v["finding_info"]["types"][0], "credential-reuse");
    assert!(
        v["finding_info"]["types"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ASI03"))
    );
    assert_eq!(v["is_alert"], true);
    assert_eq!(v["status_id"], 1);
    assert_eq!(
        v["actor"]["session"]["credential_uid"],
        "openai:3f9a0c1d2e4b"
    );
    assert_eq!(v["evidences"][0]["process"]["pid"], 4242);
    assert_eq!(
        v["unmapped"]["agentid"]["agents"][1]["id"],
        "spiffe://example.org/agent/billing-bot"
    );
    assert_eq!(v["ai_agent"]["name"], "research-bot");
    a.count = 3;
    a.evidence.connections.push(ConnectionEvidence {
        dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        dst_port: 443,
        protocol: "tcp".into(),
        dst_names: vec!["api.example.test".into()],
    });
    let v = ocsf::detection_finding(
        &a,
        &EncodeContext {
            ocsf_ai_agent: false,
            ..ctx()
        },
    );
    assert_eq!(v["activity_id"], 2);
    assert_eq!(v["type_uid"], 200_402);
    assert_eq!(v["count"], 3);
    assert_eq!(v["evidences"][1]["dst_endpoint"]["port"], 443);
    assert_eq!(
        v["evidences"][1]["dst_endpoint"]["hostname"],
        "api.example.test"
    );
    assert!(v.get("ai_agent").is_none());
}

pub(crate) fn event(kind: EventKind) -> AttributedEvent {
    let detail = match kind {
        EventKind::Exec => Detail::Exec {
            filename: "/usr/bin/curl".into(),
            argv: vec!["curl".into(), "https://x".into()],
            argv_truncated: false,
            argv_missing: false,
            scan_incomplete: None,
            loginuid: None,
            env: crate::event::SecretEnv::default(),
        },
        EventKind::Exit => Detail::Exit {
            exit_code: Some(3),
            signal: None,
        },
        EventKind::Fork => Detail::Fork {},
        EventKind::Open => Detail::Open {
            path: "/etc/bot/token".into(),
            open_flags: 0,
            inode: None,
        },
        EventKind::Socket => Detail::Socket {
            family: crate::event::SocketFamily::Packet,
            sock_type: 3,
            protocol: 0x0300,
        },
        EventKind::Request => Detail::Request {
            method: "POST".into(),
            host: Some("api.openai.com".into()),
            path: "/v1/chat/completions?key=".into(),
            http_version: "1.1".into(),
            tls_fn: crate::event::TlsFn::SslWriteEx,
            credential_headers: vec!["authorization".into()],
            continued: false,
            headers: crate::event::SecretEnv::default(),
        },
        EventKind::Connect | EventKind::Send => Detail::Sock {
            dst_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            dst_port: 8443,
            protocol: Protocol::Tcp,
            dst_names: vec!["api.example.test".into()],
        },
    };
    AttributedEvent {
        transition: None,
        event: Event {
            kind,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_335_000_500),
            ktime_ns: 99,
            proc_start_ns: None,
            pid: 4242,
            ppid: Some(4200),
            tid: 4242,
            uid: 1001,
            gid: 1001,
            cgroup_id: 7,
            cgroup: Some("/agents/research-bot".into()),
            comm: "curl".into(),
            blocked: false,
            detail,
        },
        exec_id: None,
        parent_exec_id: None,
        identity: std::sync::Arc::new(ProcIdentity {
            agent: Some(AgentRef {
                id: "spiffe://example.org/agent/research-bot".into(),
                name: Some("research-bot".into()),
                owner: None,
                environment: None,
            }),
            ambiguous: vec![],
            session: Some("research-bot/4242-1234".into()),
            acting_for: vec!["spiffe://example.org/agent/planner".into()],
            lineage: vec![],
            session_root: None,
            delegation_declared: true,
            escaped_to: None,
        }),
        exe: Some("/usr/bin/curl".into()),
        loginuid: None,
    }
}

#[test]
fn ocsf_activity_classes() {
    let v = ocsf::activity(&event(EventKind::Exec), &ctx()).unwrap();
    assert_eq!(
        (v["class_uid"].clone(), v["type_uid"].clone()),
        (1007.into(), 100_701.into())
    );
    assert_eq!(v["actor"]["process"]["pid"], 4200);
    assert_eq!(v["process"]["file"]["path"], "/usr/bin/curl");
    assert_eq!(v["device"]["hostname"], "node1");
    let v = ocsf::activity(&event(EventKind::Exit), &ctx()).unwrap();
    assert_eq!(v["type_uid"], 100_702);
    assert_eq!(v["exit_code"], 3);
    let v = ocsf::activity(&event(EventKind::Connect), &ctx()).unwrap();
    assert_eq!(
        (v["class_uid"].clone(), v["activity_id"].clone()),
        (4001.into(), 1.into())
    );
    assert_eq!(v["dst_endpoint"]["port"], 8443);
    assert_eq!(v["dst_endpoint"]["hostname"], "api.example.test");
    assert_eq!(v["actor"]["process"]["pid"], 4242);
    let v = ocsf::activity(&event(EventKind::Send), &ctx()).unwrap();
    assert_eq!(v["type_uid"], 400_106);
    assert_eq!(
        v["unmapped"]["agentid"]["acting_for"][0],
        "spiffe://example.org/agent/planner"
    );
    assert!(ocsf::activity(&event(EventKind::Fork), &ctx()).is_none());
    assert!(ocsf::activity(&event(EventKind::Open), &ctx()).is_none());
}

#[test]
fn ecs_fields() {
    let v = ecs::alert(&Alert::sample());
    assert_eq!(v["ecs"]["version"], "8.11.0");
    assert_eq!(v["event"]["kind"], "alert");
    assert_eq!(v["@timestamp"], "2025-11-28T13:03:20.123000Z");
    assert_eq!(v["rule"]["id"], "credential-reuse");
    assert!(
        v["rule"]["reference"]
            .as_str()
            .unwrap()
            .ends_with("#credential-reuse")
    );
    assert_eq!(v["gen_ai"]["agent"]["name"][1], "billing-bot");
    assert_eq!(v["process"]["pid"], 4242);
    assert_eq!(v["tags"][0], "ASI03");
    let v = ecs::activity(&event(EventKind::Connect)).unwrap();
    assert_eq!(v["event"]["kind"], "event");
    assert_eq!(v["event"]["category"][0], "network");
    assert_eq!(v["destination"]["port"], 8443);
    assert_eq!(v["destination"]["domain"], "api.example.test");
    assert_eq!(v["network"]["transport"], "tcp");
    assert_eq!(
        v["gen_ai"]["agent"]["id"],
        "spiffe://example.org/agent/research-bot"
    );
    let v = ecs::activity(&event(EventKind::Exec)).unwrap();
    assert_eq!(v["process"]["executable"], "/usr/bin/curl");
}

/// A `credential-stale` about an issued token: its reason and the token's origin (never
/// the token) in every format.
#[test]
fn a_stale_issued_token_carries_its_reason_and_origin() {
    let mut a = Alert::sample();
    a.rule = "credential-stale";
    a.reason = Some("session-ended");
    if let Some(c) = a.evidence.credential.as_mut() {
        c.token = Some(crate::credentials::TokenOrigin {
            jti: "j-123".into(),
            kid: "k-1".into(),
            agent: "spiffe://example.org/agent/research-bot".into(),
            session: "research-bot/4242-1234".into(),
            acting_for: vec![],
            exp: 1_764_335_300,
            session_live: false,
        });
    }
    let v = ocsf::detection_finding(&a, &ctx());
    assert_eq!(v["unmapped"]["agentid"]["reason"], "session-ended");
    assert_eq!(
        v["unmapped"]["agentid"]["credential"]["token"]["jti"],
        "j-123"
    );
    let v = ecs::alert(&a);
    assert_eq!(v["event"]["reason"], "session-ended");
    assert_eq!(
        v["agentid"]["credential"]["token"]["session"],
        "research-bot/4242-1234"
    );
    assert!(cef::alert(&a).contains("cs5Label=reason cs5=session-ended"));
    let plain = ocsf::detection_finding(&Alert::sample(), &ctx());
    assert!(plain["unmapped"]["agentid"].get("reason").is_none());
}

#[test]
fn cef_sample_and_escaping() {
    let line = cef::alert(&Alert::sample());
    assert!(line.starts_with(&format!(
        "CEF:0|agentid|agentid|{}|credential-reuse|Credential used by 2 agents|8|",
        super::PRODUCT_VERSION
    )));
    assert!(line.contains("cs1Label=agentId cs1=spiffe://example.org/agent/research-bot,"));
    assert!(line.contains("credentialFingerprint cs4=openai:3f9a0c1d2e4b"));
    assert_eq!(cef::escape_header("a|b\\c\nd"), "a\\|b\\\\c d");
    assert_eq!(cef::escape_ext("a=b\\c\nd\re|f"), "a\\=b\\\\c\\nd\\re|f");
    let ev = cef::activity(&event(EventKind::Connect)).unwrap();
    assert!(ev.contains("|network-open|Connection opened|1|"));
    assert!(ev.contains("dhost=api.example.test dst=192.0.2.7 dpt=8443 proto=tcp"));
}

/// Regression (found by `cargo xtask fuzz`, target `encode`): a time after year 9999 made
/// humantime's `Display` fail inside `to_string`, a panic; one before 1970 panics in it.
#[test]
fn times_outside_rfc3339_range_encode_clamped() {
    for (t, want) in [
        (
            SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40),
            "9999-12-31T23:59:59",
        ),
        (
            SystemTime::UNIX_EPOCH - Duration::from_secs(10),
            "1970-01-01T00:00:00",
        ),
    ] {
        let mut a = Alert::sample();
        a.first_seen = t;
        a.last_seen = t;
        assert!(ocsf::detection_finding(&a, &ctx()).to_string().len() > 10);
        assert!(ecs::alert(&a).to_string().contains(want));
        assert!(cef::alert(&a).starts_with("CEF:"));
        assert!(serde_json::to_string(&a).unwrap().contains(want));
        let h = syslog::Header {
            facility: 16,
            severity: 3,
            time: t,
            hostname: "h",
            app_name: "agentid",
            procid: "1",
            msgid: "m",
        };
        assert!(syslog::message(&h, &[], "x").contains(want));
    }
}

#[test]
fn syslog_header_rules() {
    let h = syslog::Header {
        facility: 16,
        severity: 3,
        time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_335_000_123_456_789),
        hostname: "",
        app_name: &"x".repeat(100),
        procid: "12 34",
        msgid: "crédit",
    };
    let m = syslog::message(&h, &[("rule", "a\"b]c\\d")], "hello");
    let app = "x".repeat(48);
    assert_eq!(
        m,
        format!(
            "<131>1 2025-11-28T13:03:20.123456Z - {app} 1234 crdit [agentid@32473 rule=\"a\\\"b\\]c\\\\d\"] hello"
        )
    );
    assert_eq!(syslog::octet_counted(b"abc"), b"3 abc");
    let m = syslog::message(&h, &[], "");
    assert!(m.ends_with(" crdit -"));
}

// ---- parsers used by the property tests ----

/// Splits a CEF line into its 7 header fields and extension, honouring `\` escapes.
pub(crate) fn cef_split(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if fields.len() == 7 {
            cur.push(c);
            continue;
        }
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '|' => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Parses a CEF extension into (key, unescaped value) pairs.
pub(crate) fn cef_ext(ext: &str) -> Vec<(String, String)> {
    // Every unescaped `=` ends a key; the key is the word before it.
    let chars: Vec<char> = ext.chars().collect();
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '=' => {
                eqs.push(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let mut out = Vec::new();
    let mut key_start = 0;
    for (n, &eq) in eqs.iter().enumerate() {
        let key: String = chars[key_start..eq].iter().collect();
        let end = match eqs.get(n + 1) {
            Some(&next_eq) => {
                let sp = (eq..next_eq).rev().find(|&j| chars[j] == ' ').unwrap();
                key_start = sp + 1;
                sp
            }
            None => chars.len(),
        };
        let raw: String = chars[eq + 1..end].iter().collect();
        out.push((key, unescape_ext(&raw)));
    }
    out
}

fn unescape_ext(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A parsed RFC 5424 message: header fields, SD params of our element, and MSG.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub header: Vec<String>,
    pub params: Vec<(String, String)>,
    pub msg: String,
}

pub(crate) fn parse_5424(m: &str) -> Option<Parsed> {
    let mut rest = m;
    let mut header = Vec::new();
    for _ in 0..6 {
        let (f, r) = rest.split_once(' ')?;
        header.push(f.to_owned());
        rest = r;
    }
    let mut params = Vec::new();
    if let Some(r) = rest.strip_prefix('-') {
        rest = r;
    } else {
        let r = rest.strip_prefix('[')?;
        let (id, mut r) = r.split_once(' ')?;
        if id != syslog::SD_ID {
            return None;
        }
        loop {
            let (name, after) = r.split_once("=\"")?;
            let mut val = String::new();
            let mut it = after.char_indices();
            let end = loop {
                let (i, c) = it.next()?;
                match c {
                    '\\' => val.push(it.next()?.1),
                    '"' => break i,
                    c => val.push(c),
                }
            };
            params.push((name.to_owned(), val));
            r = &after[end + 1..];
            if let Some(x) = r.strip_prefix(']') {
                rest = x;
                break;
            }
            r = r.strip_prefix(' ')?;
        }
    }
    let msg = rest.strip_prefix(' ').unwrap_or(rest).to_owned();
    Some(Parsed {
        header,
        params,
        msg,
    })
}

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[|=\\]\"\\\\\n\r a-zé日]{0,40}",
        "[|=\\\\\n]{4096,4200}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_encoding_parses_back(
        title in hostile(), desc in hostile(), id in hostile(), session in hostile(),
        arg in hostile(), fp in hostile(), rule in "[a-z|=\\\\ ]{1,20}",
    ) {
        let mut a = Alert::sample();
        a.rule = Box::leak(rule.clone().into_boxed_str());
        a.uid = id.clone();
        a.title = title.clone();
        a.description = desc.clone();
        // Agent ids are validated SPIFFE IDs (`Principal`), so no hostile id reaches here.
        a.agents[0].session = Some(session.clone());
        a.evidence.processes[0].argv.push(arg.clone());
        a.evidence.credential.as_mut().unwrap().fingerprint = fp.clone();

        // JSON encodings parse and keep the strings.
        let o: Value = serde_json::from_str(&ocsf::detection_finding(&a, &ctx()).to_string()).unwrap();
        prop_assert_eq!(o["finding_info"]["title"].as_str(), Some(title.as_str()));
        prop_assert_eq!(o["actor"]["session"]["credential_uid"].as_str(), Some(fp.as_str()));
        let e: Value = serde_json::from_str(&ecs::alert(&a).to_string()).unwrap();
        prop_assert_eq!(e["message"].as_str(), Some(desc.as_str()));

        // CEF: exactly 8 fields, the extension's keys intact and values round-trip.
        let line = cef::alert(&a);
        prop_assert!(!line.contains('\n') && !line.contains('\r'));
        let f = cef_split(&line);
        prop_assert_eq!(f.len(), 8);
        prop_assert_eq!(&f[4], &rule.replace(['\n', '\r'], " "));
        prop_assert_eq!(&f[5], &title.replace(['\n', '\r'], " "));
        let ext = cef_ext(&f[7]);
        let keys: Vec<&str> = ext.iter().map(|(k, _)| k.as_str()).collect();
        prop_assert_eq!(&keys[..6], &["rt", "start", "end", "cnt", "externalId", "msg"][..]);
        let get = |k: &str| ext.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        prop_assert_eq!(get("msg"), Some(desc.clone()));
        prop_assert_eq!(get("externalId"), Some(id.clone()));
        prop_assert_eq!(get("cs4"), Some(fp.clone()));
        prop_assert_eq!(get("cs1").unwrap().split(',').next().map(str::to_owned).is_some(), true);

        // Syslog: the frame length is the message's byte length; the SD parses back.
        for payload in [o.to_string(), line.clone()] {
            let h = syslog::Header {
                facility: 16, severity: 3, time: a.last_seen,
                hostname: &session, app_name: "agentid", procid: "1", msgid: &rule,
            };
            let m = syslog::message(&h, &[("rule", a.rule), ("uid", &a.uid)], &payload);
            let framed = syslog::octet_counted(m.as_bytes());
            let (len, body) = framed.split_at(framed.iter().position(|&b| b == b' ').unwrap());
            let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
            prop_assert_eq!(len, body.len() - 1);
            prop_assert_eq!(len, m.len());
            let p = parse_5424(&m).expect("parses");
            prop_assert!(p.header.iter().all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_graphic())));
            prop_assert_eq!(&p.params, &vec![("rule".to_owned(), rule.clone()), ("uid".to_owned(), id.clone())]);
            prop_assert_eq!(&p.msg, &payload);
        }
    }
}

/// Every OCSF class agentid emits, as the sinks write it: a new and an updated Detection
/// Finding (process and connection evidence, a credential), process launch and
/// termination, connect and send.
fn one_record_of_each_ocsf_class(ctx: &EncodeContext) -> Vec<Value> {
    let new = Alert::sample();
    let mut updated = Alert::sample();
    updated.count = 3;
    updated.evidence.connections.push(ConnectionEvidence {
        dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        dst_port: 443,
        protocol: "tcp".into(),
        dst_names: Vec::new(),
    });
    let mut records = vec![
        ocsf::detection_finding(&new, ctx),
        ocsf::detection_finding(&updated, ctx),
    ];
    for kind in [
        EventKind::Exec,
        EventKind::Exit,
        EventKind::Connect,
        EventKind::Send,
    ] {
        records.extend(ocsf::activity(&event(kind), ctx));
    }
    let classes: Vec<&Value> = records.iter().map(|r| &r["class_uid"]).collect();
    assert_eq!(classes, [2004, 2004, 1007, 1007, 4001, 4001]);
    records
}

/// The validator (scripts/ocsf-validate.py) over `records`: its exit code and report.
/// `None` (with the reason printed) when the Python environment is missing and the run
/// does not require it; CI (`AGENTID_REQUIRE_BPF=1`) fails instead of skipping.
fn ocsf_validate(records: &[Value]) -> Option<(Option<i32>, String)> {
    use std::io::Write as _;
    let venv = std::env::var_os("AGENTID_TEST_VENV")
        .map_or_else(|| "/opt/agentid-test-venv".into(), std::path::PathBuf::from);
    let python = venv.join("bin/python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ocsf-validate.py");
    let probe = std::process::Command::new(&python)
        .args(["-c", "import jsonschema, ocsf_json_schema"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = format!(
            "no OCSF validator at {} ({probe:?}): run scripts/setup.sh",
            python.display()
        );
        assert!(
            std::env::var_os("AGENTID_REQUIRE_BPF").is_none_or(|v| v != "1"),
            "{why}"
        );
        eprintln!("SKIPPED: {why}; set AGENTID_REQUIRE_BPF=1 to fail instead");
        return None;
    }
    let mut child = std::process::Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for r in records {
        writeln!(stdin, "{r}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.code(), report))
}

/// A strict consumer (a security data lake that rejects invalid OCSF) keeps every record:
/// each class validates against the official OCSF 1.8.0 schema.
#[test]
fn every_ocsf_class_validates_against_the_official_schema() {
    let records = one_record_of_each_ocsf_class(&EncodeContext {
        ocsf_ai_agent: false,
        ..ctx()
    });
    let Some((code, report)) = ocsf_validate(&records) else {
        return;
    };
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("6 events checked, 0 invalid"), "{report}");
}

/// `ocsf_ai_agent = true` adds OCSF 1.9's draft `ai_agent` object to records that claim
/// 1.8.0, where it does not exist: a strict 1.8 validator rejects exactly that attribute
/// and nothing else (the README says so; the option is off by default for this reason).
#[test]
fn the_ocsf_ai_agent_option_adds_only_the_draft_attribute() {
    let records = one_record_of_each_ocsf_class(&ctx());
    let Some((code, report)) = ocsf_validate(&records) else {
        return;
    };
    assert_eq!(code, Some(1), "{report}");
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.contains("events checked"))
        .collect();
    assert_eq!(problems.len(), records.len(), "{report}");
    assert!(
        problems.iter().all(|l| l.ends_with(
            ": (root): Additional properties are not allowed ('ai_agent' was unexpected)"
        )),
        "{report}"
    );
}

/// A genuine signed checkpoint, as a forward-secure log publishes it.
fn sample_checkpoint() -> crate::audit::Checkpoint {
    // One directory per call: tests run in parallel.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("agentid-enc-cp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let opts = crate::audit::AuditOptions::default();
    let mut log =
        crate::audit::AuditLog::open_with_key_file(&root.join("audit"), &root.join("k"), opts)
            .unwrap();
    log.append_event(&crate::audit::sample_event("research-bot", 1))
        .unwrap();
    log.checkpoint().unwrap();
    let cp = log.take_anchors().remove(0);
    let _ = std::fs::remove_dir_all(&root);
    cp
}

#[test]
fn audit_checkpoint_in_every_encoding_reads_back_as_an_anchor() {
    use crate::outputs::{
        config::{JsonFormat, SyslogFormat},
        encoder::Encoder,
    };
    let cp = sample_checkpoint();
    assert!(cp.self_signed());
    let v = ocsf::audit_checkpoint(&cp, &ctx());
    assert_eq!(
        (
            v["class_uid"].clone(),
            v["type_uid"].clone(),
            v["category_uid"].clone()
        ),
        (1008.into(), 100_899.into(), 1.into())
    );
    assert_eq!(v["metadata"]["version"], "1.8.0");
    assert_eq!(v["device"]["hostname"], "node1");
    assert_eq!(v["unmapped"]["agentid"]["audit_checkpoint"]["seq"], cp.seq);
    assert_eq!(
        v["unmapped"]["agentid"]["audit_checkpoint"]["head"],
        cp.head.as_str()
    );
    let e = ecs::audit_checkpoint(&cp);
    assert_eq!(e["event"]["action"], "audit-checkpoint");
    assert_eq!(
        e["agentid"]["audit_checkpoint"]["signature"],
        cp.signature.as_str()
    );

    let syslog = |format| Encoder::Syslog {
        format,
        facility: 13,
        app_name: "agentid".into(),
        hostname: "node1".into(),
        procid: "1".into(),
        ctx: ctx(),
    };
    let encoders = [
        Encoder::Json(JsonFormat::Ocsf, ctx()),
        Encoder::Json(JsonFormat::Ecs, ctx()),
        Encoder::Json(JsonFormat::Native, ctx()),
        Encoder::Ecs,
        Encoder::Hec {
            index: None,
            source: "agentid".into(),
            sourcetype: "agentid:ocsf".into(),
            ctx: ctx(),
        },
        syslog(SyslogFormat::Ocsf),
        syslog(SyslogFormat::Cef),
    ];
    for enc in &encoders {
        let rec = enc.encode(Item::Checkpoint(&cp)).unwrap();
        let anchors = crate::audit::Anchors::parse(&rec.payload);
        assert_eq!(anchors.list, vec![cp.clone()], "{enc:?}: {}", rec.payload);
        assert!(rec.uid.starts_with("audit-checkpoint:"), "{}", rec.uid);
    }
}

/// The anchor record (Event Log Activity 1008) validates against OCSF 1.8.0 like the
/// others, so a strict consumer keeps it.
#[test]
fn the_audit_checkpoint_validates_against_the_official_schema() {
    let cp = sample_checkpoint();
    let records = [ocsf::audit_checkpoint(
        &cp,
        &EncodeContext {
            ocsf_ai_agent: false,
            ..ctx()
        },
    )];
    let Some((code, report)) = ocsf_validate(&records) else {
        return;
    };
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("1 events checked, 0 invalid"), "{report}");
}
