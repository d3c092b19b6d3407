//! `/v1/fleet/*`: the fleet as this host last heard it (the watched buckets; no NATS
//! round trip). `404` without `[fleet]`.
use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::{
    fleet::{Fleet, FleetAlert, Presence, Revocation, Sighting, records::now_ms},
    state::Shared,
};

type Shr = State<Arc<Shared>>;

fn fleet(s: &Shared) -> Result<&Fleet, ApiError> {
    s.fleet.get().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this host is not in a fleet (no [fleet] in agentid.toml)".into(),
        )
    })
}

/// One host as the fleet knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetHost {
    pub host: String,
    /// Agents live there now (fresh presence with processes).
    pub agents: usize,
    pub processes: usize,
    /// The newest heartbeat heard from it, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// Whether that heartbeat is fresh (within three heartbeat periods).
    pub fresh: bool,
    /// For this host only: the link's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkState {
    pub connected: bool,
    pub stats: crate::fleet::view::FleetStats,
}

fn fresh_ms(f: &Fleet) -> u64 {
    u64::try_from(f.heartbeat().as_millis() * 3).unwrap_or(u64::MAX)
}

pub(super) async fn hosts(State(s): Shr) -> Result<Json<Vec<FleetHost>>, ApiError> {
    let f = fleet(&s)?;
    let fresh = fresh_ms(f);
    let now = now_ms();
    let v = f.view();
    let mut by: BTreeMap<&str, FleetHost> = BTreeMap::new();
    by.insert(
        &v.host,
        FleetHost {
            host: v.host.clone(),
            agents: 0,
            processes: 0,
            last_heartbeat_ms: 0,
            fresh: false,
            link: Some(LinkState {
                connected: v.connected,
                stats: v.stats.clone(),
            }),
        },
    );
    for p in v.presence.values() {
        let h = by.entry(&p.host).or_insert_with(|| FleetHost {
            host: p.host.clone(),
            agents: 0,
            processes: 0,
            last_heartbeat_ms: 0,
            fresh: false,
            link: None,
        });
        h.last_heartbeat_ms = h.last_heartbeat_ms.max(p.heartbeat_ms);
        h.fresh = now.saturating_sub(h.last_heartbeat_ms) <= fresh;
        if p.processes > 0 && now.saturating_sub(p.heartbeat_ms) <= fresh {
            h.agents += 1;
            h.processes += p.processes;
        }
    }
    Ok(Json(by.into_values().collect()))
}

pub(super) async fn agents(State(s): Shr) -> Result<Json<Vec<Presence>>, ApiError> {
    let f = fleet(&s)?;
    let fresh = fresh_ms(f);
    let now = now_ms();
    let v = f.view();
    Ok(Json(
        v.presence
            .values()
            .filter(|p| p.processes > 0 && now.saturating_sub(p.heartbeat_ms) <= fresh)
            .cloned()
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct CredParams {
    /// A fingerprint or a prefix of one (`kind:hex`, or hex).
    fingerprint: Option<String>,
}

pub(super) async fn credentials(
    State(shared): Shr,
    q: Result<Query<CredParams>, QueryRejection>,
) -> Result<Json<Vec<Sighting>>, ApiError> {
    let Query(params) = q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let prefix: Option<crate::credentials::FingerprintPrefix> = params
        .fingerprint
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("fingerprint: {e}")))?;
    let fleet = fleet(&shared)?;
    let view = fleet.view();
    let mut rows: Vec<Sighting> = view
        .sightings
        .values()
        .filter(|s| {
            prefix.as_ref().is_none_or(|p| {
                s.hmac.starts_with(p.hex()) && p.kind.is_none_or(|k| k.to_string() == s.kind)
            })
        })
        .cloned()
        .collect();
    rows.sort_by(|a, b| (&a.hmac, &a.host, &a.agent).cmp(&(&b.hmac, &b.host, &b.agent)));
    Ok(Json(rows))
}

pub(super) async fn alerts(State(s): Shr) -> Result<Json<Vec<FleetAlert>>, ApiError> {
    let f = fleet(&s)?;
    Ok(Json(f.view().alerts.values().cloned().collect()))
}

pub(super) async fn revocations(State(s): Shr) -> Result<Json<Vec<Revocation>>, ApiError> {
    let f = fleet(&s)?;
    Ok(Json(f.view().revocations.values().cloned().collect()))
}
