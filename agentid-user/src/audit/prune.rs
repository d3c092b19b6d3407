//! Retention: the oldest closed archives are removed by policy (age, total size), and a
//! signed `prune` record in the chain says exactly what went.
//!
//! A prune record's body:
//!
//! ```json
//! {"first_seq":S,"prev":"<hash of seq S-1>","segments":[{"file","first_seq","last_seq",
//!  "last_hash","last_ts","bytes"}],"policy":{"max_age_secs","max_bytes"},"key_chain":N,
//!  "public_key":"<key>","signature":"<sig>"}
//! ```
//!
//! signed (Ed25519, over `agentid-audit-prune\n` and the canonical body without
//! `signature`) with the key the next checkpoint is signed with, and chained and then
//! checkpointed like any record. `verify` accepts a log that starts at seq S only when a
//! prune record in it names S and that record's predecessor hash; a log that starts later
//! without one has records *missing*, and fails.
//!
//! Forward security survives pruning: the checkpoints of the removed archives (each signs
//! the hand-over to the next key) are first appended to `audit-keys.jsonl`, so `verify
//! --pubkey FIRST` still walks from the pinned first key to the key of the first kept
//! checkpoint; `key_chain` is how many hand-overs that file holds for this prune.
//!
//! Order, for crash safety: key chain appended and synced → prune record and a checkpoint
//! written and synced → archives removed. A crash before the removal leaves the archives
//! in place (and the next run prunes them again, with a second record); nothing is ever
//! removed before the record that names it is on disk.
use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde_json::{Value, json};

use super::{AuditError, CURRENT_FILE, Checkpoint, b64, canonical, file_name, log_files, segments};
use crate::sys;

/// The key chain of pruned checkpoints, beside the archives.
pub const KEY_CHAIN_FILE: &str = "audit-keys.jsonl";
const SIGNED_PREFIX: &[u8] = b"agentid-audit-prune\n";

/// When closed archives go. `audit.log` itself is never pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// An archive closed longer ago than this (its file's mtime: when it was closed, or
    /// compressed just after) is removed.
    pub max_age: Duration,
    /// The oldest archives are removed while the log (archives, `audit.log` and the key
    /// chain) is larger than this.
    pub max_bytes: u64,
}

/// What one pruned archive held.
#[derive(Debug, Clone)]
pub(super) struct Pruned {
    pub file: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub last_ts: String,
    pub bytes: u64,
    pub checkpoints: Vec<Checkpoint>,
}

/// The archives the policy removes now: the oldest first, stopping at the first one kept.
pub(super) fn due(
    dir: &Path,
    policy: &AuditRetention,
    now: SystemTime,
) -> Result<Vec<PathBuf>, AuditError> {
    let files = log_files(dir)?;
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    let mut total: u64 =
        files.iter().map(|p| size(p)).sum::<u64>() + size(&dir.join(KEY_CHAIN_FILE));
    let mut out = Vec::new();
    for path in files.iter().filter(|p| file_name(p) != CURRENT_FILE) {
        let old = fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > policy.max_age));
        if !old && total <= policy.max_bytes {
            break;
        }
        total = total.saturating_sub(size(path));
        out.push(path.clone());
    }
    Ok(out)
}

/// Reads what a pruned archive held: its first and last record and its checkpoints.
pub(super) fn describe(path: &Path) -> Result<Pruned, AuditError> {
    let data = segments::read(path)?;
    let corrupt = |reason: &str| AuditError::Corrupt {
        path: path.to_owned(),
        line: 0,
        reason: format!("{reason}: not pruned; run `agentid audit verify`"),
    };
    let mut first_seq = None;
    let mut last_line: &[u8] = &[];
    let mut checkpoints = Vec::new();
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let first = first_seq.is_none();
        // Only the first, the checkpoints and the last are needed: parse no more.
        let is_cp = line.windows(20).any(|w| w == b"\"type\":\"checkpoint\"}");
        if first || is_cp {
            let v: Value =
                serde_json::from_slice(line).map_err(|_| corrupt("a line is not a record"))?;
            if first {
                first_seq = v.get("seq").and_then(Value::as_u64);
            }
            checkpoints.extend(Checkpoint::from_record(&v));
        }
        last_line = line;
    }
    let last: Value =
        serde_json::from_slice(last_line).map_err(|_| corrupt("its last line is not a record"))?;
    let s = |k: &str| last.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Pruned {
        file: file_name(path),
        first_seq: first_seq.ok_or_else(|| corrupt("first record has no seq"))?,
        last_seq: last
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("last record has no seq"))?,
        last_hash: s("hash").ok_or_else(|| corrupt("last record has no hash"))?,
        last_ts: s("ts").unwrap_or_default(),
        bytes: fs::metadata(path).map_or(0, |m| m.len()),
        checkpoints,
    })
}

/// The key chain file's hand-overs, in order.
pub(super) fn read_key_chain(dir: &Path) -> Result<Vec<(Checkpoint, String)>, AuditError> {
    let path = dir.join(KEY_CHAIN_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::Io { path, source: e }),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let cp: Checkpoint = serde_json::from_str(line).map_err(|e| AuditError::Corrupt {
            path: path.clone(),
            line: i as u64 + 1,
            reason: format!("not a checkpoint ({e})"),
        })?;
        out.push((cp, format!("{KEY_CHAIN_FILE}:{}", i + 1)));
    }
    Ok(out)
}

/// Appends the hand-overs not yet in the key chain (a prune a crash interrupted may have
/// added some already), synced. Returns how many the file holds.
pub(super) fn extend_key_chain(dir: &Path, pruned: &[Pruned]) -> Result<usize, AuditError> {
    let have = read_key_chain(dir)?;
    let last = have.last().map(|(c, _)| c.seq);
    let mut text = String::new();
    let mut n = have.len();
    for cp in pruned.iter().flat_map(|p| &p.checkpoints) {
        if last.is_none_or(|l| cp.seq > l) {
            text.push_str(&serde_json::to_string(cp)?);
            text.push('\n');
            n += 1;
        }
    }
    let path = dir.join(KEY_CHAIN_FILE);
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(sys::O_NOFOLLOW | sys::O_CLOEXEC)
        .open(&path)
        .map_err(AuditError::io(&path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(AuditError::io(&path))?;
    Ok(n)
}

/// The prune record's body, signed with `key`.
pub(super) fn record(
    key: &SigningKey,
    public_key: &str,
    first_seq: u64,
    prev: &str,
    pruned: &[Pruned],
    policy: &AuditRetention,
    key_chain: usize,
) -> Value {
    let segments: Vec<Value> = pruned
        .iter()
        .map(|p| {
            json!({"file": p.file, "first_seq": p.first_seq, "last_seq": p.last_seq,
                   "last_hash": p.last_hash, "last_ts": p.last_ts, "bytes": p.bytes})
        })
        .collect();
    let mut body = json!({
        "first_seq": first_seq,
        "prev": prev,
        "segments": segments,
        "policy": {"max_age_secs": policy.max_age.as_secs(), "max_bytes": policy.max_bytes},
        "key_chain": key_chain,
        "public_key": public_key,
    });
    let sig = key.sign(&message(&body));
    body["signature"] = Value::String(b64(&sig.to_bytes()));
    body
}

fn message(body: &Value) -> Vec<u8> {
    let mut unsigned = body.clone();
    if let Some(m) = unsigned.as_object_mut() {
        m.remove("signature");
    }
    let mut msg = SIGNED_PREFIX.to_vec();
    msg.extend_from_slice(canonical(&unsigned).as_bytes());
    msg
}

/// Whether a prune record's body is signed by `key`.
pub(super) fn signature_ok(body: &Value, key: &VerifyingKey) -> bool {
    use base64::Engine as _;
    let Some(sig) = body.get("signature").and_then(Value::as_str) else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sig) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify_strict(&message(body), &sig).is_ok()
}
