//! The API contract: every request's parameters and every response's body, as types.
//!
//! The routes build these and the CLI deserialises them, so renaming a field changes both
//! sides or fails to compile, instead of the CLI printing `-` for a field that moved.
//! Event and alert bodies are stored as JSON when they happen and served as stored; the
//! CLI reads them as [`EventRecord`] / [`AlertRecord`], whose shape is checked against
//! the serialisers by the round-trip tests (`deny_unknown_fields` on events: a new or
//! renamed field is a test failure, not a silently empty column).
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    attribution::AgentRef,
    event::{EventKind, FileId, Protocol},
    outputs::SinkStats,
    process::{ExecId, Process},
};

/// Query parameters of the `GET` routes; unknown ones are refused so typos do not
/// silently widen a query.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub id: Option<String>,
    pub agent: Option<String>,
    pub kind: Option<String>,
    pub rule: Option<String>,
    /// Nanoseconds since the epoch.
    pub since: Option<u64>,
    pub limit: Option<u32>,
    pub follow: Option<bool>,
}

/// `POST /v1/credentials/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeParams {
    pub fingerprint: String,
}

/// Any error: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub probes: Vec<String>,
    /// Per event kind (`exec`, `fork`, ...).
    pub events: BTreeMap<String, u64>,
    pub events_per_s: BTreeMap<String, f64>,
    pub drops: BTreeMap<String, u64>,
    pub undecodable: u64,
    pub alerts: u64,
    pub processes: ProcessCounts,
    pub registry: RegistryStatus,
    pub store: StoreStatus,
    pub alerts_file: PathBuf,
    /// `null` once the audit writer is closed (shutdown).
    pub audit: Option<AuditStatus>,
    pub sinks: Vec<SinkStats>,
    /// Files the TLS request probes are attached to, or failed on (with the reason).
    #[serde(default)]
    pub tls: Vec<crate::sensor::TlsTarget>,
    /// Agents whose policy the kernel enforces (`enforce = true`).
    #[serde(default)]
    pub enforced: Vec<EnforcedAgent>,
    /// The Workload API issuer (`null`: `[issuer]` is off).
    #[serde(default)]
    pub issuer: Option<crate::issuer::IssuerStatus>,
    #[serde(default)]
    pub memory: MemoryStatus,
}

/// Where the daemon's memory goes, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// The daemon's resident memory (`/proc/self/statm`).
    pub rss_bytes: u64,
    /// The kernel ring buffer's size: its data pages are mapped twice, so it counts twice
    /// in `rss_bytes` once written through (0 before the first second's sample).
    pub ring_bytes: u64,
    /// The most unread bytes the ring held before a read since start: the headroom used.
    pub ring_peak_bytes: u64,
    /// Heap of the process table and the per-process identity map (estimated from
    /// allocated capacities; exited entries are kept up to a cap), and per live process.
    pub table_bytes: u64,
    pub table_bytes_per_live: u64,
}

/// An agent under enforcement, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcedAgent {
    pub id: String,
    /// Its cgroups the kernel enforces by (processes are then followed by pid).
    pub cgroups: usize,
    /// `egress`, `tools`: the lists enforced (an absent list allows everything).
    pub enforces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCounts {
    pub live: usize,
    pub exited_kept: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatus {
    pub dir: PathBuf,
    pub agents: usize,
    pub errors: Vec<String>,
    /// Live processes whose selectors match two or more agents (`ambiguous-identity`).
    pub ambiguous: Vec<IdentityIssue>,
    /// Live processes that left their agent's cgroup for no agent's (`identity-escape`).
    pub escaped: Vec<IdentityIssue>,
}

/// A live process whose identity needs a look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityIssue {
    pub pid: u32,
    /// The agent it is attributed to (`unregistered` when none).
    pub agent: String,
    /// The candidate agents (ambiguous), or the cgroup it went to (escaped).
    pub detail: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub bytes: u64,
    pub written: u64,
    pub dropped: u64,
    pub errors: u64,
    pub lost: u64,
    /// Why writes are failing, while they are.
    pub degraded: Option<String>,
    /// Events held, and bytes on disk per event held.
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub bytes_per_event: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    pub dir: PathBuf,
    pub appended: u64,
    pub dropped: u64,
    pub errors: u64,
    pub lost: u64,
    pub degraded: Option<String>,
    /// The log on disk (compressed archives, `audit.log`, the pruned key chain), the
    /// records it holds, and bytes per record.
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub records: u64,
    #[serde(default)]
    pub bytes_per_record: u64,
}

/// One registered agent with its live counts (`GET /v1/agents`, `/v1/agent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSummary {
    pub id: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub environment: Option<String>,
    /// The file (or source) the registration came from.
    pub registered_in: String,
    pub live_sessions: usize,
    pub live_processes: usize,
}

/// `GET /v1/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agents {
    pub agents: Vec<AgentSummary>,
    pub unregistered_processes: usize,
}

/// `GET /v1/agent?id=`: one agent, its live processes and its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDetail {
    pub agent: AgentSummary,
    pub processes: Vec<ProcessView>,
    pub sessions: Vec<SessionRow>,
}

/// A live process with its identity (`GET /v1/processes`): the process's fields, then
/// its attribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    #[serde(flatten)]
    pub process: Process,
    /// The agent, or the string `"unregistered"`.
    #[serde(with = "agent_or_unregistered")]
    pub agent: Option<AgentRef>,
    pub session: Option<String>,
    pub acting_for: Vec<String>,
    pub lineage: Vec<ExecId>,
}

/// A session, running or past (`GET /v1/sessions`, in [`AgentDetail`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRow {
    pub session: String,
    pub agent: String,
    pub root_exec_id: String,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub events: i64,
}

/// A credential fingerprint with one agent that used it (`GET /v1/credentials`); never
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRow {
    pub fingerprint: String,
    pub kind: String,
    pub agent: String,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub count: i64,
    /// Where it was seen (`env:OPENAI_API_KEY`, `argv`, a file path).
    pub sources: Vec<String>,
}

/// `POST /v1/credentials/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: String,
}

/// An attributed event as stored and served (`GET /v1/events`, `/v1/connections`,
/// followed events): the wire form of [`crate::attribution::AttributedEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    pub kind: EventKind,
    /// RFC 3339.
    pub time: String,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub comm: String,
    // exec
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_missing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loginuid: Option<u32>,
    /// Why the arguments or environment were not scanned whole, when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_incomplete: Option<Vec<String>>,
    // exit
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    // open
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_flags: Option<u32>,
    /// The file actually opened (device, inode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<FileId>,
    // connect, send
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The names the agent's own DNS resolved to `dst_ip` (connect, send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_names: Option<Vec<String>>,
    // socket (raw IP or packet; `protocol` above carries its protocol argument)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_type: Option<u32>,
    // request (`path` above carries its path, query values dropped)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued: Option<bool>,
    // attribution
    pub exec_id: Option<ExecId>,
    pub parent_exec_id: Option<ExecId>,
    #[serde(with = "agent_or_unregistered")]
    pub agent: Option<AgentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ambiguous: Vec<String>,
    pub session: Option<String>,
    pub acting_for: Vec<String>,
    pub lineage: Vec<ExecId>,
}

/// An alert as stored and served (`GET /v1/alerts`, followed alerts): the fields the CLI
/// shows; evidence and tags stay JSON (the `--json` output carries them whole).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub uid: String,
    pub rule: String,
    pub title: String,
    pub description: String,
    pub severity: String,
    /// RFC 3339.
    pub first_seen: String,
    pub last_seen: String,
    pub count: u64,
    pub agents: Vec<AlertAgentRecord>,
    pub evidence: serde_json::Value,
    pub tags: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertAgentRecord {
    /// SPIFFE ID, or `unregistered`.
    pub id: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub environment: Option<String>,
    pub session: Option<String>,
}

/// A follower too slow for the live stream is told how many items it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lagged {
    pub lagged: u64,
}

/// `agent`: an object for an attributed process, the string `"unregistered"` otherwise.
mod agent_or_unregistered {
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer, de::Error as _};

    use crate::attribution::AgentRef;

    const UNREGISTERED: &str = "unregistered";

    #[expect(
        clippy::ref_option,
        reason = "serde's `with` passes the field by reference"
    )]
    pub(super) fn serialize<S: Serializer>(a: &Option<AgentRef>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => a.serialize(s),
            None => s.serialize_str(UNREGISTERED),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<AgentRef>, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Agent(AgentRef),
            Word(String),
        }
        match Wire::deserialize(d)? {
            Wire::Agent(a) => Ok(Some(a)),
            Wire::Word(w) if w == UNREGISTERED => Ok(None),
            Wire::Word(w) => Err(D::Error::custom(format!(
                "agent: expected an object or \"{UNREGISTERED}\", got {w:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_id(ticks: u64, pid: u32) -> ExecId {
        crate::process::HostIds {
            host: "h".into(),
            boot: "b".into(),
        }
        .exec_id(ticks, pid)
    }

    fn process() -> Process {
        Process {
            pid: 42,
            exec_id: exec_id(7, 42),
            ppid: 1,
            parent_exec_id: None,
            start_ticks: 7,
            exe: "/usr/bin/python3".into(),
            argv: vec!["python3".into(), "agent.py".into()],
            comm: "python3".into(),
            uid: 1000,
            gid: 1000,
            loginuid: Some(1000),
            cgroup_id: 9,
            cgroup: "/agents/a".into(),
            exited_ns: None,
            moved_from: None,
        }
    }

    /// The process's fields sit beside its attribution, and `agent` is an object or the
    /// word `unregistered`, both ways.
    #[test]
    fn process_view_round_trips_both_shapes_of_agent() {
        let registered = ProcessView {
            process: process(),
            agent: Some(AgentRef {
                id: "spiffe://x/agent/a".into(),
                name: Some("a".into()),
                owner: None,
                environment: None,
            }),
            session: Some("a/42-7".into()),
            acting_for: vec!["spiffe://x/agent/b".into()],
            lineage: vec![exec_id(1, 1)],
        };
        let unregistered = ProcessView {
            agent: None,
            session: None,
            acting_for: Vec::new(),
            lineage: Vec::new(),
            ..registered.clone()
        };
        for view in [registered, unregistered] {
            let v = serde_json::to_value(&view).unwrap();
            assert_eq!(v["pid"], 42);
            assert_eq!(v["exe"], "/usr/bin/python3");
            let back: ProcessView = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(back, view, "{v}");
        }
        let v = serde_json::to_value(ProcessView {
            agent: None,
            session: None,
            acting_for: Vec::new(),
            lineage: Vec::new(),
            process: process(),
        })
        .unwrap();
        assert_eq!(v["agent"], "unregistered");
        let mut wrong = v;
        wrong["agent"] = "somebody".into();
        let e = serde_json::from_value::<ProcessView>(wrong).unwrap_err();
        assert!(e.to_string().contains("\"somebody\""), "{e}");
    }

    /// A field the CLI does not know is an error, not an empty column.
    #[test]
    fn an_unknown_event_field_is_refused() {
        let exec = serde_json::json!({
            "kind": "exec", "time": "2026-01-01T00:00:00Z", "pid": 1, "ppid": null, "tid": 1,
            "uid": 0, "gid": 0, "cgroup_id": 1, "comm": "sh", "filename": "/bin/sh",
            "argv": ["sh"], "argv_truncated": false, "argv_missing": false, "loginuid": null,
            "exec_id": null, "parent_exec_id": null, "agent": "unregistered", "session": null,
            "acting_for": [], "lineage": []
        });
        let e: EventRecord = serde_json::from_value(exec.clone()).unwrap();
        assert_eq!(
            (e.kind, e.filename.as_deref()),
            (EventKind::Exec, Some("/bin/sh"))
        );
        let mut renamed = exec.clone();
        renamed["file_name"] = renamed["filename"].take();
        assert!(serde_json::from_value::<EventRecord>(renamed).is_err());
        // An open carries the file actually opened, as the event serialises it.
        let detail = crate::event::Detail::Open {
            path: "/tmp/link".into(),
            open_flags: 0,
            inode: Some(FileId { dev: 2049, ino: 7 }),
        };
        let mut open = exec;
        for k in [
            "filename",
            "argv",
            "argv_truncated",
            "argv_missing",
            "loginuid",
        ] {
            open.as_object_mut().unwrap().remove(k);
        }
        open["kind"] = "open".into();
        open.as_object_mut().unwrap().extend(
            serde_json::to_value(&detail)
                .unwrap()
                .as_object()
                .unwrap()
                .clone(),
        );
        let e: EventRecord = serde_json::from_value(open).unwrap();
        assert_eq!(e.inode, Some(FileId { dev: 2049, ino: 7 }));
    }
}
