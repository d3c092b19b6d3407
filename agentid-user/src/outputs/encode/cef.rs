//! `ArcSight` CEF: `CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//!
//! Escaping follows the CEF specification: in header fields `\` and `|`; in extension
//! values `\` and `=`, with CR and LF written as the two-character sequences `\r` and `\n`.
//! Header fields cannot carry line breaks at all, so there they become spaces: a raw
//! newline would split the line in every CEF receiver.
use std::fmt::Write as _;

use super::{PRODUCT_VERSION, epoch_ms};
use crate::{
    attribution::AttributedEvent,
    audit::Checkpoint,
    detect::{Alert, Severity},
    event::{Detail, EventKind},
};

/// CEF severity 0–10.
pub fn severity(s: Severity) -> u8 {
    match s {
        Severity::Info => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

/// Escapes a header field.
pub fn escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an extension value.
pub fn escape_ext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Builds the extension: `k=v` pairs separated by single spaces.
#[derive(Debug, Default)]
struct Ext {
    out: String,
    custom: u8,
}

impl Ext {
    fn kv(&mut self, k: &str, v: &str) {
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        let _ = write!(self.out, "{k}={}", escape_ext(v));
    }

    /// The next free `csN` string slot with its label (CEF defines cs1..cs6).
    fn custom(&mut self, label: &str, v: &str) {
        if self.custom >= 6 {
            return;
        }
        self.custom += 1;
        let n = self.custom;
        self.kv(&format!("cs{n}Label"), label);
        self.kv(&format!("cs{n}"), v);
    }
}

fn line(signature: &str, name: &str, sev: u8, ext: &Ext) -> String {
    format!(
        "CEF:0|agentid|agentid|{}|{}|{}|{sev}|{}",
        escape_header(PRODUCT_VERSION),
        escape_header(signature),
        escape_header(name),
        ext.out
    )
}

fn join<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(",")
}

/// The CEF line for an incident.
pub fn alert(alert: &Alert) -> String {
    let mut ext = Ext::default();
    ext.kv("rt", &epoch_ms(alert.last_seen).to_string());
    ext.kv("start", &epoch_ms(alert.first_seen).to_string());
    ext.kv("end", &epoch_ms(alert.last_seen).to_string());
    ext.kv("cnt", &alert.count.to_string());
    ext.kv("externalId", &alert.uid);
    ext.kv("msg", &alert.description);
    let t = &alert.tags;
    ext.kv(
        "cat",
        &join(
            t.owasp
                .iter()
                .chain(t.threats)
                .chain(t.maestro)
                .chain(t.nist)
                .copied(),
        ),
    );
    if let Some(p) = alert.evidence.processes.first() {
        ext.kv("spid", &p.pid.to_string());
        ext.kv("suid", &p.uid.to_string());
        if let Some(exe) = &p.exe {
            ext.kv("sproc", exe);
        }
    }
    if let Some(c) = alert.evidence.connections.first() {
        // `dst` is IPv4-only in CEF; IPv6 goes to the c6a3 custom address field.
        if c.dst_ip.is_ipv4() {
            ext.kv("dst", &c.dst_ip.to_string());
        } else {
            ext.kv("c6a3Label", "destinationIPv6");
            ext.kv("c6a3", &c.dst_ip.to_string());
        }
        ext.kv("dpt", &c.dst_port.to_string());
        ext.kv("proto", &c.protocol);
        if let Some(name) = c.dst_names.first() {
            ext.kv("dhost", name);
        }
    }
    ext.custom("agentId", &join(alert.agents.iter().map(|a| a.id.as_str())));
    ext.custom(
        "agentName",
        &join(alert.agents.iter().filter_map(|a| a.name.as_deref())),
    );
    ext.custom(
        "session",
        &join(alert.agents.iter().filter_map(|a| a.session.as_deref())),
    );
    if let Some(c) = &alert.evidence.credential {
        ext.custom("credentialFingerprint", &c.fingerprint);
    }
    let acting_for: Vec<&str> = alert
        .evidence
        .processes
        .iter()
        .flat_map(|p| p.acting_for.iter().map(String::as_str))
        .collect();
    if !acting_for.is_empty() {
        ext.custom("actingFor", &acting_for.join(","));
    }
    if let Some(reason) = alert.reason {
        ext.custom("reason", reason);
    }
    line(alert.rule, &alert.title, severity(alert.severity), &ext)
}

/// The CEF line for a signed audit checkpoint: seq and seq-to in `cn1`/`cn2`, head,
/// signature, keys, time and final flag in `cs1`..`cs6` (what `verify --anchors` reads).
pub fn audit_checkpoint(cp: &Checkpoint) -> String {
    let mut ext = Ext::default();
    ext.kv("rt", &epoch_ms(super::checkpoint_time(cp)).to_string());
    ext.kv("cn1Label", "seq");
    ext.kv("cn1", &cp.seq.to_string());
    ext.kv("cn2Label", "seqTo");
    ext.kv("cn2", &cp.seq_to.to_string());
    ext.custom("head", &cp.head);
    ext.custom("signature", &cp.signature);
    ext.custom("publicKey", &cp.public_key);
    ext.custom("nextPublicKey", cp.next_public_key.as_deref().unwrap_or(""));
    ext.custom("time", &cp.time);
    ext.custom("final", if cp.is_final { "true" } else { "false" });
    line("audit-checkpoint", "Audit log checkpoint", 1, &ext)
}

/// The CEF line for an activity event; `None` for fork.
pub fn activity(ev: &AttributedEvent) -> Option<String> {
    let e = &ev.event;
    let (sig, name) = match e.kind {
        EventKind::Exec => ("process-launch", "Process launched"),
        EventKind::Exit => ("process-terminate", "Process terminated"),
        EventKind::Connect => ("network-open", "Connection opened"),
        EventKind::Send => ("network-traffic", "Datagram sent"),
        EventKind::Request => ("http-request", "HTTP request sent"),
        // File opens and raw-socket creations stay in the store and audit log (a
        // registered agent's raw socket is an alert); SIEM activity streams carry
        // process and network activity only.
        EventKind::Fork | EventKind::Open | EventKind::Socket => return None,
    };
    let mut ext = Ext::default();
    ext.kv("rt", &epoch_ms(e.time).to_string());
    ext.kv("spid", &e.pid.to_string());
    ext.kv("suid", &e.uid.to_string());
    match &e.detail {
        Detail::Exec { filename, argv, .. } => {
            ext.kv("sproc", filename);
            ext.kv("msg", &argv.join(" "));
        }
        Detail::Sock {
            dst_ip,
            dst_port,
            protocol,
            dst_names,
        } => {
            if let Some(name) = dst_names.first() {
                ext.kv("dhost", name);
            }
            if dst_ip.is_ipv4() {
                ext.kv("dst", &dst_ip.to_string());
            } else {
                ext.kv("c6a3Label", "destinationIPv6");
                ext.kv("c6a3", &dst_ip.to_string());
            }
            ext.kv("dpt", &dst_port.to_string());
            ext.kv("proto", &protocol.to_string());
        }
        Detail::Request {
            method, host, path, ..
        } => {
            ext.kv("requestMethod", method);
            if let Some(h) = host {
                ext.kv("dhost", h);
            }
            ext.kv("request", path);
        }
        _ => {}
    }
    let agent = ev.agent.as_ref().map_or("unregistered", |a| a.id.as_str());
    ext.custom("agentId", agent);
    if let Some(s) = &ev.session {
        ext.custom("session", s);
    }
    if !ev.acting_for.is_empty() {
        ext.custom("actingFor", &ev.acting_for.join(","));
    }
    Some(line(sig, name, 1, &ext))
}
