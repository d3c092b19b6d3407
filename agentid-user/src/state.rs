//! State shared between the daemon's event loop and the API.
//!
//! The event loop owns the pipeline; API reads of processes and agents go through a
//! [`LiveView`]: an immutable snapshot of the process table and the registry. The event
//! loop only marks it stale after each batch ([`Shared::view_changed`], an atomic store);
//! the first API read after that copies the table under the pipeline lock (a clone of the
//! live processes, identities shared by `Arc`) and publishes the copy. Filtering, building
//! the response and serialising it happen on the copy, without the lock, so a reader never
//! holds up the event loop for longer than one copy, and the event loop does no work for
//! the API while nobody asks. Staleness: none for a single reader (it sees every batch
//! finished before its read); a reader concurrent with another's refresh may get the
//! previous snapshot, at most one batch behind.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::broadcast;

pub use crate::outputs::fanout::Live;

use crate::{
    attribution::ProcIdentity,
    audit::AuditStats,
    config::Config,
    credentials::Revocations,
    detect::{Detector, Severity},
    identity::Registry,
    outputs::{SinkMonitor, fanout::Fanout},
    pipeline::Pipeline,
    process::Process,
    sensor::KindCounts,
    store::{Store, Writer, WriterStats},
};

/// Per-kind counter arrays are indexed by the ABI kind number.
const K: usize = agentid_ebpf::kind::COUNT as usize;

#[derive(Debug, Default)]
pub struct Counters {
    pub received: [AtomicU64; K],
    pub drops: [AtomicU64; K],
    pub undecodable: AtomicU64,
    pub alerts: AtomicU64,
    /// Events attributed to a registered agent, per kind (one increment per such event).
    pub attributed: [AtomicU64; K],
    /// Alerts raised (new incidents and their updates) by rule and severity: alerts are
    /// rare, so a lock is no cost on the event path.
    pub alerts_by_rule: Mutex<BTreeMap<(&'static str, Severity), u64>>,
    /// Bytes in the ring buffer not read yet (sampled once a second), and its size (0
    /// while the kernel refuses to show the fill).
    pub ring_used_bytes: AtomicU64,
    pub ring_size_bytes: AtomicU64,
    /// The most unread bytes the ring held before a read (sampled with the above).
    pub ring_peak_bytes: AtomicU64,
}

impl Counters {
    pub fn set(&self, received: &KindCounts, drops: &KindCounts, undecodable: u64) {
        self.set_received(received);
        for (slot, v) in self.drops.iter().zip(drops) {
            slot.store(*v, Ordering::Relaxed);
        }
        self.undecodable.store(undecodable, Ordering::Relaxed);
    }

    /// After each batch too, so that `received` is never behind `attributed` (which
    /// counts as events are handled).
    pub fn set_received(&self, received: &KindCounts) {
        for (slot, v) in self.received.iter().zip(received) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    pub fn received(&self) -> [u64; K] {
        std::array::from_fn(|i| self.received[i].load(Ordering::Relaxed))
    }

    /// An event attributed to a registered agent.
    pub fn attributed(&self, kind: crate::event::EventKind) {
        if let Some(slot) = self.attributed.get(kind.abi() as usize) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An alert raised (new or updated), whether or not the outputs' throttle publishes it.
    pub fn alert_raised(&self, rule: &'static str, severity: Severity) {
        if let Ok(mut by) = self.alerts_by_rule.lock() {
            *by.entry((rule, severity)).or_default() += 1;
        }
    }
}

/// Per-second samples of the received counters, for events/s over the last 10 s.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, [u64; K])>>,
}

impl Rates {
    pub fn sample(&self, counts: [u64; K]) {
        if let Ok(mut s) = self.samples.lock() {
            s.push_back((Instant::now(), counts));
            while s.len() > 11 {
                s.pop_front();
            }
        }
    }

    /// Events/s per kind over the sampled window.
    pub fn per_second(&self) -> [f64; K] {
        let Ok(s) = self.samples.lock() else {
            return [0.0; K];
        };
        let (Some((t0, c0)), Some((t1, c1))) = (s.front(), s.back()) else {
            return [0.0; K];
        };
        let dt = t1.duration_since(*t0).as_secs_f64();
        if dt <= 0.0 {
            return [0.0; K];
        }
        #[expect(clippy::cast_precision_loss, reason = "rates are approximate")]
        std::array::from_fn(|i| c1[i].saturating_sub(c0[i]) as f64 / dt)
    }
}

/// A snapshot of the live process table and the registry, for the API.
#[derive(Debug, Default)]
pub struct LiveView {
    /// Live processes with their identity (`None`: not attributed yet), sorted by pid
    /// once published.
    pub processes: Vec<(Process, Option<Arc<ProcIdentity>>)>,
    pub registry: Arc<Registry>,
    pub live: usize,
    pub exited_kept: usize,
    /// Heap bytes of the process table and the per-process identity map (estimated).
    pub table_bytes: usize,
}

impl LiveView {
    /// Copies what the API shows out of the pipeline: each process once, identities by
    /// reference.
    pub fn of(pipeline: &Pipeline) -> Self {
        let processes = pipeline
            .table
            .live()
            .map(|p| (p.clone(), pipeline.attributor.identity_of(p)))
            .collect();
        Self {
            processes,
            registry: Arc::clone(pipeline.registry()),
            live: pipeline.table.live_count(),
            exited_kept: pipeline.table.exited_count(),
            table_bytes: pipeline.table.heap_bytes() + pipeline.attributor.heap_bytes(),
        }
    }
}

/// What `status` reports of the outputs, readable without the fan-out's lock.
#[derive(Debug, Clone)]
pub struct OutputStats {
    pub audit: Option<Arc<AuditStats>>,
    pub sinks: SinkMonitor,
}

#[derive(Debug)]
pub struct Shared {
    pub config: RwLock<Config>,
    pub started: Instant,
    /// The event loop's; the API reads [`Shared::view`] instead.
    pub pipeline: Mutex<Pipeline>,
    /// What the API shows of the pipeline (see the module doc).
    view: RwLock<Arc<LiveView>>,
    /// The pipeline changed since `view` was copied.
    view_stale: AtomicBool,
    pub detector: Mutex<Detector>,
    /// Persisted revocations (`STATE/revoked`), applied to the detector as they are added.
    pub revocations: Revocations,
    /// Where events and alerts go; taken out at shutdown to close the outputs.
    pub outputs: Mutex<Option<Fanout>>,
    /// Counters of the outputs that keep them, for `status` (set once they start).
    pub output_stats: OnceLock<OutputStats>,
    /// Read connection for API queries (the writer has its own).
    pub store: Mutex<Store>,
    pub writer_stats: Arc<WriterStats>,
    /// The store's writer, for a follower's history to include everything sent before it
    /// subscribed (see the API's `events`/`alerts`); set once the daemon has one.
    pub store_writer: OnceLock<Writer>,
    pub counters: Counters,
    pub rates: Rates,
    pub events: broadcast::Sender<Live>,
    pub alerts: broadcast::Sender<Live>,
    pub probes: Vec<&'static str>,
    /// The files the TLS request probes are attached to (or failed on), for `status`.
    pub tls_targets: RwLock<Vec<crate::sensor::TlsTarget>>,
    /// The agents the kernel enforces, as last applied.
    pub enforced: RwLock<Vec<crate::api::types::EnforcedAgent>>,
    /// The fleet link, with `[fleet]` (set once at start).
    pub fleet: OnceLock<crate::fleet::Fleet>,
    /// The Workload API issuer, when `[issuer]` is on (set once it serves).
    pub issuer: OnceLock<Arc<crate::issuer::Issuer>>,
}

impl Shared {
    /// State for a daemon (or a test harness) before its outputs are started: no alerts
    /// file, sinks or audit writer yet, counters at zero.
    pub fn new(
        config: Config,
        pipeline: Pipeline,
        detector: Detector,
        store: Store,
        writer_stats: Arc<WriterStats>,
        probes: Vec<&'static str>,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (alerts, _) = broadcast::channel(1024);
        let mut view = LiveView::of(&pipeline);
        view.processes.sort_by_key(|(p, _)| p.pid);
        Self {
            revocations: Revocations::new(&config.state_dir),
            config: RwLock::new(config),
            started: Instant::now(),
            view: RwLock::new(Arc::new(view)),
            view_stale: AtomicBool::new(false),
            pipeline: Mutex::new(pipeline),
            detector: Mutex::new(detector),
            outputs: Mutex::new(None),
            output_stats: OnceLock::new(),
            store: Mutex::new(store),
            writer_stats,
            store_writer: OnceLock::new(),
            counters: Counters::default(),
            rates: Rates::default(),
            events,
            alerts,
            probes,
            tls_targets: RwLock::new(Vec::new()),
            enforced: RwLock::new(Vec::new()),
            fleet: OnceLock::new(),
            issuer: OnceLock::new(),
        }
    }

    /// The pipeline changed: the next [`Shared::view`] copies it again.
    pub fn view_changed(&self) {
        self.view_stale.store(true, Ordering::Release);
    }

    /// The live processes and registry as of now (see the module doc): a fresh copy if the
    /// pipeline changed since the last one, else the last one.
    pub fn view(&self) -> Arc<LiveView> {
        if self.view_stale.swap(false, Ordering::AcqRel) {
            let copied = self.pipeline.lock().map(|p| LiveView::of(&p));
            if let Ok(mut view) = copied {
                view.processes.sort_by_key(|(p, _)| p.pid);
                let view = Arc::new(view);
                if let Ok(mut v) = self.view.write() {
                    *v = Arc::clone(&view);
                }
                return view;
            }
            tracing::error!("pipeline lock poisoned; serving the last snapshot");
        }
        self.view
            .read()
            .map_or_else(|_| Arc::new(LiveView::default()), |v| Arc::clone(&v))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        credentials::FingerprintKey,
        event::{Detail, Event, EventKind},
        store::Retention,
    };

    fn fork(child: u32, parent: u32) -> Event {
        Event {
            kind: EventKind::Fork,
            time: SystemTime::UNIX_EPOCH,
            ktime_ns: 100_000_000_000,
            proc_start_ns: Some(5_000_000_000),
            pid: child,
            ppid: Some(parent),
            tid: child,
            uid: 1000,
            gid: 1000,
            cgroup_id: 55,
            cgroup: None,
            comm: "bot".into(),
            blocked: false,
            detail: Detail::Fork {},
        }
    }

    /// The API's copy of the table changes only when the event loop says the table did,
    /// and then shows it at the next read; between changes every read shares one copy.
    #[test]
    fn the_view_is_copied_again_only_after_a_change() {
        let dir = std::env::temp_dir().join(format!("agentid-state-view-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("agentid.db")).unwrap();
        let writer = store
            .writer(Retention {
                max_age: std::time::Duration::from_hours(1),
                max_bytes: 1 << 30,
            })
            .unwrap();
        let pipeline = Pipeline::new(
            Arc::new(Registry::default()),
            dir.join("no-cgroups"),
            FingerprintKey::ephemeral().unwrap(),
        );
        let config = Config {
            state_dir: dir.clone(),
            ..Config::default()
        };
        let shared = Shared::new(
            config,
            pipeline,
            Detector::new(None),
            store,
            Arc::clone(&writer.stats),
            Vec::new(),
        );
        assert!(shared.view().processes.is_empty());
        // Pids above the kernel's pid_max: nothing real, the events alone make them.
        for child in [9_000_003, 9_000_002] {
            shared
                .pipeline
                .lock()
                .unwrap()
                .process(fork(child, 9_000_001));
        }
        assert!(
            shared.view().processes.is_empty(),
            "not marked changed: the last copy"
        );
        shared.view_changed();
        let view = shared.view();
        let pids: Vec<u32> = view.processes.iter().map(|(p, _)| p.pid).collect();
        assert_eq!(pids, [9_000_002, 9_000_003], "sorted by pid");
        assert_eq!(view.live, 2);
        assert!(
            Arc::ptr_eq(&view, &shared.view()),
            "unchanged: one shared copy"
        );
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
