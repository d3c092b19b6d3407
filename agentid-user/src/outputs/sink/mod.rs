//! Transports: each turns a batch of spooled records into one delivery attempt and says,
//! per record, whether the receiver accepted it.
use std::future::Future;

use super::spool::Record;

pub mod file;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod syslog;

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Delivered,
    /// Try again later (429, 5xx, a per-item retryable error).
    Retry(String),
    /// The receiver will never take it (other 4xx, a malformed record): dead-letter it.
    Reject(String),
}

/// A whole-batch failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Connection errors, timeouts, 408/429/5xx: retried with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// The receiver rejected the request as such (other 4xx): the records are
    /// dead-lettered (after isolating them one by one when the batch had several).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// A transport. Implementations keep their connection between calls.
pub trait Deliver: Send + 'static {
    /// Delivers `batch`; on `Ok`, one outcome per record, in order.
    fn deliver(
        &mut self,
        batch: &[Record],
    ) -> impl Future<Output = Result<Vec<ItemOutcome>, DeliveryError>> + Send;
}

/// Maps an HTTP status of a whole request to the delivery contract.
pub fn classify_status(status: u16, body: &str) -> Result<(), DeliveryError> {
    let reason = || {
        format!(
            "HTTP {status}: {}",
            body.chars().take(500).collect::<String>()
        )
    };
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(DeliveryError::Transient(reason())),
        _ => Err(DeliveryError::Rejected(reason())),
    }
}
