//! What the upstream receives (PRODUCT.md §5): every header with the identity prefix removed
//! first (a client can never forge identity), the used credentials removed, then the identity
//! headers and `X-Request-Id` set. Works on anything that implements [`RequestEdit`]: Pingora's
//! request header in the proxy, an `http::HeaderMap` elsewhere.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::credential::{self, CredentialNames, QUERY_PARAMS, Sources};
use crate::model::Identity;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The edits tokengate makes to a request on its way upstream.
pub trait RequestEdit {
    fn headers(&self) -> &HeaderMap;
    fn remove_header(&mut self, name: &HeaderName);
    fn insert_header(&mut self, name: HeaderName, value: HeaderValue);
    /// Replaces the query (`None`: no query at all).
    fn set_query(&mut self, query: Option<&str>);
}

/// The identity header names, resolved once from the configured prefix.
#[derive(Clone, Debug)]
pub struct IdentityHeaders {
    prefix: String,
    user_id: HeaderName,
    user_email: HeaderName,
    user_name: HeaderName,
    method: HeaderName,
    credential_id: HeaderName,
    app_id: HeaderName,
    department: HeaderName,
    user_type: HeaderName,
    tenant: HeaderName,
    expires_at: HeaderName,
    assertion: HeaderName,
}

impl IdentityHeaders {
    /// `prefix` must be lowercase and form valid header names (the config checks it).
    pub fn new(prefix: &str) -> Result<Self, http::header::InvalidHeaderName> {
        let name = |suffix: &str| HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes());
        Ok(Self {
            prefix: prefix.to_ascii_lowercase(),
            user_id: name("user-id")?,
            user_email: name("user-email")?,
            user_name: name("user-name")?,
            method: name("method")?,
            credential_id: name("credential-id")?,
            app_id: name("app-id")?,
            department: name("department")?,
            user_type: name("user-type")?,
            tenant: name("tenant")?,
            expires_at: name("expires-at")?,
            assertion: name("assertion")?,
        })
    }

    /// `X-Auth-Assertion` under the configured prefix.
    pub fn assertion(&self) -> &HeaderName {
        &self.assertion
    }

    /// Removes every header that carries the identity prefix, whatever the client sent.
    pub fn strip_forged(&self, req: &mut impl RequestEdit) {
        let forged = |k: &&HeaderName| k.as_str().starts_with(&self.prefix);
        // Nearly every request has none: then nothing is collected (and nothing allocated).
        if !req.headers().keys().any(|k| forged(&k)) {
            return;
        }
        let forged: Vec<HeaderName> = req.headers().keys().filter(forged).cloned().collect();
        for name in &forged {
            req.remove_header(name);
        }
    }

    /// Sets every identity header: the identity's values, and an empty value for each it has
    /// none of (or for all, with no identity). For answers a gateway copies onto a request.
    pub fn set_all(&self, headers: &mut HeaderMap, identity: Option<&Identity>) {
        for name in [
            &self.user_id,
            &self.user_email,
            &self.user_name,
            &self.method,
            &self.credential_id,
            &self.app_id,
            &self.department,
            &self.user_type,
            &self.tenant,
            &self.expires_at,
            &self.assertion,
        ] {
            headers.insert(name.clone(), HeaderValue::from_static(""));
        }
        if let Some(identity) = identity {
            self.set(headers, identity);
        }
    }

    /// Sets the identity headers (call [`Self::strip_forged`] first).
    pub fn set(&self, req: &mut impl RequestEdit, identity: &Identity) {
        let user = &identity.user;
        req.insert_header(
            self.method.clone(),
            HeaderValue::from_static(identity.method().as_str()),
        );
        let mut put = |name: &HeaderName, value: Option<&str>| {
            // A value that can't be a header (a control character) is left out, never mangled.
            if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
                req.insert_header(name.clone(), v);
            }
        };
        put(&self.user_id, Some(&user.id));
        put(&self.user_email, Some(&user.email));
        put(&self.user_name, Some(&user.name));
        put(&self.credential_id, Some(identity.credential_id()));
        put(&self.app_id, identity.app_id());
        put(&self.department, identity.department());
        put(&self.user_type, identity.user_type());
        put(&self.tenant, identity.tenant());
        if let Some(at) = identity.expires_at() {
            let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            put(&self.expires_at, Some(&at));
        }
    }
}

/// Removes the credentials found at `sources` from the request.
pub fn strip_credentials(req: &mut impl RequestEdit, sources: Sources, names: &CredentialNames) {
    if sources.authorization {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    if sources.app_token_header {
        req.remove_header(&credential::QB_APP_TOKEN_HEADER);
    }
    if sources.cookie {
        let kept: Vec<String> = req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            .filter(|c| {
                !c.is_empty()
                    && c.split_once('=')
                        .is_none_or(|(name, _)| name.trim() != names.ticket_cookie)
            })
            .map(str::to_owned)
            .collect();
        req.remove_header(&http::header::COOKIE);
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        {
            req.insert_header(http::header::COOKIE, v);
        }
    }
}

/// The query without the credential parameters; `None` when nothing is left.
pub fn query_without_credentials(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !QUERY_PARAMS.iter().any(|(name, _)| *name == key)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Removes credentials from the query when it carried any.
pub fn strip_query_credentials(req: &mut impl RequestEdit, sources: Sources, query: Option<&str>) {
    if sources.query
        && let Some(q) = query
    {
        req.set_query(query_without_credentials(q).as_deref());
    }
}

/// A request as `http` (and so tower and axum) holds it.
impl RequestEdit for http::request::Parts {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove_header(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }
    fn insert_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.insert(name, value);
    }
    fn set_query(&mut self, query: Option<&str>) {
        let path_and_query = match query {
            Some(q) => format!("{}?{q}", self.uri.path()),
            None => self.uri.path().to_owned(),
        };
        let mut uri = self.uri.clone().into_parts();
        uri.path_and_query = path_and_query.parse().ok();
        if let Ok(uri) = http::Uri::from_parts(uri) {
            self.uri = uri;
        }
    }
}

impl RequestEdit for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }
    fn remove_header(&mut self, name: &HeaderName) {
        self.remove(name);
    }
    fn insert_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
    fn set_query(&mut self, _: Option<&str>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_loses_only_credentials() {
        assert_eq!(
            query_without_credentials("a=API_DoQuery&usertoken=tgu_x&apptoken=y&b=2").as_deref(),
            Some("a=API_DoQuery&b=2")
        );
        assert_eq!(query_without_credentials("ticket=tgt_1"), None);
        assert_eq!(
            query_without_credentials("usertokens=keep").as_deref(),
            Some("usertokens=keep")
        );
    }

    #[test]
    fn forged_identity_and_credentials_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-auth-user-id", HeaderValue::from_static("mallory"));
        h.insert("X-Auth-Anything", HeaderValue::from_static("x"));
        h.insert(
            "authorization",
            HeaderValue::from_static("QB-USER-TOKEN tgu_x"),
        );
        h.insert("cookie", HeaderValue::from_static("a=1; TICKET=tgt_x; b=2"));
        h.insert("qb-app-token", HeaderValue::from_static("tga_x"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let ids = IdentityHeaders::new("x-auth-").unwrap();
        ids.strip_forged(&mut h);
        let sources = Sources {
            authorization: true,
            cookie: true,
            app_token_header: true,
            ..Sources::default()
        };
        strip_credentials(&mut h, sources, &CredentialNames::default());
        assert!(h.get("x-auth-user-id").is_none() && h.get("x-auth-anything").is_none());
        assert!(h.get("authorization").is_none() && h.get("qb-app-token").is_none());
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        assert_eq!(h.get("accept").unwrap(), "*/*");
    }
}
