//! A tamper-evident audit trail: every attributed event and alert, hash-chained and
//! periodically signed, so that a record changed, removed, inserted or reordered after
//! the fact is found by an offline check, on this host or on another.
//!
//! # Format
//! A directory of JSON-lines files. The daemon always appends to `audit.log`; when it grows
//! past [`AuditOptions::rotate_bytes`] it ends with a `rotate` record and is renamed to
//! `audit-NNNNNN.log` (numbered in order), and a new `audit.log` continues the chain. A
//! closed archive is then compressed to `audit-NNNNNN.log.zst` (see [`segments`]); every
//! reader takes either form. Each line is one record in canonical JSON (see [`canonical`]):
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
//! # Forward security
//! A log opened with its key file ([`AuditLog::open_with_key_file`], as the daemon does)
//! rotates the key at every checkpoint: the body also carries `next_public_key`, which the
//! signature covers (appended to the signed message), and the next checkpoint must be signed
//! by that key. Verification walks the chain from the first key. Whoever takes the host
//! holds only the key for the next checkpoint and cannot re-sign earlier ones.
//!
//! # Limits and anchors
//! Cutting the end of the newest file (with its checkpoints) leaves a shorter, valid chain:
//! nothing inside a log can prove that more followed. `verify --expect-closed` catches it
//! for a log whose daemon has stopped cleanly, unless the cut lands on an earlier clean
//! close. What catches it is a checkpoint kept elsewhere: every checkpoint is published to
//! the SIEM sinks as it is made ([`Checkpoint`], an anchor), and [`check_anchors`] fails a
//! log that lacks or contradicts one.
mod anchors;
mod bundle;
mod direct;
mod key;
mod log;
mod prune;
mod segments;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_direct;
#[cfg(test)]
mod tests_disk;
mod verify;
mod writer;

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub use anchors::{AnchorCheck, Anchors, check_anchors, start_key};
pub use bundle::{BundleReport, ExportSummary, export_bundle, verify_bundle};
pub use direct::{Member, write as write_direct};
pub use key::{chain_origin, load_key, load_or_create_key};
pub use log::{AuditLog, Counts, DiskPolicy};
pub use prune::{AuditRetention, KEY_CHAIN_FILE};
pub use verify::{Damage, DamageKind, KeySource, VerifyOptions, VerifyReport, verify, verify_with};
pub use writer::{AnchorPublisher, AuditStats, AuditWriter};

/// The daemon's audit directory under its state directory.
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/agentid/audit";
/// The audit signing key (Ed25519 seed), created at first start.
pub const DEFAULT_KEY_PATH: &str = "/var/lib/agentid/audit.key";
/// The file the daemon appends to; older files are `audit-NNNNNN.log`.
pub const CURRENT_FILE: &str = "audit.log";
/// `prev` of the first record ever.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A signed checkpoint as published off the host (an *anchor*): to every SIEM sink as it is
/// made, so `agentid audit verify --anchors` can later prove the log still holds it — a log
/// cut back (rolled back) or rewritten after the fact disagrees with what left the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The checkpoint record's own seq.
    pub seq: u64,
    /// The last record it signs; `head` is that record's hash.
    pub seq_to: u64,
    pub head: String,
    /// When it was written (the record's `ts`, RFC 3339).
    pub time: String,
    pub signature: String,
    /// The key that signed it (its key id): base64 Ed25519 public key.
    pub public_key: String,
    /// The key the next checkpoint is signed with (forward-secure logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<String>,
    /// Written by a clean close.
    #[serde(default, rename = "final")]
    pub is_final: bool,
}

impl Checkpoint {
    /// The checkpoint a record (`type: checkpoint`) states, if it is one.
    pub fn from_record(record: &Value) -> Option<Self> {
        if record.get("type")?.as_str()? != "checkpoint" {
            return None;
        }
        let body = record.get("body")?;
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            seq: record.get("seq")?.as_u64()?,
            seq_to: body.get("seq_to")?.as_u64()?,
            head: s("head")?,
            time: record.get("ts")?.as_str()?.to_owned(),
            signature: s("signature")?,
            public_key: s("public_key")?,
            next_public_key: s("next_public_key"),
            is_final: body.get("final").and_then(Value::as_bool) == Some(true),
        })
    }

    /// Whether two statements of a checkpoint agree on everything its signature covers
    /// (the time and the final flag are not signed: a SIEM may render them its own way).
    pub fn same_signed(&self, other: &Self) -> bool {
        (
            self.seq,
            self.seq_to,
            &self.head,
            &self.signature,
            &self.public_key,
            &self.next_public_key,
        ) == (
            other.seq,
            other.seq_to,
            &other.head,
            &other.signature,
            &other.public_key,
            &other.next_public_key,
        )
    }

    /// Whether its signature verifies with its own `public_key` and its seq is the one
    /// after what it signs (an anchor that is not is no anchor: anyone can write a line
    /// into a SIEM).
    pub fn self_signed(&self) -> bool {
        self.seq_to.checked_add(1) == Some(self.seq)
            && parse_public_key(&self.public_key).is_ok_and(|k| {
                check_signature(
                    &k,
                    &self.head,
                    self.seq_to,
                    self.next_public_key.as_deref(),
                    &self.signature,
                )
            })
    }
}

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
/// A record appended with `append_*` is handed to the kernel before the call returns; the
/// daemon's audit thread buffers what its queue holds (`buffer_*`) and hands it over with
/// one `write` once the queue is empty, so a crash of the daemon (even SIGKILL) loses at
/// most the records of that batch, as it loses those still queued; fsync only matters
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

/// The audit log's size on disk: the files in its directory (archives, `audit.log`, the
/// key chain; not recursive, 0 for what cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    })
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
    // An event is ~650 bytes: one allocation, no regrowth.
    let mut out = Vec::with_capacity(1024);
    write_canonical(value, &mut out);
    into_string(out)
}

/// [`canonical`] appended to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            // The map iterates sorted already unless `preserve_order` is on (see above):
            // sorting is then only a check.
            if map.keys().is_sorted() {
                write_members(map.iter(), out);
            } else {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                write_members(members.into_iter(), out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_json_string(s, out),
        // Scalars: serde_json's own rendering is already unique.
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            let _ = serde_json::to_writer(&mut *out, value);
        }
    }
}

/// Sorted members of an object, without the braces.
pub fn write_members<'a>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) {
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(k, out);
        out.push(b':');
        write_canonical(v, out);
    }
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Canonical JSON is built from `str`s and ASCII punctuation only.
fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The canonical line (without `\n`) and hash of a record whose body is already in
/// canonical form.
#[cfg(test)]
fn encode_record(seq: u64, ts: &str, ty: &str, body_text: &str, prev: &str) -> (String, String) {
    let mut line = Vec::new();
    let hash = encode_record_into(&mut line, seq, ts, ty, body_text, prev);
    (
        into_string(line),
        String::from_utf8_lossy(&hash).into_owned(),
    )
}

/// The canonical line of a record (without `\n`) appended to `line`; returns its hash in
/// hex. Keys in sorted order: body, (hash), prev, seq, ts, type — the same text
/// `canonical()` gives for the record as a `Value`, assembled without a second pass over
/// the body (a unit test holds the two equal), and without an allocation.
fn encode_record_into(
    line: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    ty: &str,
    body_text: &str,
    prev: &str,
) -> [u8; 64] {
    use std::io::Write as _;
    const KEY: &[u8] = b",\"hash\":\"";
    let start = line.len();
    line.extend_from_slice(b"{\"body\":");
    line.extend_from_slice(body_text.as_bytes());
    let tail = line.len();
    line.extend_from_slice(b",\"prev\":\"");
    line.extend_from_slice(prev.as_bytes());
    line.extend_from_slice(b"\",\"seq\":");
    // Writing into a `Vec` cannot fail.
    let _ = write!(line, "{seq}");
    line.extend_from_slice(b",\"ts\":");
    write_json_string(ts, line);
    line.extend_from_slice(b",\"type\":");
    write_json_string(ty, line);
    line.push(b'}');
    let digest = Sha256::new().chain_update(&line[start..]).finalize();
    let hash = hex_digits(&digest);
    // `,"hash":"<hex>"` goes between the body and the tail, where sorting puts it.
    let width = KEY.len() + hash.len() + 1;
    let end = line.len();
    line.resize(end + width, 0);
    line.copy_within(tail..end, tail + width);
    line[tail..tail + KEY.len()].copy_from_slice(KEY);
    line[tail + KEY.len()..tail + KEY.len() + hash.len()].copy_from_slice(&hash);
    line[tail + width - 1] = b'"';
    hash
}

/// Lowercase hex of a SHA-256 digest, without an allocation.
fn hex_digits(digest: &[u8]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in digest.iter().take(32).enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
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

/// What a checkpoint signs: the head hash bytes, then `seq_to` big-endian, then (in a
/// forward-secure log) the 32 bytes of the next public key, so the hand-over to the next
/// key is as signed as the head.
fn checkpoint_message(head_hex: &str, seq_to: u64, next_key: Option<&str>) -> Option<Vec<u8>> {
    let mut msg = hex::decode(head_hex).ok()?;
    if msg.len() != 32 {
        return None;
    }
    msg.extend_from_slice(&seq_to.to_be_bytes());
    if let Some(next) = next_key {
        msg.extend_from_slice(parse_public_key(next).ok()?.as_bytes());
    }
    Some(msg)
}

#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the static-key form, used by tests")
)]
fn sign_checkpoint(key: &SigningKey, head_hex: &str, seq_to: u64) -> Option<String> {
    sign_checkpoint_next(key, head_hex, seq_to, None)
}

fn sign_checkpoint_next(
    key: &SigningKey,
    head_hex: &str,
    seq_to: u64,
    next_key: Option<&str>,
) -> Option<String> {
    let msg = checkpoint_message(head_hex, seq_to, next_key)?;
    Some(b64(&key.sign(&msg).to_bytes()))
}

/// Signs a checkpoint as the daemon does: for tests that play the forger with a key they
/// found.
#[doc(hidden)]
pub fn sign_checkpoint_with(
    key: &SigningKey,
    head_hex: &str,
    seq_to: u64,
    next_key: Option<&str>,
) -> Option<String> {
    sign_checkpoint_next(key, head_hex, seq_to, next_key)
}

/// The hash a record should have: for tests that play the forger.
#[doc(hidden)]
pub fn record_hash_of(record: &Value) -> Option<String> {
    record_hash(record)
}

fn check_signature(
    key: &VerifyingKey,
    head_hex: &str,
    seq_to: u64,
    next_key: Option<&str>,
    sig_b64: &str,
) -> bool {
    let Some(msg) = checkpoint_message(head_hex, seq_to, next_key) else {
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

/// The log's files, oldest first: archives by number (`audit-NNNNNN.log`, or
/// `audit-NNNNNN.log.zst` once compressed), then `audit.log`. An archive present in both
/// forms (a crash between the compressed file's rename and the original's removal) is
/// read from the original.
fn log_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut archives = std::collections::BTreeMap::new();
    let mut current = None;
    for entry in std::fs::read_dir(dir).map_err(AuditError::io(dir))? {
        let entry = entry.map_err(AuditError::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == CURRENT_FILE {
            current = Some(entry.path());
        } else if let Some((n, compressed)) = archive_number(name) {
            let slot = archives.entry(n).or_insert((compressed, entry.path()));
            if slot.0 && !compressed {
                *slot = (compressed, entry.path());
            }
        }
    }
    let mut files: Vec<PathBuf> = archives.into_values().map(|(_, p)| p).collect();
    files.extend(current);
    Ok(files)
}

/// The number of an archive and whether it is the compressed form.
fn archive_number(name: &str) -> Option<(u64, bool)> {
    let (name, compressed) = match name.strip_suffix(segments::COMPRESSED_SUFFIX) {
        Some(plain) => (plain, true),
        None => (name, false),
    };
    let digits = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, compressed))
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
            blocked: false,
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

/// A typical connect event of an agent's process (the bulk of a busy host's events) for
/// the disk budget: process `i / 64` of 32 in turn, each connecting to one of a few hundred
/// addresses.
#[doc(hidden)]
pub fn sample_connect(agent: &str, i: u32) -> crate::attribution::AttributedEvent {
    use crate::event::{Detail, EventKind, Protocol};
    let mut e = sample_event(agent, (i / 64) % 32);
    e.event.kind = EventKind::Connect;
    e.event.time = SystemTime::UNIX_EPOCH
        + Duration::from_micros(1_764_335_000_123_456 + u64::from(i) * 1_731);
    e.event.tid = e.event.pid + i % 3;
    e.event.detail = Detail::Sock {
        dst_ip: std::net::IpAddr::from([
            10,
            20,
            (i % 7) as u8,
            (i.wrapping_mul(2_654_435_761) % 251) as u8,
        ]),
        dst_port: if i.is_multiple_of(5) { 53 } else { 443 },
        protocol: if i.is_multiple_of(5) {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        dst_names: Vec::new(),
    };
    e.exe = Some("/usr/bin/python3".into());
    e
}
