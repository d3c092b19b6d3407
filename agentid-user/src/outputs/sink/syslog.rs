//! Syslog transports: UDP (one datagram per message), TCP and TLS (octet-counted frames).
//!
//! TCP and TLS have no application-level acknowledgement (RFC 5425 defines none): a batch
//! counts as delivered once written and flushed to the kernel. To avoid writing into a
//! connection the receiver already closed (the write would succeed and the data vanish),
//! each batch first checks the socket for EOF and reconnects. Connecting (with the TLS
//! handshake) and writing a batch each have a time limit (`timeout_secs`): a receiver that
//! stops reading, or a connection left half-open by a crashed peer, is dropped and retried
//! instead of stalling the sink for good.
use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncWriteExt, ReadBuf},
    net::{TcpStream, UdpSocket},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{Deliver, DeliveryError, ItemOutcome};
use crate::outputs::{
    OutputError,
    config::{SyslogConfig, SyslogTransport},
    encode::syslog::octet_counted,
    spool::Record,
};

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

#[derive(Debug)]
enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

impl Conn {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Tcp(s) => Some(s),
            Self::Tls(s) => Some(s.get_ref().0),
            Self::Udp(_) => None,
        }
    }

    /// Whether the peer closed (or reset) the connection; peeks, never consumes.
    fn peer_closed(&self) -> bool {
        let Some(s) = self.tcp() else { return false };
        let mut buf = [0u8; 1];
        let mut rb = ReadBuf::new(&mut buf);
        let mut cx = Context::from_waker(Waker::noop());
        match s.poll_peek(&mut cx, &mut rb) {
            Poll::Ready(Ok(0) | Err(_)) => true,
            Poll::Ready(Ok(_)) | Poll::Pending => false,
        }
    }
}

pub struct SyslogSink {
    transport: SyslogTransport,
    address: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
    /// Limit of one connect (with the TLS handshake) and of one batch write.
    timeout: Duration,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("transport", &self.transport)
            .field("address", &self.address)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds the TLS client configuration (ring provider, the given CA only).
pub fn tls_config(
    ca_file: &Path,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<ClientConfig, OutputError> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        OutputError::Tls(format!("{}: {e}", what.display()))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(ca_file, &e))? {
        roots
            .add(cert.map_err(|e| bad(ca_file, &e))?)
            .map_err(|e| bad(ca_file, &e))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| OutputError::Tls(e.to_string()))?
            .with_root_certificates(roots);
    match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| OutputError::Tls(e.to_string()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(OutputError::Config(
            "syslog: client_cert and client_key go together".into(),
        )),
    }
}

impl SyslogSink {
    pub fn new(c: &SyslogConfig) -> Result<Self, OutputError> {
        let tls = if c.transport == SyslogTransport::Tls {
            let ca = c.ca_file.as_deref().ok_or_else(|| {
                OutputError::Config("syslog: transport \"tls\" needs ca_file".into())
            })?;
            let cfg = tls_config(ca, c.client_cert.as_deref(), c.client_key.as_deref())?;
            let host = c.server_name.clone().unwrap_or_else(|| host_of(&c.address));
            let name = ServerName::try_from(host.clone())
                .map_err(|e| OutputError::Config(format!("syslog: server name {host:?}: {e}")))?;
            Some((TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Self {
            transport: c.transport,
            address: c.address.clone(),
            tls,
            conn: None,
            timeout: Duration::from_secs(c.timeout_secs.max(1)),
        })
    }

    async fn connect(&self) -> Result<Conn, DeliveryError> {
        let err = |e: std::io::Error| DeliveryError::Transient(format!("{}: {e}", self.address));
        match self.transport {
            SyslogTransport::Udp => {
                let addr: SocketAddr = tokio::net::lookup_host(&self.address)
                    .await
                    .map_err(err)?
                    .next()
                    .ok_or_else(|| {
                        DeliveryError::Transient(format!("{}: no address", self.address))
                    })?;
                let bind: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let s = UdpSocket::bind(bind).await.map_err(err)?;
                s.connect(addr).await.map_err(err)?;
                Ok(Conn::Udp(s))
            }
            SyslogTransport::Tcp => {
                let s = TcpStream::connect(&self.address).await.map_err(err)?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
            SyslogTransport::Tls => {
                let s = TcpStream::connect(&self.address).await.map_err(err)?;
                let _ = s.set_nodelay(true);
                let Some((connector, name)) = &self.tls else {
                    return Err(DeliveryError::Rejected("tls not configured".into()));
                };
                let tls = connector.connect(name.clone(), s).await.map_err(err)?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }
}

/// `host` of `host:port` / `[v6]:port`.
fn host_of(address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

impl Deliver for SyslogSink {
    async fn deliver(&mut self, batch: &[Record]) -> Result<Vec<ItemOutcome>, DeliveryError> {
        if self.conn.as_ref().is_some_and(Conn::peer_closed) {
            self.conn = None;
        }
        let timed_out = |what: &str| {
            DeliveryError::Transient(format!(
                "{}: {what} timed out after {} s",
                self.address,
                self.timeout.as_secs()
            ))
        };
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => tokio::time::timeout(self.timeout, self.connect())
                .await
                .map_err(|_| timed_out("connect"))??,
        };
        let delivered = || vec![ItemOutcome::Delivered; batch.len()];
        let write = async {
            match &mut conn {
                Conn::Udp(s) => send_datagrams(s, batch).await,
                Conn::Tcp(s) => write_frames(s, batch).await.map(|()| delivered()),
                Conn::Tls(s) => write_frames(s.as_mut(), batch).await.map(|()| delivered()),
            }
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(outcomes)) => {
                self.conn = Some(conn);
                Ok(outcomes)
            }
            // The connection is dropped (a partly written frame with it): the next attempt
            // reconnects and sends the whole batch again.
            Ok(Err(e)) => Err(DeliveryError::Transient(format!("{}: {e}", self.address))),
            Err(_) => Err(timed_out("write")),
        }
    }
}

async fn send_datagrams(s: &UdpSocket, batch: &[Record]) -> std::io::Result<Vec<ItemOutcome>> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for r in batch {
        if r.payload.len() > MAX_DATAGRAM {
            outcomes.push(ItemOutcome::Reject(format!(
                "{} bytes do not fit a UDP datagram",
                r.payload.len()
            )));
            continue;
        }
        s.send(r.payload.as_bytes()).await?;
        outcomes.push(ItemOutcome::Delivered);
    }
    Ok(outcomes)
}

async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    batch: &[Record],
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for r in batch {
        buf.extend_from_slice(&octet_counted(r.payload.as_bytes()));
    }
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_address() {
        assert_eq!(super::host_of("siem.example.org:6514"), "siem.example.org");
        assert_eq!(super::host_of("[::1]:6514"), "::1");
    }
}
