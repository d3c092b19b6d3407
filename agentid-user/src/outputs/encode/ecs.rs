//! Elastic Common Schema (8.11) documents for Elasticsearch.
//!
//! Fields ECS has no name for (owner, environment, acting-for chain, the credential
//! fingerprint, the full agent list) go under the custom `agentid.*` namespace, as ECS
//! recommends for vendor fields.
use serde_json::{Map, Value, json};

use super::{PRODUCT_VERSION, checkpoint_time, rfc3339_micros};
use crate::{
    attribution::AttributedEvent,
    audit::Checkpoint,
    detect::{Alert, Severity},
    event::{Detail, EventKind},
};

pub const ECS_VERSION: &str = "8.11.0";

/// ECS `event.severity` (numeric, higher is worse) on the same 0–10 scale as CEF.
fn severity_num(s: Severity) -> u8 {
    super::cef::severity(s)
}

/// Where a rule is documented: `rule.reference`.
pub fn rule_reference(rule: &str) -> String {
    format!("{}/docs/rules.md#{rule}", env!("CARGO_PKG_REPOSITORY"))
}

/// The ECS document for a signed audit checkpoint (`event.action: audit-checkpoint`); the
/// checkpoint is `agentid.audit_checkpoint`.
pub fn audit_checkpoint(cp: &Checkpoint) -> Value {
    json!({
        "@timestamp": rfc3339_micros(checkpoint_time(cp)),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "category": ["configuration"],
            "type": ["info"],
            "action": "audit-checkpoint",
            "module": "agentid",
            "dataset": "agentid.audit",
            "severity": 1,
        },
        "message": format!("audit log signed through seq {}", cp.seq_to),
        "agentid": {"audit_checkpoint": cp},
    })
}

/// The ECS document for an incident (`event.kind: alert`).
pub fn alert(alert: &Alert) -> Value {
    let t = &alert.tags;
    let tags: Vec<&str> = t
        .owasp
        .iter()
        .chain(t.threats)
        .chain(t.maestro)
        .chain(t.nist)
        .copied()
        .collect();
    let mut v = json!({
        "@timestamp": rfc3339_micros(alert.last_seen),
        "ecs": {"version": ECS_VERSION},
        "message": alert.description,
        "event": {
            "kind": "alert",
            "category": ["intrusion_detection"],
            "type": ["info"],
            "id": alert.uid,
            "severity": severity_num(alert.severity),
            "start": rfc3339_micros(alert.first_seen),
            "end": rfc3339_micros(alert.last_seen),
            "module": "agentid",
            "dataset": "agentid.alert",
        },
        "observer": {"product": "agentid", "vendor": "agentid", "version": PRODUCT_VERSION},
        "rule": {
            "id": alert.rule,
            "name": alert.rule,
            "description": alert.title,
            "reference": rule_reference(alert.rule),
            "ruleset": "agentid",
        },
        "gen_ai": {"agent": {
            "id": alert.agents.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            "name": alert.agents.iter().filter_map(|a| a.name.as_deref()).collect::<Vec<_>>(),
        }},
        "tags": tags,
        "agentid": {
            "uid": alert.uid,
            "title": alert.title,
            "count": alert.count,
            "severity": alert.severity,
            "agents": alert.agents,
            "credential": alert.evidence.credential,
            "processes": alert.evidence.processes,
            "connections": alert.evidence.connections,
        },
    });
    if let Some(reason) = alert.reason {
        v["event"]["reason"] = json!(reason);
        v["agentid"]["reason"] = json!(reason);
    }
    // ECS `process`/`destination` are single-valued: the first evidence; all of them are
    // under `agentid.*`.
    if let Some(p) = alert.evidence.processes.first() {
        let mut proc = Map::new();
        proc.insert("pid".into(), json!(p.pid));
        if let Some(e) = &p.exec_id {
            proc.insert("entity_id".into(), json!(e));
        }
        if let Some(exe) = &p.exe {
            proc.insert("executable".into(), json!(exe));
        }
        proc.insert("args".into(), json!(p.argv));
        proc.insert("user".into(), json!({"id": p.uid.to_string()}));
        v["process"] = Value::Object(proc);
    }
    if let Some(c) = alert.evidence.connections.first() {
        v["destination"] = json!({"ip": c.dst_ip.to_string(), "port": c.dst_port});
        if let Some(name) = c.dst_names.first() {
            v["destination"]["domain"] = json!(name);
        }
        v["network"] = json!({"transport": c.protocol, "direction": "egress"});
    }
    v
}

/// The ECS document for an activity event (`event.kind: event`); `None` for fork.
pub fn activity(ev: &AttributedEvent) -> Option<Value> {
    let e = &ev.event;
    let (category, types): (&str, &[&str]) = match e.kind {
        EventKind::Exec => ("process", &["start"]),
        EventKind::Exit => ("process", &["end"]),
        EventKind::Connect => ("network", &["connection", "start"]),
        EventKind::Send => ("network", &["connection", "info"]),
        EventKind::Request => ("web", &["access"]),
        // File opens and raw-socket creations stay in the store and audit log (a
        // registered agent's raw socket is an alert); SIEM activity streams carry
        // process and network activity only.
        EventKind::Fork | EventKind::Open | EventKind::Socket => return None,
    };
    let mut proc = Map::new();
    proc.insert("pid".into(), json!(e.pid));
    proc.insert("name".into(), json!(e.comm));
    if let Some(x) = &ev.exec_id {
        proc.insert("entity_id".into(), json!(x.as_str()));
    }
    let mut parent = Map::new();
    if let Some(ppid) = e.ppid {
        parent.insert("pid".into(), json!(ppid));
    }
    if let Some(x) = &ev.parent_exec_id {
        parent.insert("entity_id".into(), json!(x.as_str()));
    }
    if !parent.is_empty() {
        proc.insert("parent".into(), Value::Object(parent));
    }
    proc.insert("user".into(), json!({"id": e.uid.to_string()}));
    match &e.detail {
        Detail::Exec { filename, argv, .. } => {
            proc.insert("executable".into(), json!(filename));
            proc.insert("args".into(), json!(argv));
        }
        Detail::Exit { exit_code, .. } => {
            if let Some(c) = exit_code {
                proc.insert("exit_code".into(), json!(c));
            }
        }
        _ => {
            if let Some(exe) = &ev.exe {
                proc.insert("executable".into(), json!(exe));
            }
        }
    }
    let mut v = json!({
        "@timestamp": rfc3339_micros(e.time),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "event", "category": [category], "type": types,
                  "action": e.kind.as_str(), "module": "agentid", "dataset": "agentid.activity"},
        "observer": {"product": "agentid", "vendor": "agentid", "version": PRODUCT_VERSION},
        "process": proc,
        "agentid": {
            "agent": ev.agent,
            "session": ev.session,
            "acting_for": ev.acting_for,
            "cgroup": e.cgroup,
        },
    });
    if let Some(a) = &ev.agent {
        v["gen_ai"] = json!({"agent": {"id": a.id, "name": a.name}});
    }
    if let Detail::Sock {
        dst_ip,
        dst_port,
        protocol,
        dst_names,
    } = &e.detail
    {
        v["destination"] = json!({"ip": dst_ip.to_string(), "port": dst_port});
        if let Some(name) = dst_names.first() {
            v["destination"]["domain"] = json!(name);
        }
        v["network"] = json!({"transport": protocol.to_string(), "direction": "egress"});
    }
    if let Detail::Request {
        method,
        host,
        path,
        http_version,
        credential_headers,
        ..
    } = &e.detail
    {
        v["http"] = json!({"version": http_version, "request": {"method": method}});
        let mut url = json!({"path": path});
        if let Some(h) = host {
            url["domain"] = json!(h);
        }
        v["url"] = url;
        v["agentid"]["credential_headers"] = json!(credential_headers);
    }
    Some(v)
}
