//! Evidence bundles: one agent's records with the chain segment and the checkpoint that
//! signs them, checkable on another machine with only the public key.
//!
//! A bundle proves that the records it contains are part of the signed chain (the covering
//! checkpoint's head commits to every record before it). It cannot prove that the exporter
//! left none of the agent's records out *before* the segment, and the registration it
//! carries is the exporter's statement, not part of the chain.
//!
//! Forward-secure logs sign each checkpoint with a new key, so a segment's checkpoints are
//! not signed with the chain's first key (the one an operator pins). A bundle carries the
//! `key_chain`: every checkpoint before the segment (seq, head, signature, keys), each
//! signing the hand-over to the next key, so `verify --bundle --pubkey FIRST` walks from the
//! pinned key to the key that signs the segment.
use std::{collections::BTreeSet, fmt, fs, path::Path, time::SystemTime};

use ed25519_dalek::VerifyingKey;
use serde_json::{Value, json};

use super::{
    AuditError, Checkpoint, check_signature, file_name, log_files, now_rfc3339, parse_public_key,
    verify::{Item, KeySource, VerifyReport, check_chain},
};

const FORMAT: &str = "agentid-audit-bundle/1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records in the exported chain segment.
    pub records: usize,
    /// Of them, the agent's.
    pub relevant: usize,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The segment ends with a checkpoint that signs all the agent's records.
    pub covered: bool,
}

#[derive(Debug, Clone)]
pub struct BundleReport {
    pub agent: String,
    pub chain: VerifyReport,
    pub relevant: usize,
    pub sessions: Vec<String>,
    pub exec_ids: Vec<String>,
    pub acting_for: Vec<String>,
    pub has_registration: bool,
    /// The agent's records after the last valid checkpoint of the segment.
    pub unsigned_relevant: usize,
    /// The bundle's own fields disagree with its records.
    pub problem: Option<String>,
}

impl BundleReport {
    pub fn is_ok(&self) -> bool {
        self.chain.is_ok() && self.problem.is_none() && self.unsigned_relevant == 0
    }
}

impl fmt::Display for BundleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.chain.damage {
            return write!(f, "DAMAGED bundle: {d}");
        }
        if let Some(p) = &self.problem {
            return write!(f, "DAMAGED bundle: {p}");
        }
        if self.unsigned_relevant > 0 {
            return write!(
                f,
                "UNPROVEN bundle: {} of the agent's records are after the last signed \
                 checkpoint",
                self.unsigned_relevant
            );
        }
        write!(
            f,
            "ok bundle for {}: {} of its records in a signed chain segment of {} records \
             (seq {}..={}), {} checkpoints; sessions: {}; exec ids: {}",
            self.agent,
            self.relevant,
            self.chain.records,
            self.chain.first_seq.unwrap_or_default(),
            self.chain.last_seq.unwrap_or_default(),
            self.chain.checkpoints,
            self.sessions.len(),
            self.exec_ids.len(),
        )?;
        if let KeySource::Embedded(k) = &self.chain.key {
            write!(
                f,
                "\nsignatures checked with the key the bundle carries ({k}): pass --pubkey \
                 with the key you trust"
            )?;
        }
        if self.has_registration {
            write!(
                f,
                "\nnote: the registration is the exporter's statement, not part of the chain"
            )?;
        }
        Ok(())
    }
}

/// Every whole record of the log in `dir`, with where it is (`file:line`).
fn read_records(dir: &Path) -> Result<(Vec<Value>, Vec<String>), AuditError> {
    let files = log_files(dir)?;
    if files.is_empty() {
        return Err(AuditError::NoLog(dir.to_owned()));
    }
    let mut records = Vec::new();
    let mut locations = Vec::new();
    for path in &files {
        let data = super::segments::read(path)?;
        let name = file_name(path);
        // Only whole lines: a torn last line is no record.
        let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for (i, line) in data[..whole].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_slice(line).map_err(|e| AuditError::Corrupt {
                path: path.clone(),
                line: i as u64 + 1,
                reason: format!("not a JSON record ({e}); run `agentid audit verify`"),
            })?;
            records.push(v);
            locations.push(format!("{name}:{}", i + 1));
        }
    }
    Ok((records, locations))
}

/// Writes the bundle for `agent_id` (records with `ts` in `since..=until`) to `out`.
pub fn export_bundle(
    dir: &Path,
    agent_id: &str,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    registration: Option<Value>,
    out: &Path,
) -> Result<ExportSummary, AuditError> {
    let (records, locations) = read_records(dir)?;
    let relevant = relevant_records(&records, agent_id, since, until);
    let (Some(&first), Some(&last)) = (relevant.first(), relevant.last()) else {
        return Err(AuditError::Bundle {
            path: out.to_owned(),
            reason: format!("no records of agent {agent_id} in that time range"),
        });
    };
    let end = (last..records.len())
        .find(|&i| records[i].get("type").and_then(Value::as_str) == Some("checkpoint"))
        .unwrap_or(records.len() - 1);
    let segment = &records[first..=end];
    // Export only what checks out: a bundle from a damaged log would fail elsewhere anyway.
    let items: Vec<Item> = segment
        .iter()
        .zip(&locations[first..=end])
        .map(|(v, loc)| Item::from_value(v, 0, loc.clone()))
        .collect();
    let chain = check_chain(&items, None, false, false);
    if let Some(d) = chain.damage {
        return Err(AuditError::Bundle {
            path: out.to_owned(),
            reason: format!("the log is damaged: {d}"),
        });
    }
    let relevant_seqs: Vec<u64> = relevant
        .iter()
        .filter_map(|&i| records[i].get("seq").and_then(Value::as_u64))
        .collect();
    let facts = Facts::of(relevant.iter().map(|&i| &records[i]));
    // The hand-overs of pruned archives first, then those of the log before the segment.
    let key_chain: Vec<Checkpoint> = super::prune::read_key_chain(dir)?
        .into_iter()
        .map(|(c, _)| c)
        .chain(records[..first].iter().filter_map(Checkpoint::from_record))
        .collect();
    let bundle = json!({
        "format": FORMAT,
        "agent": agent_id,
        "since": since.map(now_rfc3339),
        "until": until.map(now_rfc3339),
        "exported_at": now_rfc3339(SystemTime::now()),
        "sessions": facts.sessions,
        "exec_ids": facts.exec_ids,
        "acting_for": facts.acting_for,
        "relevant": relevant_seqs,
        "records": segment,
        "key_chain": key_chain,
    });
    let mut bundle = bundle;
    bundle["registration"] = registration.unwrap_or(Value::Null);
    let text = serde_json::to_string_pretty(&bundle)?;
    fs::write(out, text + "\n").map_err(AuditError::io(out))?;
    Ok(ExportSummary {
        records: segment.len(),
        relevant: relevant.len(),
        first_seq: segment[0].get("seq").and_then(Value::as_u64).unwrap_or(0),
        last_seq: segment[segment.len() - 1]
            .get("seq")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        covered: chain.unsigned_tail == 0,
    })
}

/// Verifies a bundle on its own: every hash, the chain, the checkpoint signatures, and
/// that its agent, lists of seqs, sessions and exec ids are what its records say.
pub fn verify_bundle(
    path: &Path,
    pubkey: Option<VerifyingKey>,
) -> Result<BundleReport, AuditError> {
    let err = |reason: String| AuditError::Bundle {
        path: path.to_owned(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(AuditError::io(path))?;
    let bundle: Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    if bundle.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(err(format!("not an {FORMAT} bundle")));
    }
    let agent = bundle
        .get("agent")
        .and_then(Value::as_str)
        .ok_or_else(|| err("no agent".into()))?
        .to_owned();
    let records = bundle
        .get("records")
        .and_then(Value::as_array)
        .ok_or_else(|| err("no records".into()))?;
    let time = |k: &str| {
        bundle
            .get(k)
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    let items: Vec<Item> = records
        .iter()
        .enumerate()
        .map(|(i, v)| Item::from_value(v, 0, format!("record {}", i + 1)))
        .collect();
    let (key, chain_problem) = walk_key_chain(&bundle, pubkey).map_err(err)?;
    let chain = check_chain(&items, key, false, false);

    let relevant = relevant_records(records, &agent, time("since"), time("until"));
    let relevant_seqs: Vec<u64> = relevant
        .iter()
        .filter_map(|&i| records[i].get("seq").and_then(Value::as_u64))
        .collect();
    let facts = Facts::of(relevant.iter().map(|&i| &records[i]));
    let listed = |k: &str| bundle.get(k).cloned().unwrap_or(Value::Null);
    let mut problem = chain_problem;
    for (k, derived) in [
        ("relevant", json!(relevant_seqs)),
        ("sessions", json!(facts.sessions)),
        ("exec_ids", json!(facts.exec_ids)),
        ("acting_for", json!(facts.acting_for)),
    ] {
        if problem.is_some() {
            break;
        }
        if listed(k) != derived {
            problem = Some(format!(
                "its \"{k}\" list does not match what its records say"
            ));
            break;
        }
    }
    if problem.is_none() && relevant.is_empty() {
        problem = Some(format!("no record of agent {agent}"));
    }
    let signed_until = records.len() - usize::try_from(chain.unsigned_tail).unwrap_or(0);
    let unsigned_relevant = relevant.iter().filter(|&&i| i >= signed_until).count();
    Ok(BundleReport {
        agent,
        chain,
        relevant: relevant.len(),
        sessions: facts.sessions.into_iter().collect(),
        exec_ids: facts.exec_ids.into_iter().collect(),
        acting_for: facts.acting_for.into_iter().collect(),
        has_registration: bundle.get("registration").is_some_and(|r| !r.is_null()),
        unsigned_relevant,
        problem,
    })
}

/// Walks the bundle's `key_chain` from the pinned key to the key that signs its segment.
/// Returns that key and, when a hand-over does not verify, why.
fn walk_key_chain(
    bundle: &Value,
    pubkey: Option<VerifyingKey>,
) -> Result<(Option<VerifyingKey>, Option<String>), String> {
    let Some(mut k) = pubkey else {
        return Ok((None, None));
    };
    let key_chain: Vec<Checkpoint> = bundle
        .get("key_chain")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("key_chain: {e}"))?
        .unwrap_or_default();
    for cp in &key_chain {
        if !check_signature(
            &k,
            &cp.head,
            cp.seq_to,
            cp.next_public_key.as_deref(),
            &cp.signature,
        ) {
            let problem = format!(
                "its key_chain breaks at checkpoint seq {}: not signed by the key the chain \
                 from the given key leads to",
                cp.seq
            );
            return Ok((Some(k), Some(problem)));
        }
        if let Some(next) = &cp.next_public_key {
            k = parse_public_key(next).map_err(|e| format!("key_chain: {e}"))?;
        }
    }
    Ok((Some(k), None))
}

/// Indices of the agent's records: its events (as the agent or acted for) and alerts
/// naming it, with `ts` in range.
fn relevant_records(
    records: &[Value],
    agent: &str,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> Vec<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            let ts = r
                .get("ts")
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339(t).ok());
            let in_range = since.is_none_or(|s| ts.is_some_and(|t| t >= s))
                && until.is_none_or(|u| ts.is_some_and(|t| t <= u));
            in_range && mentions(r, agent)
        })
        .map(|(i, _)| i)
        .collect()
}

fn mentions(record: &Value, agent: &str) -> bool {
    let body = record.get("body");
    let strs = |v: Option<&Value>| {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|s| s == agent)
    };
    match record.get("type").and_then(Value::as_str) {
        Some("event") => {
            body.and_then(|b| b.pointer("/agent/id"))
                .and_then(Value::as_str)
                == Some(agent)
                || strs(body.and_then(|b| b.get("acting_for")))
        }
        Some("alert") => body
            .and_then(|b| b.get("agents"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|a| a.get("id").and_then(Value::as_str) == Some(agent)),
        _ => false,
    }
}

/// Sessions, exec ids (own and lineage) and acting-for agents named by event bodies.
#[derive(Debug, Default)]
struct Facts {
    sessions: BTreeSet<String>,
    exec_ids: BTreeSet<String>,
    acting_for: BTreeSet<String>,
}

impl Facts {
    fn of<'a>(records: impl Iterator<Item = &'a Value>) -> Self {
        let mut facts = Self::default();
        for r in records {
            if r.get("type").and_then(Value::as_str) != Some("event") {
                continue;
            }
            let Some(body) = r.get("body") else { continue };
            let str_of = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
            let list_of = |k: &str| {
                body.get(k)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            facts.sessions.extend(str_of("session"));
            facts.exec_ids.extend(str_of("exec_id"));
            facts.exec_ids.extend(list_of("lineage"));
            facts.acting_for.extend(list_of("acting_for"));
        }
        facts
    }
}
