//! The audit writer: a thread that appends every attributed event and every
//! alert to the hash-chained audit log, checkpoints on a timer, and closes the log (final
//! signed checkpoint) on shutdown. The event path only enqueues. Every checkpoint is handed
//! to the [`AnchorPublisher`] as it is written (the SIEM sinks), final one included.
use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{AuditError, AuditLog, AuditOptions, Checkpoint, Counts, DiskPolicy};
use crate::{attribution::AttributedEvent, detect::Alert, health::WriteHealth, queue};

enum Record {
    Event(Box<AttributedEvent>),
    /// An event already in canonical JSON.
    EventText(Arc<str>),
    Alert(Box<Alert>),
    /// Another record type (`token-issued`, ...) with its body.
    Other(&'static str, serde_json::Value),
}

#[derive(Debug)]
pub struct AuditStats {
    pub appended: AtomicU64,
    /// Records refused because the writer fell behind (queue full) — visible in status.
    pub dropped: AtomicU64,
    /// Failed appends (each a lost record) and checkpoints.
    pub errors: AtomicU64,
    pub health: WriteHealth,
    /// Records the log holds on disk (after pruning): for bytes per record.
    pub held: AtomicU64,
    /// Records waiting for the audit thread (the backlog).
    pub queued: queue::Depth,
}

#[derive(Debug)]
pub struct AuditWriter {
    tx: Option<queue::Sender<Record>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<AuditStats>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Event(_) => "Record::Event",
            Self::EventText(_) => "Record::EventText",
            Self::Alert(_) => "Record::Alert",
            Self::Other(..) => "Record::Other",
        })
    }
}

const QUEUE: usize = 65_536;

/// How long the audit thread lets records gather after a busy spell before it looks again.
const LINGER: Duration = Duration::from_millis(2);

/// Where checkpoints go as they are made (never blocking the audit thread).
pub type AnchorPublisher = Box<dyn Fn(&Checkpoint) + Send>;

impl AuditWriter {
    /// Opens the forward-secure log in `dir` with the key file `key_path` and starts the
    /// thread; `anchors` receives every checkpoint as it is written.
    pub fn start(
        dir: &Path,
        key_path: &Path,
        opts: AuditOptions,
        disk: DiskPolicy,
        anchors: Option<AnchorPublisher>,
    ) -> anyhow::Result<Self> {
        let mut log = AuditLog::open_with_key_file(dir, key_path, opts).with_context(|| {
            format!(
                "audit log {} with key {}",
                dir.display(),
                key_path.display()
            )
        })?;
        // Compressing and pruning what an earlier run left: a failure costs disk, not
        // records, so it is reported and the log goes on.
        if let Err(e) = log.set_disk_policy(disk) {
            tracing::warn!(error = %e, "audit log compression or retention");
        }
        let publish = move |log: &mut AuditLog| {
            for cp in log.take_anchors() {
                if let Some(p) = &anchors {
                    p(&cp);
                }
            }
        };
        let publish: Box<dyn Fn(&mut AuditLog) + Send> = Box::new(publish);
        let (tx, rx) = queue::bounded::<Record>(QUEUE);
        let stats = Arc::new(AuditStats {
            appended: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            health: WriteHealth::new("audit log", dir),
            held: AtomicU64::new(0),
            queued: tx.depth(),
        });
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("agentid-audit".into())
            .spawn(move || run(&mut log, &rx, &thread_stats, &publish))
            .context("starting the audit thread")?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    fn send(&self, r: Record) {
        if let Some(tx) = &self.tx
            && tx.try_send(r).is_err()
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn event(&self, e: &AttributedEvent) {
        self.send(Record::Event(Box::new(e.clone())));
    }

    /// An event the caller already encoded with [`crate::audit::canonical`] (of
    /// `serde_json::to_value(event)`): the same record as [`Self::event`], without a second
    /// encoding or a copy of the event.
    pub fn event_text(&self, canonical: &Arc<str>) {
        self.send(Record::EventText(Arc::clone(canonical)));
    }

    pub fn alert(&self, a: &Alert) {
        self.send(Record::Alert(Box::new(a.clone())));
    }

    /// A record of another type (lowercase, digits, `-`, `_`).
    pub fn other(&self, ty: &'static str, body: serde_json::Value) {
        self.send(Record::Other(ty, body));
    }

    /// Drains the queue and writes the final signed checkpoint.
    pub fn close(mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The audit thread: takes what the queue holds, chains it into one batch, and writes
/// the batch with one `write` once the queue is empty (or the batch is full, or a
/// rotation or checkpoint is due). A record is on disk within one pass of this loop of
/// its arrival; until then it is in memory, as it was in the queue. A failed `write`
/// loses the records of its batch that did not reach the file (counted in `errors`, the
/// chain continuing from the last one that did): `audit verify` sees an intact chain.
fn run(
    log: &mut AuditLog,
    rx: &queue::Receiver<Record>,
    stats: &AuditStats,
    publish: &dyn Fn(&mut AuditLog),
) {
    // Whether the last look found records: then the next empty queue is met with a short
    // sleep instead of a wait on the queue, which every send would interrupt (a futex
    // wake per record for both threads).
    let mut busy = false;
    loop {
        let next = if let Some(r) = rx.try_recv() {
            Ok(r)
        } else {
            // The queue is empty: what was gathered goes to the file now.
            let flushed = log.flush();
            account(log, stats, flushed);
            if busy {
                busy = false;
                std::thread::sleep(LINGER);
                continue;
            }
            rx.recv_timeout(Duration::from_secs(1))
        };
        busy |= next.is_ok();
        let buffered = match next {
            Ok(Record::Event(e)) => serde_json::to_value(&*e)
                .map_err(Into::into)
                .and_then(|v| log.buffer_json("event", &v)),
            Ok(Record::EventText(t)) => log.buffer_event_text(&t),
            Ok(Record::Alert(a)) => log.buffer_alert(&a),
            Ok(Record::Other(ty, body)) => log.buffer_json(ty, &body),
            Err(queue::RecvTimeoutError::Timeout) => Ok(0),
            Err(queue::RecvTimeoutError::Disconnected) => break,
        };
        if let Err(e) = buffered {
            // Not encodable: this record only.
            stats.errors.fetch_add(1, Ordering::Relaxed);
            stats.health.failed(&e, 1);
        }
        if log.needs_flush() {
            let flushed = log.flush();
            account(log, stats, flushed);
        }
        // Writes what is buffered first, when a checkpoint is due. While appends fail, so
        // do checkpoints, for the same reason: reported once, by `health`.
        let checkpoint = log.maybe_checkpoint(Instant::now()).map(|_| ());
        account(log, stats, checkpoint);
        publish(log);
        stats.held.store(
            log.next_seq().saturating_sub(log.first_seq()),
            Ordering::Relaxed,
        );
    }
    let finished = log.finish();
    if let Err(e) = &finished {
        tracing::error!(error = %e, "closing the audit log");
    }
    account(log, stats, finished);
    publish(log);
}

/// Counts what a write did: records written, records lost (and why).
fn account(log: &mut AuditLog, stats: &AuditStats, result: Result<(), AuditError>) {
    let Counts { written, lost } = log.take_counts();
    if written > 0 {
        stats.appended.fetch_add(written, Ordering::Relaxed);
        stats.health.succeeded();
    }
    if let Err(e) = result {
        // Each lost record is an error, and so is a failed checkpoint or rotation.
        stats.errors.fetch_add(lost.max(1), Ordering::Relaxed);
        stats.health.failed(&e, lost);
    }
}
