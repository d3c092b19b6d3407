//! The encoder seam: turns an alert or an activity event into the record a sink spools,
//! in the sink's format (OCSF/ECS/native JSON, syslog with OCSF or CEF, Splunk HEC).
use super::{
    OutputContext,
    config::{JsonFormat, SyslogConfig, SyslogFormat},
    encode::{self, EncodeContext, Item, cef, ecs, epoch_secs_f64, ocsf, syslog},
    spool::Record,
};

/// Turns an item into the record a sink spools.
#[derive(Debug, Clone)]
pub(super) enum Encoder {
    Json(JsonFormat, EncodeContext),
    Syslog {
        format: SyslogFormat,
        facility: u8,
        app_name: String,
        hostname: String,
        procid: String,
        ctx: EncodeContext,
    },
    Hec {
        index: Option<String>,
        source: String,
        sourcetype: String,
        ctx: EncodeContext,
    },
    Ecs,
}

fn json_of(format: JsonFormat, item: Item<'_>, ctx: &EncodeContext) -> Option<serde_json::Value> {
    match (format, item) {
        (JsonFormat::Ocsf, Item::Alert(a)) => Some(ocsf::detection_finding(a, ctx)),
        (JsonFormat::Ocsf, Item::Activity(e)) => ocsf::activity(e, ctx),
        (JsonFormat::Ecs, Item::Alert(a)) => Some(ecs::alert(a)),
        (JsonFormat::Ecs, Item::Activity(e)) => ecs::activity(e),
        (JsonFormat::Native, Item::Alert(a)) => serde_json::to_value(a).ok(),
        (JsonFormat::Native, Item::Activity(e)) => serde_json::to_value(e).ok(),
        (JsonFormat::Ocsf, Item::Checkpoint(c)) => Some(ocsf::audit_checkpoint(c, ctx)),
        (JsonFormat::Ecs, Item::Checkpoint(c)) => Some(ecs::audit_checkpoint(c)),
        (JsonFormat::Native, Item::Checkpoint(c)) => Some(serde_json::json!({
            "type": "audit_checkpoint",
            "host": ctx.hostname,
            "audit_checkpoint": c,
        })),
    }
}

impl Encoder {
    pub(super) fn encode(&self, item: Item<'_>) -> Option<Record> {
        let uid = match item {
            Item::Alert(a) => a.uid.clone(),
            Item::Activity(e) => encode::activity_uid(e),
            Item::Checkpoint(c) => encode::checkpoint_uid(c),
        };
        let payload = match self {
            Self::Json(format, ctx) => json_of(*format, item, ctx)?.to_string(),
            Self::Ecs => json_of(JsonFormat::Ecs, item, &EncodeContext::default())?.to_string(),
            Self::Hec {
                index,
                source,
                sourcetype,
                ctx,
            } => {
                let time = match item {
                    Item::Alert(a) => a.last_seen,
                    Item::Activity(e) => e.event.time,
                    Item::Checkpoint(c) => encode::checkpoint_time(c),
                };
                let mut env = serde_json::json!({
                    "time": epoch_secs_f64(time),
                    "host": ctx.hostname,
                    "source": source,
                    "sourcetype": sourcetype,
                    "event": json_of(JsonFormat::Ocsf, item, ctx)?,
                });
                if let Some(i) = index {
                    env["index"] = serde_json::json!(i);
                }
                env.to_string()
            }
            Self::Syslog {
                format,
                facility,
                app_name,
                hostname,
                procid,
                ctx,
            } => {
                let body = match format {
                    SyslogFormat::Ocsf => json_of(JsonFormat::Ocsf, item, ctx)?.to_string(),
                    SyslogFormat::Cef => match item {
                        Item::Alert(a) => cef::alert(a),
                        Item::Activity(e) => cef::activity(e)?,
                        Item::Checkpoint(c) => cef::audit_checkpoint(c),
                    },
                };
                let (severity, time, msgid, params) = syslog_fields(item);
                let h = syslog::Header {
                    facility: *facility,
                    severity,
                    time,
                    hostname,
                    app_name,
                    procid,
                    msgid,
                };
                let mut params = params;
                if !params.iter().any(|(k, _)| *k == "uid") {
                    params.push(("uid", uid.as_str()));
                }
                syslog::message(&h, &params, &body)
            }
        };
        Some(Record { uid, payload })
    }
}

/// A syslog record's severity, time, MSGID and structured-data parameters.
fn syslog_fields(item: Item<'_>) -> (u8, std::time::SystemTime, &str, Vec<(&str, &str)>) {
    match item {
        Item::Alert(a) => (
            syslog::severity(a.severity),
            a.last_seen,
            a.rule,
            vec![
                ("rule", a.rule),
                ("uid", a.uid.as_str()),
                ("severity", a.severity.as_str()),
            ],
        ),
        Item::Activity(e) => (
            6,
            e.event.time,
            e.event.kind.as_str(),
            vec![("kind", e.event.kind.as_str())],
        ),
        Item::Checkpoint(c) => (
            6,
            encode::checkpoint_time(c),
            "audit-checkpoint",
            vec![("kind", "audit-checkpoint")],
        ),
    }
}

pub(super) fn syslog_encoder(s: &SyslogConfig, ctx: &OutputContext) -> Encoder {
    Encoder::Syslog {
        format: s.format,
        facility: s.facility,
        app_name: s.app_name.clone(),
        hostname: s.hostname.clone().unwrap_or_else(|| ctx.hostname.clone()),
        procid: std::process::id().to_string(),
        ctx: EncodeContext {
            hostname: ctx.hostname.clone(),
            ocsf_ai_agent: s.ocsf_ai_agent,
        },
    }
}
