//! The config: TOML file shapes (`file`) in, one validated [`Config`] out. Every problem is
//! collected and reported together: unknown keys, bad values, routes that can never match.
//! Any key can be overridden from the environment as `TOKENGATE_<SECTION>__<KEY>`; the
//! environment is passed in, so tests never touch the process's own.

mod ca;
mod file;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use serde::de::DeserializeOwned;

use crate::jwt::{Algorithm, SigningKey};
use crate::policy::{AuthMode, KindSet, PathPattern, Route, Routes};
use crate::verify::external::IssuerConfig;

pub use ca::UpstreamCa;

/// Where requests go once admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The built-in upstream that answers with the request it received, as JSON.
    Echo,
    Http {
        /// `host:port`
        address: String,
        host: String,
        tls: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded {
        path: PathBuf,
    },
    Redis {
        url: String,
        /// `store.ca_file`, checked: the CAs a `rediss://` server must chain to.
        ca_file: Option<PathBuf>,
        /// `store.sentinel_password`: what the sentinels of a `redis+sentinel://` URL want.
        sentinel_password: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_for: Duration,
    pub max_entries: u64,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub tokens_per_user: usize,
    pub apps_per_token: usize,
    pub app_tokens_per_app: usize,
    pub failures_per_minute: u32,
    pub xml_body_bytes: usize,
}

#[derive(Clone)]
pub struct Config {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    /// `/_auth` by default: tokengate's own endpoints.
    pub auth_prefix: String,
    pub shutdown_grace: Duration,
    /// HTTPS on the proxy listener: certificate and key files (reloaded when they change).
    pub tls: Option<(String, String)>,
    /// HTTPS on the admin listener too (`server.admin_tls`).
    pub admin_tls: bool,
    /// Whose `X-Forwarded-For` names the client (`server.trusted_proxies`).
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// `server.log_level` (`RUST_LOG`, when set, wins).
    pub log_level: String,
    pub upstream: Upstream,
    /// `upstream.ca_file`, read: what an `https://` upstream's certificate must chain to
    /// (`None`: the system's roots).
    pub upstream_ca: Option<UpstreamCa>,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    /// The admin key from the file, `key_file` or the environment; `None`: made at first start.
    pub admin_key: Option<String>,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub ticket_default_hours: u32,
    pub ticket_max_hours: u32,
    pub ticket_cookie: String,
    pub session_ttl: Duration,
    pub remember_me_ttl: Duration,
    pub session_algorithm: Algorithm,
    pub session_issuer: String,
    pub session_audience: String,
    pub session_leeway: Duration,
    /// Configured signing keys, oldest first; empty: the store's own.
    pub session_keys: Vec<SigningKey>,
    /// Other issuers whose JWTs are accepted as sessions.
    pub issuers: Vec<IssuerConfig>,
    pub limits: Limits,
    /// Identity header prefix, lowercase (`x-auth-`).
    pub header_prefix: String,
    /// `X-Auth-Assertion` on, with this audience.
    pub assertion: Option<String>,
    pub routes: Routes,
}

/// The shape of a config, never its secrets (the admin key, signing keys, the store URL).
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("upstream", &self.upstream)
            .field("upstream_ca", &self.upstream_ca)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field("session_keys", &self.session_keys.len())
            .field("routes", &self.routes.iter().count())
            .finish_non_exhaustive()
    }
}

/// Every problem found in a config, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

const SECTIONS: [&str; 10] = [
    "server", "upstream", "admin", "store", "cache", "tickets", "sessions", "limits", "headers",
    "routes",
];

impl Config {
    /// Reads `path` and applies `env` overrides (pass `std::env::vars()` in `main`).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("can't read {}: {e}", path.display())]))?;
        Self::from_toml(&text, env)
    }

    /// The config of a TOML text, with `env` overrides; every problem at once.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("not valid TOML: {e}")]))?;
        apply_env(&mut table, env, &mut problems);
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(format!("unknown section [{key}]"));
            }
        }
        let server: file::Server = section(&table, "server", &mut problems);
        let upstream: file::Upstream = section(&table, "upstream", &mut problems);
        let admin: file::Admin = section(&table, "admin", &mut problems);
        let store: file::Store = section(&table, "store", &mut problems);
        let cache: file::Cache = section(&table, "cache", &mut problems);
        let tickets: file::Tickets = section(&table, "tickets", &mut problems);
        let sessions: file::Sessions = section(&table, "sessions", &mut problems);
        let limits: file::Limits = section(&table, "limits", &mut problems);
        let headers: file::Headers = section(&table, "headers", &mut problems);
        let routes = routes(&table, &mut problems);

        let mut duration = |key: &str, value: &str| match humantime::parse_duration(value) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!(
                    "{key} = {value:?}: not a duration like 30s, 5m, 48h, 14d ({e})"
                ));
                Duration::ZERO
            }
        };
        let shutdown_grace = duration("server.shutdown_grace", &server.shutdown_grace);
        let upstream_connect_timeout =
            duration("upstream.connect_timeout", &upstream.connect_timeout);
        let upstream_read_timeout = duration("upstream.read_timeout", &upstream.read_timeout);
        let cache_cfg = CacheConfig {
            ttl: duration("cache.ttl", &cache.ttl),
            negative_ttl: duration("cache.negative_ttl", &cache.negative_ttl),
            stale_for: duration("cache.stale_for", &cache.stale_for),
            max_entries: cache.max_entries,
        };
        let session_ttl = duration("sessions.ttl", &sessions.ttl);
        let session_leeway = duration("sessions.leeway", &sessions.leeway);
        let remember_me_ttl = duration("sessions.remember_me_ttl", &sessions.remember_me_ttl);

        for (key, addr) in [
            ("server.listen", &server.listen),
            ("server.admin_listen", &server.admin_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "{key} = {addr:?}: not an address like 127.0.0.1:8080"
                ));
            }
        }
        if !server.auth_prefix.starts_with('/') || server.auth_prefix.len() < 2 {
            problems.push(format!(
                "server.auth_prefix = {:?}: a path like \"/_auth\"",
                server.auth_prefix
            ));
        }
        // Pingora keeps a read body in a buffer of 64 KiB, from which it is sent upstream.
        if limits.xml_body_bytes > 65_536 {
            problems.push("limits.xml_body_bytes can be at most 65536".into());
        }
        let mut nets = Vec::new();
        for text in &server.trusted_proxies {
            match crate::client_addr::TrustedProxies::parse_net(text) {
                Ok(net) => nets.push(net),
                Err(e) => problems.push(format!("server.trusted_proxies: {e}")),
            }
        }
        let trusted_proxies = crate::client_addr::TrustedProxies::new(nets);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&server.log_level) {
            problems.push(format!(
                "server.log_level = {:?}: not a level like info or a directive like info,access=warn ({e})",
                server.log_level
            ));
        }
        if server.threads == 0 {
            problems.push("server.threads must be at least 1".into());
        }
        if headers.assertion_audience.is_empty() || headers.assertion_audience == sessions.audience
        {
            problems.push(
                "headers.assertion_audience must be set, and differ from sessions.audience".into(),
            );
        }
        let tls = match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => match crate::tls::ReloadingCert::new(cert, key) {
                Ok(_) => Some((cert.clone(), key.clone())),
                Err(e) => {
                    problems.push(format!("server.tls_cert / tls_key: {e}"));
                    None
                }
            },
            (None, None) => None,
            _ => {
                problems.push("server.tls_cert and server.tls_key go together".into());
                None
            }
        };
        if server.admin_tls && server.tls_cert.is_none() {
            problems.push(
                "server.admin_tls needs a certificate: set server.tls_cert and tls_key".into(),
            );
        }
        let upstream_cfg = parse_upstream(&upstream.url).map_err(|p| problems.push(p));
        let upstream_ca = upstream.ca_file.as_deref().and_then(|path| {
            if upstream_cfg
                .as_ref()
                .is_ok_and(|u| !matches!(u, Upstream::Http { tls: true, .. }))
            {
                problems.push(format!(
                    "upstream.ca_file is set, but upstream.url = {:?} is not an https:// URL",
                    upstream.url
                ));
            }
            UpstreamCa::load(path).map_err(|p| problems.push(p)).ok()
        });
        let upstream_cfg = upstream_cfg.unwrap_or(Upstream::Echo);
        let admin_key = match (&admin.key, &admin.key_file) {
            (Some(_), Some(_)) => {
                problems.push("admin.key and admin.key_file are both set: choose one".into());
                None
            }
            (Some(k), None) => Some(k.clone()),
            (None, Some(f)) => match std::fs::read_to_string(f) {
                Ok(k) => Some(k.trim().to_owned()),
                Err(e) => {
                    problems.push(format!("admin.key_file = {f:?}: can't read it: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        if admin_key.as_ref().is_some_and(|k| k.len() < 16) {
            problems.push("admin.key must be at least 16 characters".into());
        }
        let store_cfg = match store.backend.as_str() {
            "embedded" => StoreConfig::Embedded {
                path: PathBuf::from(&store.path),
            },
            "redis" => {
                let ca_file = store.ca_file.as_deref().and_then(|path| {
                    if store
                        .url
                        .as_deref()
                        .is_some_and(|u| !u.starts_with("rediss://"))
                    {
                        problems.push(
                            "store.ca_file is set, but store.url is not a rediss:// URL".into(),
                        );
                    }
                    UpstreamCa::load_for("store.ca_file", path)
                        .map(|_| PathBuf::from(path))
                        .map_err(|p| problems.push(p))
                        .ok()
                });
                let sentinel_password = store.sentinel_password.clone();
                if sentinel_password.is_some()
                    && store
                        .url
                        .as_deref()
                        .is_some_and(|u| !u.starts_with("redis+sentinel://"))
                {
                    problems.push(
                        "store.sentinel_password is set, but store.url is not a \
                         redis+sentinel:// URL"
                            .into(),
                    );
                }
                match &store.url {
                    Some(url) => {
                        // One server, a cluster or sentinels; the reason never repeats the
                        // URL, which may hold a password.
                        if let Err(why) = crate::store::redis::check_url(url) {
                            problems.push(format!("store.url: {why}"));
                        }
                        StoreConfig::Redis {
                            url: url.clone(),
                            ca_file,
                            sentinel_password,
                        }
                    }
                    None => {
                        problems.push("store.backend = \"redis\" needs store.url".into());
                        StoreConfig::Redis {
                            url: String::new(),
                            ca_file,
                            sentinel_password,
                        }
                    }
                }
            }
            other => {
                problems.push(format!(
                    "store.backend = {other:?}: expected \"embedded\" or \"redis\""
                ));
                StoreConfig::Embedded {
                    path: PathBuf::from(&store.path),
                }
            }
        };
        if cache.max_entries == 0 {
            problems.push("cache.max_entries must be at least 1".into());
        }
        if tickets.max_hours == 0 || tickets.default_hours == 0 {
            problems.push("tickets.default_hours and max_hours must be at least 1".into());
        }
        if tickets.default_hours > tickets.max_hours {
            problems.push("tickets.default_hours is above tickets.max_hours".into());
        }
        if session_leeway > Duration::from_secs(10) {
            problems.push("sessions.leeway: at most 10s for tokengate's own tokens".into());
        }
        let session_algorithm = sessions.algorithm.parse::<Algorithm>().unwrap_or_else(|_| {
            problems.push(format!(
                "sessions.algorithm = {:?}: expected EdDSA, ES256, RS256 or HS256",
                sessions.algorithm
            ));
            Algorithm::EdDSA
        });
        if sessions.issuer.is_empty() || sessions.audience.is_empty() {
            problems.push("sessions.issuer and sessions.audience must not be empty".into());
        }
        let mut session_keys = Vec::new();
        let mut sources: Vec<(String, Option<String>)> = sessions
            .key_files
            .iter()
            .map(|f| {
                (
                    format!("sessions.key_files: {f}"),
                    std::fs::read_to_string(f).ok(),
                )
            })
            .collect();
        if let Some(k) = &sessions.key {
            sources.push(("sessions.key".into(), Some(k.clone())));
        }
        for (what, text) in sources {
            let Some(text) = text else {
                problems.push(format!("{what}: can't read it"));
                continue;
            };
            let key = match session_algorithm {
                Algorithm::HS256 => SigningKey::from_secret(text.trim().as_bytes()),
                alg => SigningKey::from_pem(alg, &text),
            };
            match key {
                Ok(k) => session_keys.push(k),
                Err(e) => problems.push(format!("{what}: not a {session_algorithm} key: {e}")),
            }
        }
        let mut issuers = Vec::new();
        for (i, issuer) in sessions.issuers.iter().enumerate() {
            let at = format!("sessions.issuers[{i}]");
            if !issuer.jwks_url.starts_with("http://") && !issuer.jwks_url.starts_with("https://") {
                problems.push(format!("{at}.jwks_url must be an http(s) URL"));
            }
            if issuer.issuer.is_empty() || issuer.user_claim.is_empty() {
                problems.push(format!("{at}: issuer and user_claim must not be empty"));
            }
            if issuer.issuer == sessions.issuer {
                problems.push(format!("{at}.issuer is tokengate's own (sessions.issuer)"));
            }
            let audience = issuer.audience.clone().unwrap_or_default();
            if audience.is_empty() {
                problems.push(format!(
                    "{at}.audience is required: a token meant for another audience must not pass"
                ));
            }
            let leeway = humantime::parse_duration(&issuer.leeway).unwrap_or_else(|_| {
                problems.push(format!("{at}.leeway = {:?}: not a duration", issuer.leeway));
                Duration::ZERO
            });
            issuers.push(IssuerConfig {
                issuer: issuer.issuer.clone(),
                jwks_url: issuer.jwks_url.clone(),
                audience,
                user_claim: issuer.user_claim.clone(),
                leeway_secs: leeway.as_secs(),
            });
        }
        for (key, v) in [
            ("limits.tokens_per_user", limits.tokens_per_user),
            ("limits.apps_per_token", limits.apps_per_token),
            ("limits.app_tokens_per_app", limits.app_tokens_per_app),
            ("limits.xml_body_bytes", limits.xml_body_bytes),
        ] {
            if v == 0 {
                problems.push(format!("{key} must be at least 1"));
            }
        }
        let prefix = headers.prefix.to_ascii_lowercase();
        if prefix.is_empty()
            || HeaderName::from_bytes(format!("{prefix}user-id").as_bytes()).is_err()
        {
            problems.push(format!(
                "headers.prefix = {:?}: not a header name prefix",
                headers.prefix
            ));
        }
        problems.extend(routes.problems());
        if routes.iter().next().is_none() {
            problems.push("no [[routes]]: every request would be refused with no_route".into());
        }

        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        Ok(Config {
            listen: server.listen,
            admin_listen: server.admin_listen,
            threads: server.threads,
            auth_prefix: server.auth_prefix,
            shutdown_grace,
            tls,
            admin_tls: server.admin_tls,
            trusted_proxies,
            log_level: server.log_level,
            upstream: upstream_cfg,
            upstream_ca,
            upstream_connect_timeout,
            upstream_read_timeout,
            admin_key,
            store: store_cfg,
            cache: cache_cfg,
            ticket_default_hours: tickets.default_hours,
            ticket_max_hours: tickets.max_hours,
            ticket_cookie: tickets.cookie_name,
            session_ttl,
            remember_me_ttl,
            session_algorithm,
            session_issuer: sessions.issuer,
            session_audience: sessions.audience,
            session_leeway,
            session_keys,
            issuers,
            limits: Limits {
                tokens_per_user: limits.tokens_per_user,
                apps_per_token: limits.apps_per_token,
                app_tokens_per_app: limits.app_tokens_per_app,
                failures_per_minute: limits.failures_per_minute,
                xml_body_bytes: limits.xml_body_bytes,
            },
            header_prefix: prefix,
            assertion: headers.assertion.then_some(headers.assertion_audience),
            routes,
        })
    }
}

/// `TOKENGATE_<SECTION>__<KEY>=value` sets `[section] key`; `TOKENGATE_ADMIN_KEY` sets the
/// admin key. A value that reads as TOML (a number, a boolean, an array) is taken as such.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("TOKENGATE_") else {
            continue;
        };
        let (section, key) = match rest.split_once("__") {
            Some((s, k)) => (s.to_ascii_lowercase(), k.to_ascii_lowercase()),
            None if rest == "ADMIN_KEY" => ("admin".to_owned(), "key".to_owned()),
            None => continue,
        };
        if section == "routes" || !SECTIONS.contains(&section.as_str()) {
            problems.push(format!("{name}: no section [{section}] to set"));
            continue;
        }
        // Secrets, addresses and names stay strings even when they look like numbers.
        const STRINGS: [&str; 15] = [
            "key",
            "key_file",
            "ca_file",
            "sentinel_password",
            "url",
            "path",
            "listen",
            "admin_listen",
            "backend",
            "issuer",
            "audience",
            "algorithm",
            "prefix",
            "auth_prefix",
            "log_level",
        ];
        let parsed = if STRINGS.contains(&key.as_str()) {
            toml::Value::String(value)
        } else if key == "trusted_proxies" && !value.trim_start().starts_with('[') {
            // A list of addresses, also as `10.0.0.0/8,192.168.0.1`.
            toml::Value::Array(
                value
                    .split(',')
                    .map(|v| toml::Value::String(v.trim().to_owned()))
                    .filter(|v| v.as_str().is_some_and(|v| !v.is_empty()))
                    .collect(),
            )
        } else {
            format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value))
        };
        match table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => problems.push(format!("{name}: [{section}] is not a table")),
        }
    }
}

/// One section, defaulted when absent; unknown keys and type errors become problems.
fn section<T: DeserializeOwned + Default>(
    table: &toml::Table,
    name: &str,
    problems: &mut Vec<String>,
) -> T {
    match table.get(name) {
        None => T::default(),
        Some(value) => parse_value(value.clone(), name, problems).unwrap_or_default(),
    }
}

fn parse_value<T: DeserializeOwned>(
    value: toml::Value,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    for key in unknown {
        problems.push(format!("unknown key {at}.{key}"));
    }
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(format!("[{at}]: {}", e.to_string().trim()));
            None
        }
    }
}

fn routes(table: &toml::Table, problems: &mut Vec<String>) -> Routes {
    let Some(value) = table.get("routes") else {
        return Routes::default();
    };
    let Some(items) = value.as_array() else {
        problems.push("routes must be an array of tables: [[routes]]".into());
        return Routes::default();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("routes[{i}]");
        let Some(raw) = parse_value::<file::Route>(item.clone(), &at, problems) else {
            continue;
        };
        if let Some(route) = compile_route(raw, &at, problems) {
            out.push(route);
        }
    }
    Routes::new(out)
}

fn compile_route(raw: file::Route, at: &str, problems: &mut Vec<String>) -> Option<Route> {
    let before = problems.len();
    let pattern = PathPattern::parse(&raw.path)
        .map_err(|p| problems.push(format!("{at}: {p}")))
        .ok();
    let methods = raw.methods.map(|ms| {
        ms.iter()
            .filter_map(
                |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        problems.push(format!("{at}.methods: {m:?} is not an HTTP method"));
                        None
                    }
                },
            )
            .collect::<Vec<_>>()
    });
    if raw.actions.as_ref().is_some_and(Vec::is_empty) {
        problems.push(format!(
            "{at}.actions is empty, so the route can never match"
        ));
    }
    if methods.as_ref().is_some_and(Vec::is_empty) {
        problems.push(format!(
            "{at}.methods is empty, so the route can never match"
        ));
    }
    let auth = match raw.auth.as_str() {
        "required" => AuthMode::Required,
        "optional" => AuthMode::Optional,
        "none" => AuthMode::None,
        other => {
            problems.push(format!(
                "{at}.auth = {other:?}: expected \"required\", \"optional\" or \"none\""
            ));
            AuthMode::Required
        }
    };
    let allow = match raw.allow {
        None => KindSet::ALL,
        Some(kinds) => {
            let mut set = KindSet {
                user_token: false,
                ticket: false,
                session: false,
            };
            for kind in kinds {
                match kind.as_str() {
                    "user_token" => set.user_token = true,
                    "ticket" => set.ticket = true,
                    "session" => set.session = true,
                    other => problems.push(format!(
                        "{at}.allow: {other:?} is not one of \"user_token\", \"ticket\", \"session\""
                    )),
                }
            }
            set
        }
    };
    let app_header = raw.app_header.and_then(|h| {
        HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| problems.push(format!("{at}.app_header = {h:?}: not a header name")))
            .ok()
    });
    let sources = usize::from(pattern.as_ref().is_some_and(PathPattern::has_app))
        + usize::from(raw.app.is_some())
        + usize::from(app_header.is_some());
    if sources > 1 {
        problems.push(format!(
            "{at}: name the app one way only: {{app}} in the path, app, or app_header"
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(Route {
        path: raw.path,
        pattern: pattern?,
        methods,
        actions: raw.actions,
        app: raw.app,
        app_header,
        auth,
        allow,
        ui: raw.ui,
        user_types: raw.user_types,
        departments: raw.departments,
        forward_credentials: raw.forward_credentials,
    })
}

fn parse_upstream(url: &str) -> Result<Upstream, String> {
    if url == "echo" {
        return Ok(Upstream::Echo);
    }
    let bad = |why: &str| format!("upstream.url = {url:?}: {why}");
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("expected \"echo\" or an http:// or https:// URL")),
    };
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(bad(
            "a path on the upstream is not supported; requests keep their own",
        ));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Upstream::Http {
        address: format!("{host}:{port}"),
        // The name TLS checks the certificate for: an IPv6 address without its brackets.
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    const MINIMAL: &str = "[[routes]]\npath = \"/db/{app}\"\n";

    #[test]
    fn defaults_need_nothing_else() {
        let c = Config::from_toml(MINIMAL, no_env()).unwrap();
        assert_eq!(c.upstream, Upstream::Echo);
        assert_eq!(
            c.store,
            StoreConfig::Embedded {
                path: "data/tokengate.db".into()
            }
        );
        assert_eq!(c.cache.ttl, Duration::from_secs(30));
        assert_eq!(c.remember_me_ttl, Duration::from_secs(14 * 86_400));
        assert_eq!(c.header_prefix, "x-auth-");
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let text = r#"
            [server]
            listen = "nowhere"
            colour = "blue"
            [cache]
            ttl = "soon"
            [store]
            backend = "postgres"
            [wat]
            [[routes]]
            path = "/db"
            [[routes]]
            path = "/db/{app}"
            auth = "maybe"
        "#;
        let errs = Config::from_toml(text, no_env()).unwrap_err().0;
        let all = errs.join("\n");
        for needle in [
            "server.listen",
            "unknown key server.colour",
            "cache.ttl",
            "store.backend",
            "unknown section [wat]",
            "routes[1].auth",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }

    #[test]
    fn shadowed_route_is_a_problem() {
        let text = "[[routes]]\npath = \"/\"\n[[routes]]\npath = \"/db/{app}\"\n";
        let errs = Config::from_toml(text, no_env()).unwrap_err().0;
        assert!(
            errs.iter().any(|e| e.contains("can never match")),
            "{errs:?}"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("TOKENGATE_STORE__BACKEND".to_owned(), "redis".to_owned()),
            (
                "TOKENGATE_STORE__URL".to_owned(),
                "redis://127.0.0.1:7000/0".to_owned(),
            ),
            ("TOKENGATE_SERVER__THREADS".to_owned(), "4".to_owned()),
            ("TOKENGATE_ADMIN_KEY".to_owned(), "k".repeat(20)),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::from_toml(MINIMAL, env).unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Redis {
                url: "redis://127.0.0.1:7000/0".into(),
                ca_file: None,
                sentinel_password: None,
            }
        );
        assert_eq!(c.threads, 4);
        assert_eq!(c.admin_key.as_deref(), Some("kkkkkkkkkkkkkkkkkkkk"));
    }

    #[test]
    fn log_level_and_admin_tls_are_checked() {
        assert_eq!(
            Config::from_toml(MINIMAL, no_env()).unwrap().log_level,
            "info"
        );
        let env = vec![(
            "TOKENGATE_SERVER__LOG_LEVEL".to_owned(),
            "warn,access=info".to_owned(),
        )];
        assert_eq!(
            Config::from_toml(MINIMAL, env).unwrap().log_level,
            "warn,access=info"
        );
        let text = format!("[server]\nadmin_tls = true\n{MINIMAL}");
        let problems = Config::from_toml(&text, no_env())
            .err()
            .unwrap()
            .0
            .join("\n");
        assert!(problems.contains("server.admin_tls needs"), "{problems}");
        let text = format!("[server]\nlog_level = \"loud=[\"\n{MINIMAL}");
        let problems = Config::from_toml(&text, no_env())
            .err()
            .unwrap()
            .0
            .join("\n");
        assert!(problems.contains("server.log_level"), "{problems}");
    }

    #[test]
    fn store_urls() {
        let problems = |url: &str| {
            let text = format!("[store]\nbackend = \"redis\"\nurl = {url:?}\n{MINIMAL}");
            Config::from_toml(&text, no_env())
                .err()
                .map(|e| e.0.join("\n"))
        };
        for good in [
            "redis://127.0.0.1:6379/0",
            "redis://:secret@redis.internal:6379/2",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
            "redis+cluster://user:secret@10.0.0.1:7000/",
            "redis+cluster://redis-0.redis:6379",
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
            "redis+sentinel://:secret@sentinel:26379/mymaster/3",
            "redis+sentinel://sentinel/mymaster/",
        ] {
            assert_eq!(problems(good), None, "{good}");
        }
        for (bad, why) in [
            ("http://127.0.0.1:6379", "expected redis://"),
            ("redis+cluster://", "host:port"),
            ("redis+cluster://a:7000,,b:7000", "host:port"),
            ("redis+cluster://a:7000,b:7000/2", "only database 0"),
            (
                "redis+cluster://a:7000?read_from_replicas=1",
                "query parameters",
            ),
            ("redis+cluster://a:notaport", "not host:port"),
            ("redis+sentinel://s1:26379,s2:26379", "master-name"),
            ("redis+sentinel://s1:26379/", "master-name"),
            ("redis+sentinel://s1:26379/mymaster/x", "not a number"),
            ("redis+sentinel://s1:26379/mymaster/1/2", "master-name"),
            ("redis://127.0.0.1:6379/x", "not a Redis URL"),
        ] {
            let all = problems(bad).unwrap_or_default();
            assert!(
                all.contains("store.url: ") && all.contains(why),
                "{bad}: {all}"
            );
        }
        // A password in a bad URL is never repeated.
        let all = problems("redis+cluster://:hunter22@a:7000/5").unwrap_or_default();
        assert!(
            all.contains("store.url") && !all.contains("hunter22"),
            "{all}"
        );
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:3000").unwrap(),
            Upstream::Http {
                address: "127.0.0.1:3000".into(),
                host: "127.0.0.1".into(),
                tls: false
            }
        );
        assert_eq!(
            parse_upstream("https://[::1]:8443").unwrap(),
            Upstream::Http {
                address: "[::1]:8443".into(),
                host: "::1".into(),
                tls: true
            }
        );
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://x/base").is_err());
    }

    #[test]
    fn store_ca_file_and_sentinel_password_fit_their_url() {
        let text = format!(
            "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6380/0\"\nca_file = \"/nonexistent/ca.pem\"\n{MINIMAL}"
        );
        let all = Config::from_toml(&text, no_env()).unwrap_err().0.join("\n");
        for needle in [
            "store.ca_file is set, but store.url is not a rediss:// URL",
            "store.ca_file = \"/nonexistent/ca.pem\": can't read it",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
        // A sentinel password is for sentinels only.
        let text = format!(
            "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6380/0\"\nsentinel_password = \"x\"\n{MINIMAL}"
        );
        let all = Config::from_toml(&text, no_env()).unwrap_err().0.join("\n");
        assert!(
            all.contains(
                "store.sentinel_password is set, but store.url is not a redis+sentinel:// URL"
            ),
            "{all}"
        );
        // rediss:// alone is a URL like another (the system's CAs verify it).
        let text =
            format!("[store]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:6380/0\"\n{MINIMAL}");
        assert!(Config::from_toml(&text, no_env()).is_ok());
    }

    #[test]
    fn upstream_ca_file_is_checked_with_everything_else() {
        let text = format!(
            "[server]\nthreads = 0\n[upstream]\nurl = \"http://127.0.0.1:3000\"\nca_file = \"/nonexistent/ca.pem\"\n{MINIMAL}"
        );
        let all = Config::from_toml(&text, no_env()).unwrap_err().0.join("\n");
        for needle in [
            "server.threads",
            "upstream.ca_file is set, but upstream.url = \"http://127.0.0.1:3000\" is not an https:// URL",
            "upstream.ca_file = \"/nonexistent/ca.pem\": can't read it",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
        // From the environment too, as a path even when it looks like a number.
        let env = vec![
            (
                "TOKENGATE_UPSTREAM__URL".to_owned(),
                "https://upstream.internal".to_owned(),
            ),
            ("TOKENGATE_UPSTREAM__CA_FILE".to_owned(), "404".to_owned()),
        ];
        let all = Config::from_toml(MINIMAL, env).unwrap_err().0.join("\n");
        assert!(
            all.starts_with("upstream.ca_file = \"404\": can't read it")
                && all.lines().count() == 1,
            "{all}"
        );
    }
}
