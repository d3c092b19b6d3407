//! Process identities that survive pid reuse.
use std::fmt;

use serde::{Deserialize, Serialize};

/// Names one process for its whole life and never another: `host:boot:start:pid`, where
/// `boot` is the first 8 hex digits of the kernel boot id and `start` the process start
/// time in clock ticks since boot — the same value `/proc/PID/stat` reports, so a process
/// seen first through `/proc` and later through kernel events gets the same id, also after
/// a daemon restart. An exec keeps the id (same process, new image).
///
/// A tick is 10 ms: a pid reused within the same tick (a fast fork loop, or an agent steering
/// `ns_last_pid`) would get the id of the process before it. The process table sees that
/// collision (the earlier process is still in its exited set) and gives the newcomer
/// `host:boot:start:pid.SUB`, `SUB` being the ns within the tick from the kernel's start
/// time, so two processes never share an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecId(String);

/// Kernel `USER_HZ`: the unit of `/proc/PID/stat` start times on every Linux ABI.
const USER_HZ: u64 = 100;

/// Converts `start_boottime` ns to `/proc` clock ticks, as the kernel does (floor).
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / USER_HZ)
}

/// The start of `ticks` in ns since boot (the tick's first ns): the inverse of
/// [`ns_to_ticks`] for the process-identity purposes here.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000_000 / USER_HZ)
}

/// The host part of every exec id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIds {
    pub host: String,
    pub boot: String,
}

/// The configured name, else the kernel's, else `localhost`.
fn host_name(configured: Option<String>, kernel: Option<String>) -> String {
    [configured, kernel]
        .into_iter()
        .flatten()
        .map(|h| h.trim().to_owned())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl HostIds {
    /// Reads the host name (`AGENTID_HOST` when set and not empty, else the kernel's
    /// hostname) and `/proc/sys/kernel/random/boot_id`. In a Kubernetes pod the kernel's
    /// hostname is the pod's: the `DaemonSet` sets `AGENTID_HOST` to the node's name.
    pub fn current() -> Self {
        let host = host_name(
            std::env::var("AGENTID_HOST").ok(),
            std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        );
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or_else(
            |_| "00000000".to_owned(),
            |b| {
                b.trim()
                    .chars()
                    .filter(char::is_ascii_hexdigit)
                    .take(8)
                    .collect()
            },
        );
        Self { host, boot }
    }

    pub fn exec_id(&self, start_ticks: u64, pid: u32) -> ExecId {
        ExecId(format!("{}:{}:{start_ticks}:{pid}", self.host, self.boot))
    }

    /// The id of a process whose `host:boot:start:pid` an earlier process already had.
    pub fn reused_exec_id(&self, start_ns: u64, pid: u32) -> ExecId {
        let tick_ns = 1_000_000_000 / USER_HZ;
        ExecId(format!(
            "{}:{}:{}:{pid}.{}",
            self.host,
            self.boot,
            start_ns / tick_ns,
            start_ns % tick_ns
        ))
    }
}

impl ExecId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Heap bytes held (its text's allocation).
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity()
    }
}

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_host_name_wins_over_the_kernels() {
        let name = |c: Option<&str>, k: Option<&str>| {
            host_name(c.map(str::to_owned), k.map(str::to_owned))
        };
        assert_eq!(name(Some("node-7"), Some("pod-abc\n")), "node-7");
        assert_eq!(name(Some(" "), Some("pod-abc\n")), "pod-abc");
        assert_eq!(name(None, None), "localhost");
    }

    fn ids() -> HostIds {
        HostIds {
            host: "node1".into(),
            boot: "0123abcd".into(),
        }
    }

    #[test]
    fn pid_reuse_gives_a_different_id() {
        let first = ids().exec_id(ns_to_ticks(5_000_000_000), 4242);
        let reused = ids().exec_id(ns_to_ticks(9_000_000_000), 4242);
        assert_ne!(first, reused);
        assert_eq!(first.as_str(), "node1:0123abcd:500:4242");
    }

    #[test]
    fn same_process_is_stable_between_kernel_and_proc_views() {
        // start_boottime 12.345678901 s → 1234 ticks, exactly what /proc shows.
        assert_eq!(ns_to_ticks(12_345_678_901), 1234);
        assert_eq!(
            ids().exec_id(ns_to_ticks(12_345_678_901), 7),
            ids().exec_id(1234, 7)
        );
    }
}
