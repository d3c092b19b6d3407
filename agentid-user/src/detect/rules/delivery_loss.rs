//! `delivery-loss`: a SIEM sink dropped records (spool full), so the SIEM's copy has a
//! hole. Driven by the sinks' loss notices, not by events.
use std::time::SystemTime;

use crate::detect::{Alert, Incidents, incidents::AlertDraft};

rule!(
    unit DeliveryLoss,
    DELIVERY_LOSS,
    "delivery-loss",
    High,
    "A SIEM sink dropped records (spool full): the SIEM's copy has a hole.",
    [],
    ["T8"],
    ["L5"],
    ["MEASURE 2.4"]
);

/// Raises (or updates) the sink's incident: one per sink, its count the notices seen.
pub fn delivery_loss(
    book: &mut Incidents,
    sink: &str,
    dropped_total: u64,
    reason: &str,
    now: SystemTime,
) -> Alert {
    book.raise(AlertDraft::new(
        &DELIVERY_LOSS,
        &[sink],
        now,
        format!("Sink {sink} dropped records"),
        format!("{dropped_total} records lost by sink {sink} ({reason}); they remain in the store"),
    ))
}
