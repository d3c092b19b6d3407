//! The detector: runs every rule over each attributed event and the credentials found in
//! it, keeps the incident book and the credential sightings. Pure over its inputs: no
//! file or `/proc` I/O happens here (the pipeline's redactor did that).
use std::time::SystemTime;

use super::{
    Alert, Incidents,
    rules::{self, DownLoss, Rule, TelemetryGap},
    seen::Seen,
    sightings::{CredentialSighting, Sightings},
};
use crate::{
    attribution::AttributedEvent,
    credentials::{Findings, FingerprintPrefix},
    identity::{GlobList, Registry},
};

/// What one event produced.
#[derive(Debug, Default)]
pub struct Output {
    /// New alerts and updates of existing ones (same uid, higher count).
    pub alerts: Vec<Alert>,
    pub credentials: Vec<CredentialSighting>,
}

#[derive(Debug)]
pub struct Detector {
    rules: Vec<Box<dyn Rule>>,
    book: Incidents,
    sightings: Sightings,
    gap: TelemetryGap,
}

impl Detector {
    /// `watch`: cgroup globs where an unregistered workload is a shadow agent.
    pub fn new(watch: Option<GlobList>) -> Self {
        Self::with_service_domains(watch, rules::ServiceDomains::default())
    }

    /// A detector whose `credential-misdirected` rule uses `domains`.
    pub fn with_service_domains(watch: Option<GlobList>, domains: rules::ServiceDomains) -> Self {
        Self {
            rules: rules::all(watch, domains),
            book: Incidents::default(),
            sightings: Sightings::default(),
            gap: TelemetryGap::default(),
        }
    }

    /// Marks credentials matching `prefix` as revoked: any later use raises
    /// `credential-stale`.
    pub fn revoke(&mut self, prefix: FingerprintPrefix) {
        self.sightings.revoke(prefix);
    }

    /// Refreshes what the rules take from the registry (`shared_with` exemptions); call
    /// on load and reload.
    pub fn set_registry(&mut self, registry: &Registry) {
        self.sightings.set_registry(registry);
    }

    /// Every alert raised so far (current state of each incident).
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.book.all()
    }

    /// Runs every rule on one attributed event and the credentials found in it.
    pub fn observe(
        &mut self,
        event: &AttributedEvent,
        findings: &Findings,
        registry: &Registry,
    ) -> Output {
        let seen = Seen::new(event, findings, registry);
        let mut credentials = Vec::with_capacity(findings.observations.len());
        for o in &findings.observations {
            let (sighting, view) = self.sightings.record(&seen, o);
            credentials.push(sighting);
            for rule in &mut self.rules {
                rule.on_credential(&seen, &view, &mut self.book);
            }
        }
        for rule in &mut self.rules {
            rule.on_event(&seen, &mut self.book);
        }
        Output {
            alerts: self.book.take_raised(),
            credentials,
        }
    }

    /// Raises (or updates) `telemetry-gap` when the kernel's drop counters grew.
    pub fn telemetry_gap(
        &mut self,
        total_drops: u64,
        by_kind: &[(&str, u64)],
        now: SystemTime,
    ) -> Option<Alert> {
        let alert = self.gap.check(total_drops, by_kind, now, &mut self.book);
        self.book.take_raised();
        alert
    }

    /// Drops already accounted for at start (a resumed pinned set carries its counters):
    /// only growth beyond them raises `telemetry-gap`.
    pub fn drops_baseline(&mut self, total_drops: u64) {
        self.gap.set_baseline(total_drops);
    }

    /// Raises `telemetry-gap` for the window a previous run left unwatched (it stopped
    /// without a clean shutdown), naming the processes that started inside it.
    pub fn daemon_down(
        &mut self,
        pid: u32,
        last_alive: SystemTime,
        now: SystemTime,
        loss: DownLoss,
        started_unseen: Vec<super::ProcessEvidence>,
    ) -> Alert {
        let alert =
            TelemetryGap::daemon_down(pid, last_alive, now, loss, started_unseen, &mut self.book);
        self.book.take_raised();
        alert
    }

    /// Raises (or updates) `delivery-loss` for a sink that dropped records.
    pub fn delivery_loss(
        &mut self,
        sink: &str,
        dropped_total: u64,
        reason: &str,
        now: SystemTime,
    ) -> Alert {
        let alert = rules::delivery_loss(&mut self.book, sink, dropped_total, reason, now);
        self.book.take_raised();
        alert
    }

    /// Raises (or updates) the fleet's `credential-reuse` this host claimed.
    pub fn fleet_reuse(
        &mut self,
        fingerprint: &str,
        holders: &[(String, String)],
        now: SystemTime,
    ) -> Alert {
        let alert = rules::fleet_reuse(&mut self.book, fingerprint, holders, now);
        self.book.take_raised();
        alert
    }

    /// Raises (or updates) `credential-stale` for an issued token presented to
    /// `ValidateJWTSVID` after its session ended.
    pub fn token_presented_after_end(
        &mut self,
        token: &crate::credentials::TokenOrigin,
        fingerprint: &crate::credentials::Fingerprint,
        presenter: super::AlertAgent,
        process: super::ProcessEvidence,
        now: SystemTime,
    ) -> Alert {
        let alert =
            rules::presented_after_end(&mut self.book, token, fingerprint, presenter, process, now);
        self.book.take_raised();
        alert
    }

    /// Raises (or updates) `identity-sprawl` this host claimed.
    pub fn identity_sprawl(
        &mut self,
        agent: &str,
        holders: &[(String, String)],
        reason: &str,
        now: SystemTime,
    ) -> Alert {
        let alert = rules::identity_sprawl(&mut self.book, agent, holders, reason, now);
        self.book.take_raised();
        alert
    }
}
