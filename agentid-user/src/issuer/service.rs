//! The Workload API's RPCs on the issuer socket, and the task that retires the keys of
//! ended sessions. JWT profile only: the X.509 RPCs answer `Unimplemented`.
use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    task::JoinHandle,
};
use tokio_stream::{Stream, StreamExt as _, wrappers::WatchStream};
use tonic::{Request, Response, Status, transport::server::Connected};

use super::{
    IssuedToken, Issuer,
    attest::{Peer, Refusal},
    pb::{self, spiffe_workload_api_server::SpiffeWorkloadApiServer},
    tokens::{self, Subject},
};
use crate::state::Shared;

/// How often ended sessions are looked for: their keys leave the bundle within this.
const REAP_EVERY: Duration = Duration::from_millis(200);

/// How long a caller not yet in the table (its exec still on its way through the
/// pipeline) is waited for before it is refused.
const CATCH_UP: Duration = Duration::from_secs(2);

/// A serving issuer: its state and its tasks (the server, the key reaper).
#[derive(Debug)]
pub struct Serving {
    pub issuer: Arc<Issuer>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Binds the Workload API socket and serves it; also starts the key reaper. `None` when
/// `[issuer]` is off. `fingerprints`: the credential key (issued tokens are fingerprinted
/// like any credential).
pub fn serve(
    shared: &Arc<Shared>,
    fingerprints: crate::credentials::FingerprintKey,
) -> anyhow::Result<Option<Serving>> {
    let config = shared
        .config
        .read()
        .map_err(|_| anyhow::anyhow!("config lock poisoned"))?
        .issuer
        .clone();
    if !config.enabled {
        return Ok(None);
    }
    let issuer = Arc::new(Issuer::new(&config, fingerprints));
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The state lock is held: a socket file left here belongs to a dead daemon.
    let _ = std::fs::remove_file(&config.socket);
    let listener = UnixListener::bind(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;
    // Anyone may ask: the answer depends only on what the kernel says about the caller.
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o666))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).map(|conn| {
        let io = conn?;
        let peer = Arc::new(Peer::of(&io)?);
        Ok::<_, std::io::Error>(Attested { io, peer })
    });
    let api = Api {
        issuer: Arc::clone(&issuer),
        shared: Arc::clone(shared),
    };
    let server = tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(api))
        .serve_with_incoming(incoming);
    let serving = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "Workload API server stopped");
        }
    });
    let reaper = tokio::spawn(reap(Arc::clone(&issuer), Arc::clone(shared)));
    tracing::info!(socket = %config.socket.display(), "Workload API listening");
    Ok(Some(Serving {
        issuer,
        tasks: vec![serving, reaper],
    }))
}

/// Retires the keys of sessions whose root exited, and publishes the bundle without them.
async fn reap(issuer: Arc<Issuer>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    loop {
        tick.tick().await;
        let view = shared.view();
        let live: std::collections::HashSet<&str> = view
            .processes
            .iter()
            .filter_map(|(_, i)| i.as_ref())
            .filter(|i| super::attest::session_live(&view, i))
            .filter_map(|i| i.session.as_deref())
            .collect();
        let Ok(mut ring) = issuer.keys.lock() else {
            return;
        };
        let ended = ring.retire_except(&|s| live.contains(s));
        if !ended.is_empty() {
            tracing::info!(sessions = ?ended, "sessions ended: their keys left the JWT bundle");
            issuer.publish(&ring);
        }
    }
}

/// A connection with its peer as captured at accept.
struct Attested {
    io: UnixStream,
    peer: Arc<Peer>,
}

impl Connected for Attested {
    type ConnectInfo = Arc<Peer>;
    fn connect_info(&self) -> Arc<Peer> {
        Arc::clone(&self.peer)
    }
}

impl AsyncRead for Attested {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Attested {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct Api {
    issuer: Arc<Issuer>,
    shared: Arc<Shared>,
}

/// The endpoint spec's SSRF guard: every request carries `workload.spiffe.io: true`.
fn require_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get("workload.spiffe.io") {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

impl Api {
    /// The caller's identity now; a caller not yet in the table is waited for briefly.
    async fn attest(&self, peer: &Peer) -> Result<Subject, Status> {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            match peer.attest(&self.shared.view()) {
                Ok(s) => return Ok(s),
                Err(Refusal::Unregistered(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::info!(pid = peer.pid, uid = peer.uid, "Workload API refused: {e}");
                    return Err(Status::permission_denied(e.to_string()));
                }
            }
        }
    }
}

impl Api {
    /// `credential-stale` (`session-ended`): someone holds an ended session's token and
    /// still offers it. The presenter is named as the kernel says (no agent: unregistered).
    fn presented_after_end(&self, peer: Option<&Peer>, svid: &str) {
        use crate::credentials::TokenIssuer as _;
        let fp = self
            .issuer
            .fingerprints
            .fingerprint(crate::credentials::CredKind::Jwt, svid.as_bytes());
        let Some(origin) = self.issuer.recognise(svid.as_bytes(), &fp) else {
            return;
        };
        let view = self.shared.view();
        let subject = peer.and_then(|p| p.attest(&view).ok());
        let presenter = subject
            .as_ref()
            .and_then(|s| crate::identity::SpiffeId::parse(&s.agent).ok())
            .map_or_else(crate::detect::AlertAgent::unregistered, |id| {
                crate::detect::AlertAgent {
                    session: subject.as_ref().map(|s| s.session.clone()),
                    ..crate::detect::AlertAgent::bare(id)
                }
            });
        let process = crate::detect::ProcessEvidence {
            exec_id: None,
            pid: peer.map_or(0, |p| p.pid),
            exe: None,
            argv: Vec::new(),
            uid: peer.map_or(0, |p| p.uid),
            cgroup: None,
            acting_for: subject.map(|s| s.acting_for).unwrap_or_default(),
        };
        let alert = self.shared.detector.lock().ok().map(|mut d| {
            d.token_presented_after_end(&origin, &fp, presenter, process, SystemTime::now())
        });
        if let Some(alert) = alert {
            crate::daemon::alerts::emit_alert(&self.shared, &alert);
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::spiffe_workload_api_server::SpiffeWorkloadApi for Api {
    type FetchX509SVIDStream = BoxStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        require_header(&req)?;
        Err(Status::unimplemented(
            "X.509-SVIDs are not issued (JWT profile only)",
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        require_header(&req)?;
        Err(Status::unimplemented(
            "X.509 bundles are not served (JWT profile only)",
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        require_header(&req)?;
        let peer = req
            .extensions()
            .get::<Arc<Peer>>()
            .cloned()
            .ok_or_else(|| Status::permission_denied("no peer credentials"))?;
        let pb::JwtsvidRequest {
            audience,
            spiffe_id,
        } = req.into_inner();
        let [aud] = audience.as_slice() else {
            return Err(Status::invalid_argument("exactly one audience is required"));
        };
        if !self.issuer.audiences.is_empty() && !self.issuer.audiences.contains(aud) {
            return Err(Status::permission_denied(format!(
                "audience {aud:?} is not in [issuer] audiences"
            )));
        }
        let subject = self.attest(&peer).await?;
        if !spiffe_id.is_empty() && spiffe_id != subject.agent {
            return Err(Status::permission_denied(format!(
                "the caller is {}, not {spiffe_id}",
                subject.agent
            )));
        }
        let minted = {
            let mut ring = self
                .issuer
                .keys
                .lock()
                .map_err(|_| Status::internal("key ring lock poisoned"))?;
            let had = ring.is_live(&subject.session);
            let m = tokens::mint(&mut ring, &subject, aud, SystemTime::now(), self.issuer.ttl)
                .map_err(|e| Status::internal(e.to_string()))?;
            if !had {
                self.issuer.publish(&ring);
            }
            m
        };
        // SPIRE's lesson: attest, mint, then check the caller is still the same process
        // with the same identity; otherwise the token is dropped unsent.
        self.shared.view_changed();
        let again = peer
            .attest(&self.shared.view())
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        if again.agent != subject.agent || again.session != subject.session {
            return Err(Status::permission_denied(
                "the caller's identity changed while its token was minted",
            ));
        }
        let tokens::Minted { token, claims, kid } = minted;
        let fingerprint = self.issuer.remember(&token, &claims, &kid).to_string();
        let issued = IssuedToken {
            jti: claims.jti,
            agent: claims.sub.clone(),
            session: claims.sid,
            aud: aud.clone(),
            issued: claims.iat,
            expires: claims.exp,
            kid,
            fingerprint,
            state: String::new(),
        };
        if let Ok(record) = serde_json::to_value(&issued)
            && let Ok(mut outputs) = self.shared.outputs.lock()
            && let Some(outputs) = outputs.as_mut()
        {
            outputs.token_issued(&record);
        }
        self.issuer.record(issued);
        Ok(Response::new(pb::JwtsvidResponse {
            svids: vec![pb::Jwtsvid {
                spiffe_id: claims.sub,
                svid: token,
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        require_header(&req)?;
        // Public keys only: any caller may follow them (validators are often not agents).
        let stream = WatchStream::new(self.issuer.bundles.subscribe()).map(
            |set: Arc<BTreeMap<String, Vec<u8>>>| {
                Ok(pb::JwtBundlesResponse {
                    bundles: set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                })
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        require_header(&req)?;
        let peer = req.extensions().get::<Arc<Peer>>().cloned();
        let pb::ValidateJwtsvidRequest { audience, svid } = req.into_inner();
        if audience.is_empty() || svid.is_empty() {
            return Err(Status::invalid_argument("audience and svid are required"));
        }
        let checked = {
            let ring = self
                .issuer
                .keys
                .lock()
                .map_err(|_| Status::internal("key ring lock poisoned"))?;
            tokens::validate(&ring, &svid, &audience, SystemTime::now())
        };
        if matches!(checked, Err(tokens::ValidateError::SessionEnded)) {
            self.presented_after_end(peer.as_deref(), &svid);
        }
        let claims = checked.map_err(|e| Status::invalid_argument(e.to_string()))?;
        let json = serde_json::to_value(&claims).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: claims.sub,
            claims: Some(to_struct(json)),
        }))
    }
}

/// JSON → `google.protobuf.Struct` (the claims of `ValidateJWTSVIDResponse`).
fn to_struct(v: serde_json::Value) -> prost_types::Struct {
    let serde_json::Value::Object(map) = v else {
        return prost_types::Struct::default();
    };
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        o @ serde_json::Value::Object(_) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_the_security_header_is_an_invalid_argument() {
        let mut req = Request::new(());
        assert_eq!(
            require_header(&req).map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
        req.metadata_mut()
            .insert("workload.spiffe.io", "false".parse().unwrap());
        assert!(require_header(&req).is_err());
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        assert!(require_header(&req).is_ok());
    }

    #[test]
    fn claims_become_a_protobuf_struct() {
        let s = to_struct(serde_json::json!({"sub": "x", "aud": ["a"], "exp": 5}));
        assert_eq!(s.fields.len(), 3);
    }
}
