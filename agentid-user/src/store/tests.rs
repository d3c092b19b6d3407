use std::time::Duration;

use rusqlite::Connection;

use super::*;

fn temp_store() -> (tempdir::Dir, Store) {
    let dir = tempdir::Dir::new();
    let store = Store::open(&dir.0.join("agentid.db")).unwrap();
    (dir, store)
}

mod tempdir {
    /// A unique directory removed on drop (std only; tests need nothing more).
    pub(crate) struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub(crate) fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("agentid-store-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn event(ts: u64, agent: Option<&str>, kind: &'static str) -> StoreOp {
    StoreOp::Event {
        ts_ns: ts,
        kind,
        pid: 42,
        exec_id: Some("h:b:1:42".into()),
        agent: agent.map(Into::into),
        session: agent.map(|a| format!("{a}/42-1")),
        root_exec_id: Some("h:b:1:42".into()),
        body: serde_json::json!({"kind": kind, "ts": ts})
            .to_string()
            .into(),
        split: None,
    }
}

const RETAIN: Retention = Retention {
    max_age: Duration::from_secs(u64::MAX / 4_000_000_000),
    max_bytes: u64::MAX,
};

#[test]
fn events_round_trip_with_filters() {
    let (_d, store) = temp_store();
    let w = store.writer(RETAIN).unwrap();
    w.send(event(1, Some("spiffe://x/a"), "exec"));
    w.send(event(2, Some("spiffe://x/b"), "connect"));
    w.send(event(3, None, "exec"));
    w.flush().unwrap();
    let all = store.events(&Query::default()).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].body["ts"], 1);
    let a = store
        .events(&Query {
            agent: Some("spiffe://x/a".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(a.len(), 1);
    let exec = store
        .events(&Query {
            kind: Some("exec".into()),
            since_ns: Some(2),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(exec.len(), 1);
    assert_eq!(exec[0].body["ts"], 3);
    let after = store
        .events(&Query {
            after_id: Some(all[1].id),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(after.len(), 1);
    let sessions = store.sessions(None).unwrap();
    assert_eq!(sessions.len(), 2);
    let seen = store.agents_seen().unwrap();
    assert_eq!(
        seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["spiffe://x/a", "spiffe://x/b", "unregistered"]
    );
    assert_eq!(
        w.stats.written.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn alerts_upsert_by_uid_and_credentials_accumulate_sources() {
    let (_d, store) = temp_store();
    let w = store.writer(RETAIN).unwrap();
    for count in 1..=3u64 {
        w.send(StoreOp::Alert {
            uid: "A1".into(),
            rule: "credential-reuse".into(),
            severity: "high".into(),
            first_ns: 10,
            last_ns: 10 + count,
            count,
            agents: "spiffe://x/a spiffe://x/b".into(),
            body: serde_json::json!({"count": count}).to_string(),
        });
    }
    for src in ["env:OPENAI_API_KEY", "env:OPENAI_API_KEY", "file:/etc/t"] {
        w.send(StoreOp::Credential {
            fingerprint: "openai:abc".into(),
            agent: "spiffe://x/a".into(),
            kind: "openai".into(),
            ts_ns: 5,
            source: src.into(),
        });
    }
    w.flush().unwrap();
    let alerts = store.alerts(&Query::default()).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].body["count"], 3);
    let by_agent = store
        .alerts(&Query {
            agent: Some("spiffe://x/b".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(by_agent.len(), 1);
    let creds = store.credentials(None).unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0]["count"], 3);
    assert_eq!(
        creds[0]["sources"],
        serde_json::json!(["env:OPENAI_API_KEY", "file:/etc/t"])
    );
}

#[test]
fn reopening_keeps_data_and_schema_version() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("agentid.db");
    {
        let store = Store::open(&path).unwrap();
        let w = store.writer(RETAIN).unwrap();
        w.send(event(1, None, "exec"));
        w.flush().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.events(&Query::default()).unwrap().len(), 1);
    let v: i64 = store
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::version());
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("agentid.db");
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

#[test]
fn retention_drops_old_events_and_keeps_the_size_budget() {
    let (_d, store) = temp_store();
    let w = store.writer(RETAIN).unwrap();
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    w.send(event(1_000, None, "exec")); // 1970: far beyond any max_age
    for i in 0..2000 {
        w.send(event(now + i, Some("spiffe://x/a"), "connect"));
    }
    w.flush().unwrap();
    let by_age = Retention {
        max_age: Duration::from_hours(1),
        max_bytes: u64::MAX,
    };
    writer::enforce_retention(&store.conn, by_age).unwrap();
    let left = store
        .events(&Query {
            limit: Some(100_000),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        left.len(),
        2000,
        "only the 1970 event is older than an hour"
    );
    // A budget far below the current size: oldest events go until it fits.
    let before = store.size_bytes().unwrap();
    let by_size = Retention {
        max_age: Duration::from_hours(1),
        max_bytes: before / 4,
    };
    writer::enforce_retention(&store.conn, by_size).unwrap();
    let after = store
        .events(&Query {
            limit: Some(100_000),
            ..Query::default()
        })
        .unwrap();
    assert!(
        after.len() < 2000 && !after.is_empty(),
        "{} left",
        after.len()
    );
    assert_eq!(
        after.last().unwrap().body["ts"],
        now + 1999,
        "the newest are kept"
    );
}

#[test]
fn agent_and_session_counters_sum_across_batches() {
    let (_d, store) = temp_store();
    let w = store.writer(RETAIN).unwrap();
    // Out of order within a batch, and a second batch after a flush.
    w.send(event(5, Some("spiffe://x/a"), "exec"));
    w.send(event(2, Some("spiffe://x/a"), "connect"));
    w.send(event(3, None, "exec"));
    w.flush().unwrap();
    w.send(event(9, Some("spiffe://x/a"), "exit"));
    w.send(event(1, Some("spiffe://x/b"), "exec"));
    w.flush().unwrap();
    let seen = store.agents_seen().unwrap();
    assert_eq!(
        seen,
        [
            ("spiffe://x/a".to_owned(), 2, 9, 3),
            ("spiffe://x/b".to_owned(), 1, 1, 1),
            ("unregistered".to_owned(), 3, 3, 1),
        ]
    );
    let sessions = store.sessions(Some("spiffe://x/a")).unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["session"], "spiffe://x/a/42-1");
    assert_eq!(sessions[0]["events"], 3);
    assert_eq!(sessions[0]["first_seen_ns"], 2);
    assert_eq!(sessions[0]["last_seen_ns"], 9);
    assert_eq!(sessions[0]["root_exec_id"], "h:b:1:42");
}

/// Retention holds while events arrive fast: the size budget is enforced as the store
/// grows, not only once a minute, so the database stays near its budget.
#[test]
fn retention_holds_the_size_budget_under_load() {
    let (_d, store) = temp_store();
    let budget: u64 = 2 << 20;
    let w = store
        .writer(Retention {
            max_age: Duration::from_hours(1_000_000),
            max_bytes: budget,
        })
        .unwrap();
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    let pad = "x".repeat(200);
    let n = 40_000u64;
    for i in 0..n {
        w.send(StoreOp::Event {
            ts_ns: now + i,
            kind: "connect",
            pid: 42,
            exec_id: None,
            agent: Some("spiffe://x/a".into()),
            session: None,
            root_exec_id: None,
            body: serde_json::json!({"i": i, "pad": pad}).to_string().into(),
            split: None,
        });
        if i % 4096 == 0 {
            // The queue is bounded: let the writer keep up, as a real ring would.
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
    let written = w.stats.written.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(written, n, "nothing dropped");
    // ~10 MB of events went in; the database holds about its budget.
    let page: u64 = store
        .conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let free: u64 = store
        .conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    let file = store.size_bytes().unwrap();
    let used = file - free * page;
    // Retention deletes down to the budget; the file keeps its high-water mark (free
    // pages are reused, not returned), reached between two runs.
    assert!(
        used <= budget + budget / 8 && file <= 2 * budget,
        "{used} bytes used, file {file} bytes, for a budget of {budget}"
    );
    let left = store
        .events(&Query {
            limit: Some(100_000),
            ..Query::default()
        })
        .unwrap();
    assert!(left.len() < 40_000, "{} left", left.len());
    assert_eq!(left.last().unwrap().body["i"], n - 1, "the newest are kept");
}

#[test]
fn the_shared_encoding_splits_as_the_text_does() {
    // The daemon hands the store the value it encoded for every output; the split must be
    // the one parsing the event's text gives (same context row, same event row).
    let e = crate::audit::sample_connect("research-bot", 3);
    let json = crate::outputs::fanout::EventJson::new(&e).unwrap();
    let ts = crate::outputs::fanout::epoch_ns(e.event.time);
    let kind = e.event.kind.as_str();
    let shared = split_members(&json.text, &json.members, ts, kind, e.event.pid).unwrap();
    let value = serde_json::to_value(&e).unwrap();
    let by_value = split_value(&value, ts, kind, e.event.pid).unwrap();
    assert_eq!(
        (&shared.context, &shared.row),
        (&by_value.context, &by_value.row)
    );
    let text = serde_json::to_string(&e).unwrap();
    let parsed = compact::split(&text, ts, kind, e.event.pid).unwrap();
    assert_eq!(shared.context, parsed.context);
    assert_eq!(shared.row, parsed.row);
    assert!(
        shared.context.contains("research-bot"),
        "{}",
        shared.context
    );
    assert!(
        !shared.row.contains("\"time\""),
        "time is a column: {}",
        shared.row
    );
    assert_eq!(
        shared.hash(Some("a")),
        parsed.hash(Some("a")),
        "the contexts table's key"
    );
    assert_ne!(shared.hash(Some("a")), shared.hash(Some("b")));
}
