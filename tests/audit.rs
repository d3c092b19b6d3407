//! `agentid audit` end to end: the real binary against a log the library wrote — pubkey,
//! verify (clean, tampered, re-signed with another key), export and bundle verification.
//! Needs no kernel and no root.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use agentid::{
    audit::{self, AuditLog, AuditOptions, Fsync, public_key_base64, sample_event},
    detect::Alert,
};
use agentid_tests::{agentid, text};

const AGENT: &str = "spiffe://example.org/agent/research-bot";

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentid-it-audit-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tmpdir");
    d
}

/// A key and a closed log of 30 events, 2 alerts and 3 checkpoints over rotated files.
fn setup(name: &str) -> (PathBuf, PathBuf, String) {
    let root = tmpdir(name);
    let key_path = root.join("audit.key");
    let key = audit::load_or_create_key(&key_path).expect("key");
    let pk = public_key_base64(&key.verifying_key());
    let dir = root.join("audit");
    let opts = AuditOptions {
        fsync: Fsync::EveryRecord,
        rotate_bytes: 8 * 1024,
        checkpoint_interval: Duration::from_hours(1),
    };
    let mut log = AuditLog::open(&dir, key, opts).expect("open");
    for i in 0..30 {
        log.append_event(&sample_event("research-bot", i))
            .expect("event");
        if i % 12 == 11 {
            log.checkpoint().expect("checkpoint");
        }
    }
    log.append_alert(&Alert::sample()).expect("alert");
    let mut update = Alert::sample();
    update.count = 2;
    log.append_alert(&update).expect("alert update");
    log.close().expect("close");
    (root, dir, pk)
}

fn dir_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn pubkey_and_verify_clean_log() {
    let (root, dir, pk) = setup("clean");
    let key = root.join("audit.key");
    let o = agentid(&["audit", "pubkey", "--key", dir_arg(&key)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), pk);

    let o = agentid(&[
        "audit",
        "verify",
        "--dir",
        dir_arg(&dir),
        "--pubkey",
        &pk,
        "--expect-closed",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // 30 events, 2 alerts, 3 checkpoints, and a rotate record per rotation.
    assert!(
        out.starts_with("ok 38 records, 3 checkpoints"),
        "{}",
        text(&o)
    );
    assert!(out.contains("closed cleanly"), "{}", text(&o));
    assert!(fs::read_dir(&dir).expect("dir").count() > 1, "rotated");
    fs::remove_dir_all(root).expect("cleanup");
}

#[test]
fn tampering_fails_verify_with_one_line() {
    let (root, dir, pk) = setup("tamper");
    let current = dir.join("audit.log");
    let original = fs::read_to_string(&current).expect("log");
    let mut lines: Vec<&str> = original.lines().collect();
    lines.remove(1);
    fs::write(&current, lines.join("\n") + "\n").expect("write");
    let o = agentid(&["audit", "verify", "--dir", dir_arg(&dir), "--pubkey", &pk]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{}", text(&o));
    assert!(err.contains("DAMAGED: Deleted at seq"), "{}", text(&o));

    // Another key (a --pubkey file this time): every checkpoint fails.
    fs::write(&current, &original).expect("restore");
    let other = audit::load_or_create_key(&root.join("other.key")).expect("key");
    let other_pk = root.join("other.pub");
    fs::write(&other_pk, public_key_base64(&other.verifying_key())).expect("pub");
    let o = agentid(&[
        "audit",
        "verify",
        "--dir",
        dir_arg(&dir),
        "--pubkey",
        dir_arg(&other_pk),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("BadSignature"),
        "{}",
        text(&o)
    );
    fs::remove_dir_all(root).expect("cleanup");
}

#[test]
fn exported_bundle_verifies_alone_and_fails_altered() {
    let (root, dir, pk) = setup("export");
    let bundle = root.join("bundle.json");
    let o = agentid(&[
        "audit",
        "export",
        "--agent",
        AGENT,
        "--since",
        "1h",
        "--dir",
        dir_arg(&dir),
        "--agents-dir",
        dir_arg(&root.join("no-agents")),
        "-o",
        dir_arg(&bundle),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // The bundle alone: the log can go.
    fs::remove_dir_all(&dir).expect("rm log");
    let verify = |pk: &str| {
        agentid(&[
            "audit",
            "verify",
            "--bundle",
            dir_arg(&bundle),
            "--pubkey",
            pk,
        ])
    };
    let o = verify(&pk);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ok bundle for"),
        "{}",
        text(&o)
    );

    let original = fs::read_to_string(&bundle).expect("bundle");
    let altered = original.replacen("\"python3\"", "\"python4\"", 1);
    assert_ne!(altered, original);
    fs::write(&bundle, altered).expect("alter");
    let o = verify(&pk);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("DAMAGED bundle"),
        "{}",
        text(&o)
    );
    fs::remove_dir_all(root).expect("cleanup");
}
