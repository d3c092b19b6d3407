//! The delivery seam: per sink, a spooler thread (encode, append, fsync) feeding a
//! delivery task (read a batch from the spool, send, commit on acceptance, retry with
//! backoff, dead-letter what the receiver refuses for good).
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc};

use super::{
    DropNotice, DropReason,
    config::SinkCommon,
    encode::Item,
    encoder::Encoder,
    manager::Input,
    sink::{Deliver, DeliveryError, ItemOutcome},
    spool::{Record, Spool},
};

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) delivered: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) spooled: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
}

impl Counters {
    pub(super) fn set_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
    }
}

pub(super) fn report_drop(
    name: &str,
    counters: &Counters,
    notices: &mpsc::Sender<DropNotice>,
    uid: &str,
    reason: DropReason,
) {
    let total = counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::error!(sink = %name, uid, ?reason, dropped_total = total, "output record dropped");
    // A full notice channel coalesces: the next notice carries the running total.
    let _ = notices.try_send(DropNotice {
        sink: name.to_owned(),
        uid: uid.to_owned(),
        reason,
        dropped_total: total,
    });
}

/// Encodes queued items and appends them to the spool, one fsync per burst.
pub(super) struct Spooler {
    pub(super) name: String,
    pub(super) encoder: Encoder,
    pub(super) spool: Arc<Spool>,
    pub(super) counters: Arc<Counters>,
    pub(super) wake: Arc<Notify>,
    pub(super) notices: mpsc::Sender<DropNotice>,
}

impl Spooler {
    pub(super) fn run(self, mut rx: mpsc::Receiver<Input>) {
        while let Some(first) = rx.blocking_recv() {
            let mut inputs = vec![first];
            while inputs.len() < 512
                && let Ok(more) = rx.try_recv()
            {
                inputs.push(more);
            }
            let records: Vec<Record> = inputs
                .iter()
                .filter_map(|i| match i {
                    Input::Alert(a) => self.encoder.encode(Item::Alert(a)),
                    Input::Activity(e) => self.encoder.encode(Item::Activity(e)),
                    Input::Checkpoint(c) => self.encoder.encode(Item::Checkpoint(c)),
                })
                .collect();
            match self.spool.append(&records) {
                Ok(accepted) => {
                    for (r, ok) in records.iter().zip(accepted) {
                        if ok {
                            self.counters.spooled.fetch_add(1, Ordering::Relaxed);
                        } else {
                            report_drop(
                                &self.name,
                                &self.counters,
                                &self.notices,
                                &r.uid,
                                DropReason::SpoolFull,
                            );
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "spool append failed");
                    self.counters.set_error(Some(e.to_string()));
                    for r in &records {
                        report_drop(
                            &self.name,
                            &self.counters,
                            &self.notices,
                            &r.uid,
                            DropReason::SpoolError,
                        );
                    }
                }
            }
            self.wake.notify_one();
        }
    }
}

/// Reads batches from the spool, delivers them, commits after acceptance.
pub(super) struct DeliveryLoop {
    pub(super) name: String,
    pub(super) spool: Arc<Spool>,
    pub(super) counters: Arc<Counters>,
    pub(super) closing: Arc<AtomicBool>,
    pub(super) wake: Arc<Notify>,
    pub(super) common: SinkCommon,
}

/// Exponential backoff with ±25 % jitter, so many agents do not retry in lockstep.
fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = initial.saturating_mul(1u32 << attempt.min(16)).min(max);
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let jitter =
        0.75 + 0.5 * (f64::from(u32::try_from(r >> 32).unwrap_or(0)) / f64::from(u32::MAX));
    base.mul_f64(jitter)
}

impl DeliveryLoop {
    pub(super) async fn run<D: Deliver>(self, mut sink: D) {
        loop {
            let batch = match self.spool.read_batch(self.common.batch_max.max(1), 4 << 20) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "spool read failed");
                    self.counters.set_error(Some(e.to_string()));
                    tokio::time::sleep(self.common.retry_max()).await;
                    continue;
                }
            };
            let Some(end) = batch.end else {
                if self.closing.load(Ordering::Acquire) {
                    return;
                }
                // Wait for the spooler; the timeout covers a wake-up lost to a race.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            };
            for line in &batch.corrupt {
                self.dead_letter("?", line, "corrupt spool record");
            }
            self.deliver_all(&mut sink, batch.records).await;
            if let Err(e) = self.spool.commit(end) {
                tracing::error!(sink = %self.name, error = %e, "spool commit failed");
                self.counters.set_error(Some(e.to_string()));
            }
        }
    }

    fn dead_letter(&self, uid: &str, payload: &str, reason: &str) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(sink = %self.name, uid, reason, "dead-lettered");
        if let Err(e) = self.spool.dead_letter(&self.name, uid, payload, reason) {
            tracing::error!(sink = %self.name, error = %e, "dead-letter write failed");
        }
    }

    /// Delivers until every record is accepted or dead-lettered; retries forever.
    async fn deliver_all<D: Deliver>(&self, sink: &mut D, mut pending: Vec<Record>) {
        let mut attempt = 0u32;
        while !pending.is_empty() {
            match sink.deliver(&pending).await {
                Ok(outcomes) => {
                    let mut retry = Vec::new();
                    for (r, o) in pending.into_iter().zip(outcomes) {
                        match o {
                            ItemOutcome::Delivered => {
                                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            ItemOutcome::Reject(reason) => {
                                self.dead_letter(&r.uid, &r.payload, &reason);
                            }
                            ItemOutcome::Retry(reason) => {
                                self.counters.set_error(Some(reason));
                                retry.push(r);
                            }
                        }
                    }
                    pending = retry;
                    if pending.is_empty() {
                        self.counters.set_error(None);
                        return;
                    }
                }
                Err(DeliveryError::Rejected(reason)) if pending.len() > 1 => {
                    // Find the record(s) the receiver objects to: one at a time.
                    tracing::warn!(sink = %self.name, %reason, "batch rejected; retrying records one by one");
                    let mut retry = Vec::new();
                    for r in pending {
                        match sink.deliver(std::slice::from_ref(&r)).await {
                            Ok(o) if o.first() == Some(&ItemOutcome::Delivered) => {
                                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(o) => match o.into_iter().next() {
                                Some(ItemOutcome::Reject(reason)) => {
                                    self.dead_letter(&r.uid, &r.payload, &reason);
                                }
                                _ => retry.push(r),
                            },
                            Err(DeliveryError::Rejected(reason)) => {
                                self.dead_letter(&r.uid, &r.payload, &reason);
                            }
                            Err(DeliveryError::Transient(_)) => retry.push(r),
                        }
                    }
                    pending = retry;
                    if pending.is_empty() {
                        return;
                    }
                }
                Err(DeliveryError::Rejected(reason)) => {
                    for r in &pending {
                        self.dead_letter(&r.uid, &r.payload, &reason);
                    }
                    return;
                }
                Err(DeliveryError::Transient(reason)) => {
                    tracing::debug!(sink = %self.name, %reason, "delivery failed; will retry");
                    self.counters.set_error(Some(reason));
                }
            }
            self.counters
                .retried
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            tokio::time::sleep(backoff(
                attempt,
                self.common.retry_initial(),
                self.common.retry_max(),
            ))
            .await;
            attempt = attempt.saturating_add(1);
        }
    }
}
