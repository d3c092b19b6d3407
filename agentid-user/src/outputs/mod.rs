//! SIEM outputs: encodings ([`encode`]), an on-disk [`spool`] per sink, and transports
//! ([`sink`]), tied together by [`SinkManager`].
//!
//! Delivery is at-least-once. The daemon hands alerts (and, opt-in, activity events) to
//! [`SinkManager::submit_alert`] / [`SinkManager::submit_activity`], which never block:
//! each sink has a bounded queue feeding a spooler thread (encode, append, fsync) and a
//! delivery task (read from the spool, send, commit on acceptance). A slow or dead
//! receiver fills only that sink's spool; once full, new records for it are dropped,
//! counted, logged and reported as [`DropNotice`]s on the channel returned by
//! [`SinkManager::start`].
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod config;
mod delivery;
pub mod encode;
mod encoder;
pub mod fanout;
mod manager;
pub mod sink;
pub mod spool;

pub use config::SinkConfig;
pub use manager::{SinkManager, SinkMonitor};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("sink configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

/// Why a record was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The sink's on-disk spool reached its bound (the receiver is down or slow).
    SpoolFull,
    /// The in-memory queue in front of the spool was full (disk slower than the input).
    QueueFull,
    /// Writing to the spool failed (disk error).
    SpoolError,
}

/// A lost record, reported so the daemon can raise an alert about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropNotice {
    pub sink: String,
    pub uid: String,
    pub reason: DropReason,
    /// Records this sink dropped so far, this one included.
    pub dropped_total: u64,
}

/// Per-sink counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    pub name: String,
    pub kind: String,
    /// Accepted by the receiver.
    pub delivered: u64,
    /// Delivery attempts that failed transiently (counted per record).
    pub retried: u64,
    /// Appended to the spool.
    pub spooled: u64,
    /// Lost before reaching the spool (see [`DropNotice`]).
    pub dropped: u64,
    /// Rejected by the receiver for good, in `dead-letter.jsonl`.
    pub dead_lettered: u64,
    /// Bytes spooled and not yet accepted.
    pub pending_bytes: u64,
    pub last_error: Option<String>,
}

/// Where spools live and what encoders need to know about this host.
#[derive(Debug, Clone)]
pub struct OutputContext {
    /// Each sink spools in `<spool_root>/<sink name>/`.
    pub spool_root: PathBuf,
    pub hostname: String,
}
