//! The Pingora `ProxyHttp` implementation. It stays thin: each phase calls one module.
//! - `request_filter`: tokengate's own endpoints are answered; an XML body is read (whole, up
//!   to the limit) for its credentials; the engine decides; a denial is answered here, and the
//!   upstream never hears of it (not even its headers).
//! - `request_body_filter`: an XML body goes on without its credential elements.
//! - `upstream_request_filter`: forged identity and used credentials out, identity in.
//! - `fail_to_proxy`: an unreachable upstream is a JSON 502.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::assertion::Assertions;
use crate::client_addr::TrustedProxies;
use crate::credential::xml::{self, XmlBody};
use crate::endpoints::{self, Endpoints};
use crate::engine::{Admission, Engine, RequestParts};
use crate::error::AuthError;
use crate::headers::{self, IdentityHeaders, REQUEST_ID};

/// Where admitted requests go.
#[derive(Clone, Debug)]
pub struct UpstreamTarget {
    pub address: std::net::SocketAddr,
    pub tls: bool,
    pub sni: String,
    /// The CAs the upstream's certificate must chain to (`upstream.ca_file`), read once at
    /// start; `None`: the system's roots.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

pub struct Proxy {
    engine: Arc<Engine>,
    endpoints: Arc<Endpoints>,
    identity: IdentityHeaders,
    upstream: UpstreamTarget,
    /// The most of a body tokengate reads (XML bodies, sign-in forms).
    body_limit: usize,
    /// `X-Auth-Assertion`, when configured.
    assertions: Option<Assertions>,
    /// Peers whose `X-Forwarded-For` names the client.
    trusted: TrustedProxies,
}

impl Proxy {
    pub fn new(
        engine: Arc<Engine>,
        endpoints: Arc<Endpoints>,
        identity: IdentityHeaders,
        upstream: UpstreamTarget,
        body_limit: usize,
        assertions: Option<Assertions>,
        trusted: TrustedProxies,
    ) -> Self {
        Self {
            engine,
            endpoints,
            identity,
            upstream,
            body_limit,
            assertions,
            trusted,
        }
    }
}

/// Per-request state, carried from phase to phase.
pub struct RequestCtx {
    request_id: HeaderValue,
    admission: Option<Admission>,
    upstream_started: Option<Instant>,
    /// The body to send instead of the client's (an XML body without its credentials): taken
    /// by the first body chunk, so later chunks send nothing.
    body_replacement: Option<Option<Bytes>>,
    /// The signed `X-Auth-Assertion` for this request's identity.
    assertion: Option<HeaderValue>,
    started: Option<Instant>,
    /// What was decided, for the access log.
    outcome: Outcome,
}

/// One request's decision, as the access log tells it: bounded values and ids, no secret.
#[derive(Default)]
struct Outcome {
    route: Option<usize>,
    credential: Option<crate::model::CredentialKind>,
    app: Option<Arc<crate::model::App>>,
    /// `allow`, `deny`, `error` or `endpoint`.
    decision: &'static str,
    /// `ok` or an error code.
    reason: &'static str,
    /// The upstream gave no answer (the 502 is tokengate's).
    upstream_failed: bool,
}

/// A request id: the client's `X-Request-Id` when it is a sane one, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID) {
        let b = v.as_bytes();
        if (1..=64).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            return v.clone();
        }
    }
    new_request_id()
}

/// Headers tokengate may add on the way upstream: the identity headers, the assertion,
/// `Content-Length` and `X-Request-Id`.
const UPSTREAM_HEADERS: usize = 16;

/// A process-unique id: a random process prefix and a counter.
pub fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix:016x}{n:08x}`, written without the formatting machinery (once per request).
    let mut id = [0u8; 24];
    hex_into(&mut id[..16], prefix);
    hex_into(&mut id[16..], n);
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// The low `out.len()` hex digits of `n`, lowercase, most significant first.
fn hex_into(out: &mut [u8], mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 15) as usize];
        n >>= 4;
    }
}

/// Writes an answer of tokengate's own, keeping the connection open where that is safe.
async fn respond(session: &mut Session, answer: endpoints::Response, request_id: &HeaderValue) {
    let body = Bytes::from(answer.body);
    let Ok(mut resp) = ResponseHeader::build(answer.status, Some(4 + answer.headers.len())) else {
        return;
    };
    let _ = resp.insert_header(http::header::CONTENT_TYPE, answer.content_type);
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
    let _ = resp.insert_header(REQUEST_ID, request_id.clone());
    for (name, value) in answer.headers {
        let _ = resp.append_header(name, value);
    }
    for (name, value) in answer.identity {
        if let Some(name) = name {
            let _ = resp.insert_header(name, value);
        }
    }
    // An unread body would close the connection after the answer: read a small one, and
    // close rather than read a large one from a client that isn't admitted.
    if !session.is_body_done() {
        let small = content_length(session).is_some_and(|n| n <= 64 * 1024);
        if !small || session.drain_request_body().await.is_err() {
            session.set_keepalive(None);
        }
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

/// A refusal, as JSON or (for Quickbase's XML API) as `<qdbapi>`.
async fn refuse(session: &mut Session, error: AuthError, request_id: &HeaderValue) {
    let req = session.req_header();
    let action = if endpoints::is_qb_api(req.uri.path(), req.uri.query(), &req.headers) {
        endpoints::qb_action(req.uri.query(), &req.headers).map(|a| a.into_owned())
    } else {
        None
    };
    let id = request_id.to_str().unwrap_or("");
    let answer = endpoints::Response::error(error, id, action.as_deref());
    respond(session, answer, request_id).await;
}

fn content_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// The client's address: the peer's, or what a trusted proxy says it is.
fn client_ip(session: &Session, trusted: &TrustedProxies) -> Option<std::net::IpAddr> {
    match session.client_addr()? {
        pingora::protocols::l4::socket::SocketAddr::Inet(addr) => {
            Some(trusted.client(addr.ip(), &session.req_header().headers))
        }
        _ => None,
    }
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Reads the whole body (at most `limit` bytes). Pingora keeps a copy in its retry buffer,
/// from which the body is sent upstream after the decision.
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, AuthError> {
    if content_length(session).is_some_and(|n| n > limit as u64) {
        return Err(AuthError::BodyTooLarge);
    }
    session.enable_retry_buffering();
    let mut body = bytes::BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(AuthError::BodyTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(AuthError::MalformedBody),
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: HeaderValue::from_static(""),
            admission: None,
            upstream_started: None,
            body_replacement: None,
            assertion: None,
            started: None,
            outcome: Outcome::default(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.started = Some(Instant::now());
        let req = session.req_header();
        ctx.request_id = request_id(&req.headers);
        let endpoint = self
            .endpoints
            .route(req.uri.path(), req.uri.query(), &req.headers);
        let is_xml = xml::is_xml(content_type(&req.headers));
        let body =
            if endpoint.is_some_and(|e| e.reads_body()) || (is_xml && !session.is_body_empty()) {
                match read_body(session, self.body_limit).await {
                    Ok(b) => b,
                    Err(e) => {
                        session.set_keepalive(None);
                        ctx.outcome.decision = e.outcome();
                        ctx.outcome.reason = e.code();
                        refuse(session, e, &ctx.request_id).await;
                        return Ok(true);
                    }
                }
            } else {
                Bytes::new()
            };
        let parsed: Option<XmlBody> = if is_xml && !body.is_empty() {
            match xml::read(&body) {
                Ok(x) => Some(x),
                Err(e) => {
                    tracing::debug!(request_id = ctx.request_id.to_str().unwrap_or(""), error = %e, "malformed XML body");
                    ctx.outcome.decision = "deny";
                    ctx.outcome.reason = AuthError::MalformedBody.code();
                    refuse(session, AuthError::MalformedBody, &ctx.request_id).await;
                    return Ok(true);
                }
            }
        } else {
            None
        };
        let req = session.req_header();

        if let Some(endpoint) = endpoint {
            let id = ctx.request_id.to_str().unwrap_or("").to_owned();
            let request = endpoints::Request {
                method: &req.method,
                path: req.uri.path(),
                query: req.uri.query(),
                headers: &req.headers,
                body: &body,
                xml: parsed.as_ref(),
                request_id: &id,
                client: client_ip(session, &self.trusted),
            };
            let answer = self.endpoints.handle(endpoint, &request).await;
            ctx.outcome.decision = "endpoint";
            ctx.outcome.reason = "ok";
            respond(session, answer, &ctx.request_id).await;
            return Ok(true);
        }

        let parts = RequestParts {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
            xml: parsed.as_ref(),
            client: client_ip(session, &self.trusted),
        };
        match self.engine.decide(parts).await {
            Ok(admission) => {
                ctx.outcome = Outcome {
                    route: Some(admission.route),
                    credential: admission.identity.as_ref().map(|i| i.method()),
                    app: admission.identity.as_ref().and_then(|i| i.app.clone()),
                    decision: "allow",
                    reason: "ok",
                    upstream_failed: false,
                };
                if let (Some(assertions), Some(identity)) = (&self.assertions, &admission.identity)
                {
                    match assertions.sign(&self.engine, identity) {
                        Ok(v) => ctx.assertion = Some(v),
                        Err(e) => {
                            ctx.outcome.decision = e.outcome();
                            ctx.outcome.reason = e.code();
                            refuse(session, e, &ctx.request_id).await;
                            return Ok(true);
                        }
                    }
                }
                if !admission.forward_credentials
                    && let Some(x) = parsed.as_ref().filter(|x| x.has_credentials())
                {
                    ctx.body_replacement = Some(Some(Bytes::from(x.without_credentials(&body))));
                }
                ctx.admission = Some(admission);
                Ok(false)
            }
            Err(denial) => {
                ctx.outcome.credential = denial.method;
                ctx.outcome.decision = denial.error.outcome();
                ctx.outcome.reason = denial.error.code();
                refuse(session, denial.error, &ctx.request_id).await;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(replacement) = ctx.body_replacement.as_mut() {
            *body = replacement.take();
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Deny by default: nothing goes upstream without an admission.
        if ctx.admission.is_none() {
            return Err(Error::explain(ErrorType::HTTPStatus(403), "not admitted"));
        }
        let mut peer = HttpPeer::new(
            self.upstream.address,
            self.upstream.tls,
            self.upstream.sni.clone(),
        );
        peer.options.connection_timeout = Some(self.upstream.connect_timeout);
        peer.options.read_timeout = Some(self.upstream.read_timeout);
        peer.options.ca = self.upstream.ca.clone();
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The edits are made on plain `http` parts, with room for the headers to come
        // reserved once. Through `RequestHeader`, each insert also went into a second map
        // that keeps the client's header case, with a copy of the name, and both maps grew
        // twice on the way: that was most of what authentication added per request. So the
        // upstream gets header names in their canonical case (HTTP/1.1 names are
        // case-insensitive); the request-target is unchanged, as only plain paths get here.
        // (The placeholder allocates nothing: an empty map, the static "/".)
        let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts = http::request::Parts::from(std::mem::replace(upstream, placeholder));
        if ctx.admission.as_ref().is_some_and(|a| a.identity.is_some()) {
            parts.headers.reserve(UPSTREAM_HEADERS);
        }
        self.identity.strip_forged(&mut parts);
        if let Some(admission) = &ctx.admission {
            if !admission.forward_credentials {
                headers::strip_credentials(&mut parts, admission.credentials, self.engine.names());
                let query = session.req_header().uri.query();
                headers::strip_query_credentials(&mut parts, admission.credentials, query);
            }
            if let Some(identity) = &admission.identity {
                self.identity.set(&mut parts, identity);
            }
            if let Some(assertion) = ctx.assertion.take() {
                parts
                    .headers
                    .insert(self.identity.assertion().clone(), assertion);
            }
        }
        if let Some(Some(replacement)) = &ctx.body_replacement {
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            parts.headers.insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(replacement.len()),
            );
        }
        parts.headers.insert(REQUEST_ID, ctx.request_id.clone());
        *upstream = RequestHeader::from(parts);
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let code = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => *code,
            (_, ErrorSource::Upstream) => {
                tracing::warn!(error = %e, request_id = ctx.request_id.to_str().unwrap_or(""), "upstream unavailable");
                ctx.outcome.decision = "error";
                ctx.outcome.reason = AuthError::UpstreamUnavailable.code();
                ctx.outcome.upstream_failed = true;
                // Counted before the answer goes out (not in `logging`, which runs after it):
                // whoever sees the 502 finds it counted.
                self.engine.metrics().upstream_failed();
                refuse(session, AuthError::UpstreamUnavailable, &ctx.request_id).await;
                return FailToProxy {
                    error_code: 502,
                    can_reuse_downstream: false,
                };
            }
            (
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => 0,
            (_, ErrorSource::Downstream) => 400,
            _ => 500,
        };
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's own error logs name a request by this: the method and the path only, never
    /// the query (it can carry credentials) nor any header.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {} (request id {})",
            req.method,
            req.uri.path(),
            ctx.request_id.to_str().unwrap_or("")
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let o = &ctx.outcome;
        // One line per request: ids and bounded values only, never a credential or a query.
        tracing::info!(
            target: "access",
            request_id = ctx.request_id.to_str().unwrap_or(""),
            http_method = session.req_header().method.as_str(),
            route = o.route.and_then(|i| self.engine.routes().get(i)).map(|r| r.path.as_str()),
            app = o.app.as_deref().map(|a| a.id.as_str()),
            credential = o.credential.map_or("none", |k| k.as_str()),
            decision = o.decision,
            reason = o.reason,
            status,
            latency_us = ctx.started.map_or(0, |t| t.elapsed().as_micros() as u64),
        );
        // A failed upstream was counted in `fail_to_proxy`.
        if !ctx.outcome.upstream_failed
            && let Some(started) = ctx.upstream_started
        {
            let metrics = self.engine.metrics();
            metrics
                .upstream_duration
                .observe(started.elapsed().as_secs_f64());
            if let Some(resp) = session.response_written() {
                metrics.upstream_response(resp.status.as_u16());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_24_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        for id in [&a, &b] {
            let s = id.to_str().unwrap_or_default();
            assert_eq!(s.len(), 24, "{s}");
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert_ne!(a, b);
        assert_eq!(
            a.as_bytes()[..16],
            b.as_bytes()[..16],
            "one process, one prefix"
        );
    }

    #[test]
    fn hex_keeps_the_low_digits() {
        let mut out = [0u8; 8];
        hex_into(&mut out, 0x1_2345_abcd);
        assert_eq!(&out, b"2345abcd");
    }
}
