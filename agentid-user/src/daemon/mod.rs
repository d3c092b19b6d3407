//! `agentid daemon`: the privileged host daemon.
//!
//! One task owns the event path (sensor → pipeline → store/followers); the API serves
//! from shared state; signals: SIGTERM/SIGINT stop (detach, flush, exit 0), SIGHUP
//! reloads the configuration's registry. The agents directory is also polled for changes.
mod alerts;
mod audit;
mod heartbeat;
mod lock;
mod seeded;
pub mod state;

pub use alerts::revoke;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};

use self::state::{Counters, Live, Rates, Shared};
use crate::{
    attribution::AttributedEvent,
    cgroup,
    config::Config,
    credentials::FingerprintKey,
    detect::Detector,
    identity::GlobList,
    outputs::{OutputContext, SinkManager},
    pipeline::{Pipeline, load_registry},
    sensor::{Sensor, SensorOptions},
    store::{Retention, Store, StoreOp, Writer},
};

/// How often the cgroup hierarchy is walked for new agent cgroups (file-open watching).
const CGROUP_WALK: Duration = Duration::from_secs(2);

/// How often the agents directory is checked for changes.
const REGISTRY_POLL: Duration = Duration::from_secs(2);

#[expect(
    clippy::too_many_lines,
    reason = "the daemon's life in order: setup, loop, shutdown"
)]
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Everything the daemon creates (store and its journal, keys, audit log, spools,
    // revocations, alerts file) holds evidence about other users' processes: private by
    // default, whatever the umask it was started with. The socket's 0660 is set explicitly.
    crate::sys::umask(0o077);
    create_dir(&config.state_dir, 0o700)?;
    let _lock = lock::StateLock::acquire(&config.lock_path())?;
    // Read before anything else: whether the previous run stopped cleanly.
    let (mut heartbeat, unclean) =
        heartbeat::Heartbeat::start(&config.state_dir, SystemTime::now())
            .context("the heartbeat file daemon.run")?;
    let store = Store::open(&config.store_path()).context("opening the store")?;
    let retention = Retention {
        max_age: config.retention.max_age,
        max_bytes: config.retention.max_size_mb.saturating_mul(1 << 20),
    };
    let writer = store.writer(retention)?;
    // A fresh machine has no agents directory yet: an empty registry, not an error.
    match crate::identity::create_agents_dir(&config.agents_dir) {
        Ok(true) => {
            tracing::info!(dir = %config.agents_dir.display(), "created the agents directory");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(dir = %config.agents_dir.display(), "creating the agents directory: {e}");
        }
    }
    // Stamp the agents directory before reading it: a change made while the daemon
    // starts must look like a change to the first poll, not be baked into the stamp.
    let mut registry_stamp = dir_stamp(&config.agents_dir);
    let registry = Arc::new(load_registry(&config.agents_dir));
    let root = cgroup::v2_root().context("finding the cgroup v2 hierarchy")?;
    let mut pipeline = Pipeline::new(Arc::clone(&registry), root, fingerprint_key(&config)?);
    let mut sensor = Sensor::load(&SensorOptions::default())?;
    let seeded = pipeline.seed();
    tracing::info!(
        processes = seeded,
        agents = registry.agents().len(),
        registry_errors = registry.errors().len(),
        "probes attached; process table seeded from /proc"
    );

    let detector = build_detector(&config, &registry)?;
    let alerts_file = alerts::open_alerts_file(&config.alerts_file)?;

    let ctx = OutputContext {
        spool_root: config.state_dir.join("spool"),
        hostname: crate::process::HostIds::current().host,
    };
    let (sinks, mut sink_drops) =
        SinkManager::start(&config.sinks, &ctx).context("starting the sinks")?;
    let mut last_loss_alert: std::collections::HashMap<String, Instant> =
        std::collections::HashMap::new();

    let audit = audit::AuditWriter::start(
        &config.state_dir.join("audit"),
        &config.state_dir.join("audit.key"),
        crate::audit::AuditOptions {
            fsync: match config.audit_fsync {
                crate::config::AuditFsync::Interval => {
                    crate::audit::Fsync::Interval(Duration::from_secs(1))
                }
                crate::config::AuditFsync::Record => crate::audit::Fsync::EveryRecord,
            },
            ..crate::audit::AuditOptions::default()
        },
    )?;
    let (events, _) = broadcast::channel(4096);
    let (alerts, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        config: RwLock::new(config.clone()),
        started: Instant::now(),
        pipeline: Mutex::new(pipeline),
        detector: Mutex::new(detector),
        alerts_file: Mutex::new(Some(alerts_file)),
        sinks: Mutex::new(Some(sinks)),
        audit: Mutex::new(Some(audit)),
        alert_updates: Mutex::new(std::collections::HashMap::new()),
        store: Mutex::new(store),
        writer_stats: Arc::clone(&writer.stats),
        counters: Counters::default(),
        rates: Rates::default(),
        events,
        alerts,
        probes: Sensor::program_names(),
    });
    if let Some(gap) = unclean {
        // Killed, crashed or powered off: the window nothing watched is never silent.
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
            .map(|mut d| d.daemon_down(gap.pid, gap.last_alive, now, unseen));
        if let Some(alert) = alert {
            tracing::warn!(
                previous_pid = gap.pid,
                "previous run stopped uncleanly: {}",
                alert.description
            );
            alerts::emit_alert(&shared, &writer, &alert);
        }
    }
    seeded::scan(&shared, &writer);
    let api = crate::api::serve(Arc::clone(&shared))?;
    tracing::info!(socket = %config.socket.display(), "API listening");

    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last_poll = Instant::now();
    let mut batch = Vec::new();
    let mut watched = std::collections::HashSet::new();
    watch_agent_cgroups(&shared, &mut sensor, &mut watched, Vec::new());
    let mut last_cgroup_walk = Instant::now();
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            r = sensor.next_events(&mut batch) => {
                if let Err(e) = r { break Err(e.into()); }
                let seen = handle_batch(&shared, &writer, &mut batch);
                let new: Vec<u64> = seen.into_iter().filter(|id| !watched.contains(id)).collect();
                if !new.is_empty() {
                    watch_agent_cgroups(&shared, &mut sensor, &mut watched, new);
                }
            }
            _ = ticker.tick() => {
                if let Err(e) = heartbeat.beat(SystemTime::now()) {
                    tracing::warn!(error = %e, "cannot write the heartbeat file");
                }
                if last_cgroup_walk.elapsed() >= CGROUP_WALK {
                    last_cgroup_walk = Instant::now();
                    watch_agent_cgroups(&shared, &mut sensor, &mut watched, Vec::new());
                }
                let drops = sensor.drops().unwrap_or_default();
                shared.counters.set(&sensor.received(), &drops, sensor.decode_errors());
                alerts::check_drops(&shared, &writer, &drops);
                alerts::flush_updates(&shared, false);
                shared.rates.sample(shared.counters.received());
                if last_poll.elapsed() >= REGISTRY_POLL {
                    last_poll = Instant::now();
                    let dir = read_config(&shared).agents_dir;
                    let stamp = dir_stamp(&dir);
                    if stamp != registry_stamp {
                        registry_stamp = stamp;
                        reload_registry(&shared, &dir);
                    }
                }
            }
            _ = sighup.recv() => {
                reload_config(&shared, config_path.as_deref());
                let dir = read_config(&shared).agents_dir;
                registry_stamp = dir_stamp(&dir);
                reload_registry(&shared, &dir);
            }
            Some(notice) = sink_drops.recv() => {
                // Loss is never silent: counted by the sink, and an alert — at most one
                // update per sink every 10 s, since the alert itself may meet the full spool.
                let due = last_loss_alert.get(&notice.sink).is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
                if due {
                    last_loss_alert.insert(notice.sink.clone(), Instant::now());
                    let alert = shared.detector.lock().ok().map(|mut d| {
                        d.delivery_loss(&notice.sink, notice.dropped_total, &format!("{:?}", notice.reason), SystemTime::now())
                    });
                    if let Some(alert) = alert {
                        alerts::emit_alert(&shared, &writer, &alert);
                    }
                }
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        }
    };
    // Detach first (no new events), then flush what was already read.
    sensor.drain(&mut batch);
    handle_batch(&shared, &writer, &mut batch);
    drop(sensor);
    api.abort();
    // Held-back incident updates go out before the outputs close.
    alerts::flush_updates(&shared, true);
    let audit = shared.audit.lock().ok().and_then(|mut a| a.take());
    if let Some(audit) = audit {
        tokio::task::spawn_blocking(move || audit.close())
            .await
            .context("closing the audit log")?;
    }
    let sinks = shared.sinks.lock().ok().and_then(|mut s| s.take());
    if let Some(sinks) = sinks {
        sinks.shutdown(Duration::from_secs(5)).await;
    }
    let _ = std::fs::remove_file(&config.socket);
    writer.flush().context("flushing the store")?;
    // Last: only a stop that got this far is clean. A state directory that cannot take
    // the mark (read-only, full) makes the next start report a gap: said, not hidden.
    if let Err(e) = heartbeat.stop(SystemTime::now()) {
        tracing::warn!(error = %e, "cannot record the clean stop in daemon.run; the next start will report a gap");
    }
    tracing::info!("stopped");
    result
}

/// The fingerprint key: the fleet key, or the host key created at first start.
fn fingerprint_key(config: &Config) -> anyhow::Result<FingerprintKey> {
    Ok(match &config.fleet_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("fleet_key_file {}", path.display()))?;
            FingerprintKey::from_fleet_key(text.trim())
                .with_context(|| format!("fleet_key_file {}", path.display()))?
        }
        None => FingerprintKey::load_or_create(&config.state_dir.join("fingerprint.key"))
            .context("the host fingerprint key")?,
    })
}

/// The detector with its watched scopes, registry exemptions and persisted revocations.
fn build_detector(
    config: &Config,
    registry: &crate::identity::Registry,
) -> anyhow::Result<Detector> {
    let watch = if config.watch_cgroups.is_empty() {
        None
    } else {
        Some(GlobList::new(&config.watch_cgroups).context("watch_cgroups")?)
    };
    let mut detector = Detector::new(watch);
    detector.set_registry(registry);
    for prefix in alerts::load_revoked(&config.state_dir) {
        detector.revoke(prefix);
    }
    Ok(detector)
}

fn read_config(shared: &Shared) -> Config {
    shared.config.read().map(|c| c.clone()).unwrap_or_default()
}

/// Runs a batch through the pipeline; returns the cgroups that agents' events came from
/// (their file opens are worth watching).
fn handle_batch(
    shared: &Shared,
    writer: &Writer,
    batch: &mut Vec<crate::event::Event>,
) -> Vec<u64> {
    let mut agent_cgroups = Vec::new();
    if batch.is_empty() {
        return agent_cgroups;
    }
    let Ok(mut pipeline) = shared.pipeline.lock() else {
        return agent_cgroups;
    };
    let Ok(mut detector) = shared.detector.lock() else {
        return agent_cgroups;
    };
    for event in batch.drain(..) {
        let (attributed, findings) = pipeline.process(event);
        let out = detector.observe(&attributed, &findings, pipeline.registry());
        if attributed.agent.is_some() {
            agent_cgroups.push(attributed.event.cgroup_id);
        }
        record(shared, writer, &attributed);
        alerts::record_detection(shared, writer, out);
    }
    agent_cgroups
}

/// Watches file opens in every cgroup a registered agent lives in or may start in: those
/// named by `cgroup` selectors (found by walking the hierarchy, so an agent's first opens
/// after it starts are seen) and those agents' events came from.
fn watch_agent_cgroups(
    shared: &Shared,
    sensor: &mut Sensor,
    watched: &mut std::collections::HashSet<u64>,
    seen: Vec<u64>,
) {
    let mut ids = seen;
    if let Ok(mut pipeline) = shared.pipeline.lock() {
        let registry = Arc::clone(pipeline.registry());
        for (id, path) in pipeline.table.resolver().all() {
            let named = registry
                .agents()
                .iter()
                .flat_map(|a| a.selectors.iter())
                .any(|s| s.cgroup.as_ref().is_some_and(|g| g.is_match(&path)));
            if named {
                ids.push(id);
            }
        }
    }
    for id in ids {
        if watched.insert(id)
            && let Err(e) = sensor.watch_opens(id)
        {
            tracing::warn!(error = %e, cgroup_id = id, "cannot watch file opens");
        }
    }
}

fn record(shared: &Shared, writer: &Writer, a: &AttributedEvent) {
    let json = match serde_json::to_string(a) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "unserialisable event");
            return;
        }
    };
    let agent = a.agent.as_ref().map(|ag| ag.id.clone());
    let ts_ns = a
        .event
        .time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let root = a
        .session
        .as_ref()
        .and(a.lineage.last().or(a.exec_id.as_ref()))
        .map(|id| id.as_str().to_owned());
    writer.send(StoreOp::Event {
        ts_ns,
        kind: a.event.kind.as_str(),
        pid: a.event.pid,
        exec_id: a.exec_id.as_ref().map(|id| id.as_str().to_owned()),
        agent: agent.clone(),
        session: a.session.clone(),
        root_exec_id: root,
        body: json.clone(),
    });
    if let Ok(audit) = shared.audit.lock()
        && let Some(audit) = audit.as_ref()
    {
        audit.event(a);
    }
    // No follower is fine: send only fails when nobody listens.
    let _ = shared.events.send(Live {
        agent,
        kind: a.event.kind.as_str().to_owned(),
        json: json.into(),
    });
}

fn reload_registry(shared: &Shared, dir: &Path) {
    let Ok(mut pipeline) = shared.pipeline.lock() else {
        return;
    };
    // A corrupted file or a vanished directory keeps the last good registrations; the
    // errors travel with the registry into `agentid status`.
    let new = pipeline.registry().reload_keeping_last_good(dir);
    for e in new.errors() {
        tracing::warn!("agent registry: {e}");
    }
    tracing::info!(
        agents = new.agents().len(),
        errors = new.errors().len(),
        "registry reloaded"
    );
    if let Ok(mut d) = shared.detector.lock() {
        d.set_registry(&new);
    }
    pipeline.set_registry(Arc::new(new));
}

fn reload_config(shared: &Shared, path: Option<&Path>) {
    match Config::load(path) {
        Ok(new) => {
            if let Ok(mut current) = shared.config.write() {
                if new.socket != current.socket || new.state_dir != current.state_dir {
                    tracing::warn!("socket/state_dir changes take effect on restart");
                }
                *current = new;
                tracing::info!("configuration reloaded");
            }
        }
        Err(e) => tracing::error!("configuration reload failed, keeping the previous one: {e}"),
    }
}

/// A cheap fingerprint of a directory's `*.toml` files: names, sizes, mtimes.
fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()?))
        })
        .collect();
    v.sort();
    v
}

fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions on {}", dir.display()))
}
