//! OCSF 1.8.0 events.
//!
//! Agent identity has no home in OCSF 1.8: it goes to `unmapped.agentid.agents` (every
//! agent of the incident, with owner, environment and session), where any OCSF consumer
//! keeps it verbatim. OCSF 1.9 (in development) adds an `ai_agent` object; with
//! [`EncodeContext::ocsf_ai_agent`] the first agent is also written there, so consumers can
//! move over without losing the `unmapped` copy.
use serde_json::{Map, Value, json};

use super::{EncodeContext, PRODUCT_VERSION, checkpoint_time, epoch_ms};
use crate::{
    attribution::AttributedEvent,
    audit::Checkpoint,
    detect::{Alert, AlertAgent, ProcessEvidence, Severity},
    event::{Detail, EventKind},
};

/// The schema version every event claims.
pub const SCHEMA_VERSION: &str = "1.8.0";

pub const CLASS_PROCESS_ACTIVITY: u32 = 1007;
pub const CLASS_DETECTION_FINDING: u32 = 2004;
pub const CLASS_NETWORK_ACTIVITY: u32 = 4001;
pub const CLASS_HTTP_ACTIVITY: u32 = 4002;
pub const CLASS_EVENT_LOG_ACTIVITY: u32 = 1008;

/// OCSF `severity_id` and its caption.
pub fn severity(s: Severity) -> (u8, &'static str) {
    match s {
        Severity::Info => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

/// Every event carries `device` and `actor`: the `host` profile's attributes (a strict
/// validator rejects them in Network Activity and Detection Finding without it).
fn metadata() -> Value {
    json!({
        "product": {"name": "agentid", "vendor_name": "agentid", "version": PRODUCT_VERSION},
        "version": SCHEMA_VERSION,
        "profiles": ["host"],
    })
}

fn agent_json(a: &AlertAgent) -> Value {
    json!({
        "id": a.id, "name": a.name, "owner": a.owner,
        "environment": a.environment, "session": a.session,
    })
}

fn file_of(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    json!({"path": path, "name": name, "type_id": 1, "type": "Regular File"})
}

fn evidence_process(p: &ProcessEvidence) -> Value {
    let mut proc = Map::new();
    proc.insert("pid".into(), json!(p.pid));
    if let Some(e) = &p.exec_id {
        proc.insert("uid".into(), json!(e));
    }
    if !p.argv.is_empty() {
        proc.insert("cmd_line".into(), json!(p.argv.join(" ")));
    }
    if let Some(exe) = &p.exe {
        proc.insert("file".into(), file_of(exe));
    }
    proc.insert("user".into(), json!({"uid": p.uid.to_string()}));
    // OCSF 1.8 has no cgroup attribute (and `process` no `container`; a cgroup is not a
    // container name anyway): it goes with the evidence's other free-form data.
    json!({
        "process": proc,
        "data": {"acting_for": p.acting_for, "argv": p.argv, "cgroup": p.cgroup},
    })
}

/// A Detection Finding (class 2004) for one incident: activity Create on its first
/// sighting, Update afterwards (same `finding_info.uid`).
pub fn detection_finding(alert: &Alert, ctx: &EncodeContext) -> Value {
    let activity_id: u32 = if alert.is_new() { 1 } else { 2 };
    let (severity_id, severity_name) = severity(alert.severity);
    let t = &alert.tags;
    let types: Vec<&str> = std::iter::once(alert.rule)
        .chain(t.owasp.iter().copied())
        .chain(t.threats.iter().copied())
        .chain(t.maestro.iter().copied())
        .chain(t.nist.iter().copied())
        .collect();
    let mut evidences: Vec<Value> = alert
        .evidence
        .processes
        .iter()
        .map(evidence_process)
        .collect();
    evidences.extend(alert.evidence.connections.iter().map(|c| {
        json!({
            "dst_endpoint": dst_endpoint(c),
            // Evidence connections are connects and sends: outbound.
            "connection_info": {"protocol_name": c.protocol, "direction_id": 2, "direction": "Outbound"},
        })
    }));
    let mut v = json!({
        "class_uid": CLASS_DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": if activity_id == 1 { "Create" } else { "Update" },
        "type_uid": CLASS_DETECTION_FINDING * 100 + activity_id,
        "type_name": if activity_id == 1 { "Detection Finding: Create" } else { "Detection Finding: Update" },
        "severity_id": severity_id,
        "severity": severity_name,
        "time": epoch_ms(alert.last_seen),
        "message": alert.title,
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "count": alert.count,
        "metadata": metadata(),
        "device": {"hostname": ctx.hostname, "type_id": 0},
        "finding_info": {
            "uid": alert.uid,
            "title": alert.title,
            "desc": alert.description,
            "types": types,
            "analytic": {"name": alert.rule, "uid": alert.rule, "type_id": 1, "type": "Rule"},
            "first_seen_time": epoch_ms(alert.first_seen),
            "last_seen_time": epoch_ms(alert.last_seen),
        },
        "evidences": evidences,
        "unmapped": {"agentid": {
            "agents": alert.agents.iter().map(agent_json).collect::<Vec<_>>(),
            "credential": alert.evidence.credential,
            "tags": alert.tags,
        }},
    });
    if let Some(reason) = alert.reason {
        v["unmapped"]["agentid"]["reason"] = json!(reason);
    }
    if let Some(c) = &alert.evidence.credential {
        // The session the activity came from, per the actor (`host` profile): OCSF 1.8 has
        // no top-level `session` in a finding.
        v["actor"] = json!({"session": {"credential_uid": c.fingerprint}});
    }
    if ctx.ocsf_ai_agent
        && let Some(a) = alert.agents.first()
    {
        v["ai_agent"] = json!({"uid": a.id, "name": a.name, "instance_uid": a.session});
    }
    v
}

fn event_process(ev: &AttributedEvent) -> Map<String, Value> {
    let e = &ev.event;
    let mut p = Map::new();
    p.insert("pid".into(), json!(e.pid));
    p.insert("tid".into(), json!(e.tid));
    p.insert("name".into(), json!(e.comm));
    if let Some(x) = &ev.exec_id {
        p.insert("uid".into(), json!(x.as_str()));
    }
    p.insert("user".into(), json!({"uid": e.uid.to_string()}));
    let exe = match &e.detail {
        Detail::Exec { filename, argv, .. } => {
            p.insert("cmd_line".into(), json!(argv.join(" ")));
            Some(filename.as_str())
        }
        _ => ev.exe.as_deref(),
    };
    if let Some(exe) = exe {
        p.insert("file".into(), file_of(exe));
    }
    let mut parent = Map::new();
    if let Some(ppid) = e.ppid {
        parent.insert("pid".into(), json!(ppid));
    }
    if let Some(x) = &ev.parent_exec_id {
        parent.insert("uid".into(), json!(x.as_str()));
    }
    if !parent.is_empty() {
        p.insert("parent_process".into(), Value::Object(parent));
    }
    p
}

fn unmapped_identity(ev: &AttributedEvent) -> Value {
    json!({"agentid": {
        "agent": ev.agent.as_ref().map_or_else(|| json!("unregistered"), |a| json!(a)),
        "session": ev.session,
        "acting_for": ev.acting_for,
        "lineage": ev.lineage.iter().map(crate::process::ExecId::as_str).collect::<Vec<_>>(),
        "cgroup": ev.event.cgroup,
    }})
}

fn base(
    class: u32,
    category: u32,
    activity_id: u32,
    activity: &str,
    ev: &AttributedEvent,
    ctx: &EncodeContext,
) -> Value {
    let class_name = match class {
        CLASS_PROCESS_ACTIVITY => "Process Activity",
        CLASS_HTTP_ACTIVITY => "HTTP Activity",
        _ => "Network Activity",
    };
    let mut v = json!({
        "class_uid": class,
        "class_name": class_name,
        "category_uid": category,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class * 100 + activity_id,
        "type_name": format!("{class_name}: {activity}"),
        "severity_id": 1,
        "severity": "Informational",
        "time": epoch_ms(ev.event.time),
        "metadata": metadata(),
        "device": {"hostname": ctx.hostname, "type_id": 0},
        "unmapped": unmapped_identity(ev),
    });
    if ctx.ocsf_ai_agent
        && let Some(a) = &ev.agent
    {
        v["ai_agent"] = json!({"uid": a.id, "name": a.name, "instance_uid": ev.session});
    }
    v
}

/// Process Activity (1007) for exec (Launch) and exit (Terminate); `None` for other kinds
/// (fork has no OCSF activity of its own: the exec that follows is the launch).
pub fn process_activity(ev: &AttributedEvent, ctx: &EncodeContext) -> Option<Value> {
    let (activity_id, activity) = match ev.event.kind {
        EventKind::Exec => (1, "Launch"),
        EventKind::Exit => (2, "Terminate"),
        _ => return None,
    };
    let mut v = base(CLASS_PROCESS_ACTIVITY, 1, activity_id, activity, ev, ctx);
    let process = event_process(ev);
    // The actor of a launch is the parent; of a termination, the process itself.
    let actor = match (ev.event.kind, process.get("parent_process")) {
        (EventKind::Exec, Some(parent)) => parent.clone(),
        _ => Value::Object(process.clone()),
    };
    v["actor"] = json!({"process": actor});
    v["process"] = Value::Object(process);
    if let Detail::Exit { exit_code, .. } = ev.event.detail
        && let Some(code) = exit_code
    {
        v["exit_code"] = json!(code);
    }
    Some(v)
}

/// Network Activity (4001) for connect (Open) and unconnected send (Traffic).
pub fn network_activity(ev: &AttributedEvent, ctx: &EncodeContext) -> Option<Value> {
    let (activity_id, activity) = match ev.event.kind {
        EventKind::Connect => (1, "Open"),
        EventKind::Send => (6, "Traffic"),
        _ => return None,
    };
    let Detail::Sock {
        dst_ip,
        dst_port,
        protocol,
        ref dst_names,
    } = ev.event.detail
    else {
        return None;
    };
    let mut v = base(CLASS_NETWORK_ACTIVITY, 4, activity_id, activity, ev, ctx);
    v["actor"] = json!({"process": event_process(ev)});
    v["dst_endpoint"] = json!({"ip": dst_ip.to_string(), "port": dst_port});
    if let Some(name) = dst_names.first() {
        v["dst_endpoint"]["hostname"] = json!(name);
    }
    v["connection_info"] =
        json!({"protocol_name": protocol.to_string(), "direction_id": 2, "direction": "Outbound"});
    Some(v)
}

/// HTTP Activity (4002) for a request sent over TLS, its activity named by the method.
/// The credential headers are named, never their values.
pub fn http_activity(ev: &AttributedEvent, ctx: &EncodeContext) -> Option<Value> {
    let Detail::Request {
        method,
        host,
        path,
        http_version,
        credential_headers,
        ..
    } = &ev.event.detail
    else {
        return None;
    };
    let (activity_id, activity) = match method.as_str() {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        _ => (99, "Other"),
    };
    let mut v = base(CLASS_HTTP_ACTIVITY, 4, activity_id, activity, ev, ctx);
    v["actor"] = json!({"process": event_process(ev)});
    let mut url = json!({"path": path});
    if let Some(h) = host {
        url["hostname"] = json!(h);
    }
    v["http_request"] = json!({"http_method": method, "url": url, "version": http_version});
    v["unmapped"]["agentid"]["credential_headers"] = json!(credential_headers);
    Some(v)
}

/// Event Log Activity (1008, activity Other: "Checkpoint") for a signed audit checkpoint;
/// the checkpoint itself is `unmapped.agentid.audit_checkpoint`, which `agentid audit
/// verify --anchors` reads back.
pub fn audit_checkpoint(cp: &Checkpoint, ctx: &EncodeContext) -> Value {
    let class_name = "Event Log Activity";
    json!({
        "class_uid": CLASS_EVENT_LOG_ACTIVITY,
        "class_name": class_name,
        "category_uid": 1,
        "category_name": "System Activity",
        "activity_id": 99,
        "activity_name": "Checkpoint",
        "type_uid": CLASS_EVENT_LOG_ACTIVITY * 100 + 99,
        "type_name": format!("{class_name}: Other"),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": 1,
        "status": "Success",
        "time": epoch_ms(checkpoint_time(cp)),
        "message": format!(
            "audit log signed through seq {} (checkpoint seq {}{})",
            cp.seq_to,
            cp.seq,
            if cp.is_final { ", closed" } else { "" }
        ),
        "log_name": "agentid audit",
        "log_provider": "agentid",
        "metadata": metadata(),
        "device": {"hostname": ctx.hostname, "type_id": 0},
        "unmapped": {"agentid": {"audit_checkpoint": cp}},
    })
}

/// The OCSF event for an activity record, whichever class fits.
pub fn activity(ev: &AttributedEvent, ctx: &EncodeContext) -> Option<Value> {
    process_activity(ev, ctx)
        .or_else(|| network_activity(ev, ctx))
        .or_else(|| http_activity(ev, ctx))
}

/// An alert connection's `dst_endpoint`, with the host name the agent resolved.
fn dst_endpoint(c: &crate::detect::ConnectionEvidence) -> Value {
    let mut v = json!({"ip": c.dst_ip.to_string(), "port": c.dst_port});
    if let Some(name) = c.dst_names.first() {
        v["hostname"] = json!(name);
    }
    v
}
