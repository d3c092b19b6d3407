//! The CLI's side of the API: HTTP/1.1 over the daemon's Unix socket.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::api::types::ErrorBody;

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    async fn connect(
        &self,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
        let s = self.socket.display();
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow!("the agentid daemon is not running (no socket at {s}); start it with `agentid daemon`")
            }
            std::io::ErrorKind::PermissionDenied => {
                anyhow!("permission denied on {s}: run as root or as a member of the agentid group")
            }
            std::io::ErrorKind::ConnectionRefused => {
                anyhow!("nothing is listening on {s}: the daemon is not running (stale socket)")
            }
            _ => anyhow!("connecting to {s}: {e}"),
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("talking to the daemon on {s}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn request(&self, path: &str) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        self.request_with(hyper::Method::GET, path).await
    }

    async fn request_with(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut sender = self.connect().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "agentid")
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request to the daemon")?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |e| e.error);
        bail!("daemon answered {}: {msg}", status.as_u16())
    }

    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        self.json(hyper::Method::POST, path).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(hyper::Method::GET, path).await
    }

    /// A request whose answer is one JSON document.
    async fn json(&self, method: hyper::Method, path: &str) -> anyhow::Result<Value> {
        let resp = self.request_with(method, path).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        serde_json::from_slice(&body).context("the daemon's answer is not JSON")
    }

    /// Follows an NDJSON stream, calling `on_item` for each object until the daemon ends
    /// it (or the caller stops via an error).
    pub async fn follow(
        &self,
        path: &str,
        mut on_item: impl FnMut(Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut body = self.request(path).await?.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the daemon closed the stream")?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue; // keep-alive
                }
                on_item(serde_json::from_slice(line).context("a streamed line is not JSON")?)?;
            }
        }
        bail!("the daemon ended the stream (stopped?)")
    }
}
