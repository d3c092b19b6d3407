//! agentid: which AI agent did what, with whose credential, acting for whom.
//!
//! Data flows one way, one module per stage, in this order at runtime ([`pipeline`]
//! runs the first five on each event, on one thread):
//! 1. [`sensor`]: kernel programs → typed [`event::Event`]s;
//! 2. [`credentials`]: the [`credentials::Redactor`] fingerprints every secret in the event
//!    and removes it *before anything else sees the event* (environment cleared, arguments
//!    redacted, credential files read and dropped);
//! 3. [`process`] table: pid → process, lineage, pid-reuse safe;
//! 4. [`identity`]: registry and selectors → agent | unregistered | ambiguous;
//! 5. [`attribution`]: agent, session, lineage, acting-for chain;
//! 6. [`detect`]: one rule per file over the attributed event and its credential findings
//!    → deduplicated incidents (pure: no I/O);
//! 7. outputs: one list behind one trait ([`outputs::fanout`]): the [`store`], the alerts
//!    file, the [`audit`] trail, the SIEM sinks ([`outputs`]), the live followers;
//!
//! with the [`api`] beside (read side, for the [`cli`]; it reads [`state`], never the
//! pipeline's lock for long); [`daemon`] wires them.
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
pub mod dns;
pub mod enforce;
pub mod event;
pub mod fleet;
pub mod health;
pub mod identity;
pub mod issuer;
pub mod keyfile;
pub mod metrics;
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
pub mod state;
pub mod store;
pub mod sys;

// Used by the `agentid` binary only (log setup, shell completions); the library shares the
// package's dependency list, so it names them here instead of warning.
use clap_complete as _;
use tracing_subscriber as _;
// The pipeline benchmark's harness: a dev-dependency the unit tests see but do not use.
#[cfg(test)]
use criterion as _;
