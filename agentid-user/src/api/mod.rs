//! The API: JSON over HTTP/1.1 on a Unix socket (axum), serving the CLI from live state
//! and the store. Every connection's peer is checked with `SO_PEERCRED`; a peer that is
//! neither root nor in the configured group gets `403` with a message, never a hang.
//!
//! Routes (all `GET`, JSON unless noted):
//! - `/v1/status`
//! - `/v1/agents`, `/v1/agent?id=SPIFFE_ID`
//! - `/v1/sessions?agent=`
//! - `/v1/processes?agent=`
//! - `/v1/connections?agent=&since=&limit=`
//! - `/v1/events?agent=&kind=&since=&limit=&follow=true` (NDJSON when following)
//! - `/v1/alerts?agent=&rule=&since=&limit=&follow=true` (NDJSON when following)
//! - `/v1/credentials?agent=`
//! - `POST /v1/credentials/revoke?fingerprint=KIND:HEX` (a 12+ hex prefix is enough)
//! - `/v1/fleet/hosts`, `/v1/fleet/agents`, `/v1/fleet/credentials?fingerprint=`,
//!   `/v1/fleet/alerts`, `/v1/fleet/revocations` (with `[fleet]`)
//!
//! `since` is nanoseconds since the epoch (the CLI turns `10m`/RFC 3339 into it).
//! Errors: `{"error": "..."}` with 400 (bad request), 403, 404 or 500.
//! Every request and answer is a type in [`types`], shared with the CLI.
mod fleet;
pub mod peer;
mod routes;
pub mod types;

use std::{os::unix::fs::PermissionsExt, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tokio::{net::UnixListener, task::JoinHandle};

use crate::state::Shared;

pub use fleet::{FleetHost, LinkState};
pub use peer::Peer;

/// An API error as the client sees it.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(types::ErrorBody { error: self.1 })).into_response()
    }
}

/// Binds the socket (0660, root:group) and serves until the handle is aborted.
pub fn serve(shared: Arc<Shared>) -> anyhow::Result<JoinHandle<()>> {
    let (socket, group_name) = {
        let c = shared
            .config
            .read()
            .map_err(|_| anyhow::anyhow!("config lock poisoned"))?;
        (c.socket.clone(), c.socket_group.clone())
    };
    let group = match &group_name {
        Some(name) => Some(
            crate::sys::group_id(name)
                .with_context(|| format!("socket_group {name:?} does not exist"))?,
        ),
        None => crate::sys::group_id("agentid"),
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The state lock is held, so a socket file left here belongs to a dead daemon.
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(&socket, Some(0), Some(gid))
            .with_context(|| format!("chown {}", socket.display()))?;
    }
    let app = routes::router()
        .layer(middleware::from_fn_with_state(group, authorize))
        .with_state(shared);
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>());
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "API server stopped");
        }
    }))
}

async fn authorize(
    State(group): State<Option<u32>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if peer.allowed(group) {
        return next.run(req).await;
    }
    let who = if group.is_some() {
        "root or the agentid API group"
    } else {
        "root"
    };
    ApiError(
        StatusCode::FORBIDDEN,
        format!("permission denied: uid {} is not {who}", peer.uid),
    )
    .into_response()
}

/// Router for tests (no socket, no auth).
pub fn router(shared: Arc<Shared>) -> Router {
    routes::router().with_state(shared)
}
