//! Write health of one on-disk output (the store, the audit log).
//!
//! A state directory that turns read-only or fills up fails every write from then on. One
//! log line per failed record would bury the cause under thousands of repeats, and
//! counters alone would not say why: so the first failure is logged once, with what the
//! filesystem says (a database error such as "disk I/O error" does not name it), then a
//! reminder at most every [`REMIND_EVERY`] while it lasts, and the recovery once, with what
//! was lost. `agentid status` shows the failure while it lasts.
use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How often a lasting failure is logged again.
pub const REMIND_EVERY: Duration = Duration::from_mins(5);

#[derive(Debug)]
struct Failing {
    error: String,
    since: Instant,
    last_logged: Instant,
    lost_before: u64,
}

/// Shared between the writer thread (which reports) and the API (which shows).
#[derive(Debug)]
pub struct WriteHealth {
    /// "store", "audit log": names the output in log lines.
    what: &'static str,
    /// Probed on the first failure for the operating system's reason.
    dir: PathBuf,
    failing: Mutex<Option<Failing>>,
    /// Records lost to failed writes, over the daemon's life.
    pub lost: AtomicU64,
}

impl WriteHealth {
    pub fn new(what: &'static str, dir: &Path) -> Self {
        Self {
            what,
            dir: dir.to_owned(),
            failing: Mutex::new(None),
            lost: AtomicU64::new(0),
        }
    }

    /// A write failed and `lost` records with it.
    pub fn failed(&self, error: &dyn std::fmt::Display, lost: u64) {
        let lost_total = self.lost.fetch_add(lost, Ordering::Relaxed) + lost;
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        let now = Instant::now();
        match failing.as_mut() {
            None => {
                let error = error.to_string();
                let error = match probe(&self.dir) {
                    // An I/O error already names it.
                    Some(cause) if !error.contains(&cause.to_string()) => {
                        format!("{error} ({}: {cause})", self.dir.display())
                    }
                    _ => error,
                };
                tracing::error!(
                    error = %error,
                    "{} writes failing: records are not kept until {} is writable again; \
                     the daemon keeps tracing and serving the API",
                    self.what,
                    self.dir.display()
                );
                *failing = Some(Failing {
                    error,
                    since: now,
                    last_logged: now,
                    lost_before: lost_total - lost,
                });
            }
            Some(f) if now.duration_since(f.last_logged) >= REMIND_EVERY => {
                f.last_logged = now;
                tracing::error!(
                    error = %f.error,
                    lost = lost_total - f.lost_before,
                    for_s = now.duration_since(f.since).as_secs(),
                    "{} writes still failing",
                    self.what
                );
            }
            Some(_) => {}
        }
    }

    /// A write succeeded: ends a failure, saying so once.
    pub fn succeeded(&self) {
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        if let Some(f) = failing.take() {
            tracing::info!(
                lost = self.lost.load(Ordering::Relaxed) - f.lost_before,
                after_s = f.since.elapsed().as_secs(),
                "{} writes resumed",
                self.what
            );
        }
    }

    /// The failure in force, if any: what `status` shows as `degraded`.
    pub fn degraded(&self) -> Option<String> {
        self.failing
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(|f| f.error.clone()))
    }
}

/// What the filesystem says about writing in `dir` now: `None` when a small write works.
fn probe(dir: &Path) -> Option<std::io::Error> {
    use std::io::Write as _;
    let path = dir.join(".agentid-write-probe");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"probe").and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&path);
    result.err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_is_reported_until_a_success() {
        let dir = std::env::temp_dir().join(format!("agentid-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = WriteHealth::new("store", &dir);
        assert_eq!(h.degraded(), None);
        h.failed(&"disk I/O error", 3);
        h.failed(&"another error", 2);
        // The first error is the one shown; a writable dir adds no cause.
        assert_eq!(h.degraded().as_deref(), Some("disk I/O error"));
        assert_eq!(h.lost.load(Ordering::Relaxed), 5);
        h.succeeded();
        assert_eq!(h.degraded(), None);
        assert!(!dir.join(".agentid-write-probe").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cause_is_named_when_the_directory_refuses_writes() {
        let missing =
            std::env::temp_dir().join(format!("agentid-health-missing-{}", std::process::id()));
        let h = WriteHealth::new("audit log", &missing);
        h.failed(&"write failed", 1);
        let shown = h.degraded().unwrap();
        assert!(shown.starts_with("write failed ("), "{shown}");
        assert!(shown.contains("No such file or directory"), "{shown}");
    }
}
