//! Processes that started before the probes attached (seeded from `/proc`): their command
//! lines and environments are scanned as if their execs had been seen, so two agents
//! already running with the same key are caught at start-up too.
use std::sync::Arc;

use super::alerts;
use crate::state::Shared;

/// Scans every seeded process once (secrets out first: the environment is cleared by the
/// scan and never leaves this function) and records what the rules make of it. The
/// events themselves are not recorded: the processes were not exec'd now.
pub(super) fn scan(shared: &Shared) {
    let Ok(mut pipeline) = shared.pipeline.lock() else {
        return;
    };
    let Ok(mut detector) = shared.detector.lock() else {
        return;
    };
    let registry = Arc::clone(pipeline.registry());
    let mut scanned = 0usize;
    // One process at a time: at most one environment is held in memory.
    for pid in pipeline.table.seeded_pids() {
        let Some(mut event) = pipeline.table.seeded_exec(pid) else {
            continue;
        };
        let findings = pipeline.redactor_mut().scan(&mut event, &registry);
        let attributed = pipeline
            .attributor
            .attribute_current(&pipeline.table, event);
        let out = detector.observe(&attributed, &findings, &registry);
        alerts::record_detection(shared, &out);
        scanned += 1;
    }
    tracing::info!(
        processes = scanned,
        "seeded processes scanned for credentials"
    );
}
