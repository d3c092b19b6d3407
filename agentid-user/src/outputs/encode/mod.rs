//! Encodings of alerts and activity events for SIEMs: pure functions, no I/O.
//!
//! - [`ocsf`]: OCSF 1.8 JSON (Detection Finding 2004, Process Activity 1007, Network
//!   Activity 4001), the canonical schema.
//! - [`ecs`]: Elastic Common Schema documents for Elasticsearch.
//! - [`cef`]: `ArcSight` CEF lines (Sentinel, `QRadar`).
//! - [`syslog`]: RFC 5424 messages carrying OCSF JSON or CEF, and RFC 6587/5425 framing.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{attribution::AttributedEvent, audit::Checkpoint, detect::Alert};

pub mod cef;
pub mod ecs;
pub mod ocsf;
pub mod syslog;

#[cfg(test)]
mod tests;

/// This build's version, reported as the product version in every encoding.
pub const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What an encoder needs besides the record itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeContext {
    /// The host the daemon runs on (OCSF `device.hostname`, syslog HOSTNAME).
    pub hostname: String,
    /// Also fill OCSF 1.9's draft `ai_agent` object (the agent stays in `unmapped` too).
    pub ocsf_ai_agent: bool,
}

impl Default for EncodeContext {
    fn default() -> Self {
        Self {
            hostname: local_hostname(),
            ocsf_ai_agent: false,
        }
    }
}

/// The kernel's host name (`uname -n`), or `localhost` when it cannot be read.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// One thing to encode: an incident, (opt-in) a raw attributed event, or a signed audit
/// checkpoint (an anchor: every sink gets every one).
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    Alert(&'a Alert),
    Activity(&'a AttributedEvent),
    Checkpoint(&'a Checkpoint),
}

/// When a checkpoint was written (its record's RFC 3339 `ts`).
pub fn checkpoint_time(cp: &Checkpoint) -> SystemTime {
    humantime::parse_rfc3339(&cp.time).unwrap_or(UNIX_EPOCH)
}

/// A stable id for a checkpoint: its seq and the head it signs.
pub fn checkpoint_uid(cp: &Checkpoint) -> String {
    format!(
        "audit-checkpoint:{}:{}",
        cp.seq,
        cp.head.get(..16).unwrap_or(&cp.head)
    )
}

/// UTC epoch milliseconds (OCSF `time`, CEF `rt`); times before 1970 clamp to 0.
pub fn epoch_ms(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// UTC epoch seconds with fraction (Splunk HEC `time`).
pub fn epoch_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// RFC 3339 with microseconds: what RFC 5424 allows (≤ 6 fractional digits) and what ECS
/// `@timestamp` keeps.
pub fn rfc3339_micros(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(crate::event::rfc3339_range(t)).to_string()
}

/// A stable id for an activity event (they have no uid of their own): kind, process and
/// kernel time name it uniquely on one host.
pub fn activity_uid(ev: &AttributedEvent) -> String {
    let exec = ev
        .exec_id
        .as_ref()
        .map_or_else(|| ev.event.pid.to_string(), |e| e.as_str().to_owned());
    format!("{}:{exec}:{}", ev.event.kind, ev.event.ktime_ns)
}
