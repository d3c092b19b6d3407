//! Where everything the daemon produces goes: one list of [`Output`]s (as Tetragon's
//! listeners), each told about every attributed event and every alert, and each deciding
//! what it keeps. Adding an output is one `impl Output` and one line in the daemon.
//!
//! The outputs, in the order they are told: the store (every event, every incident state,
//! credential sightings), the alerts file, the audit log, the SIEM sinks (alerts, and
//! activity for sinks with `include_activity`) and the live followers of the API.
//!
//! Incident updates are throttled here, once for all outputs: the store gets every state
//! at once ([`Output::alert_state`]); the others get the first sighting at once and then
//! at most one update per incident per [`UPDATE_EVERY`] ([`Output::alert`]), so a
//! condition that repeats every second updates a count instead of flooding a SIEM.
use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io::Write as _,
    path::Path,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::broadcast;

use super::SinkManager;
use crate::{
    attribution::AttributedEvent,
    audit::AuditWriter,
    detect::{Alert, CredentialSighting},
    store::{StoreOp, Writer},
};

/// How often an incident's updates (count, last seen) are re-published to the outputs
/// other than the store.
pub const UPDATE_EVERY: Duration = Duration::from_secs(30);

/// A shutdown step that may wait (flushing a queue, delivering a spool).
pub type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An event encoded once for every output: its canonical text (sorted keys, no
/// whitespace; the audit log's body as is, the followers' line), written straight from
/// the event, and the spans of its top-level members in that text (the store's split,
/// without parsing).
#[derive(Debug, Clone)]
pub struct EventJson {
    pub text: Arc<str>,
    pub members: Vec<crate::audit::Member>,
}

impl EventJson {
    pub fn new(event: &AttributedEvent) -> serde_json::Result<Self> {
        // An event is ~650 bytes: one allocation, no regrowth.
        let mut out = Vec::with_capacity(1024);
        let members = if let Ok(members) = crate::audit::write_direct(event, &mut out) {
            members
        } else {
            // What only `to_value` can take (a map key that is a float): through the
            // `Value`, whose keys are strings, into the same form.
            out.clear();
            let value = serde_json::to_value(event)?;
            crate::audit::write_direct(&value, &mut out).map_err(serde::ser::Error::custom)?
        };
        let text = String::from_utf8(out).map_err(serde::ser::Error::custom)?;
        Ok(Self {
            text: text.into(),
            members,
        })
    }
}

/// One destination. Every method has a default that ignores the item, so an output says
/// only what it takes.
pub trait Output: Send + fmt::Debug {
    /// An attributed event (secrets already redacted), with its JSON forms.
    fn event(&mut self, _event: &AttributedEvent, _json: &EventJson) {}
    /// Every new state of an incident, as it happens.
    fn alert_state(&mut self, _alert: &Alert, _json: &Arc<str>) {}
    /// A published incident state: the first sighting, then throttled updates.
    fn alert(&mut self, _alert: &Alert, _json: &Arc<str>) {}
    /// A credential seen in use (its fingerprint, never the value).
    fn credential(&mut self, _sighting: &CredentialSighting) {}
    /// A JWT-SVID the issuer minted: its jti and bindings, never the token.
    fn token_issued(&mut self, _record: &serde_json::Value) {}
    /// Flushes and closes at shutdown.
    fn close(self: Box<Self>) -> Closing {
        Box::pin(async {})
    }
}

/// The list of outputs and the incident-update throttle in front of them.
#[derive(Debug, Default)]
pub struct Fanout {
    outputs: Vec<Box<dyn Output>>,
    /// Per incident: when it was last published, and a held-back newer state.
    updates: HashMap<String, (Instant, Option<Alert>)>,
}

impl Fanout {
    /// An issuance to every output that keeps it (the audit log).
    pub fn token_issued(&mut self, record: &serde_json::Value) {
        for o in &mut self.outputs {
            o.token_issued(record);
        }
    }

    pub fn new(outputs: Vec<Box<dyn Output>>) -> Self {
        Self {
            outputs,
            updates: HashMap::new(),
        }
    }

    pub fn event(&mut self, event: &AttributedEvent) {
        let json = match EventJson::new(event) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "unserialisable event");
                return;
            }
        };
        for o in &mut self.outputs {
            o.event(event, &json);
        }
    }

    pub fn credential(&mut self, sighting: &CredentialSighting) {
        for o in &mut self.outputs {
            o.credential(sighting);
        }
    }

    /// An alert, new or updated: every output's `alert_state` at once, `alert` as
    /// [`UPDATE_EVERY`] allows. Returns whether it was published.
    pub fn alert(&mut self, alert: &Alert) -> bool {
        let Some(json) = alert_json(alert) else {
            return false;
        };
        for o in &mut self.outputs {
            o.alert_state(alert, &json);
        }
        let now = Instant::now();
        let publish = match self.updates.get_mut(&alert.uid) {
            Some((last, pending)) if now.duration_since(*last) < UPDATE_EVERY => {
                *pending = Some(alert.clone());
                false
            }
            Some((last, pending)) => {
                *last = now;
                *pending = None;
                true
            }
            None => {
                self.updates.insert(alert.uid.clone(), (now, None));
                true
            }
        };
        if publish {
            self.publish(alert, &json);
        }
        publish
    }

    /// Publishes held-back updates that are due (all of them when `all`, at shutdown).
    /// Returns how many.
    pub fn flush_updates(&mut self, all: bool) -> u64 {
        let now = Instant::now();
        let due: Vec<Alert> = self
            .updates
            .values_mut()
            .filter(|(last, pending)| {
                pending.is_some() && (all || now.duration_since(*last) >= UPDATE_EVERY)
            })
            .filter_map(|(last, pending)| {
                *last = now;
                pending.take()
            })
            .collect();
        let mut n = 0;
        for alert in due {
            if let Some(json) = alert_json(&alert) {
                self.publish(&alert, &json);
                n += 1;
            }
        }
        n
    }

    fn publish(&mut self, alert: &Alert, json: &Arc<str>) {
        tracing::warn!(rule = alert.rule, uid = %alert.uid, count = alert.count, "{}", alert.title);
        for o in &mut self.outputs {
            o.alert(alert, json);
        }
    }

    /// Publishes what is held back, then closes every output in order.
    pub async fn close(mut self) {
        self.flush_updates(true);
        for o in self.outputs {
            o.close().await;
        }
    }
}

fn alert_json(alert: &Alert) -> Option<Arc<str>> {
    match serde_json::to_string(alert) {
        Ok(j) => Some(j.into()),
        Err(e) => {
            tracing::error!(error = %e, "unserialisable alert");
            None
        }
    }
}

pub fn epoch_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The store: every event, every incident state (upserted by uid), credential sightings.
#[derive(Debug)]
pub struct StoreOutput {
    writer: Writer,
    contexts: crate::store::ProcessContexts,
}

impl StoreOutput {
    pub fn new(writer: Writer) -> Self {
        Self {
            writer,
            contexts: crate::store::ProcessContexts::default(),
        }
    }
}

impl Output for StoreOutput {
    fn event(&mut self, a: &AttributedEvent, json: &EventJson) {
        let root = a
            .session
            .as_ref()
            .and(a.lineage.last().or(a.exec_id.as_ref()))
            .map(|id| id.as_str().to_owned());
        self.writer.send(StoreOp::Event {
            ts_ns: epoch_ns(a.event.time),
            kind: a.event.kind.as_str(),
            pid: a.event.pid,
            exec_id: a.exec_id.as_ref().map(|id| id.as_str().to_owned()),
            agent: a.agent.as_ref().map(|ag| ag.id.clone()),
            session: a.session.clone(),
            root_exec_id: root,
            body: Arc::clone(&json.text),
            split: self.contexts.split(
                &json.text,
                &json.members,
                epoch_ns(a.event.time),
                a.event.kind.as_str(),
                a.event.pid,
            ),
        });
    }

    fn alert_state(&mut self, alert: &Alert, json: &Arc<str>) {
        let agents: Vec<&str> = alert.agents.iter().map(|a| a.id.as_str()).collect();
        self.writer.send(StoreOp::Alert {
            uid: alert.uid.clone(),
            rule: alert.rule.to_owned(),
            severity: alert.severity.as_str().to_owned(),
            first_ns: epoch_ns(alert.first_seen),
            last_ns: epoch_ns(alert.last_seen),
            count: alert.count,
            agents: agents.join(" "),
            body: json.to_string(),
        });
    }

    fn credential(&mut self, c: &CredentialSighting) {
        self.writer.send(StoreOp::Credential {
            fingerprint: c.fingerprint.clone(),
            agent: c.agent.to_string(),
            kind: c.kind.clone(),
            ts_ns: epoch_ns(c.time),
            source: c.source.clone(),
        });
    }
}

/// Alerts as JSON lines: always written, the sink of last resort.
#[derive(Debug)]
pub struct AlertsFile(std::fs::File);

impl AlertsFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Self)
    }
}

impl Output for AlertsFile {
    fn alert(&mut self, _alert: &Alert, json: &Arc<str>) {
        if let Err(e) = writeln!(self.0, "{json}") {
            tracing::error!(error = %e, "writing the alerts file");
        }
    }
}

/// The tamper-evident audit trail: events and published alerts; closed with a final
/// signed checkpoint.
#[derive(Debug)]
pub struct AuditOutput(pub AuditWriter);

impl Output for AuditOutput {
    fn event(&mut self, _event: &AttributedEvent, json: &EventJson) {
        self.0.event_text(&json.text);
    }

    fn alert(&mut self, alert: &Alert, _json: &Arc<str>) {
        self.0.alert(alert);
    }

    fn token_issued(&mut self, record: &serde_json::Value) {
        self.0.other("token-issued", record.clone());
    }

    fn close(self: Box<Self>) -> Closing {
        let writer = self.0;
        Box::pin(async move {
            if let Err(e) = tokio::task::spawn_blocking(move || writer.close()).await {
                tracing::error!(error = %e, "closing the audit log");
            }
        })
    }
}

/// The SIEM sinks: published alerts, and activity for the sinks that ask for it.
#[derive(Debug)]
pub struct SinksOutput {
    pub sinks: SinkManager,
    /// How long shutdown keeps delivering what is spooled.
    pub grace: Duration,
}

impl Output for SinksOutput {
    fn event(&mut self, event: &AttributedEvent, _json: &EventJson) {
        self.sinks.submit_activity(event);
    }

    fn alert(&mut self, alert: &Alert, _json: &Arc<str>) {
        self.sinks.submit_alert(alert);
    }

    fn close(self: Box<Self>) -> Closing {
        Box::pin(self.sinks.shutdown(self.grace))
    }
}

/// One live item (event or alert) for the API's followers, serialised once.
#[derive(Debug, Clone)]
pub struct Live {
    pub agent: Option<String>,
    /// Event kind, or alert rule.
    pub kind: String,
    pub json: Arc<str>,
}

/// The API's followers (`events -f`, `alerts -f`).
#[derive(Debug)]
pub struct Followers {
    pub events: broadcast::Sender<Live>,
    pub alerts: broadcast::Sender<Live>,
}

impl Output for Followers {
    fn event(&mut self, a: &AttributedEvent, json: &EventJson) {
        // Nobody follows (the usual case): no item to build.
        if self.events.receiver_count() == 0 {
            return;
        }
        let _ = self.events.send(Live {
            agent: a.agent.as_ref().map(|ag| ag.id.clone()),
            kind: a.event.kind.as_str().to_owned(),
            json: Arc::clone(&json.text),
        });
    }

    fn alert(&mut self, alert: &Alert, json: &Arc<str>) {
        // One live item per involved agent, so `alerts -f --agent X` sees it.
        if alert.agents.is_empty() {
            let _ = self.alerts.send(Live {
                agent: None,
                kind: alert.rule.to_owned(),
                json: Arc::clone(json),
            });
        }
        for a in &alert.agents {
            let _ = self.alerts.send(Live {
                agent: Some(a.id.to_string()),
                kind: alert.rule.to_owned(),
                json: Arc::clone(json),
            });
        }
    }
}
