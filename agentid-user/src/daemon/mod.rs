//! `agentid daemon`: the privileged host daemon.
//!
//! One task owns the event path (sensor → pipeline → store/followers); the API serves
//! from shared state; signals: SIGTERM/SIGINT stop (detach, flush, exit 0), SIGHUP
//! reloads the configuration's registry. The agents directory is also polled for changes.
mod alerts;
mod heartbeat;
mod lock;
mod pinned;
mod seeded;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    attribution::AttributedEvent,
    audit::AuditWriter,
    cgroup,
    config::Config,
    credentials::{FingerprintKey, Revocations},
    detect::Detector,
    event::{Detail, Event},
    identity::GlobList,
    outputs::{
        DropNotice, OutputContext, SinkManager,
        fanout::{AlertsFile, AuditOutput, Fanout, Followers, SinksOutput, StoreOutput},
    },
    pipeline::{Pipeline, load_registry},
    sensor::{Sensor, SensorOptions},
    state::{OutputStats, Shared},
    store::{Retention, Store, Writer},
};

/// How often the cgroup hierarchy is walked for new agent cgroups (file-open watching).
const CGROUP_WALK: Duration = Duration::from_secs(2);

/// How often the agents directory is checked for changes.
const REGISTRY_POLL: Duration = Duration::from_secs(2);

pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut daemon = Daemon::start(&config, config_path)?;
    let result = daemon.run().await;
    daemon.shutdown().await?;
    result
}

/// The running daemon: what its event loop owns. The API reads [`Shared`].
struct Daemon {
    shared: Arc<Shared>,
    /// The store's writer, flushed last at shutdown (the store output holds a clone).
    writer: Writer,
    sensor: Sensor,
    api: JoinHandle<()>,
    /// The Workload API server and its key reaper (none when `[issuer]` is off).
    issuer: Vec<JoinHandle<()>>,
    /// The socket bound at start (a reload does not move it).
    socket: PathBuf,
    config_path: Option<PathBuf>,
    batch: Vec<Event>,
    /// cgroups whose file opens are watched.
    watched: HashSet<u64>,
    last_cgroup_walk: Instant,
    /// The agents directory as last read, and when it was last checked.
    registry_stamp: Vec<(PathBuf, u64, SystemTime)>,
    last_poll: Instant,
    /// Records the sinks lost, and when each sink's loss was last raised as an alert.
    sink_drops: mpsc::Receiver<DropNotice>,
    last_loss_alert: HashMap<String, Instant>,
    /// The last pulse in `STATE/daemon.run`, marked clean at the end of a clean stop.
    heartbeat: heartbeat::Heartbeat,
    signals: Signals,
    /// Held for the daemon's life: one daemon per state directory.
    _state_lock: lock::StateLock,
}

/// SIGTERM/SIGINT stop, SIGHUP reloads.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Daemon {
    /// Opens the state, attaches the probes, seeds the process table, starts the outputs
    /// and the API.
    fn start(config: &Config, config_path: Option<PathBuf>) -> anyhow::Result<Self> {
        // Everything the daemon creates (store and its journal, keys, audit log, spools,
        // revocations, alerts file) holds evidence about other users' processes: private
        // by default, whatever the umask it was started with. The socket's 0660 is set
        // explicitly.
        crate::sys::umask(0o077);
        create_dir(&config.state_dir, 0o700)?;
        let state_lock = lock::StateLock::acquire(&config.lock_path())?;
        // Read before anything else: whether the previous run stopped cleanly.
        let (heartbeat, unclean) =
            heartbeat::Heartbeat::start(&config.state_dir, SystemTime::now())
                .context("the heartbeat file daemon.run")?;
        let store = Store::open(&config.store_path()).context("opening the store")?;
        let retention = Retention {
            max_age: config.retention.max_age,
            max_bytes: config.retention.max_size_mb.saturating_mul(1 << 20),
        };
        let writer = store.writer(retention)?;
        ensure_agents_dir(&config.agents_dir);
        // Stamp the agents directory before reading it: a change made while the daemon
        // starts must look like a change to the first poll, not be baked into the stamp.
        let registry_stamp = dir_stamp(&config.agents_dir);
        let registry = Arc::new(load_registry(&config.agents_dir));
        let root = cgroup::v2_root().context("finding the cgroup v2 hierarchy")?;
        let mut pipeline = Pipeline::new(Arc::clone(&registry), root, fingerprint_key(config)?);
        let sensor = Sensor::load(&SensorOptions {
            dns: config.dns.options(),
            pin_dir: config.pin_path(),
            ..SensorOptions::default()
        })?;
        let seeded = pipeline.seed();
        tracing::info!(
            processes = seeded,
            agents = registry.agents().len(),
            registry_errors = registry.errors().len(),
            "probes attached; process table seeded from /proc"
        );
        let detector = build_detector(config, &registry)?;
        let shared = Arc::new(Shared::new(
            config.clone(),
            pipeline,
            detector,
            store,
            Arc::clone(&writer.stats),
            Sensor::program_names(),
        ));
        let _ = shared.store_writer.set(writer.clone());
        set_tls_targets(&shared, sensor.tls_targets());
        let sink_drops = start_outputs(config, &shared, &writer)?;
        let drops_now: u64 = sensor.drops().unwrap_or_default().iter().sum();
        pinned::report_start(&shared, sensor.origin(), drops_now, unclean.as_ref());
        // Processes already running carry credentials too: scanned as if seen to start.
        seeded::scan(&shared);
        // Before the API answers: whoever saw it answer may stop the daemon at once.
        let signals = Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        };
        let api = crate::api::serve(Arc::clone(&shared))?;
        let issuer = match crate::issuer::serve(&shared).context("the Workload API")? {
            Some(crate::issuer::service::Serving { issuer, tasks }) => {
                let _ = shared.issuer.set(issuer);
                tasks
            }
            None => Vec::new(),
        };
        tracing::info!(socket = %config.socket.display(), "API listening");
        let mut daemon = Self {
            shared,
            writer,
            sensor,
            api,
            issuer,
            socket: config.socket.clone(),
            config_path,
            batch: Vec::new(),
            watched: HashSet::new(),
            last_cgroup_walk: Instant::now(),
            registry_stamp,
            last_poll: Instant::now(),
            sink_drops,
            last_loss_alert: HashMap::new(),
            heartbeat,
            signals,
            _state_lock: state_lock,
        };
        daemon.watch_agent_cgroups(Vec::new());
        Ok(daemon)
    }

    /// The event loop, until SIGTERM/SIGINT (`Ok`) or a sensor failure.
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = self.sensor.next_events(&mut self.batch) => {
                    r?;
                    self.on_batch();
                }
                _ = ticker.tick() => self.on_tick(),
                _ = self.signals.hup.recv() => self.on_reload(),
                Some(notice) = self.sink_drops.recv() => self.on_sink_loss(&notice),
                _ = self.signals.term.recv() => return Ok(()),
                _ = self.signals.int.recv() => return Ok(()),
            }
        }
    }

    fn on_batch(&mut self) {
        let Seen {
            agent_cgroups: seen,
            tls_pids,
        } = handle_batch(&self.shared, &mut self.batch);
        self.shared.view_changed();
        if !tls_pids.is_empty() {
            for pid in tls_pids {
                self.sensor.watch_tls_of(pid);
            }
            set_tls_targets(&self.shared, self.sensor.tls_targets());
        }
        let new: Vec<u64> = seen
            .into_iter()
            .filter(|id| !self.watched.contains(id))
            .collect();
        if !new.is_empty() {
            self.watch_agent_cgroups(new);
        }
    }

    /// Once a second: new agent cgroups, changed credential files, counters and rates, lost-telemetry alerts,
    /// held-back incident updates, and a changed agents directory.
    fn on_tick(&mut self) {
        let drops = self.sensor.drops().unwrap_or_default();
        if let Err(e) = self.heartbeat.beat(SystemTime::now(), drops.iter().sum()) {
            tracing::warn!(error = %e, "cannot write the heartbeat file");
        }
        if self.last_cgroup_walk.elapsed() >= CGROUP_WALK {
            self.last_cgroup_walk = Instant::now();
            self.watch_agent_cgroups(Vec::new());
        }
        if let Ok(mut pipeline) = self.shared.pipeline.lock() {
            pipeline.refresh_files();
        }
        let shared = &self.shared;
        shared
            .counters
            .set(&self.sensor.received(), &drops, self.sensor.decode_errors());
        alerts::check_drops(shared, &drops);
        alerts::flush_updates(shared);
        shared.rates.sample(shared.counters.received());
        if self.last_poll.elapsed() >= REGISTRY_POLL {
            self.last_poll = Instant::now();
            let dir = read_config(shared).agents_dir;
            let stamp = dir_stamp(&dir);
            if stamp != self.registry_stamp {
                self.registry_stamp = stamp;
                reload_registry(shared, &dir);
                shared.view_changed();
            }
        }
    }

    /// SIGHUP: the configuration, then the registry it names.
    fn on_reload(&mut self) {
        reload_config(&self.shared, self.config_path.as_deref());
        let dir = read_config(&self.shared).agents_dir;
        self.registry_stamp = dir_stamp(&dir);
        reload_registry(&self.shared, &dir);
        self.shared.view_changed();
    }

    /// Loss is never silent: counted by the sink, and an alert — at most one update per
    /// sink every 10 s, since the alert itself may meet the full spool.
    fn on_sink_loss(&mut self, notice: &DropNotice) {
        let due = self
            .last_loss_alert
            .get(&notice.sink)
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if !due {
            return;
        }
        self.last_loss_alert
            .insert(notice.sink.clone(), Instant::now());
        let alert = self.shared.detector.lock().ok().map(|mut d| {
            d.delivery_loss(
                &notice.sink,
                notice.dropped_total,
                &format!("{:?}", notice.reason),
                SystemTime::now(),
            )
        });
        if let Some(alert) = alert {
            alerts::emit_alert(&self.shared, &alert);
        }
    }

    /// Detaches first (no new events), processes what was already read, then closes the
    /// outputs (held-back updates, the audit log's final checkpoint, the sinks' grace
    /// period) and flushes the store.
    async fn shutdown(mut self) -> anyhow::Result<()> {
        self.sensor.drain(&mut self.batch);
        handle_batch(&self.shared, &mut self.batch);
        // A clean stop leaves nothing recording: the next start begins afresh.
        self.sensor.unpin();
        drop(self.sensor);
        self.api.abort();
        for task in &self.issuer {
            task.abort();
        }
        if let Some(issuer) = self.shared.issuer.get() {
            let _ = std::fs::remove_file(&issuer.socket);
        }
        let outputs = lock(&self.shared.outputs).take();
        if let Some(outputs) = outputs {
            outputs.close().await;
        }
        let _ = std::fs::remove_file(&self.socket);
        self.writer.flush().context("flushing the store")?;
        // Last: only a stop that got this far is clean. A state directory that cannot take
        // the mark (read-only, full) makes the next start report a gap: said, not hidden.
        if let Err(e) = self.heartbeat.stop(SystemTime::now()) {
            tracing::warn!(error = %e, "cannot record the clean stop in daemon.run; the next start will report a gap");
        }
        tracing::info!("stopped");
        Ok(())
    }

    fn watch_agent_cgroups(&mut self, seen: Vec<u64>) {
        watch_agent_cgroups(&self.shared, &mut self.sensor, &mut self.watched, seen);
    }
}

/// A fresh machine has no agents directory yet: an empty registry, not an error.
fn ensure_agents_dir(dir: &Path) {
    match crate::identity::create_agents_dir(dir) {
        Ok(true) => tracing::info!(dir = %dir.display(), "created the agents directory"),
        Ok(false) => {}
        Err(e) => tracing::warn!(dir = %dir.display(), "creating the agents directory: {e}"),
    }
}

/// The outputs, in the order each event and alert reaches them (see `outputs::fanout`):
/// the store first, so what the API serves is never behind what a SIEM or a follower
/// was told. Returns the channel on which the sinks report lost records.
fn start_outputs(
    config: &Config,
    shared: &Shared,
    writer: &Writer,
) -> anyhow::Result<mpsc::Receiver<DropNotice>> {
    let alerts_file = AlertsFile::open(&config.alerts_file)
        .with_context(|| format!("opening the alerts file {}", config.alerts_file.display()))?;
    let ctx = OutputContext {
        spool_root: config.state_dir.join("spool"),
        hostname: crate::process::HostIds::current().host,
    };
    let (sinks, sink_drops) =
        SinkManager::start(&config.sinks, &ctx).context("starting the sinks")?;
    // Every checkpoint goes to every sink as it is made: anchors off the host.
    let anchors = (!config.sinks.is_empty()).then(|| sinks.anchor_publisher());
    let max_bytes = config
        .audit_retention
        .max_size_mb
        .saturating_mul(1024 * 1024);
    let defaults = crate::audit::AuditOptions::default();
    let audit = AuditWriter::start(
        &config.state_dir.join("audit"),
        &config.state_dir.join("audit.key"),
        crate::audit::AuditOptions {
            fsync: match config.audit_fsync {
                crate::config::AuditFsync::Interval => {
                    crate::audit::Fsync::Interval(Duration::from_secs(1))
                }
                crate::config::AuditFsync::Record => crate::audit::Fsync::EveryRecord,
            },
            // Archives of at most an eighth of the budget, so pruning is fine-grained.
            rotate_bytes: defaults.rotate_bytes.min((max_bytes / 8).max(64 * 1024)),
            ..defaults
        },
        crate::audit::DiskPolicy {
            compress: true,
            retention: Some(crate::audit::AuditRetention {
                max_age: config.audit_retention.max_age,
                max_bytes,
            }),
        },
        anchors,
    )?;
    let _ = shared.output_stats.set(OutputStats {
        audit: Some(Arc::clone(&audit.stats)),
        sinks: sinks.monitor(),
    });
    *lock(&shared.outputs) = Some(Fanout::new(vec![
        Box::new(StoreOutput(writer.clone())),
        Box::new(alerts_file),
        Box::new(AuditOutput(audit)),
        Box::new(SinksOutput {
            sinks,
            grace: Duration::from_secs(5),
        }),
        Box::new(Followers {
            events: shared.events.clone(),
            alerts: shared.alerts.clone(),
        }),
    ]));
    Ok(sink_drops)
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
    let domains = crate::detect::rules::ServiceDomains::with_overrides(&config.service_domains)
        .map_err(anyhow::Error::msg)?;
    let mut detector = Detector::with_service_domains(watch, domains);
    detector.set_registry(registry);
    for prefix in Revocations::new(&config.state_dir)
        .load()
        .context("the revoked credentials")?
    {
        detector.revoke(prefix);
    }
    Ok(detector)
}

/// A lock whose holder panicked still guards valid data here (plain handles).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_config(shared: &Shared) -> Config {
    shared.config.read().map(|c| c.clone()).unwrap_or_default()
}

/// What a batch showed of registered agents.
#[derive(Default)]
struct Seen {
    /// The cgroups agents' events came from (their file opens are worth watching).
    agent_cgroups: Vec<u64>,
    /// Agent processes that exec'd or opened a TLS library: their copies of the library
    /// (or a Node executable) get the TLS request probes.
    tls_pids: Vec<u32>,
}

/// Runs a batch through the pipeline; returns what it showed of agents.
fn handle_batch(shared: &Shared, batch: &mut Vec<Event>) -> Seen {
    let mut seen = Seen::default();
    if batch.is_empty() {
        return seen;
    }
    let Ok(mut pipeline) = shared.pipeline.lock() else {
        return seen;
    };
    let Ok(mut detector) = shared.detector.lock() else {
        return seen;
    };
    for event in batch.drain(..) {
        let (attributed, findings) = pipeline.process(event);
        let out = detector.observe(&attributed, &findings, pipeline.registry());
        if attributed.agent.is_some() {
            seen.agent_cgroups.push(attributed.event.cgroup_id);
            let tls = match &attributed.event.detail {
                Detail::Exec { .. } => true,
                Detail::Open { path, .. } => crate::sensor::is_tls_library(path),
                _ => false,
            };
            if tls && !seen.tls_pids.contains(&attributed.event.pid) {
                seen.tls_pids.push(attributed.event.pid);
            }
        }
        record(shared, &attributed);
        alerts::record_detection(shared, &out);
    }
    seen
}

/// The TLS probe targets, for `status`.
fn set_tls_targets(shared: &Shared, targets: &[crate::sensor::TlsTarget]) {
    if let Ok(mut t) = shared.tls_targets.write() {
        targets.clone_into(&mut t);
    }
}

/// Watches file opens in every cgroup a registered agent lives in or may start in: those
/// named by `cgroup` selectors (found by walking the hierarchy, so an agent's first opens
/// after it starts are seen) and those agents' events came from.
fn watch_agent_cgroups(
    shared: &Shared,
    sensor: &mut Sensor,
    watched: &mut HashSet<u64>,
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

/// An attributed event to every output.
fn record(shared: &Shared, a: &AttributedEvent) {
    if let Some(outputs) = lock(&shared.outputs).as_mut() {
        outputs.event(a);
    }
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
    for w in new.warnings() {
        tracing::warn!("agent registry: warning: {w}");
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
