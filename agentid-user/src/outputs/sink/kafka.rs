//! Kafka, through librdkafka (`rdkafka`, bundled build): one message per record, keyed by
//! the record's uid. A record counts as delivered only when its delivery report comes back
//! without error: the producer is idempotent, which makes librdkafka use `acks=all`, so
//! that report means every in-sync replica has it. Enqueueing in librdkafka is never taken
//! as delivery (fluent-bit#11527 lost data that way): until the report, the record stays
//! in the spool, and a daemon killed meanwhile sends it again on its next start.
use std::{fmt, path::Path};

use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer as _},
};

use super::{Deliver, DeliveryError, ItemOutcome};
use crate::outputs::{
    OutputError,
    config::{KafkaConfig, KafkaSasl, KafkaTls},
    spool::Record,
};

pub struct KafkaSink {
    producer: FutureProducer,
    /// Kept to build a new producer after a fatal error (an idempotent producer that lost
    /// its sequence state cannot go on).
    config: ClientConfig,
    topic: String,
    /// The last batch had messages time out: start the next one on a new producer.
    stale: bool,
}

impl fmt::Debug for KafkaSink {
    // Not derived: the client configuration holds the SASL password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The first line of `path`: the SASL password. The error names the file, never its
/// content.
fn read_password(path: &Path) -> Result<String, OutputError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        OutputError::Config(format!("kafka: password_file {}: {e}", path.display()))
    })?;
    let pw = text.lines().next().unwrap_or_default().to_owned();
    if pw.is_empty() {
        return Err(OutputError::Config(format!(
            "kafka: password_file {} is empty",
            path.display()
        )));
    }
    Ok(pw)
}

fn path_str(p: &Path, what: &str) -> Result<String, OutputError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| OutputError::Config(format!("kafka: {what} {} is not UTF-8", p.display())))
}

fn apply_tls(cfg: &mut ClientConfig, tls: &KafkaTls) -> Result<(), OutputError> {
    let KafkaTls {
        ca_file,
        client_cert,
        client_key,
    } = tls;
    if let Some(ca) = ca_file {
        cfg.set("ssl.ca.location", path_str(ca, "ca_file")?);
    }
    match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            cfg.set("ssl.certificate.location", path_str(cert, "client_cert")?);
            cfg.set("ssl.key.location", path_str(key, "client_key")?);
        }
        (None, None) => {}
        _ => {
            return Err(OutputError::Config(
                "kafka: tls needs both client_cert and client_key, or neither".into(),
            ));
        }
    }
    Ok(())
}

fn apply_sasl(cfg: &mut ClientConfig, sasl: &KafkaSasl) -> Result<(), OutputError> {
    let KafkaSasl {
        mechanism,
        username,
        password_file,
    } = sasl;
    cfg.set("sasl.mechanism", mechanism.as_str());
    cfg.set("sasl.username", username);
    cfg.set("sasl.password", read_password(password_file)?);
    Ok(())
}

/// librdkafka's settings for `c`.
pub fn client_config(c: &KafkaConfig) -> Result<ClientConfig, OutputError> {
    let mut cfg = ClientConfig::new();
    let timeout_ms = c
        .timeout_secs
        .max(1)
        .saturating_mul(1000)
        .min(i32::MAX as u64);
    cfg.set("bootstrap.servers", c.brokers.join(","))
        .set("client.id", concat!("agentid/", env!("CARGO_PKG_VERSION")))
        // Implies acks=all, bounded in-flight requests and no reordering or duplicates on
        // the producer's internal retries.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", timeout_ms.to_string())
        // A broker that comes back is found within a second, not librdkafka's default 10 s.
        .set("reconnect.backoff.max.ms", "1000")
        // The topic is the operator's: a missing one is an error to retry (and see in
        // `last_error`), not one to create with the broker's default partitions.
        .set("allow.auto.create.topics", "false");
    let protocol = match (&c.tls, &c.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    cfg.set("security.protocol", protocol);
    if let Some(tls) = &c.tls {
        apply_tls(&mut cfg, tls)?;
    }
    if let Some(sasl) = &c.sasl {
        apply_sasl(&mut cfg, sasl)?;
    }
    Ok(cfg)
}

fn producer(cfg: &ClientConfig) -> Result<FutureProducer, KafkaError> {
    cfg.create()
}

impl KafkaSink {
    /// Does not connect: brokers that are down now are retried like any receiver.
    pub fn new(c: &KafkaConfig) -> Result<Self, OutputError> {
        let config = client_config(c)?;
        let producer = producer(&config).map_err(|e| OutputError::Config(format!("kafka: {e}")))?;
        Ok(Self {
            producer,
            config,
            topic: c.topic.clone(),
            stale: false,
        })
    }

    /// Replaces the producer after a fatal error (an idempotent producer that lost its
    /// sequence state cannot go on), or after messages timed out: against a broker that
    /// was replaced (Tansu restarted on the same port) the old producer never recovered,
    /// every later message timed out too. A new producer has a new producer id, so its
    /// first messages cannot clash with the old one's sequence numbers; what the old one
    /// may have delivered unseen is sent again (at-least-once, same key).
    fn renew_if_needed(&mut self) -> Result<(), DeliveryError> {
        let fatal = self.producer.client().fatal_error();
        if fatal.is_none() && !self.stale {
            return Ok(());
        }
        if let Some((code, reason)) = fatal {
            tracing::warn!(topic = %self.topic, ?code, %reason, "kafka producer fatal error; starting a new one");
        }
        let new = producer(&self.config)
            .map_err(|e| DeliveryError::Transient(format!("kafka producer: {e}")))?;
        let old = std::mem::replace(&mut self.producer, new);
        // Destroying a librdkafka handle joins its threads: not on a runtime worker.
        tokio::task::spawn_blocking(move || drop(old));
        self.stale = false;
        Ok(())
    }
}

/// What a failed produce means for the record: refused for good only when the record
/// itself is at fault; anything about brokers, topics or permissions is retried.
fn outcome_of(e: &KafkaError) -> ItemOutcome {
    let code = e.rdkafka_error_code();
    match code {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord,
        ) => ItemOutcome::Reject(format!("kafka: {e}")),
        _ => ItemOutcome::Retry(format!("kafka: {e}")),
    }
}

impl Deliver for KafkaSink {
    async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<ItemOutcome>, DeliveryError> {
        self.renew_if_needed()?;
        // Enqueue the whole batch first (librdkafka batches and pipelines it), then wait
        // for each delivery report; the reports bound the wait (`message.timeout.ms`).
        let pending: Vec<_> = batch
            .iter()
            .map(|r| {
                let rec = FutureRecord::to(&self.topic)
                    .key(r.uid.as_bytes())
                    .payload(r.payload.as_bytes());
                self.producer.send_result(rec).map_err(|(e, _)| e)
            })
            .collect();
        let mut out = Vec::with_capacity(batch.len());
        for p in pending {
            out.push(match p {
                Err(e) => outcome_of(&e),
                Ok(report) => match report.await {
                    Ok(Ok(_)) => ItemOutcome::Delivered,
                    Ok(Err((e, _))) => {
                        self.stale |=
                            e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut);
                        outcome_of(&e)
                    }
                    Err(_) => ItemOutcome::Retry("kafka: delivery report lost".into()),
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::config::SaslMechanism;

    fn config(tls: Option<KafkaTls>, sasl: Option<KafkaSasl>) -> KafkaConfig {
        KafkaConfig {
            brokers: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            topic: "t".into(),
            format: crate::outputs::config::JsonFormat::Ocsf,
            tls,
            sasl,
            timeout_secs: 7,
            ocsf_ai_agent: false,
            common: crate::outputs::config::SinkCommon::default(),
        }
    }

    #[test]
    fn producer_is_idempotent_and_acks_all() {
        let cfg = client_config(&config(None, None)).unwrap();
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("message.timeout.ms"), Some("7000"));
        assert_eq!(
            cfg.get("bootstrap.servers"),
            Some("127.0.0.1:1,127.0.0.1:2")
        );
        assert_eq!(cfg.get("security.protocol"), Some("plaintext"));
        assert_eq!(cfg.get("allow.auto.create.topics"), Some("false"));
    }

    #[test]
    fn sasl_password_comes_from_its_file_and_never_from_an_error() {
        let dir = std::env::temp_dir().join(format!("agentid-kafka-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "canary-Pa55word\nsecond line ignored\n").unwrap();
        let sasl = |file: &Path| KafkaSasl {
            mechanism: SaslMechanism::ScramSha512,
            username: "agentid".into(),
            password_file: file.to_owned(),
        };
        let tls = KafkaTls {
            ca_file: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            client_cert: None,
            client_key: None,
        };
        let cfg = client_config(&config(Some(tls.clone()), Some(sasl(&pw)))).unwrap();
        assert_eq!(cfg.get("sasl.password"), Some("canary-Pa55word"));
        assert_eq!(cfg.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(cfg.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(
            cfg.get("ssl.ca.location"),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        let sink = KafkaSink::new(&config(Some(tls), Some(sasl(&pw)))).unwrap();
        assert!(!format!("{sink:?}").contains("canary"));
        let e = client_config(&config(None, Some(sasl(&dir.join("missing")))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::write(&pw, "\n").unwrap();
        let e = client_config(&config(None, Some(sasl(&pw))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let half = KafkaTls {
            ca_file: None,
            client_cert: Some("/c".into()),
            client_key: None,
        };
        assert!(client_config(&config(Some(half), None)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_faulty_records_are_rejected() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(outcome_of(&e), ItemOutcome::Reject(_)));
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            let e = KafkaError::MessageProduction(code);
            assert!(matches!(outcome_of(&e), ItemOutcome::Retry(_)), "{code:?}");
        }
    }
}
