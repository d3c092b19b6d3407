//! The disk budget on the real daemon: closed audit archives are compressed, the audit
//! retention prunes old ones with a signed record, and `agentid audit verify` proves what
//! is kept — and fails when a kept archive is altered or removed without a prune record.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agentid_tests::{
    TestCgroup, agentid,
    daemon::{Daemon, registration},
    text,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("audit dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn archives(dir: &Path) -> Vec<PathBuf> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with("audit-0"))
        .map(|n| dir.join(n))
        .collect()
}

/// Removes the test's directory even when an assertion fails.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom"
)]
fn audit_archives_are_compressed_pruned_and_verified() {
    let dir = Daemon::dir("disk");
    let _cleanup = Cleanup(dir.clone());
    let cg = TestCgroup::new("disk-a");
    fs::write(dir.join("agents/a.toml"), registration("alpha", &cg)).expect("reg");
    // A 1 MiB budget makes 128 KiB archives; a second's age makes them due quickly.
    let mut config = fs::read_to_string(dir.join("agentid.toml")).expect("config");
    config.push_str("[audit_retention]\nmax_age = \"1s\"\nmax_size_mb = 1\n");
    fs::write(dir.join("agentid.toml"), config).expect("config");
    let Some(d) = Daemon::start(&dir) else { return };
    let audit_dir = dir.join("state/audit");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr").to_string();
    // Accepts and closes, so the backlog never fills; ends with the test process.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let burst = || {
        assert!(
            cg.command(WORKLOAD)
                .args(["connect", &addr, "1500"])
                .status()
                .expect("spawn")
                .success()
        );
    };
    // Each burst is ~1 MiB of audit records; rotation (and then pruning) happens as they
    // are appended. Wait for the audit writer to have them, then for archives to age.
    let appended = |d: &Daemon| {
        d.cli(&["status"])["audit"]["appended"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut seen = appended(&d);
    let deadline = Instant::now() + Duration::from_mins(2);
    let mut rounds = 0;
    while !names(&audit_dir).iter().any(|n| n == "audit-keys.jsonl") {
        assert!(
            Instant::now() < deadline,
            "no prune within 2 minutes: {:?}",
            names(&audit_dir)
        );
        burst();
        let want = seen + 1500;
        d.cli_until(&["status"], |v| {
            v["audit"]["appended"].as_u64().unwrap_or(0) >= want
        });
        seen = appended(&d);
        rounds += 1;
        if rounds >= 2 {
            // Archives are due once a second old: time must pass for age retention.
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
    let status = d.cli(&["status"]);
    assert!(
        status["audit"]["bytes_per_record"].as_u64().unwrap_or(0) > 0
            && status["store"]["bytes_per_event"].as_u64().unwrap_or(0) > 0,
        "status reports bytes per event: {status:#}"
    );
    assert!(d.stop().success());

    let files = names(&audit_dir);
    assert!(
        !files
            .iter()
            .any(|n| n == "audit-000001.log.zst" || n == "audit-000001.log"),
        "the oldest archive was pruned: {files:?}"
    );
    let kept = archives(&audit_dir);
    assert!(
        kept.iter()
            .all(|p| p.to_string_lossy().ends_with(".log.zst")),
        "closed archives are compressed: {files:?}"
    );

    let key = dir.join("state/audit.key");
    let o = agentid(&["audit", "pubkey", "--key", key.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    let pk = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let audit_arg = audit_dir.to_str().expect("utf-8").to_owned();
    let verify = || {
        agentid(&[
            "audit",
            "verify",
            "--dir",
            &audit_arg,
            "--pubkey",
            &pk,
            "--expect-closed",
        ])
    };
    let o = verify();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pruned by policy"),
        "{}",
        text(&o)
    );

    // A kept archive altered (recompressed, so it still decompresses): Modified.
    if let Some(first) = kept.first() {
        let original = fs::read(first).expect("archive");
        let plain = zstd_decode(&original);
        let edited = plain.replacen("\"dst_port\":", "\"dst_port\":1", 1);
        assert_ne!(edited, plain, "the archive holds connect events");
        fs::write(first, zstd_encode(edited.as_bytes())).expect("alter");
        let o = verify();
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("DAMAGED"),
            "{}",
            text(&o)
        );
        // Removed without a prune record: missing, and verify fails.
        fs::remove_file(first).expect("remove");
        let o = verify();
        assert!(!o.status.success(), "{}", text(&o));
        fs::write(first, original).expect("restore");
        let o = verify();
        assert!(o.status.success(), "{}", text(&o));
    }
}

fn zstd_decode(bytes: &[u8]) -> String {
    String::from_utf8(zstd::decode_all(bytes).expect("zstd archive")).expect("utf-8 records")
}

fn zstd_encode(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 1).expect("zstd")
}
