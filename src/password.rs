//! Passwords: argon2id PHC strings (RustCrypto's `argon2`, default parameters). Hashing and
//! checking cost tens of milliseconds and ~19 MiB on purpose, so both run on the blocking pool,
//! and only a few at once: a flood of sign-ins waits its turn instead of exhausting memory and
//! the pool the embedded store also uses.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// How many hashes run at once.
static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// A PHC string for `password`.
pub async fn hash(password: String) -> Result<String, String> {
    let _permit = PERMITS.acquire().await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A hash of a password nobody has, checked when the user is unknown so that "no such user"
/// takes as long as "wrong password".
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$yHN6H5Hp7MLpk0bXJiHf/8BQYHFQ6Dd0G3bSUPh1vO8";

/// Whether `password` matches `phc` (`None`: the user has no password, or doesn't exist).
pub async fn verify(password: String, phc: Option<String>) -> bool {
    let known = phc.is_some();
    let phc = phc.unwrap_or_else(|| DECOY.to_owned());
    let Ok(_permit) = PERMITS.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && known
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_hash_checks_its_password_only() {
        let h = super::hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse".into(), Some(h.clone())).await);
        assert!(!super::verify("wrong".into(), Some(h)).await);
        assert!(!super::verify("anything".into(), None).await);
    }
}
