//! agentid: which AI agent did what, with whose credential, acting for whom.
//!
//! Data flows one way, one module per stage:
//! [`sensor`] (kernel programs → typed [`event::Event`]s) → [`process`] table →
//! [`identity`] (registry and selectors) → [`attribution`] (agent, session, lineage,
//! acting-for chain) → credentials → detect → outputs ([`store`]), with the API beside.
//! Everything after the sensor is plain Rust driven by events, testable without a kernel.
pub mod api;
pub mod attribution;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod detect;
pub mod event;
pub mod health;
pub mod identity;
pub mod keyfile;
pub mod outputs;
pub mod pipeline;
pub mod process;
pub mod queue;
#[expect(
    unreachable_pub,
    reason = "sensor/ is being reworked in another branch this round (issue 13 item 5, eBPF \
              side); its two crate-internal `pub fn`s move to `pub(crate)` there"
)]
pub mod sensor;
pub mod store;
pub mod sys;

// Used by the `agentid` binary only (log setup, shell completions); the library shares the
// package's dependency list, so it names them here instead of warning.
use clap_complete as _;
use tracing_subscriber as _;
// The pipeline benchmark's harness: a dev-dependency the unit tests see but do not use.
#[cfg(test)]
use criterion as _;
