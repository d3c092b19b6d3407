//! The event path shared by `agentid trace`, the daemon, the tests and the bench:
//! credentials (secrets out first) → process table → identity → attribution.
//! One owner, one thread: no locks on the hot path.
use std::{path::Path, sync::Arc};

use crate::{
    attribution::{AttributedEvent, Attributor},
    cgroup::Resolver,
    credentials::{Findings, FingerprintKey, Redactor},
    event::Event,
    identity::Registry,
    process::{HostIds, ProcessTable},
};

#[derive(Debug)]
pub struct Pipeline {
    /// First stage: nothing after it ever holds a secret.
    redactor: Redactor,
    pub table: ProcessTable,
    pub attributor: Attributor,
    registry: Arc<Registry>,
}

impl Pipeline {
    /// `key` fingerprints the credentials found (the host or fleet key; `agentid trace`,
    /// which keeps none, passes a throw-away key and still never shows a secret).
    pub fn new(
        registry: Arc<Registry>,
        cgroup_root: std::path::PathBuf,
        key: FingerprintKey,
    ) -> Self {
        Self {
            redactor: Redactor::new(key),
            table: ProcessTable::new(HostIds::current(), Resolver::new(cgroup_root)),
            attributor: Attributor::new(),
            registry,
        }
    }

    /// Reads every running process from `/proc` and attributes it. Call after the probes
    /// are attached, so nothing starts unseen between the two. Their command lines may
    /// hold secrets too: redacted before anything reads the table.
    pub fn seed(&mut self) -> usize {
        let n = self.table.seed_from_proc();
        let redactor = &self.redactor;
        self.table.redact_argv(|argv| {
            redactor.redact(argv);
        });
        self.attributor.seed(&self.table, &self.registry);
        self.redactor.watch_mut().scan(&self.registry);
        n
    }

    /// Keeps the credential-file inodes current when no open asks (a daemon timer): a
    /// rescan only when inotify or the registry said something changed.
    pub fn refresh_files(&mut self) {
        self.redactor.watch_mut().refresh(&self.registry);
    }

    /// The first stage, for fingerprinting a value under the pipeline's key (an operator's
    /// revocation, a test's expected fingerprint) without running an event through.
    pub fn redactor_mut(&mut self) -> &mut Redactor {
        &mut self.redactor
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Swaps in a new registry and decides every live process's identity again under it.
    pub fn set_registry(&mut self, registry: Arc<Registry>) {
        self.registry = registry;
        self.redactor.watch_mut().invalidate();
        self.attributor = Attributor::new();
        self.attributor.seed(&self.table, &self.registry);
    }

    /// Runs one event through every stage: its secrets are found and removed first, so
    /// the process table, attribution and everything downstream only ever see the
    /// redacted event; the findings (fingerprints only) travel beside it to detection.
    pub fn process(&mut self, mut event: Event) -> (AttributedEvent, Findings) {
        let findings = self.redactor.scan(&mut event, &self.registry);
        let mut attributed = self
            .attributor
            .attribute(&mut self.table, &self.registry, event);
        if attributed.event.cgroup.is_none() {
            let id = attributed.event.cgroup_id;
            attributed.event.cgroup = self.table.resolver().path(id).map(str::to_owned);
        }
        (attributed, findings)
    }
}

/// Loads the registry, reporting every per-file problem as a warning line on stderr.
pub fn load_registry(dir: &Path) -> Registry {
    let registry = Registry::load_dir(dir);
    for e in registry.errors() {
        tracing::warn!("agent registry: {e}");
    }
    for w in registry.warnings() {
        tracing::warn!("agent registry: warning: {w}");
    }
    registry
}
