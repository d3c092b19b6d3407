//! The daemon under a sustained event rate, alone in its own test binary (it would starve
//! the sensors of any test running beside it): every event the load makes reaches the
//! store and the audit log, and the ring buffer drops nothing. Counts are asserted, not
//! timings.
#![expect(clippy::expect_used, reason = "a failed step is a failed test")]
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    net::UdpSocket,
    path::{Path, PathBuf},
};

use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, has_exec_of, registration},
};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

/// The load's rate (events/s; `AGENTID_SCALE_RATE` sets another). The issue asks for
/// 50,000 a second. `cargo test` runs the debug daemon (`SQLite`, hashing and JSON
/// unoptimised), which on a loaded 2-core VM absorbs ~3,000 events a second: at 15,000 a
/// second it took 47 s after the load to drain its queues (nothing was lost). The release
/// daemon's highest zero-drop rate is measured by `cargo xtask bench --scale`.
const DEFAULT_RATE: u32 = 3_000;
const SECONDS: u64 = 10;

/// Removes the test's directory even when an assertion fails.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Events in the store for `agent`, by kind (compact rows keep their agent in their
/// context).
fn store_counts(db: &Path, agent: &str) -> BTreeMap<String, u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the store");
    let mut stmt = conn
        .prepare(
            "SELECT e.kind, count(*) FROM events e LEFT JOIN contexts c ON c.id = e.ctx \
             WHERE coalesce(e.agent, c.agent) = ?1 GROUP BY e.kind",
        )
        .expect("query");
    stmt.query_map([agent], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })
    .expect("rows")
    .map(|r| {
        let (kind, n) = r.expect("row");
        (kind, u64::try_from(n).expect("count"))
    })
    .collect()
}

#[derive(serde::Deserialize)]
struct Record {
    #[serde(rename = "type")]
    ty: String,
    body: Option<Body>,
}

/// Other record types' bodies have other shapes: these two stay untyped.
#[derive(serde::Deserialize)]
struct Body {
    kind: Option<Value>,
    agent: Option<Value>,
}

/// Event records in the audit log (the live file and every archive) for `agent`, by kind.
fn audit_counts(dir: &Path, agent: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("audit dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let text = if name.starts_with("audit") && ext == "zst" {
            let mut plain = String::new();
            zstd::Decoder::new(fs::File::open(&path).expect("archive"))
                .expect("zstd")
                .read_to_string(&mut plain)
                .expect("archive text");
            plain
        } else if name.starts_with("audit") && ext == "log" {
            fs::read_to_string(&path).expect("audit log")
        } else {
            continue;
        };
        for line in text.lines() {
            // Only the fields counted: a `Value` per record takes seconds in a debug build.
            let record: Record = serde_json::from_str(line).expect("an audit record");
            if record.ty == "event"
                && let Some(body) = record.body
                && body.agent.is_some_and(|a| a["id"] == agent)
                && let Some(kind) = body.kind.as_ref().and_then(Value::as_str)
            {
                *counts.entry(kind.to_owned()).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[test]
fn a_sustained_rate_reaches_the_store_and_the_audit_log_in_full() {
    let rate: u32 = std::env::var("AGENTID_SCALE_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(DEFAULT_RATE);
    let dir = Daemon::dir("scale");
    let _cleanup = Cleanup(dir.clone());
    let cg = TestCgroup::new("scale");
    fs::write(dir.join("agents/a.toml"), registration("rate", &cg)).expect("reg");
    let agent = "spiffe://test.example/agent/rate";
    let Some(d) = Daemon::start(&dir) else { return };
    let t0 = std::time::Instant::now();
    // Receives (and drops) the load's datagrams.
    let sink = UdpSocket::bind("127.0.0.1:0").expect("UDP sink");
    let addr = sink.local_addr().expect("addr").to_string();
    // Two generator threads: one alone tops out near the rates asked for here.
    let out = cg
        .command(WORKLOAD)
        .args(["rate", &addr, &rate.to_string(), &SECONDS.to_string(), "2"])
        .output()
        .expect("spawn the load");
    assert!(out.status.success(), "the load failed: {out:?}");
    let made: Value = serde_json::from_slice(&out.stdout).expect("the load's counts");
    let n = |k: &str| made[k].as_u64().expect("a count");
    let (connects, sends, execs) = (n("connects"), n("sends"), n("execs"));
    eprintln!(
        "made {connects} connects, {sends} sends, {execs} execs in {:.1} s ({:.0} events/s)",
        made["seconds"].as_f64().unwrap_or(0.0),
        f64::from(u32::try_from(connects + sends).unwrap_or(u32::MAX))
            / made["seconds"].as_f64().unwrap_or(1.0)
    );
    // A marker after the load: the ring is read in order, so once the marker is in the
    // store every event before it has passed the reader. Then a clean stop flushes.
    let st = cg
        .command("/bin/echo")
        .arg("scale-marker")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("spawn the marker");
    assert!(st.success());
    d.cli_until(&["events", "--kind", "exec"], |v| {
        has_exec_of(v, "/bin/echo")
    });
    eprintln!(
        "the marker reached the store at {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // Kernel counters reach `status` once a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let status = d.cli(&["status"]);
    let drops: u64 = status["drops"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    assert_eq!(
        drops, 0,
        "ring-buffer drops at {rate} events/s: {}",
        status["drops"]
    );
    assert!(d.stop().success());

    // The load's own exec and exit, and the marker's (their forks happen outside the
    // cgroup); a fork, an exec and an exit per `/bin/true`.
    let expected = BTreeMap::from([
        ("connect".to_owned(), connects),
        ("exec".to_owned(), execs + 2),
        ("exit".to_owned(), execs + 2),
        ("fork".to_owned(), execs),
        ("send".to_owned(), sends),
    ]);
    eprintln!("stopped at {:.1} s", t0.elapsed().as_secs_f64());
    let mut store = store_counts(&dir.join("state/agentid.db"), agent);
    eprintln!("store counted at {:.1} s", t0.elapsed().as_secs_f64());
    let mut audit = audit_counts(&dir.join("state/audit"), agent);
    eprintln!("audit log counted at {:.1} s", t0.elapsed().as_secs_f64());
    // Loader opens of `/bin/true` are events too, but not what this load counts.
    let store_opens = store.remove("open");
    let audit_opens = audit.remove("open");
    assert_eq!(store_opens, audit_opens, "opens: store vs audit log");
    assert_eq!(store, expected, "the store holds every event of the load");
    assert_eq!(
        audit, expected,
        "the audit log holds every event of the load"
    );
}
