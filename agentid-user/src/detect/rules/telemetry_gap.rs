//! `telemetry-gap`: the kernel dropped events (ring buffer full), so the evidence has a
//! hole. Driven by the sensor's drop counters, not by events.
use std::time::SystemTime;

use super::Rule;
use crate::detect::{Alert, Incidents, incidents::AlertDraft};

// Not in the reference table: a hole in the evidence is a repudiation and
// observability problem.
rule!(
    TelemetryGap,
    TELEMETRY_GAP,
    "telemetry-gap",
    High,
    "The kernel dropped events (ring buffer full): the evidence has a hole.",
    [],
    ["T8"],
    ["L5"],
    ["MEASURE 2.4"]
);

/// Remembers how many drops were already alerted, so each growth is one update.
#[derive(Debug, Default)]
pub struct TelemetryGap {
    drops_alerted: u64,
}

impl TelemetryGap {
    /// Raises (or updates) the incident when the drop counters grew since the last call.
    pub fn check(
        &mut self,
        total_drops: u64,
        by_kind: &[(&str, u64)],
        now: SystemTime,
        book: &mut Incidents,
    ) -> Option<Alert> {
        if total_drops <= self.drops_alerted {
            return None;
        }
        let new = total_drops - self.drops_alerted;
        self.drops_alerted = total_drops;
        let detail: Vec<String> = by_kind
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        Some(book.raise(AlertDraft::new(
            &TELEMETRY_GAP,
            &["kernel"],
            now,
            "Kernel events were dropped".into(),
            format!(
                "{new} kernel events were lost (ring buffer full); totals: {}",
                detail.join(", ")
            ),
        )))
    }
}

impl Rule for TelemetryGap {}
