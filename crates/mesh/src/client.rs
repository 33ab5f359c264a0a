//! Channels to other AMAOS services.
//!
//! A [`MeshChannel`] connects lazily with the configured connect timeout and,
//! on every call, injects the current trace context (`traceparent`) and sets
//! `grpc-timeout` to the smallest of: the timeout the caller set on the
//! request, what is left of the inbound request's deadline, and the default
//! request timeout. The response (headers) is awaited at most that long.
//!
//! A [`Dialer`] makes them for one principal; with `tls.mode = rustls` it
//! presents that principal's certificate and checks that the peer presents
//! the identity of the service it means to call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::config::{Config, Limits};
use crate::tls::{self, ClientTls, TlsError};
use crate::{context, telemetry};

/// A channel to another service, with deadline and trace propagation. It
/// spreads calls over `limits.connections_per_service` HTTP/2 connections,
/// so thousands of long streams (one per running task) do not share one.
#[derive(Clone, Debug)]
pub struct MeshChannel {
    connections: Arc<[Channel]>,
    /// The round robin's position, and what all clones share.
    shared: Arc<Shared>,
    inner: Channel,
    default_timeout: Duration,
    /// This service's own identity, sent on every call when set.
    credential: Option<Arc<crate::identity::ServiceCredential>>,
}

/// What every clone of a [`MeshChannel`] shares.
#[derive(Debug)]
struct Shared {
    /// The next connection of the round robin.
    next: AtomicUsize,
    /// The peer's `host:port` when the channel speaks plaintext: a failed
    /// call is then checked for a peer that expects TLS.
    plaintext_peer: Option<String>,
    /// Set once the peer answered as a plaintext (h2c) server: its later
    /// failures are not checked again.
    plaintext_confirmed: AtomicBool,
}

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid service URL `{url}`: {source}")]
pub struct ChannelError {
    url: String,
    #[source]
    source: tonic::transport::Error,
}

/// Makes channels from one principal (a service, or the CLI) to the others,
/// with mTLS when `tls.mode = rustls`.
#[derive(Clone, Debug)]
pub struct Dialer {
    limits: Limits,
    tls: Option<Arc<ClientTls>>,
    credential: Option<Arc<crate::identity::ServiceCredential>>,
}

impl Dialer {
    /// Channels for principal `me` under `config` (its certificate, when mTLS
    /// is on, is read now).
    pub fn new(config: &Config, me: &str) -> Result<Self, TlsError> {
        Ok(Self {
            limits: config.limits.clone(),
            tls: tls::client(&config.tls, &config.data_dir, me)?.map(Arc::new),
            credential: None,
        })
    }

    /// The same dialer, whose channels also prove this service's own
    /// identity on every call (see [`crate::identity`]).
    pub fn with_credential(mut self, credential: Arc<crate::identity::ServiceCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// The dialer of a service that proves its identity with the key in
    /// `key_file`, exchanged for tokens at auth (`auth_url`).
    pub fn for_service(
        self,
        auth_url: &str,
        key_file: std::path::PathBuf,
    ) -> Result<Self, ChannelError> {
        let auth = amaos_proto::auth::v1::auth_service_client::AuthServiceClient::new(
            self.channel("auth", auth_url)?,
        );
        Ok(
            self.with_credential(Arc::new(crate::identity::ServiceCredential::new(
                auth, key_file,
            ))),
        )
    }

    /// This dialer's service credential, if it has one.
    pub fn credential(&self) -> Option<&Arc<crate::identity::ServiceCredential>> {
        self.credential.as_ref()
    }

    /// Plaintext channels.
    pub fn plaintext(limits: &Limits) -> Self {
        Self {
            limits: limits.clone(),
            tls: None,
            credential: None,
        }
    }

    /// A lazily connecting channel to service `peer` at `url`. With mTLS the
    /// peer must present `peer`'s identity, and `http://` is read as `https://`.
    pub fn channel(&self, peer: &str, url: &str) -> Result<MeshChannel, ChannelError> {
        let error = |source| ChannelError {
            url: url.to_owned(),
            source,
        };
        let mut endpoint = match &self.tls {
            Some(tls) => {
                let secure = match url.strip_prefix("http://") {
                    Some(rest) => format!("https://{rest}"),
                    None => url.to_owned(),
                };
                Endpoint::from_shared(secure)
                    .and_then(|e| e.tls_config(tls.for_peer(peer)))
                    .map_err(error)?
            }
            None => Endpoint::from_shared(url.to_owned()).map_err(error)?,
        };
        let limits = &self.limits;
        endpoint = endpoint
            .connect_timeout(limits.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let connections: Arc<[Channel]> = (0..limits.connections_per_service.max(1))
            .map(|_| endpoint.connect_lazy())
            .collect();
        let plaintext_peer = match &self.tls {
            Some(_) => None,
            None => endpoint.uri().authority().map(|a| a.to_string()),
        };
        Ok(MeshChannel {
            inner: connections[0].clone(),
            connections,
            shared: Arc::new(Shared {
                next: AtomicUsize::new(0),
                plaintext_peer,
                plaintext_confirmed: AtomicBool::new(false),
            }),
            default_timeout: limits.request_timeout,
            credential: self.credential.clone(),
        })
    }
}

/// A plaintext, lazily connecting channel to `url`.
pub fn channel(url: &str, limits: &Limits) -> Result<MeshChannel, ChannelError> {
    Dialer::plaintext(limits).channel("", url)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for MeshChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Round robin: each call is readied (and then made) on the next connection.
        if self.connections.len() > 1 {
            let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
            self.inner = self.connections[i].clone();
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        telemetry::inject_current(request.headers_mut());
        let requested = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse_grpc_timeout);
        let timeout = [requested, context::remaining(), Some(self.default_timeout)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.default_timeout);
        if let Ok(value) = http::HeaderValue::from_str(&context::format_grpc_timeout(timeout)) {
            request.headers_mut().insert("grpc-timeout", value);
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let credential = self.credential.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            if let Some(credential) = credential {
                let token = credential
                    .token()
                    .await
                    .map_err(|s| Box::new(s) as BoxError)?;
                if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                    request
                        .headers_mut()
                        .insert(crate::identity::SERVICE_HEADER, value);
                }
            }
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(error)) => match &shared.plaintext_peer {
                    Some(peer) if !shared.plaintext_confirmed.load(Ordering::Relaxed) => {
                        match speaks_tls(peer).await {
                            Some(true) => Err(Box::new(tls_expected(peer)) as BoxError),
                            Some(false) => {
                                shared.plaintext_confirmed.store(true, Ordering::Relaxed);
                                Err(error.into())
                            }
                            None => Err(error.into()),
                        }
                    }
                    _ => Err(error.into()),
                },
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "no response within {}",
                    humantime::format_duration(timeout)
                ))) as BoxError),
            }
        })
    }
}

/// How long checking whether a peer speaks TLS may take.
const TLS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the server at `peer` (`host:port`) answers an HTTP/2 connection
/// preface with a TLS record (an alert, or a handshake): then it expects
/// TLS, and a plaintext client cannot talk to it. An h2c server answers
/// with a SETTINGS frame instead (`Some(false)`); a peer that is down or
/// says nothing is not taken for a TLS one (`None`: nothing learned).
async fn speaks_tls(peer: &str) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// TLS record content types: alert, handshake.
    const ALERT: u8 = 0x15;
    const HANDSHAKE: u8 = 0x16;
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(peer).await.ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.ok()?;
        Some(matches!(header, [ALERT | HANDSHAKE, 0x03]))
    };
    tokio::time::timeout(TLS_PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

/// The error of a plaintext call to a peer that expects TLS, naming the
/// setting that makes this side speak it.
fn tls_expected(peer: &str) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "the server at {peer} expects TLS, and this client speaks plaintext \
         (`tls.mode` is not `rustls`): set `tls.mode = \"rustls\"` in the config, or \
         AMAOS_TLS__MODE=rustls, with `tls.dir` (AMAOS_TLS__DIR) holding the mesh's \
         certificates (`amaos certs init` makes development ones)"
    ))
}
