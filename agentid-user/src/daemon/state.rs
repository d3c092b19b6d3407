//! State shared between the event pipeline and the API.
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::broadcast;

use crate::{
    config::Config,
    detect::Detector,
    pipeline::Pipeline,
    sensor::KindCounts,
    store::{Store, WriterStats},
};

/// Per-kind counter arrays are indexed by the ABI kind number.
const K: usize = agentid_ebpf::kind::COUNT as usize;

/// One live item (event or alert) for followers, pre-serialised once.
#[derive(Debug, Clone)]
pub struct Live {
    pub agent: Option<String>,
    /// Event kind, or alert rule.
    pub kind: String,
    pub json: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub received: [AtomicU64; K],
    pub drops: [AtomicU64; K],
    pub undecodable: AtomicU64,
    pub alerts: AtomicU64,
}

impl Counters {
    pub fn set(&self, received: &KindCounts, drops: &KindCounts, undecodable: u64) {
        for (slot, v) in self.received.iter().zip(received) {
            slot.store(*v, Ordering::Relaxed);
        }
        for (slot, v) in self.drops.iter().zip(drops) {
            slot.store(*v, Ordering::Relaxed);
        }
        self.undecodable.store(undecodable, Ordering::Relaxed);
    }

    pub fn received(&self) -> [u64; K] {
        std::array::from_fn(|i| self.received[i].load(Ordering::Relaxed))
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

#[derive(Debug)]
pub struct Shared {
    pub config: RwLock<Config>,
    pub started: Instant,
    pub pipeline: Mutex<Pipeline>,
    pub detector: Mutex<Detector>,
    /// Alerts as JSON lines: always written, the sink of last resort.
    pub alerts_file: Mutex<Option<std::fs::File>>,
    /// SIEM sinks; taken out for the graceful shutdown.
    pub sinks: Mutex<Option<crate::outputs::SinkManager>>,
    /// The tamper-evident audit trail; taken out to close it (final checkpoint).
    pub audit: Mutex<Option<super::audit::AuditWriter>>,
    /// Per incident: when it was last published, and a held-back newer state.
    pub alert_updates:
        Mutex<std::collections::HashMap<String, (Instant, Option<crate::detect::Alert>)>>,
    /// Read connection for API queries (the writer has its own).
    pub store: Mutex<Store>,
    pub writer_stats: Arc<WriterStats>,
    pub counters: Counters,
    pub rates: Rates,
    pub events: broadcast::Sender<Live>,
    pub alerts: broadcast::Sender<Live>,
    pub probes: Vec<&'static str>,
}
