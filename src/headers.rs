//! What the upstream receives (PRODUCT.md §5): every header with the identity prefix removed
//! first (a client can never forge identity), the used credentials removed, then the identity
//! headers and `X-Request-Id` set. Works on anything that implements [`RequestEdit`]: Pingora's
//! request header in the proxy, an `http::HeaderMap` elsewhere.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::credential::{self, CredentialNames, QUERY_PARAMS, Sources};
use crate::model::{Identity, Verified};

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

    /// Sets the identity headers (call [`Self::strip_forged`] first). The values come from the
    /// records' [`HeaderValues`], made once per cached record: no allocation per request.
    pub fn set(&self, req: &mut impl RequestEdit, identity: &Identity) {
        let [user_id, email, name, department, user_type, tenant] = identity.user.header_values();
        // The credential's id and expiry, and, for a narrower user token, the department and
        // user type that replace its owner's.
        let (credential_id, expires_at, department, user_type) = match &identity.credential {
            Verified::UserToken(t) => {
                let [id, department_of_token, user_type_of_token, expires] = t.header_values();
                (
                    id,
                    expires,
                    if t.department.is_some() {
                        department_of_token
                    } else {
                        department
                    },
                    if t.user_type.is_some() {
                        user_type_of_token
                    } else {
                        user_type
                    },
                )
            }
            Verified::Ticket(t) => {
                let [id, expires] = t.header_values();
                (id, expires, department, user_type)
            }
            Verified::Session(s) => {
                let [id, expires] = s.header_values();
                (id, expires, department, user_type)
            }
        };
        req.insert_header(
            self.method.clone(),
            HeaderValue::from_static(identity.method().as_str()),
        );
        let mut put = |name: &HeaderName, value: &Option<HeaderValue>| {
            // A value that can't be a header (a control character) is left out, never mangled.
            if let Some(v) = value {
                req.insert_header(name.clone(), v.clone());
            }
        };
        put(&self.user_id, user_id);
        put(&self.user_email, email);
        put(&self.user_name, name);
        put(&self.credential_id, credential_id);
        if let Some(app) = &identity.app {
            let [app_id] = app.header_values();
            put(&self.app_id, app_id);
        }
        put(&self.department, department);
        put(&self.user_type, user_type);
        put(&self.tenant, tenant);
        put(&self.expires_at, expires_at);
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
    use std::sync::Arc;

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

    fn identity(credential: Verified) -> Identity {
        use crate::model::{App, User, UserStatus};
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Identity {
            user: Arc::new(User {
                id: "u1".into(),
                email: "ann@example.com".into(),
                // A control character: can't be a header value, so left out.
                name: "Ann\nInjected: yes".into(),
                department: Some("Sales".into()),
                user_type: Some("member".into()),
                tenant: Some("acme".into()),
                status: UserStatus::Active,
                apps: vec!["bq1".into()],
                password_hash: None,
                created_at: at,
                headers: Default::default(),
            }),
            credential,
            app: Some(Arc::new(App {
                id: "bq1".into(),
                name: "B".into(),
                tenant: Some("acme".into()),
                require_app_token: false,
                created_at: at,
                headers: Default::default(),
            })),
        }
    }

    fn set(identity: &Identity) -> HeaderMap {
        let mut h = HeaderMap::new();
        IdentityHeaders::new("x-auth-")
            .unwrap()
            .set(&mut h, identity);
        h
    }

    #[test]
    fn identity_headers_are_made_once_per_record_and_say_the_same_each_time() {
        use crate::model::{Ticket, UserToken};
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let token = identity(Verified::UserToken(Arc::new(UserToken {
            id: "tok1".into(),
            secret_hash: [0; 32],
            name: "n".into(),
            description: String::new(),
            user_id: "u1".into(),
            apps: vec!["bq1".into()],
            active: true,
            held_by_admin: false,
            expires_at: Some(at),
            // A narrower token: its department replaces the owner's; its user type is unset,
            // so the owner's stands.
            department: Some("Support".into()),
            user_type: None,
            created_at: at,
            last_used_at: None,
            headers: Default::default(),
            used: Default::default(),
        })));
        let first = set(&token);
        let second = set(&token);
        assert_eq!(first, second, "the shared values say what the first made");
        let get = |h: &HeaderMap, name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned());
        for (name, value) in [
            ("x-auth-user-id", Some("u1")),
            ("x-auth-user-email", Some("ann@example.com")),
            ("x-auth-user-name", None),
            ("x-auth-method", Some("user_token")),
            ("x-auth-credential-id", Some("tok1")),
            ("x-auth-app-id", Some("bq1")),
            ("x-auth-department", Some("Support")),
            ("x-auth-user-type", Some("member")),
            ("x-auth-tenant", Some("acme")),
            ("x-auth-expires-at", Some("2023-11-14T22:13:20Z")),
        ] {
            assert_eq!(get(&second, name).as_deref(), value, "{name}");
        }

        // The same user (its values already made) with a ticket.
        let ticket = Identity {
            credential: Verified::Ticket(Arc::new(Ticket {
                id: "tik1".into(),
                secret_hash: [0; 32],
                user_id: "u1".into(),
                issued_at: at,
                expires_at: at,
                last_active_at: None,
                revoked_at: None,
                headers: Default::default(),
                used: Default::default(),
            })),
            ..token.clone()
        };
        let h = set(&ticket);
        assert_eq!(get(&h, "x-auth-department").as_deref(), Some("Sales"));
        assert_eq!(get(&h, "x-auth-credential-id").as_deref(), Some("tik1"));
        assert_eq!(get(&h, "x-auth-method").as_deref(), Some("ticket"));
        assert_eq!(set(&ticket), h);
    }
}
