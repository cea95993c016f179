//! Puts the pieces together and runs them: the store, the cache and the engine; the Pingora
//! proxy on `server.listen`; the admin listener; and the built-in echo upstream when asked.
//! Listeners other than the proxy's are bound here, before anything runs, so a taken port is a
//! clear error at start.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;

use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignalWatch};
use pingora::services::background::background_service;

use crate::admin::{AdminService, AdminState, Lifecycles};
use crate::assertion::Assertions;
use crate::cache::Cache;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, StoreConfig, Upstream};
use crate::credential::CredentialNames;
use crate::echo::EchoService;
use crate::endpoints::Endpoints;
use crate::engine::{Engine, EngineParts};
use crate::headers::IdentityHeaders;
use crate::jwt::KeySet;
use crate::limiter::FailureLimiter;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, UpstreamTarget};
use crate::sessions::SessionTokens;
use crate::store::SharedStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::instrumented::Instrumented;
use crate::store::redis::RedisStore;
use crate::tickets::Tickets;
use crate::usage::Recorder;
use crate::verify::external::ExternalIssuer;
use crate::verify::session::SessionVerifier;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("can't listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {0}: can't resolve it")]
    Upstream(String),
    #[error("{0}")]
    Other(String),
}

/// Opens the configured store (the Redis one connects on first use).
pub fn open_store(config: &StoreConfig) -> Result<SharedStore, crate::store::StoreError> {
    Ok(match config {
        StoreConfig::Embedded { path } => Arc::new(EmbeddedStore::open(path)?),
        StoreConfig::Redis {
            url,
            ca_file,
            sentinel_password,
        } => Arc::new(RedisStore::with_options(
            url,
            ca_file.as_deref(),
            sentinel_password.as_deref(),
        )?),
    })
}

/// Everything a running tokengate shares, built from a config.
pub struct Parts {
    pub engine: Arc<Engine>,
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
}

pub fn build(
    config: &Config,
    store: SharedStore,
    clock: Arc<dyn Clock>,
) -> Result<Parts, StartError> {
    let metrics = Arc::new(Metrics::new().map_err(|e| StartError::Other(e.to_string()))?);
    let store: SharedStore = Arc::new(Instrumented::new(store, metrics.clone()));
    let cache = Cache::new(store.clone(), &config.cache, clock.clone(), metrics.clone());
    let names = CredentialNames {
        ticket_cookie: config.ticket_cookie.clone(),
    };
    let engine = Arc::new(Engine::new(EngineParts {
        routes: config.routes.clone(),
        names,
        cache,
        clock,
        metrics: metrics.clone(),
        failures: FailureLimiter::new(config.limits.failures_per_minute),
        usage: Recorder::new(store.clone()),
        sessions: SessionVerifier::new(
            config.session_issuer.clone(),
            config.session_audience.clone(),
            config.session_leeway.as_secs(),
            config.cache.max_entries,
            config
                .issuers
                .iter()
                .cloned()
                .map(ExternalIssuer::new)
                .collect(),
        ),
    }));
    if !config.session_keys.is_empty() {
        let mut keys = KeySet::new();
        for key in &config.session_keys {
            keys.add(key.clone())
                .map_err(|e| StartError::Other(format!("sessions keys: {e}")))?;
        }
        engine.sessions().set_keys(keys);
    }
    Ok(Parts {
        engine,
        store,
        metrics,
    })
}

fn bind(addr: &str) -> Result<TcpListener, StartError> {
    let listen = |source| StartError::Listen {
        addr: addr.to_owned(),
        source,
    };
    let l = TcpListener::bind(addr).map_err(listen)?;
    l.set_nonblocking(true).map_err(listen)?;
    Ok(l)
}

/// Runs tokengate until `shutdown` fires (or, with `None`, until SIGTERM/SIGINT).
pub fn run(
    config: Config,
    shutdown: Option<Box<dyn ShutdownSignalWatch>>,
) -> Result<(), StartError> {
    let store = open_store(&config.store)?;
    let parts = build(&config, store, Arc::new(SystemClock))?;

    let admin_listener = bind(&config.admin_listen)?;
    let mut echo = None;
    let upstream = match &config.upstream {
        Upstream::Echo => {
            let l = bind("127.0.0.1:0")?;
            let addr = l
                .local_addr()
                .map_err(|e| StartError::Other(e.to_string()))?;
            echo = Some(l);
            UpstreamTarget {
                address: addr,
                tls: false,
                sni: String::new(),
                ca: None,
                connect_timeout: config.upstream_connect_timeout,
                read_timeout: config.upstream_read_timeout,
            }
        }
        // The SNI, and the name the certificate must carry, is the URL's host (an IP address
        // in the URL is checked against the certificate's IP addresses).
        Upstream::Http { address, host, tls } => UpstreamTarget {
            address: resolve(address)?,
            tls: *tls,
            sni: host.clone(),
            ca: config.upstream_ca.as_ref().map(|ca| ca.certs.clone()),
            connect_timeout: config.upstream_connect_timeout,
            read_timeout: config.upstream_read_timeout,
        },
    };

    let conf = ServerConf {
        threads: config.threads,
        // Kubernetes sends SIGTERM and then waits terminationGracePeriodSeconds. On SIGTERM
        // Pingora stops accepting at once and keeps serving what is in flight for the grace
        // period (then its runtimes are shut down, which cancels whatever is left): so the
        // grace period is `shutdown_grace`, not Pingora's default 300 s.
        grace_period_seconds: Some(config.shutdown_grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let tickets = Arc::new(Tickets::new(
        parts.engine.clone(),
        parts.store.clone(),
        config.ticket_default_hours,
        config.ticket_max_hours,
    ));
    let sessions = Arc::new(SessionTokens::new(
        parts.engine.clone(),
        parts.store.clone(),
        config.session_ttl,
        config.remember_me_ttl,
        config.session_algorithm,
    ));
    let admin = Arc::new(AdminState::new(
        parts.engine.clone(),
        parts.store.clone(),
        parts.metrics.clone(),
        config.limits.clone(),
        config.listen.clone(),
        config.admin_key.clone(),
        Lifecycles {
            tickets: tickets.clone(),
            sessions: sessions.clone(),
        },
    ));
    let identity = IdentityHeaders::new(&config.header_prefix)
        .map_err(|e| StartError::Other(e.to_string()))?;
    let endpoints = Endpoints::new(
        parts.engine.clone(),
        admin.clone(),
        identity.clone(),
        &config.auth_prefix,
        tickets,
        sessions,
        parts.engine.names().clone(),
    );
    let mut proxy = http_proxy_service(
        &server.configuration,
        Proxy::new(
            parts.engine.clone(),
            endpoints,
            identity,
            upstream.clone(),
            config.limits.xml_body_bytes,
            config.assertion.clone().map(Assertions::new),
            config.trusted_proxies.clone(),
        ),
    );
    let mut cert = None;
    match &config.tls {
        Some((cert_path, key_path)) => {
            let resolver = Arc::new(
                crate::tls::ReloadingCert::new(cert_path, key_path).map_err(StartError::Other)?,
            );
            let mut settings =
                pingora::listeners::tls::TlsSettings::intermediate(cert_path, key_path)
                    .map_err(|e| StartError::Other(e.to_string()))?;
            settings.set_cert_resolver(resolver.clone());
            proxy.add_tls_with_settings(&config.listen, None, settings);
            cert = Some(resolver);
        }
        None => proxy.add_tcp(&config.listen),
    }
    server.add_service(proxy);

    server.add_service(background_service(
        "admin",
        AdminService::new(admin, admin_listener, cert.filter(|_| config.admin_tls)),
    ));
    if let Some(l) = echo {
        server.add_service(background_service("echo upstream", EchoService::new(l)));
    }
    for issuer in parts.engine.sessions().externals() {
        server.add_service(background_service(
            &format!("JWKS of {}", issuer.config.issuer),
            JwksRefresher(issuer.clone()),
        ));
    }
    if let Some((subscriber, channel)) = parts.store.subscriber() {
        server.add_service(background_service(
            "invalidation listener",
            crate::bus::Listener::new(parts.engine.clone(), subscriber, channel),
        ));
    }
    server.add_service(background_service(
        "usage flusher",
        UsageFlusher(parts.engine.usage().clone()),
    ));

    banner(&config, &upstream);
    match shutdown {
        Some(signal) => server.run(RunArgs {
            shutdown_signal: signal,
        }),
        None => server.run(RunArgs::default()),
    }
    Ok(())
}

fn resolve(address: &str) -> Result<SocketAddr, StartError> {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| StartError::Upstream(address.to_owned()))
}

fn banner(config: &Config, upstream: &UpstreamTarget) {
    let store = match &config.store {
        StoreConfig::Embedded { path } => format!("embedded ({})", path.display()),
        StoreConfig::Redis { .. } => "redis".to_owned(),
    };
    let upstream = match config.upstream {
        Upstream::Echo => "echo (built in)".to_owned(),
        _ => format!(
            "http{}://{}{}",
            if upstream.tls { "s" } else { "" },
            upstream.address,
            match &config.upstream_ca {
                Some(ca) => format!(" (CAs of {})", ca.path),
                None => String::new(),
            }
        ),
    };
    println!(
        "tokengate {}: proxy http{}://{}  admin http{}://{}  store {}  upstream {}  routes {}",
        env!("CARGO_PKG_VERSION"),
        if config.tls.is_some() { "s" } else { "" },
        config.listen,
        if config.admin_tls { "s" } else { "" },
        config.admin_listen,
        store,
        upstream,
        config.routes.iter().count()
    );
}

/// Writes last uses behind the request path, once a second (so an admin sees them within 5 s).
struct UsageFlusher(Arc<Recorder>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for UsageFlusher {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        self.0
            .run(std::time::Duration::from_secs(1), shutdown)
            .await;
    }
}

/// Keeps another issuer's keys fresh.
struct JwksRefresher(Arc<ExternalIssuer>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for JwksRefresher {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}
