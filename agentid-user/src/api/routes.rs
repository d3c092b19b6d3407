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
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::{StreamExt as _, wrappers::BroadcastStream};

use super::ApiError;
use crate::{
    daemon::state::{Live, Shared},
    event::EventKind,
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
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
}

/// Query parameters; unknown ones are refused so typos do not silently widen a query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    pub id: Option<String>,
    pub agent: Option<String>,
    pub kind: Option<String>,
    pub rule: Option<String>,
    pub since: Option<u64>,
    pub limit: Option<u32>,
    pub follow: Option<bool>,
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

async fn status(State(s): Shr) -> Result<Json<Value>, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let received = s.counters.received();
    let rates = s.rates.per_second();
    let mut events = BTreeMap::new();
    let mut per_sec = BTreeMap::new();
    let mut drops = BTreeMap::new();
    for k in EventKind::ALL {
        let i = k.abi() as usize;
        events.insert(k.as_str(), received[i]);
        per_sec.insert(k.as_str(), (rates[i] * 10.0).round() / 10.0);
        drops.insert(k.as_str(), s.counters.drops[i].load(Relaxed));
    }
    let store_bytes = with_store(&s, Store::size_bytes).await?;
    let (agents, registry_errors, live, exited) = {
        let p = s
            .pipeline
            .lock()
            .map_err(|_| internal("pipeline lock poisoned"))?;
        let errors: Vec<String> = p
            .registry()
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        (
            p.registry().agents().len(),
            errors,
            p.table.live_count(),
            p.table.exited_count(),
        )
    };
    let config = s
        .config
        .read()
        .map_err(|_| internal("config lock poisoned"))?
        .clone();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": s.started.elapsed().as_secs(),
        "probes": s.probes,
        "events": events,
        "events_per_s": per_sec,
        "drops": drops,
        "undecodable": s.counters.undecodable.load(Relaxed),
        "alerts": s.counters.alerts.load(Relaxed),
        "processes": {"live": live, "exited_kept": exited},
        "registry": {"dir": config.agents_dir, "agents": agents, "errors": registry_errors},
        "store": {
            "path": config.store_path(),
            "bytes": store_bytes,
            "written": s.writer_stats.written.load(Relaxed),
            "dropped": s.writer_stats.dropped.load(Relaxed),
            "errors": s.writer_stats.errors.load(Relaxed),
            "lost": s.writer_stats.health.lost.load(Relaxed),
            "degraded": s.writer_stats.health.degraded(),
        },
        "alerts_file": config.alerts_file,
        "audit": s.audit.lock().ok().and_then(|a| a.as_ref().map(|a| json!({
            "dir": config.state_dir.join("audit"),
            "appended": a.stats.appended.load(Relaxed),
            "dropped": a.stats.dropped.load(Relaxed),
            "errors": a.stats.errors.load(Relaxed),
            "lost": a.stats.health.lost.load(Relaxed),
            "degraded": a.stats.health.degraded(),
        }))),
        "sinks": s.sinks.lock().ok().and_then(|g| g.as_ref().map(crate::outputs::SinkManager::stats)).unwrap_or_default(),
    })))
}

/// Live processes with their identity, optionally for one agent.
fn live_processes(s: &Shared, agent: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let p = s
        .pipeline
        .lock()
        .map_err(|_| internal("pipeline lock poisoned"))?;
    let mut out = Vec::new();
    for proc_ in p.table.live() {
        let id = p.attributor.identity_of(proc_);
        let agent_id = id.as_ref().and_then(|i| i.agent_id().map(str::to_owned));
        if agent.is_some() && agent != agent_id.as_deref() {
            continue;
        }
        let mut v = serde_json::to_value(proc_).map_err(internal)?;
        if let Some(obj) = v.as_object_mut() {
            let ident = id.as_deref();
            obj.insert(
                "agent".into(),
                ident
                    .and_then(|i| i.agent.as_ref())
                    .map_or(json!("unregistered"), |a| json!(a)),
            );
            obj.insert(
                "session".into(),
                json!(ident.and_then(|i| i.session.clone())),
            );
            obj.insert(
                "acting_for".into(),
                json!(ident.map(|i| i.acting_for.clone()).unwrap_or_default()),
            );
            obj.insert(
                "lineage".into(),
                json!(ident.map(|i| i.lineage.clone()).unwrap_or_default()),
            );
        }
        out.push(v);
    }
    out.sort_by_key(|v| v["pid"].as_u64());
    Ok(out)
}

async fn processes(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(q)?;
    Ok(Json(json!(live_processes(&s, p.agent.as_deref())?)))
}

fn agent_summaries(s: &Shared) -> Result<Vec<Value>, ApiError> {
    let procs = live_processes(s, None)?;
    let p = s
        .pipeline
        .lock()
        .map_err(|_| internal("pipeline lock poisoned"))?;
    let mut out = Vec::new();
    for a in p.registry().agents() {
        let mine: Vec<&Value> = procs
            .iter()
            .filter(|v| v["agent"]["id"] == a.id.as_str())
            .collect();
        let sessions: std::collections::BTreeSet<&str> =
            mine.iter().filter_map(|v| v["session"].as_str()).collect();
        out.push(json!({
            "id": a.id.as_str(),
            "name": a.name,
            "owner": a.owner,
            "environment": a.environment,
            "registered_in": a.origin.to_string(),
            "live_sessions": sessions.len(),
            "live_processes": mine.len(),
        }));
    }
    Ok(out)
}

async fn agents(State(s): Shr) -> Result<Json<Value>, ApiError> {
    let summaries = agent_summaries(&s)?;
    let unregistered = live_processes(&s, None)?
        .iter()
        .filter(|v| v["agent"] == "unregistered")
        .count();
    Ok(Json(
        json!({ "agents": summaries, "unregistered_processes": unregistered }),
    ))
}

async fn agent(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(q)?;
    let id =
        p.id.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing ?id=SPIFFE_ID".into()))?;
    let summary = agent_summaries(&s)?
        .into_iter()
        .find(|a| a["id"] == id.as_str() || a["name"] == id.as_str())
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no registered agent {id:?}")))?;
    let agent_id = summary["id"].as_str().unwrap_or_default().to_owned();
    let procs = live_processes(&s, Some(&agent_id))?;
    let key = agent_id.clone();
    let sessions = with_store(&s, move |st| st.sessions(Some(&key))).await?;
    Ok(Json(
        json!({ "agent": summary, "processes": procs, "sessions": sessions }),
    ))
}

async fn sessions(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(q)?;
    Ok(Json(json!(
        with_store(&s, move |st| st.sessions(p.agent.as_deref())).await?
    )))
}

async fn credentials(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(q)?;
    Ok(Json(json!(
        with_store(&s, move |st| st.credentials(p.agent.as_deref())).await?
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    fingerprint: String,
}

async fn revoke(
    State(s): Shr,
    q: Result<Query<RevokeParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    crate::daemon::revoke(&s, &p.fingerprint).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(json!({ "revoked": p.fingerprint })))
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
    let live = p.follow.unwrap_or(false).then(|| s.events.subscribe());
    let sq = store_query(&p);
    let history = with_store(&s, move |st| st.events(&sq)).await?;
    let history: Vec<Value> = history.into_iter().map(|r| r.body).collect();
    Ok(respond(history, live, p.agent, p.kind))
}

async fn alerts(
    State(s): Shr,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(q)?;
    let live = p.follow.unwrap_or(false).then(|| s.alerts.subscribe());
    let sq = store_query(&p);
    let history = with_store(&s, move |st| st.alerts(&sq)).await?;
    let history: Vec<Value> = history.into_iter().map(|r| r.body).collect();
    Ok(respond(history, live, p.agent, p.rule))
}

/// A JSON array, or — when following — NDJSON: the history, then live items as they come.
/// Subscribing before reading history means nothing falls between the two (an item
/// committed in that instant may appear twice).
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
            "unknown kind \"opne\": expected open, exec, fork, exit, connect or send"
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
