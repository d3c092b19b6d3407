//! The daemon's side of the fleet: starting the link, and acting on what it reports.
use std::{sync::Arc, time::SystemTime};

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::alerts;
use crate::{
    config::Config,
    detect::rules::{CREDENTIAL_REUSE, IDENTITY_SPRAWL},
    fleet::{Fleet, Notice},
    identity::Registry,
    state::Shared,
};

/// Starts the fleet link with `[fleet]`; its notices for the event loop.
pub(super) fn start(
    config: &Config,
    shared: &Shared,
    registry: &Arc<Registry>,
) -> anyhow::Result<Option<mpsc::Receiver<Notice>>> {
    let Some(fc) = &config.fleet else {
        return Ok(None);
    };
    let (fleet, notices) = Fleet::start(fc, &config.state_dir, Arc::clone(registry))
        .context("starting the fleet link")?;
    tracing::info!(host = %fleet.host(), servers = ?fc.servers, "joining the fleet");
    // Revocations made elsewhere while this host was down arrive by the watch; the local
    // file already holds those it heard before.
    let _ = shared.fleet.set(fleet);
    Ok(Some(notices))
}

/// The next notice; never, without a fleet.
pub(super) async fn next(rx: &mut Option<mpsc::Receiver<Notice>>) -> Option<Notice> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A fleet incident this host raises, or a revocation from elsewhere.
pub(super) fn on_notice(shared: &Shared, notice: Notice) {
    match notice {
        Notice::Raise(fa) => {
            let holders: Vec<(String, String)> = fa
                .holders
                .iter()
                .map(|h| (h.agent.clone(), h.host.clone()))
                .collect();
            let now = SystemTime::now();
            let alert = shared.detector.lock().ok().and_then(|mut d| {
                if fa.rule == CREDENTIAL_REUSE.id {
                    Some(d.fleet_reuse(fa.fingerprint.as_deref().unwrap_or(""), &holders, now))
                } else if fa.rule == IDENTITY_SPRAWL.id {
                    let agent = holders.first().map(|(a, _)| a.clone()).unwrap_or_default();
                    Some(d.identity_sprawl(&agent, &holders, &fa.description, now))
                } else {
                    None
                }
            });
            if let Some(alert) = alert {
                alerts::emit_alert(shared, &alert);
            }
        }
        Notice::Revoked(r) => {
            // Kept locally too, so the revocation holds through a restart without NATS.
            let known = shared
                .revocations
                .load()
                .is_ok_and(|all| all.iter().any(|p| p.to_string() == r.prefix));
            let prefix = if known {
                r.prefix.parse().ok()
            } else {
                shared
                    .revocations
                    .add(&r.prefix)
                    .map_err(|e| tracing::warn!(error = %e, "fleet revocation not kept locally"))
                    .ok()
            };
            if let Some(prefix) = prefix
                && let Ok(mut d) = shared.detector.lock()
            {
                tracing::info!(prefix = %r.prefix, by = %r.by, host = %r.host, "fleet: credential revoked");
                d.revoke(prefix);
            }
        }
        Notice::Loss(_) => {}
    }
}
