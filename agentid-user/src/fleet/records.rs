//! What hosts share, as it travels: the records, their buckets and keys. Every record
//! names credentials by keyed fingerprint only; a secret has no field to go in.
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Credential sightings: key `<hmac hex>.<host>.<agent key>`, last value per key.
pub const SIGHTINGS: &str = "agentid_sightings";
/// Agent presence: key `<agent key>.<host>`, refreshed every heartbeat.
pub const PRESENCE: &str = "agentid_presence";
/// Fleet alerts, claimed once: key `<rule>.<subject hash>`.
pub const FLEET_ALERTS: &str = "agentid_fleet_alerts";
/// Revoked credentials: key `<hex prefix>`.
pub const REVOCATIONS: &str = "agentid_revocations";
/// Each host's own alerts, as raised: stream `AGENTID_ALERTS`, subjects
/// `agentid.alert.<host>.<rule>`.
pub const ALERT_STREAM: &str = "AGENTID_ALERTS";
pub const ALERT_SUBJECTS: &str = "agentid.alert.>";
/// Each host's signed audit checkpoints (anchors off the host): stream `AGENTID_AUDIT`,
/// subjects `agentid.audit.<host>`.
pub const AUDIT_STREAM: &str = "AGENTID_AUDIT";
pub const AUDIT_SUBJECTS: &str = "agentid.audit.>";

/// A host name or other subject token: no `.`, `*`, `>` or whitespace.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An agent's SPIFFE ID as a key token (IDs hold `:`, `/` and `.`).
pub fn agent_key(agent: &str) -> String {
    hex::encode(&Sha256::digest(agent.as_bytes())[..8])
}

pub fn now_ms() -> u64 {
    ms(SystemTime::now())
}

pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A credential seen in use by an agent on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The whole HMAC, lowercase hex: what hosts compare.
    pub hmac: String,
    /// `kind:first-12-hex`, as every local command shows it.
    pub fingerprint: String,
    pub kind: String,
    pub agent: String,
    pub host: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

impl Sighting {
    pub fn key(&self) -> String {
        format!("{}.{}.{}", self.hmac, self.host, agent_key(&self.agent))
    }
}

/// An agent live on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub agent: String,
    pub host: String,
    pub sessions: usize,
    pub processes: usize,
    pub heartbeat_ms: u64,
}

impl Presence {
    pub fn key(&self) -> String {
        format!("{}.{}", agent_key(&self.agent), self.host)
    }
}

/// A host and an agent in a fleet alert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Holder {
    pub agent: String,
    pub host: String,
}

/// An alert about the fleet (several hosts), raised once by the host that claimed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetAlert {
    pub rule: String,
    pub severity: String,
    pub title: String,
    pub description: String,
    /// The credential, for `credential-reuse`.
    pub fingerprint: Option<String>,
    pub holders: Vec<Holder>,
    /// The host that claimed it (and raised it to its sinks).
    pub raised_by: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub count: u64,
}

impl FleetAlert {
    /// The claim key: one per rule and subject, whoever sees it first.
    pub fn key(rule: &str, subject: &str) -> String {
        format!(
            "{rule}.{}",
            hex::encode(&Sha256::digest(subject.as_bytes())[..12])
        )
    }

    pub fn hosts(&self) -> Vec<&str> {
        let mut h: Vec<&str> = self.holders.iter().map(|h| h.host.as_str()).collect();
        h.sort_unstable();
        h.dedup();
        h
    }
}

/// A credential revoked somewhere in the fleet, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// As the operator typed it (`openai:3f9a0c1d2e4b`).
    pub prefix: String,
    /// The API peer that asked (`uid 0`), as the daemon saw it.
    pub by: String,
    pub host: String,
    pub time_ms: u64,
}

/// One record for the fleet, as spooled: where it goes and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A put into a KV bucket.
    Kv {
        bucket: &'static str,
        key: String,
        json: String,
    },
    /// A message on a stream (alerts, audit anchors): JetStream files it by subject.
    Stream { subject: String, json: String },
}

impl Outgoing {
    pub fn kv(bucket: &'static str, key: String, value: &impl Serialize) -> Option<Self> {
        Some(Self::Kv {
            bucket,
            key,
            json: serde_json::to_string(value).ok()?,
        })
    }

    /// The spool's form: the destination as `uid`, the JSON as payload.
    pub fn to_spool(&self) -> crate::outputs::spool::Record {
        match self {
            Self::Kv { bucket, key, json } => crate::outputs::spool::Record {
                uid: format!("kv/{bucket}/{key}"),
                payload: json.clone(),
            },
            Self::Stream { subject, json } => crate::outputs::spool::Record {
                uid: format!("stream/{subject}"),
                payload: json.clone(),
            },
        }
    }

    /// Back from the spool; `None` for a record this version does not know.
    pub fn from_spool(r: &crate::outputs::spool::Record) -> Option<Self> {
        let (kind, rest) = r.uid.split_once('/')?;
        match kind {
            "kv" => {
                let (bucket, key) = rest.split_once('/')?;
                let bucket = [SIGHTINGS, PRESENCE, FLEET_ALERTS, REVOCATIONS]
                    .into_iter()
                    .find(|b| *b == bucket)?;
                Some(Self::Kv {
                    bucket,
                    key: key.to_owned(),
                    json: r.payload.clone(),
                })
            }
            "stream" => Some(Self::Stream {
                subject: rest.to_owned(),
                json: r.payload.clone(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_round_trip() {
        let o = Outgoing::kv(SIGHTINGS, "ab.h1.cd".into(), &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(Outgoing::from_spool(&o.to_spool()), Some(o));
        let a = Outgoing::Stream {
            subject: "agentid.alert.h1.credential-reuse".into(),
            json: "{}".into(),
        };
        assert_eq!(Outgoing::from_spool(&a.to_spool()), Some(a));
        let unknown = crate::outputs::spool::Record {
            uid: "kv/other/x".into(),
            payload: String::new(),
        };
        assert_eq!(Outgoing::from_spool(&unknown), None);
    }

    #[test]
    fn keys_are_valid_kv_keys() {
        let s = Sighting {
            hmac: "ab".repeat(32),
            fingerprint: "openai:abababababab".into(),
            kind: "openai".into(),
            agent: "spiffe://example.org/agent/a".into(),
            host: "web-1".into(),
            first_seen_ms: 1,
            last_seen_ms: 2,
        };
        let k = s.key();
        assert!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{k}"
        );
        assert!(valid_token("web-1") && !valid_token("a.b") && !valid_token(""));
    }
}
