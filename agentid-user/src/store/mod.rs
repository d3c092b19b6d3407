//! The embedded store: `SQLite` (bundled, WAL) holding attributed events, alerts, agents
//! seen, sessions and credential fingerprints.
//!
//! Writes never happen on the event path: [`Store::writer`] hands records to a dedicated
//! thread that commits them in batches (one transaction per batch). Readers use their own
//! connection; WAL lets them read while the writer writes.
mod compact;
mod schema;
mod writer;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, params_from_iter, types::Value};
use serde::Serialize;

pub use compact::{ProcessContexts, Split, split_members, split_value};
pub use writer::{StoreOp, Writer, WriterStats};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store schema version {found} is newer than this agentid understands ({supported})")]
    TooNew { found: i64, supported: i64 },
    #[error("store query: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store writer has stopped")]
    WriterGone,
}

/// Retention: events older than `max_age` are deleted, and the oldest events go first
/// when the database grows past `max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

/// A stored event row as the API returns it (`body` is the attributed event's JSON).
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    #[serde(flatten)]
    pub body: serde_json::Value,
}

/// Filters for event and alert queries.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub agent: Option<String>,
    pub kind: Option<String>,
    pub rule: Option<String>,
    pub since_ns: Option<u64>,
    pub after_id: Option<i64>,
    pub limit: Option<u32>,
}

/// Read access to the store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL is reset after each checkpoint, but its file keeps its largest size unless
    // limited: a burst would leave it big for good.
    conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating and migrating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = open(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        schema::migrate(&mut conn)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// Starts the batching writer thread on its own connection.
    pub fn writer(&self, retention: Retention) -> Result<Writer, StoreError> {
        let conn = open(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        Ok(Writer::start(conn, retention, dir))
    }

    /// Database size in bytes (pages in use).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from(pages * size).unwrap_or(0))
    }

    /// Events held, from the ends of the id range: retention deletes the oldest only, so
    /// the range has no holes to speak of, and this costs two index lookups, not a scan.
    pub fn events_held(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT coalesce(max(id) - min(id) + 1, 0) FROM events",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub fn events(&self, q: &Query) -> Result<Vec<EventRow>, StoreError> {
        let mut sql = String::from(
            "SELECT e.id, e.body, e.ts_ns, e.kind, e.pid, c.body FROM events e \
             LEFT JOIN contexts c ON c.id = e.ctx WHERE 1=1",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(agent) = &q.agent {
            sql.push_str(
                " AND (e.agent = ?1 OR e.ctx IN (SELECT id FROM contexts WHERE agent = ?1))",
            );
            args.push(Value::Text(agent.clone()));
        }
        let unfiltered = Query {
            agent: None,
            ..q.clone()
        };
        push_filters(&mut sql, &mut args, &unfiltered, "e.ts_ns", "e.id");
        if let Some(kind) = &q.kind {
            sql.push_str(" AND e.kind = ?");
            args.push(Value::Text(kind.clone()));
        }
        let limit = q.limit.unwrap_or(1000).min(100_000);
        let sql = format!("SELECT * FROM ({sql} ORDER BY 1 DESC LIMIT {limit}) ORDER BY 1 ASC");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            let id: i64 = r.get(0)?;
            let body: String = r.get(1)?;
            let ts: i64 = r.get(2)?;
            let kind: String = r.get(3)?;
            let pid: i64 = r.get(4)?;
            let ctx: Option<String> = r.get(5)?;
            Ok((id, body, ts, kind, pid, ctx))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body, ts, kind, pid, ctx) = row?;
            let body = match ctx {
                Some(ctx) => compact::merge(&body, Some(&ctx), ts, &kind, pid),
                None => serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
            };
            out.push(EventRow { id, body });
        }
        Ok(out)
    }

    pub fn alerts(&self, q: &Query) -> Result<Vec<EventRow>, StoreError> {
        let mut sql = String::from("SELECT rowid, body FROM alerts WHERE 1=1");
        let mut args: Vec<Value> = Vec::new();
        push_filters(&mut sql, &mut args, q, "last_ns", "rowid");
        if let Some(rule) = &q.rule {
            sql.push_str(" AND rule = ?");
            args.push(Value::Text(rule.clone()));
        }
        self.rows(
            sql.replace("agent = ?", "agents LIKE '%' || ? || '%'"),
            args,
            q,
        )
    }

    fn rows(
        &self,
        mut sql: String,
        args: Vec<Value>,
        q: &Query,
    ) -> Result<Vec<EventRow>, StoreError> {
        // Newest `limit` rows, returned oldest first.
        let limit = q.limit.unwrap_or(1000).min(100_000);
        sql = format!("SELECT * FROM ({sql} ORDER BY 1 DESC LIMIT {limit}) ORDER BY 1 ASC");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            let id: i64 = r.get(0)?;
            let body: String = r.get(1)?;
            Ok((id, body))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
            out.push(EventRow { id, body });
        }
        Ok(out)
    }

    /// Credential fingerprints with the agents that used them.
    pub fn credentials(&self, agent: Option<&str>) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT fingerprint, kind, agent, first_ns, last_ns, count, sources FROM credentials \
             WHERE (?1 IS NULL OR agent = ?1) ORDER BY fingerprint, agent",
        )?;
        let rows = stmt.query_map([agent], |r| {
            Ok(serde_json::json!({
                "fingerprint": r.get::<_, String>(0)?,
                "kind": r.get::<_, String>(1)?,
                "agent": r.get::<_, String>(2)?,
                "first_seen_ns": r.get::<_, i64>(3)?,
                "last_seen_ns": r.get::<_, i64>(4)?,
                "count": r.get::<_, i64>(5)?,
                "sources": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(6)?).unwrap_or_default(),
            }))
        })?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    /// Sessions (running or past) with their agent.
    pub fn sessions(&self, agent: Option<&str>) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT session, agent, root_exec_id, first_ns, last_ns, events FROM sessions \
             WHERE (?1 IS NULL OR agent = ?1) ORDER BY first_ns",
        )?;
        let rows = stmt.query_map([agent], |r| {
            Ok(serde_json::json!({
                "session": r.get::<_, String>(0)?,
                "agent": r.get::<_, String>(1)?,
                "root_exec_id": r.get::<_, String>(2)?,
                "first_seen_ns": r.get::<_, i64>(3)?,
                "last_seen_ns": r.get::<_, i64>(4)?,
                "events": r.get::<_, i64>(5)?,
            }))
        })?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    /// Agents that produced events, with counts.
    pub fn agents_seen(&self) -> Result<Vec<(String, i64, i64, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT agent, first_ns, last_ns, events FROM agents_seen ORDER BY agent")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }
}

fn push_filters(sql: &mut String, args: &mut Vec<Value>, q: &Query, ts: &str, rowid: &str) {
    if let Some(agent) = &q.agent {
        sql.push_str(" AND agent = ?");
        args.push(Value::Text(agent.clone()));
    }
    if let Some(since) = q.since_ns {
        let _ = write!(sql, " AND {ts} >= ?");
        args.push(Value::Integer(i64::try_from(since).unwrap_or(i64::MAX)));
    }
    if let Some(after) = q.after_id {
        let _ = write!(sql, " AND {rowid} > ?");
        args.push(Value::Integer(after));
    }
}

#[cfg(test)]
mod tests;
