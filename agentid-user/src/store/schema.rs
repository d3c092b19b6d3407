//! Schema and migrations, versioned with `PRAGMA user_version`.
use rusqlite::Connection;

use super::StoreError;

/// Each entry migrates from version `i` to `i + 1`; never edit a shipped one, append.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        pid INTEGER NOT NULL,
        exec_id TEXT,
        agent TEXT,
        session TEXT,
        body TEXT NOT NULL
     );
     CREATE INDEX events_ts ON events(ts_ns);
     CREATE INDEX events_agent ON events(agent, ts_ns);
     CREATE TABLE alerts (
        uid TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        first_ns INTEGER NOT NULL,
        last_ns INTEGER NOT NULL,
        count INTEGER NOT NULL,
        agents TEXT NOT NULL,
        body TEXT NOT NULL
     );
     CREATE INDEX alerts_last ON alerts(last_ns);
     CREATE TABLE agents_seen (
        agent TEXT PRIMARY KEY,
        first_ns INTEGER NOT NULL,
        last_ns INTEGER NOT NULL,
        events INTEGER NOT NULL
     );
     CREATE TABLE sessions (
        session TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        root_exec_id TEXT NOT NULL,
        first_ns INTEGER NOT NULL,
        last_ns INTEGER NOT NULL,
        events INTEGER NOT NULL
     );
     CREATE TABLE credentials (
        fingerprint TEXT NOT NULL,
        agent TEXT NOT NULL,
        kind TEXT NOT NULL,
        first_ns INTEGER NOT NULL,
        last_ns INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sources TEXT NOT NULL,
        PRIMARY KEY (fingerprint, agent)
     );",
    // 2: compact events. What an event shares with the other events of its process (agent,
    // session, lineage, exec ids, uid, cgroup, comm, ..) is stored once in `contexts`;
    // the row keeps what is its own. Rows of version 1 keep their whole body (ctx NULL).
    "CREATE TABLE contexts (
        id INTEGER PRIMARY KEY,
        hash INTEGER NOT NULL,
        agent TEXT,
        body TEXT NOT NULL
     );
     CREATE INDEX contexts_hash ON contexts(hash);
     CREATE INDEX contexts_agent ON contexts(agent) WHERE agent IS NOT NULL;
     ALTER TABLE events ADD COLUMN ctx INTEGER;
     CREATE INDEX events_ctx ON events(ctx) WHERE ctx IS NOT NULL;
     DROP INDEX events_agent;
     CREATE INDEX events_agent ON events(agent, ts_ns) WHERE agent IS NOT NULL;",
];

pub(crate) fn version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > version() {
        return Err(StoreError::TooNew {
            found,
            supported: version(),
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
