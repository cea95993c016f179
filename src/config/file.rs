//! The config file's shapes, as written (PRODUCT.md §10). Nothing here is checked beyond its
//! type; `config::Config::from_toml` turns these into the validated config, or lists every
//! problem at once.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Server {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    /// Where tokengate's own endpoints live on the proxy listener.
    pub auth_prefix: String,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// The admin listener serves HTTPS too, with the same certificate.
    pub admin_tls: bool,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_grace: String,
    /// Peers whose `X-Forwarded-For` is believed (addresses or networks).
    pub trusted_proxies: Vec<String>,
    /// What is logged: a level (`info`) or tracing directives (`info,access=warn`).
    pub log_level: String,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9901".into(),
            threads: 2,
            auth_prefix: "/_auth".into(),
            tls_cert: None,
            tls_key: None,
            admin_tls: false,
            shutdown_grace: "5s".into(),
            trusted_proxies: Vec::new(),
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Upstream {
    pub url: String,
    pub connect_timeout: String,
    pub read_timeout: String,
    /// PEM file of the CAs an `https://` upstream's certificate is verified against, instead
    /// of the system's.
    pub ca_file: Option<String>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            url: "echo".into(),
            connect_timeout: "2s".into(),
            read_timeout: "60s".into(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Admin {
    pub key: Option<String>,
    /// A file holding the admin key (a mounted Kubernetes Secret).
    pub key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Store {
    pub backend: String,
    pub path: String,
    pub url: Option<String>,
    /// PEM file of the CAs a `rediss://` server's certificate is verified against, instead of
    /// the system's.
    pub ca_file: Option<String>,
    /// The sentinels' own password (`requirepass` in sentinel.conf), for `redis+sentinel://`.
    pub sentinel_password: Option<String>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            path: "data/tokengate.db".into(),
            url: None,
            ca_file: None,
            sentinel_password: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Cache {
    pub ttl: String,
    pub negative_ttl: String,
    pub stale_for: String,
    pub max_entries: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            ttl: "30s".into(),
            negative_ttl: "5s".into(),
            stale_for: "5m".into(),
            max_entries: 1_000_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Tickets {
    pub default_hours: u32,
    pub max_hours: u32,
    pub cookie_name: String,
}

impl Default for Tickets {
    fn default() -> Self {
        Self {
            default_hours: 12,
            max_hours: 4380,
            cookie_name: "TICKET".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Sessions {
    pub ttl: String,
    pub remember_me_ttl: String,
    /// EdDSA (default), ES256, RS256 or HS256: for keys made by the store, and for `key_files`.
    pub algorithm: String,
    /// `iss` and `aud` of tokengate's own session tokens.
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed on tokengate's own tokens.
    pub leeway: String,
    /// Signing keys (PKCS#8 PEM; for HS256 the secret), oldest first: the last one signs, the
    /// others still verify. None at all: the store makes one and keeps it.
    pub key_files: Vec<String>,
    /// One more key, given inline (e.g. TOKENGATE_SESSIONS__KEY); it signs.
    pub key: Option<String>,
    pub issuers: Vec<Issuer>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            ttl: "48h".into(),
            remember_me_ttl: "14d".into(),
            algorithm: "EdDSA".into(),
            issuer: "tokengate".into(),
            audience: "tokengate".into(),
            leeway: "5s".into(),
            key_files: Vec::new(),
            key: None,
            issuers: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: Option<String>,
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Clock skew allowed on this issuer's tokens.
    #[serde(default = "default_issuer_leeway")]
    pub leeway: String,
}

fn default_issuer_leeway() -> String {
    "30s".into()
}

fn default_user_claim() -> String {
    "sub".into()
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub tokens_per_user: usize,
    pub apps_per_token: usize,
    pub app_tokens_per_app: usize,
    pub failures_per_minute: u32,
    pub xml_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tokens_per_user: 100,
            apps_per_token: 100,
            app_tokens_per_app: 500,
            failures_per_minute: 60,
            xml_body_bytes: 65_536,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Headers {
    pub prefix: String,
    pub assertion: bool,
    /// The `aud` of `X-Auth-Assertion`: its own, so an assertion never passes as a session.
    pub assertion_audience: String,
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            prefix: "X-Auth-".into(),
            assertion: false,
            assertion_audience: "tokengate-assertion".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Route {
    pub path: String,
    pub methods: Option<Vec<String>>,
    /// Quickbase actions (`?a=API_…` or the `QUICKBASE-ACTION` header) the route is for.
    pub actions: Option<Vec<String>>,
    pub app: Option<String>,
    pub app_header: Option<String>,
    #[serde(default = "default_auth")]
    pub auth: String,
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub ui: bool,
    pub user_types: Option<Vec<String>>,
    pub departments: Option<Vec<String>>,
    #[serde(default)]
    pub forward_credentials: bool,
}

fn default_auth() -> String {
    "required".into()
}
