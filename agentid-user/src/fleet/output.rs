//! The fan-out's fleet output: credential sightings and this host's alerts, as records.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Fleet, Outgoing, Sighting, records};
use crate::{
    detect::{Alert, CredentialSighting},
    outputs::fanout::Output,
};

/// A sighting already published is published again (its `last_seen`) at most this often.
const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct FleetOutput {
    fleet: Fleet,
    /// Per sighting key: when it was last published, and its first sighting.
    published: HashMap<String, (Instant, u64)>,
}

impl FleetOutput {
    pub fn new(fleet: Fleet) -> Self {
        Self {
            fleet,
            published: HashMap::new(),
        }
    }
}

impl Output for FleetOutput {
    fn credential(&mut self, c: &CredentialSighting) {
        let host = self.fleet.host().to_owned();
        let seen_ms = records::ms(c.time);
        let mut s = Sighting {
            hmac: c.hmac.clone(),
            fingerprint: c.fingerprint.clone(),
            kind: c.kind.clone(),
            agent: c.agent.to_string(),
            host,
            first_seen_ms: seen_ms,
            last_seen_ms: seen_ms,
        };
        let key = s.key();
        let now = Instant::now();
        let first = match self.published.get(&key) {
            Some((last, _)) if now.duration_since(*last) < REFRESH => return,
            Some((_, first)) => *first,
            // A sighting from an earlier run keeps its first time.
            None => self
                .fleet
                .view()
                .sightings
                .get(&key)
                .map_or(seen_ms, |old| old.first_seen_ms.min(seen_ms)),
        };
        s.first_seen_ms = first;
        self.published.insert(key.clone(), (now, first));
        if let Some(o) = Outgoing::kv(records::SIGHTINGS, key, &s) {
            self.fleet.submit(o);
        }
    }

    fn alert(&mut self, alert: &Alert, json: &Arc<str>) {
        self.fleet.submit(Outgoing::Stream {
            subject: format!("agentid.alert.{}.{}", self.fleet.host(), alert.rule),
            json: json.to_string(),
        });
    }
}
