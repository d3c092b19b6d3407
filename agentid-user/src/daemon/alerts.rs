//! Where detection output goes: the alerts file, the store, followers; revocations.
use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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

pub(crate) fn epoch_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub(crate) fn record_detection(shared: &Shared, writer: &Writer, out: Output) {
    for c in out.credentials {
        writer.send(StoreOp::Credential {
            fingerprint: c.fingerprint,
            agent: c.agent.to_string(),
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
pub(crate) fn check_drops(shared: &Shared, writer: &Writer, drops: &KindCounts) {
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

/// How often an incident's updates (count, last seen) are re-published. The store always
/// has the current state; the alerts file, the audit log, sinks and followers get the first
/// sighting at once and then at most one update per incident per interval, so a condition
/// that repeats every second updates a count instead of flooding the SIEM.
pub(crate) const UPDATE_EVERY: Duration = Duration::from_secs(30);

/// An alert, new or updated: the store at once, the outputs as [`UPDATE_EVERY`] allows.
pub(crate) fn emit_alert(shared: &Shared, writer: &Writer, alert: &Alert) {
    let json = match serde_json::to_string(alert) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "unserialisable alert");
            return;
        }
    };
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
    let now = Instant::now();
    let publish_now = {
        let Ok(mut updates) = shared.alert_updates.lock() else {
            return;
        };
        match updates.get_mut(&alert.uid) {
            Some((last, pending)) if now.duration_since(*last) < UPDATE_EVERY => {
                *pending = Some(alert.clone());
                false
            }
            Some((last, pending)) => {
                *last = now;
                *pending = None;
                true
            }
            None => {
                updates.insert(alert.uid.clone(), (now, None));
                true
            }
        }
    };
    if publish_now {
        publish(shared, alert, json);
    }
}

/// Publishes held-back updates that are due (all of them when `all`, at shutdown).
pub(crate) fn flush_updates(shared: &Shared, all: bool) {
    let now = Instant::now();
    let due: Vec<Alert> = {
        let Ok(mut updates) = shared.alert_updates.lock() else {
            return;
        };
        updates
            .values_mut()
            .filter(|(last, pending)| {
                pending.is_some() && (all || now.duration_since(*last) >= UPDATE_EVERY)
            })
            .filter_map(|(last, pending)| {
                *last = now;
                pending.take()
            })
            .collect()
    };
    for alert in due {
        if let Ok(json) = serde_json::to_string(&alert) {
            publish(shared, &alert, json);
        }
    }
}

/// The alerts file, the audit log, the sinks and the followers.
fn publish(shared: &Shared, alert: &Alert, json: String) {
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
            agent: Some(a.id.to_string()),
            kind: alert.rule.to_owned(),
            json: json.clone(),
        });
    }
}

pub(crate) fn open_alerts_file(path: &Path) -> anyhow::Result<std::fs::File> {
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
pub(crate) fn load_revoked(state_dir: &Path) -> Vec<FingerprintPrefix> {
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
