//! The sink manager: starts every configured sink (spool, spooler, delivery task), hands
//! each the inputs its filter wants without ever blocking the caller, reports counters, and
//! shuts them down with a grace period.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc};

use super::{
    DropNotice, DropReason, OutputContext, OutputError, SinkConfig, SinkStats,
    config::SinkCommon,
    delivery::{Counters, DeliveryLoop, Spooler, report_drop},
    encode::{self, EncodeContext},
    encoder::{Encoder, syslog_encoder},
    sink,
    spool::Spool,
};
use crate::{
    attribution::AttributedEvent,
    audit::{AnchorPublisher, Checkpoint},
    detect::Alert,
};

/// What the daemon hands over; shared between sinks without copying.
#[derive(Debug, Clone)]
pub(super) enum Input {
    Alert(Arc<Alert>),
    Activity(Arc<AttributedEvent>),
    Checkpoint(Arc<Checkpoint>),
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
            // Anchors go to every sink, whatever its filters: each is one more place the
            // chain's progress is known off the host.
            Input::Checkpoint(_) => true,
        }
    }
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
        let (encoder, delivery) = spawn_transport(c, d, ctx)?;
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

    /// A publisher of audit checkpoints to every sink, for the audit thread. It holds the
    /// sinks' queues open: drop it (close the audit writer) before [`SinkManager::shutdown`],
    /// so the final checkpoint is delivered too.
    pub fn anchor_publisher(&self) -> AnchorPublisher {
        let sinks: Vec<(String, mpsc::Sender<Input>, Arc<Counters>)> = self
            .sinks
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.tx.clone()?, Arc::clone(&s.counters))))
            .collect();
        let notices = self.notices.clone();
        Box::new(move |cp: &Checkpoint| {
            let input = Input::Checkpoint(Arc::new(cp.clone()));
            for (name, tx, counters) in &sinks {
                if tx.try_send(input.clone()).is_err() {
                    let uid = encode::checkpoint_uid(cp);
                    report_drop(name, counters, &notices, &uid, DropReason::QueueFull);
                }
            }
        })
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
        self.monitor().stats()
    }

    /// A handle on the sinks' counters, for reading them without the manager.
    pub fn monitor(&self) -> SinkMonitor {
        SinkMonitor {
            sinks: self
                .sinks
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.kind,
                        Arc::clone(&s.counters),
                        Arc::clone(&s.spool),
                    )
                })
                .collect(),
        }
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

/// The sink's encoder, and its delivery task (spawned) with the transport it configures.
fn spawn_transport(
    c: &SinkConfig,
    d: DeliveryLoop,
    ctx: &OutputContext,
) -> Result<(Encoder, tokio::task::JoinHandle<()>), OutputError> {
    let enc = |ai: bool| EncodeContext {
        hostname: ctx.hostname.clone(),
        ocsf_ai_agent: ai,
    };
    Ok(match c {
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
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(k) => (
            Encoder::Json(k.format, enc(k.ocsf_ai_agent)),
            tokio::spawn(d.run(sink::kafka::KafkaSink::new(k)?)),
        ),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => {
            return Err(OutputError::Config(
                "a kafka sink needs agentid built with the `kafka` cargo feature \
                 (cargo build --release --features kafka)"
                    .into(),
            ));
        }
    })
}

/// The sinks' counters, shared with their tasks.
#[derive(Debug, Clone, Default)]
pub struct SinkMonitor {
    sinks: Vec<(String, &'static str, Arc<Counters>, Arc<Spool>)>,
}

impl SinkMonitor {
    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks
            .iter()
            .map(|(name, kind, c, spool)| SinkStats {
                name: name.clone(),
                kind: (*kind).to_owned(),
                delivered: c.delivered.load(Ordering::Relaxed),
                retried: c.retried.load(Ordering::Relaxed),
                spooled: c.spooled.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
                dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
                pending_bytes: spool.pending_bytes(),
                last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect()
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
