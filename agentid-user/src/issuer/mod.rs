//! The issuer: a SPIFFE Workload API (`[issuer]`, off by default) that hands a registered
//! agent's process a JWT-SVID for the identity agentid attested from the kernel — bound to
//! its session, expiring with it, carrying the `acting_for` chain.
//!
//! - [`pb`]: the gRPC service and messages, generated from `proto/workload.proto`;
//! - [`attest`]: who the caller is (peer credentials, pidfd, the process table);
//! - [`keys`]: one signing key per live session, and the JWT bundle;
//! - [`tokens`]: claims, minting, recognising agentid's own tokens;
//! - [`recognise`]: the issuer as credential detection asks it (its tokens wherever seen);
//! - [`service`]: the RPCs, and the task that retires the keys of ended sessions.
//!
//! It runs inside the daemon (it needs the process table) on its own socket and tasks,
//! reading the table through the API's snapshot ([`crate::state::Shared::view`]), so it
//! never holds up the event loop for more than one copy of the table.
pub mod attest;
pub mod keys;
#[expect(clippy::pedantic, unused_qualifications, reason = "generated code")]
pub mod pb;
pub mod recognise;
pub mod service;
pub mod tokens;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use service::serve;

use crate::{
    config,
    credentials::{FingerprintKey, TokenOrigin},
};

/// Issued tokens kept for `agentid tokens` (the oldest go first).
const ISSUED_KEPT: usize = 4096;

/// One issued token as the API shows it: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub jti: String,
    pub agent: String,
    pub session: String,
    pub aud: String,
    /// Seconds since the epoch.
    pub issued: u64,
    pub expires: u64,
    pub kid: String,
    /// The token's keyed fingerprint (`jwt:…`, as `agentid credentials` shows its sightings).
    pub fingerprint: String,
    /// `live`, `expired` or `session-ended` (filled in when listed).
    #[serde(default)]
    pub state: String,
}

/// The issuer's state, shared by its RPCs, its key reaper and the API.
#[derive(Debug)]
pub struct Issuer {
    pub ttl: Duration,
    pub audiences: Vec<String>,
    pub socket: std::path::PathBuf,
    pub(crate) keys: Mutex<keys::KeyRing>,
    issued: Mutex<VecDeque<IssuedToken>>,
    /// Trust domain (`spiffe://td`) → JWKS; every `FetchJWTBundles` stream follows it.
    bundles: watch::Sender<Arc<BTreeMap<String, Vec<u8>>>>,
    /// Trust domains that ever had a key: they stay in the set (with no keys) once their
    /// last session ends, which tells clients every key was withdrawn.
    domains: Mutex<Vec<String>>,
    /// The credential fingerprint key: a token is fingerprinted like any credential.
    pub(crate) fingerprints: FingerprintKey,
    /// Tokens issued or recognised, by fingerprint: seen again, they need no signature check.
    known: Mutex<HashMap<[u8; 32], TokenOrigin>>,
}

/// The issuer's line in `agentid status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerStatus {
    pub socket: String,
    pub ttl_secs: u64,
    pub live_keys: usize,
    pub retired_keys: usize,
    pub issued: usize,
}

impl Issuer {
    /// `fingerprints`: the key credentials are fingerprinted with (the host's or the fleet's).
    pub fn new(config: &config::Issuer, fingerprints: FingerprintKey) -> Self {
        let config::Issuer {
            enabled: _,
            socket,
            ttl,
            audiences,
        } = config;
        Self {
            ttl: *ttl,
            audiences: audiences.clone(),
            socket: socket.clone(),
            keys: Mutex::new(keys::KeyRing::default()),
            issued: Mutex::new(VecDeque::new()),
            bundles: watch::Sender::new(Arc::new(BTreeMap::new())),
            domains: Mutex::new(Vec::new()),
            fingerprints,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub fn status(&self) -> IssuerStatus {
        let (live_keys, retired_keys) = self
            .keys
            .lock()
            .map(|k| (k.live_count(), k.retired_count()))
            .unwrap_or_default();
        IssuerStatus {
            socket: self.socket.display().to_string(),
            ttl_secs: self.ttl.as_secs(),
            live_keys,
            retired_keys,
            issued: self.issued.lock().map(|i| i.len()).unwrap_or_default(),
        }
    }

    /// Issued tokens, newest last, with their state as of now.
    pub fn issued(&self, agent: Option<&str>) -> Vec<IssuedToken> {
        let now = tokens::unix(SystemTime::now());
        let Ok(list) = self.issued.lock() else {
            return Vec::new();
        };
        let keys = self.keys.lock().ok();
        list.iter()
            .filter(|t| agent.is_none_or(|a| a == t.agent))
            .map(|t| {
                let mut t = t.clone();
                let ended = keys.as_ref().is_some_and(|k| !k.is_live(&t.session));
                t.state = if ended {
                    "session-ended"
                } else if t.expires <= now {
                    "expired"
                } else {
                    "live"
                }
                .into();
                t
            })
            .collect()
    }

    fn record(&self, t: IssuedToken) {
        tracing::info!(
            jti = %t.jti, agent = %t.agent, session = %t.session, aud = %t.aud,
            exp = t.expires, "issued a JWT-SVID"
        );
        if let Ok(mut list) = self.issued.lock() {
            if list.len() >= ISSUED_KEPT {
                list.pop_front();
            }
            list.push_back(t);
        }
    }

    /// Publishes the bundle set as the key ring has it now.
    fn publish(&self, ring: &keys::KeyRing) {
        let Ok(mut domains) = self.domains.lock() else {
            return;
        };
        for td in ring.trust_domains() {
            if !domains.contains(&td) {
                domains.push(td);
            }
        }
        let set: BTreeMap<String, Vec<u8>> = domains
            .iter()
            .map(|td| (td.clone(), ring.bundle(td)))
            .collect();
        self.bundles.send_if_modified(|cur| {
            if **cur == set {
                return false;
            }
            *cur = Arc::new(set);
            true
        });
    }
}

/// `spiffe://td/path` → `spiffe://td`.
pub fn trust_domain(id: &str) -> String {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    let td = rest.split('/').next().unwrap_or(rest);
    format!("spiffe://{td}")
}
