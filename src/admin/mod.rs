//! The admin listener: the admin API under `/v1` (admin key required), and, unauthenticated,
//! `/metrics`, `/healthz` and `/readyz`. An axum router run as a Pingora background service on
//! its own runtime, on a listener bound before the server starts.

mod api;

pub(crate) use api::self_service;

use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Limits;
use crate::credential::format::{self, TokenKind};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::SharedStore;

pub use api::ApiError;

/// What the admin handlers share.
pub struct AdminState {
    pub engine: Arc<Engine>,
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// The proxy's address, for the `usage` line of an inspected token.
    pub proxy_address: String,
    /// The key from the config, if any; else one is made (or found) in the store at start.
    configured_key: Option<String>,
    key_hash: OnceLock<[u8; 32]>,
    pub tickets: Arc<crate::tickets::Tickets>,
    pub sessions: Arc<crate::sessions::SessionTokens>,
}

/// The credential lifecycles the admin API drives.
pub struct Lifecycles {
    pub tickets: Arc<crate::tickets::Tickets>,
    pub sessions: Arc<crate::sessions::SessionTokens>,
}

impl AdminState {
    pub fn new(
        engine: Arc<Engine>,
        store: SharedStore,
        metrics: Arc<Metrics>,
        limits: Limits,
        proxy_address: String,
        configured_key: Option<String>,
        lifecycles: Lifecycles,
    ) -> Self {
        let Lifecycles { tickets, sessions } = lifecycles;
        Self {
            engine,
            store,
            metrics,
            limits,
            proxy_address,
            configured_key,
            key_hash: OnceLock::new(),
            tickets,
            sessions,
        }
    }

    /// Settles the admin key: the configured one, or the one kept in the store, or a new one
    /// (kept as a hash, printed once on stdout).
    pub async fn init_admin_key(&self) -> Result<(), crate::store::StoreError> {
        if self.key_hash.get().is_some() {
            return Ok(());
        }
        let hash = match &self.configured_key {
            Some(key) => format::hash_secret(key),
            None => match self.store.admin_key_hash().await? {
                Some(kept) => kept,
                None => {
                    let made = format::generate(TokenKind::AdminKey)
                        .map_err(|e| crate::store::StoreError::Backend(e.to_string()))?;
                    let hash = format::hash_secret(&made.token);
                    let kept = self.store.init_admin_key_hash(hash).await?;
                    if kept == hash {
                        // Shown once, to whoever started the server; only its hash is kept.
                        println!(
                            "tokengate: no admin key was configured, so one was made. It is shown once:\n\n    {}\n\nKeep it (TOKENGATE_ADMIN_KEY); only its hash is stored.",
                            made.token
                        );
                    }
                    kept
                }
            },
        };
        let _ = self.key_hash.set(hash);
        Ok(())
    }

    fn key_matches(&self, presented: &str) -> Option<bool> {
        self.key_hash
            .get()
            .map(|hash| format::secret_matches(presented, hash))
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    let v1 = api::routes().route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

async fn require_key(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.map(|k| state.key_matches(k)) {
        Some(Some(true)) => next.run(req).await,
        Some(None) => {
            ApiError::unavailable("the admin key is not settled yet: the store is not answering")
                .into_response()
        }
        _ => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin key is required: Authorization: Bearer <admin key>",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(r#"Bearer realm="tokengate-admin""#),
            );
            resp
        }
    }
}

/// Ready when the store answers and the admin key is settled.
/// Ready when the admin key and signing keys are settled and decisions can be made: the store
/// answers, or it stopped answering less than `cache.stale_for` ago after answering once (the
/// cached decisions still serve). Every replica shares the store, so failing readiness at the
/// first error would take every Pod out of its Service at once and turn an outage that cached
/// decisions ride out into a total one; past `stale_for` nothing cached may be served, and the
/// replica says so. `tokengate_store_up` reports the store itself.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.key_hash.get().is_none() || state.engine.sessions().keys().is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "admin key or signing keys not settled\n",
        )
            .into_response();
    }
    let Err(e) = state.store.ping().await else {
        return (StatusCode::OK, "ready\n").into_response();
    };
    let stale_for = state.engine.cache().stale_for();
    match state.metrics.store_down_for() {
        Some(down) if state.metrics.store_ever_reached() && down < stale_for => (
            StatusCode::OK,
            format!(
                "ready: the store has not answered for {}s ({e}); cached decisions serve for up to {}s\n",
                down.as_secs(),
                stale_for.as_secs()
            ),
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not answering: {e}\n"),
        )
            .into_response(),
    }
}

/// Prometheus text. The store is pinged first, so `tokengate_store_up` is current even when
/// no request has needed the store lately.
async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let _ = state.store.ping().await;
    for (kind, n) in state.engine.cache().entry_counts().await {
        state.metrics.cache_size(kind, n);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Runs the admin router on a listener bound before the server started.
pub struct AdminService {
    state: Arc<AdminState>,
    listener: Mutex<Option<TcpListener>>,
    /// HTTPS with this certificate (`server.admin_tls`), else plain HTTP.
    tls: Option<Arc<crate::tls::ReloadingCert>>,
}

impl AdminService {
    pub fn new(
        state: Arc<AdminState>,
        listener: TcpListener,
        tls: Option<Arc<crate::tls::ReloadingCert>>,
    ) -> Self {
        Self {
            state,
            listener: Mutex::new(Some(listener)),
            tls,
        }
    }
}

/// The admin listener over TLS. Connections are accepted in a task of their own and each
/// handshake runs in its own task (at most `HANDSHAKES` at once, each bounded by `HANDSHAKE`),
/// so a client that never finishes one can't hold the probes and `/metrics` up.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsIo, std::net::SocketAddr)>,
    addr: std::net::SocketAddr,
}

type TlsIo = pingora::tls::ServerTlsStream<tokio::net::TcpStream>;

const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);
const HANDSHAKES: usize = 64;

impl TlsListener {
    fn spawn(
        tcp: tokio::net::TcpListener,
        acceptor: pingora::tls::TlsAcceptor,
    ) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(HANDSHAKES);
        let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment rather than spin.
                        tracing::warn!(error = %e, "admin listener: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (acceptor, ready) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "admin listener: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!("admin listener: TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { ready, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task is gone: nothing will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                return;
            }
        };
        let state = self.state.clone();
        tokio::spawn(async move {
            // The store may not answer yet (Redis still starting): keep trying.
            let mut wait = std::time::Duration::from_millis(100);
            // The admin key, and the session signing keys when the config names none.
            loop {
                let settled = match state.init_admin_key().await {
                    Ok(()) => state.sessions.init_keys().await,
                    Err(e) => Err(e),
                };
                let Err(e) = settled else { break };
                tracing::warn!(error = %e, "can't settle the admin key or the signing keys yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        });
        let app = router(self.state.clone());
        let stopped = async move {
            let _ = shutdown.changed().await;
        };
        let served = match &self.tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            Some(cert) => {
                let config = pingora::tls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_cert_resolver(cert.clone());
                let acceptor = pingora::tls::TlsAcceptor::from(Arc::new(config));
                match TlsListener::spawn(listener, acceptor) {
                    Ok(tls) => axum::serve(tls, app).with_graceful_shutdown(stopped).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "admin listener stopped");
        }
    }
}
