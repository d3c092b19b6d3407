use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use super::*;
use crate::detect::Alert;

const AGENT: &str = "spiffe://example.org/agent/research-bot";

pub(super) fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentid-audit-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

pub(super) fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub(super) fn opts() -> AuditOptions {
    AuditOptions {
        fsync: Fsync::Interval(Duration::from_hours(1)),
        rotate_bytes: u64::MAX,
        checkpoint_interval: Duration::from_hours(1),
    }
}

/// 1-10 events, 11 checkpoint, 12-21 events, 22 checkpoint, 23-25 events, 26 final.
fn standard_log(name: &str) -> PathBuf {
    let dir = tmpdir(name);
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    for i in 0..10 {
        log.append_event(&sample_event("research-bot", i)).unwrap();
    }
    assert_eq!(log.checkpoint().unwrap(), Some(11));
    for i in 10..20 {
        log.append_event(&sample_event("research-bot", i)).unwrap();
    }
    assert_eq!(log.checkpoint().unwrap(), Some(22));
    log.append_alert(&Alert::sample()).unwrap();
    log.append_event(&sample_event("billing-bot", 99)).unwrap();
    log.append_alert(&Alert::sample()).unwrap();
    log.close().unwrap();
    dir
}

fn lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(CURRENT_FILE))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    fs::write(dir.join(CURRENT_FILE), lines.join("\n") + "\n").unwrap();
}

pub(super) fn pk(n: u8) -> VerifyingKey {
    key(n).verifying_key()
}

fn damage(dir: &Path, pubkey: Option<VerifyingKey>) -> Damage {
    let r = verify(dir, pubkey).unwrap();
    let shown = r.to_string();
    r.damage
        .unwrap_or_else(|| panic!("no damage found: {shown}"))
}

/// What a forger with write access does: renumber and re-hash every record from `from`
/// on, leaving bodies (and so the checkpoints' signed heads) alone.
fn rechain(records: &mut [Value], from: usize) {
    for i in from..records.len() {
        let prev = records[i - 1]["hash"].clone();
        let seq = records[i - 1]["seq"].as_u64().unwrap() + 1;
        records[i]["prev"] = prev;
        records[i]["seq"] = json!(seq);
        records[i]["hash"] = json!(record_hash(&records[i]).unwrap());
    }
}

fn parse_all(dir: &Path) -> Vec<Value> {
    lines(dir)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_all(dir: &Path, records: &[Value]) {
    write_lines(dir, &records.iter().map(canonical).collect::<Vec<_>>());
}

#[test]
fn canonical_is_sorted_and_matches_serde_json_default() {
    let a: Value =
        serde_json::from_str(r#"{"b":1,"a":{"z":[1,{"y":2,"x":"é\n"}],"c":null}}"#).unwrap();
    let b: Value =
        serde_json::from_str(r#"{"a":{"c":null,"z":[1,{"x":"é\n","y":2}]},"b":1}"#).unwrap();
    let text = canonical(&a);
    assert_eq!(text, r#"{"a":{"c":null,"z":[1,{"x":"é\n","y":2}]},"b":1}"#);
    assert_eq!(text, canonical(&b));
    // Documents the default: serde_json's Map is a BTreeMap (no `preserve_order` in
    // this build), so its own output is sorted too.
    assert_eq!(text, serde_json::to_string(&a).unwrap());
}

#[test]
fn encoded_record_is_canonical_and_hash_covers_prev() {
    let body = json!({"k": [1, 2], "a": "x"});
    let (line, hash) = encode_record(
        7,
        "2025-01-01T00:00:00Z",
        "event",
        &canonical(&body),
        GENESIS,
    );
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(canonical(&v), line);
    assert_eq!(record_hash(&v).unwrap(), hash);
    let (_, other) = encode_record(
        7,
        "2025-01-01T00:00:00Z",
        "event",
        &canonical(&body),
        &"1".repeat(64),
    );
    assert_ne!(hash, other);
}

#[test]
fn clean_log_verifies() {
    let dir = standard_log("clean");
    let r = verify_with(
        &dir,
        &VerifyOptions {
            pubkey: Some(pk(1)),
            expect_closed: true,
        },
    )
    .unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.records, r.checkpoints, r.unsigned_tail), (26, 3, 0));
    assert!(r.closed);
    assert_eq!(r.key, KeySource::Given);
    assert!(
        r.to_string().starts_with("ok 26 records, 3 checkpoints"),
        "{r}"
    );
    // Without a key: the embedded one, and the report says so.
    let r = verify(&dir, None).unwrap();
    assert!(r.is_ok());
    assert!(matches!(r.key, KeySource::Embedded(_)));
    assert!(r.to_string().contains("pass --pubkey"), "{r}");
}

#[test]
fn restart_continues_the_chain() {
    let dir = standard_log("restart");
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    assert_eq!(log.next_seq(), 27);
    log.append_event(&sample_event("research-bot", 1)).unwrap();
    log.close().unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.records, r.last_seq), (28, Some(28)));
    // A closed, reopened and closed-again log with nothing new adds nothing.
    AuditLog::open(&dir, key(1), opts())
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(verify(&dir, Some(pk(1))).unwrap().records, 28);
}

#[test]
fn another_key_cannot_continue_the_log() {
    let dir = standard_log("keychanged");
    let err = AuditLog::open(&dir, key(2), opts()).unwrap_err();
    assert!(matches!(err, AuditError::KeyChanged { .. }), "{err}");
}

#[test]
fn torn_last_line_is_cut_and_recorded() {
    let dir = standard_log("torn");
    let mut data = fs::read(dir.join(CURRENT_FILE)).unwrap();
    let whole = data.len() as u64;
    // SIGKILL mid-write: half a record, no newline.
    data.extend_from_slice(br#"{"body":{"kind":"exec","pid":12"#);
    fs::write(dir.join(CURRENT_FILE), &data).unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert!(r.notes.iter().any(|n| n.contains("torn last line")), "{r}");

    let log = AuditLog::open(&dir, key(1), opts()).unwrap();
    log.close().unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    let recs = parse_all(&dir);
    let tear = &recs[26];
    assert_eq!(tear["type"], "tear");
    assert_eq!(tear["body"]["offset"], json!(whole));
    assert_eq!(tear["body"]["bytes"], json!(31));
    assert!(r.notes.iter().any(|n| n.contains("tear at seq 27")), "{r}");
    assert!(r.closed);
}

#[test]
fn unparsable_last_line_is_a_tear_too() {
    let dir = standard_log("garbage");
    let mut data = fs::read(dir.join(CURRENT_FILE)).unwrap();
    data.extend_from_slice(b"\0\0\0\0\n");
    fs::write(dir.join(CURRENT_FILE), &data).unwrap();
    AuditLog::open(&dir, key(1), opts())
        .unwrap()
        .close()
        .unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(parse_all(&dir)[26]["body"]["bytes"], json!(5));
}

#[test]
fn rotation_keeps_the_chain() {
    let dir = tmpdir("rotate");
    let mut o = opts();
    o.rotate_bytes = 4096;
    let mut log = AuditLog::open(&dir, key(1), o).unwrap();
    for i in 0..40 {
        log.append_event(&sample_event("research-bot", i)).unwrap();
        if i % 10 == 9 {
            log.checkpoint().unwrap();
        }
    }
    log.close().unwrap();
    let files = log_files(&dir).unwrap();
    assert!(files.len() > 3, "{files:?}");
    assert_eq!(file_name(&files[0]), "audit-000001.log");
    let r = verify_with(
        &dir,
        &VerifyOptions {
            pubkey: Some(pk(1)),
            expect_closed: true,
        },
    )
    .unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.files, files.len());
    // Reopen after rotation continues from the newest file.
    let mut log = AuditLog::open(&dir, key(1), o).unwrap();
    log.append_event(&sample_event("x", 1)).unwrap();
    log.close().unwrap();
    assert!(verify(&dir, Some(pk(1))).unwrap().is_ok());

    // Cutting the end of an archived file is a truncation of that file.
    let first = &files[0];
    let text = fs::read_to_string(first).unwrap();
    let keep: Vec<&str> = text.lines().collect();
    fs::write(first, keep[..keep.len() - 2].join("\n") + "\n").unwrap();
    let d = damage(&dir, Some(pk(1)));
    assert_eq!(d.kind, DamageKind::Truncated, "{d}");
    // Removing a whole archive leaves a seq gap.
    fs::remove_file(&files[1]).unwrap();
    fs::write(first, text).unwrap();
    let d = damage(&dir, Some(pk(1)));
    assert_eq!(d.kind, DamageKind::Deleted, "{d}");
}

#[test]
fn flipped_byte_is_modified_at_its_record() {
    let dir = standard_log("flip");
    let mut l = lines(&dir);
    let at = l[4].find("\"comm\":\"").unwrap() + 8;
    let mut bytes = l[4].clone().into_bytes();
    bytes[at] ^= 0x01;
    l[4] = String::from_utf8(bytes).unwrap();
    write_lines(&dir, &l);
    let d = damage(&dir, Some(pk(1)));
    assert_eq!((d.kind, d.seq), (DamageKind::Modified, Some(5)), "{d}");
    assert_eq!(d.location, "audit.log:5");
}

#[test]
fn deleted_line_is_deleted_at_its_seq() {
    let dir = standard_log("delete");
    let mut l = lines(&dir);
    l.remove(4);
    write_lines(&dir, &l);
    let d = damage(&dir, Some(pk(1)));
    assert_eq!((d.kind, d.seq), (DamageKind::Deleted, Some(5)), "{d}");
}

#[test]
fn swapped_lines_are_reordered() {
    let dir = standard_log("swap");
    let mut l = lines(&dir);
    l.swap(4, 5);
    write_lines(&dir, &l);
    let d = damage(&dir, Some(pk(1)));
    assert_eq!((d.kind, d.seq), (DamageKind::Reordered, Some(6)), "{d}");
    assert_eq!(d.location, "audit.log:5");
}

#[test]
fn inserted_line_with_rehashed_chain_is_caught_by_the_checkpoint() {
    let dir = standard_log("insert");
    let mut recs = parse_all(&dir);
    // A forged event after seq 14, everything after renumbered and re-hashed.
    let mut forged = recs[13].clone();
    forged["body"]["comm"] = json!("innocent");
    recs.insert(14, forged);
    rechain(&mut recs, 14);
    write_all(&dir, &recs);
    let d = damage(&dir, Some(pk(1)));
    assert_eq!(d.kind, DamageKind::Inserted, "{d}");
    // Narrowed to the records after the last checkpoint that still holds (seq 11 signed
    // seq 1..=10) up to the one that catches it.
    let (from, until) = (d.seq.unwrap(), d.until.unwrap());
    assert!((from..=until).contains(&15), "{d}");
    assert_eq!((from, until), (11, 22));
    // Without a forged insertion but with one record rewritten: Modified.
    let dir = standard_log("rewrite");
    let mut recs = parse_all(&dir);
    recs[14]["body"]["comm"] = json!("innocent");
    rechain(&mut recs, 14);
    write_all(&dir, &recs);
    let d = damage(&dir, Some(pk(1)));
    assert_eq!(
        (d.kind, d.seq, d.until),
        (DamageKind::Modified, Some(11), Some(21)),
        "{d}"
    );
    // Deleted and re-hashed: Deleted.
    let dir = standard_log("delete-rehash");
    let mut recs = parse_all(&dir);
    recs.remove(14);
    rechain(&mut recs, 14);
    write_all(&dir, &recs);
    let d = damage(&dir, Some(pk(1)));
    assert_eq!(d.kind, DamageKind::Deleted, "{d}");
}

#[test]
fn truncated_log_is_caught_when_it_should_be_closed() {
    let dir = standard_log("truncate");
    let l = lines(&dir);
    write_lines(&dir, &l[..22]);
    // A cut at a checkpoint is a valid shorter log by itself...
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert!(!r.closed);
    // ...but not for a daemon that stopped cleanly.
    let r = verify_with(
        &dir,
        &VerifyOptions {
            pubkey: Some(pk(1)),
            expect_closed: true,
        },
    )
    .unwrap();
    let d = r.damage.unwrap();
    assert_eq!((d.kind, d.seq), (DamageKind::Truncated, Some(23)), "{d}");
    // A cut after the last checkpoint shows as an unsigned tail.
    write_lines(&dir, &l[..24]);
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert_eq!(r.unsigned_tail, 2, "{r}");
}

#[test]
fn replaced_key_fails_with_the_original_pubkey() {
    let dir = standard_log("rekey");
    let mut recs = parse_all(&dir);
    let evil = key(9);
    let evil_pk = public_key_base64(&evil.verifying_key());
    for i in 0..recs.len() {
        if i > 0 {
            recs[i]["prev"] = recs[i - 1]["hash"].clone();
        }
        if recs[i]["type"] == "checkpoint" {
            // The forger re-signs the head of the (re-hashed) chain before it.
            let head = recs[i - 1]["hash"].as_str().unwrap().to_owned();
            let seq_to = recs[i - 1]["seq"].as_u64().unwrap();
            recs[i]["body"]["head"] = json!(head);
            recs[i]["body"]["signature"] = json!(sign_checkpoint(&evil, &head, seq_to).unwrap());
            recs[i]["body"]["public_key"] = json!(evil_pk);
        }
        recs[i]["hash"] = json!(record_hash(&recs[i]).unwrap());
    }
    write_all(&dir, &recs);
    let d = damage(&dir, Some(pk(1)));
    assert_eq!((d.kind, d.seq), (DamageKind::BadSignature, Some(11)), "{d}");
    assert!(d.detail.contains("re-signed"), "{d}");
    // Without --pubkey it "verifies" — with the forger's key, which the report shows.
    let r = verify(&dir, None).unwrap();
    assert!(r.is_ok());
    assert_eq!(r.key, KeySource::Embedded(evil_pk));
}

#[test]
fn checkpoints_follow_the_interval() {
    let dir = tmpdir("interval");
    let mut o = opts();
    o.checkpoint_interval = Duration::ZERO;
    let mut log = AuditLog::open(&dir, key(1), o).unwrap();
    for i in 0..3 {
        log.append_event(&sample_event("a", i)).unwrap();
    }
    // Nothing new since the last checkpoint: none written.
    assert_eq!(log.maybe_checkpoint(Instant::now()).unwrap(), None);
    log.close().unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    // event, checkpoint, event, checkpoint, event, checkpoint, final checkpoint.
    assert_eq!((r.records, r.checkpoints), (7, 4), "{r}");
    let recs = parse_all(&dir);
    assert_eq!(recs[1]["body"]["seq_from"], json!(1));
    // Each checkpoint covers everything after the previous one's seq_to, itself included.
    assert_eq!(recs[3]["body"]["seq_from"], json!(2));
    assert_eq!(recs[3]["body"]["seq_to"], json!(3));
    assert_eq!(recs[6]["body"]["final"], json!(true));
}

#[test]
fn key_file_is_private_and_stable() {
    let dir = tmpdir("key");
    let path = dir.join("audit.key");
    let k = load_or_create_key(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(load_or_create_key(&path).unwrap().to_bytes(), k.to_bytes());
    assert_eq!(load_key(&path).unwrap().to_bytes(), k.to_bytes());

    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let err = load_or_create_key(&path).unwrap_err();
    assert!(err.to_string().contains("group or others"), "{err}");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

    let link = dir.join("link.key");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let err = load_or_create_key(&link).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(load_key(&dir.join("missing.key")).is_err());
}

#[test]
fn bundle_verifies_alone_and_fails_when_altered() {
    let dir = standard_log("bundle");
    let out = dir.join("bundle.json");
    let reg = json!({"id": AGENT, "name": "research-bot"});
    let s = export_bundle(&dir, AGENT, None, None, Some(reg), &out).unwrap();
    // The agent's 20 events and 2 alerts; the segment runs to the final checkpoint.
    assert_eq!((s.relevant, s.first_seq, s.last_seq), (22, 1, 26), "{s:?}");
    assert!(s.covered);
    let r = verify_bundle(&out, Some(pk(1))).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.sessions, vec!["research-bot/4000-100000".to_owned()]);
    assert_eq!(r.exec_ids.len(), 23);
    assert!(!verify_bundle(&out, Some(pk(2))).unwrap().is_ok());

    // Only billing-bot's one event: a short segment up to the final checkpoint.
    let billing = "spiffe://example.org/agent/billing-bot";
    let s = export_bundle(&dir, billing, None, None, None, &dir.join("b.json")).unwrap();
    assert_eq!((s.relevant, s.first_seq, s.last_seq), (3, 23, 26), "{s:?}");
    assert!(
        verify_bundle(&dir.join("b.json"), Some(pk(1)))
            .unwrap()
            .is_ok()
    );

    let original: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    let alter = |f: &dyn Fn(&mut Value)| {
        let mut b = original.clone();
        f(&mut b);
        fs::write(&out, serde_json::to_string(&b).unwrap()).unwrap();
        verify_bundle(&out, Some(pk(1))).unwrap()
    };
    let r = alter(&|b| b["records"][3]["body"]["pid"] = json!(1));
    assert_eq!(r.chain.damage.unwrap().kind, DamageKind::Modified);
    let r = alter(&|b| {
        b["records"].as_array_mut().unwrap().remove(3);
    });
    assert!(!r.is_ok(), "{r}");
    let r = alter(&|b| b["sessions"] = json!(["someone-else/1-1"]));
    assert!(r.problem.is_some(), "{r}");
    let r = alter(&|b| {
        let recs = b["records"].as_array_mut().unwrap();
        recs.truncate(recs.len() - 1);
    });
    assert!(!r.is_ok(), "{r}");
}

/// Cost of the audit log for a typical event. Run:
/// `cargo test -p agentid-user --release --lib audit::tests::cost -- --ignored --nocapture`
#[test]
#[ignore = "measurement, prints numbers"]
fn cost() {
    for (name, fsync, n) in [
        ("every-record", Fsync::EveryRecord, 2_000u32),
        (
            "interval-1s",
            Fsync::Interval(Duration::from_secs(1)),
            50_000,
        ),
    ] {
        let dir = tmpdir(&format!("cost-{name}"));
        let o = AuditOptions {
            fsync,
            ..AuditOptions::default()
        };
        let events: Vec<_> = (0..n).map(|i| sample_event("research-bot", i)).collect();
        let mut log = AuditLog::open(&dir, key(1), o).unwrap();
        let start = Instant::now();
        for e in &events {
            log.append_event(e).unwrap();
        }
        log.close().unwrap();
        let secs = start.elapsed().as_secs_f64();
        let bytes = fs::metadata(dir.join(CURRENT_FILE)).unwrap().len();
        println!(
            "audit cost fsync={name}: {n} records in {secs:.3}s = {:.0} records/s, {} bytes/record",
            f64::from(n) / secs,
            bytes / u64::from(n)
        );
        let start = Instant::now();
        let r = verify(&dir, Some(pk(1))).unwrap();
        assert!(r.is_ok());
        println!(
            "audit verify: {:.0} records/s",
            f64::from(n) / start.elapsed().as_secs_f64()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn damage_in_the_unsigned_tail_does_not_stop_the_log() {
    let dir = standard_log("tail-damage");
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    for i in 0..3 {
        log.append_event(&sample_event("research-bot", i)).unwrap();
    }
    drop(log); // a crash: no close
    let mut l = lines(&dir);
    l[27] = "garbage".into();
    write_lines(&dir, &l);
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    assert_eq!(log.next_seq(), 30);
    log.append_event(&sample_event("research-bot", 9)).unwrap();
    log.close().unwrap();
    let d = damage(&dir, Some(pk(1)));
    assert_eq!((d.kind, d.seq), (DamageKind::Modified, Some(28)), "{d}");
}

/// A forward-secure log in `root/audit` with its key file `root/audit.key`: 4 events,
/// checkpoint, 4 events, checkpoint, 2 events, close (seqs 5, 10, 13). Returns the chain's
/// first public key and the anchors published.
fn forward_secure_log(root: &Path) -> (VerifyingKey, Vec<Checkpoint>) {
    let key_path = root.join("audit.key");
    let mut log = AuditLog::open_with_key_file(&root.join("audit"), &key_path, opts()).unwrap();
    let first = chain_origin(&key_path).unwrap();
    let mut anchors = Vec::new();
    for round in 0..2 {
        for i in 0..4 {
            log.append_event(&sample_event("research-bot", round * 10 + i))
                .unwrap();
        }
        let before = load_key(&key_path).unwrap().to_bytes();
        log.checkpoint().unwrap();
        // The key file now holds the next key: the one that signed is gone from disk.
        assert_ne!(load_key(&key_path).unwrap().to_bytes(), before);
        assert_eq!(
            log.public_key(),
            public_key_base64(&load_key(&key_path).unwrap().verifying_key())
        );
        anchors.extend(log.take_anchors());
    }
    log.append_event(&sample_event("research-bot", 90)).unwrap();
    log.append_alert(&Alert::sample()).unwrap();
    log.finish().unwrap();
    anchors.extend(log.take_anchors());
    drop(log);
    assert_eq!(
        chain_origin(&key_path).unwrap(),
        first,
        "the pinned key stays the first"
    );
    (first, anchors)
}

#[test]
fn key_rotates_forward_at_every_checkpoint() {
    let root = tmpdir("fs-rotate");
    let (first, anchors) = forward_secure_log(&root);
    let dir = root.join("audit");
    assert_eq!(
        anchors.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![5, 10, 13]
    );
    // Each checkpoint is signed by the key the previous one handed over to.
    assert_eq!(anchors[0].public_key, public_key_base64(&first));
    for w in anchors.windows(2) {
        assert_eq!(w[0].next_public_key.as_ref(), Some(&w[1].public_key));
        assert_ne!(w[0].public_key, w[1].public_key);
    }
    assert!(anchors.iter().all(Checkpoint::self_signed));
    let r = verify_with(
        &dir,
        &VerifyOptions {
            pubkey: Some(first),
            expect_closed: true,
        },
    )
    .unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.checkpoints, r.closed), (3, true));
    // The key left on the host verifies nothing of the past.
    let current = load_key(&root.join("audit.key")).unwrap().verifying_key();
    let d = damage(&dir, Some(current));
    assert_eq!((d.kind, d.seq), (DamageKind::BadSignature, Some(5)), "{d}");
    // A restart continues the chain with the handed-over key.
    let mut log = AuditLog::open_with_key_file(&dir, &root.join("audit.key"), opts()).unwrap();
    log.append_event(&sample_event("research-bot", 7)).unwrap();
    log.close().unwrap();
    let r = verify(&dir, Some(first)).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.checkpoints, 4);
}

#[test]
fn past_resigned_with_the_key_found_on_the_host_fails() {
    let root = tmpdir("fs-resign");
    let (first, _) = forward_secure_log(&root);
    let dir = root.join("audit");
    // The attacker takes the host: it has the newest key and rewrites record 2, then
    // re-hashes the chain and re-signs every checkpoint, handing over to itself.
    let stolen = load_key(&root.join("audit.key")).unwrap();
    let stolen_pk = public_key_base64(&stolen.verifying_key());
    let mut recs = parse_all(&dir);
    recs[1]["body"]["pid"] = json!(1);
    for i in 1..recs.len() {
        recs[i]["prev"] = recs[i - 1]["hash"].clone();
        if recs[i]["type"] == "checkpoint" {
            let head = recs[i - 1]["hash"].as_str().unwrap().to_owned();
            let seq_to = recs[i - 1]["seq"].as_u64().unwrap();
            recs[i]["body"]["head"] = json!(head);
            recs[i]["body"]["public_key"] = json!(stolen_pk);
            recs[i]["body"]["next_public_key"] = json!(stolen_pk);
            recs[i]["body"]["signature"] =
                json!(sign_checkpoint_next(&stolen, &head, seq_to, Some(&stolen_pk)).unwrap());
        }
        recs[i]["hash"] = json!(record_hash(&recs[i]).unwrap());
    }
    write_all(&dir, &recs);
    let d = damage(&dir, Some(first));
    assert_eq!((d.kind, d.seq), (DamageKind::BadSignature, Some(5)), "{d}");
    // Keeping the genuine first key's fields does not help: the signature covers them.
    let mut recs = parse_all(&dir);
    let genuine = public_key_base64(&first);
    recs[4]["body"]["public_key"] = json!(genuine);
    recs[4]["hash"] = json!(record_hash(&recs[4]).unwrap());
    rechain(&mut recs, 5);
    write_all(&dir, &recs);
    let d = damage(&dir, Some(first));
    assert_eq!((d.kind, d.seq), (DamageKind::BadSignature, Some(5)), "{d}");
}

#[test]
fn crash_before_the_key_file_was_replaced_is_finished_on_open() {
    let root = tmpdir("fs-crash");
    let key_path = root.join("audit.key");
    let dir = root.join("audit");
    let mut log = AuditLog::open_with_key_file(&dir, &key_path, opts()).unwrap();
    let first = chain_origin(&key_path).unwrap();
    log.append_event(&sample_event("research-bot", 1)).unwrap();
    let old = fs::read(&key_path).unwrap();
    log.checkpoint().unwrap();
    drop(log); // a crash: no close
    // Put the disk back as a crash between the synced checkpoint and the rename leaves it.
    fs::rename(&key_path, root.join("audit.key.next")).unwrap();
    fs::write(&key_path, &old).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    let mut log = AuditLog::open_with_key_file(&dir, &key_path, opts()).unwrap();
    assert!(!root.join("audit.key.next").exists());
    log.append_event(&sample_event("research-bot", 2)).unwrap();
    log.close().unwrap();
    let r = verify(&dir, Some(first)).unwrap();
    assert!(r.is_ok(), "{r}");
    // A staged key the log never handed over to is discarded, not used.
    fs::write(root.join("audit.key.next"), &old).unwrap();
    fs::set_permissions(
        root.join("audit.key.next"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let log = AuditLog::open_with_key_file(&dir, &key_path, opts()).unwrap();
    assert!(!root.join("audit.key.next").exists());
    log.close().unwrap();
    assert!(verify(&dir, Some(first)).unwrap().is_ok());
}

/// The anchors as three sinks would have written them: native JSON, OCSF, and CEF in
/// syslog.
fn sink_lines(anchors: &[Checkpoint]) -> String {
    use crate::outputs::encode::{EncodeContext, cef, ocsf};
    let ctx = EncodeContext {
        hostname: "node1".into(),
        ocsf_ai_agent: false,
    };
    let mut out = String::new();
    for (i, a) in anchors.iter().enumerate() {
        let line = match i % 3 {
            0 => json!({"type": "audit_checkpoint", "audit_checkpoint": a}).to_string(),
            1 => ocsf::audit_checkpoint(a, &ctx).to_string(),
            _ => format!(
                "<110>1 - node1 agentid - audit-checkpoint - {}",
                cef::audit_checkpoint(a)
            ),
        };
        out.push_str(&line);
        out.push('\n');
        // At-least-once delivery: duplicates are normal.
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn anchors_catch_a_rollback_and_a_rewrite() {
    let root = tmpdir("anchors");
    let (first, anchors) = forward_secure_log(&root);
    let dir = root.join("audit");
    let mut text = sink_lines(&anchors);
    // A line someone wrote into the SIEM: not signed, so not an anchor.
    let mut fake = anchors[2].clone();
    fake.seq = 40;
    text.push_str(&json!({"audit_checkpoint": fake}).to_string());
    text.push('\n');
    let parsed = Anchors::parse(&text);
    assert_eq!((parsed.list.len(), parsed.forged), (3, 1));
    assert_eq!(parsed.list, anchors);

    let c = check_anchors(&dir, &parsed, Some(first)).unwrap();
    assert!(c.is_ok(), "{c}");
    assert_eq!((c.anchored, c.matched), (3, 3));
    let c = check_anchors(&dir, &parsed, None).unwrap();
    assert!(c.is_ok(), "{c}");

    // Rolled back to the first checkpoint: a clean-looking, shorter log.
    let all = lines(&dir);
    write_lines(&dir, &all[..5]);
    assert!(verify(&dir, Some(first)).unwrap().is_ok());
    let c = check_anchors(&dir, &parsed, Some(first)).unwrap();
    assert!(!c.is_ok());
    assert_eq!(
        c.missing.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![10, 13]
    );
    let shown = c.to_string();
    assert!(
        shown.contains("lacks 2 anchored checkpoint(s) at seq 10, 13"),
        "{shown}"
    );
    assert!(!shown.contains('\n'), "one line: {shown}");
    // Also without --pubkey: the hand-over from seq 5 leads to the missing ones.
    assert_eq!(check_anchors(&dir, &parsed, None).unwrap().missing.len(), 2);

    // Rewritten: the checkpoint at seq 10 re-signed by the key found afterwards.
    write_lines(&dir, &all);
    let stolen = load_key(&root.join("audit.key")).unwrap();
    let mut recs = parse_all(&dir);
    recs[6]["body"]["pid"] = json!(1);
    recs[6]["hash"] = json!(record_hash(&recs[6]).unwrap());
    rechain(&mut recs, 7);
    let head = recs[8]["hash"].as_str().unwrap().to_owned();
    recs[9]["body"]["head"] = json!(head);
    let next = recs[9]["body"]["next_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    recs[9]["body"]["signature"] =
        json!(sign_checkpoint_next(&stolen, &head, 9, Some(&next)).unwrap());
    rechain(&mut recs, 9);
    write_all(&dir, &recs);
    let c = check_anchors(&dir, &parsed, Some(first)).unwrap();
    assert_eq!(
        (
            c.disagreeing.iter().map(|a| a.seq).collect::<Vec<_>>(),
            c.missing.len()
        ),
        (vec![10], 0),
        "{c}"
    );
    assert!(c.to_string().contains("disagrees with 1"), "{c}");
    // (The checkpoint at seq 13 still states what was published; its chain no longer
    // leads to it, which `verify` reports.)
    assert!(!verify(&dir, Some(first)).unwrap().is_ok());

    // Replaced wholesale by a log of another key: no anchor is this log's.
    let other = tmpdir("anchors-other");
    let mut log = AuditLog::open(&other, key(7), opts()).unwrap();
    log.append_event(&sample_event("research-bot", 1)).unwrap();
    log.close().unwrap();
    let c = check_anchors(&other, &parsed, None).unwrap();
    assert!(!c.is_ok() && c.foreign == 3, "{c}");
    let c = check_anchors(&other, &parsed, Some(first)).unwrap();
    assert_eq!(c.missing.len(), 3, "{c}");
}

#[test]
fn bundle_of_a_forward_secure_log_verifies_from_the_first_key() {
    let root = tmpdir("fs-bundle");
    let (first, _) = forward_secure_log(&root);
    let dir = root.join("audit");
    let out = root.join("bundle.json");
    // Only records after the first checkpoint: the segment is signed by later keys.
    let since = humantime::parse_rfc3339(parse_all(&dir)[5]["ts"].as_str().unwrap()).unwrap();
    export_bundle(&dir, AGENT, Some(since), None, None, &out).unwrap();
    let r = verify_bundle(&out, Some(first)).unwrap();
    assert!(r.is_ok(), "{r}");
    // The key found on the host afterwards is not the chain's.
    let current = load_key(&root.join("audit.key")).unwrap().verifying_key();
    assert!(!verify_bundle(&out, Some(current)).unwrap().is_ok());
    // A key chain that does not start at the pinned key fails.
    let mut b: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    b["key_chain"] = json!([]);
    fs::write(&out, b.to_string()).unwrap();
    assert!(!verify_bundle(&out, Some(first)).unwrap().is_ok());
}

#[test]
fn a_static_key_log_upgrades_to_forward_secure_in_place() {
    let root = tmpdir("fs-upgrade");
    let (dir, key_path) = (root.join("audit"), root.join("audit.key"));
    // An earlier version: one key for every checkpoint, a key file without an origin line.
    let key = load_or_create_key(&key_path).unwrap();
    let pinned = key.verifying_key();
    let mut log = AuditLog::open(&dir, key, opts()).unwrap();
    log.append_event(&sample_event("research-bot", 1)).unwrap();
    log.close().unwrap();
    assert_eq!(chain_origin(&key_path).unwrap(), pinned);
    // This version continues the same chain and starts rotating from the pinned key.
    let mut log = AuditLog::open_with_key_file(&dir, &key_path, opts()).unwrap();
    log.append_event(&sample_event("research-bot", 2)).unwrap();
    log.checkpoint().unwrap();
    log.append_event(&sample_event("research-bot", 3)).unwrap();
    log.close().unwrap();
    assert_eq!(
        chain_origin(&key_path).unwrap(),
        pinned,
        "pubkey still prints it"
    );
    assert_ne!(load_key(&key_path).unwrap().verifying_key(), pinned);
    let r = verify(&dir, Some(pinned)).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.checkpoints, 3);
}

#[test]
fn anchors_lead_the_pinned_key_past_removed_old_records() {
    let root = tmpdir("fs-removed");
    let (first, anchors) = forward_secure_log(&root);
    let dir = root.join("audit");
    // The oldest records, through the first checkpoint, are gone (old files removed).
    let all = lines(&dir);
    write_lines(&dir, &all[5..]);
    // The first checkpoint left was signed by the second key: the pinned one alone fails.
    let d = damage(&dir, Some(first));
    assert_eq!((d.kind, d.seq), (DamageKind::BadSignature, Some(10)), "{d}");
    let parsed = Anchors::parse(&sink_lines(&anchors));
    let start = start_key(&dir, &parsed, first).unwrap();
    assert_eq!(public_key_base64(&start), anchors[1].public_key);
    // Every signature checks from there; the records cut without a signed prune record
    // are still missing (a policy prune writes one: `tests_disk`).
    let d = damage(&dir, Some(start));
    assert_eq!((d.kind, d.seq), (DamageKind::Deleted, Some(5)), "{d}");
    // The removed checkpoint is not "missing": a rollback cuts the end, not the start.
    let c = check_anchors(&dir, &parsed, Some(first)).unwrap();
    assert!(c.is_ok(), "{c}");
    assert_eq!((c.matched, c.before_log), (2, 1), "{c}");
    // A whole log needs no walking; a stranger's anchor leads nowhere.
    write_lines(&dir, &all);
    assert_eq!(start_key(&dir, &parsed, first).unwrap(), first);
    write_lines(&dir, &all[5..]);
    assert_eq!(start_key(&dir, &parsed, pk(3)).unwrap(), pk(3));
}

#[test]
fn an_event_encoded_once_is_the_record_append_event_writes() {
    // The daemon appends the text it encoded for every output; a record must hash and
    // verify exactly as one `append_event` encodes itself.
    let dir = tmpdir("encoded-once");
    let e = sample_event("research-bot", 1);
    let json = crate::outputs::fanout::EventJson::new(&e).unwrap();
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    log.append_event(&e).unwrap();
    log.append_event_text(&json.text).unwrap();
    log.close().unwrap();
    let text = fs::read_to_string(dir.join("audit.log")).unwrap();
    let bodies: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["type"] == "event")
        .map(|r| r["body"].clone())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(canonical(&bodies[0]), canonical(&bodies[1]));
    assert_eq!(canonical(&bodies[1]), *json.text);
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.damage.is_none(), "{r}");
}
