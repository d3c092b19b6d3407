//! HTTP sinks: Splunk HEC, Elasticsearch `_bulk`, and a signed webhook.
use std::{path::Path, time::Duration};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{Deliver, DeliveryError, ItemOutcome, classify_status};
use crate::outputs::{
    OutputError,
    config::{EsConfig, HecConfig, WebhookConfig},
    spool::Record,
};

/// An HTTP client: rustls, the system roots plus `ca_file`, no proxy.
///
/// Proxies from the environment are ignored on purpose: a SIEM endpoint is configured
/// explicitly, and an inherited `HTTPS_PROXY` silently rerouting security telemetry is
/// worse than a missing feature.
pub fn client(ca_file: Option<&Path>, timeout_secs: u64) -> Result<reqwest::Client, OutputError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(timeout_secs.max(1)))
        .user_agent(concat!("agentid/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| OutputError::Tls(format!("{}: {e}", ca.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| OutputError::Tls(format!("{}: {e}", ca.display())))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| OutputError::Tls(e.to_string()))
}

fn transient(e: &reqwest::Error) -> DeliveryError {
    DeliveryError::Transient(format!("{e}"))
}

/// Sends a request; `Ok(body)` on 2xx, classified errors otherwise.
async fn send(req: reqwest::RequestBuilder) -> Result<String, DeliveryError> {
    let resp = req.send().await.map_err(|e| transient(&e))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| transient(&e))?;
    classify_status(status, &body)?;
    Ok(body)
}

fn trim_url(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Splunk HTTP Event Collector.
#[derive(Debug)]
pub struct HecSink {
    client: reqwest::Client,
    event_url: String,
    ack_url: String,
    auth: String,
    /// Indexer acknowledgement: the channel GUID.
    channel: Option<String>,
    ack_timeout: Duration,
}

/// A random GUID for the HEC channel (format only; randomness from the std hasher keys).
fn guid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl HecSink {
    pub fn new(c: &HecConfig) -> Result<Self, OutputError> {
        let base = trim_url(&c.url);
        Ok(Self {
            client: client(c.ca_file.as_deref(), c.timeout_secs)?,
            event_url: format!("{base}/services/collector/event"),
            ack_url: format!("{base}/services/collector/ack"),
            auth: format!("Splunk {}", c.token),
            channel: c.ack.then(guid),
            ack_timeout: Duration::from_secs(c.ack_timeout_secs.max(1)),
        })
    }

    fn post(&self, url: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.post(url).header("Authorization", &self.auth);
        if let Some(ch) = &self.channel {
            r = r.header("X-Splunk-Request-Channel", ch);
        }
        r
    }

    /// Polls `/services/collector/ack` until `ack_id` is acknowledged or the timeout.
    async fn wait_ack(&self, ack_id: u64) -> Result<(), DeliveryError> {
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let mut wait = Duration::from_millis(100);
        loop {
            let body = send(
                self.post(&self.ack_url)
                    .header("Content-Type", "application/json")
                    .body(serde_json::json!({"acks": [ack_id]}).to_string()),
            )
            .await?;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if v["acks"][ack_id.to_string()] == Value::Bool(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() + wait > deadline {
                // Not indexed (yet): resend; HEC may then hold duplicates.
                return Err(DeliveryError::Transient(format!(
                    "ack {ack_id} not confirmed within {:?}",
                    self.ack_timeout
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

impl Deliver for HecSink {
    async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<ItemOutcome>, DeliveryError> {
        // Envelopes back to back, newline separated (HEC accepts any whitespace).
        let body: String = batch
            .iter()
            .map(|r| r.payload.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let resp = send(
            self.post(&self.event_url)
                .header("Content-Type", "application/json")
                .body(body),
        )
        .await?;
        if self.channel.is_some() {
            let v: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
            let ack_id = v["ackId"]
                .as_u64()
                .ok_or_else(|| DeliveryError::Transient(format!("no ackId in {resp}")))?;
            self.wait_ack(ack_id).await?;
        }
        Ok(vec![ItemOutcome::Delivered; batch.len()])
    }
}

/// Elasticsearch `_bulk` with `create` actions.
#[derive(Debug)]
pub struct EsSink {
    client: reqwest::Client,
    url: String,
    index: String,
    api_key: Option<String>,
}

impl EsSink {
    pub fn new(c: &EsConfig) -> Result<Self, OutputError> {
        Ok(Self {
            client: client(c.ca_file.as_deref(), c.timeout_secs)?,
            url: format!("{}/_bulk", trim_url(&c.url)),
            index: c.index.clone(),
            api_key: c.api_key.clone(),
        })
    }

    /// The document id: derived from the record, so a redelivered record conflicts (409)
    /// instead of being indexed twice.
    fn doc_id(r: &Record) -> String {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(r.uid.as_bytes());
        h.update([0]);
        h.update(r.payload.as_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// The outcome of one `_bulk` item.
fn bulk_item(item: &Value) -> ItemOutcome {
    let op = item
        .as_object()
        .and_then(|o| o.values().next())
        .unwrap_or(&Value::Null);
    let status = op["status"].as_u64().unwrap_or(0);
    let reason = || {
        let e = &op["error"];
        format!(
            "item status {status}: {} {}",
            e["type"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("")
        )
    };
    match status {
        // 409: a document with this id exists: an earlier delivery of this record.
        200..=299 | 409 => ItemOutcome::Delivered,
        429 | 500..=599 | 0 => ItemOutcome::Retry(reason()),
        _ => ItemOutcome::Reject(reason()),
    }
}

impl Deliver for EsSink {
    async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<ItemOutcome>, DeliveryError> {
        let mut body = String::new();
        for r in batch {
            let action =
                serde_json::json!({"create": {"_index": self.index, "_id": Self::doc_id(r)}});
            body.push_str(&action.to_string());
            body.push('\n');
            body.push_str(&r.payload);
            body.push('\n');
        }
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/x-ndjson")
            .body(body);
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", format!("ApiKey {k}"));
        }
        let resp = send(req).await?;
        let v: Value = serde_json::from_str(&resp)
            .map_err(|e| DeliveryError::Transient(format!("bulk response: {e}")))?;
        let items = v["items"]
            .as_array()
            .filter(|i| i.len() == batch.len())
            .ok_or_else(|| {
                DeliveryError::Transient(format!("bulk response without {} items", batch.len()))
            })?;
        Ok(items.iter().map(bulk_item).collect())
    }
}

/// A webhook: the batch as a JSON array, optionally HMAC-signed.
#[derive(Debug)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    secret: Option<Vec<u8>>,
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; the error case cannot happen.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSink {
    pub fn new(c: &WebhookConfig) -> Result<Self, OutputError> {
        Ok(Self {
            client: client(c.ca_file.as_deref(), c.timeout_secs)?,
            url: c.url.clone(),
            secret: c.hmac_secret.as_ref().map(|s| s.as_bytes().to_vec()),
        })
    }
}

impl Deliver for WebhookSink {
    async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<ItemOutcome>, DeliveryError> {
        let mut body = String::from("[");
        for (i, r) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&r.payload);
        }
        body.push(']');
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(secret) = &self.secret {
            req = req.header("X-Agentid-Signature", signature(secret, body.as_bytes()));
        }
        send(req.body(body)).await?;
        Ok(vec![ItemOutcome::Delivered; batch.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_classified() {
        let v: Value = serde_json::json!([
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
        ]);
        let got: Vec<ItemOutcome> = v.as_array().unwrap().iter().map(bulk_item).collect();
        assert_eq!(got[0], ItemOutcome::Delivered);
        assert_eq!(got[1], ItemOutcome::Delivered);
        assert!(matches!(&got[2], ItemOutcome::Retry(r) if r.contains("busy")));
        assert!(matches!(&got[3], ItemOutcome::Reject(r) if r.contains("mapper_parsing")));
    }

    #[test]
    fn hmac_signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(guid().len(), 36);
    }
}
