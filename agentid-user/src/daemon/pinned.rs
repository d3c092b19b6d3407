//! What a start makes of the window since the previous run, given how the probes came to
//! be attached: a killed daemon's pinned probes kept recording (nothing lost unless their
//! drop counters grew), unpinned ones saw nothing.
use std::time::SystemTime;

use crate::{
    daemon::{alerts, heartbeat},
    detect::rules::DownLoss,
    sensor::Origin,
    state::Shared,
};

/// What the window cost: `None` when nothing was lost (no alert).
pub(crate) fn down_loss(origin: Origin, previous_drops: u64, drops_now: u64) -> Option<DownLoss> {
    match origin {
        Origin::Resumed => {
            let lost = drops_now.saturating_sub(previous_drops);
            (lost > 0).then_some(DownLoss::Lost(lost))
        }
        Origin::Pinned | Origin::Unpinned => Some(DownLoss::Unwatched),
    }
}

/// Called once at start, after the outputs and before the API: sets the drop baseline (a
/// resumed set carries its counters) and, after an unclean stop, raises `telemetry-gap`
/// for the window unless the pinned probes covered it whole.
pub(crate) fn report_start(
    shared: &Shared,
    origin: Origin,
    drops_now: u64,
    unclean: Option<&heartbeat::UncleanStop>,
) {
    if let Ok(mut d) = shared.detector.lock() {
        d.drops_baseline(drops_now);
    }
    let Some(gap) = unclean else {
        return;
    };
    let Some(loss) = down_loss(origin, gap.drops, drops_now) else {
        tracing::info!(
            previous_pid = gap.pid,
            "previous run stopped uncleanly; its pinned probes kept recording and nothing \
             was lost: what happened meanwhile is read from the ring buffer"
        );
        return;
    };
    let now = SystemTime::now();
    let unseen = shared
        .pipeline
        .lock()
        .ok()
        .map(|p| heartbeat::started_in(&p.table, gap.last_alive, now))
        .unwrap_or_default();
    let alert = shared
        .detector
        .lock()
        .ok()
        .map(|mut d| d.daemon_down(gap.pid, gap.last_alive, now, loss, unseen));
    if let Some(alert) = alert {
        tracing::warn!(
            previous_pid = gap.pid,
            "previous run stopped uncleanly: {}",
            alert.description
        );
        alerts::emit_alert(shared, &alert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_resumed_set_whose_counters_did_not_grow_covers_the_window() {
        assert_eq!(down_loss(Origin::Resumed, 5, 5), None);
        assert_eq!(down_loss(Origin::Resumed, 5, 9), Some(DownLoss::Lost(4)));
        // Counters reset (a new set after a reboot) never read as a negative loss.
        assert_eq!(down_loss(Origin::Resumed, 9, 0), None);
        assert_eq!(down_loss(Origin::Pinned, 0, 0), Some(DownLoss::Unwatched));
        assert_eq!(down_loss(Origin::Unpinned, 0, 0), Some(DownLoss::Unwatched));
    }
}
