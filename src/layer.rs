//! The decision as a tower [`Layer`] (PRODUCT.md §12), for a Rust service that wants no proxy
//! hop: the same engine, credentials, routes, rules and errors as the proxy. An admitted
//! request reaches the inner service with forged identity headers removed, the credentials
//! used taken out (unless the route forwards them), the identity headers of §5 set, and the
//! [`Identity`] in its extensions; a refused one is answered with the JSON of §4 and never
//! reaches it. Bodies are not read: XML-body credentials need the proxy.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::engine::{Engine, RequestParts};
use crate::error::AuthError;
use crate::headers::{self, IdentityHeaders, REQUEST_ID};
use crate::model::Identity;

/// The client's address, for `limits.failures_per_minute`: put it in the request's extensions
/// (from axum's `ConnectInfo`, say) and the layer counts failures per client.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// Wraps a service in tokengate's decision.
#[derive(Clone)]
pub struct AuthLayer {
    engine: Arc<Engine>,
    identity: IdentityHeaders,
}

impl AuthLayer {
    pub fn new(engine: Arc<Engine>, identity: IdentityHeaders) -> Self {
        Self { engine, identity }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            engine: self.engine.clone(),
            identity: self.identity.clone(),
        }
    }
}

/// A service behind tokengate's decision (made by [`AuthLayer`]).
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    engine: Arc<Engine>,
    identity: IdentityHeaders,
}

impl<S, B, R> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: From<String> + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was polled ready is the one to call; a clone stays behind.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let (engine, identity) = (self.engine.clone(), self.identity.clone());
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let request_id = crate::proxy::request_id(&parts.headers);
            let decision = engine
                .decide(RequestParts {
                    method: &parts.method,
                    path: parts.uri.path(),
                    query: parts.uri.query(),
                    headers: &parts.headers,
                    xml: None,
                    client: parts.extensions.get::<ClientAddr>().map(|c| c.0),
                })
                .await;
            let admission = match decision {
                Ok(a) => a,
                Err(denial) => return Ok(refusal(denial.error, &request_id)),
            };
            identity.strip_forged(&mut parts);
            if !admission.forward_credentials {
                headers::strip_credentials(&mut parts, admission.credentials, engine.names());
                if admission.credentials.query {
                    let query = parts.uri.query().map(str::to_owned);
                    headers::strip_query_credentials(
                        &mut parts,
                        admission.credentials,
                        query.as_deref(),
                    );
                }
            }
            parts.headers.insert(REQUEST_ID, request_id);
            if let Some(id) = admission.identity {
                identity.set(&mut parts.headers, &id);
                parts.extensions.insert::<Identity>(id);
            }
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}

/// §4's refusal: status, JSON body, `WWW-Authenticate` / `Retry-After` where they belong.
fn refusal<R: From<String>>(error: AuthError, request_id: &HeaderValue) -> Response<R> {
    let body =
        String::from_utf8(error.json_body(request_id.to_str().unwrap_or(""))).unwrap_or_default();
    let mut resp = Response::new(R::from(body));
    *resp.status_mut() = error.status();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(REQUEST_ID, request_id.clone());
    if let Some(v) = error
        .challenge()
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert(http::header::WWW_AUTHENTICATE, v);
    }
    if let Some(secs) = error.retry_after() {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
