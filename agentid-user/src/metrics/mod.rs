//! Prometheus metrics: `GET /metrics` on `metrics_listen` (off unless configured), in the
//! `OpenMetrics` text format, from the Prometheus project's `prometheus-client` crate.
//!
//! Nothing is counted for the metrics' sake beyond two atomic increments (events
//! attributed to an agent, alerts by rule): a scrape reads the counters the daemon keeps
//! for `agentid status` into a [`Snapshot`], registers it as a collector in a registry made
//! for that scrape (no global registry), and encodes it. The server is axum over TCP, the
//! HTTP stack the API already uses; it answers `/metrics` only, and runs beside the
//! pipeline, so a slow scraper never holds up events.
//! The fleet's gauges are read with the rest of the snapshot.
mod snapshot;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::state::Shared;

/// What Prometheus asks for and `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Scrape {
    shared: Arc<Shared>,
}

/// Binds `addr` (an error at start, not a silent absence) and serves until the handle is
/// aborted.
pub fn serve(shared: Arc<Shared>, addr: SocketAddr) -> anyhow::Result<JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("metrics_listen: binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = router(shared);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

/// The `/metrics` router (tests drive it without a socket).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Scrape { shared })
}

async fn metrics(State(scrape): State<Scrape>) -> Response {
    // The store's size is read from its connection: off the async workers.
    match tokio::task::spawn_blocking(move || render(&scrape.shared)).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The exposition text for the daemon's state now.
pub fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot::Snapshot::read(shared)));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use super::*;
    use crate::{
        config::Config,
        credentials::FingerprintKey,
        detect::{Detector, Severity},
        event::EventKind,
        identity::Registry,
        pipeline::Pipeline,
        store::{Retention, Store},
    };

    fn shared(dir: &std::path::Path) -> Shared {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let store = Store::open(&dir.join("agentid.db")).unwrap();
        let writer = store
            .writer(Retention {
                max_age: Duration::from_hours(1),
                max_bytes: 1 << 30,
            })
            .unwrap();
        let pipeline = Pipeline::new(
            Arc::new(Registry::default()),
            dir.join("no-cgroups"),
            FingerprintKey::ephemeral().unwrap(),
        );
        let shared = Shared::new(
            Config {
                state_dir: dir.to_owned(),
                ..Config::default()
            },
            pipeline,
            Detector::new(None),
            store,
            Arc::clone(&writer.stats),
            Vec::new(),
        );
        let _ = shared.store_writer.set(writer);
        shared
    }

    /// `name{labels} value` lines, without comments.
    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn the_counters_the_daemon_keeps_are_exposed_with_prometheus_names() {
        let dir = std::env::temp_dir().join(format!("agentid-metrics-{}", std::process::id()));
        let s = shared(&dir);
        let exec = EventKind::Exec.abi() as usize;
        s.counters.received[exec].store(42, Ordering::Relaxed);
        s.counters.drops[exec].store(3, Ordering::Relaxed);
        s.counters.attributed(EventKind::Exec);
        s.counters.alert_raised("credential-reuse", Severity::High);
        s.counters.alert_raised("credential-reuse", Severity::High);
        s.counters.ring_used_bytes.store(4096, Ordering::Relaxed);
        s.counters.ring_size_bytes.store(1 << 24, Ordering::Relaxed);
        let text = render(&s).unwrap();
        assert_eq!(
            sample(&text, "agentid_events_total{kind=\"exec\"}"),
            Some("42"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "agentid_events_dropped_total{kind=\"exec\"}"),
            Some("3")
        );
        assert_eq!(
            sample(&text, "agentid_events_attributed_total{kind=\"exec\"}"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "agentid_events_total{kind=\"connect\"}"),
            Some("0")
        );
        assert_eq!(
            sample(
                &text,
                "agentid_alerts_total{rule=\"credential-reuse\",severity=\"high\"}"
            ),
            Some("2")
        );
        assert_eq!(sample(&text, "agentid_ringbuf_used_bytes"), Some("4096"));
        assert_eq!(sample(&text, "agentid_store_degraded"), Some("0"));
        assert_eq!(sample(&text, "agentid_store_queue_records"), Some("0"));
        assert_eq!(
            sample(&text, "agentid_processes{state=\"live\"}"),
            Some("0")
        );
        assert_eq!(sample(&text, "agentid_fleet_connected"), None, "no fleet");
        assert!(text.contains("# TYPE agentid_events counter"), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics: {text}");
        // Every sample's family is declared, and no name is declared twice.
        let mut declared = std::collections::BTreeSet::new();
        for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = l.split(' ').next().unwrap();
            assert!(declared.insert(name.to_owned()), "{name} declared twice");
        }
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let series = l.split([' ', '{']).next().unwrap();
            let family = series.strip_suffix("_total").unwrap_or(series);
            assert!(declared.contains(family), "{series} undeclared");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
