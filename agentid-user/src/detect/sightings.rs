//! Who has held each credential: per fingerprint, per principal, the first sighting and
//! every place it was seen. The credential rules read it; the store keeps the sightings.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::SystemTime,
};

use super::{AlertAgent, CredentialEvidence, ProcessEvidence, alert::Principal, seen::Seen};
use crate::{
    credentials::{FingerprintPrefix, Observation, Source},
    identity::Registry,
};

/// A credential sighting for the store (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSighting {
    pub fingerprint: String,
    /// The whole HMAC, hex: what fleet hosts compare.
    pub hmac: String,
    pub kind: String,
    pub agent: Principal,
    pub source: String,
    pub time: SystemTime,
}

#[derive(Debug)]
struct Holder {
    first: SystemTime,
    agent: AlertAgent,
    process: ProcessEvidence,
    seen_as: BTreeSet<String>,
}

/// One credential as the rules see it right after a sighting.
#[derive(Debug)]
pub struct CredentialView<'a> {
    pub observation: &'a Observation,
    /// When this principal first held it.
    pub first_seen_by_this: SystemTime,
    /// The credential as evidence: every place any holder was seen with it.
    pub evidence: CredentialEvidence,
    /// Every holder (registered agents by id, then `unregistered`), with its first process.
    pub holders: Vec<(Principal, AlertAgent, ProcessEvidence)>,
    /// Revoked by `agentid credentials revoke`.
    pub revoked: bool,
    /// Every pair of registered holders declared `credentials.shared_with` (either way).
    pub all_shared: bool,
}

impl CredentialView<'_> {
    pub fn registered(&self) -> impl Iterator<Item = &(Principal, AlertAgent, ProcessEvidence)> {
        self.holders.iter().filter(|(p, ..)| p.is_registered())
    }
}

#[derive(Debug, Default)]
pub struct Sightings {
    by_fingerprint: HashMap<[u8; 32], BTreeMap<Principal, Holder>>,
    revoked: Vec<FingerprintPrefix>,
    /// `(a, b)`: agent a declared `credentials.shared_with = [b]`.
    shared: HashSet<(String, String)>,
}

pub(super) fn source_label(s: &Source) -> String {
    match s {
        Source::Env { name } => format!("env:{name}"),
        Source::Arg {
            index,
            flag: Some(f),
        } => format!("arg:{index}:{f}"),
        Source::Arg { index, flag: None } => format!("arg:{index}"),
        Source::File { path } => format!("file:{}", path.display()),
        Source::Tls { host, header } => format!("tls:{host} {header}"),
    }
}

impl Sightings {
    pub fn revoke(&mut self, prefix: FingerprintPrefix) {
        self.revoked.push(prefix);
    }

    /// Refreshes the `shared_with` exemptions from the registry (on load and reload).
    pub fn set_registry(&mut self, registry: &Registry) {
        self.shared = registry
            .agents()
            .iter()
            .flat_map(|a| {
                a.credentials
                    .shared_with
                    .iter()
                    .map(move |b| (a.id.as_str().to_owned(), b.as_str().to_owned()))
            })
            .collect();
    }

    /// Records that `seen`'s principal holds `o`; returns the store's sighting and the
    /// credential's state for the rules.
    pub fn record<'o>(
        &mut self,
        seen: &Seen<'_>,
        o: &'o Observation,
    ) -> (CredentialSighting, CredentialView<'o>) {
        let principal = seen.principal();
        let now = seen.event.event.time;
        let label = source_label(&o.source);
        let sighting = CredentialSighting {
            fingerprint: o.fingerprint.to_string(),
            hmac: o.fingerprint.full_hex(),
            kind: o.kind.to_string(),
            agent: principal.clone(),
            source: label.clone(),
            time: now,
        };
        let holders = self.by_fingerprint.entry(o.fingerprint.hmac).or_default();
        let holder = holders.entry(principal).or_insert_with(|| Holder {
            first: now,
            agent: seen.alert_agent(),
            process: seen.process(),
            seen_as: BTreeSet::new(),
        });
        holder.seen_as.insert(label);
        let first_seen_by_this = holder.first;
        let seen_as: BTreeSet<&String> = holders.values().flat_map(|h| &h.seen_as).collect();
        let evidence = CredentialEvidence {
            fingerprint: sighting.fingerprint.clone(),
            kind: sighting.kind.clone(),
            seen_as: seen_as.into_iter().cloned().collect(),
            token: o.issued.as_deref().cloned(),
        };
        let holders: Vec<_> = holders
            .iter()
            .map(|(p, h)| (p.clone(), h.agent.clone(), h.process.clone()))
            .collect();
        let registered: Vec<&str> = holders
            .iter()
            .filter(|(p, ..)| p.is_registered())
            .map(|(p, ..)| p.as_str())
            .collect();
        let view = CredentialView {
            observation: o,
            first_seen_by_this,
            evidence,
            revoked: self.revoked.iter().any(|p| p.matches(&o.fingerprint)),
            all_shared: self.all_shared(&registered),
            holders,
        };
        (sighting, view)
    }

    /// Whether every pair of `agents` is covered by a `shared_with` declaration (either way).
    fn all_shared(&self, agents: &[&str]) -> bool {
        let declared = |a: &str, b: &str| self.shared.contains(&(a.to_owned(), b.to_owned()));
        agents.iter().enumerate().all(|(i, a)| {
            agents[i + 1..]
                .iter()
                .all(|b| declared(a, b) || declared(b, a))
        })
    }
}
