//! `telemetry-gap`: the kernel dropped events (ring buffer full), or the daemon was not
//! running after an unclean stop (killed, crashed): the evidence has a hole. Driven by the
//! sensor's drop counters and the daemon's heartbeat, not by events.
use std::time::{Duration, SystemTime};

use super::Rule;
use crate::detect::{Alert, Evidence, Incidents, ProcessEvidence, incidents::AlertDraft};

// Not in the reference table: a hole in the evidence is a repudiation and
// observability problem.
rule!(
    TelemetryGap,
    TELEMETRY_GAP,
    "telemetry-gap",
    High,
    "The kernel dropped events (ring buffer full), or the daemon was down after an unclean stop: the evidence has a hole.",
    [],
    ["T8"],
    ["L5"],
    ["MEASURE 2.4"]
);

/// Processes named in a daemon-down alert's evidence at most.
const MAX_UNSEEN_EVIDENCE: usize = 64;

/// What a window without a daemon cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownLoss {
    /// Nothing recorded: the probes went with the daemon (not pinned).
    Unwatched,
    /// The pinned probes kept recording, but the ring buffer overflowed: this many
    /// kernel events were lost (their drop counters grew while no daemon read).
    Lost(u64),
}

/// Remembers how many drops were already alerted, so each growth is one update.
#[derive(Debug, Default)]
pub struct TelemetryGap {
    drops_alerted: u64,
}

impl TelemetryGap {
    /// Drops already accounted for (a resumed pinned set carries its counters).
    pub fn set_baseline(&mut self, total_drops: u64) {
        self.drops_alerted = total_drops;
    }

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

impl TelemetryGap {
    /// The window in which no daemon watched: from the last pulse of a run that stopped
    /// uncleanly to this start. `started_unseen`: processes found running whose start falls
    /// inside the window (their exec, environment and connections then were not seen).
    pub fn daemon_down(
        pid: u32,
        last_alive: SystemTime,
        now: SystemTime,
        loss: DownLoss,
        mut started_unseen: Vec<ProcessEvidence>,
        book: &mut Incidents,
    ) -> Alert {
        let started = started_unseen.len();
        // The evidence names the first of them; the count says how many there were.
        started_unseen.truncate(MAX_UNSEEN_EVIDENCE);
        let window = now.duration_since(last_alive).unwrap_or_default();
        let alive_ns = last_alive
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let from = humantime::format_rfc3339_millis(last_alive);
        let to = humantime::format_rfc3339_millis(now);
        let span = humantime::format_duration(Duration::from_secs(window.as_secs()));
        let (title, what) = match loss {
            DownLoss::Unwatched => (
                "agentid was not running: events were not seen",
                format!("nothing was watched from {from} to {to} ({span})"),
            ),
            DownLoss::Lost(n) => (
                "agentid was not running: kernel events were lost",
                format!(
                    "its pinned probes kept recording, but {n} kernel events were lost (ring \
                     buffer full) from {from} to {to} ({span})"
                ),
            ),
        };
        let mut draft = AlertDraft::new(
            &TELEMETRY_GAP,
            &["daemon", &alive_ns.to_string()],
            now,
            title.into(),
            format!(
                "the daemon (pid {pid}) stopped without a clean shutdown; {what}; {started} \
                 processes still running started in that window"
            ),
        );
        draft.evidence = Evidence {
            processes: started_unseen,
            ..Evidence::default()
        };
        book.raise(draft)
    }
}

impl Rule for TelemetryGap {}
