//! `agentid token fetch --aud X`: a JWT-SVID for the calling process from the issuer's
//! Workload API socket, for shell agents with no SPIFFE library. A client like any other:
//! the token is the caller's own, attested from the kernel; printed on stdout.
use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};

use anyhow::Context as _;
use tonic::codegen::Service;

use crate::issuer::pb::{JwtsvidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient};

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenAction {
    /// Fetch a JWT-SVID for this process's agent session and print it.
    Fetch {
        /// The audience (exactly one).
        #[arg(long)]
        aud: String,
        /// The Workload API socket.
        #[arg(long, env = "AGENTID_WORKLOAD_SOCKET", default_value = crate::config::DEFAULT_WORKLOAD_SOCKET)]
        workload_socket: PathBuf,
    },
}

/// Connects every channel to the Unix socket.
#[derive(Debug, Clone)]
struct Uds(PathBuf);

impl Service<tonic::transport::Uri> for Uds {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::transport::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        })
    }
}

pub async fn run(args: TokenArgs, json: bool) -> anyhow::Result<()> {
    let TokenAction::Fetch {
        aud,
        workload_socket,
    } = args.action;
    let token = fetch(&workload_socket, &aud).await?;
    let line = if json {
        serde_json::json!({ "token": token }).to_string()
    } else {
        token
    };
    std::io::Write::write_all(
        &mut std::io::stdout().lock(),
        format!("{line}\n").as_bytes(),
    )?;
    Ok(())
}

async fn fetch(socket: &Path, aud: &str) -> anyhow::Result<String> {
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(Uds(socket.to_owned()))
        .await
        .with_context(|| format!("connecting to the Workload API at {}", socket.display()))?;
    let mut req = tonic::Request::new(JwtsvidRequest {
        audience: vec![aud.to_owned()],
        spiffe_id: String::new(),
    });
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let answer = SpiffeWorkloadApiClient::new(channel)
        .fetch_jwtsvid(req)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
    answer
        .into_inner()
        .svids
        .into_iter()
        .next()
        .map(|s| s.svid)
        .context("the Workload API returned no JWT-SVID")
}
