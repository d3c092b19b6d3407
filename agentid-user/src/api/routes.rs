//! Route handlers.
use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio_stream::{StreamExt as _, wrappers::BroadcastStream};

use super::{
    ApiError,
    types::{self, Params, RevokeParams},
};
use crate::{
    credentials::RevocationError,
    event::EventKind,
    state::{Live, LiveView, Shared},
    store::{self, Store},
};

type Shr = State<Arc<Shared>>;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/agents", get(agents))
        .route("/v1/agent", get(agent))
        .route("/v1/sessions", get(sessions))
        .route("/v1/processes", get(processes))
        .route("/v1/connections", get(connections))
        .route("/v1/events", get(events))
        .route("/v1/alerts", get(alerts))
        .route("/v1/credentials", get(credentials))
        .route("/v1/credentials/revoke", axum::routing::post(revoke))
        .route("/v1/fleet/hosts", get(super::fleet::hosts))
        .route("/v1/fleet/agents", get(super::fleet::agents))
        .route("/v1/fleet/credentials", get(super::fleet::credentials))
        .route("/v1/fleet/alerts", get(super::fleet::alerts))
        .route("/v1/fleet/revocations", get(super::fleet::revocations))
        .route("/v1/tokens", get(tokens))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
}

fn params(q: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    let Query(p) = q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    if let Some(k) = &p.kind
        && !EventKind::ALL.iter().any(|e| e.as_str() == k)
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("unknown kind {k:?}: expected {}", kind_list()),
        ));
    }
    Ok(p)
}

/// `open, exec, …, connect or send`: built from [`EventKind::ALL`] so a new kind is never left
/// out of the message (`open` was).
fn kind_list() -> String {
    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Runs a store read off the async threads.
async fn with_store<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Store) -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let s = shared
            .store
            .lock()
            .map_err(|_| internal("store lock poisoned"))?;
        f(&s).map_err(internal)
    })
    .await
    .map_err(internal)?
}

async fn status(State(s): Shr) -> Result<Json<types::Status>, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let received = s.counters.received();
    let rates = s.rates.per_second();
    let mut events = BTreeMap::new();
    let mut per_sec = BTreeMap::new();
    let mut drops = BTreeMap::new();
    for k in EventKind::ALL {
        let i = k.abi() as usize;
        events.insert(k.as_str().to_owned(), received[i]);
        per_sec.insert(k.as_str().to_owned(), (rates[i] * 10.0).round() / 10.0);
        drops.insert(k.as_str().to_owned(), s.counters.drops[i].load(Relaxed));
    }
    let store_bytes = with_store(&s, Store::size_bytes).await?;
    let store_events = with_store(&s, Store::events_held).await?;
    let view = s.view();
    let config = s
        .config
        .read()
        .map_err(|_| internal("config lock poisoned"))?
        .clone();
    let outputs = s.output_stats.get();
    let audit = outputs.and_then(|o| o.audit.as_ref()).map(|a| {
        let dir = config.state_dir.join("audit");
        let bytes = crate::audit::dir_bytes(&dir);
        let records = a.held.load(Relaxed);
        types::AuditStatus {
            appended: a.appended.load(Relaxed),
            dropped: a.dropped.load(Relaxed),
            errors: a.errors.load(Relaxed),
            lost: a.health.lost.load(Relaxed),
            degraded: a.health.degraded(),
            bytes,
            records,
            bytes_per_record: bytes.checked_div(records).unwrap_or(0),
            dir,
        }
    });
    let sinks = outputs.map(|o| o.sinks.stats()).unwrap_or_default();
    let w = &s.writer_stats;
    Ok(Json(types::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_s: s.started.elapsed().as_secs(),
        probes: s.probes.iter().map(|&p| p.to_owned()).collect(),
        events,
        events_per_s: per_sec,
        drops,
        undecodable: s.counters.undecodable.load(Relaxed),
        alerts: s.counters.alerts.load(Relaxed),
        processes: types::ProcessCounts {
            live: view.live,
            exited_kept: view.exited_kept,
        },
        registry: types::RegistryStatus {
            ambiguous: identity_issues(&view, |id| {
                (!id.ambiguous.is_empty()).then(|| id.ambiguous.clone())
            }),
            escaped: identity_issues(&view, |id| id.escaped_to.clone().map(|c| vec![c])),
            dir: config.agents_dir.clone(),
            agents: view.registry.agents().len(),
            errors: view
                .registry
                .errors()
                .iter()
                .map(ToString::to_string)
                .collect(),
        },
        store: types::StoreStatus {
            path: config.store_path(),
            bytes: store_bytes,
            written: w.written.load(Relaxed),
            dropped: w.dropped.load(Relaxed),
            errors: w.errors.load(Relaxed),
            lost: w.health.lost.load(Relaxed),
            degraded: w.health.degraded(),
            events: store_events,
            bytes_per_event: store_bytes.checked_div(store_events).unwrap_or(0),
        },
        alerts_file: config.alerts_file,
        audit,
        sinks,
        issuer: s.issuer.get().map(|i| i.status()),
        tls: s.tls_targets.read().map(|t| t.clone()).unwrap_or_default(),
        enforced: s.enforced.read().map(|t| t.clone()).unwrap_or_default(),
        memory: memory_status(&s, &view),
    }))
}

fn memory_status(s: &Shared, view: &LiveView) -> types::MemoryStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let table_bytes = u64::try_from(view.table_bytes).unwrap_or(u64::MAX);
    let live = u64::try_from(view.live).unwrap_or(u64::MAX);
    types::MemoryStatus {
        rss_bytes: crate::sys::rss_bytes().unwrap_or(0),
        ring_bytes: s.counters.ring_size_bytes.load(Relaxed),
        ring_peak_bytes: s.counters.ring_peak_bytes.load(Relaxed),
        table_bytes,
        table_bytes_per_live: table_bytes.checked_div(live).unwrap_or(0),
    }
}

/// Live processes with their identity, optionally for one agent, from the snapshot.
fn live_processes(view: &LiveView, agent: Option<&str>) -> Vec<types::ProcessView> {
    view.processes
        .iter()
        .filter(|(_, id)| agent.is_none() || agent == id.as_ref().and_then(|i| i.agent_id()))
        .map(|(p, id)| {
            let ident = id.as_deref();
            types::ProcessView {
                process: p.clone(),
                agent: ident.and_then(|i| i.agent.clone()),
                session: ident.and_then(|i| i.session.clone()),
                acting_for: ident.map(|i| i.acting_for.clone()).unwrap_or_default(),
                lineage: ident.map(|i| i.lineage.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

async fn processes(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Vec<types::ProcessView>>, ApiError> {
    let p = params(q)?;
    Ok(Json(live_processes(&s.view(), p.agent.as_deref())))
}

fn agent_summaries(view: &LiveView) -> Vec<types::AgentSummary> {
    let procs = live_processes(view, None);
    view.registry
        .agents()
        .iter()
        .map(|a| {
            let mine: Vec<&types::ProcessView> = procs
                .iter()
                .filter(|p| p.agent.as_ref().is_some_and(|r| r.id == a.id.as_str()))
                .collect();
            let sessions: std::collections::BTreeSet<&str> =
                mine.iter().filter_map(|p| p.session.as_deref()).collect();
            types::AgentSummary {
                id: a.id.as_str().to_owned(),
                name: a.name.clone(),
                owner: a.owner.clone(),
                environment: a.environment.clone(),
                registered_in: a.origin.to_string(),
                live_sessions: sessions.len(),
                live_processes: mine.len(),
            }
        })
        .collect()
}

async fn agents(State(s): Shr) -> Json<types::Agents> {
    let view = s.view();
    let unregistered = live_processes(&view, None)
        .iter()
        .filter(|p| p.agent.is_none())
        .count();
    Json(types::Agents {
        agents: agent_summaries(&view),
        unregistered_processes: unregistered,
    })
}

async fn agent(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<types::AgentDetail>, ApiError> {
    let p = params(q)?;
    let id =
        p.id.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing ?id=SPIFFE_ID".into()))?;
    let view = s.view();
    let summary = agent_summaries(&view)
        .into_iter()
        .find(|a| a.id == id || a.name.as_deref() == Some(id.as_str()))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no registered agent {id:?}")))?;
    let processes = live_processes(&view, Some(&summary.id));
    let sessions = agent_rows(&s, Some(summary.id.clone()), Store::sessions).await?;
    Ok(Json(types::AgentDetail {
        agent: summary,
        processes,
        sessions,
    }))
}

/// Rows of one agent (or all) from the store, as the API's type: a store column that no
/// longer matches its type is a 500 naming the field, not a quietly missing value.
async fn agent_rows<T: serde::de::DeserializeOwned>(
    s: &Arc<Shared>,
    agent: Option<String>,
    read: fn(&Store, Option<&str>) -> Result<Vec<Value>, store::StoreError>,
) -> Result<Vec<T>, ApiError> {
    with_store(s, move |st| read(st, agent.as_deref()))
        .await?
        .into_iter()
        .map(|v| serde_json::from_value(v).map_err(internal))
        .collect()
}

async fn sessions(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Vec<types::SessionRow>>, ApiError> {
    let p = params(q)?;
    Ok(Json(agent_rows(&s, p.agent, Store::sessions).await?))
}

async fn credentials(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Vec<types::CredentialRow>>, ApiError> {
    let p = params(q)?;
    Ok(Json(agent_rows(&s, p.agent, Store::credentials).await?))
}

async fn revoke(
    State(s): Shr,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<super::Peer>,
    q: Result<Query<RevokeParams>, QueryRejection>,
) -> Result<Json<types::Revoked>, ApiError> {
    let Query(p) = q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let prefix = s.revocations.add(&p.fingerprint).map_err(|e| match e {
        RevocationError::Parse { .. } => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        RevocationError::Read { .. } | RevocationError::Write { .. } => internal(e),
    })?;
    s.detector
        .lock()
        .map_err(|_| internal("detector lock poisoned"))?
        .revoke(prefix);
    if let Some(f) = s.fleet.get() {
        // To every host's detector through the watched bucket; shown with who and where.
        let r = crate::fleet::Revocation {
            prefix: p.fingerprint.trim().to_owned(),
            by: format!("uid {}", peer.uid),
            host: f.host().to_owned(),
            time_ms: crate::fleet::records::now_ms(),
        };
        let key = r.prefix.rsplit(':').next().unwrap_or_default().to_owned();
        if let Some(o) = crate::fleet::Outgoing::kv(crate::fleet::records::REVOCATIONS, key, &r) {
            f.submit(o);
        }
    }
    Ok(Json(types::Revoked {
        revoked: p.fingerprint,
    }))
}

fn store_query(p: &Params) -> store::Query {
    store::Query {
        agent: p.agent.clone(),
        kind: p.kind.clone(),
        rule: p.rule.clone(),
        since_ns: p.since,
        after_id: None,
        limit: p.limit,
    }
}

async fn connections(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(q)?;
    let mut rows = Vec::new();
    for kind in ["connect", "send"] {
        let mut sq = store_query(&p);
        sq.kind = Some(kind.into());
        rows.extend(with_store(&s, move |st| st.events(&sq)).await?);
    }
    rows.sort_by_key(|r| r.id);
    Ok(Json(json!(
        rows.into_iter().map(|r| r.body).collect::<Vec<_>>()
    )))
}

async fn events(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(q)?;
    let filter = p.kind.clone();
    history_then_live(&s, &p, &s.events, Store::events, filter).await
}

async fn alerts(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(q)?;
    let filter = p.rule.clone();
    history_then_live(&s, &p, &s.alerts, Store::alerts, filter).await
}

/// The stored history, then (with `follow`) the live stream: subscribed first and the
/// store committed, so nothing falls between the two.
async fn history_then_live(
    s: &Arc<Shared>,
    p: &Params,
    channel: &tokio::sync::broadcast::Sender<Live>,
    fetch: fn(&Store, &store::Query) -> Result<Vec<store::EventRow>, store::StoreError>,
    filter: Option<String>,
) -> Result<Response, ApiError> {
    let live = p.follow.unwrap_or(false).then(|| channel.subscribe());
    if live.is_some() {
        committed(s).await;
    }
    let sq = store_query(p);
    let history = with_store(s, move |st| fetch(st, &sq)).await?;
    let history: Vec<Value> = history.into_iter().map(|r| r.body).collect();
    Ok(respond(history, live, p.agent.clone(), filter))
}

/// Waits until everything the event loop sent to the store so far is committed. The
/// outputs tell the store before the followers, so after subscribing and this, an item is
/// in the history or in the live stream: none falls between them (one may be in both).
async fn committed(s: &Arc<Shared>) {
    let Some(writer) = s.store_writer.get().cloned() else {
        return;
    };
    match tokio::task::spawn_blocking(move || writer.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "follow: the store did not commit"),
        Err(e) => tracing::warn!(error = %e, "follow: waiting for the store"),
    }
}

/// A JSON array, or — when following — NDJSON: the history, then live items as they come.
/// Subscribing, then waiting for the store ([`committed`]), then reading history means
/// nothing falls between the two (an item may appear twice).
fn respond(
    history: Vec<Value>,
    subscription: Option<tokio::sync::broadcast::Receiver<Live>>,
    agent: Option<String>,
    kind: Option<String>,
) -> Response {
    let Some(rx) = subscription else {
        return Json(history).into_response();
    };
    let head = tokio_stream::iter(history.into_iter().map(|item| {
        let mut line = item.to_string();
        line.push('\n');
        Ok::<_, Infallible>(Bytes::from(line))
    }));
    let tail = BroadcastStream::new(rx).filter_map(move |item| {
        let live = match item {
            Ok(live) => live,
            // A follower too slow for the stream is told, not silently skipped.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                return Some(Ok(Bytes::from(format!("{{\"lagged\":{n}}}\n"))));
            }
        };
        if agent
            .as_ref()
            .is_some_and(|a| live.agent.as_ref() != Some(a))
        {
            return None;
        }
        if kind.as_ref().is_some_and(|k| &live.kind != k) {
            return None;
        }
        let mut text = live.json.to_string();
        text.push('\n');
        Some(Ok(Bytes::from(text)))
    });
    // Keep-alive newlines let a follower notice a dead daemon.
    let keepalive =
        tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(Duration::from_secs(15)))
            .map(|_| Ok(Bytes::from_static(b"\n")));
    let body = Body::from_stream(head.chain(tail.merge(keepalive)));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// Live processes whose identity `issue` flags, with what it says.
fn identity_issues(
    view: &LiveView,
    issue: impl Fn(&crate::attribution::ProcIdentity) -> Option<Vec<String>>,
) -> Vec<types::IdentityIssue> {
    view.processes
        .iter()
        .filter_map(|(p, id)| {
            let id = id.as_deref()?;
            Some(types::IdentityIssue {
                pid: p.pid,
                agent: id.agent_id().unwrap_or("unregistered").to_owned(),
                detail: issue(id)?,
            })
        })
        .collect()
}

/// Tokens the issuer minted (never the tokens: their ids and bindings).
async fn tokens(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Vec<crate::issuer::IssuedToken>>, ApiError> {
    let p = params(q)?;
    Ok(Json(
        s.issuer
            .get()
            .map(|i| i.issued(p.agent.as_deref()))
            .unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_is_refused_naming_every_kind() {
        let bad = Params {
            kind: Some("opne".into()),
            ..Params::default()
        };
        let Err(ApiError(status, msg)) = params(Ok(Query(bad))) else {
            panic!("accepted an unknown kind");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            msg,
            "unknown kind \"opne\": expected open, exec, fork, exit, connect, send, socket or request"
        );
        for kind in EventKind::ALL {
            let ok = Params {
                kind: Some(kind.as_str().into()),
                ..Params::default()
            };
            assert!(params(Ok(Query(ok))).is_ok(), "{kind:?}");
        }
    }
}
