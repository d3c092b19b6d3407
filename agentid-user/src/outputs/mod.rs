//! SIEM outputs: encodings ([`encode`]), an on-disk [`spool`] per sink, and transports
//! ([`sink`]), tied together by [`SinkManager`].
//!
//! Delivery is at-least-once. The daemon hands alerts (and, opt-in, activity events) to
//! [`SinkManager::submit_alert`] / [`SinkManager::submit_activity`], which never block:
//! each sink has a bounded queue feeding a spooler thread (encode, append, fsync) and a
//! delivery task (read from the spool, send, commit on acceptance). A slow or dead
//! receiver fills only that sink's spool; once full, new records for it are dropped,
//! counted, logged and reported as [`DropNotice`]s on the channel returned by
//! [`SinkManager::start`].
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{Notify, mpsc};

pub mod config;
pub mod encode;
pub mod sink;
pub mod spool;

pub use config::SinkConfig;

use self::{
    config::{JsonFormat, SinkCommon, SyslogConfig, SyslogFormat},
    encode::{EncodeContext, Item, cef, ecs, epoch_secs_f64, ocsf, syslog},
    sink::{Deliver, DeliveryError, ItemOutcome},
    spool::{Record, Spool},
};
use crate::{attribution::AttributedEvent, detect::Alert};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("sink configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

/// Why a record was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The sink's on-disk spool reached its bound (the receiver is down or slow).
    SpoolFull,
    /// The in-memory queue in front of the spool was full (disk slower than the input).
    QueueFull,
    /// Writing to the spool failed (disk error).
    SpoolError,
}

/// A lost record, reported so the daemon can raise an alert about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropNotice {
    pub sink: String,
    pub uid: String,
    pub reason: DropReason,
    /// Records this sink dropped so far, this one included.
    pub dropped_total: u64,
}

/// Per-sink counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    pub name: String,
    pub kind: &'static str,
    /// Accepted by the receiver.
    pub delivered: u64,
    /// Delivery attempts that failed transiently (counted per record).
    pub retried: u64,
    /// Appended to the spool.
    pub spooled: u64,
    /// Lost before reaching the spool (see [`DropNotice`]).
    pub dropped: u64,
    /// Rejected by the receiver for good, in `dead-letter.jsonl`.
    pub dead_lettered: u64,
    /// Bytes spooled and not yet accepted.
    pub pending_bytes: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    spooled: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn set_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
    }
}

/// What the daemon hands over; shared between sinks without copying.
#[derive(Debug, Clone)]
enum Input {
    Alert(Arc<Alert>),
    Activity(Arc<AttributedEvent>),
}

/// Turns an item into the record a sink spools.
#[derive(Debug, Clone)]
enum Encoder {
    Json(JsonFormat, EncodeContext),
    Syslog {
        format: SyslogFormat,
        facility: u8,
        app_name: String,
        hostname: String,
        procid: String,
        ctx: EncodeContext,
    },
    Hec {
        index: Option<String>,
        source: String,
        sourcetype: String,
        ctx: EncodeContext,
    },
    Ecs,
}

fn json_of(format: JsonFormat, item: Item<'_>, ctx: &EncodeContext) -> Option<serde_json::Value> {
    match (format, item) {
        (JsonFormat::Ocsf, Item::Alert(a)) => Some(ocsf::detection_finding(a, ctx)),
        (JsonFormat::Ocsf, Item::Activity(e)) => ocsf::activity(e, ctx),
        (JsonFormat::Ecs, Item::Alert(a)) => Some(ecs::alert(a)),
        (JsonFormat::Ecs, Item::Activity(e)) => ecs::activity(e),
        (JsonFormat::Native, Item::Alert(a)) => serde_json::to_value(a).ok(),
        (JsonFormat::Native, Item::Activity(e)) => serde_json::to_value(e).ok(),
    }
}

impl Encoder {
    fn encode(&self, item: Item<'_>) -> Option<Record> {
        let uid = match item {
            Item::Alert(a) => a.uid.clone(),
            Item::Activity(e) => encode::activity_uid(e),
        };
        let payload = match self {
            Self::Json(format, ctx) => json_of(*format, item, ctx)?.to_string(),
            Self::Ecs => json_of(JsonFormat::Ecs, item, &EncodeContext::default())?.to_string(),
            Self::Hec {
                index,
                source,
                sourcetype,
                ctx,
            } => {
                let time = match item {
                    Item::Alert(a) => a.last_seen,
                    Item::Activity(e) => e.event.time,
                };
                let mut env = serde_json::json!({
                    "time": epoch_secs_f64(time),
                    "host": ctx.hostname,
                    "source": source,
                    "sourcetype": sourcetype,
                    "event": json_of(JsonFormat::Ocsf, item, ctx)?,
                });
                if let Some(i) = index {
                    env["index"] = serde_json::json!(i);
                }
                env.to_string()
            }
            Self::Syslog {
                format,
                facility,
                app_name,
                hostname,
                procid,
                ctx,
            } => {
                let body = match format {
                    SyslogFormat::Ocsf => json_of(JsonFormat::Ocsf, item, ctx)?.to_string(),
                    SyslogFormat::Cef => match item {
                        Item::Alert(a) => cef::alert(a),
                        Item::Activity(e) => cef::activity(e)?,
                    },
                };
                let (severity, time, msgid, params): (u8, _, &str, Vec<(&str, &str)>) = match item {
                    Item::Alert(a) => (
                        syslog::severity(a.severity),
                        a.last_seen,
                        a.rule,
                        vec![
                            ("rule", a.rule),
                            ("uid", a.uid.as_str()),
                            ("severity", a.severity.as_str()),
                        ],
                    ),
                    Item::Activity(e) => (
                        6,
                        e.event.time,
                        e.event.kind.as_str(),
                        vec![("kind", e.event.kind.as_str())],
                    ),
                };
                let h = syslog::Header {
                    facility: *facility,
                    severity,
                    time,
                    hostname,
                    app_name,
                    procid,
                    msgid,
                };
                let mut params = params;
                if !params.iter().any(|(k, _)| *k == "uid") {
                    params.push(("uid", uid.as_str()));
                }
                syslog::message(&h, &params, &body)
            }
        };
        Some(Record { uid, payload })
    }
}

impl SinkCommon {
    fn wants(&self, input: &Input) -> bool {
        match input {
            Input::Alert(a) => {
                a.severity >= self.min_severity
                    && self
                        .rules
                        .as_ref()
                        .is_none_or(|r| r.iter().any(|x| x == a.rule))
            }
            Input::Activity(_) => self.include_activity,
        }
    }
}

/// Where spools live and what encoders need to know about this host.
#[derive(Debug, Clone)]
pub struct OutputContext {
    /// Each sink spools in `<spool_root>/<sink name>/`.
    pub spool_root: PathBuf,
    pub hostname: String,
}

/// Depth of each sink's in-memory queue in front of its spool.
const QUEUE: usize = 4096;
/// Notices buffered for the daemon; beyond it notices are coalesced (counters still count).
const NOTICES: usize = 1024;

#[derive(Debug)]
struct SinkHandle {
    name: String,
    kind: &'static str,
    common: SinkCommon,
    tx: Option<mpsc::Sender<Input>>,
    counters: Arc<Counters>,
    spool: Arc<Spool>,
    closing: Arc<AtomicBool>,
    wake: Arc<Notify>,
    spooler: Option<tokio::task::JoinHandle<()>>,
    delivery: Option<tokio::task::JoinHandle<()>>,
}

/// All configured sinks.
#[derive(Debug)]
pub struct SinkManager {
    sinks: Vec<SinkHandle>,
    notices: mpsc::Sender<DropNotice>,
}

impl SinkManager {
    /// Opens every sink's spool (re-delivering what a previous run left unacknowledged)
    /// and starts its tasks. Must be called within a tokio runtime. Returns the manager and
    /// the channel on which every lost record is reported.
    pub fn start(
        configs: &[SinkConfig],
        ctx: &OutputContext,
    ) -> Result<(Self, mpsc::Receiver<DropNotice>), OutputError> {
        let (ntx, nrx) = mpsc::channel(NOTICES);
        let mut sinks = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let name = c
                .common()
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{i}", c.kind()));
            if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
                return Err(OutputError::Config(format!(
                    "sink name {name:?} is not a directory name"
                )));
            }
            if sinks.iter().any(|s: &SinkHandle| s.name == name) {
                return Err(OutputError::Config(format!("two sinks named {name:?}")));
            }
            sinks.push(Self::start_one(c, name, ctx, &ntx)?);
        }
        Ok((
            Self {
                sinks,
                notices: ntx,
            },
            nrx,
        ))
    }

    fn start_one(
        c: &SinkConfig,
        name: String,
        ctx: &OutputContext,
        notices: &mpsc::Sender<DropNotice>,
    ) -> Result<SinkHandle, OutputError> {
        let common = c.common().clone();
        let enc = |ai: bool| EncodeContext {
            hostname: ctx.hostname.clone(),
            ocsf_ai_agent: ai,
        };
        let spool = Arc::new(Spool::open(
            &ctx.spool_root.join(&name),
            common.spool_max_bytes,
        )?);
        let counters = Arc::new(Counters::default());
        let closing = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let d = DeliveryLoop {
            name: name.clone(),
            spool: Arc::clone(&spool),
            counters: Arc::clone(&counters),
            closing: Arc::clone(&closing),
            wake: Arc::clone(&wake),
            common: common.clone(),
        };
        let (encoder, delivery) = match c {
            SinkConfig::File(f) => (
                Encoder::Json(f.format, enc(f.ocsf_ai_agent)),
                tokio::spawn(d.run(sink::file::FileSink::new(
                    f.path.clone(),
                    f.max_bytes,
                    f.keep,
                ))),
            ),
            SinkConfig::Stdout(f) => (
                Encoder::Json(f.format, enc(f.ocsf_ai_agent)),
                tokio::spawn(d.run(sink::file::StdoutSink)),
            ),
            SinkConfig::Syslog(s) => (
                syslog_encoder(s, ctx),
                tokio::spawn(d.run(sink::syslog::SyslogSink::new(s)?)),
            ),
            SinkConfig::SplunkHec(h) => (
                Encoder::Hec {
                    index: h.index.clone(),
                    source: h.source.clone(),
                    sourcetype: h.sourcetype.clone(),
                    ctx: enc(h.ocsf_ai_agent),
                },
                tokio::spawn(d.run(sink::http::HecSink::new(h)?)),
            ),
            SinkConfig::Elasticsearch(e) => (
                Encoder::Ecs,
                tokio::spawn(d.run(sink::http::EsSink::new(e)?)),
            ),
            SinkConfig::Webhook(w) => (
                Encoder::Json(w.format, enc(w.ocsf_ai_agent)),
                tokio::spawn(d.run(sink::http::WebhookSink::new(w)?)),
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let spooler = Spooler {
            name: name.clone(),
            encoder,
            spool: Arc::clone(&spool),
            counters: Arc::clone(&counters),
            wake: Arc::clone(&wake),
            notices: notices.clone(),
        };
        let spooler = tokio::task::spawn_blocking(move || spooler.run(rx));
        Ok(SinkHandle {
            name,
            kind: c.kind(),
            common,
            tx: Some(tx),
            counters,
            spool,
            closing,
            wake,
            spooler: Some(spooler),
            delivery: Some(delivery),
        })
    }

    /// Queues an alert for every sink that wants it. Never blocks.
    pub fn submit_alert(&self, alert: &Alert) {
        self.submit(&Input::Alert(Arc::new(alert.clone())), &alert.uid);
    }

    /// Queues an activity event for sinks with `include_activity`. Never blocks.
    pub fn submit_activity(&self, event: &AttributedEvent) {
        if self.sinks.iter().any(|s| s.common.include_activity) {
            let uid = encode::activity_uid(event);
            self.submit(&Input::Activity(Arc::new(event.clone())), &uid);
        }
    }

    fn submit(&self, input: &Input, uid: &str) {
        for s in &self.sinks {
            if !s.common.wants(input) {
                continue;
            }
            let Some(tx) = &s.tx else { continue };
            if tx.try_send(input.clone()).is_err() {
                report_drop(
                    &s.name,
                    &s.counters,
                    &self.notices,
                    uid,
                    DropReason::QueueFull,
                );
            }
        }
    }

    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks
            .iter()
            .map(|s| {
                let c = &s.counters;
                SinkStats {
                    name: s.name.clone(),
                    kind: s.kind,
                    delivered: c.delivered.load(Ordering::Relaxed),
                    retried: c.retried.load(Ordering::Relaxed),
                    spooled: c.spooled.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
                    pending_bytes: s.spool.pending_bytes(),
                    last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
                }
            })
            .collect()
    }

    /// Stops taking input, spools what is queued, and keeps delivering for up to `grace`;
    /// whatever is still unacknowledged then stays in the spools for the next start.
    pub async fn shutdown(mut self, grace: Duration) {
        for s in &mut self.sinks {
            s.tx = None;
        }
        for s in &mut self.sinks {
            if let Some(h) = s.spooler.take() {
                let _ = h.await;
            }
            s.closing.store(true, Ordering::Release);
            s.wake.notify_one();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for s in &mut self.sinks {
            if let Some(mut h) = s.delivery.take()
                && tokio::time::timeout_at(deadline, &mut h).await.is_err()
            {
                h.abort();
                tracing::warn!(sink = %s.name, "shutdown: undelivered records stay spooled");
            }
        }
    }
}

impl Drop for SinkManager {
    /// Without [`SinkManager::shutdown`]: delivery stops at once (like a kill); everything
    /// unacknowledged is delivered on the next start.
    fn drop(&mut self) {
        for s in &mut self.sinks {
            if let Some(h) = s.delivery.take() {
                h.abort();
            }
        }
    }
}

fn syslog_encoder(s: &SyslogConfig, ctx: &OutputContext) -> Encoder {
    Encoder::Syslog {
        format: s.format,
        facility: s.facility,
        app_name: s.app_name.clone(),
        hostname: s.hostname.clone().unwrap_or_else(|| ctx.hostname.clone()),
        procid: std::process::id().to_string(),
        ctx: EncodeContext {
            hostname: ctx.hostname.clone(),
            ocsf_ai_agent: s.ocsf_ai_agent,
        },
    }
}

fn report_drop(
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
struct Spooler {
    name: String,
    encoder: Encoder,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    notices: mpsc::Sender<DropNotice>,
}

impl Spooler {
    fn run(self, mut rx: mpsc::Receiver<Input>) {
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
struct DeliveryLoop {
    name: String,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    closing: Arc<AtomicBool>,
    wake: Arc<Notify>,
    common: SinkCommon,
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
    async fn run<D: Deliver>(self, mut sink: D) {
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
