//! The decision engine: a request's parts in, an admission (with the identity) or a denial out.
//! It knows nothing of Pingora: the proxy is one user of it; a forward-auth endpoint or a tower
//! layer are others. Every decision is counted here, so each shape reports the same metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method};

use crate::cache::{Cache, Invalidation};
use crate::clock::Clock;
use crate::credential::format::{self, TokenKind};
use crate::credential::xml::XmlBody;
use crate::credential::{self, CredentialKind, CredentialNames, Found, Slot, Sources};
use crate::error::AuthError;
use crate::limiter::FailureLimiter;
use crate::metrics::Metrics;
use crate::model::{Identity, Verified};
use crate::policy::{AppTarget, AuthMode, Routes};
use crate::usage::{Recorder, UsageKind};
use crate::verify;
use crate::verify::session::SessionVerifier;

/// The parts of a request a decision looks at, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The XML body's elements, when the body was read (the proxy reads XML bodies).
    pub xml: Option<&'a XmlBody>,
    /// The client's address, for `limits.failures_per_minute`.
    pub client: Option<IpAddr>,
}

/// A request that may pass.
#[derive(Debug)]
pub struct Admission {
    /// Index of the route that matched.
    pub route: usize,
    /// Who the request is; `None` on `auth = "none"` routes and on `optional` ones without a
    /// credential.
    pub identity: Option<Identity>,
    /// Where credentials were found: removed before forwarding unless `forward_credentials`.
    pub credentials: Sources,
    pub forward_credentials: bool,
}

/// A request that may not pass, and the kind of credential it tried (for the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    pub error: AuthError,
    pub method: Option<CredentialKind>,
}

impl From<AuthError> for Denial {
    fn from(error: AuthError) -> Self {
        Self {
            error,
            method: None,
        }
    }
}

/// What an engine is made of.
pub struct EngineParts {
    pub routes: Routes,
    pub names: CredentialNames,
    pub cache: Cache,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub failures: FailureLimiter,
    pub usage: Arc<Recorder>,
    pub sessions: SessionVerifier,
}

pub struct Engine {
    routes: Routes,
    names: CredentialNames,
    cache: Cache,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    failures: FailureLimiter,
    usage: Arc<Recorder>,
    sessions: SessionVerifier,
    /// This process among the replicas: its own announcements come back and are skipped.
    replica: String,
}

impl Engine {
    pub fn new(parts: EngineParts) -> Self {
        let EngineParts {
            routes,
            names,
            cache,
            clock,
            metrics,
            failures,
            usage,
            sessions,
        } = parts;
        Self {
            routes,
            names,
            cache,
            clock,
            metrics,
            failures,
            usage,
            sessions,
            replica: replica_id(),
        }
    }

    /// tokengate's own session tokens: keys and verification.
    pub fn sessions(&self) -> &SessionVerifier {
        &self.sessions
    }

    /// Last-use records, written behind.
    pub fn usage(&self) -> &Arc<Recorder> {
        &self.usage
    }

    /// Failed credentials per client address.
    pub fn failures(&self) -> &FailureLimiter {
        &self.failures
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn names(&self) -> &CredentialNames {
        &self.names
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies a change to this process's cache and announces it to every other replica
    /// (returning once it is announced).
    pub async fn invalidate(&self, what: &Invalidation) {
        self.cache.invalidate(what, false).await;
        let message = crate::bus::encode(&self.replica, what);
        if let Err(e) = self.cache.store().publish(&message).await {
            tracing::warn!(error = %e, "couldn't announce a change to the other replicas; they see it within cache.ttl");
        }
    }

    /// Applies another replica's announcement (a message of `crate::bus`).
    pub async fn apply_remote(&self, message: &str) {
        match crate::bus::decode(message) {
            Some((from, _)) if from == self.replica => {}
            Some((_, what)) => self.cache.invalidate(&what, true).await,
            None => tracing::warn!("an invalidation message of unknown form"),
        }
    }

    /// Decides one request, and counts the decision.
    pub async fn decide(&self, req: RequestParts<'_>) -> Result<Admission, Denial> {
        let started = Instant::now();
        // Past the limit, a client's failed credentials are answered 429. Valid ones still
        // pass: behind a shared address, one guesser must not lock everyone out.
        let out = match self.decide_inner(req).await {
            Err(d) if d.error.is_credential_failure() && self.failures.record(req.client) => {
                Err(Denial {
                    error: AuthError::TooManyFailures,
                    method: d.method,
                })
            }
            out => out,
        };
        self.metrics
            .auth_duration
            .observe(started.elapsed().as_secs_f64());
        match &out {
            Ok(a) => self
                .metrics
                .decision(a.identity.as_ref().map(Identity::method), Ok(())),
            Err(d) => self.metrics.decision(d.method, Err(d.error)),
        }
        out
    }

    async fn decide_inner(&self, req: RequestParts<'_>) -> Result<Admission, Denial> {
        if !crate::policy::is_plain_path(req.path)
            || !crate::endpoints::action_is_unambiguous(req.query, req.headers)
        {
            return Err(AuthError::BadRequest.into());
        }
        let (index, route, path_app) = self
            .routes
            .find(
                req.method,
                req.path,
                crate::endpoints::qb_action(req.query, req.headers).as_deref(),
            )
            .ok_or(AuthError::NoRoute)?;
        let admit = |identity, credentials| Admission {
            route: index,
            identity,
            credentials,
            forward_credentials: route.forward_credentials,
        };
        if route.auth == AuthMode::None {
            // Nothing is checked, but no credential goes upstream either.
            let sources = match self.credentials(&req) {
                Ok(found) => found.sources,
                Err(_) => Sources {
                    authorization: true,
                    query: true,
                    cookie: true,
                    app_token_header: true,
                    xml_body: true,
                },
            };
            return Ok(admit(None, sources));
        }
        let found = self.credentials(&req)?;
        let Some((kind, presented)) = found.primary() else {
            return match route.auth {
                AuthMode::Optional => Ok(admit(None, found.sources)),
                _ => Err(AuthError::MissingCredentials.into()),
            };
        };
        let deny = |error| Denial {
            error,
            method: Some(kind),
        };
        route.admits_kind(kind).map_err(deny)?;
        let app = match route.app_target(path_app, req.headers) {
            AppTarget::App(app) => Some(app),
            AppTarget::Unscoped => None,
            AppTarget::Unnamed => return Err(deny(AuthError::AppNotAllowed)),
            AppTarget::Ambiguous => return Err(deny(AuthError::BadRequest)),
        };
        if self.held_off(req.client, kind, presented).await {
            return Err(deny(AuthError::TooManyFailures));
        }
        let identity = self.verify(kind, presented, app).await.map_err(deny)?;
        // A ticket needs the app's app token where the app requires one (§1); a user token
        // never does, and neither does a session.
        if kind == CredentialKind::Ticket
            && let Some(app) = &identity.app
        {
            verify::app_token::check(&self.cache, found.app_token.as_deref(), app)
                .await
                .map_err(deny)?;
        }
        route.admits(&identity).map_err(deny)?;
        self.touch(&identity);
        Ok(admit(Some(identity), found.sources))
    }

    /// A client past its failure limit may have `limits.failures_per_minute` more uncached
    /// user tokens or tickets looked up in its minute; past that it is answered from the cache
    /// alone (429 for what the cache doesn't hold), so a flood of made-up tokens costs the store
    /// at most twice that many reads per client a minute. What the cache holds still passes (a
    /// shared address isn't locked out by one guesser); a session's signature is checked before
    /// its record is read, so it needs no guard.
    ///
    /// The cache is asked first: a fresh entry (most requests) never touches the limiter's
    /// table, whose lookups do count.
    async fn held_off(
        &self,
        client: Option<IpAddr>,
        kind: CredentialKind,
        presented: &str,
    ) -> bool {
        // The usual case, nobody blocked, costs one atomic load; only then is the cache
        // asked, and the limiter's own table only for credentials the cache doesn't hold.
        if !self.failures.anyone_blocked() {
            return false;
        }
        let held = match kind {
            CredentialKind::UserToken => match format::parse(TokenKind::UserToken, presented) {
                Some((id, _)) => self.cache.holds_user_token(id).await,
                None => false,
            },
            CredentialKind::Ticket => match format::parse(TokenKind::Ticket, presented) {
                Some((id, _)) => self.cache.holds_ticket(id).await,
                None => false,
            },
            CredentialKind::Session => true,
        };
        !held && self.failures.is_blocked(client) && !self.failures.spend_lookup(client)
    }

    /// Every credential on the request (headers, query, cookie, XML body).
    fn credentials<'a>(&self, req: &RequestParts<'a>) -> Result<Found<'a>, Denial> {
        let mut found = credential::extract(req.headers, req.query, &self.names)
            .map_err(|_| AuthError::AmbiguousCredentials)?;
        if let Some(xml) = req.xml {
            for (name, slot) in [
                ("usertoken", Slot::UserToken),
                ("ticket", Slot::Ticket),
                ("apptoken", Slot::AppToken),
            ] {
                for value in xml.get(name) {
                    found
                        .offer(slot, value.into())
                        .map_err(|_| AuthError::AmbiguousCredentials)?;
                    found.sources.xml_body = true;
                }
            }
        }
        Ok(found)
    }

    async fn verify(
        &self,
        kind: CredentialKind,
        presented: &str,
        app: Option<&str>,
    ) -> Result<Identity, AuthError> {
        match kind {
            CredentialKind::UserToken => {
                verify::user_token::verify(&self.cache, &*self.clock, presented, app).await
            }
            CredentialKind::Ticket => {
                verify::ticket::verify(&self.cache, &*self.clock, presented, app).await
            }
            CredentialKind::Session => {
                self.sessions
                    .verify(&self.cache, &*self.clock, presented, app)
                    .await
            }
        }
    }

    /// Notes the use of a verified credential (written behind).
    fn touch(&self, identity: &Identity) {
        let now = self.clock.now();
        match &identity.credential {
            Verified::UserToken(t) => self.usage.touch(&t.used, UsageKind::UserToken, &t.id, now),
            Verified::Ticket(t) => self.usage.touch(&t.used, UsageKind::Ticket, &t.id, now),
            Verified::Session(s) => self.usage.touch(&s.used, UsageKind::Session, &s.id, now),
        }
    }

    /// Who the request's credential stands for, with no route and no app: `/_auth/whoami`.
    pub async fn identify(&self, req: RequestParts<'_>) -> Result<Identity, Denial> {
        let found = self.credentials(&req)?;
        let (kind, presented) = found.primary().ok_or(AuthError::MissingCredentials)?;
        if self.held_off(req.client, kind, presented).await {
            return Err(Denial {
                error: AuthError::TooManyFailures,
                method: Some(kind),
            });
        }
        match self.verify(kind, presented, None).await {
            Ok(identity) => {
                self.touch(&identity);
                Ok(identity)
            }
            Err(error) => {
                let error = if error.is_credential_failure() && self.failures.record(req.client) {
                    AuthError::TooManyFailures
                } else {
                    error
                };
                Err(Denial {
                    error,
                    method: Some(kind),
                })
            }
        }
    }
}

/// 64 random bits, hex: names this process in invalidation messages.
fn replica_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Two replicas sharing a name would skip each other's messages: fall back to the
        // process id and the time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes[..4].copy_from_slice(&std::process::id().to_le_bytes());
        bytes[4..].copy_from_slice(&nanos.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
