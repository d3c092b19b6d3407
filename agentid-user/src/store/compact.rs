//! The compact event encoding: an event's JSON split into what it shares with the other
//! events of its process (the *context*, stored once) and what is its own (the row), and
//! merged back on read into the same JSON object.
//!
//! A connect event is ~650 bytes of JSON, ~560 of them the same for every event of the
//! process (agent, session, lineage, exec ids, uid, cgroup, comm, ..); its row keeps ~70
//! (address, port, protocol, tid). `kind`, `time` and `pid` are columns already and leave
//! the body when the columns give them back exactly. Keys this module does not name stay
//! in the row, so fields added to events later need nothing here.
use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Keys of the event JSON that describe the process rather than the event.
const CONTEXT_KEYS: &[&str] = &[
    "ppid",
    "uid",
    "gid",
    "cgroup_id",
    "cgroup",
    "comm",
    "exec_id",
    "parent_exec_id",
    "agent",
    "ambiguous",
    "session",
    "acting_for",
    "lineage",
    "escaped_to",
];

/// An event body split for storage.
#[derive(Debug)]
pub struct Split {
    /// The context's canonical text (sorted keys), shared by the events of a process
    /// whose context is unchanged (see [`ProcessContexts`]).
    pub context: Arc<str>,
    /// What is left for the row.
    pub row: String,
}

impl Split {
    /// Identifies (agent, context) in the `contexts` table: the lookup key, checked against
    /// the text. Only needed when the writer's cache misses, so computed then.
    pub fn hash(&self, agent: Option<&str>) -> i64 {
        let mut h = Sha256::new();
        h.update(agent.unwrap_or_default().as_bytes());
        h.update([0]);
        h.update(self.context.as_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(first)
    }
}

fn rfc3339(ts_ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ts_ns)).to_string()
}

/// Splits `body` (an event's JSON text); `None` when it is not an object.
pub(super) fn split(body: &str, ts_ns: u64, kind: &str, pid: u32) -> Option<Split> {
    let value = serde_json::from_str::<Value>(body).ok()?;
    split_value(&value, ts_ns, kind, pid)
}

/// Splits an event's JSON object (as `serde_json::to_value` gave it: the daemon encodes
/// each event once for all outputs, and splits it on its event loop so that the store's
/// queue holds two short strings per event rather than a tree of JSON values); `None`
/// when it is not an object.
pub fn split_value(body: &Value, ts_ns: u64, kind: &str, pid: u32) -> Option<Split> {
    let Value::Object(map) = body else {
        return None;
    };
    let own = |k: &str, v: &Value| match k {
        "kind" => v.as_str() != Some(kind),
        "pid" => v.as_u64() != Some(u64::from(pid)),
        "time" => v.as_str() != Some(rfc3339(ts_ns).as_str()),
        _ => true,
    };
    let mut context = Vec::with_capacity(512);
    context.push(b'{');
    crate::audit::write_members(
        map.iter()
            .filter(|(k, _)| CONTEXT_KEYS.contains(&k.as_str())),
        &mut context,
    );
    context.push(b'}');
    let mut row = Vec::with_capacity(128);
    row.push(b'{');
    crate::audit::write_members(
        map.iter()
            .filter(|(k, v)| !CONTEXT_KEYS.contains(&k.as_str()) && own(k, v)),
        &mut row,
    );
    row.push(b'}');
    // Both are built from `str`s and JSON punctuation.
    let context = String::from_utf8(context).ok()?.into();
    let row = String::from_utf8(row).ok()?;
    Some(Split { context, row })
}

/// Splits an event's canonical text by the spans of its top-level members (as
/// [`crate::audit::write_direct`] gave them: the daemon encodes each event once for all
/// outputs, and splits it on its event loop so that the store's queue holds two short
/// strings per event); the same split as [`split_value`] of the event's value (a unit
/// test holds them equal). `None` when a span is not in `text`.
pub fn split_members(
    text: &str,
    members: &[crate::audit::Member],
    ts_ns: u64,
    kind: &str,
    pid: u32,
) -> Option<Split> {
    let mut context = String::with_capacity(512);
    let row = split_into(text, members, ts_ns, kind, pid, &mut context)?;
    Some(Split {
        context: context.into(),
        row,
    })
}

/// [`split_members`]: the context written into `context`, the row returned.
fn split_into(
    text: &str,
    members: &[crate::audit::Member],
    ts_ns: u64,
    kind: &str,
    pid: u32,
    context: &mut String,
) -> Option<String> {
    // A column's member leaves the row when the column gives its value back exactly; the
    // three keys need no escaping, so a member is `"key":` and the value's text.
    let value = |m: &crate::audit::Member| text.get(m.start + m.key.len() + 3..m.end);
    let quoted = |m: &crate::audit::Member| {
        value(m).and_then(|v| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
    };
    let own = |m: &crate::audit::Member| match m.key.as_ref() {
        "kind" => quoted(m) != Some(kind),
        "pid" => value(m).and_then(|v| v.parse::<u32>().ok()) != Some(pid),
        "time" => quoted(m).is_none_or(|v| !is_rfc3339(v, ts_ns)),
        _ => true,
    };
    let mut row = String::with_capacity(128);
    context.push('{');
    row.push('{');
    for m in members {
        let to = if CONTEXT_KEYS.contains(&m.key.as_ref()) {
            &mut *context
        } else if own(m) {
            &mut row
        } else {
            continue;
        };
        if to.len() > 1 {
            to.push(',');
        }
        to.push_str(text.get(m.start..m.end)?);
    }
    context.push('}');
    row.push('}');
    Some(row)
}

/// Whether `text` is `ts_ns` as the event's `time` writes it (formatted on the stack).
fn is_rfc3339(text: &str, ts_ns: u64) -> bool {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let t = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ts_ns));
    if write!(cursor, "{t}").is_err() {
        return text == rfc3339(ts_ns);
    }
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    text.as_bytes() == &buf[..len]
}

/// The context texts of the processes seen lately, shared by their events: an event whose
/// process context did not change takes the same `Arc` (no copy, and the store's writer
/// knows it by its address instead of hashing its text); a change (an exec, an identity
/// transition, a new session, a uid or comm change) makes a new one. Compared whole, so
/// a reused pid cannot take another process's context.
#[derive(Debug, Default)]
pub struct ProcessContexts {
    by_pid: rustc_hash::FxHashMap<u32, Arc<str>>,
    scratch: String,
}

/// Processes remembered at most; beyond, the cache starts again.
const PROCESSES_CACHED: usize = 4096;

impl ProcessContexts {
    /// [`split_members`], the context shared with the process's earlier events when equal.
    pub fn split(
        &mut self,
        text: &str,
        members: &[crate::audit::Member],
        ts_ns: u64,
        kind: &str,
        pid: u32,
    ) -> Option<Split> {
        self.scratch.clear();
        let row = split_into(text, members, ts_ns, kind, pid, &mut self.scratch)?;
        let context = match self.by_pid.get(&pid) {
            Some(known) if **known == *self.scratch => Arc::clone(known),
            _ => {
                if self.by_pid.len() >= PROCESSES_CACHED {
                    self.by_pid.clear();
                }
                let context: Arc<str> = self.scratch.as_str().into();
                self.by_pid.insert(pid, Arc::clone(&context));
                context
            }
        };
        if kind == "exit" {
            self.by_pid.remove(&pid);
        }
        Some(Split { context, row })
    }
}

/// The event's JSON object again, from its row, its context and its columns.
pub(super) fn merge(row: &str, context: Option<&str>, ts_ns: i64, kind: &str, pid: i64) -> Value {
    let mut obj = match serde_json::from_str::<Value>(row) {
        Ok(Value::Object(m)) => m,
        Ok(other) => return other,
        Err(_) => return Value::String(row.to_owned()),
    };
    if let Some(Ok(Value::Object(ctx))) = context.map(serde_json::from_str::<Value>) {
        for (k, v) in ctx {
            obj.entry(k).or_insert(v);
        }
    }
    obj.entry("kind")
        .or_insert_with(|| Value::String(kind.to_owned()));
    obj.entry("pid").or_insert_with(|| Value::from(pid));
    obj.entry("time")
        .or_insert_with(|| Value::String(rfc3339(u64::try_from(ts_ns).unwrap_or(0))));
    Value::Object(obj)
}
