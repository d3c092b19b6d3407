//! Audit anchors in the fleet: every signed audit checkpoint also goes to stream
//! `AGENTID_AUDIT` on subject `agentid.audit.<host>` (through the spool, like every fleet
//! record, so a NATS outage delays anchors but loses none), and `agentid audit verify
//! --anchors fleet` reads one host's back to check its log against them.
//!
//! Only the subject selects a host's anchors; what makes one count is the audit module's
//! check that its signature verifies and its key is in the log's own key chain, so a
//! checkpoint published under this host's subject by anyone else (or another host's) is
//! not used for this host.
use std::{fmt::Write as _, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use serde::Serialize;
use tokio_stream::StreamExt as _;

use super::{
    Fleet, FleetConfig, FleetError, Outgoing,
    records::{AUDIT_STREAM, valid_token},
};
use crate::audit::{AnchorPublisher, Anchors, Checkpoint};

/// How long reading a host's anchors may take in all.
const READ_LIMIT: Duration = Duration::from_mins(1);

/// The subject of `host`'s anchors.
pub fn subject(host: &str) -> String {
    format!("agentid.audit.{host}")
}

/// A stream message: the sinks' native checkpoint record, with the host that made it.
#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    host: &'a str,
    audit_checkpoint: &'a Checkpoint,
}

impl Fleet {
    /// A publisher of this host's audit checkpoints to the fleet, for the audit writer.
    pub fn anchor_publisher(&self) -> AnchorPublisher {
        let fleet = self.clone();
        let subject = subject(&self.host);
        Box::new(move |cp: &Checkpoint| {
            let record = Record {
                kind: "audit_checkpoint",
                host: fleet.host(),
                audit_checkpoint: cp,
            };
            match serde_json::to_string(&record) {
                Ok(json) => fleet.submit(Outgoing::Stream {
                    subject: subject.clone(),
                    json,
                }),
                Err(e) => {
                    tracing::error!(seq = cp.seq, error = %e, "fleet: cannot encode an audit anchor");
                }
            }
        })
    }
}

/// What the fleet holds for `host`: its anchors as the audit module reads them, and how
/// many messages its subject held.
pub async fn read(config: &FleetConfig, host: &str) -> Result<(Anchors, u64), FleetError> {
    if !valid_token(host) {
        return Err(FleetError::Nats(format!(
            "host {host:?}: not a fleet host name (letters, digits, - and _)"
        )));
    }
    let (text, messages) = tokio::time::timeout(READ_LIMIT, read_subject(config, host))
        .await
        .map_err(|_| {
            FleetError::Nats(format!(
                "reading {AUDIT_STREAM} took longer than {READ_LIMIT:?}"
            ))
        })??;
    Ok((Anchors::parse(&text), messages))
}

/// Every message on `host`'s subject, one per line.
async fn read_subject(config: &FleetConfig, host: &str) -> Result<(String, u64), FleetError> {
    let nats = |e: String| FleetError::Nats(e);
    let client = super::link::connect(config, &format!("agentid-audit-verify@{host}"), false)
        .await
        .map_err(nats)?;
    let js = jetstream::new(client);
    let stream = js.get_stream(AUDIT_STREAM).await.map_err(|e| {
        nats(format!(
            "stream {AUDIT_STREAM}: {e} (has no host of this fleet published an anchor yet?)"
        ))
    })?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject(host),
            deliver_policy: DeliverPolicy::All,
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| nats(format!("reading {AUDIT_STREAM}: {e}")))?;
    let total = consumer.cached_info().num_pending;
    let mut text = String::new();
    if total == 0 {
        return Ok((text, 0));
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats(format!("reading {AUDIT_STREAM}: {e}")))?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| nats(format!("reading {AUDIT_STREAM}: {e}")))?;
        let _ = writeln!(text, "{}", String::from_utf8_lossy(&m.payload));
        let pending = m
            .info()
            .map_err(|e| nats(format!("reading {AUDIT_STREAM}: {e}")))?
            .pending;
        if pending == 0 {
            break;
        }
    }
    Ok((text, total))
}
