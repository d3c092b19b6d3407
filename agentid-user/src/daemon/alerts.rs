//! Where detection output goes: the alerts file, the store, followers; revocations.
use std::{
    io::Write as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use super::state::{Live, Shared};
use crate::{
    credentials::FingerprintPrefix,
    detect::{Alert, Output},
    event::EventKind,
    sensor::KindCounts,
    store::{StoreOp, Writer},
};

pub fn epoch_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn record_detection(shared: &Shared, writer: &Writer, out: Output) {
    for c in out.credentials {
        writer.send(StoreOp::Credential {
            fingerprint: c.fingerprint,
            agent: c.agent,
            kind: c.kind,
            ts_ns: epoch_ns(c.time),
            source: c.source,
        });
    }
    for alert in &out.alerts {
        emit_alert(shared, writer, alert);
    }
}

/// Raises `telemetry-gap` when the kernel's drop counters grew.
pub fn check_drops(shared: &Shared, writer: &Writer, drops: &KindCounts) {
    let total: u64 = drops.iter().sum();
    if total == 0 {
        return;
    }
    let by_kind: Vec<(&str, u64)> = EventKind::ALL
        .iter()
        .map(|k| (k.as_str(), drops[k.abi() as usize]))
        .collect();
    let alert = shared
        .detector
        .lock()
        .ok()
        .and_then(|mut d| d.telemetry_gap(total, &by_kind, SystemTime::now()));
    if let Some(alert) = alert {
        emit_alert(shared, writer, &alert);
    }
}

/// An alert (new or updated) goes to the alerts file, the store and followers.
pub fn emit_alert(shared: &Shared, writer: &Writer, alert: &Alert) {
    let json = match serde_json::to_string(alert) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "unserialisable alert");
            return;
        }
    };
    shared
        .counters
        .alerts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(rule = alert.rule, uid = %alert.uid, count = alert.count, "{}", alert.title);
    if let Ok(mut file) = shared.alerts_file.lock()
        && let Some(f) = file.as_mut()
        && let Err(e) = writeln!(f, "{json}")
    {
        tracing::error!(error = %e, "writing the alerts file");
    }
    let agents: Vec<&str> = alert.agents.iter().map(|a| a.id.as_str()).collect();
    writer.send(StoreOp::Alert {
        uid: alert.uid.clone(),
        rule: alert.rule.to_owned(),
        severity: alert.severity.as_str().to_owned(),
        first_ns: epoch_ns(alert.first_seen),
        last_ns: epoch_ns(alert.last_seen),
        count: alert.count,
        agents: agents.join(" "),
        body: json.clone(),
    });
    if let Ok(audit) = shared.audit.lock()
        && let Some(audit) = audit.as_ref()
    {
        audit.alert(alert);
    }
    if let Ok(sinks) = shared.sinks.lock()
        && let Some(s) = sinks.as_ref()
    {
        s.submit_alert(alert);
    }
    // One live item per involved agent, so `alerts -f --agent X` sees it.
    let json: std::sync::Arc<str> = json.into();
    if alert.agents.is_empty() {
        let _ = shared.alerts.send(Live {
            agent: None,
            kind: alert.rule.to_owned(),
            json,
        });
        return;
    }
    for a in &alert.agents {
        let _ = shared.alerts.send(Live {
            agent: Some(a.id.clone()),
            kind: alert.rule.to_owned(),
            json: json.clone(),
        });
    }
}

pub fn open_alerts_file(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the alerts file {}", path.display()))
}

/// Revoked fingerprint prefixes, one per line in `STATE/revoked`.
pub fn load_revoked(state_dir: &Path) -> Vec<FingerprintPrefix> {
    std::fs::read_to_string(state_dir.join("revoked"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Persists a revocation and applies it.
pub fn revoke(shared: &Shared, prefix: &str) -> Result<(), String> {
    let parsed: FingerprintPrefix = prefix.parse().map_err(|e| format!("{prefix:?}: {e}"))?;
    let state_dir = shared
        .config
        .read()
        .map_err(|_| "config lock poisoned".to_owned())?
        .state_dir
        .clone();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("revoked"))
        .map_err(|e| format!("recording the revocation: {e}"))?;
    writeln!(f, "{prefix}").map_err(|e| format!("recording the revocation: {e}"))?;
    shared
        .detector
        .lock()
        .map_err(|_| "detector lock poisoned".to_owned())?
        .revoke(parsed);
    Ok(())
}
