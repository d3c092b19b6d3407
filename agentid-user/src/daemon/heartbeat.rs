//! The daemon's own pulse: `STATE/daemon.run` says when it was last alive and whether it
//! stopped cleanly. A daemon killed with SIGKILL (or crashed, or the host lost power) leaves
//! `clean: false`, so the next start knows there was a window nothing watched, and how long
//! — an agent running as root that kills agentid to act unseen leaves that mark.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// The file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Pulse {
    pid: u32,
    /// ns since the epoch.
    started_ns: u64,
    alive_ns: u64,
    clean: bool,
    /// The kernel's drop counters (all kinds) at the last pulse: what a resumed pinned set
    /// counts beyond it was lost while no daemon read.
    #[serde(default)]
    drops: u64,
}

/// A previous run that did not stop cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UncleanStop {
    pub(crate) pid: u32,
    /// Its last pulse: nothing after this was watched until this start.
    pub(crate) last_alive: SystemTime,
    /// Its drop counters' total at that pulse.
    pub(crate) drops: u64,
}

#[derive(Debug)]
pub(crate) struct Heartbeat {
    path: PathBuf,
    pulse: Pulse,
}

fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Heartbeat {
    /// Reads what the previous run left, then records this one as alive (and not yet
    /// stopped cleanly). An unreadable or garbled file is reported as an unclean stop at
    /// the file's modification time: a file someone tampered with is no reason for silence.
    pub(crate) fn start(
        state_dir: &Path,
        now: SystemTime,
    ) -> std::io::Result<(Self, Option<UncleanStop>)> {
        let path = state_dir.join("daemon.run");
        let previous = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Pulse>(&bytes) {
                Ok(p) if p.clean => None,
                Ok(p) => Some(UncleanStop {
                    pid: p.pid,
                    last_alive: UNIX_EPOCH + Duration::from_nanos(p.alive_ns),
                    drops: p.drops,
                }),
                Err(_) => Some(UncleanStop {
                    pid: 0,
                    drops: 0,
                    last_alive: std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .unwrap_or(UNIX_EPOCH),
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let beat = Self {
            path,
            pulse: Pulse {
                pid: std::process::id(),
                started_ns: ns(now),
                alive_ns: ns(now),
                clean: false,
                drops: 0,
            },
        };
        beat.write()?;
        Ok((beat, previous))
    }

    /// Records that the daemon is alive now, with the kernel's drop total (every tick).
    pub(crate) fn beat(&mut self, now: SystemTime, drops: u64) -> std::io::Result<()> {
        self.pulse.alive_ns = ns(now);
        self.pulse.drops = drops;
        self.write()
    }

    /// Records the clean stop: the next start raises nothing.
    pub(crate) fn stop(mut self, now: SystemTime) -> std::io::Result<()> {
        self.pulse.alive_ns = ns(now);
        self.pulse.clean = true;
        self.write()
    }

    /// Whole-file replace (temp + rename), so a crash mid-write never leaves half a pulse.
    fn write(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("run.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, &self.pulse)?;
        f.write_all(b"\n")?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
    }
}

/// The processes still running whose start falls inside `from..to`: they began while
/// nothing watched (their exec, environment and first connections were not seen).
pub(crate) fn started_in(
    table: &crate::process::ProcessTable,
    from: SystemTime,
    to: SystemTime,
) -> Vec<crate::detect::ProcessEvidence> {
    // Start times are clock ticks since boot; boot is "now" minus the boot clock.
    let since_boot = Duration::from_nanos(
        u64::try_from(crate::sys::clock_ns(crate::sys::CLOCK_BOOTTIME)).unwrap_or(u64::MAX),
    );
    let Some(boot) = SystemTime::now().checked_sub(since_boot) else {
        return Vec::new();
    };
    let mut unseen: Vec<_> = table
        .live()
        .filter(|p| {
            let start = boot + Duration::from_millis(p.start_ticks.saturating_mul(10));
            start >= from && start <= to
        })
        .map(|p| crate::detect::ProcessEvidence {
            exec_id: Some(p.exec_id.as_str().to_owned()),
            pid: p.pid,
            exe: Some(p.exe.clone()),
            argv: p.argv.clone(),
            uid: p.uid,
            cgroup: Some(p.cgroup.clone()),
            acting_for: Vec::new(),
        })
        .collect();
    unseen.sort_by_key(|p| p.pid);
    unseen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("agentid-heartbeat-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_clean_stop_leaves_no_mark_and_a_kill_does() {
        let d = dir("cycle");
        // First start ever: nothing before.
        let (mut hb, prev) = Heartbeat::start(&d, at(0)).unwrap();
        assert_eq!(prev, None);
        hb.beat(at(5), 0).unwrap();
        hb.stop(at(6)).unwrap();
        let (mut hb, prev) = Heartbeat::start(&d, at(10)).unwrap();
        assert_eq!(prev, None, "clean stop");
        hb.beat(at(11), 3).unwrap();
        hb.beat(at(12), 7).unwrap();
        // Killed: never stopped. The next start names the last pulse.
        drop(hb);
        let (_hb, prev) = Heartbeat::start(&d, at(40)).unwrap();
        assert_eq!(
            prev,
            Some(UncleanStop {
                pid: std::process::id(),
                last_alive: at(12),
                drops: 7,
            })
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_garbled_pulse_is_an_unclean_stop() {
        let d = dir("garbled");
        std::fs::write(d.join("daemon.run"), b"{\"clean\": tr").unwrap();
        let (_hb, prev) = Heartbeat::start(&d, at(0)).unwrap();
        let prev = prev.unwrap();
        assert_eq!(prev.pid, 0);
        assert!(prev.last_alive > UNIX_EPOCH);
        // The new pulse replaced it, whole.
        let text = std::fs::read_to_string(d.join("daemon.run")).unwrap();
        assert!(text.contains("\"clean\":false"), "{text}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
