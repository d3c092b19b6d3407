//! The fleet: hosts share credential sightings, agent presence, alerts and revocations on
//! NATS JetStream (KV buckets and a stream, see [`records`]), and each host judges the
//! cross-host rules from what it hears. There is no agentid server: the cluster is the
//! shared state, and a create-if-absent key makes one host the raiser of each incident.
//!
//! The daemon never waits on the fleet: it hands records to [`Fleet::submit`] (a bounded
//! queue, never blocking) and the [`link`] task owns the connection. Every record goes to
//! an on-disk spool first and leaves it only once NATS acknowledged it, so a fleet that is
//! down costs nothing but spool space (bounded; a full spool drops, counts and reports
//! the loss as `delivery-loss`).
pub mod anchors;
pub mod config;
mod link;
mod output;
pub mod presence;
pub mod records;
pub mod view;

use std::sync::{Arc, Mutex, RwLock};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};

pub use config::FleetConfig;
pub use output::FleetOutput;
pub use records::{FleetAlert, Outgoing, Presence, Revocation, Sighting};
pub use view::FleetView;

use crate::{
    identity::Registry,
    outputs::{DropNotice, DropReason, spool::Spool},
};

/// Records waiting for the link task; beyond this they are dropped and counted.
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Spool(#[from] crate::outputs::spool::SpoolError),
    /// The cluster did not answer, or answered with an error.
    #[error("fleet: {0}")]
    Nats(String),
}

/// What the fleet tells the daemon.
#[derive(Debug, Clone)]
pub enum Notice {
    /// This host claimed (or updated) a fleet incident: raise it locally.
    Raise(FleetAlert),
    /// A credential was revoked somewhere in the fleet.
    Revoked(Revocation),
    /// Fleet records were lost.
    Loss(DropNotice),
}

/// The daemon's handle on the fleet (cheap to clone).
#[derive(Debug, Clone)]
pub struct Fleet {
    host: String,
    heartbeat: std::time::Duration,
    tx: mpsc::Sender<Outgoing>,
    notices: mpsc::Sender<Notice>,
    view: Arc<RwLock<FleetView>>,
    registry: Arc<watch::Sender<Arc<Registry>>>,
    stop: Arc<Notify>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Agents this host last said were present (so their leaving is published too).
    present: Arc<Mutex<Vec<String>>>,
}

impl Fleet {
    /// Opens the spool under `state_dir/spool/fleet` and starts the link task. Returns the
    /// handle and the notices for the daemon's loop.
    pub fn start(
        config: &FleetConfig,
        state_dir: &std::path::Path,
        registry: Arc<Registry>,
    ) -> Result<(Self, mpsc::Receiver<Notice>), FleetError> {
        let host = config.host_name();
        let spool = Spool::open(
            &state_dir.join("spool").join("fleet"),
            config.spool_max_bytes,
        )?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (notices, notices_rx) = mpsc::channel(256);
        let view = Arc::new(RwLock::new(FleetView {
            host: host.clone(),
            ..FleetView::default()
        }));
        let (registry, registry_rx) = watch::channel(registry);
        let stop = Arc::new(Notify::new());
        let link = link::Link::new(
            config.clone(),
            host.clone(),
            spool,
            rx,
            Arc::clone(&view),
            notices.clone(),
            registry_rx,
        );
        let task = tokio::spawn(link.run(Arc::clone(&stop)));
        Ok((
            Self {
                host,
                heartbeat: config.heartbeat,
                tx,
                notices,
                view,
                registry: Arc::new(registry),
                stop,
                task: Arc::new(Mutex::new(Some(task))),
                present: Arc::new(Mutex::new(Vec::new())),
            },
            notices_rx,
        ))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn heartbeat(&self) -> std::time::Duration {
        self.heartbeat
    }

    /// Queues a record for the fleet; never blocks. A full queue drops it, counted and
    /// reported.
    pub fn submit(&self, record: Outgoing) {
        if let Err(mpsc::error::TrySendError::Full(r)) = self.tx.try_send(record) {
            let dropped_total = {
                let mut v = self
                    .view
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                v.stats.dropped += 1;
                v.stats.dropped
            };
            let _ = self.notices.try_send(Notice::Loss(DropNotice {
                sink: "fleet".into(),
                uid: r.to_spool().uid,
                reason: DropReason::QueueFull,
                dropped_total,
            }));
        }
    }

    /// The fleet as last heard.
    pub fn view(&self) -> std::sync::RwLockReadGuard<'_, FleetView> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The registry changed: the cross-host rules read policies from it.
    pub fn set_registry(&self, registry: Arc<Registry>) {
        self.registry.send_replace(registry);
    }

    /// Publishes this host's agent presence (and the leaving of agents no longer here).
    pub fn publish_presence(&self, now: Vec<Presence>) {
        let mut last = self
            .present
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let heartbeat_ms = records::now_ms();
        for gone in last.iter().filter(|a| !now.iter().any(|p| &p.agent == *a)) {
            let p = Presence {
                agent: gone.clone(),
                host: self.host.clone(),
                sessions: 0,
                processes: 0,
                heartbeat_ms,
            };
            if let Some(o) = Outgoing::kv(records::PRESENCE, p.key(), &p) {
                self.submit(o);
            }
        }
        *last = now.iter().map(|p| p.agent.clone()).collect();
        for p in now {
            if let Some(o) = Outgoing::kv(records::PRESENCE, p.key(), &p) {
                self.submit(o);
            }
        }
    }

    /// Stops the link task: a last attempt to deliver what is spooled (bounded), then the
    /// spool keeps the rest for the next start.
    pub async fn close(&self) {
        self.stop.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
        {
            tracing::warn!("the fleet link did not stop within 5 s; its spool keeps the rest");
        }
    }
}
