//! The things tokengate knows about, as plain data: users, apps, user tokens, and the identity
//! a verified credential stands for. No I/O and no policy here; the store keeps these as JSON.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::usage::UseMark;

/// Identity header values made from a cached record's fields once, on the first request it
/// admits, and shared by every later one: a reference count per request instead of an
/// allocation and a copy. Not stored; a clone or a record read again starts empty. Boxed, so a
/// record no request has used carries 16 bytes for them, not `N` × 40.
#[derive(Default)]
pub struct HeaderValues<const N: usize>(OnceLock<Box<[Option<HeaderValue>; N]>>);

impl<const N: usize> HeaderValues<N> {
    /// The values, made by `make` on first use. A field that can't be a header value (a
    /// control character) is `None`: left out, never mangled.
    pub fn get_or_init(
        &self,
        make: impl FnOnce() -> [Option<HeaderValue>; N],
    ) -> &[Option<HeaderValue>; N] {
        self.0.get_or_init(|| Box::new(make()))
    }
}

impl<const N: usize> Clone for HeaderValues<N> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Derived data: two records are equal by their fields alone.
impl<const N: usize> PartialEq for HeaderValues<N> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<const N: usize> std::fmt::Debug for HeaderValues<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderValues")
    }
}

/// A header value of `v`, if it can be one.
fn header_value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(v.as_bytes()).ok()
}

/// An expiry as the identity header carries it (RFC 3339, seconds, `Z`).
fn expiry_value(at: DateTime<Utc>) -> Option<HeaderValue> {
    header_value(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A person or a service account.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub user_type: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    pub status: UserStatus,
    /// App ids the user may use.
    #[serde(default, deserialize_with = "exact_vec")]
    pub apps: Vec<String>,
    /// argon2id PHC string; never leaves the store through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    /// id, email, name, department, user type, tenant (not stored).
    #[serde(skip)]
    pub headers: HeaderValues<6>,
}

/// Everything but the password hash.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("status", &self.status)
            .field("apps", &self.apps)
            .field("has_password", &self.password_hash.is_some())
            .finish_non_exhaustive()
    }
}

impl User {
    /// Its identity header values: id, email, name, department, user type, tenant.
    pub fn header_values(&self) -> &[Option<HeaderValue>; 6] {
        self.headers.get_or_init(|| {
            [
                header_value(&self.id),
                header_value(&self.email),
                header_value(&self.name),
                self.department.as_deref().and_then(header_value),
                self.user_type.as_deref().and_then(header_value),
                self.tenant.as_deref().and_then(header_value),
            ]
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == UserStatus::Active
    }

    pub fn may_use(&self, app: &str) -> bool {
        self.apps.iter().any(|a| a == app)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

/// One protected application (a Quickbase `dbid`, a Knack application).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub require_app_token: bool,
    pub created_at: DateTime<Utc>,
    /// id (not stored).
    #[serde(skip)]
    pub headers: HeaderValues<1>,
}

/// An opaque secret owned by one user, for scripts and integrations. Only the SHA-256 of its
/// secret part is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserToken {
    pub id: String,
    #[serde(with = "hex32")]
    pub secret_hash: [u8; 32],
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub user_id: String,
    /// App ids assigned to this token.
    #[serde(default, deserialize_with = "exact_vec")]
    pub apps: Vec<String>,
    pub active: bool,
    /// Deactivated by an administrator: only an administrator can reactivate it, never its
    /// owner through self-service (the admin may have found it compromised).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_by_admin: bool,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When set, replaces the owner's department for this token (a narrower token).
    #[serde(default)]
    pub department: Option<String>,
    /// When set, replaces the owner's user type for this token.
    #[serde(default)]
    pub user_type: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// id, department, user type, expiry (not stored).
    #[serde(skip)]
    pub headers: HeaderValues<4>,
    /// When this cached copy last reported a use (not stored).
    #[serde(skip)]
    pub used: UseMark,
}

impl UserToken {
    /// Its identity header values: id, department, user type, expiry.
    pub fn header_values(&self) -> &[Option<HeaderValue>; 4] {
        self.headers.get_or_init(|| {
            [
                header_value(&self.id),
                self.department.as_deref().and_then(header_value),
                self.user_type.as_deref().and_then(header_value),
                self.expires_at.and_then(expiry_value),
            ]
        })
    }

    pub fn is_assigned(&self, app: &str) -> bool {
        self.apps.iter().any(|a| a == app)
    }
}

/// Issued when a user signs in with name and password (Quickbase `API_Authenticate`): an
/// opaque `tgt_` secret, revocable, refused once expired. Only the secret's hash is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    #[serde(with = "hex32")]
    pub secret_hash: [u8; 32],
    pub user_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub last_active_at: Option<DateTime<Utc>>,
    /// Set by sign-out or the admin API: the ticket is refused as `token_revoked`.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// id, expiry (not stored).
    #[serde(skip)]
    pub headers: HeaderValues<2>,
    /// When this cached copy last reported a use (not stored).
    #[serde(skip)]
    pub used: UseMark,
}

/// A signed-in session: the server-side half of a session token (JWT), kept for listing,
/// last activity and revocation. The token itself carries `sid` = `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    /// The app the session is bound to, if it was opened for one.
    #[serde(default)]
    pub app: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub remember_me: bool,
    #[serde(default)]
    pub last_active_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Another issuer's token (an OIDC provider's), held only in memory: tokengate can't
    /// revoke it, so it can't be used to make tokengate's own credentials.
    #[serde(skip)]
    pub external: bool,
    /// id, expiry (not stored).
    #[serde(skip)]
    pub headers: HeaderValues<2>,
    /// When this cached copy last reported a use (not stored).
    #[serde(skip)]
    pub used: UseMark,
}

/// A per-app secret: the second factor a ticket needs where the app has `require_app_token`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppToken {
    pub id: String,
    #[serde(with = "hex32")]
    pub secret_hash: [u8; 32],
    pub app_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// How a request proved who it is. Also the `method` label of the decision metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    UserToken,
    Ticket,
    Session,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 3] = [Self::UserToken, Self::Ticket, Self::Session];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserToken => "user_token",
            Self::Ticket => "ticket",
            Self::Session => "session",
        }
    }
}

/// A credential that passed verification: the cached record itself, shared, never copied.
#[derive(Clone, Debug)]
pub enum Verified {
    UserToken(Arc<UserToken>),
    Ticket(Arc<Ticket>),
    Session(Arc<Session>),
}

/// Who a verified credential stands for, as the upstream will be told. Holds the cached records
/// (reference-counted), so building one on a cache hit copies no strings.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: Arc<User>,
    pub credential: Verified,
    /// The app the request targets, when the route names one.
    pub app: Option<Arc<App>>,
}

impl App {
    /// Its identity header value: id.
    pub fn header_values(&self) -> &[Option<HeaderValue>; 1] {
        self.headers.get_or_init(|| [header_value(&self.id)])
    }
}

impl Ticket {
    /// Its identity header values: id, expiry.
    pub fn header_values(&self) -> &[Option<HeaderValue>; 2] {
        self.headers
            .get_or_init(|| [header_value(&self.id), expiry_value(self.expires_at)])
    }
}

impl Session {
    /// Its identity header values: id, expiry.
    pub fn header_values(&self) -> &[Option<HeaderValue>; 2] {
        self.headers
            .get_or_init(|| [header_value(&self.id), expiry_value(self.expires_at)])
    }
}

impl Identity {
    pub fn method(&self) -> CredentialKind {
        match self.credential {
            Verified::UserToken(_) => CredentialKind::UserToken,
            Verified::Ticket(_) => CredentialKind::Ticket,
            Verified::Session(_) => CredentialKind::Session,
        }
    }

    /// The user token's id, the ticket's id or the session's `sid`; never a secret.
    pub fn credential_id(&self) -> &str {
        match &self.credential {
            Verified::UserToken(t) => &t.id,
            Verified::Ticket(t) => &t.id,
            Verified::Session(s) => &s.id,
        }
    }

    /// The token's own department where it narrows the owner's, else the owner's.
    pub fn department(&self) -> Option<&str> {
        match &self.credential {
            Verified::UserToken(t) => t.department.as_deref(),
            Verified::Ticket(_) | Verified::Session(_) => None,
        }
        .or(self.user.department.as_deref())
    }

    pub fn user_type(&self) -> Option<&str> {
        match &self.credential {
            Verified::UserToken(t) => t.user_type.as_deref(),
            Verified::Ticket(_) | Verified::Session(_) => None,
        }
        .or(self.user.user_type.as_deref())
    }

    pub fn tenant(&self) -> Option<&str> {
        self.user.tenant.as_deref()
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match &self.credential {
            Verified::UserToken(t) => t.expires_at,
            Verified::Ticket(t) => Some(t.expires_at),
            Verified::Session(s) => Some(s.expires_at),
        }
    }

    pub fn app_id(&self) -> Option<&str> {
        self.app.as_deref().map(|a| a.id.as_str())
    }
}

/// A list decoded with no spare room: a decoded `Vec` grows by doubling (two apps take room for
/// four), and cached records are held by the million.
fn exact_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let mut v = Vec::<String>::deserialize(d)?;
    v.shrink_to_fit();
    Ok(v)
}

/// Serialises a 32-byte hash as lowercase hex.
mod hex32 {
    use data_encoding::HEXLOWER;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&HEXLOWER.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let bytes = HEXLOWER
            .decode(s.as_bytes())
            .map_err(|e| D::Error::custom(format!("secret_hash: {e}")))?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom("secret_hash: expected 32 bytes"))
    }
}
