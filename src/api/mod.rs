//! The operators' HTTPS interface, served by the daemon: a JSON API over the
//! same commands as the control socket (so the two cannot drift), the web
//! console, live status events and `/metrics`. Bearer tokens with a role
//! (`monitor` reads, `admin` also commands) guard everything but the
//! console's page and the OpenAPI document.

mod body;
mod routes;
mod snapshots;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{Dispatch, Request};
use crate::stop::Stop;

/// Writes a line into a module's log (every module's with `None`).
pub type Audit = Arc<dyn Fn(Option<&str>, String) + Send + Sync>;

/// What the API answers from.
pub struct Api {
    pub node: String,
    pub peer_name: String,
    pub tokens: tokens::Tokens,
    /// Carries out control requests on this node, as the control socket
    /// does.
    pub commands: Arc<dyn Dispatch>,
    pub audit: Audit,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub stop: Stop,
    /// The peer's status as last asked (and when), or why it could not be had.
    pub peer: parking_lot::Mutex<Option<(std::time::Instant, PeerStatus)>>,
    /// When a client last wanted it: nobody watching, nobody asks.
    pub wanted: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl Api {
    /// The peer's status, unless too old to show (not asked while nobody
    /// wanted it).
    fn peer_status(&self) -> Option<PeerStatus> {
        *self.wanted.lock() = Some(std::time::Instant::now());
        let p = self.peer.lock();
        p.as_ref()
            .filter(|(at, _)| at.elapsed() < 3 * PEER_EVERY)
            .map(|(_, s)| s.clone())
    }
}

/// The peer's status, or why it could not be had.
pub type PeerStatus = Result<crate::control::Status, PeerUnknown>;

/// Why the peer's status could not be had.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerUnknown {
    #[error("no status in the answer")]
    NoStatus,
    /// The peer (or the relay to it) refused, in its words.
    #[error("{0}")]
    Refused(String),
    /// The task that asked did not end.
    #[error("{0}")]
    Lost(String),
}

/// How often the peer's status is asked for (over the replication link's
/// TLS, as `tandem status --on PEER` does) while clients want it.
const PEER_EVERY: Duration = Duration::from_secs(1);
/// How long after the last client's request it is still asked for.
const PEER_WANTED: Duration = Duration::from_secs(60);

/// Serves the API on `listener` until its stop, and keeps the peer's
/// status at hand.
pub fn start(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    rt: &tokio::runtime::Handle,
) {
    let stop = api.stop.clone();
    stop.task(rt, "api", serve(api.clone(), listener, tls));
    stop.task(rt, "api-peer-status", async move {
        loop {
            let wanted = api.wanted.lock().is_some_and(|t| t.elapsed() < PEER_WANTED);
            if !wanted {
                tokio::time::sleep(PEER_EVERY / 10).await;
                continue;
            }
            let (c, peer) = (api.commands.clone(), api.peer_name.clone());
            let asked = tokio::task::spawn_blocking(move || {
                c.handle(Request::On {
                    node: peer,
                    request: Box::new(Request::Status {}),
                })
            })
            .await;
            let status = match asked {
                Ok(a) if a.ok => a.status.ok_or(PeerUnknown::NoStatus),
                Ok(a) => Err(PeerUnknown::Refused(a.error.unwrap_or_default())),
                Err(e) => Err(PeerUnknown::Lost(e.to_string())),
            };
            *api.peer.lock() = Some((std::time::Instant::now(), status));
            tokio::time::sleep(PEER_EVERY).await;
        }
    });
}

/// The OpenAPI document of this API, as kept in the repository.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Connections at once, and from one address: one client holding idle
/// connections cannot take the others' places.
const CONNECTIONS: (usize, usize) = (1024, 64);
/// From accepting a connection to holding a request's head, TLS handshake
/// included; and between requests on a kept-alive connection.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head and body read.
const MAX_HEAD: usize = 16 << 10;

/// Serves on `listener` with `tls` until the API's stop.
pub async fn serve(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(lb_health::Slots::new(CONNECTIONS.0, CONNECTIONS.1));
    let stop = api.stop.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.stopped() => return,
        };
        let Ok((tcp, from)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(slot) = slots.take(from.ip()) else {
            continue;
        };
        let (api, acceptor) = (api.clone(), acceptor.clone());
        stop.spawn("api-connection", async move {
            connection(api, acceptor, tcp, from).await;
            drop(slot);
        });
    }
}

async fn connection(
    api: Arc<Api>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    from: SocketAddr,
) {
    tcp.set_nodelay(true).ok();
    let Ok(Ok(tls)) = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(routes::handle(&api, req, from).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
}

/// Why the API's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error(transparent)]
    Node(#[from] crate::replication::tls::TlsError),
    #[error("api.cert/api.key: {0}")]
    Files(crate::webclient::ClientError),
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("api.cert and api.key: {0}")]
    Pair(rustls::Error),
}

/// The TLS configuration the API presents: the operator's certificate, or
/// this node's.
pub fn tls_config(
    cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    creds: &crate::replication::tls::Credentials,
) -> Result<Arc<rustls::ServerConfig>, ApiTlsError> {
    let Some((cert, key)) = cert else {
        return Ok(creds.server_config_anonymous()?);
    };
    let (chain, k) = crate::webclient::chain_and_key(cert, key).map_err(ApiTlsError::Files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ApiTlsError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, k)
        .map_err(ApiTlsError::Pair)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}
