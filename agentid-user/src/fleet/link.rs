//! The link task: owns the NATS connection, the spool and the watches.
//!
//! Records are spooled first and leave the spool only after JetStream acknowledged them
//! (a KV put's or a stream publish's ack), so nothing acknowledged to the daemon is lost
//! to a NATS outage or a restart. The buckets are watched whole (last value per key, then
//! changes); after any watch error or reconnect they are watched again from the start,
//! which the view and the claims take idempotently.
use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::{StreamExt as _, StreamMap};

use super::{
    FleetConfig, Notice,
    records::{
        self, ALERT_STREAM, ALERT_SUBJECTS, AUDIT_STREAM, AUDIT_SUBJECTS, FLEET_ALERTS, FleetAlert,
        Holder, Outgoing, PRESENCE, REVOCATIONS, SIGHTINGS,
    },
    view::FleetView,
};
use crate::{
    detect::{
        RuleInfo,
        rules::{CREDENTIAL_REUSE, IDENTITY_SPRAWL, sprawl_reason},
    },
    identity::Registry,
    outputs::{DropNotice, DropReason, spool::Spool},
};

/// How long a NATS request (a put's ack, a bucket lookup) may take before the link
/// treats the cluster as unreachable for now.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Records per spool read.
const BATCH: usize = 256;
/// Every this many ticks (seconds) the watches are checked against their buckets.
const STALL_CHECK: u64 = 3;
/// Ticks of failed publishing after which the buckets are opened again.
const REOPEN_AFTER: u32 = 15;
/// How long the fleet keeps audit anchors: longer than a year of audits.
const ANCHORS_MAX_AGE: Duration = Duration::from_hours(400 * 24);

type Watches = StreamMap<&'static str, Pin<Box<kv::Watch>>>;

/// The open buckets.
struct Buckets {
    kv: HashMap<&'static str, kv::Store>,
    js: jetstream::Context,
}

pub(super) struct Link {
    config: FleetConfig,
    host: String,
    spool: Spool,
    rx: mpsc::Receiver<Outgoing>,
    view: Arc<RwLock<FleetView>>,
    notices: mpsc::Sender<Notice>,
    registry: watch::Receiver<Arc<Registry>>,
    /// Per claim key: the holders last judged (a claim is retried when this changes or
    /// the claim failed).
    judged: HashMap<String, Vec<Holder>>,
    /// Revocations already handed to the daemon.
    revoked: HashSet<String>,
    /// Per bucket: the newest revision its watch delivered.
    seen_rev: HashMap<&'static str, u64>,
    /// Per bucket: its stream's last sequence at the previous check.
    last_checked: HashMap<&'static str, u64>,
    ticks: u64,
    /// Ticks in a row whose spool drain failed.
    failing: u32,
}

fn lock_write(v: &RwLock<FleetView>) -> std::sync::RwLockWriteGuard<'_, FleetView> {
    v.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    pub(super) fn new(
        config: FleetConfig,
        host: String,
        spool: Spool,
        rx: mpsc::Receiver<Outgoing>,
        view: Arc<RwLock<FleetView>>,
        notices: mpsc::Sender<Notice>,
        registry: watch::Receiver<Arc<Registry>>,
    ) -> Self {
        Self {
            config,
            host,
            spool,
            rx,
            view,
            notices,
            registry,
            judged: HashMap::new(),
            revoked: HashSet::new(),
            seen_rev: HashMap::new(),
            last_checked: HashMap::new(),
            ticks: 0,
            failing: 0,
        }
    }

    pub(super) async fn run(mut self, stop: Arc<Notify>) {
        let client = match connect(&self.config, &format!("agentid@{}", self.host), true).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "fleet: cannot set up the NATS client; records stay in the spool");
                self.set_error(e);
                None
            }
        };
        let mut buckets: Option<Buckets> = None;
        let mut watches = Watches::new();
        let mut rewatch = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.notified() => break,
                r = self.rx.recv() => {
                    let Some(first) = r else { break };
                    let mut records = vec![first];
                    while let Ok(r) = self.rx.try_recv() {
                        records.push(r);
                    }
                    self.append(&records);
                    if let Some(b) = &buckets {
                        self.drain(b).await;
                    }
                }
                Some((bucket, entry)) = watches.next(), if !watches.is_empty() => {
                    match (entry, &buckets) {
                        (Ok(entry), Some(b)) => self.on_entry(bucket, &entry, b).await,
                        (Err(e), _) => {
                            tracing::warn!(bucket, error = %e, "fleet: watch failed; watching again");
                            rewatch = true;
                            watches = Watches::new();
                        }
                        (Ok(_), None) => {}
                    }
                }
                _ = tick.tick() => {
                    let Some(client) = &client else { continue };
                    let up = client.connection_state() == async_nats::connection::State::Connected;
                    // The bucket handles outlive a reconnect; only the watches are made
                    // again once the connection is back.
                    self.set_connected(up && buckets.is_some());
                    if !up {
                        rewatch |= !watches.is_empty();
                        watches = Watches::new();
                        continue;
                    }
                    if buckets.is_none() {
                        watches = Watches::new();
                        self.set_connected(false);
                        if up {
                            match self.open(client).await {
                                Ok((b, w)) => {
                                    tracing::info!(host = %self.host, "fleet: buckets open and watched");
                                    rewatch = false;
                                    self.reset_view();
                                    buckets = Some(b);
                                    watches = w;
                                    self.set_connected(true);
                                }
                                Err(e) => self.set_error(e),
                            }
                        }
                    }
                    if let Some(b) = &buckets {
                        // A failed publish is retried on the next tick with the buckets
                        // kept (a stream electing a leader answers again in seconds); a
                        // run of failures opens them again (an operator deleted one).
                        if self.drain(b).await {
                            self.failing = 0;
                        } else {
                            self.failing += 1;
                            if self.failing >= REOPEN_AFTER {
                                self.failing = 0;
                                buckets = None;
                                continue;
                            }
                        }
                        self.judge_sprawl(b).await;
                        self.retry_reuse(b).await;
                        self.ticks += 1;
                        if !rewatch && self.ticks.is_multiple_of(STALL_CHECK) && self.stalled(b).await {
                            tracing::warn!("fleet: a watch fell behind its bucket; watching again");
                            rewatch = true;
                        }
                        if rewatch {
                            rewatch = false;
                            match self.rewatch(b).await {
                                Some(w) => watches = w,
                                None => buckets = None,
                            }
                        }
                    }
                }
            }
        }
        self.finish(buckets, client).await;
    }

    /// Shutdown: one bounded attempt at what is spooled (opening the buckets first if a
    /// short run never got to, so its final audit anchor leaves now); the rest waits for
    /// the next start.
    async fn finish(mut self, buckets: Option<Buckets>, client: Option<async_nats::Client>) {
        while let Ok(r) = self.rx.try_recv() {
            self.append(&[r]);
        }
        let last_try = async {
            let b = match (buckets, &client) {
                (Some(b), _) => b,
                (None, Some(c)) => match self.open(c).await {
                    Ok((b, _watches)) => b,
                    Err(_) => return,
                },
                (None, None) => return,
            };
            self.drain(&b).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), last_try).await;
        if let Some(client) = client {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        }
    }

    fn set_connected(&self, up: bool) {
        let mut v = lock_write(&self.view);
        v.connected = up;
        if up {
            v.stats.last_error = None;
        }
    }

    /// New watches over the open buckets, the view rebuilt from what they deliver.
    async fn rewatch(&mut self, b: &Buckets) -> Option<Watches> {
        match watch(b).await {
            Ok(w) => {
                self.reset_view();
                Some(w)
            }
            Err(e) => {
                self.set_error(e);
                None
            }
        }
    }

    /// New watches deliver every current value again: the view becomes exactly what the
    /// cluster holds.
    fn reset_view(&mut self) {
        self.clear_view();
        self.seen_rev.clear();
        self.last_checked.clear();
    }

    fn clear_view(&self) {
        let mut v = lock_write(&self.view);
        let FleetView {
            host: _,
            connected: _,
            stats: _,
            sightings,
            presence,
            alerts,
            revocations,
        } = &mut *v;
        sightings.clear();
        presence.clear();
        alerts.clear();
        revocations.clear();
    }

    fn set_error(&self, e: String) {
        lock_write(&self.view).stats.last_error = Some(e);
    }

    /// Opens (creating where absent) the buckets and the alert stream, and watches the
    /// buckets from their current values on.
    async fn open(&self, client: &async_nats::Client) -> Result<(Buckets, Watches), String> {
        let js = jetstream::new(client.clone());
        let mut kvs = HashMap::new();
        for (bucket, desc) in [
            (
                SIGHTINGS,
                "agentid credential sightings (fingerprints only)",
            ),
            (PRESENCE, "agentid agent presence"),
            (FLEET_ALERTS, "agentid fleet alerts, claimed once"),
            (REVOCATIONS, "agentid revoked credentials"),
        ] {
            // The bucket's stream made here, as the KV convention has it: the client's
            // `create_key_value` first reads account fields a 2.9 server does not send.
            js.get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some(desc.to_owned()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                num_replicas: self.config.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                ..jetstream::stream::Config::default()
            })
            .await
            .map_err(|e| format!("bucket {bucket}: {e}"))?;
            let store = js
                .get_key_value(bucket)
                .await
                .map_err(|e| format!("bucket {bucket}: {e}"))?;
            kvs.insert(bucket, store);
        }
        js.get_or_create_stream(jetstream::stream::Config {
            name: ALERT_STREAM.to_owned(),
            subjects: vec![ALERT_SUBJECTS.to_owned()],
            num_replicas: self.config.replicas,
            max_age: Duration::from_hours(30 * 24),
            ..jetstream::stream::Config::default()
        })
        .await
        .map_err(|e| format!("stream {ALERT_STREAM}: {e}"))?;
        // Anchors must outlive what a rollback would hide: kept long, never deleted
        // through the stream (grant hosts publish-only rights on their own subject).
        js.get_or_create_stream(jetstream::stream::Config {
            name: AUDIT_STREAM.to_owned(),
            description: Some("agentid signed audit checkpoints (anchors), per host".to_owned()),
            subjects: vec![AUDIT_SUBJECTS.to_owned()],
            num_replicas: self.config.replicas,
            max_age: ANCHORS_MAX_AGE,
            deny_delete: true,
            deny_purge: true,
            ..jetstream::stream::Config::default()
        })
        .await
        .map_err(|e| format!("stream {AUDIT_STREAM}: {e}"))?;
        let b = Buckets { kv: kvs, js };
        let watches = watch(&b).await?;
        Ok((b, watches))
    }

    /// Appends to the spool; a full spool drops, counts and reports.
    fn append(&self, records: &[Outgoing]) {
        let spooled: Vec<_> = records.iter().map(Outgoing::to_spool).collect();
        let accepted = match self.spool.append(&spooled) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "fleet: spool write failed");
                vec![false; spooled.len()]
            }
        };
        let mut v = lock_write(&self.view);
        for (r, ok) in spooled.iter().zip(accepted) {
            if ok {
                v.stats.spooled += 1;
            } else {
                v.stats.dropped += 1;
                let _ = self.notices.try_send(Notice::Loss(DropNotice {
                    sink: "fleet".into(),
                    uid: r.uid.clone(),
                    reason: DropReason::SpoolFull,
                    dropped_total: v.stats.dropped,
                }));
            }
        }
        v.stats.pending_bytes = self.spool.pending_bytes();
    }

    /// Publishes the spool in order, committing each batch once all of it was
    /// acknowledged. Returns `false` when NATS stopped answering (the rest waits).
    async fn drain(&self, b: &Buckets) -> bool {
        loop {
            let batch = match self.spool.read_batch(BATCH, 1 << 20) {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "fleet: spool read failed");
                    return true;
                }
            };
            let Some(end) = batch.end else { return true };
            for r in &batch.records {
                let Some(o) = Outgoing::from_spool(r) else {
                    tracing::warn!(uid = %r.uid, "fleet: skipping a spooled record of unknown kind");
                    continue;
                };
                if let Err(e) = publish(b, &o).await {
                    tracing::warn!(error = %e, "fleet: publish failed; keeping the spool");
                    self.set_error(e);
                    return false;
                }
                lock_write(&self.view).stats.published += 1;
            }
            if let Err(e) = self.spool.commit(end) {
                tracing::error!(error = %e, "fleet: spool commit failed");
                return true;
            }
            lock_write(&self.view).stats.pending_bytes = self.spool.pending_bytes();
        }
    }

    /// Whether a watch has still not delivered what its bucket held at the previous check
    /// (a check period ago): a watch whose consumer died with a stream leader may go
    /// quiet instead of failing.
    async fn stalled(&mut self, b: &Buckets) -> bool {
        let mut stalled = false;
        for bucket in [SIGHTINGS, PRESENCE, FLEET_ALERTS, REVOCATIONS] {
            let Ok(stream) = b.js.get_stream(format!("KV_{bucket}")).await else {
                continue;
            };
            let last = stream.cached_info().state.last_sequence;
            let seen = self.seen_rev.get(bucket).copied().unwrap_or(0);
            if let Some(before) = self.last_checked.insert(bucket, last) {
                stalled |= seen < before;
            }
        }
        stalled
    }

    async fn on_entry(&mut self, bucket: &'static str, entry: &kv::Entry, b: &Buckets) {
        let rev = self.seen_rev.entry(bucket).or_default();
        *rev = (*rev).max(entry.revision);
        let put = entry.operation == kv::Operation::Put;
        macro_rules! keep {
            ($map:ident, $ty:ty) => {{
                let mut v = lock_write(&self.view);
                match serde_json::from_slice::<$ty>(&entry.value) {
                    Ok(r) if put => {
                        v.$map.insert(entry.key.clone(), r.clone());
                        Some(r)
                    }
                    _ => {
                        v.$map.remove(&entry.key);
                        None
                    }
                }
            }};
        }
        match bucket {
            SIGHTINGS => {
                if let Some(s) = keep!(sightings, records::Sighting) {
                    self.judge_reuse(&s.hmac, b).await;
                }
            }
            PRESENCE => {
                keep!(presence, records::Presence);
            }
            FLEET_ALERTS => {
                keep!(alerts, FleetAlert);
            }
            REVOCATIONS => {
                if let Some(r) = keep!(revocations, records::Revocation)
                    && self.revoked.insert(r.prefix.clone())
                {
                    let _ = self.notices.send(Notice::Revoked(r)).await;
                }
            }
            _ => {}
        }
    }

    /// `credential-reuse` across hosts for the credential `hmac`, if this host holds it.
    async fn judge_reuse(&mut self, hmac: &str, b: &Buckets) {
        let found = self.view.read().ok().and_then(|v| v.reuse(hmac));
        let Some((fingerprint, holders)) = found else {
            return;
        };
        let key = FleetAlert::key(CREDENTIAL_REUSE.id, hmac);
        if self.judged.get(&key) == Some(&holders) {
            return;
        }
        let names: Vec<String> = holders
            .iter()
            .map(|h| format!("{} on {}", h.agent, h.host))
            .collect();
        let alert = FleetAlert {
            fingerprint: Some(fingerprint.clone()),
            ..self.incident(
                &CREDENTIAL_REUSE,
                format!("Credential used by {} agents across hosts", holders.len()),
                format!("{fingerprint} was used by {}", names.join(" and ")),
                holders,
            )
        };
        self.claim_judged(b, key, alert).await;
    }

    /// Sightings whose claim failed (NATS went away mid-claim) are judged again.
    async fn retry_reuse(&mut self, b: &Buckets) {
        let mine: Vec<String> = self.view.read().map_or_else(
            |_| Vec::new(),
            |v| {
                let mut h: Vec<String> = v
                    .sightings
                    .values()
                    .filter(|s| s.host == self.host)
                    .map(|s| s.hmac.clone())
                    .collect();
                h.sort();
                h.dedup();
                h
            },
        );
        for hmac in mine {
            self.judge_reuse(&hmac, b).await;
        }
    }

    /// `identity-sprawl` for each agent live here whose policy limits its hosts.
    async fn judge_sprawl(&mut self, b: &Buckets) {
        let registry = Arc::clone(&self.registry.borrow());
        let now = records::now_ms();
        let fresh = u64::try_from(self.config.heartbeat.as_millis() * 3).unwrap_or(u64::MAX);
        let found: Vec<(String, Vec<Holder>, String)> = {
            let Ok(v) = self.view.read() else { return };
            v.live_here(now, fresh)
                .into_iter()
                .filter_map(|agent| {
                    let reg = registry.agents().iter().find(|a| a.id.as_str() == agent)?;
                    let live = v.live(&agent, now, fresh);
                    let hosts: Vec<&str> = live.iter().map(|h| h.host.as_str()).collect();
                    let why = sprawl_reason(&reg.policy, &hosts)?;
                    Some((agent, live, why))
                })
                .collect()
        };
        for (agent, holders, why) in found {
            let key = FleetAlert::key(IDENTITY_SPRAWL.id, &agent);
            if self.judged.get(&key) == Some(&holders) {
                continue;
            }
            let hosts: Vec<&str> = holders.iter().map(|h| h.host.as_str()).collect();
            let alert = self.incident(
                &IDENTITY_SPRAWL,
                format!("Agent {agent} live on {} hosts", hosts.len()),
                format!("{agent} is live on {}: {why}", hosts.join(", ")),
                holders,
            );
            self.claim_judged(b, key, alert).await;
        }
    }

    /// A new incident of `rule` between `holders`, raised by this host now.
    fn incident(
        &self,
        rule: &RuleInfo,
        title: String,
        description: String,
        holders: Vec<Holder>,
    ) -> FleetAlert {
        let now = records::now_ms();
        FleetAlert {
            rule: rule.id.to_owned(),
            severity: rule.severity.as_str().to_owned(),
            title,
            description,
            fingerprint: None,
            holders,
            raised_by: self.host.clone(),
            first_seen_ms: now,
            last_seen_ms: now,
            count: 1,
        }
    }

    /// Claims `key` for `alert`; once the fleet's record is settled its holders count as
    /// judged (a failed claim is tried again on the next tick or entry).
    async fn claim_judged(&mut self, b: &Buckets, key: String, alert: FleetAlert) {
        let holders = alert.holders.clone();
        if self.claim(b, &key, alert).await {
            self.judged.insert(key, holders);
        }
    }

    /// Claims the incident `key` (create-if-absent): the winner raises it; a later host
    /// with new holders updates the fleet's record (compare-and-set), and the raiser
    /// raises the update. Returns whether the fleet's record is settled.
    async fn claim(&self, b: &Buckets, key: &str, alert: FleetAlert) -> bool {
        let Some(store) = b.kv.get(FLEET_ALERTS) else {
            return false;
        };
        let Ok(json) = serde_json::to_vec(&alert) else {
            return false;
        };
        match store.create(key, json.into()).await {
            Ok(_) => {
                tracing::info!(key, rule = %alert.rule, "fleet: claimed an incident");
                let _ = self.notices.send(Notice::Raise(alert)).await;
                return true;
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => {
                self.set_error(format!("claiming {key}: {e}"));
                return false;
            }
        }
        let Ok(Some(entry)) = store.entry(key).await else {
            return false;
        };
        let Ok(mut existing) = serde_json::from_slice::<FleetAlert>(&entry.value) else {
            return false;
        };
        let mut holders = existing.holders.clone();
        holders.extend(alert.holders.iter().cloned());
        holders.sort();
        holders.dedup();
        if holders == existing.holders {
            return true;
        }
        existing.holders = holders;
        existing.count += 1;
        existing.last_seen_ms = alert.last_seen_ms;
        existing.title = alert.title;
        existing.description = alert.description;
        let Ok(json) = serde_json::to_vec(&existing) else {
            return false;
        };
        if store
            .update(key, json.into(), entry.revision)
            .await
            .is_err()
        {
            // Another host updated it first: judged again on the next tick or entry.
            return false;
        }
        if existing.raised_by == self.host {
            let _ = self.notices.send(Notice::Raise(existing)).await;
        }
        true
    }
}

/// A client for the cluster `config` names, as `name`. The daemon's (`keep_trying`) never
/// gives up, also when the first connect fails; a command's fails at once.
pub(super) async fn connect(
    config: &FleetConfig,
    name: &str,
    keep_trying: bool,
) -> Result<async_nats::Client, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name.to_owned())
        .max_reconnects(None)
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT));
    if keep_trying {
        opts = opts.retry_on_initial_connect();
    }
    if let Some(path) = &config.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("fleet credentials_file {}: {e}", path.display()))?;
    }
    if let Some(ca) = &config.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("fleet.servers: {e}"))?;
    opts.connect(servers)
        .await
        .map_err(|e| format!("connecting to {}: {e}", config.servers.join(",")))
}

/// Watches every bucket from its current values on.
async fn watch(b: &Buckets) -> Result<Watches, String> {
    let mut watches = Watches::new();
    for (bucket, store) in &b.kv {
        let w = store
            .watch_with_history(">")
            .await
            .map_err(|e| format!("watching {bucket}: {e}"))?;
        watches.insert(*bucket, Box::pin(w));
    }
    Ok(watches)
}

/// One record to JetStream, waiting for its ack.
async fn publish(b: &Buckets, o: &Outgoing) -> Result<(), String> {
    match o {
        Outgoing::Kv { bucket, key, json } => {
            let store =
                b.kv.get(bucket)
                    .ok_or_else(|| format!("bucket {bucket} not open"))?;
            store
                .put(key, json.clone().into())
                .await
                .map(|_| ())
                .map_err(|e| format!("{bucket} put: {e}"))
        }
        Outgoing::Stream { subject, json } => {
            let ack =
                b.js.publish(subject.clone(), json.clone().into())
                    .await
                    .map_err(|e| format!("{subject}: {e}"))?;
            ack.await.map(|_| ()).map_err(|e| format!("{subject}: {e}"))
        }
    }
}
