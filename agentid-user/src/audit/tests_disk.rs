//! Closed archives compressed, pruned by policy with a signed record, and verified after.
#![expect(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "the log's own file names, lowercase by construction"
)]
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentid-audit-disk-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn pk(n: u8) -> VerifyingKey {
    key(n).verifying_key()
}

fn opts() -> AuditOptions {
    AuditOptions {
        fsync: Fsync::Interval(Duration::from_hours(1)),
        rotate_bytes: 4096,
        checkpoint_interval: Duration::from_hours(1),
    }
}

const COMPRESS: DiskPolicy = DiskPolicy {
    compress: true,
    retention: None,
};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn damage(dir: &Path, pubkey: Option<VerifyingKey>) -> Damage {
    let r = verify(dir, pubkey).unwrap();
    let text = r.to_string();
    r.damage
        .unwrap_or_else(|| panic!("expected damage: {text}"))
}

/// A log of `n` connect events over many compressed archives, a checkpoint every 10.
fn compressed_log(dir: &Path, n: u32) {
    let mut log = AuditLog::open(dir, key(1), opts()).unwrap();
    log.set_disk_policy(COMPRESS).unwrap();
    for i in 0..n {
        log.append_event(&sample_connect("research-bot", i))
            .unwrap();
        if i % 10 == 9 {
            log.checkpoint().unwrap();
        }
    }
    log.close().unwrap();
}

#[test]
fn closed_archives_are_compressed_and_verify() {
    let dir = tmpdir("compressed");
    compressed_log(&dir, 40);
    let files = log_files(&dir).unwrap();
    assert!(files.len() > 3, "{files:?}");
    for f in &files[..files.len() - 1] {
        assert!(file_name(f).ends_with(".log.zst"), "{files:?}");
    }
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.files, files.len());
    // Reopening continues the chain after compressed archives.
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    log.append_event(&sample_event("x", 1)).unwrap();
    log.close().unwrap();
    assert!(verify(&dir, Some(pk(1))).unwrap().is_ok());

    // A record changed inside a compressed archive (recompressed, so zstd is content) is
    // Modified at that record, as in a plain one.
    let first = &files[0];
    let text = String::from_utf8(segments::read(first).unwrap()).unwrap();
    let edited = text.replacen("10.20.", "10.21.", 1);
    assert_ne!(edited, text);
    fs::write(first, zstd::encode_all(edited.as_bytes(), 1).unwrap()).unwrap();
    let d = damage(&dir, Some(pk(1)));
    assert_eq!((d.kind, d.seq), (DamageKind::Modified, Some(1)), "{d}");
    // A flipped byte of the compressed file itself: the archive does not read.
    let mut raw = zstd::encode_all(text.as_bytes(), 1).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    fs::write(first, &raw).unwrap();
    assert!(
        verify(&dir, Some(pk(1))).is_err_and(|e| e.to_string().contains("zstd"))
            || !verify(&dir, Some(pk(1))).unwrap().is_ok()
    );
}

#[test]
fn a_crash_mid_compression_neither_loses_nor_duplicates_an_archive() {
    let dir = tmpdir("compress-crash");
    compressed_log(&dir, 30);
    let zst = dir.join("audit-000001.log.zst");
    let plain = dir.join("audit-000001.log");
    let content = segments::read(&zst).unwrap();
    // Crash after the rename, before the original was removed: both forms.
    fs::write(&plain, &content).unwrap();
    // Crash while writing the next one: a partial temporary file.
    fs::write(dir.join("audit-000002.log.zst.tmp"), b"partial").unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    // A compressed copy that disagrees with the original loses to it.
    fs::write(
        &zst,
        zstd::encode_all(&b"not the archive\n"[..], 1).unwrap(),
    )
    .unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "the original is read: {r}");
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    log.set_disk_policy(COMPRESS).unwrap();
    drop(log);
    let n = names(&dir);
    assert!(n.contains(&"audit-000001.log.zst".to_owned()), "{n:?}");
    assert!(
        !n.iter()
            .any(|n| n.ends_with(".tmp") || n == "audit-000001.log"),
        "{n:?}"
    );
    assert_eq!(segments::read(&zst).unwrap(), content);
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
}

/// A forward-secure log over many archives, then pruned to `max_bytes`.
fn pruned_log(root: &Path, max_bytes: u64) -> (PathBuf, VerifyingKey) {
    let dir = root.join("audit");
    let key_path = root.join("audit.key");
    let first = load_or_create_key(&key_path).unwrap().verifying_key();
    let mut log = AuditLog::open_with_key_file(&dir, &key_path, opts()).unwrap();
    log.set_disk_policy(COMPRESS).unwrap();
    for i in 0..120 {
        log.append_event(&sample_connect("research-bot", i))
            .unwrap();
        if i % 10 == 9 {
            log.checkpoint().unwrap();
        }
    }
    log.set_disk_policy(DiskPolicy {
        compress: true,
        retention: Some(AuditRetention {
            max_age: Duration::from_hours(1),
            max_bytes,
        }),
    })
    .unwrap();
    for i in 120..130 {
        log.append_event(&sample_connect("research-bot", i))
            .unwrap();
    }
    log.close().unwrap();
    (dir, first)
}

#[test]
fn retention_prunes_old_archives_and_verify_proves_what_is_kept() {
    let root = tmpdir("prune");
    let (dir, first) = pruned_log(&root, 9000);
    let n = names(&dir);
    assert!(
        !n.contains(&"audit-000001.log.zst".to_owned()),
        "pruned: {n:?}"
    );
    assert!(n.contains(&KEY_CHAIN_FILE.to_owned()), "{n:?}");
    let total: u64 = log_files(&dir)
        .unwrap()
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(total < 9000 + 4096, "{total} bytes kept");
    // From the pinned first key, through the pruned key chain, to the end.
    let r = verify_with(
        &dir,
        &VerifyOptions {
            pubkey: Some(first),
            expect_closed: true,
        },
    )
    .unwrap();
    assert!(r.is_ok(), "{r}");
    let start = r.pruned_before.expect("starts after a prune");
    assert!(start > 1 && r.first_seq == Some(start), "{r}");
    assert!(r.to_string().contains("pruned by policy"), "{r}");

    // Another key fails, as before pruning.
    let d = damage(&dir, Some(pk(9)));
    assert_eq!(d.kind, DamageKind::BadSignature, "{d}");

    // A kept archive altered: Modified.
    let kept = log_files(&dir).unwrap();
    let victim = &kept[0];
    assert!(
        file_name(victim).ends_with(".zst"),
        "an archive is kept: {kept:?}"
    );
    let original = fs::read(victim).unwrap();
    let text = String::from_utf8(segments::read(victim).unwrap()).unwrap();
    let edited = text.replacen("\"dst_port\":443", "\"dst_port\":444", 1);
    assert_ne!(edited, text);
    fs::write(victim, zstd::encode_all(edited.as_bytes(), 1).unwrap()).unwrap();
    let d = damage(&dir, Some(first));
    assert_eq!(d.kind, DamageKind::Modified, "{d}");
    fs::write(victim, &original).unwrap();
    assert!(verify(&dir, Some(first)).unwrap().is_ok());

    // The oldest kept archive removed without a prune record: missing, not pruned.
    fs::remove_file(victim).unwrap();
    let d = damage(&dir, None);
    assert_eq!(d.kind, DamageKind::Deleted, "{d}");
    assert!(d.detail.contains("no signed prune record"), "{d}");
    // From the pinned key the hand-overs of the removed archive are missing too.
    let d = damage(&dir, Some(first));
    assert!(
        matches!(d.kind, DamageKind::Deleted | DamageKind::BadSignature),
        "{d}"
    );
    fs::write(victim, &original).unwrap();

    // The pruned key chain cut: the pinned key no longer reaches the kept checkpoints.
    let chain = fs::read_to_string(dir.join(KEY_CHAIN_FILE)).unwrap();
    let lines: Vec<&str> = chain.lines().collect();
    assert!(lines.len() > 1, "{chain}");
    fs::write(dir.join(KEY_CHAIN_FILE), lines[1..].join("\n") + "\n").unwrap();
    let d = damage(&dir, Some(first));
    assert_eq!(d.kind, DamageKind::BadSignature, "{d}");
    fs::write(dir.join(KEY_CHAIN_FILE), &chain).unwrap();

    let r = verify(&dir, Some(first)).unwrap();
    assert!(r.is_ok(), "{r}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_bundle_of_a_pruned_log_verifies_from_the_first_key() {
    let root = tmpdir("prune-bundle");
    let (dir, first) = pruned_log(&root, 6000);
    let out = root.join("bundle.json");
    let agent = "spiffe://example.org/agent/research-bot";
    let s = export_bundle(&dir, agent, None, None, None, &out).unwrap();
    assert!(s.relevant > 0);
    let r = verify_bundle(&out, Some(first)).unwrap();
    assert!(r.is_ok(), "{r}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn retention_by_age_prunes_only_old_archives() {
    let dir = tmpdir("prune-age");
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    log.set_disk_policy(COMPRESS).unwrap();
    for i in 0..60 {
        log.append_event(&sample_connect("research-bot", i))
            .unwrap();
    }
    log.set_disk_policy(DiskPolicy {
        compress: true,
        retention: Some(AuditRetention {
            max_age: Duration::from_hours(1),
            max_bytes: u64::MAX,
        }),
    })
    .unwrap();
    let before = names(&dir);
    // Nothing is an hour old yet.
    assert_eq!(log.prune(SystemTime::now()).unwrap(), None);
    // Two hours later everything closed is.
    let later = SystemTime::now() + Duration::from_hours(2);
    let seq = log.prune(later).unwrap().expect("pruned");
    log.close().unwrap();
    let after = names(&dir);
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    assert!(!after.iter().any(|n| n.ends_with(".zst")), "{after:?}");
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.pruned_before, r.first_seq);
    assert!(r.first_seq <= Some(seq), "{r}");
    fs::remove_dir_all(&dir).unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The disk budget: store and audit log together at most 256 bytes per connect event
/// (sizes, not timings: deterministic). Also: the store gives every event back whole.
#[test]
fn store_and_audit_stay_within_256_bytes_per_connect_event() {
    use crate::{
        outputs::fanout::{EventJson, Output as _, StoreOutput},
        store::{Query, Retention, Store},
    };
    const N: u32 = 50_000;
    let root = tmpdir("budget");
    let audit_dir = root.join("audit");
    let store_dir = root.join("store");
    fs::create_dir_all(&store_dir).unwrap();
    let store = Store::open(&store_dir.join("agentid.db")).unwrap();
    let writer = store
        .writer(Retention {
            max_age: Duration::from_hours(1_000_000),
            max_bytes: u64::MAX,
        })
        .unwrap();
    let mut out = StoreOutput::new(writer.clone());
    let mut log = AuditLog::open(
        &audit_dir,
        key(1),
        AuditOptions {
            rotate_bytes: 1 << 20,
            ..opts()
        },
    )
    .unwrap();
    log.set_disk_policy(COMPRESS).unwrap();
    for i in 0..N {
        let e = sample_connect("research-bot", i);
        // As the daemon does: one encoding for the store and the audit log.
        let json = EventJson::new(&e).unwrap();
        out.event(&e, &json);
        log.append_event_text(&json.text).unwrap();
        if i % 1000 == 999 {
            log.checkpoint().unwrap();
        }
    }
    log.close().unwrap();
    writer.flush().unwrap();
    drop(out);
    drop(writer);
    let events = store
        .events(&Query {
            limit: Some(N),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(events.len(), N as usize);
    for (i, row) in events.iter().enumerate().step_by(997) {
        let i = u32::try_from(i).unwrap();
        let want = serde_json::to_value(sample_connect("research-bot", i)).unwrap();
        assert_eq!(row.body, want, "event {i} comes back whole");
    }
    drop(store);
    // What the disk holds once the WAL is folded in.
    {
        let c = rusqlite::Connection::open(store_dir.join("agentid.db")).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let store_bytes = dir_bytes(&store_dir);
    let audit_bytes = dir_bytes(&audit_dir);
    let per = |b: u64| b / u64::from(N);
    println!(
        "disk per connect event: store {} B, audit {} B, together {} B",
        per(store_bytes),
        per(audit_bytes),
        per(store_bytes + audit_bytes)
    );
    assert!(verify(&audit_dir, Some(pk(1))).unwrap().is_ok());
    assert!(
        store_bytes + audit_bytes <= 256 * u64::from(N),
        "store {store_bytes} + audit {audit_bytes} bytes for {N} events: over 256 per event"
    );
    fs::remove_dir_all(&root).unwrap();
}
