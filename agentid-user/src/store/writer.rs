//! The batching writer thread.
use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use rusqlite::{Connection, params};

use super::{Retention, StoreError, compact};
use crate::{health::WriteHealth, queue};

/// One write. Bodies are JSON already serialised by the caller.
#[derive(Debug)]
pub enum StoreOp {
    Event {
        ts_ns: u64,
        kind: &'static str,
        pid: u32,
        exec_id: Option<String>,
        agent: Option<String>,
        session: Option<String>,
        root_exec_id: Option<String>,
        /// The event's JSON text.
        body: Arc<str>,
        /// `body` already split by [`compact::split_value`], when the caller had the
        /// event's JSON value at hand (the daemon does): spares parsing `body`.
        split: Option<compact::Split>,
    },
    /// Insert or update (same uid = same incident).
    Alert {
        uid: String,
        rule: String,
        severity: String,
        first_ns: u64,
        last_ns: u64,
        count: u64,
        agents: String,
        body: String,
    },
    Credential {
        fingerprint: String,
        agent: String,
        kind: String,
        ts_ns: u64,
        source: String,
    },
    /// Answered once everything sent before it is committed.
    Flush(mpsc::Sender<()>),
}

/// Counters shown by `agentid status`.
#[derive(Debug)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub batches: AtomicU64,
    /// Records refused because the writer fell too far behind (queue full).
    pub dropped: AtomicU64,
    /// Failed batches; `health.lost` counts their records.
    pub errors: AtomicU64,
    pub health: WriteHealth,
    /// Operations waiting for the writer thread (the backlog).
    pub queued: queue::Depth,
}

/// Handle to the writer thread. Dropping every clone stops the thread after a last commit.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: queue::Sender<StoreOp>,
    pub stats: Arc<WriterStats>,
}

/// Queue depth: about a second of a heavy event storm.
const QUEUE: usize = 65_536;
const BATCH_MAX: usize = 4096;
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// How long the writer sleeps between looks at the queue while a batch fills.
const FILL_STEP: Duration = Duration::from_millis(5);
const RETENTION_EVERY: Duration = Duration::from_mins(1);
/// Under load retention runs sooner: once the events written since the last run may
/// amount to this share of the size budget, so the store overshoots it by little however
/// fast events arrive.
const RETENTION_SHARE: u64 = 16;

impl Writer {
    /// `dir` holds the database: probed for the cause when writes fail.
    pub(super) fn start(conn: Connection, retention: Retention, dir: &Path) -> Self {
        let (tx, rx) = queue::bounded(QUEUE);
        let stats = Arc::new(WriterStats {
            written: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            health: WriteHealth::new("store", dir),
            queued: tx.depth(),
        });
        let thread_stats = Arc::clone(&stats);
        thread::Builder::new()
            .name("agentid-store".into())
            .spawn(move || run(conn, &rx, &thread_stats, retention))
            .map_or_else(
                |e| tracing::error!(error = %e, "cannot start the store writer"),
                |_| (),
            );
        Self { tx, stats }
    }

    /// Queues a write without blocking; a full queue counts a drop.
    pub fn send(&self, op: StoreOp) {
        if self.tx.try_send(op).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until everything queued so far is committed.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send_control(StoreOp::Flush(tx))
            .map_err(|_| StoreError::WriterGone)?;
        rx.recv().map_err(|_| StoreError::WriterGone)
    }
}

fn run(
    mut conn: Connection,
    rx: &queue::Receiver<StoreOp>,
    stats: &WriterStats,
    retention: Retention,
) {
    let mut last_retention = Instant::now();
    // Bytes written since the last retention run (bodies and a row's overhead): an
    // upper bound of the growth, compact rows being smaller.
    let mut grown: u64 = 0;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut contexts = Contexts::default();
    while let Ok(first) = rx.recv() {
        let mut flush = matches!(first, StoreOp::Flush(_));
        batch.push(first);
        // The batch fills while this thread sleeps in short steps rather than waiting on
        // the queue: a receiver parked on an empty queue is woken by every send, a futex
        // round trip per event for both threads. A flush request ends the batch at once.
        let deadline = Instant::now() + BATCH_WAIT;
        'fill: while batch.len() < BATCH_MAX && !flush {
            while let Some(op) = rx.try_recv() {
                flush |= matches!(op, StoreOp::Flush(_));
                batch.push(op);
                if batch.len() >= BATCH_MAX || flush {
                    break 'fill;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            thread::sleep(left.min(FILL_STEP));
        }
        // Flushes are answered after the commit, whether it worked or not: nobody may wait
        // forever on a store that cannot write.
        let (flushes, ops): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .partition(|op| matches!(op, StoreOp::Flush(_)));
        batch = ops;
        let mut waiters: Vec<mpsc::Sender<()>> = flushes
            .into_iter()
            .filter_map(|op| match op {
                StoreOp::Flush(w) => Some(w),
                _ => None,
            })
            .collect();
        let records = batch.len() as u64;
        grown += batch
            .iter()
            .map(|op| match op {
                StoreOp::Event { body, .. } => body.len() as u64 + 64,
                _ => 0,
            })
            .sum::<u64>();
        match commit(&mut conn, &mut batch, &mut waiters, &mut contexts) {
            Ok(n) => {
                stats.written.fetch_add(n, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                // A batch of flushes only commits an empty transaction, which works on a
                // read-only filesystem too: no proof that writes work again.
                if n > 0 {
                    stats.health.succeeded();
                }
            }
            Err(e) => {
                // The whole batch is one transaction: all of it is lost.
                batch.clear();
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.health.failed(&e, records);
            }
        }
        // While writes fail, so would retention's deletes: the failure is reported already.
        let due = last_retention.elapsed() >= RETENTION_EVERY
            || grown >= retention.max_bytes / RETENTION_SHARE;
        if due && stats.health.degraded().is_none() {
            last_retention = Instant::now();
            grown = 0;
            if let Err(e) = enforce_retention(&conn, retention) {
                tracing::warn!(error = %e, "store retention failed");
            }
            // Contexts no event uses any more were deleted.
            contexts.clear();
        }
        // Answered after retention too: a flushed store is within its budget.
        for w in waiters {
            let _ = w.send(());
        }
    }
}

fn commit(
    conn: &mut Connection,
    batch: &mut Vec<StoreOp>,
    waiters: &mut Vec<mpsc::Sender<()>>,
    contexts: &mut Contexts,
) -> Result<u64, rusqlite::Error> {
    let tx = conn.transaction()?;
    let mut n = 0;
    {
        let mut ev = tx.prepare_cached(
            "INSERT INTO events (ts_ns, kind, pid, exec_id, agent, session, body) VALUES (?,?,?,?,?,?,?)",
        )?;
        let mut ev_compact = tx.prepare_cached(
            "INSERT INTO events (ts_ns, kind, pid, body, ctx) VALUES (?,?,?,?,?)",
        )?;
        // Per-agent and per-session counters are summed over the batch first and written
        // once per key: one statement per event instead of three (most of a batch is a
        // handful of agents and sessions).
        let mut counters = BatchCounters::default();
        let mut alert = tx.prepare_cached(
            "INSERT INTO alerts (uid, rule, severity, first_ns, last_ns, count, agents, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(uid) DO UPDATE SET last_ns = ?5, count = ?6, agents = ?7, body = ?8, severity = ?3",
        )?;
        let mut cred = tx.prepare_cached(
            "INSERT INTO credentials (fingerprint, agent, kind, first_ns, last_ns, count, sources)
             VALUES (?1, ?2, ?3, ?4, ?4, 1, json_array(?5))
             ON CONFLICT(fingerprint, agent) DO UPDATE SET last_ns = max(last_ns, ?4), count = count + 1,
               sources = CASE WHEN EXISTS (SELECT 1 FROM json_each(sources) WHERE value = ?5)
                              OR json_array_length(sources) >= 16
                         THEN sources ELSE json_insert(sources, '$[#]', ?5) END",
        )?;
        for op in batch.drain(..) {
            match op {
                StoreOp::Event {
                    ts_ns,
                    kind,
                    pid,
                    exec_id,
                    agent,
                    session,
                    root_exec_id,
                    body,
                    split,
                } => {
                    let ts = i64::try_from(ts_ns).unwrap_or(i64::MAX);
                    let split = split.or_else(|| compact::split(&body, ts_ns, kind, pid));
                    match split.map(|s| contexts.id(&tx, &s, agent.as_deref()).map(|id| (s, id))) {
                        Some(Ok((s, Some(ctx)))) => {
                            ev_compact.execute(params![ts, kind, pid, s.row, ctx])?;
                        }
                        Some(Err(e)) => return Err(e),
                        _ => {
                            ev.execute(params![ts, kind, pid, exec_id, agent, session, &*body])?;
                        }
                    }
                    counters.add(agent, session, root_exec_id, ts);
                }
                StoreOp::Alert {
                    uid,
                    rule,
                    severity,
                    first_ns,
                    last_ns,
                    count,
                    agents,
                    body,
                } => {
                    alert.execute(params![
                        uid,
                        rule,
                        severity,
                        i64::try_from(first_ns).unwrap_or(i64::MAX),
                        i64::try_from(last_ns).unwrap_or(i64::MAX),
                        i64::try_from(count).unwrap_or(i64::MAX),
                        agents,
                        body
                    ])?;
                }
                StoreOp::Credential {
                    fingerprint,
                    agent,
                    kind,
                    ts_ns,
                    source,
                } => {
                    let ts = i64::try_from(ts_ns).unwrap_or(i64::MAX);
                    cred.execute(params![fingerprint, agent, kind, ts, source])?;
                }
                StoreOp::Flush(w) => {
                    waiters.push(w);
                    continue;
                }
            }
            n += 1;
        }
        counters.write(&tx)?;
    }
    tx.commit()?;
    Ok(n)
}

/// Context ids by (agent, context): most events are of a process seen a moment ago.
#[derive(Debug, Default)]
struct Contexts {
    /// By the address of a context shared by a process's events (see
    /// [`compact::ProcessContexts`]; held here, so no other context takes the address while
    /// it is known), then agent: the id.
    shared: rustc_hash::FxHashMap<usize, (Arc<str>, Ids)>,
    /// By context text, then agent: the id.
    known: rustc_hash::FxHashMap<String, Ids>,
    /// Entries in both maps.
    len: usize,
}

type Ids = Vec<(Option<String>, i64)>;

fn find(ids: &Ids, agent: Option<&str>) -> Option<i64> {
    ids.iter()
        .find(|(a, _)| a.as_deref() == agent)
        .map(|(_, id)| *id)
}

/// Contexts remembered at most; beyond, the cache starts again (a lookup is one indexed
/// query).
const CONTEXTS_CACHED: usize = 4096;

impl Contexts {
    /// The id of the context (stored now if new); `None` on a hash collision with another
    /// context, whose event is then stored whole.
    fn id(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        split: &compact::Split,
        agent: Option<&str>,
    ) -> Result<Option<i64>, rusqlite::Error> {
        let addr = Arc::as_ptr(&split.context).cast::<u8>().addr();
        if let Some(id) = self.shared.get(&addr).and_then(|(_, ids)| find(ids, agent)) {
            return Ok(Some(id));
        }
        let known = self
            .known
            .get(&*split.context)
            .and_then(|ids| find(ids, agent));
        let id = if let Some(id) = known {
            id
        } else {
            let id = Self::lookup(tx, split, agent)?;
            self.known
                .entry(split.context.to_string())
                .or_default()
                .push((agent.map(str::to_owned), id));
            self.len += 1;
            id
        };
        if self.len >= CONTEXTS_CACHED {
            self.clear();
        }
        self.shared
            .entry(addr)
            .or_insert_with(|| (Arc::clone(&split.context), Vec::new()))
            .1
            .push((agent.map(str::to_owned), id));
        self.len += 1;
        Ok(Some(id))
    }

    /// The context's id in the table, stored now if new.
    fn lookup(
        tx: &rusqlite::Transaction<'_>,
        split: &compact::Split,
        agent: Option<&str>,
    ) -> Result<i64, rusqlite::Error> {
        let hash = split.hash(agent);
        let mut find = tx.prepare_cached("SELECT id, agent, body FROM contexts WHERE hash = ?")?;
        let mut rows = find.query([hash])?;
        while let Some(r) = rows.next()? {
            let (id, a, body): (i64, Option<String>, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if a.as_deref() == agent && *body == *split.context {
                return Ok(id);
            }
        }
        drop(rows);
        tx.prepare_cached("INSERT INTO contexts (hash, agent, body) VALUES (?, ?, ?)")?
            .execute(params![hash, agent, &*split.context])?;
        Ok(tx.last_insert_rowid())
    }

    fn clear(&mut self) {
        self.shared.clear();
        self.known.clear();
        self.len = 0;
    }
}

/// Per-agent and per-session counters of one batch.
#[derive(Debug, Default)]
struct BatchCounters {
    agents: HashMap<String, Span>,
    /// session → (agent, root exec id, span).
    sessions: HashMap<String, (String, String, Span)>,
}

impl BatchCounters {
    fn add(
        &mut self,
        agent: Option<String>,
        session: Option<String>,
        root_exec_id: Option<String>,
        ts: i64,
    ) {
        let agent_key = agent.as_deref().unwrap_or("unregistered");
        if let Some(span) = self.agents.get_mut(agent_key) {
            span.add(ts);
        } else {
            self.agents.insert(agent_key.to_owned(), Span::new(ts));
        }
        if let (Some(session), Some(agent)) = (session, agent) {
            if let Some((_, _, span)) = self.sessions.get_mut(&session) {
                span.add(ts);
            } else {
                let root = root_exec_id.unwrap_or_default();
                self.sessions.insert(session, (agent, root, Span::new(ts)));
            }
        }
    }

    fn write(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), rusqlite::Error> {
        let mut seen = tx.prepare_cached(
            "INSERT INTO agents_seen (agent, first_ns, last_ns, events) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(agent) DO UPDATE SET first_ns = min(first_ns, ?2),
               last_ns = max(last_ns, ?3), events = events + ?4",
        )?;
        for (agent, span) in &self.agents {
            seen.execute(params![agent, span.first, span.last, span.events])?;
        }
        let mut sess = tx.prepare_cached(
            "INSERT INTO sessions (session, agent, root_exec_id, first_ns, last_ns, events)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(session) DO UPDATE SET first_ns = min(first_ns, ?4),
               last_ns = max(last_ns, ?5), events = events + ?6",
        )?;
        for (session, (agent, root, span)) in &self.sessions {
            sess.execute(params![
                session,
                agent,
                root,
                span.first,
                span.last,
                span.events
            ])?;
        }
        Ok(())
    }
}

/// First and last event time and the event count of one key within a batch.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: i64,
    last: i64,
    events: i64,
}

impl Span {
    fn new(ts: i64) -> Self {
        Self {
            first: ts,
            last: ts,
            events: 1,
        }
    }

    fn add(&mut self, ts: i64) {
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
        self.events += 1;
    }
}

pub(super) fn enforce_retention(
    conn: &Connection,
    retention: Retention,
) -> Result<(), rusqlite::Error> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let cutoff = now.saturating_sub(retention.max_age.as_nanos());
    let cutoff = i64::try_from(cutoff).unwrap_or(i64::MAX);
    conn.execute("DELETE FROM events WHERE ts_ns < ?", [cutoff])?;
    let size = |c: &Connection| -> Result<u64, rusqlite::Error> {
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from((pages - free) * page).unwrap_or(0))
    };
    // Over budget: drop the oldest tenth of the events until under it (bounded passes).
    for _ in 0..10 {
        if size(conn)? <= retention.max_bytes {
            break;
        }
        conn.execute(
            "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id LIMIT 1 OFFSET \
             (SELECT count(*) / 10 FROM events))",
            [],
        )?;
    }
    conn.execute(
        "DELETE FROM contexts WHERE NOT EXISTS (SELECT 1 FROM events WHERE events.ctx = contexts.id)",
        [],
    )?;
    Ok(())
}
