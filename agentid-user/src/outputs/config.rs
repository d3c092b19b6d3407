//! `[[sinks]]` configuration.
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

use super::spool::DEFAULT_MAX_BYTES;
use crate::detect::Severity;

/// One output. Every variant also takes the [`SinkCommon`] keys (`name`, `min_severity`,
/// `rules`, `include_activity`, `spool_max_bytes`, `batch_max`, `retry_initial_ms`,
/// `retry_max_ms`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// JSON lines in a local file, rotated by size: when the next record would take `path`
    /// past `max_bytes`, `path.N-1` becomes `path.N` (the oldest, `path.<keep>`, is
    /// deleted), ..., `path` becomes `path.1`, and a new `path` is started.
    ///
    /// ```toml
    /// [[sinks]]
    /// type = "file"
    /// path = "/var/log/agentid/alerts.jsonl"
    /// format = "ocsf"            # ocsf | ecs | native
    /// max_bytes = 104857600      # rotate at 100 MiB
    /// keep = 5                   # alerts.jsonl.1 .. alerts.jsonl.5
    /// min_severity = "medium"
    /// ```
    File(FileConfig),
    /// JSON lines on standard output (containers, `journald`).
    ///
    /// ```toml
    /// [[sinks]]
    /// type = "stdout"
    /// format = "ocsf"
    /// include_activity = true
    /// ```
    Stdout(StdoutConfig),
    /// RFC 5424 syslog over UDP, TCP or TLS (RFC 5425, octet-counted frames), carrying
    /// OCSF JSON or CEF.
    ///
    /// ```toml
    /// [[sinks]]
    /// type = "syslog"
    /// transport = "tls"          # udp | tcp | tls
    /// address = "siem.example.org:6514"
    /// format = "cef"             # ocsf | cef
    /// facility = 16              # local0
    /// ca_file = "/etc/agentid/siem-ca.pem"
    /// client_cert = "/etc/agentid/client.pem"   # optional, mutual TLS
    /// client_key = "/etc/agentid/client.key"
    /// server_name = "siem.example.org"          # default: the host part of address
    /// timeout_secs = 30          # connect / write limit, then reconnect and retry
    /// ```
    Syslog(SyslogConfig),
    /// Splunk HTTP Event Collector, OCSF events in HEC envelopes.
    ///
    /// ```toml
    /// [[sinks]]
    /// type = "splunk_hec"
    /// url = "https://splunk.example.org:8088"
    /// token = "00000000-0000-0000-0000-000000000000"
    /// index = "security"
    /// sourcetype = "agentid:ocsf"
    /// ack = true                 # indexer acknowledgement
    /// batch_max = 100
    /// ```
    SplunkHec(HecConfig),
    /// Elasticsearch `_bulk` with `create` (works for data streams), ECS documents.
    ///
    /// ```toml
    /// [[sinks]]
    /// type = "elasticsearch"
    /// url = "https://es.example.org:9200"
    /// index = "logs-agentid-default"
    /// api_key = "base64(id:key)"
    /// ca_file = "/etc/agentid/es-ca.pem"
    /// ```
    Elasticsearch(EsConfig),
    /// HTTP POST of a JSON array per batch, optionally signed with HMAC-SHA256
    /// (`X-Agentid-Signature: sha256=<hex of HMAC(secret, body)>`).
    ///
    /// ```toml
    /// [[sinks]]
    /// type = "webhook"
    /// url = "https://hooks.example.org/agentid"
    /// hmac_secret = "change-me"
    /// format = "ocsf"
    /// min_severity = "high"
    /// rules = ["credential-reuse", "identity-spoofing"]
    /// ```
    Webhook(WebhookConfig),
    /// Kafka: each record is one message, keyed by the alert's uid, on `topic`. A record
    /// leaves the spool only once the broker acknowledged it (idempotent producer,
    /// `acks=all`). Needs an agentid built with the `kafka` feature.
    ///
    /// ```toml
    /// [[sinks]]
    /// type = "kafka"
    /// brokers = ["kafka1.example.org:9093", "kafka2.example.org:9093"]
    /// topic = "agentid-alerts"
    /// format = "ocsf"            # ocsf | ecs | native
    /// timeout_secs = 30          # a message not acknowledged by then is retried
    /// tls = { ca_file = "/etc/agentid/kafka-ca.pem", client_cert = "/etc/agentid/kafka.pem", client_key = "/etc/agentid/kafka.key" }
    /// sasl = { mechanism = "SCRAM-SHA-512", username = "agentid", password_file = "/etc/agentid/kafka.pass" }
    /// ```
    Kafka(KafkaConfig),
}

impl SinkConfig {
    pub fn common(&self) -> &SinkCommon {
        match self {
            Self::File(c) => &c.common,
            Self::Stdout(c) => &c.common,
            Self::Syslog(c) => &c.common,
            Self::SplunkHec(c) => &c.common,
            Self::Elasticsearch(c) => &c.common,
            Self::Webhook(c) => &c.common,
            Self::Kafka(c) => &c.common,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Stdout(_) => "stdout",
            Self::Syslog(_) => "syslog",
            Self::SplunkHec(_) => "splunk_hec",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::Webhook(_) => "webhook",
            Self::Kafka(_) => "kafka",
        }
    }
}

/// Refuses keys of a `[[sinks]]` table that no field reads: `serde(flatten)` (how the
/// common keys are shared) defeats `deny_unknown_fields`, so without this check a misspelt
/// key (`fromat = "cef"`) would be ignored silently. `sinks` is what `text` parsed into; a
/// sink's known keys are read off its serialised form (every field, `None` included), so
/// they cannot drift from the structs. The error is `line N: …` naming the key.
pub fn check_unknown_keys(text: &str, sinks: &[SinkConfig]) -> Result<(), String> {
    let Ok(root) = toml::de::DeTable::parse(text) else {
        // Already parsed once by the caller; nothing more to say.
        return Ok(());
    };
    let Some(tables) = root
        .get_ref()
        .get("sinks")
        .and_then(|v| v.get_ref().as_array())
    else {
        return Ok(());
    };
    for (i, (table, sink)) in tables.iter().zip(sinks).enumerate() {
        let Some(table) = table.get_ref().as_table() else {
            continue;
        };
        let known = match serde_json::to_value(sink) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Err(format!("sinks[{i}]: not a table")),
            Err(e) => return Err(format!("sinks[{i}]: {e}")),
        };
        for key in table.keys() {
            if !known.contains_key(key.get_ref().as_ref()) {
                let line = text[..key.span().start.min(text.len())]
                    .matches('\n')
                    .count()
                    + 1;
                let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
                names.sort_unstable();
                return Err(format!(
                    "line {line}: sinks[{i}]: unknown key `{}` for a {} sink (known: {})",
                    key.get_ref(),
                    sink.kind(),
                    names.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Keys every sink takes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SinkCommon {
    /// Names the sink in stats, logs and its spool directory; default `<type>-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Alerts below this severity are not sent. Default: `info` (everything).
    #[serde(default = "default_severity", deserialize_with = "severity")]
    pub min_severity: Severity,
    /// Only these rule ids, when set.
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    /// Also stream attributed activity events (exec, exit, connect, send). Default false.
    #[serde(default)]
    pub include_activity: bool,
    /// Bound of the on-disk spool; records beyond it are dropped and reported.
    #[serde(default = "default_spool")]
    pub spool_max_bytes: u64,
    /// Most records per delivery (HTTP request, syslog write burst).
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Backoff after a failed delivery, doubling up to `retry_max_ms`, with jitter.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
}

impl Default for SinkCommon {
    fn default() -> Self {
        Self {
            name: None,
            min_severity: Severity::Info,
            rules: None,
            include_activity: false,
            spool_max_bytes: DEFAULT_MAX_BYTES,
            batch_max: default_batch(),
            retry_initial_ms: default_retry_initial(),
            retry_max_ms: default_retry_max(),
        }
    }
}

impl SinkCommon {
    pub fn retry_initial(&self) -> Duration {
        Duration::from_millis(self.retry_initial_ms.max(1))
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms.max(self.retry_initial_ms).max(1))
    }
}

fn default_severity() -> Severity {
    Severity::Info
}
fn default_spool() -> u64 {
    DEFAULT_MAX_BYTES
}
fn default_batch() -> usize {
    100
}
fn default_retry_initial() -> u64 {
    500
}
fn default_retry_max() -> u64 {
    30_000
}

fn severity<'de, D: Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
    let s = String::deserialize(d)?;
    Ok(match s.to_ascii_lowercase().as_str() {
        "info" | "informational" => Severity::Info,
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        other => {
            return Err(serde::de::Error::custom(format!(
                "unknown severity {other:?} (info, low, medium, high, critical)"
            )));
        }
    })
}

/// JSON document flavour of the file, stdout and webhook sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JsonFormat {
    /// OCSF 1.8 (Detection Finding, Process/Network Activity).
    #[default]
    Ocsf,
    /// Elastic Common Schema.
    Ecs,
    /// agentid's own serialisation of `Alert` / `AttributedEvent`.
    Native,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FileConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub format: JsonFormat,
    #[serde(default = "default_file_max")]
    pub max_bytes: u64,
    #[serde(default = "default_keep")]
    pub keep: u32,
    #[serde(default)]
    pub ocsf_ai_agent: bool,
    #[serde(flatten)]
    pub common: SinkCommon,
}
fn default_file_max() -> u64 {
    100 << 20
}
fn default_keep() -> u32 {
    5
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct StdoutConfig {
    #[serde(default)]
    pub format: JsonFormat,
    #[serde(default)]
    pub ocsf_ai_agent: bool,
    #[serde(flatten)]
    pub common: SinkCommon,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    Udp,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    #[default]
    Ocsf,
    Cef,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SyslogConfig {
    pub transport: SyslogTransport,
    /// `host:port`.
    pub address: String,
    #[serde(default)]
    pub format: SyslogFormat,
    #[serde(default = "default_facility")]
    pub facility: u8,
    #[serde(default = "default_app")]
    pub app_name: String,
    /// HOSTNAME field; default: this host's name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// TLS: the CA that signed the receiver's certificate (required for `tls`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
    /// Limit of a connect (TLS handshake included) and of a batch write, in seconds: a
    /// receiver that stops reading is dropped and retried, never waited for forever.
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub ocsf_ai_agent: bool,
    #[serde(flatten)]
    pub common: SinkCommon,
}
fn default_facility() -> u8 {
    super::encode::syslog::DEFAULT_FACILITY
}
fn default_app() -> String {
    "agentid".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct HecConfig {
    /// Base URL (`https://host:8088`); `/services/collector/event` is appended.
    pub url: String,
    pub token: String,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    /// Indexer acknowledgement: a batch counts as delivered only once acknowledged.
    #[serde(default)]
    pub ack: bool,
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_secs: u64,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub ocsf_ai_agent: bool,
    #[serde(flatten)]
    pub common: SinkCommon,
}
fn default_source() -> String {
    "agentid".into()
}
fn default_sourcetype() -> String {
    "agentid:ocsf".into()
}
fn default_ack_timeout() -> u64 {
    60
}
fn default_http_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EsConfig {
    /// Base URL; `/_bulk` is appended.
    pub url: String,
    /// Index or data stream name.
    #[serde(default = "default_index")]
    pub index: String,
    /// The encoded API key (`base64(id:key)`), sent as `Authorization: ApiKey ...`.
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    #[serde(flatten)]
    pub common: SinkCommon,
}
fn default_index() -> String {
    "logs-agentid-default".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub hmac_secret: Option<String>,
    #[serde(default)]
    pub format: JsonFormat,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub ocsf_ai_agent: bool,
    #[serde(flatten)]
    pub common: SinkCommon,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`; at least one.
    #[serde(deserialize_with = "brokers")]
    pub brokers: Vec<String>,
    pub topic: String,
    #[serde(default)]
    pub format: JsonFormat,
    /// TLS to the brokers; without it the connection is plaintext.
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// A message the broker has not acknowledged within this many seconds (librdkafka's
    /// `message.timeout.ms`) counts as a failed attempt and is sent again after backoff.
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub ocsf_ai_agent: bool,
    #[serde(flatten)]
    pub common: SinkCommon,
}

fn brokers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() || v.iter().any(|b| b.trim().is_empty() || b.contains(',')) {
        return Err(serde::de::Error::custom(
            "brokers: a non-empty list of \"host:port\" (one per entry)",
        ));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// The CA that signed the brokers' certificates; default: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: both or neither.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials. The password is read from a file (only its first line) when the
/// sink starts, so it is neither in `agentid.toml` nor in any log or error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password_file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Daemon {
        sinks: Vec<SinkConfig>,
    }

    #[test]
    fn doc_examples_parse() {
        let src = include_str!("config.rs");
        let src = &src[..src.find("#[cfg(test)]").unwrap()];
        let mut n = 0;
        for block in src.split("/// ```toml").skip(1) {
            let body: String = block
                .lines()
                .skip(1)
                .take_while(|l| !l.trim_start().starts_with("/// ```"))
                .map(|l| {
                    l.trim_start()
                        .trim_start_matches("///")
                        .trim_start_matches(' ')
                })
                .collect::<Vec<_>>()
                .join("\n");
            let d: Daemon = toml::from_str(&body).unwrap_or_else(|e| panic!("{body}\n{e}"));
            assert_eq!(d.sinks.len(), 1);
            n += 1;
        }
        assert_eq!(n, 7);
        let d: Daemon = toml::from_str(
            "[[sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nmin_severity = \"high\"\nrules = [\"a\"]\n",
        )
        .unwrap();
        let c = d.sinks[0].common();
        assert_eq!(
            (c.min_severity, c.rules.clone()),
            (Severity::High, Some(vec!["a".into()]))
        );
        assert_eq!(c.spool_max_bytes, 64 << 20);
        assert!(toml::from_str::<Daemon>("[[sinks]]\ntype = \"kafka\"\n").is_err());
    }

    #[test]
    fn kafka_config_errors_name_the_sink_table_line() {
        // Internally tagged: serde reports at the `[[sinks]]` table (line 2), as for every
        // sink type, with the reason.
        let err = |body: &str| {
            toml::from_str::<Daemon>(&format!("\n[[sinks]]\ntype = \"kafka\"\n{body}"))
                .unwrap_err()
                .to_string()
        };
        for (body, reason) in [
            ("brokers = []\ntopic = \"t\"\n", "non-empty"),
            ("brokers = [\"a:1,b:2\"]\ntopic = \"t\"\n", "one per entry"),
            ("brokers = [\"h:1\"]\n", "missing field `topic`"),
            (
                "brokers = [\"h:1\"]\ntopic = \"t\"\nsasl = { mechanism = \"GSSAPI\", username = \"u\", password_file = \"/p\" }\n",
                "GSSAPI",
            ),
            (
                "brokers = [\"h:1\"]\ntopic = \"t\"\ntls = { ca = \"/c\" }\n",
                "unknown field `ca`",
            ),
        ] {
            let e = err(body);
            assert!(e.contains("line 2") && e.contains(reason), "{body}: {e}");
        }
        let d: Daemon =
            toml::from_str("[[sinks]]\ntype = \"kafka\"\nbrokers = [\"h:1\"]\ntopic = \"t\"\n")
                .unwrap();
        let SinkConfig::Kafka(k) = &d.sinks[0] else {
            panic!("{d:?}")
        };
        assert_eq!(
            (k.tls.as_ref(), k.sasl.as_ref(), k.timeout_secs),
            (None, None, 30)
        );
    }
}
