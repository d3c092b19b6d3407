//! A tamper-evident audit trail: every attributed event and alert, hash-chained and
//! periodically signed, so that a record changed, removed, inserted or reordered after
//! the fact is found by an offline check, on this host or on another.
//!
//! # Format
//! A directory of JSON-lines files. The daemon always appends to `audit.log`; when it grows
//! past [`AuditOptions::rotate_bytes`] it ends with a `rotate` record and is renamed to
//! `audit-NNNNNN.log` (numbered in order), and a new `audit.log` continues the chain. Each
//! line is one record in canonical JSON (see [`canonical`]):
//!
//! ```json
//! {"body":{..},"hash":"<hex>","prev":"<hex>","seq":7,"ts":"2025-..Z","type":"event"}
//! ```
//!
//! `hash = SHA-256(canonical(record without "hash"))`; `prev` is the previous record's
//! `hash` (64 zeros for the first record ever), so each hash commits to the whole history.
//! Types: `event`, `alert`, `checkpoint`, `tear` (a torn last line removed after a crash),
//! `rotate`, or a caller's own via [`AuditLog::append_json`].
//!
//! # Checkpoints
//! A `checkpoint` record signs the chain head with the host's Ed25519 key: its body is
//! `{"seq_from","seq_to","head","signature","public_key"}` (plus `"final": true` for the
//! one written by [`AuditLog::close`]), the signature is over the 32 head-hash bytes
//! followed by `seq_to` as a big-endian u64. Hashes alone only show that a chain is
//! consistent — someone with write access can re-hash a forged chain; the signature pins the
//! head to what the daemon wrote, so a re-hashed forgery is caught at the next checkpoint.
//! Records after the last checkpoint are not yet signed and are reported as an unsigned tail.
//!
//! # Limits
//! Cutting the end of the newest file (with its checkpoints) leaves a shorter, valid chain:
//! nothing inside a log can prove that more followed. `verify --expect-closed` catches it
//! for a log whose daemon has stopped cleanly; otherwise compare against a checkpoint head
//! kept elsewhere (a SIEM that received it, an exported bundle).
mod bundle;
mod key;
mod log;
#[cfg(test)]
mod tests;
mod verify;

use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub use bundle::{BundleReport, ExportSummary, export_bundle, verify_bundle};
pub use key::{load_key, load_or_create_key};
pub use log::AuditLog;
pub use verify::{Damage, DamageKind, KeySource, VerifyOptions, VerifyReport, verify, verify_with};

/// The daemon's audit directory under its state directory.
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/agentid/audit";
/// The audit signing key (Ed25519 seed), created at first start.
pub const DEFAULT_KEY_PATH: &str = "/var/lib/agentid/audit.key";
/// The file the daemon appends to; older files are `audit-NNNNNN.log`.
pub const CURRENT_FILE: &str = "audit.log";
/// `prev` of the first record ever.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audit key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "audit log {dir} was signed with another key ({found}); this key's public key is {ours}: \
         move the old log aside or restore its key"
    )]
    KeyChanged {
        dir: PathBuf,
        found: String,
        ours: String,
    },
    #[error("audit {path}:{line}: {reason}")]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("audit bundle {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("no audit log in {0}")]
    NoLog(PathBuf),
    #[error("audit record type {0:?}: use lowercase letters, digits, '-' or '_'")]
    BadType(String),
    #[error("audit record encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("public key: {0}")]
    PublicKey(String),
}

impl AuditError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// When appended records reach the disk.
///
/// Every record is handed to the kernel with one `write` as soon as it is appended, so a
/// crash of the daemon (even SIGKILL) loses nothing already appended; fsync only matters
/// for a crash of the host. `EveryRecord` costs one `fdatasync` per record; `Interval(d)`
/// syncs at most every `d` plus at each checkpoint, rotation and close, and costs little
/// more than the write itself: a host crash may lose the last `d`. Measured (release,
/// ext4 on a virtio disk, a typical exec event of ~900 bytes per record, the `cost` test):
/// `EveryRecord` ~830 records/s, `Interval(1s)` ~95,000 records/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    EveryRecord,
    Interval(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    pub fsync: Fsync,
    /// `audit.log` is rotated when it reaches this size.
    pub rotate_bytes: u64,
    /// A signed checkpoint is written when this much time has passed since the last one and
    /// there are records after it (see [`AuditLog::maybe_checkpoint`]).
    pub checkpoint_interval: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            fsync: Fsync::Interval(Duration::from_secs(1)),
            rotate_bytes: 64 * 1024 * 1024,
            checkpoint_interval: Duration::from_mins(1),
        }
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace, strings and
/// numbers as `serde_json` writes them (deterministic: integers verbatim, floats in their
/// shortest round-trip form).
///
/// With `serde_json`'s default features its `Map` is a `BTreeMap`, so
/// `serde_json::to_string(&value)` is already sorted — a test checks that. This function
/// sorts anyway: a dependency enabling `serde_json/preserve_order` anywhere in the build
/// would silently turn `Map` into an insertion-ordered map and change every hash.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_json_string(s, out),
        // Scalars: serde_json's own rendering is already unique.
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

fn write_json_string(s: &str, out: &mut String) {
    let _ = write!(out, "{}", Value::String(s.to_owned()));
}

/// The canonical line (without `\n`) and hash of a record.
fn encode_record(seq: u64, ts: &str, ty: &str, body: &Value, prev: &str) -> (String, String) {
    let mut body_text = String::new();
    write_canonical(body, &mut body_text);
    let mut ts_text = String::new();
    write_json_string(ts, &mut ts_text);
    let mut kind_text = String::new();
    write_json_string(ty, &mut kind_text);
    // Keys in sorted order: body, (hash), prev, seq, ts, type — the same text
    // `canonical()` gives for the record as a `Value`, assembled without a second pass
    // over the body (a unit test holds the two equal).
    let tail =
        format!(",\"prev\":\"{prev}\",\"seq\":{seq},\"ts\":{ts_text},\"type\":{kind_text}}}");
    let unhashed = format!("{{\"body\":{body_text}{tail}");
    let hash = sha256_hex(unhashed.as_bytes());
    let line = format!("{{\"body\":{body_text},\"hash\":\"{hash}\"{tail}");
    (line, hash)
}

/// The hash a record should have: over its canonical form without `hash`.
fn record_hash(record: &Value) -> Option<String> {
    let mut without = record.as_object()?.clone();
    without.remove("hash");
    Some(sha256_hex(canonical(&Value::Object(without)).as_bytes()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a checkpoint signs: the head hash bytes, then `seq_to` big-endian.
fn checkpoint_message(head_hex: &str, seq_to: u64) -> Option<Vec<u8>> {
    let mut msg = hex::decode(head_hex).ok()?;
    if msg.len() != 32 {
        return None;
    }
    msg.extend_from_slice(&seq_to.to_be_bytes());
    Some(msg)
}

fn sign_checkpoint(key: &SigningKey, head_hex: &str, seq_to: u64) -> Option<String> {
    let msg = checkpoint_message(head_hex, seq_to)?;
    Some(b64(&key.sign(&msg).to_bytes()))
}

fn check_signature(key: &VerifyingKey, head_hex: &str, seq_to: u64, sig_b64: &str) -> bool {
    let Some(msg) = checkpoint_message(head_hex, seq_to) else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sig_b64) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify_strict(&msg, &sig).is_ok()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The base64 form `agentid audit pubkey` prints and `--pubkey` takes.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    b64(key.as_bytes())
}

/// Parses a base64 Ed25519 public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AuditError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| AuditError::PublicKey(format!("not base64: {e}")))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| AuditError::PublicKey("not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| AuditError::PublicKey(e.to_string()))
}

fn now_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(crate::event::rfc3339_range(t)).to_string()
}

/// The log's files, oldest first: `audit-NNNNNN.log` by number, then `audit.log`.
fn log_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut archives = Vec::new();
    let mut current = None;
    for entry in std::fs::read_dir(dir).map_err(AuditError::io(dir))? {
        let entry = entry.map_err(AuditError::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == CURRENT_FILE {
            current = Some(entry.path());
        } else if let Some(n) = archive_number(name) {
            archives.push((n, entry.path()));
        }
    }
    archives.sort();
    let mut files: Vec<PathBuf> = archives.into_iter().map(|(_, p)| p).collect();
    files.extend(current);
    Ok(files)
}

fn archive_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn archive_name(n: u64) -> String {
    format!("audit-{n:06}.log")
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A typical attributed event (an exec of an agent's tool, with a lineage of three) for
/// tests and the cost measurement.
#[doc(hidden)]
pub fn sample_event(agent: &str, i: u32) -> crate::attribution::AttributedEvent {
    use crate::{
        attribution::{AgentRef, AttributedEvent, ProcIdentity},
        event::{Detail, Event, EventKind},
        process::HostIds,
    };
    let host = HostIds {
        host: "node1".into(),
        boot: "0123abcd".into(),
    };
    let pid = 4000 + i;
    AttributedEvent {
        event: Event {
            kind: EventKind::Exec,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_335_000_123 + u64::from(i)),
            ktime_ns: 0,
            proc_start_ns: None,
            pid,
            ppid: Some(4000),
            tid: pid,
            uid: 1001,
            gid: 1001,
            cgroup_id: 7421,
            cgroup: Some(format!("/agents/{agent}")),
            comm: "python3".into(),
            detail: Detail::Exec {
                filename: "/usr/bin/python3".into(),
                argv: vec![
                    "python3".into(),
                    "tool.py".into(),
                    "--query".into(),
                    format!("{i}"),
                ],
                argv_truncated: false,
                argv_missing: false,
                scan_incomplete: None,
                env: crate::event::SecretEnv::default(),
                loginuid: Some(1001),
            },
        },
        transition: None,
        exec_id: Some(host.exec_id(120_000 + u64::from(i), pid)),
        parent_exec_id: Some(host.exec_id(100_000, 4000)),
        identity: std::sync::Arc::new(ProcIdentity {
            agent: Some(AgentRef {
                id: format!("spiffe://example.org/agent/{agent}"),
                name: Some(agent.to_owned()),
                owner: Some("ml-platform@example.org".into()),
                environment: Some("prod".into()),
            }),
            ambiguous: Vec::new(),
            session: Some(format!("{agent}/4000-100000")),
            acting_for: Vec::new(),
            lineage: vec![
                host.exec_id(100_000, 4000),
                host.exec_id(90_000, 3000),
                host.exec_id(1, 1),
            ],
            session_root: None,
            delegation_declared: true,
            escaped_to: None,
        }),
        exe: None,
        loginuid: None,
    }
}
