//! The endpoints tokengate answers itself on the proxy listener: `POST /_auth/authenticate`
//! (JSON or form: a ticket and its cookie), `POST /_auth/signout`, and Quickbase's XML API
//! forms `/db/main?a=API_Authenticate` and `API_SignOut` (GET, or POST with a `<qdbapi>`
//! body). Pingora-free: a request's parts in, a [`Response`] out.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, StatusCode};
use serde_json::json;

use crate::admin::AdminState;
use crate::credential::xml::XmlBody;
use crate::credential::{self, CredentialNames};
use crate::engine::{Engine, RequestParts};
use crate::error::{self, AuthError};
use crate::headers::IdentityHeaders;
use crate::model::Ticket;
use crate::sessions::SessionTokens;
use crate::tickets::{SignInError, Tickets};

/// Which endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Authenticate,
    Login,
    SignOut,
    WhoAmI,
    Jwks,
    /// Under the prefix, but no such endpoint.
    Unknown,
    QbAuthenticate,
    QbSignOut,
    /// `/_auth/tokens[/{id}]`: a signed-in user's own user tokens.
    Tokens,
    /// `/_auth/check[/…]`: a gateway asks for a decision (§12).
    Check,
}

impl Endpoint {
    /// Whether answering needs the request's body.
    pub fn reads_body(self) -> bool {
        // The check never looks at a body: a gateway doesn't send one.
        !matches!(
            self,
            Self::Unknown | Self::WhoAmI | Self::Jwks | Self::Check
        )
    }
}

/// The parts of a request an endpoint looks at.
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub xml: Option<&'a XmlBody>,
    pub request_id: &'a str,
    pub client: Option<std::net::IpAddr>,
}

/// An answer: status, content type, extra headers, body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// The identity headers of §5 (the check endpoint's answer to an admitted request).
    pub identity: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    fn json(status: StatusCode, body: serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            identity: HeaderMap::new(),
            body: body.to_string().into_bytes(),
        }
    }

    fn xml(status: StatusCode, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/xml",
            headers: Vec::new(),
            identity: HeaderMap::new(),
            body,
        }
    }

    /// The error of §4 as JSON, or as `<qdbapi>` for `action`.
    pub fn error(error: AuthError, request_id: &str, action: Option<&str>) -> Self {
        let mut r = match action {
            Some(action) => Self::xml(error.status(), error.qdbapi_body(action, request_id)),
            None => Self {
                status: error.status(),
                content_type: "application/json",
                headers: Vec::new(),
                identity: HeaderMap::new(),
                body: error.json_body(request_id),
            },
        };
        if let Some(challenge) = error.challenge() {
            r.headers.push(("www-authenticate", challenge));
        }
        if let Some(secs) = error.retry_after() {
            r.headers.push(("retry-after", secs.to_string()));
        }
        r
    }
}

/// Quickbase's action header, named once (a `&str` name is parsed at every lookup).
const QB_ACTION: HeaderName = HeaderName::from_static("quickbase-action");

/// Whether the request names its Quickbase action at most once: one `QUICKBASE-ACTION`
/// header, one `a=`, and the two alike when both are given. Otherwise the action a route
/// matched on might not be the one the upstream acts on.
pub fn action_is_unambiguous(query: Option<&str>, headers: &HeaderMap) -> bool {
    let mut header = headers.get_all(&QB_ACTION).iter();
    let first = header.next();
    if header.next().is_some() {
        return false;
    }
    let mut params = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) == "a");
    let param = params.next();
    if params.next().is_some() {
        return false;
    }
    match (first.and_then(|h| h.to_str().ok()), param) {
        (Some(h), Some(p)) => {
            let p = p.split_once('=').map_or("", |(_, v)| v);
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .eq_ignore_ascii_case(h.trim())
        }
        (None, Some(_)) | (None, None) => true,
        (Some(_), None) => first.is_some_and(|h| h.to_str().is_ok()),
    }
}

/// The Quickbase action a request names: `?a=API_…` or the `QUICKBASE-ACTION` header.
pub fn qb_action<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<Cow<'a, str>> {
    if let Some(v) = headers.get(&QB_ACTION).and_then(|v| v.to_str().ok()) {
        return Some(Cow::Borrowed(v.trim()));
    }
    query_param(query, "a").filter(|a| a.starts_with("API_"))
}

/// Whether a request is to Quickbase's XML API (so it is answered in `<qdbapi>`).
pub fn is_qb_api(path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
    (path == "/db" || path.starts_with("/db/")) && qb_action(query, headers).is_some()
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
    })
}

pub struct Endpoints {
    engine: Arc<Engine>,
    admin: Arc<AdminState>,
    identity: IdentityHeaders,
    prefix: String,
    tickets: Arc<Tickets>,
    sessions: Arc<SessionTokens>,
    names: CredentialNames,
}

impl Endpoints {
    pub fn new(
        engine: Arc<Engine>,
        admin: Arc<AdminState>,
        identity: IdentityHeaders,
        prefix: &str,
        tickets: Arc<Tickets>,
        sessions: Arc<SessionTokens>,
        names: CredentialNames,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            admin,
            identity,
            prefix: prefix.trim_end_matches('/').to_owned(),
            tickets,
            sessions,
            names,
        })
    }

    /// The endpoint a request is for, if any.
    pub fn route(&self, path: &str, query: Option<&str>, headers: &HeaderMap) -> Option<Endpoint> {
        if let Some(rest) = path.strip_prefix(self.prefix.as_str()) {
            return match rest {
                "/authenticate" => Some(Endpoint::Authenticate),
                "/signout" => Some(Endpoint::SignOut),
                "/login" => Some(Endpoint::Login),
                "/jwks.json" => Some(Endpoint::Jwks),
                "/whoami" => Some(Endpoint::WhoAmI),
                r if r == "/tokens" || r.starts_with("/tokens/") => Some(Endpoint::Tokens),
                r if r == "/check" || r.starts_with("/check/") => Some(Endpoint::Check),
                r if r.is_empty() || r.starts_with('/') => Some(Endpoint::Unknown),
                _ => None,
            };
        }
        if path.trim_end_matches('/') == "/db/main" {
            return match qb_action(query, headers).as_deref() {
                Some(a) if a.eq_ignore_ascii_case("API_Authenticate") => {
                    Some(Endpoint::QbAuthenticate)
                }
                Some(a) if a.eq_ignore_ascii_case("API_SignOut") => Some(Endpoint::QbSignOut),
                _ => None,
            };
        }
        None
    }

    pub async fn handle(&self, endpoint: Endpoint, req: &Request<'_>) -> Response {
        match endpoint {
            Endpoint::Authenticate => self.authenticate(req).await,
            Endpoint::SignOut => self.sign_out(req, None).await,
            Endpoint::QbAuthenticate => self.qb_authenticate(req).await,
            Endpoint::QbSignOut => self.sign_out(req, Some("API_SignOut")).await,
            Endpoint::WhoAmI => self.whoami(req).await,
            Endpoint::Login => self.login(req).await,
            Endpoint::Jwks => self.jwks(req),
            Endpoint::Tokens => self.tokens(req).await,
            Endpoint::Check => self.check(req).await,
            Endpoint::Unknown => Response::error(AuthError::NoRoute, req.request_id, None),
        }
    }

    fn cookie(&self, ticket: &str, max_age: i64) -> String {
        format!(
            "{}={ticket}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax",
            self.names.ticket_cookie
        )
    }

    fn ticket_cookie(&self, ticket: &Ticket, token: &str) -> String {
        let secs = (ticket.expires_at - ticket.issued_at).num_seconds();
        self.cookie(token, secs)
    }

    async fn authenticate(&self, req: &Request<'_>) -> Response {
        if req.method != Method::POST {
            return Response::json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed", "message": "use POST", "request_id": req.request_id}),
            );
        }
        let form = match read_form(req) {
            Ok(f) => f,
            Err(message) => return invalid(req.request_id, "body", &message),
        };
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let (Some(username), Some(password)) = (field("username"), field("password")) else {
            let missing = if field("username").is_none() {
                "username"
            } else {
                "password"
            };
            return invalid(req.request_id, missing, &format!("{missing} is required"));
        };
        let hours = match self.tickets.hours(field("hours")) {
            Ok(h) => h,
            Err(SignInError::Invalid(f, why)) => return invalid(req.request_id, f, &why),
            Err(_) => return Response::error(AuthError::AuthUnavailable, req.request_id, None),
        };
        match self
            .tickets
            .sign_in(username, password, hours, req.client)
            .await
        {
            Ok((ticket, token)) => {
                let mut r = Response::json(
                    StatusCode::OK,
                    json!({"ticket": token, "user_id": ticket.user_id, "expires_at": ticket.expires_at}),
                );
                r.headers
                    .push(("set-cookie", self.ticket_cookie(&ticket, &token)));
                r
            }
            Err(e) => self.sign_in_error(e, req.request_id, None),
        }
    }

    fn sign_in_error(&self, e: SignInError, request_id: &str, action: Option<&str>) -> Response {
        match (e, action) {
            (SignInError::Invalid(field, why), None) => invalid(request_id, field, &why),
            (SignInError::Invalid(_, why), Some(action)) => Response::xml(
                StatusCode::BAD_REQUEST,
                error::qdbapi(action, 2, &why, &[("request_id", request_id)]),
            ),
            (SignInError::Refused, None) => {
                let mut r = Response::error(AuthError::InvalidToken, request_id, None);
                r.body = json!({"error": "invalid_token", "message": "unknown username or wrong password", "request_id": request_id})
                    .to_string()
                    .into_bytes();
                r
            }
            (SignInError::Refused, Some(action)) => {
                let mut r = Response::xml(
                    StatusCode::UNAUTHORIZED,
                    error::qdbapi(
                        action,
                        20,
                        "Unknown username/password.",
                        &[("request_id", request_id)],
                    ),
                );
                r.headers
                    .push(("www-authenticate", r#"Bearer realm="tokengate""#.to_owned()));
                r
            }
            (SignInError::TooManyFailures, action) => {
                Response::error(AuthError::TooManyFailures, request_id, action)
            }
            (SignInError::Unavailable, action) => {
                Response::error(AuthError::AuthUnavailable, request_id, action)
            }
        }
    }

    async fn qb_authenticate(&self, req: &Request<'_>) -> Response {
        const ACTION: &str = "API_Authenticate";
        let param = |name: &str| -> Option<String> {
            query_param(req.query, name)
                .map(Cow::into_owned)
                .or_else(|| req.xml.and_then(|x| x.get(name).next()).map(str::to_owned))
        };
        let (Some(username), Some(password)) = (param("username"), param("password")) else {
            return Response::xml(
                StatusCode::UNAUTHORIZED,
                error::qdbapi(
                    ACTION,
                    22,
                    "Sign in required: username and password.",
                    &[("request_id", req.request_id)],
                ),
            );
        };
        let hours = match self.tickets.hours(param("hours").as_deref()) {
            Ok(h) => h,
            Err(e) => return self.sign_in_error(e, req.request_id, Some(ACTION)),
        };
        match self
            .tickets
            .sign_in(&username, &password, hours, req.client)
            .await
        {
            Ok((ticket, token)) => {
                let mut r = Response::xml(
                    StatusCode::OK,
                    error::qdbapi(
                        ACTION,
                        0,
                        "No error",
                        &[("ticket", &token), ("userid", &ticket.user_id)],
                    ),
                );
                r.headers
                    .push(("set-cookie", self.ticket_cookie(&ticket, &token)));
                r
            }
            Err(e) => self.sign_in_error(e, req.request_id, Some(ACTION)),
        }
    }

    async fn login(&self, req: &Request<'_>) -> Response {
        if req.method != Method::POST {
            return Response::json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed", "message": "use POST", "request_id": req.request_id}),
            );
        }
        let body: serde_json::Value = match read_form(req) {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
            Err(message) => return invalid(req.request_id, "body", &message),
        };
        // remember_me may come as a JSON boolean, which read_form leaves out.
        let raw: serde_json::Value = serde_json::from_slice(req.body).unwrap_or_default();
        let field = |name: &str| body.get(name).and_then(|v| v.as_str());
        let (Some(username), Some(password)) = (field("username"), field("password")) else {
            let missing = if field("username").is_none() {
                "username"
            } else {
                "password"
            };
            return invalid(req.request_id, missing, &format!("{missing} is required"));
        };
        let remember_me = match raw.get("remember_me").or(body.get("remember_me")) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) if s == "true" || s == "1" => true,
            Some(serde_json::Value::String(s)) if s == "false" || s == "0" => false,
            Some(_) => {
                return invalid(
                    req.request_id,
                    "remember_me",
                    "remember_me must be true or false",
                );
            }
        };
        let app = field("app").map(str::to_owned);
        let user = match self
            .tickets
            .authenticate(username, password, req.client)
            .await
        {
            Ok(user) => user,
            Err(e) => return self.sign_in_error(e, req.request_id, None),
        };
        if let Some(app) = &app {
            let known = self.engine.cache().app(app).await;
            if !user.may_use(app) || !matches!(known, Ok(crate::cache::Cached::Found(_))) {
                return Response::error(AuthError::AppNotAllowed, req.request_id, None);
            }
        }
        match self.sessions.open(&user, app, remember_me).await {
            Ok((token, session)) => Response::json(
                StatusCode::OK,
                json!({"token": token, "session_id": session.id, "user_id": session.user_id, "expires_at": session.expires_at}),
            ),
            Err(e) => Response::error(e, req.request_id, None),
        }
    }

    fn jwks(&self, req: &Request<'_>) -> Response {
        match self.engine.sessions().keys() {
            Some(keys) => {
                let mut r = Response::json(StatusCode::OK, keys.jwks());
                r.headers
                    .push(("cache-control", "public, max-age=300".to_owned()));
                r
            }
            None => Response::error(AuthError::AuthUnavailable, req.request_id, None),
        }
    }

    /// Who the request's credential stands for, with no route and no app; a refusal as §4's.
    async fn caller(
        &self,
        req: &Request<'_>,
        xml: Option<&XmlBody>,
    ) -> Result<crate::model::Identity, Response> {
        let parts = RequestParts {
            method: req.method,
            path: "",
            query: req.query,
            headers: req.headers,
            xml,
            client: req.client,
        };
        self.engine
            .identify(parts)
            .await
            .map_err(|d| Response::error(d.error, req.request_id, None))
    }

    async fn whoami(&self, req: &Request<'_>) -> Response {
        match self.caller(req, req.xml).await {
            Ok(id) => Response::json(
                StatusCode::OK,
                json!({
                    "user_id": id.user.id, "email": id.user.email, "name": id.user.name,
                    "method": id.method().as_str(), "credential_id": id.credential_id(),
                    "department": id.department(), "user_type": id.user_type(),
                    "tenant": id.tenant(), "expires_at": id.expires_at(),
                }),
            ),
            Err(refused) => refused,
        }
    }

    /// `GET|POST /_auth/tokens`, `PATCH|DELETE /_auth/tokens/{id}`: the caller's own user
    /// tokens, for a ticket or one of tokengate's own sessions (not a user token, nor another
    /// issuer's JWT).
    async fn tokens(&self, req: &Request<'_>) -> Response {
        let rest = req
            .path
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix("/tokens"))
            .unwrap_or("");
        let token_id = match rest.trim_end_matches('/') {
            "" => None,
            r => match r.strip_prefix('/') {
                Some(id) if !id.contains('/') => Some(id.to_owned()),
                _ => return Response::error(AuthError::NoRoute, req.request_id, None),
            },
        };
        let identity = match self.caller(req, None).await {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        // A user token can't make more of itself, and another issuer's token (which tokengate
        // can't revoke) can't make credentials that outlive it.
        let external =
            matches!(&identity.credential, crate::model::Verified::Session(s) if s.external);
        if identity.method() == crate::model::CredentialKind::UserToken || external {
            return Response::error(AuthError::CredentialNotAllowed, req.request_id, None);
        }
        // A ticket may ride in a cookie: a write must be JSON, which a page on another site
        // can't send without the browser asking this origin first (CORS preflight).
        if matches!(*req.method, Method::POST | Method::PATCH) && !is_json(req.headers) {
            return Response::json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": "unsupported_media_type",
                       "message": "send the body as JSON (Content-Type: application/json)",
                       "request_id": req.request_id}),
            );
        }
        // A session opened for one app manages tokens for that app only.
        let bound_app = match &identity.credential {
            crate::model::Verified::Session(s) => s.app.as_deref(),
            _ => None,
        };
        let (status, body) = crate::admin::self_service(
            self.admin.clone(),
            &identity.user,
            bound_app,
            req.method,
            token_id,
            req.query,
            req.body,
        )
        .await;
        let mut body = body;
        if !status.is_success() {
            // The admin API's error, with this request's id, as every §4 error carries.
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) {
                v["request_id"] = json!(req.request_id);
                body = v.to_string().into_bytes();
            }
        }
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            identity: HeaderMap::new(),
            body,
        }
    }

    /// `/_auth/check` (§12): a gateway's question about the request it holds. The original
    /// method and URI come from nginx `auth_request` (`X-Original-Method`, `X-Original-URI`),
    /// Traefik ForwardAuth and Caddy `forward_auth` (`X-Forwarded-Method`, `X-Forwarded-Uri`),
    /// or, for Envoy's HTTP `ext_authz`, this request's own method and the path under
    /// `/_auth/check`. The credential is read from this request's headers and cookies and the
    /// original query. 200 with the identity headers, or the refusal of §4.
    async fn check<'a>(&self, req: &'a Request<'a>) -> Response {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let under = req
            .path
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix("/check"))
            .unwrap_or("");
        // A gateway sets its own family of headers, and may pass the client's others on
        // (Traefik and Caddy forward every client header): where two say different things, a
        // client wrote one of them, and nothing is decided.
        let agreed = |a: Option<&'a str>, b: Option<&'a str>| match (a, b) {
            (Some(x), Some(y)) if x != y => Err(()),
            (x, y) => Ok(x.or(y)),
        };
        let (Ok(forwarded_uri), Ok(forwarded_method)) = (
            agreed(header("x-original-uri"), header("x-forwarded-uri")),
            agreed(header("x-original-method"), header("x-forwarded-method")),
        ) else {
            return invalid(
                req.request_id,
                "x-original-uri",
                "the forwarding headers disagree on the original request",
            );
        };
        if forwarded_uri.is_some() && under.starts_with('/') {
            return invalid(
                req.request_id,
                "x-original-uri",
                "both a forwarded URI and a path under /_auth/check: send one",
            );
        }
        let (uri, method): (Cow<'_, str>, Option<&str>) = match forwarded_uri {
            Some(uri) => (Cow::Borrowed(uri), forwarded_method),
            None if under.starts_with('/') => (
                match req.query {
                    Some(q) => Cow::Owned(format!("{under}?{q}")),
                    None => Cow::Borrowed(under),
                },
                None,
            ),
            None => {
                return invalid(
                    req.request_id,
                    "x-original-uri",
                    "no original request: send X-Original-URI (nginx auth_request) or \
                     X-Forwarded-Uri (Traefik, Caddy), or put its path under /_auth/check/ (Envoy)",
                );
            }
        };
        let method = match method {
            Some(m) => match Method::from_bytes(m.trim().as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    return invalid(req.request_id, "x-forwarded-method", "not an HTTP method");
                }
            },
            None => req.method.clone(),
        };
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri.as_ref(), None),
        };
        if !path.starts_with('/') {
            return invalid(
                req.request_id,
                "x-original-uri",
                "the original URI must be a path",
            );
        }
        let parts = RequestParts {
            method: &method,
            path,
            query,
            headers: req.headers,
            xml: None,
            client: req.client,
        };
        match self.engine.decide(parts).await {
            Ok(admission) => {
                // No body: nginx's auth_request never reads one, and keeps its connection to
                // tokengate only when there is none (with `{"allowed":true}`, nginx opened a
                // new connection for every check).
                let mut r = Response::json(StatusCode::OK, json!(null));
                r.content_type = "text/plain";
                r.body.clear();
                // Every identity header, empty where there is no value: a gateway that copies
                // them (Envoy, Traefik, Caddy) overwrites whatever the client sent under them.
                self.identity
                    .set_all(&mut r.identity, admission.identity.as_ref());
                r
            }
            Err(d) => {
                let action = is_qb_api(path, query, req.headers)
                    .then(|| qb_action(query, req.headers).map(Cow::into_owned))
                    .flatten();
                let xml_body = crate::credential::xml::is_xml(
                    req.headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok()),
                );
                if d.error == AuthError::MissingCredentials && xml_body && action.is_none() {
                    // The credential may be in the body, which this shape never sees.
                    let mut r = Response::error(d.error, req.request_id, None);
                    r.body = json!({
                        "error": d.error.code(),
                        "message": "no credential in the headers, cookies or query; a credential in an XML body needs tokengate in the request path (the proxy), since /_auth/check never sees a body",
                        "request_id": req.request_id,
                    })
                    .to_string()
                    .into_bytes();
                    return r;
                }
                Response::error(d.error, req.request_id, action.as_deref())
            }
        }
    }

    async fn sign_out(&self, req: &Request<'_>, action: Option<&str>) -> Response {
        // A GET must not sign anyone out (an image tag on another site could).
        if action.is_none() && req.method != Method::POST {
            return Response::json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed", "message": "use POST", "request_id": req.request_id}),
            );
        }
        let mut found = match credential::extract(req.headers, req.query, &self.names) {
            Ok(f) => f,
            Err(_) => {
                return Response::error(AuthError::AmbiguousCredentials, req.request_id, action);
            }
        };
        if let Some(xml) = req.xml {
            for t in xml.get("ticket") {
                if found.offer(credential::Slot::Ticket, t.into()).is_err() {
                    return Response::error(
                        AuthError::AmbiguousCredentials,
                        req.request_id,
                        action,
                    );
                }
            }
        }
        let signed_out = match (found.session.as_deref(), found.ticket.as_deref()) {
            (Some(session), _) => self.sessions.sign_out(session).await,
            (None, Some(ticket)) => self.tickets.sign_out(ticket).await,
            (None, None) => Err(AuthError::MissingCredentials),
        };
        if let Err(e) = signed_out {
            return Response::error(e, req.request_id, action);
        }
        let mut r = match action {
            Some(action) => {
                Response::xml(StatusCode::OK, error::qdbapi(action, 0, "No error", &[]))
            }
            None => Response::json(StatusCode::OK, json!({"signed_out": true})),
        };
        r.headers.push(("set-cookie", self.cookie("", 0)));
        r
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn invalid(request_id: &str, field: &str, message: &str) -> Response {
    Response::json(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_request", "field": field, "message": message, "request_id": request_id}),
    )
}

/// The name/value pairs of a JSON object or a form body.
fn read_form(req: &Request<'_>) -> Result<Vec<(String, String)>, String> {
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // curl -d sends JSON as a form: a body that opens like a JSON object is read as one.
    let looks_json = req.body.trim_ascii_start().starts_with(b"{");
    if content_type.starts_with("application/x-www-form-urlencoded") && !looks_json {
        return serde_urlencoded::from_bytes(req.body).map_err(|e| format!("bad form body: {e}"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(req.body).map_err(|e| format!("expected a JSON object: {e}"))?;
    let obj = value.as_object().ok_or("expected a JSON object")?;
    Ok(obj
        .iter()
        .filter_map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect())
}
