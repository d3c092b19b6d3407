//! `agentid daemon`: the privileged host daemon.
//!
//! One task owns the event path (sensor → pipeline → store/followers); the API serves
//! from shared state; signals: SIGTERM/SIGINT stop (detach, flush, exit 0), SIGHUP
//! reloads the configuration's registry. The agents directory is also polled for changes.
pub(crate) mod alerts;
mod fleet;
mod heartbeat;
mod lock;
mod pinned;
mod seeded;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
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
    /// The `/metrics` server, when `metrics_listen` is set.
    metrics: Option<JoinHandle<()>>,
    /// The Workload API server and its key reaper (none when `[issuer]` is off).
    issuer: Vec<JoinHandle<()>>,
    /// The socket bound at start (a reload does not move it).
    socket: PathBuf,
    config_path: Option<PathBuf>,
    batch: Vec<Event>,
    /// cgroups whose file opens are watched.
    watched: HashSet<u64>,
    /// The enforcement last applied (agents by policy id, and their cgroups).
    enforced: Option<Enforced>,
    resolvers: Vec<std::net::IpAddr>,
    last_cgroup_walk: Instant,
    /// The agents directory as last read, and when it was last checked.
    registry_stamp: Vec<(PathBuf, u64, SystemTime)>,
    last_poll: Instant,
    /// Records the sinks lost, and when each sink's loss was last raised as an alert.
    sink_drops: mpsc::Receiver<DropNotice>,
    last_loss_alert: HashMap<String, Instant>,
    /// The last pulse in `STATE/daemon.run`, marked clean at the end of a clean stop.
    heartbeat: heartbeat::Heartbeat,
    /// What the fleet link reports (with `[fleet]`), and when presence was last sent.
    fleet_notices: Option<mpsc::Receiver<crate::fleet::Notice>>,
    last_presence: Instant,
    signals: Signals,
    /// Held for the daemon's life: one daemon per state directory.
    _state_lock: lock::StateLock,
}

/// What the kernel enforces, as last applied: the agents by policy id, their cgroups
/// (id → policy id), the allowed executables (policy, dev, inode) and literal tool paths.
type Enforced = (
    BTreeMap<u32, String>,
    BTreeMap<u64, u32>,
    Vec<(u32, u32, u64)>,
    std::collections::BTreeSet<(u32, String)>,
);

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
            ring_bytes: Some(config.ring_bytes()),
            ..SensorOptions::default()
        })?;
        refuse_unpinned_enforcement(config, &registry, &sensor)?;
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
        let fleet_notices = fleet::start(config, &shared, &registry)?;
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
        // Before the API: a test (or an operator) that saw the API answer may scrape.
        let metrics = start_metrics(config, &shared)?;
        let api = crate::api::serve(Arc::clone(&shared))?;
        let issuer = start_issuer(config, &shared)?;
        tracing::info!(socket = %config.socket.display(), "API listening");
        let mut daemon = Self {
            shared,
            writer,
            sensor,
            api,
            metrics,
            issuer,
            socket: config.socket.clone(),
            config_path,
            batch: Vec::new(),
            watched: HashSet::new(),
            enforced: None,
            resolvers: config
                .dns
                .resolvers
                .clone()
                .unwrap_or_else(crate::enforce::host_resolvers),
            last_cgroup_walk: Instant::now(),
            registry_stamp,
            last_poll: Instant::now(),
            sink_drops,
            last_loss_alert: HashMap::new(),
            heartbeat,
            fleet_notices,
            last_presence: Instant::now(),
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
                Some(notice) = fleet::next(&mut self.fleet_notices) => match notice {
                    crate::fleet::Notice::Loss(loss) => self.on_sink_loss(&loss),
                    other => fleet::on_notice(&self.shared, other),
                },
                _ = self.signals.term.recv() => return Ok(()),
                _ = self.signals.int.recv() => return Ok(()),
            }
        }
    }

    fn on_batch(&mut self) {
        // Before the batch is handled: the received counts already include it, so no
        // reader ever sees more events attributed than received.
        self.shared.counters.set_received(&self.sensor.received());
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
        if let Some((used, size)) = self.sensor.ring_fill() {
            shared
                .counters
                .ring_used_bytes
                .store(used, Ordering::Relaxed);
            shared
                .counters
                .ring_size_bytes
                .store(size, Ordering::Relaxed);
            shared
                .counters
                .ring_peak_bytes
                .store(self.sensor.ring_peak(), Ordering::Relaxed);
        }
        alerts::check_drops(shared, &drops);
        if let Some(f) = shared.fleet.get()
            && self.last_presence.elapsed() >= f.heartbeat()
        {
            self.last_presence = Instant::now();
            f.publish_presence(crate::fleet::presence::collect(&shared.view(), f.host()));
        }
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
                self.watch_agent_cgroups(Vec::new());
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
        self.watch_agent_cgroups(Vec::new());
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
        if let Some((agents, ..)) = &self.enforced
            && !agents.is_empty()
        {
            let ids: Vec<&str> = agents.values().map(String::as_str).collect();
            tracing::info!(
                agents = ?ids,
                "enforcement removed with the probes (clean stop): these agents run unenforced until the next start"
            );
        }
        self.sensor.unpin();
        drop(self.sensor);
        self.api.abort();
        if let Some(m) = &self.metrics {
            m.abort();
        }
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
        if let Some(f) = self.shared.fleet.get() {
            f.close().await;
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
        let (cgroups, newest) =
            watch_agent_cgroups(&self.shared, &mut self.sensor, &mut self.watched, seen);
        self.sync_enforcement(cgroups, newest);
    }

    /// Brings the kernel's enforcement in line with the registry: the enforced agents'
    /// policies, their cgroups (`cgroups`, from the walk just made) and the executables
    /// their `tools` name today (a replaced binary is a new inode). Changes are logged.
    /// `newest` is the highest cgroup id the walk saw: newer cgroups the kernel enforced
    /// since are kept.
    fn sync_enforcement(&mut self, cgroups: BTreeMap<u64, u32>, newest: u64) {
        let plan = {
            let Ok(pipeline) = self.shared.pipeline.lock() else {
                return;
            };
            let registry = pipeline.registry();
            crate::enforce::compile(registry.agents().iter().map(|a| (&a.id, &a.policy)))
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("enforcement not updated: {e}");
                return;
            }
        };
        if !plan.policies.is_empty() && self.sensor.origin() == crate::sensor::Origin::Unpinned {
            tracing::error!(
                "enforce = true is not applied: the probes are not pinned, so a kill of the daemon would lift it (restart with pinning)"
            );
            return;
        }
        let exes: Vec<(u32, u32, u64)> = plan.exes.iter().copied().collect();
        let state = (plan.agents.clone(), cgroups, exes, plan.exe_paths.clone());
        if self.enforced.as_ref() == Some(&state) {
            return;
        }
        if let Err(e) = self
            .sensor
            .apply_enforcement(&plan, &state.1, newest, &self.resolvers)
        {
            tracing::error!(error = %e, "cannot update the kernel's enforcement maps");
            return;
        }
        let before = self
            .enforced
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default();
        for (pid, id) in &plan.agents {
            if !before.contains_key(pid) {
                tracing::info!(agent = %id, "enforcement on: egress and tools are enforced in the kernel");
            }
        }
        for (pid, id) in &before {
            if !plan.agents.contains_key(pid) {
                tracing::info!(agent = %id, "enforcement lifted");
            }
        }
        let shown = plan
            .agents
            .iter()
            .map(|(pid, id)| {
                let flags = plan.policies.get(pid).copied().unwrap_or(0);
                let mut enforces = Vec::new();
                if flags & agentid_ebpf::enforce::policy_flags::EGRESS != 0 {
                    enforces.push("egress".to_owned());
                }
                if flags & agentid_ebpf::enforce::policy_flags::TOOLS != 0 {
                    enforces.push("tools".to_owned());
                }
                crate::api::types::EnforcedAgent {
                    id: id.clone(),
                    cgroups: state.1.values().filter(|p| *p == pid).count(),
                    enforces,
                }
            })
            .collect();
        if let Ok(mut e) = self.shared.enforced.write() {
            *e = shown;
        }
        self.enforced = Some(state);
    }
}

/// Enforcement that a kill of the daemon would lift is not enforcement: with an agent
/// registered `enforce = true`, the probes must be pinned.
fn refuse_unpinned_enforcement(
    config: &Config,
    registry: &crate::identity::Registry,
    sensor: &Sensor,
) -> anyhow::Result<()> {
    let enforcing: Vec<String> = registry
        .agents()
        .iter()
        .filter(|a| a.policy.enforce)
        .map(|a| a.id.to_string())
        .collect();
    if !enforcing.is_empty() && sensor.origin() == crate::sensor::Origin::Unpinned {
        anyhow::bail!(
            "{} registered with enforce = true, but the probes are not pinned ({}): enforcement must outlive the daemon; mount bpffs on /sys/fs/bpf and keep pin = true",
            enforcing.join(", "),
            if config.pin {
                "the kernel or bpffs cannot pin them, see the warning above"
            } else {
                "pin = false"
            }
        );
    }
    Ok(())
}

/// The Prometheus endpoint, with `metrics_listen`.
fn start_metrics(config: &Config, shared: &Arc<Shared>) -> anyhow::Result<Option<JoinHandle<()>>> {
    Ok(match config.metrics_listen {
        Some(addr) => {
            let server = crate::metrics::serve(Arc::clone(shared), addr)?;
            tracing::info!(%addr, "metrics listening on http://{addr}/metrics");
            Some(server)
        }
        None => None,
    })
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
    // Every checkpoint goes to every sink and to the fleet as it is made: anchors off
    // the host.
    let anchors = each_of(
        (!config.sinks.is_empty())
            .then(|| sinks.anchor_publisher())
            .into_iter()
            .chain(
                shared
                    .fleet
                    .get()
                    .map(crate::fleet::Fleet::anchor_publisher),
            )
            .collect(),
    );
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
    let mut outputs: Vec<Box<dyn crate::outputs::fanout::Output>> = vec![
        Box::new(StoreOutput::new(writer.clone())),
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
    ];
    if let Some(f) = shared.fleet.get() {
        // Before the followers: whoever follows sees what the fleet was handed.
        outputs.insert(
            outputs.len() - 1,
            Box::new(crate::fleet::FleetOutput::new(f.clone())),
        );
    }
    *lock(&shared.outputs) = Some(Fanout::new(outputs));
    Ok(sink_drops)
}

/// One publisher handing each checkpoint to all of `publishers`; `None` for none.
fn each_of(
    mut publishers: Vec<crate::audit::AnchorPublisher>,
) -> Option<crate::audit::AnchorPublisher> {
    match publishers.len() {
        0 => None,
        1 => publishers.pop(),
        _ => Some(Box::new(move |cp: &crate::audit::Checkpoint| {
            for publish in &publishers {
                publish(cp);
            }
        })),
    }
}

/// The fingerprint key: the fleet key, or the host key created at first start.
/// The Workload API, with `[issuer]`: serving, and recognising its tokens wherever
/// credentials are found. Returns its tasks.
fn start_issuer(config: &Config, shared: &Arc<Shared>) -> anyhow::Result<Vec<JoinHandle<()>>> {
    if !config.issuer.enabled {
        return Ok(Vec::new());
    }
    let serving =
        crate::issuer::serve(shared, fingerprint_key(config)?).context("the Workload API")?;
    let Some(crate::issuer::service::Serving { issuer, tasks }) = serving else {
        return Ok(Vec::new());
    };
    shared
        .pipeline
        .lock()
        .map_err(|_| anyhow::anyhow!("pipeline lock poisoned"))?
        .redactor_mut()
        .set_issuer(Arc::clone(&issuer) as Arc<dyn crate::credentials::TokenIssuer>);
    let _ = shared.issuer.set(issuer);
    Ok(tasks)
}

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
            shared.counters.attributed(attributed.event.kind);
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
///
/// Returns the enforced agents' cgroups among them (id → policy id) and the highest
/// cgroup id the walk saw.
fn watch_agent_cgroups(
    shared: &Shared,
    sensor: &mut Sensor,
    watched: &mut HashSet<u64>,
    seen: Vec<u64>,
) -> (BTreeMap<u64, u32>, u64) {
    let mut ids = seen;
    let mut enforced = BTreeMap::new();
    let mut newest = 0;
    if let Ok(mut pipeline) = shared.pipeline.lock() {
        let registry = Arc::clone(pipeline.registry());
        let all = pipeline.table.resolver().all();
        newest = all.iter().map(|(id, _)| *id).max().unwrap_or(0);
        for (id, path) in all.iter().cloned() {
            let mut named = false;
            for agent in registry.agents() {
                if agent
                    .selectors
                    .iter()
                    .any(|s| s.cgroup.as_ref().is_some_and(|g| g.is_match(&path)))
                {
                    named = true;
                    if agent.policy.enforce {
                        enforced.insert(id, crate::enforce::policy_id(&agent.id));
                    }
                }
            }
            if named {
                ids.push(id);
            }
        }
        // As the kernel decided at each one's creation (`cgroup_mkdir`).
        crate::enforce::inherit_to_descendants(&all, &mut enforced);
    }
    for id in ids {
        if watched.insert(id)
            && let Err(e) = sensor.watch_opens(id)
        {
            tracing::warn!(error = %e, cgroup_id = id, "cannot watch file opens");
        }
    }
    (enforced, newest)
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
    let new = Arc::new(new);
    if let Some(f) = shared.fleet.get() {
        f.set_registry(Arc::clone(&new));
    }
    pipeline.set_registry(new);
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
