//! Every way a request can be refused (PRODUCT.md §4), and the one place where each becomes a
//! status, a stable code, a sentence and a body. The client gets the code and the sentence; the
//! cause goes to the log; a secret goes to neither.

use http::StatusCode;

/// Why a request is refused. `Copy` and allocation-free: the reason is a label, not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("a credential is required")]
    MissingCredentials,
    #[error("the credential is malformed, unknown or wrong")]
    InvalidToken,
    #[error("the credential has expired")]
    TokenExpired,
    #[error("the credential is deactivated")]
    TokenInactive,
    #[error("the credential has been revoked")]
    TokenRevoked,
    #[error("the credential's user is disabled or deleted")]
    UserDisabled,
    #[error("this app requires an application token")]
    AppTokenRequired,
    #[error("the application token is not valid for this app")]
    InvalidAppToken,
    #[error("the credential may not be used with this app")]
    AppNotAllowed,
    #[error("this kind of credential is not accepted here")]
    CredentialNotAllowed,
    #[error("the user's type or department is not allowed here")]
    Forbidden,
    #[error("the same kind of credential was given twice with different values")]
    AmbiguousCredentials,
    #[error("too many failed attempts from this client")]
    TooManyFailures,
    #[error("authentication is unavailable right now; try again shortly")]
    AuthUnavailable,
    #[error("the upstream service is unavailable")]
    UpstreamUnavailable,
    #[error("the request body is larger than tokengate reads")]
    BodyTooLarge,
    #[error("the XML body is not well formed")]
    MalformedBody,
    #[error("the request's path, action or app is malformed or given more than once")]
    BadRequest,
}

impl AuthError {
    pub const ALL: [AuthError; 19] = [
        Self::NoRoute,
        Self::MissingCredentials,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::TokenInactive,
        Self::TokenRevoked,
        Self::UserDisabled,
        Self::AppTokenRequired,
        Self::InvalidAppToken,
        Self::AppNotAllowed,
        Self::CredentialNotAllowed,
        Self::Forbidden,
        Self::AmbiguousCredentials,
        Self::TooManyFailures,
        Self::AuthUnavailable,
        Self::UpstreamUnavailable,
        Self::BodyTooLarge,
        Self::MalformedBody,
        Self::BadRequest,
    ];

    /// The stable `error` code of the contract.
    pub const fn code(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::MissingCredentials => "missing_credentials",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::TokenInactive => "token_inactive",
            Self::TokenRevoked => "token_revoked",
            Self::UserDisabled => "user_disabled",
            Self::AppTokenRequired => "app_token_required",
            Self::InvalidAppToken => "invalid_app_token",
            Self::AppNotAllowed => "app_not_allowed",
            Self::CredentialNotAllowed => "credential_not_allowed",
            Self::Forbidden => "forbidden",
            Self::AmbiguousCredentials => "ambiguous_credentials",
            Self::TooManyFailures => "too_many_failures",
            Self::AuthUnavailable => "auth_unavailable",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::BodyTooLarge => "body_too_large",
            Self::MalformedBody => "malformed_body",
            Self::BadRequest => "bad_request",
        }
    }

    pub const fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MissingCredentials
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::TokenInactive
            | Self::TokenRevoked
            | Self::UserDisabled
            | Self::AppTokenRequired
            | Self::InvalidAppToken => StatusCode::UNAUTHORIZED,
            Self::AppNotAllowed | Self::CredentialNotAllowed | Self::Forbidden => {
                StatusCode::FORBIDDEN
            }
            Self::AmbiguousCredentials | Self::MalformedBody | Self::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
            Self::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
        }
    }

    /// A credential that was presented and failed: what `limits.failures_per_minute` counts.
    pub const fn is_credential_failure(self) -> bool {
        matches!(
            self,
            Self::InvalidToken
                | Self::TokenExpired
                | Self::TokenInactive
                | Self::TokenRevoked
                | Self::UserDisabled
                | Self::InvalidAppToken
        )
    }

    /// `deny` for a decision about the credential, `error` when tokengate couldn't decide.
    pub const fn outcome(self) -> &'static str {
        match self {
            Self::AuthUnavailable | Self::UpstreamUnavailable => "error",
            _ => "deny",
        }
    }

    /// Seconds a client should wait before retrying, where waiting helps.
    pub const fn retry_after(self) -> Option<u32> {
        match self {
            Self::AuthUnavailable => Some(5),
            Self::TooManyFailures => Some(60),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 style).
    pub fn challenge(self) -> Option<String> {
        match self.status() {
            StatusCode::UNAUTHORIZED => Some(match self {
                Self::MissingCredentials => r#"Bearer realm="tokengate""#.to_owned(),
                other => format!(r#"Bearer realm="tokengate", error="{}""#, other.code()),
            }),
            _ => None,
        }
    }

    /// Quickbase's error code for this refusal (its XML API's `<errcode>`).
    pub const fn qdbapi_code(self) -> u32 {
        match self {
            Self::MissingCredentials => 22,
            Self::InvalidToken
            | Self::TokenExpired
            | Self::TokenInactive
            | Self::TokenRevoked
            | Self::UserDisabled => 4,
            Self::AppTokenRequired | Self::InvalidAppToken => 24,
            Self::NoRoute | Self::AppNotAllowed | Self::CredentialNotAllowed | Self::Forbidden => {
                83
            }
            Self::TooManyFailures => 77,
            Self::AmbiguousCredentials
            | Self::MalformedBody
            | Self::BodyTooLarge
            | Self::BadRequest => 2,
            Self::AuthUnavailable | Self::UpstreamUnavailable => 100,
        }
    }

    /// `<qdbapi>` with `<action>`, `<errcode>`, `<errtext>`, as Quickbase answers.
    pub fn qdbapi_body(self, action: &str, request_id: &str) -> Vec<u8> {
        qdbapi(
            action,
            self.qdbapi_code(),
            &self.to_string(),
            &[("request_id", request_id)],
        )
    }

    /// `{"error", "message", "request_id"}`.
    pub fn json_body(self, request_id: &str) -> Vec<u8> {
        serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": request_id,
        })
        .to_string()
        .into_bytes()
    }
}

/// A `<qdbapi>` answer: action, errcode, errtext, then `extra` elements, all escaped.
pub fn qdbapi(action: &str, errcode: u32, errtext: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    use std::fmt::Write;
    let mut out = String::from("<?xml version=\"1.0\" ?>\n<qdbapi>\n");
    let _ = writeln!(out, "   <action>{}</action>", escape(action));
    let _ = writeln!(out, "   <errcode>{errcode}</errcode>");
    let _ = writeln!(out, "   <errtext>{}</errtext>", escape(errtext));
    for (name, value) in extra {
        let _ = writeln!(out, "   <{name}>{}</{name}>", escape(value));
    }
    out.push_str("</qdbapi>\n");
    out.into_bytes()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_distinct_code_and_a_body() {
        let mut codes: Vec<_> = AuthError::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), AuthError::ALL.len());
        let body: serde_json::Value =
            serde_json::from_slice(&AuthError::InvalidToken.json_body("r1")).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["request_id"], "r1");
        assert!(AuthError::InvalidToken.challenge().is_some());
        assert!(AuthError::AppNotAllowed.challenge().is_none());
    }
}
