//! The fleet as this host last heard it (the watched buckets), and what it implies: the
//! cross-host incidents. Pure: the link feeds it, the API reads it.
use std::collections::BTreeMap;

use serde::Serialize;

use super::records::{FleetAlert, Holder, Presence, Revocation, Sighting};

/// Delivery counters, for `status` and `fleet hosts`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FleetStats {
    /// Records NATS acknowledged.
    pub published: u64,
    /// Records written to the spool.
    pub spooled: u64,
    /// Records lost (spool or queue full).
    pub dropped: u64,
    /// Bytes spooled and not yet acknowledged.
    pub pending_bytes: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct FleetView {
    pub host: String,
    /// Buckets open and watched (NATS reachable).
    pub connected: bool,
    pub stats: FleetStats,
    pub sightings: BTreeMap<String, Sighting>,
    pub presence: BTreeMap<String, Presence>,
    pub alerts: BTreeMap<String, FleetAlert>,
    pub revocations: BTreeMap<String, Revocation>,
}

impl FleetView {
    /// Who holds the credential `hmac` (agent, host; registered agents only, sorted), and
    /// whether that is a fleet `credential-reuse` this host may raise: two agents on two
    /// hosts, one of them this host.
    pub fn reuse(&self, hmac: &str) -> Option<(String, Vec<Holder>)> {
        let mut holders: Vec<Holder> = Vec::new();
        let mut fingerprint = None;
        for s in self
            .sightings
            .values()
            .filter(|s| s.hmac == hmac && s.agent != crate::detect::Principal::UNREGISTERED)
        {
            fingerprint.get_or_insert_with(|| s.fingerprint.clone());
            holders.push(Holder {
                agent: s.agent.clone(),
                host: s.host.clone(),
            });
        }
        holders.sort();
        holders.dedup();
        let cross = holders.iter().any(|a| {
            holders
                .iter()
                .any(|b| a.agent != b.agent && a.host != b.host)
        });
        let mine = holders.iter().any(|h| h.host == self.host);
        (cross && mine).then(|| (fingerprint.unwrap_or_default(), holders))
    }

    /// Where `agent` is live now: presence with processes, heard within `fresh_ms`.
    pub fn live(&self, agent: &str, now_ms: u64, fresh_ms: u64) -> Vec<Holder> {
        let mut v: Vec<Holder> = self
            .presence
            .values()
            .filter(|p| p.agent == agent && p.processes > 0)
            .filter(|p| now_ms.saturating_sub(p.heartbeat_ms) <= fresh_ms)
            .map(|p| Holder {
                agent: p.agent.clone(),
                host: p.host.clone(),
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Agents live on this host now.
    pub fn live_here(&self, now_ms: u64, fresh_ms: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .presence
            .values()
            .filter(|p| p.host == self.host && p.processes > 0)
            .filter(|p| now_ms.saturating_sub(p.heartbeat_ms) <= fresh_ms)
            .map(|p| p.agent.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(hmac: &str, agent: &str, host: &str) -> Sighting {
        Sighting {
            hmac: hmac.into(),
            fingerprint: format!("openai:{}", &hmac[..12]),
            kind: "openai".into(),
            agent: agent.into(),
            host: host.into(),
            first_seen_ms: 1,
            last_seen_ms: 1,
        }
    }

    fn view(host: &str, s: &[Sighting]) -> FleetView {
        FleetView {
            host: host.into(),
            sightings: s.iter().map(|s| (s.key(), s.clone())).collect(),
            ..FleetView::default()
        }
    }

    #[test]
    fn reuse_needs_two_agents_on_two_hosts_one_here() {
        let h = "a".repeat(64);
        let (a, b) = ("spiffe://x/a", "spiffe://x/b");
        let v = view("h1", &[sighting(&h, a, "h1"), sighting(&h, b, "h2")]);
        let (fp, holders) = v.reuse(&h).unwrap();
        assert_eq!(fp, "openai:aaaaaaaaaaaa");
        assert_eq!(holders.len(), 2);
        // The same agent on two hosts: one identity, not reuse.
        assert!(
            view("h1", &[sighting(&h, a, "h1"), sighting(&h, a, "h2")])
                .reuse(&h)
                .is_none()
        );
        // Two agents on one host: the local rule's, not the fleet's.
        assert!(
            view("h1", &[sighting(&h, a, "h1"), sighting(&h, b, "h1")])
                .reuse(&h)
                .is_none()
        );
        // Not held here: a host that holds one raises it.
        assert!(
            view("h3", &[sighting(&h, a, "h1"), sighting(&h, b, "h2")])
                .reuse(&h)
                .is_none()
        );
        // Unregistered holders are not agents.
        assert!(
            view(
                "h1",
                &[sighting(&h, a, "h1"), sighting(&h, "unregistered", "h2")]
            )
            .reuse(&h)
            .is_none()
        );
    }

    #[test]
    fn stale_presence_is_not_live() {
        let mut v = FleetView {
            host: "h1".into(),
            ..FleetView::default()
        };
        for (host, hb, procs) in [("h1", 1000, 1), ("h2", 100, 1), ("h3", 1000, 0)] {
            let p = Presence {
                agent: "spiffe://x/a".into(),
                host: host.into(),
                sessions: 1,
                processes: procs,
                heartbeat_ms: hb,
            };
            v.presence.insert(p.key(), p);
        }
        let live = v.live("spiffe://x/a", 1100, 500);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].host, "h1");
        assert_eq!(v.live_here(1100, 500), vec!["spiffe://x/a".to_owned()]);
    }
}
