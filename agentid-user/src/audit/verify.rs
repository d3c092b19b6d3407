//! Offline verification: recompute every hash, the chain, seq continuity and the
//! checkpoint signatures, and name the first damaged record and the kind of damage.
use std::{collections::HashSet, fmt, path::Path};

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::{
    AuditError, GENESIS, canonical, check_signature, file_name, log_files, parse_public_key, prune,
    public_key_base64, record_hash, segments,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// The key the checkpoints must be signed with. Without it the key embedded in the
    /// checkpoints is used, which only proves consistency: whoever can rewrite the log can
    /// re-sign it with a key of their own.
    pub pubkey: Option<VerifyingKey>,
    /// The daemon has stopped cleanly: the log must end with its final checkpoint, so a cut
    /// end is reported as [`DamageKind::Truncated`].
    pub expect_closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// A record's content no longer matches its hash, or a re-hashed chain no longer
    /// matches the signed head with as many records as were signed.
    Modified,
    /// A seq is missing, or a re-hashed chain has fewer records than were signed.
    Deleted,
    /// Two records claim one seq, a record follows a file's rotate record, or a re-hashed
    /// chain has more records than were signed.
    Inserted,
    /// Seqs go backwards, or forward past one that appears later.
    Reordered,
    /// The end of a file is gone: an archive without its rotate record, or (with
    /// `expect_closed`) a log without its final checkpoint.
    Truncated,
    /// A checkpoint's signature does not verify with the key.
    BadSignature,
}

impl DamageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Modified => "Modified",
            Self::Deleted => "Deleted",
            Self::Inserted => "Inserted",
            Self::Reordered => "Reordered",
            Self::Truncated => "Truncated",
            Self::BadSignature => "BadSignature",
        }
    }
}

/// The first damage found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub kind: DamageKind,
    /// The first record that is not what was written (for a deletion: the missing seq).
    pub seq: Option<u64>,
    /// When the damage can only be narrowed to a range (a re-hashed chain caught by a
    /// checkpoint): the last seq of that range.
    pub until: Option<u64>,
    /// `file:line` (1-based).
    pub location: String,
    pub detail: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.as_str())?;
        match (self.seq, self.until) {
            (Some(s), Some(u)) if u > s => write!(f, " in seq {s}..={u}")?,
            (Some(s), _) => write!(f, " at seq {s}")?,
            (None, _) => {}
        }
        write!(f, " ({}): {}", self.location, self.detail)
    }
}

/// Which key the signatures were checked with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Given,
    /// The key the checkpoints carry (base64).
    Embedded(String),
    /// There was no checkpoint to check.
    None,
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub files: usize,
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records after the last valid checkpoint: chained, not yet signed.
    pub unsigned_tail: u64,
    /// The last record is a final (close) checkpoint.
    pub closed: bool,
    pub key: KeySource,
    /// Things worth knowing that are not damage: tears recorded after crashes, a torn last
    /// line, a chain that starts after genesis because old files were removed.
    pub notes: Vec<String>,
    /// The log starts after its beginning because records before this seq were pruned by
    /// policy (a signed prune record in the log says so).
    pub pruned_before: Option<u64>,
    pub damage: Option<Damage>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damage.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.damage {
            return write!(f, "DAMAGED: {d}");
        }
        write!(
            f,
            "ok {} records, {} checkpoints",
            self.records, self.checkpoints
        )?;
        if let (Some(a), Some(b)) = (self.first_seq, self.last_seq) {
            write!(f, " (seq {a}..={b}, {} files)", self.files)?;
        }
        write!(f, "; unsigned tail: {} records", self.unsigned_tail)?;
        if self.closed {
            write!(f, "; closed cleanly")?;
        }
        match &self.key {
            KeySource::Given => write!(f, "\nsignatures checked with the given public key")?,
            KeySource::Embedded(k) => write!(
                f,
                "\nsignatures checked with the key the checkpoints carry ({k}): whoever can \
                 rewrite the log can replace it, so pass --pubkey with the key you trust"
            )?,
            KeySource::None => write!(f, "\nno checkpoint: nothing is signed yet")?,
        }
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        Ok(())
    }
}

/// [`verify_with`] without `expect_closed`.
pub fn verify(dir: &Path, pubkey: Option<VerifyingKey>) -> Result<VerifyReport, AuditError> {
    verify_with(
        dir,
        &VerifyOptions {
            pubkey,
            expect_closed: false,
        },
    )
}

/// Verifies every file of the log in `dir`. Damage is in the report; `Err` only when the
/// log cannot be read at all.
pub fn verify_with(dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let files = log_files(dir)?;
    if files.is_empty() {
        return Err(AuditError::NoLog(dir.to_owned()));
    }
    let mut items = Vec::new();
    let mut notes = Vec::new();
    let last_file = files.len() - 1;
    for (fi, path) in files.iter().enumerate() {
        let name = file_name(path);
        let data = segments::read(path)?;
        let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        // `split` yields what follows the last '\n': empty for a whole file.
        let rest = lines.pop().unwrap_or_default();
        for (li, line) in lines.iter().enumerate() {
            items.push(Item::from_line(line, fi, &name, li as u64 + 1));
        }
        if !rest.is_empty() {
            if fi == last_file {
                notes.push(format!(
                    "torn last line in {name}: {} bytes without a newline (a crash \
                     mid-write); the daemon cuts it and records a tear when it next opens \
                     the log",
                    rest.len()
                ));
            } else {
                items.push(Item::from_line(rest, fi, &name, lines.len() as u64 + 1));
            }
        }
    }
    let (start, key_chain_damage) = match opts.pubkey {
        Some(k) => walk_key_chain(dir, k)?,
        None => (None, None),
    };
    let mut report = check_chain(&items, start, true, opts.expect_closed);
    if let Some(d) = key_chain_damage {
        report.damage = Some(d);
    }
    report.files = files.len();
    report.notes.extend(notes);
    Ok(report)
}

/// Walks the key chain of pruned checkpoints (`audit-keys.jsonl`) from `given` to the key
/// of the first checkpoint still in the log. Starts where `given` signs (the pinned first
/// key, or a key the anchors already led to); a hand-over that does not verify is damage.
fn walk_key_chain(
    dir: &Path,
    given: VerifyingKey,
) -> Result<(Option<VerifyingKey>, Option<Damage>), AuditError> {
    let chain = prune::read_key_chain(dir)?;
    let ours = public_key_base64(&given);
    let Some(from) = chain.iter().position(|(c, _)| c.public_key == ours) else {
        return Ok((Some(given), None));
    };
    let mut key = given;
    for (cp, location) in &chain[from..] {
        let next = cp.next_public_key.as_deref();
        if !check_signature(&key, &cp.head, cp.seq_to, next, &cp.signature) {
            let d = Damage {
                kind: DamageKind::BadSignature,
                seq: Some(cp.seq),
                until: None,
                location: location.clone(),
                detail: "a pruned checkpoint's hand-over does not verify with the key the chain \
                         from the given key leads to"
                    .into(),
            };
            return Ok((Some(key), Some(d)));
        }
        if let Some(n) = next {
            key = parse_public_key(n)?;
        }
    }
    Ok((Some(key), None))
}

/// One parsed record, reduced to what the chain checks need.
#[derive(Debug)]
pub(super) struct Item {
    pub seq: Option<u64>,
    pub hash: String,
    pub prev: String,
    pub ty: String,
    /// Kept for checkpoints and tears only.
    pub body: Option<Value>,
    pub file: usize,
    pub location: String,
    /// Why this record cannot be trusted on its own (bad hash, unparsable, edited).
    pub problem: Option<String>,
}

impl Item {
    fn from_line(line: &[u8], file: usize, name: &str, lineno: u64) -> Self {
        let location = format!("{name}:{lineno}");
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => {
                // Canonical form is part of the format: whitespace or key-order edits do
                // not change the hash but are still edits.
                let canonical = is_canonical(line, &v);
                let mut item = Self::from_value(&v, file, location);
                if item.problem.is_none() && !canonical {
                    item.problem = Some("not in canonical form (the line was edited)".into());
                }
                item
            }
            Err(e) => Self {
                seq: None,
                hash: String::new(),
                prev: String::new(),
                ty: String::new(),
                body: None,
                file,
                location,
                problem: Some(format!("not a JSON record ({e})")),
            },
        }
    }

    pub(super) fn from_value(v: &Value, file: usize, location: String) -> Self {
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut item = Self {
            seq: v.get("seq").and_then(Value::as_u64),
            hash: field("hash"),
            prev: field("prev"),
            ty: field("type"),
            body: None,
            file,
            location,
            problem: None,
        };
        if item.seq.is_none() || item.hash.is_empty() || item.prev.is_empty() || item.ty.is_empty()
        {
            item.problem = Some("missing seq, hash, prev or type".into());
        } else if record_hash(v).as_deref() != Some(item.hash.as_str()) {
            item.problem = Some("content does not match its hash".into());
        }
        if matches!(item.ty.as_str(), "checkpoint" | "tear" | "rotate" | "prune") {
            item.body = v.get("body").cloned();
        }
        item
    }
}

/// The chain checks shared by log and bundle verification. `from_genesis`: the items are a
/// whole log (files, genesis, rotate records apply), not a segment.
#[expect(
    clippy::too_many_lines,
    reason = "one pass in record order; every check reads the state the earlier ones left"
)]
pub(super) fn check_chain(
    items: &[Item],
    given: Option<VerifyingKey>,
    from_genesis: bool,
    expect_closed: bool,
) -> VerifyReport {
    let mut report = VerifyReport {
        files: 1,
        records: items.len() as u64,
        checkpoints: 0,
        first_seq: items.first().and_then(|i| i.seq),
        last_seq: items.last().and_then(|i| i.seq),
        unsigned_tail: 0,
        closed: false,
        key: if given.is_some() {
            KeySource::Given
        } else {
            KeySource::None
        },
        notes: Vec::new(),
        pruned_before: None,
        damage: None,
    };
    let seqs: HashSet<u64> = items.iter().filter_map(|i| i.seq).collect();
    // The key the next checkpoint must be signed with: the given one, then whatever each
    // checkpoint hands over to (forward-secure logs), or its own key (static keys).
    let mut chain_key: Option<VerifyingKey> = given;
    // The last record a valid signature vouches for: (records up to and including it, seq).
    let mut anchor_pos = 0usize;
    let mut anchor_seq = report.first_seq.unwrap_or(1).saturating_sub(1);
    let mut last_checkpoint_pos: Option<usize> = None;
    let mut missing_start: Option<Damage> = None;
    let damage = |kind, seq, until, item: &Item, detail: String| Damage {
        kind,
        seq,
        until,
        location: item.location.clone(),
        detail,
    };

    for (pos, item) in items.iter().enumerate() {
        let prev_item = pos.checked_sub(1).map(|p| &items[p]);
        let expected = prev_item.and_then(|p| p.seq).map(|s| s + 1);
        if let Some(problem) = &item.problem {
            report.damage = Some(damage(
                DamageKind::Modified,
                item.seq.or(expected),
                None,
                item,
                problem.clone(),
            ));
            break;
        }
        let Some(seq) = item.seq else { break };
        if let Some(p) = prev_item.filter(|_| from_genesis) {
            // A file must end with its rotate record, and nothing may follow one. (A
            // segment in a bundle has no files.)
            if p.file != item.file && p.ty != "rotate" {
                report.damage = Some(damage(
                    DamageKind::Truncated,
                    expected,
                    None,
                    p,
                    format!(
                        "this file ends at seq {} without its rotate record: its end was cut",
                        p.seq.unwrap_or_default()
                    ),
                ));
                break;
            }
            if p.file == item.file && p.ty == "rotate" {
                report.damage = Some(damage(
                    DamageKind::Inserted,
                    Some(seq),
                    None,
                    item,
                    "a record follows the rotate record that ended this file".into(),
                ));
                break;
            }
        }
        if let (Some(p), Some(exp)) = (prev_item, expected) {
            if seq != exp {
                let (kind, at, detail) = if seq + 1 == exp {
                    (
                        DamageKind::Inserted,
                        seq,
                        format!("a second record claims seq {seq}"),
                    )
                } else if seq < exp {
                    (
                        DamageKind::Reordered,
                        seq,
                        format!("seq {seq} comes after seq {}", exp - 1),
                    )
                } else if seqs.contains(&exp) {
                    (
                        DamageKind::Reordered,
                        seq,
                        format!("seq {seq} comes before seq {exp}, which appears later"),
                    )
                } else {
                    (
                        DamageKind::Deleted,
                        exp,
                        format!("seq {exp}..{seq} missing (the next record present is seq {seq})"),
                    )
                };
                report.damage = Some(damage(kind, Some(at), None, item, detail));
                break;
            }
            if item.prev != p.hash {
                report.damage = Some(damage(
                    DamageKind::Modified,
                    p.seq,
                    None,
                    p,
                    format!(
                        "seq {seq} does not chain to it: one of the two was rewritten with a \
                         recomputed hash"
                    ),
                ));
                break;
            }
        } else if from_genesis && item.prev != GENESIS {
            // Only a signed prune record in the log explains a later start: the records
            // before it were pruned by policy. Anything else is records missing.
            let prune = items.iter().filter(|i| i.ty == "prune").rev().find(|i| {
                let b = i.body.as_ref();
                b.and_then(|b| b.get("first_seq")).and_then(Value::as_u64) == Some(seq)
                    && b.and_then(|b| b.get("prev")).and_then(Value::as_str)
                        == Some(item.prev.as_str())
            });
            if let Some(prune) = prune {
                report.pruned_before = Some(seq);
                let b = prune.body.as_ref();
                let n = b
                    .and_then(|b| b.get("segments"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                report.notes.push(format!(
                    "pruned by policy: the records before seq {seq} were removed ({n} archive(s) in \
                     the last prune, signed prune record at seq {}); the kept part starts at seq \
                     {seq}",
                    prune.seq.unwrap_or_default()
                ));
            } else {
                // Reported after the walk: damage the signatures show is named first.
                missing_start = Some(damage(
                    DamageKind::Deleted,
                    Some(seq.saturating_sub(1)),
                    None,
                    item,
                    format!(
                        "the log starts at seq {seq}: the records before it are missing, and \
                         no signed prune record says they were pruned by policy"
                    ),
                ));
            }
        }

        if item.ty == "prune"
            && let Some(detail) = prune_problem(item, chain_key)
        {
            report.damage = Some(damage(
                DamageKind::BadSignature,
                Some(seq),
                None,
                item,
                detail,
            ));
            break;
        }
        if item.ty == "checkpoint" {
            report.checkpoints += 1;
            let body = item.body.as_ref();
            let get = |k: &str| body.and_then(|b| b.get(k));
            let (Some(seq_to), Some(head), Some(sig), Some(pk)) = (
                get("seq_to").and_then(Value::as_u64),
                get("head").and_then(Value::as_str),
                get("signature").and_then(Value::as_str),
                get("public_key").and_then(Value::as_str),
            ) else {
                report.damage = Some(damage(
                    DamageKind::Modified,
                    Some(seq),
                    None,
                    item,
                    "checkpoint body lacks seq_to, head, signature or public_key".into(),
                ));
                break;
            };
            let next = get("next_public_key").and_then(Value::as_str);
            let key = if let Some(k) = chain_key {
                k
            } else {
                let Ok(k) = parse_public_key(pk) else {
                    report.damage = Some(damage(
                        DamageKind::BadSignature,
                        Some(seq),
                        None,
                        item,
                        "checkpoint public_key is not an Ed25519 key".into(),
                    ));
                    break;
                };
                report.key = KeySource::Embedded(pk.to_owned());
                k
            };
            if !check_signature(&key, head, seq_to, next, sig) {
                let ours = public_key_base64(&key);
                let detail = if pk == ours {
                    "signature does not verify".to_owned()
                } else if given.is_some() && report.checkpoints == 1 {
                    format!(
                        "signature does not verify with the given key (the checkpoint names \
                         another key, {pk}: re-signed?)"
                    )
                } else {
                    format!(
                        "signed with {pk}, but the key chain expects {ours} here (the \
                         previous checkpoint handed over to it): re-signed?"
                    )
                };
                report.damage = Some(damage(
                    DamageKind::BadSignature,
                    Some(seq),
                    None,
                    item,
                    detail,
                ));
                break;
            }
            if seq_to + 1 != seq || head != item.prev {
                // The signature is genuine but the chain before it is not the one signed:
                // records were re-hashed after the fact. Counting the records between the
                // last vouched-for one and this checkpoint tells what happened.
                let signed = i128::from(seq_to) - i128::from(anchor_seq);
                let actual = (pos - anchor_pos) as i128;
                let kind = match actual.cmp(&signed) {
                    std::cmp::Ordering::Greater => DamageKind::Inserted,
                    std::cmp::Ordering::Less => DamageKind::Deleted,
                    std::cmp::Ordering::Equal => DamageKind::Modified,
                };
                report.damage = Some(Damage {
                    kind,
                    seq: Some(anchor_seq + 1),
                    until: Some(seq - 1),
                    location: items
                        .get(anchor_pos)
                        .map_or_else(|| item.location.clone(), |i| i.location.clone()),
                    detail: format!(
                        "the records after seq {anchor_seq} were rewritten: the checkpoint at \
                         seq {seq} signed {signed} of them ending at seq {seq_to} with head \
                         {head}, the log now has {actual} ending with head {}",
                        item.prev
                    ),
                });
                break;
            }
            match next.map(parse_public_key) {
                None => chain_key = Some(key),
                Some(Ok(k)) => chain_key = Some(k),
                Some(Err(_)) => {
                    report.damage = Some(damage(
                        DamageKind::Modified,
                        Some(seq),
                        None,
                        item,
                        "checkpoint next_public_key is not an Ed25519 key".into(),
                    ));
                    break;
                }
            }
            anchor_pos = pos;
            anchor_seq = seq_to;
            last_checkpoint_pos = Some(pos);
        }
        if item.ty == "tear" {
            let b = item.body.as_ref();
            let n = |k| {
                b.and_then(|b| b.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            report.notes.push(format!(
                "tear at seq {seq}: {} bytes were cut from {} at offset {} after a crash",
                n("bytes"),
                b.and_then(|b| b.get("file"))
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                n("offset")
            ));
        }
    }

    if report.damage.is_none() {
        report.damage = missing_start;
    }
    report.unsigned_tail = last_checkpoint_pos.map_or(items.len(), |p| items.len() - p - 1) as u64;
    report.closed = items.last().is_some_and(|i| {
        i.ty == "checkpoint"
            && i.body
                .as_ref()
                .and_then(|b| b.get("final"))
                .and_then(Value::as_bool)
                == Some(true)
    }) && report.unsigned_tail == 0;
    if report.damage.is_none()
        && expect_closed
        && !report.closed
        && let Some(last) = items.last()
    {
        report.damage = Some(Damage {
            kind: DamageKind::Truncated,
            seq: last.seq.map(|s| s + 1),
            until: None,
            location: last.location.clone(),
            detail: format!(
                "the log ends at seq {} without the final checkpoint a clean close writes: \
                 its end was cut (or the daemon is running or crashed)",
                last.seq.unwrap_or_default()
            ),
        });
    }
    report
}

/// Why a prune record cannot be trusted: its signature does not verify with the key it
/// names, or that is not the key the chain has reached (the key the next checkpoint signs
/// with).
fn prune_problem(item: &Item, chain_key: Option<VerifyingKey>) -> Option<String> {
    let body = item.body.as_ref()?;
    let Some(pk) = body
        .get("public_key")
        .and_then(Value::as_str)
        .and_then(|k| parse_public_key(k).ok())
    else {
        return Some("prune record without a valid public_key".into());
    };
    if let Some(k) = chain_key
        && k != pk
    {
        return Some(format!(
            "prune record signed with {}, but the key chain is at {} here",
            public_key_base64(&pk),
            public_key_base64(&k)
        ));
    }
    (!prune::signature_ok(body, &pk)).then(|| "prune record signature does not verify".into())
}

/// Whether `line` is the canonical encoding of its record.
fn is_canonical(line: &[u8], v: &Value) -> bool {
    canonical(v).as_bytes() == line
}
