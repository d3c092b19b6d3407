//! One scrape's values, read from the counters the daemon keeps anyway (the ones `agentid
//! status` shows), and their `OpenMetrics` encoding.
//!
//! Label values are bounded and never sensitive: event kinds, rule ids, severities, the
//! operator's sink names and types. No SPIFFE ID, session, fingerprint, path or error text
//! ever becomes a label: an agent's id in a label is a cardinality problem for Prometheus
//! and a disclosure to whoever can scrape.
use std::{collections::BTreeSet, sync::atomic::Ordering::Relaxed};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{event::EventKind, outputs::SinkStats, state::Shared};

/// Everything one scrape shows, read at once.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    start_time_s: f64,
    /// Per event kind: (kind, received, dropped by the kernel, attributed to an agent).
    events: Vec<(&'static str, u64, u64, u64)>,
    undecodable: u64,
    /// Bytes in the ring buffer not read yet, and its size; `None` when not readable.
    ring: Option<(u64, u64)>,
    population: Population,
    /// (rule, severity, alerts raised).
    alerts: Vec<(&'static str, &'static str, u64)>,
    sinks: Vec<SinkStats>,
    store: Output,
    store_bytes: u64,
    store_events: u64,
    /// `None` once the audit writer is closed (shutdown) or before it started.
    audit: Option<Output>,
    audit_bytes: u64,
    audit_records: u64,
    /// `None` without `[fleet]`.
    fleet: Option<Fleet>,
}

/// The fleet link as this host sees it.
#[derive(Debug, Default)]
struct Fleet {
    connected: bool,
    published: u64,
    spooled: u64,
    dropped: u64,
    pending_bytes: u64,
    /// Fleet incidents (cross-host rules) the fleet holds.
    alerts: u64,
}

impl Fleet {
    fn read(fleet: &crate::fleet::Fleet) -> Self {
        let v = fleet.view();
        Self {
            connected: v.connected,
            published: v.stats.published,
            spooled: v.stats.spooled,
            dropped: v.stats.dropped,
            pending_bytes: v.stats.pending_bytes,
            alerts: count(v.alerts.len()),
        }
    }
}

/// Processes, agents and sessions now.
#[derive(Debug, Default)]
struct Population {
    processes_live: u64,
    processes_exited_kept: u64,
    processes_unregistered: u64,
    agents_registered: u64,
    agents_live: u64,
    sessions_live: u64,
    registry_errors: u64,
}

/// The counters the store and the audit log both keep.
#[derive(Debug, Default)]
struct Output {
    written: u64,
    dropped: u64,
    errors: u64,
    lost: u64,
    queued: u64,
    degraded: bool,
}

impl Snapshot {
    /// Reads the shared state. Blocking: the store's size comes from its read connection.
    pub(crate) fn read(shared: &Shared) -> Self {
        let c = &shared.counters;
        let received = c.received();
        let events = EventKind::ALL
            .iter()
            .map(|k| {
                let i = k.abi() as usize;
                (
                    k.as_str(),
                    received[i],
                    c.drops[i].load(Relaxed),
                    c.attributed[i].load(Relaxed),
                )
            })
            .collect();
        let ring_size = c.ring_size_bytes.load(Relaxed);
        let ring = (ring_size > 0).then(|| (c.ring_used_bytes.load(Relaxed), ring_size));
        let view = shared.view();
        let mut agents_live = BTreeSet::new();
        let mut sessions_live = BTreeSet::new();
        let mut unregistered = 0u64;
        for (_, id) in &view.processes {
            match id.as_deref().and_then(|i| i.agent_id().map(|a| (a, i))) {
                Some((agent, id)) => {
                    agents_live.insert(agent);
                    if let Some(s) = &id.session {
                        sessions_live.insert(s.as_str());
                    }
                }
                None => unregistered += 1,
            }
        }
        let alerts = c
            .alerts_by_rule
            .lock()
            .map(|by| {
                by.iter()
                    .map(|((rule, severity), n)| (*rule, severity.as_str(), *n))
                    .collect()
            })
            .unwrap_or_default();
        let (store_bytes, store_events) = shared
            .store
            .lock()
            .map(|s| (s.size_bytes().unwrap_or(0), s.events_held().unwrap_or(0)))
            .unwrap_or_default();
        let w = &shared.writer_stats;
        let outputs = shared.output_stats.get();
        let audit_stats = outputs.and_then(|o| o.audit.as_ref());
        let audit_dir = shared.config.read().map(|c| c.state_dir.join("audit")).ok();
        Self {
            start_time_s: start_time_s(shared),
            events,
            undecodable: c.undecodable.load(Relaxed),
            ring,
            population: Population {
                processes_live: count(view.live),
                processes_exited_kept: count(view.exited_kept),
                processes_unregistered: unregistered,
                agents_registered: count(view.registry.agents().len()),
                agents_live: count(agents_live.len()),
                sessions_live: count(sessions_live.len()),
                registry_errors: count(view.registry.errors().len()),
            },
            alerts,
            sinks: outputs.map(|o| o.sinks.stats()).unwrap_or_default(),
            store: Output {
                written: w.written.load(Relaxed),
                dropped: w.dropped.load(Relaxed),
                errors: w.errors.load(Relaxed),
                lost: w.health.lost.load(Relaxed),
                queued: count(w.queued.get()),
                degraded: w.health.degraded().is_some(),
            },
            store_bytes,
            store_events,
            audit: audit_stats.map(|a| Output {
                written: a.appended.load(Relaxed),
                dropped: a.dropped.load(Relaxed),
                errors: a.errors.load(Relaxed),
                lost: a.health.lost.load(Relaxed),
                queued: count(a.queued.get()),
                degraded: a.health.degraded().is_some(),
            }),
            audit_bytes: audit_dir.map_or(0, |d| crate::audit::dir_bytes(&d)),
            audit_records: audit_stats.map_or(0, |a| a.held.load(Relaxed)),
            fleet: shared.fleet.get().map(Fleet::read),
        }
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The daemon's start as a Unix time (Prometheus' `process_start_time_seconds` idiom: a
/// restart shows as a jump, and uptime is `time() - this`).
fn start_time_s(shared: &Shared) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(shared.started.elapsed()).as_secs_f64()
}

/// Writes one metric family: its descriptor, then one sample per label set (no labels:
/// an empty set).
struct Family<'e, 'a> {
    encoder: &'e mut DescriptorEncoder<'a>,
}

impl Family<'_, '_> {
    fn counter<L: prometheus_client::encoding::EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in samples {
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauge<L: prometheus_client::encoding::EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, i64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in samples {
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauge_f64(&mut self, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
        let m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }
}

type NoLabels = [(&'static str, &'static str); 0];

fn one(v: u64) -> [(NoLabels, u64); 1] {
    [([], v)]
}

fn gauge(v: u64) -> [(NoLabels, i64); 1] {
    [([], i64::try_from(v).unwrap_or(i64::MAX))]
}

fn flag(b: bool) -> [(NoLabels, i64); 1] {
    [([], i64::from(b))]
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Self {
            start_time_s,
            events,
            undecodable,
            ring,
            population,
            alerts,
            sinks,
            store,
            store_bytes,
            store_events,
            audit,
            audit_bytes,
            audit_records,
            fleet,
        } = self;
        let mut f = Family {
            encoder: &mut encoder,
        };
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        f.gauge("agentid_build_info", "agentid's version.", [(version, 1)])?;
        f.gauge_f64(
            "agentid_start_time_seconds",
            "When the daemon started, as a Unix time.",
            *start_time_s,
        )?;
        let by_kind = |pick: fn(&(&'static str, u64, u64, u64)) -> u64| {
            events
                .iter()
                .map(move |e| ([("kind", e.0)], pick(e)))
                .collect::<Vec<_>>()
        };
        f.counter(
            "agentid_events",
            "Kernel records received and decoded, per event kind (all processes on the host).",
            by_kind(|e| e.1),
        )?;
        f.counter(
            "agentid_events_dropped",
            "Records the kernel could not put in the ring buffer (full), per event kind.",
            by_kind(|e| e.2),
        )?;
        f.counter(
            "agentid_events_attributed",
            "Events attributed to a registered agent, per event kind.",
            by_kind(|e| e.3),
        )?;
        f.counter(
            "agentid_events_undecodable",
            "Records that could not be decoded (an ABI mismatch; should stay 0).",
            one(*undecodable),
        )?;
        if let Some((used, size)) = ring {
            f.gauge(
                "agentid_ringbuf_used_bytes",
                "Bytes in the ring buffer the daemon has not read yet (sampled once a second).",
                gauge(*used),
            )?;
            f.gauge(
                "agentid_ringbuf_size_bytes",
                "The ring buffer's size.",
                gauge(*size),
            )?;
        }
        encode_population(&mut f, population)?;
        f.counter(
            "agentid_alerts",
            "Alerts raised, new incidents and updates of existing ones, by rule and severity.",
            alerts
                .iter()
                .map(|(rule, severity, n)| ([("rule", *rule), ("severity", *severity)], *n)),
        )?;
        encode_sinks(&mut f, sinks)?;
        encode_output(&mut f, "store", "the store", store)?;
        f.gauge(
            "agentid_store_size_bytes",
            "The store's database size.",
            gauge(*store_bytes),
        )?;
        f.gauge(
            "agentid_store_events",
            "Events the store holds.",
            gauge(*store_events),
        )?;
        if let Some(audit) = audit {
            encode_output(&mut f, "audit", "the audit log", audit)?;
            f.gauge(
                "agentid_audit_size_bytes",
                "The audit log's size on disk (archives, current log, key chain).",
                gauge(*audit_bytes),
            )?;
            f.gauge(
                "agentid_audit_records",
                "Records the audit log holds on disk.",
                gauge(*audit_records),
            )?;
        }
        fleet.as_ref().map_or(Ok(()), |fl| encode_fleet(&mut f, fl))
    }
}

fn encode_fleet(f: &mut Family<'_, '_>, fleet: &Fleet) -> Result<(), std::fmt::Error> {
    let Fleet {
        connected,
        published,
        spooled,
        dropped,
        pending_bytes,
        alerts,
    } = fleet;
    f.gauge(
        "agentid_fleet_connected",
        "1 while the fleet's buckets are open and watched (NATS reachable).",
        flag(*connected),
    )?;
    f.counter(
        "agentid_fleet_published",
        "Fleet records NATS JetStream acknowledged.",
        one(*published),
    )?;
    f.counter(
        "agentid_fleet_spooled",
        "Fleet records written to the on-disk spool.",
        one(*spooled),
    )?;
    f.counter(
        "agentid_fleet_dropped",
        "Fleet records lost (queue or spool full).",
        one(*dropped),
    )?;
    f.gauge(
        "agentid_fleet_spool_pending_bytes",
        "Spooled fleet bytes not yet acknowledged.",
        gauge(*pending_bytes),
    )?;
    f.gauge(
        "agentid_fleet_alerts",
        "Fleet incidents (cross-host rules) the fleet holds.",
        gauge(*alerts),
    )
}

fn encode_population(
    f: &mut Family<'_, '_>,
    population: &Population,
) -> Result<(), std::fmt::Error> {
    let Population {
        processes_live,
        processes_exited_kept,
        processes_unregistered,
        agents_registered,
        agents_live,
        sessions_live,
        registry_errors,
    } = population;
    f.gauge(
        "agentid_processes",
        "Processes in the daemon's table: live, exited (kept for late events).",
        [
            (
                [("state", "live")],
                i64::try_from(*processes_live).unwrap_or(i64::MAX),
            ),
            (
                [("state", "exited_kept")],
                i64::try_from(*processes_exited_kept).unwrap_or(i64::MAX),
            ),
        ],
    )?;
    f.gauge(
        "agentid_processes_unregistered",
        "Live processes attributed to no registered agent.",
        gauge(*processes_unregistered),
    )?;
    f.gauge(
        "agentid_agents_registered",
        "Agents in the registry.",
        gauge(*agents_registered),
    )?;
    f.gauge(
        "agentid_agents_live",
        "Registered agents with at least one live process.",
        gauge(*agents_live),
    )?;
    f.gauge(
        "agentid_sessions_live",
        "Agent sessions with at least one live process.",
        gauge(*sessions_live),
    )?;
    f.gauge(
        "agentid_registry_errors",
        "Registration errors in force (files refused).",
        gauge(*registry_errors),
    )
}

fn encode_output(
    f: &mut Family<'_, '_>,
    name: &str,
    what: &str,
    o: &Output,
) -> Result<(), std::fmt::Error> {
    let Output {
        written,
        dropped,
        errors,
        lost,
        queued,
        degraded,
    } = o;
    f.counter(
        &format!("agentid_{name}_written"),
        &format!("Records written to {what}."),
        one(*written),
    )?;
    f.counter(
        &format!("agentid_{name}_dropped"),
        &format!("Records refused because {what}'s queue was full."),
        one(*dropped),
    )?;
    f.counter(
        &format!("agentid_{name}_errors"),
        &format!("Failed writes to {what}."),
        one(*errors),
    )?;
    f.counter(
        &format!("agentid_{name}_lost"),
        &format!("Records lost to failed writes to {what}."),
        one(*lost),
    )?;
    f.gauge(
        &format!("agentid_{name}_queue_records"),
        &format!("Records waiting for {what}'s writer (the backlog)."),
        gauge(*queued),
    )?;
    f.gauge(
        &format!("agentid_{name}_degraded"),
        &format!("1 while writes to {what} fail (the state directory full or read-only)."),
        flag(*degraded),
    )
}

fn encode_sinks(f: &mut Family<'_, '_>, sinks: &[SinkStats]) -> Result<(), std::fmt::Error> {
    let labels = |s: &SinkStats| [("sink", s.name.clone()), ("type", s.kind.clone())];
    let per_sink = |pick: fn(&SinkStats) -> u64| {
        sinks
            .iter()
            .map(move |s| (labels(s), pick(s)))
            .collect::<Vec<_>>()
    };
    f.counter(
        "agentid_sink_delivered",
        "Records the receiver accepted, per SIEM sink.",
        per_sink(|s| s.delivered),
    )?;
    f.counter(
        "agentid_sink_retried",
        "Delivery attempts that failed transiently, per record.",
        per_sink(|s| s.retried),
    )?;
    f.counter(
        "agentid_sink_spooled",
        "Records appended to the sink's disk spool.",
        per_sink(|s| s.spooled),
    )?;
    f.counter(
        "agentid_sink_dropped",
        "Records lost before reaching the spool (spool full).",
        per_sink(|s| s.dropped),
    )?;
    f.counter(
        "agentid_sink_dead_lettered",
        "Records the receiver rejected for good (dead-letter.jsonl).",
        per_sink(|s| s.dead_lettered),
    )?;
    f.gauge(
        "agentid_sink_spool_pending_bytes",
        "Bytes spooled and not yet accepted by the receiver.",
        sinks.iter().map(|s| {
            (
                labels(s),
                i64::try_from(s.pending_bytes).unwrap_or(i64::MAX),
            )
        }),
    )?;
    f.gauge(
        "agentid_sink_failing",
        "1 while the sink's last delivery attempt failed.",
        sinks
            .iter()
            .map(|s| (labels(s), i64::from(s.last_error.is_some()))),
    )
}
