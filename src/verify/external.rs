//! JWTs from other issuers (`[[sessions.issuers]]`, an OIDC provider): verified by the keys the
//! issuer publishes at its `jwks_url`, which are fetched in the background and refreshed as its
//! cache headers say (between a minute and a day); a token with a key id the set doesn't know
//! triggers one refresh, at most every [`UNKNOWN_KID_REFRESH`], so a flood of made-up key ids
//! can't turn into a flood of fetches. `iss` and `aud` must match; `user_claim` names the
//! tokengate user.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::AuthError;
use crate::jwt::{JwtError, KeySet, VerifyRules};

/// The least time between two refreshes asked for by unknown key ids.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(30);
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// One configured issuer.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    pub user_claim: String,
    pub leeway_secs: u64,
}

/// What a verified external token says.
#[derive(Debug)]
pub struct ExternalClaims {
    pub user_id: String,
    /// `jti` when the token has one, else a digest of the token: never the token.
    pub token_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

pub struct ExternalIssuer {
    pub config: IssuerConfig,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When a refresh for an unknown key id last ran.
    last_forced: Mutex<Option<Instant>>,
    refresh_lock: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    /// Fetches made, for tests and metrics.
    pub fetches: std::sync::atomic::AtomicU64,
}

impl ExternalIssuer {
    pub fn new(config: IssuerConfig) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            config,
            keys: RwLock::new(None),
            last_forced: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            client,
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    /// Fetches the JWKS; returns how long it may be kept.
    pub async fn refresh(&self) -> Result<Duration, String> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = self
            .client
            .get(&self.config.jwks_url)
            .send()
            .await
            .map_err(|e| format!("fetching {}: {e}", self.config.jwks_url))?;
        if !resp.status().is_success() {
            return Err(format!(
                "{} answered {}",
                self.config.jwks_url,
                resp.status()
            ));
        }
        let max_age = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let import = KeySet::from_jwks_bytes(&body).map_err(|e| e.to_string())?;
        for skipped in &import.skipped {
            tracing::info!(issuer = %self.config.issuer, kid = ?skipped.kid, reason = skipped.reason, "JWKS key skipped");
        }
        if let Ok(mut keys) = self.keys.write() {
            *keys = Some(Arc::new(import.keys));
        }
        Ok(max_age
            .unwrap_or(DEFAULT_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH))
    }

    /// Refreshes now unless a forced refresh ran within [`UNKNOWN_KID_REFRESH`].
    async fn refresh_for_unknown_kid(&self) -> bool {
        {
            let Ok(mut last) = self.last_forced.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFRESH) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "JWKS refresh failed");
                false
            }
        }
    }

    /// Keeps the keys fresh until `shutdown`.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let wait = match self.refresh().await {
                Ok(keep) => {
                    failures = 0;
                    keep
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(issuer = %self.config.issuer, error = %e, "JWKS fetch failed; retrying");
                    Duration::from_secs((5u64 << failures.min(6)).min(300))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn check(&self, keys: &KeySet, token: &str, now: i64) -> Result<Value, JwtError> {
        let rules = VerifyRules {
            issuer: &self.config.issuer,
            audience: &self.config.audience,
            leeway_secs: self.config.leeway_secs,
            now,
        };
        keys.verify_claims::<Value>(token, &rules)
    }

    /// Verifies a token of this issuer.
    pub async fn verify(&self, token: &str, now: i64) -> Result<ExternalClaims, AuthError> {
        let keys = self.keys().ok_or(AuthError::AuthUnavailable)?;
        let claims = match self.check(&keys, token, now) {
            Err(JwtError::UnknownKey) if self.refresh_for_unknown_kid().await => {
                let keys = self.keys().ok_or(AuthError::AuthUnavailable)?;
                self.check(&keys, token, now)
            }
            other => other,
        }
        .map_err(|e| match e {
            JwtError::Expired => AuthError::TokenExpired,
            _ => AuthError::InvalidToken,
        })?;
        let user_id = match claims.get(&self.config.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(AuthError::InvalidToken),
        };
        let time = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_f64)
                .and_then(|t| DateTime::from_timestamp(t as i64, 0))
        };
        let expires_at = time("exp").ok_or(AuthError::InvalidToken)?;
        let issued_at = time("iat").unwrap_or(expires_at);
        let token_id = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) if !jti.is_empty() => jti.chars().take(64).collect(),
            _ => data_encoding::HEXLOWER.encode(&crate::jwt::token_digest(token)[..8]),
        };
        Ok(ExternalClaims {
            user_id,
            token_id,
            issued_at,
            expires_at,
        })
    }
}

/// `max-age` of a `Cache-Control` value (`no-cache`/`no-store`: refresh soon).
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        let (k, v) = d.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| {
                v.trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            })
            .flatten()
    })
}

/// The `iss` of a JWT, read without verifying anything: only to choose who verifies it.
pub fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.trim_end_matches('=').as_bytes())
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
    }

    #[test]
    fn the_issuer_is_read_without_verifying() {
        let payload = data_encoding::BASE64URL_NOPAD.encode(br#"{"iss":"https://idp"}"#);
        assert_eq!(
            peek_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://idp")
        );
        assert_eq!(peek_issuer("garbage"), None);
    }
}
