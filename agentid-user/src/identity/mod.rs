//! Identity: which registered agent a process belongs to.
//!
//! Agents are registered in TOML files ([`registry`]; the format and its checks are in
//! `format.rs`); a process is matched by its workload facts (cgroup path, uid/gid, executable, and what the cgroup path says
//! about containers and systemd units, see [`container`]) against each agent's
//! selector sets ([`selector`]), SPIRE style. Each agent carries a [`policy`].
//! Everything here is pure Rust over strings: no kernel, no runtime sockets.
pub mod container;
mod format;
pub mod policy;
pub mod registry;
pub mod selector;
pub mod spiffe;

pub use container::{ContainerInfo, Runtime, parse_cgroup_path};
pub mod suggest;
pub use policy::{Dest, EgressRule, EgressRuleError, GlobList, NamePattern, Policy, Wildcard};
pub use registry::{
    Agent, ConfigError, Credentials, DEFAULT_AGENTS_DIR, Match, Origin, Registry, RegistryError,
    create_agents_dir,
};
pub use selector::{Glob, SelectorSet, Workload};
pub use spiffe::{SpiffeId, SpiffeIdError};
