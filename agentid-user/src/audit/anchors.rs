//! Anchors: checkpoints that left the host (published to SIEM sinks as they were made), and
//! the check that the log still holds every one of them.
//!
//! Whoever controls the host can cut the log back to an earlier checkpoint (a rollback) or
//! rewrite it and re-sign with the key it finds; it cannot recall what a SIEM already
//! received. `agentid audit verify --anchors FILE` reads the anchors in FILE (what a sink
//! wrote: JSON lines of the `file` sink in any format, syslog lines with OCSF JSON or CEF)
//! and fails when the log lacks one of this log's anchors or disagrees with it.
use std::{
    collections::{BTreeMap, HashSet},
    fmt, fs,
    path::Path,
};

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::{
    AuditError, Checkpoint, check_signature, log_files, parse_public_key, public_key_base64,
};

/// The anchors found in a sink's output.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    /// Self-signed checkpoints, by checkpoint seq (duplicates from at-least-once delivery
    /// collapse; differing copies of one seq are all kept).
    pub list: Vec<Checkpoint>,
    /// Lines that carry a checkpoint whose signature does not verify with its own key:
    /// not anchors (anyone can write a line into a SIEM).
    pub forged: usize,
}

impl Anchors {
    pub fn read(path: &Path) -> Result<Self, AuditError> {
        let text = fs::read_to_string(path).map_err(AuditError::io(path))?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let Some(cp) = parse_line(line) else { continue };
            if !cp.self_signed() {
                out.forged += 1;
            } else if !out.list.contains(&cp) {
                out.list.push(cp);
            }
        }
        out.list.sort_by_key(|c| c.seq);
        out
    }
}

/// The checkpoint a sink line carries: an `audit_checkpoint` object anywhere in its JSON
/// (native, OCSF `unmapped.agentid`, ECS `agentid`, a Splunk HEC envelope, syslog with
/// OCSF), or the CEF extension of a checkpoint line.
fn parse_line(line: &str) -> Option<Checkpoint> {
    if let Some(i) = line.find("CEF:0|") {
        return parse_cef(&line[i..]);
    }
    let start = line.find('{')?;
    let v = serde_json::Deserializer::from_str(&line[start..])
        .into_iter::<Value>()
        .next()?
        .ok()?;
    find_checkpoint(&v)
}

fn find_checkpoint(v: &Value) -> Option<Checkpoint> {
    match v {
        Value::Object(map) => {
            if let Some(cp) = map.get("audit_checkpoint") {
                return serde_json::from_value(cp.clone()).ok();
            }
            map.values().find_map(find_checkpoint)
        }
        Value::Array(items) => items.iter().find_map(find_checkpoint),
        _ => None,
    }
}

/// The CEF extension labels a checkpoint line uses (see `outputs::encode::cef`).
fn parse_cef(line: &str) -> Option<Checkpoint> {
    // The extension follows the seventh unescaped '|'.
    let mut bars = 0;
    let mut escaped = false;
    let mut ext_at = None;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '|' => {
                bars += 1;
                if bars == 7 {
                    ext_at = Some(i + 1);
                    break;
                }
            }
            _ => {}
        }
    }
    let pairs = cef_pairs(&line[ext_at?..]);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let labelled = |label: &str| {
        pairs
            .iter()
            .find(|(k, v)| k.ends_with("Label") && v == label)
            .and_then(|(k, _)| get(k.strip_suffix("Label")?))
    };
    if get("cs1Label")? != "head" {
        return None;
    }
    Some(Checkpoint {
        seq: labelled("seq")?.parse().ok()?,
        seq_to: labelled("seqTo")?.parse().ok()?,
        head: labelled("head")?.to_owned(),
        time: labelled("time")?.to_owned(),
        signature: labelled("signature")?.to_owned(),
        public_key: labelled("publicKey")?.to_owned(),
        next_public_key: labelled("nextPublicKey")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        is_final: labelled("final") == Some("true"),
    })
}

/// `k=v` pairs of a CEF extension, values unescaped (`\=`, `\\`, `\n`, `\r`).
fn cef_pairs(ext: &str) -> Vec<(String, String)> {
    // Each unescaped '=' ends a key: the word before it. The value runs to the space
    // before the next key.
    let chars: Vec<char> = ext.chars().collect();
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '=' => eqs.push(i),
            _ => {}
        }
        i += 1;
    }
    let key_start = |eq: usize| {
        let mut s = eq;
        while s > 0 && chars[s - 1] != ' ' {
            s -= 1;
        }
        s
    };
    let mut out = Vec::new();
    for (n, &eq) in eqs.iter().enumerate() {
        let ks = key_start(eq);
        let key: String = chars[ks..eq].iter().collect();
        let end = eqs
            .get(n + 1)
            .map_or(chars.len(), |&next| key_start(next).saturating_sub(1));
        let raw: String = chars[eq + 1..end.max(eq + 1)].iter().collect();
        let mut val = String::new();
        let mut it = raw.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                match it.next() {
                    Some('n') => val.push('\n'),
                    Some('r') => val.push('\r'),
                    Some(o) => val.push(o),
                    None => {}
                }
            } else {
                val.push(c);
            }
        }
        out.push((key, val));
    }
    out
}

/// The outcome of checking a log against anchors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnchorCheck {
    /// Anchors that belong to this log's key chain.
    pub anchored: usize,
    /// Of them, found in the log as published.
    pub matched: usize,
    /// Anchored checkpoints (their seqs) the log does not have: rolled back or cut.
    pub missing: Vec<Checkpoint>,
    /// Anchored checkpoints the log has at that seq with other contents: rewritten.
    pub disagreeing: Vec<Checkpoint>,
    /// Anchors of other key chains (another host's, or a log replaced wholesale).
    pub foreign: usize,
    /// Anchors of checkpoints before the log's first record (older files removed).
    pub before_log: usize,
    pub forged: usize,
}

impl AnchorCheck {
    /// Every anchor of this log's chain is in it as published. A file with anchors of other
    /// chains only fails: this log's own are gone (or the log was replaced).
    pub fn is_ok(&self) -> bool {
        if self.anchored == 0 {
            return self.foreign == 0;
        }
        self.missing.is_empty() && self.disagreeing.is_empty()
    }
}

fn seqs(list: &[Checkpoint]) -> String {
    let mut s: Vec<String> = list.iter().take(12).map(|c| c.seq.to_string()).collect();
    if list.len() > 12 {
        s.push(format!("… ({} in all)", list.len()));
    }
    s.join(", ")
}

impl fmt::Display for AnchorCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.anchored == 0 && self.foreign > 0 {
            return write!(
                f,
                "ANCHORS: none of the {} anchors continues this log's key chain: the log was \
                 replaced (or the anchors are another host's)",
                self.foreign
            );
        }
        if !self.is_ok() {
            write!(f, "ANCHORS:")?;
            if let Some(last) = self.missing.last() {
                write!(
                    f,
                    " the log lacks {} anchored checkpoint(s) at seq {} (the last signed seq \
                     {} at {}): rolled back or cut;",
                    self.missing.len(),
                    seqs(&self.missing),
                    last.seq_to,
                    last.time
                )?;
            }
            if !self.disagreeing.is_empty() {
                write!(
                    f,
                    " the log disagrees with {} anchored checkpoint(s) at seq {}: rewritten;",
                    self.disagreeing.len(),
                    seqs(&self.disagreeing)
                )?;
            }
            return write!(f, " {} of {} anchors match", self.matched, self.anchored);
        }
        write!(
            f,
            "anchors: {} of {} anchored checkpoints are in the log as published",
            self.matched, self.anchored
        )?;
        if self.before_log > 0 {
            write!(
                f,
                "; {} precede its first record (older files removed)",
                self.before_log
            )?;
        }
        if self.foreign > 0 {
            write!(f, "; {} anchors of other key chains ignored", self.foreign)?;
        }
        if self.forged > 0 {
            write!(
                f,
                "; {} lines with unverifiable signatures ignored",
                self.forged
            )?;
        }
        Ok(())
    }
}

/// The checkpoints the log in `dir` states, by seq, and its first seq (damage is
/// `verify`'s to report).
fn log_checkpoints(dir: &Path) -> Result<(BTreeMap<u64, Checkpoint>, Option<u64>), AuditError> {
    let mut in_log = BTreeMap::new();
    let mut first_seq = None;
    for path in log_files(dir)? {
        let data = super::segments::read(&path)?;
        for line in data.split(|&b| b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if first_seq.is_none() {
                first_seq = v.get("seq").and_then(Value::as_u64);
            }
            if let Some(cp) = Checkpoint::from_record(&v) {
                in_log.insert(cp.seq, cp);
            }
        }
    }
    Ok((in_log, first_seq))
}

/// The key the log's first checkpoint must be signed with, walking from the pinned first
/// key through the anchors of checkpoints before it: for a log whose oldest files were
/// removed, whose first checkpoint was signed by a later key. Only anchors whose signature
/// verifies with the key reached so far count, so nothing but the genuine chain leads
/// anywhere; for a log that starts at its beginning this is `first` itself.
pub fn start_key(
    dir: &Path,
    anchors: &Anchors,
    first: VerifyingKey,
) -> Result<VerifyingKey, AuditError> {
    let Some(&first_in_log) = log_checkpoints(dir)?.0.keys().next() else {
        return Ok(first);
    };
    let mut key = first;
    for a in anchors.list.iter().filter(|a| a.seq < first_in_log) {
        let next = a.next_public_key.as_deref();
        if check_signature(&key, &a.head, a.seq_to, next, &a.signature)
            && let Some(Ok(k)) = next.map(parse_public_key)
        {
            key = k;
        }
    }
    Ok(key)
}

/// Checks the log in `dir` against `anchors`. An anchor belongs to this log when its key
/// is in the log's key chain: `given` (the pinned first key), the keys the log's
/// checkpoints name, and every key an anchor of the chain hands over to.
pub fn check_anchors(
    dir: &Path,
    anchors: &Anchors,
    given: Option<VerifyingKey>,
) -> Result<AnchorCheck, AuditError> {
    let (in_log, first_seq) = log_checkpoints(dir)?;
    let mut keys: HashSet<String> = given.iter().map(public_key_base64).collect();
    // The log's checkpoints, and those of pruned archives (their key chain).
    let pruned = super::prune::read_key_chain(dir)?
        .into_iter()
        .map(|(c, _)| c);
    for cp in in_log.values().cloned().chain(pruned) {
        keys.insert(cp.public_key.clone());
        keys.extend(cp.next_public_key.clone());
    }
    // Follow hand-overs through anchors the log no longer has (a rollback's checkpoints).
    loop {
        let before = keys.len();
        for a in &anchors.list {
            if keys.contains(&a.public_key) {
                keys.extend(a.next_public_key.clone());
            }
        }
        if keys.len() == before {
            break;
        }
    }
    let mut check = AnchorCheck {
        forged: anchors.forged,
        ..AnchorCheck::default()
    };
    for a in &anchors.list {
        if !keys.contains(&a.public_key) {
            check.foreign += 1;
            continue;
        }
        check.anchored += 1;
        if first_seq.is_some_and(|f| a.seq < f) {
            // Before the log's first record: older files were removed (verify notes it);
            // a rollback cuts the end, not the beginning.
            check.before_log += 1;
            continue;
        }
        match in_log.get(&a.seq) {
            None => check.missing.push(a.clone()),
            Some(cp) if cp.same_signed(a) => check.matched += 1,
            Some(_) => check.disagreeing.push(a.clone()),
        }
    }
    Ok(check)
}
