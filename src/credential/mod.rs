//! Finds the credentials on a request (PRODUCT.md §2): the `Authorization` header, the query,
//! the ticket cookie and the `QB-App-Token` header. It only reads; it verifies nothing and
//! never logs a value. XML bodies are read by the proxy and offered here with [`Found::offer`].

pub mod format;
pub mod xml;

use std::borrow::Cow;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName};
use percent_encoding::percent_decode_str;

pub use crate::model::CredentialKind;

/// Where a credential was found; the proxy removes it from there before forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub authorization: bool,
    pub query: bool,
    pub cookie: bool,
    pub app_token_header: bool,
    pub xml_body: bool,
}

/// Which slot a credential goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    UserToken,
    Session,
    Ticket,
    AppToken,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Self::UserToken => "user token",
            Self::Session => "session token",
            Self::Ticket => "ticket",
            Self::AppToken => "app token",
        }
    }
}

/// Everything credential-like on one request, borrowed from it where possible.
#[derive(Default)]
pub struct Found<'a> {
    pub user_token: Option<Cow<'a, str>>,
    pub session: Option<Cow<'a, str>>,
    pub ticket: Option<Cow<'a, str>>,
    pub app_token: Option<Cow<'a, str>>,
    pub sources: Sources,
}

/// Which kinds were found and where; never the values.
impl std::fmt::Debug for Found<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("user_token", &self.user_token.is_some())
            .field("session", &self.session.is_some())
            .field("ticket", &self.ticket.is_some())
            .field("app_token", &self.app_token.is_some())
            .field("sources", &self.sources)
            .finish()
    }
}

/// The same kind of credential was given twice with different values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous(pub Slot);

impl<'a> Found<'a> {
    /// The credential that decides, by the precedence of §2: user token, then session, then
    /// ticket. App tokens are a second factor, never the primary credential.
    pub fn primary(&self) -> Option<(CredentialKind, &str)> {
        if let Some(t) = &self.user_token {
            return Some((CredentialKind::UserToken, t));
        }
        if let Some(s) = &self.session {
            return Some((CredentialKind::Session, s));
        }
        self.ticket.as_deref().map(|t| (CredentialKind::Ticket, t))
    }

    pub fn is_empty(&self) -> bool {
        self.primary().is_none() && self.app_token.is_none()
    }

    /// Records a credential; the same value twice is fine, two different values are not.
    pub fn offer(&mut self, slot: Slot, value: Cow<'a, str>) -> Result<(), Ambiguous> {
        let place = match slot {
            Slot::UserToken => &mut self.user_token,
            Slot::Session => &mut self.session,
            Slot::Ticket => &mut self.ticket,
            Slot::AppToken => &mut self.app_token,
        };
        match place {
            Some(existing) if *existing != value => Err(Ambiguous(slot)),
            Some(_) => Ok(()),
            None => {
                *place = Some(value);
                Ok(())
            }
        }
    }
}

/// The names tokengate reads credentials from (the cookie's is configurable).
#[derive(Clone, Debug)]
pub struct CredentialNames {
    pub ticket_cookie: String,
}

impl Default for CredentialNames {
    fn default() -> Self {
        Self {
            ticket_cookie: "TICKET".to_owned(),
        }
    }
}

pub const QB_APP_TOKEN: &str = "qb-app-token";
/// The same, as a header name made once (a `&str` name is parsed at every lookup).
pub const QB_APP_TOKEN_HEADER: HeaderName = HeaderName::from_static(QB_APP_TOKEN);
/// Query parameters that carry credentials, with their slots.
pub const QUERY_PARAMS: [(&str, Slot); 3] = [
    ("usertoken", Slot::UserToken),
    ("ticket", Slot::Ticket),
    ("apptoken", Slot::AppToken),
];

/// Reads every credential on the request's headers and query.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    names: &CredentialNames,
) -> Result<Found<'a>, Ambiguous> {
    let mut found = Found::default();
    for value in headers.get_all(AUTHORIZATION) {
        let Ok(value) = value.to_str() else { continue };
        if let Some((slot, cred)) = classify_authorization(value) {
            found.offer(slot, Cow::Borrowed(cred))?;
            found.sources.authorization = true;
        }
    }
    if let Some(query) = query {
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some((_, slot)) = QUERY_PARAMS.iter().find(|(name, _)| *name == key) else {
                continue;
            };
            found.offer(*slot, decode(value))?;
            found.sources.query = true;
        }
    }
    for value in headers.get_all(COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for (name, cookie) in cookies(value) {
            if name == names.ticket_cookie {
                found.offer(Slot::Ticket, Cow::Borrowed(cookie))?;
                found.sources.cookie = true;
            }
        }
    }
    for value in headers.get_all(&QB_APP_TOKEN_HEADER) {
        let Ok(value) = value.to_str() else { continue };
        found.offer(Slot::AppToken, Cow::Borrowed(value.trim()))?;
        found.sources.app_token_header = true;
    }
    Ok(found)
}

/// What an `Authorization` value holds, if it is a credential tokengate knows. Other schemes
/// (Basic, Digest, ...) are not ours: they are left alone.
pub fn classify_authorization(value: &str) -> Option<(Slot, &str)> {
    let value = value.trim();
    let (scheme, rest) = match value.split_once(' ') {
        Some((scheme, rest)) => (scheme, rest.trim()),
        None => ("", value),
    };
    if scheme.eq_ignore_ascii_case("QB-USER-TOKEN") {
        return Some((Slot::UserToken, rest));
    }
    if scheme.eq_ignore_ascii_case("Bearer") {
        let slot = if rest.starts_with(format::TokenKind::UserToken.prefix()) {
            Slot::UserToken
        } else if rest.starts_with(format::TokenKind::Ticket.prefix()) {
            Slot::Ticket
        } else {
            Slot::Session
        };
        return Some((slot, rest));
    }
    if scheme.is_empty() && looks_like_jwt(rest) {
        return Some((Slot::Session, rest));
    }
    None
}

/// Three non-empty base64url parts separated by dots (a Knack-style bare JWT).
fn looks_like_jwt(s: &str) -> bool {
    let mut parts = 0;
    for part in s.split('.') {
        parts += 1;
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

/// `name=value` pairs of a `Cookie` header.
pub fn cookies(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        Some((name.trim(), value.trim().trim_matches('"')))
    })
}

fn decode(value: &str) -> Cow<'_, str> {
    if value.contains(['%', '+']) {
        let spaced = value.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn names() -> CredentialNames {
        CredentialNames::default()
    }

    #[test]
    fn reads_each_place() {
        let h = headers(&[("authorization", "QB-USER-TOKEN tgu_abc")]);
        let f = extract(&h, None, &names()).unwrap();
        assert_eq!(f.primary(), Some((CredentialKind::UserToken, "tgu_abc")));
        assert!(f.sources.authorization);

        let h = headers(&[("authorization", "Bearer tgt_abc")]);
        let f = extract(&h, None, &names()).unwrap();
        assert_eq!(f.primary(), Some((CredentialKind::Ticket, "tgt_abc")));

        let h = headers(&[("authorization", "Bearer aaa.bbb.ccc")]);
        let f = extract(&h, None, &names()).unwrap();
        assert_eq!(f.primary(), Some((CredentialKind::Session, "aaa.bbb.ccc")));

        let h = headers(&[("authorization", "aaa.bbb.ccc")]);
        let f = extract(&h, None, &names()).unwrap();
        assert_eq!(f.primary(), Some((CredentialKind::Session, "aaa.bbb.ccc")));

        let h = headers(&[
            ("cookie", "a=b; TICKET=tgt_x; c=d"),
            ("qb-app-token", "tga_y"),
        ]);
        let f = extract(&h, Some("a=API_DoQuery"), &names()).unwrap();
        assert_eq!(f.primary(), Some((CredentialKind::Ticket, "tgt_x")));
        assert_eq!(f.app_token.as_deref(), Some("tga_y"));
        assert!(f.sources.cookie && f.sources.app_token_header && !f.sources.query);

        let empty = HeaderMap::new();
        let f = extract(
            &empty,
            Some("a=1&usertoken=tgu_q&apptoken=tga%5Fz"),
            &names(),
        )
        .unwrap();
        assert_eq!(f.user_token.as_deref(), Some("tgu_q"));
        assert_eq!(f.app_token.as_deref(), Some("tga_z"));
        assert!(f.sources.query);
    }

    #[test]
    fn other_schemes_are_not_ours() {
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        let f = extract(&h, None, &names()).unwrap();
        assert!(f.is_empty());
        assert!(!f.sources.authorization);
    }

    #[test]
    fn precedence_is_user_token_then_session_then_ticket() {
        let h = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("cookie", "TICKET=tgt_1"),
        ]);
        let f = extract(&h, Some("usertoken=tgu_1"), &names()).unwrap();
        assert_eq!(f.primary(), Some((CredentialKind::UserToken, "tgu_1")));
        let f = extract(&h, None, &names()).unwrap();
        assert_eq!(f.primary(), Some((CredentialKind::Session, "a.b.c")));
    }

    #[test]
    fn one_kind_twice_is_ambiguous_only_when_values_differ() {
        let h = headers(&[("authorization", "QB-USER-TOKEN tgu_1")]);
        assert!(extract(&h, Some("usertoken=tgu_1"), &names()).is_ok());
        assert_eq!(
            extract(&h, Some("usertoken=tgu_2"), &names()).unwrap_err(),
            Ambiguous(Slot::UserToken)
        );
        assert_eq!(
            extract(
                &HeaderMap::new(),
                Some("ticket=tgt_1&ticket=tgt_2"),
                &names()
            )
            .unwrap_err(),
            Ambiguous(Slot::Ticket)
        );
    }
}
