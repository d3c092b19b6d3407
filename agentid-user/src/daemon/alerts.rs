//! Detection output into the fan-out: alerts (new, updated, held back), credential
//! sightings, and the daemon's own alerts about lost telemetry.
use std::{sync::atomic::Ordering, time::SystemTime};

use crate::{
    detect::{Alert, Output},
    event::EventKind,
    outputs::fanout::Fanout,
    sensor::KindCounts,
    state::Shared,
};

/// Runs `f` on the fan-out, unless it is already closed (shutdown).
fn with_outputs<T>(shared: &Shared, f: impl FnOnce(&mut Fanout) -> T) -> Option<T> {
    let mut outputs = shared
        .outputs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    outputs.as_mut().map(f)
}

pub(crate) fn record_detection(shared: &Shared, out: &Output) {
    with_outputs(shared, |o| {
        for c in &out.credentials {
            o.credential(c);
        }
    });
    for alert in &out.alerts {
        emit_alert(shared, alert);
    }
}

/// Raises `telemetry-gap` when the kernel's drop counters grew.
pub(crate) fn check_drops(shared: &Shared, drops: &KindCounts) {
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
        emit_alert(shared, &alert);
    }
}

/// An alert, new or updated: the store at once, the other outputs as the fan-out's
/// throttle allows.
pub(crate) fn emit_alert(shared: &Shared, alert: &Alert) {
    shared.counters.alert_raised(alert.rule, alert.severity);
    if with_outputs(shared, |o| o.alert(alert)) == Some(true) {
        shared.counters.alerts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Publishes held-back updates that are due.
pub(crate) fn flush_updates(shared: &Shared) {
    if let Some(n) = with_outputs(shared, |o| o.flush_updates(false)) {
        shared.counters.alerts.fetch_add(n, Ordering::Relaxed);
    }
}
