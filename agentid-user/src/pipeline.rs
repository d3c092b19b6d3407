//! The event path shared by `agentid trace` and the daemon: process table → identity →
//! attribution. One owner, one thread: no locks on the hot path.
use std::{path::Path, sync::Arc};

use crate::{
    attribution::{AttributedEvent, Attributor},
    cgroup::Resolver,
    event::Event,
    identity::Registry,
    process::{HostIds, ProcessTable},
};

#[derive(Debug)]
pub struct Pipeline {
    pub table: ProcessTable,
    pub attributor: Attributor,
    registry: Arc<Registry>,
}

impl Pipeline {
    pub fn new(registry: Arc<Registry>, cgroup_root: std::path::PathBuf) -> Self {
        Self {
            table: ProcessTable::new(HostIds::current(), Resolver::new(cgroup_root)),
            attributor: Attributor::new(),
            registry,
        }
    }

    /// Reads every running process from `/proc` and attributes it. Call after the probes
    /// are attached, so nothing starts unseen between the two.
    pub fn seed(&mut self) -> usize {
        let n = self.table.seed_from_proc();
        self.attributor.seed(&self.table, &self.registry);
        n
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Swaps in a new registry and decides every live process's identity again under it.
    pub fn set_registry(&mut self, registry: Arc<Registry>) {
        self.registry = registry;
        self.attributor = Attributor::new();
        self.attributor.seed(&self.table, &self.registry);
    }

    pub fn process(&mut self, event: Event) -> AttributedEvent {
        let mut attributed = self
            .attributor
            .attribute(&mut self.table, &self.registry, event);
        if attributed.event.cgroup.is_none() {
            let id = attributed.event.cgroup_id;
            attributed.event.cgroup = self.table.resolver().path(id).map(str::to_owned);
        }
        attributed
    }
}

/// Loads the registry, reporting every per-file problem as a warning line on stderr.
pub fn load_registry(dir: &Path) -> Registry {
    let registry = Registry::load_dir(dir);
    for e in registry.errors() {
        tracing::warn!("agent registry: {e}");
    }
    registry
}
