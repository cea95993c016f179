//! Token formats and hashing. Every secret tokengate issues is `<prefix><id><secret>`: the id
//! makes the lookup, the secret is compared as a SHA-256 hash in constant time. The secrets are
//! 256 random bits, so a fast hash is the right one (argon2 is for passwords people choose).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Lowercase RFC 4648 base32 without padding: `a-z2-7`.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The prefix of each kind of secret. It tells the kind at a glance (and to secret scanners).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    UserToken,
    Ticket,
    AppToken,
    AdminKey,
}

impl TokenKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::UserToken => "tgu_",
            Self::Ticket => "tgt_",
            Self::AppToken => "tga_",
            Self::AdminKey => "tgk_",
        }
    }
}

/// Characters of the id part (10 random bytes).
pub const ID_LEN: usize = 16;
/// Characters of the secret part (32 random bytes).
pub const SECRET_LEN: usize = 52;

/// A freshly made secret: the full token to show once, its id, and the hash to keep.
#[derive(Debug)]
pub struct NewSecret {
    pub token: String,
    pub id: String,
    pub hash: [u8; 32],
}

/// Makes a new secret of `kind` from the operating system's random source.
pub fn generate(kind: TokenKind) -> Result<NewSecret, getrandom::Error> {
    let id = random_base32(ID_LEN)?;
    let secret = random_base32(SECRET_LEN)?;
    let hash = hash_secret(&secret);
    let mut token = String::with_capacity(kind.prefix().len() + ID_LEN + SECRET_LEN);
    token.push_str(kind.prefix());
    token.push_str(&id);
    token.push_str(&secret);
    Ok(NewSecret { token, id, hash })
}

/// A random lowercase base32 string of `len` characters (5 random bits each).
pub fn random_base32(len: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect())
}

/// Splits a presented token of `kind` into (id, secret) when it is well formed.
pub fn parse(kind: TokenKind, token: &str) -> Option<(&str, &str)> {
    let body = token.strip_prefix(kind.prefix())?;
    if body.len() != ID_LEN + SECRET_LEN || !body.bytes().all(is_base32) {
        return None;
    }
    Some(body.split_at(ID_LEN))
}

/// Whether `b` is in [`ALPHABET`] (a range test: scanning the alphabet per character cost
/// more than the rest of a cached lookup).
const fn is_base32(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'2'..=b'7')
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `expected`, in time independent of where they differ.
pub fn secret_matches(secret: &str, expected: &[u8; 32]) -> bool {
    hash_secret(secret).ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_to_their_id_and_hash() {
        let s = generate(TokenKind::UserToken).unwrap();
        assert!(s.token.starts_with("tgu_"));
        assert!(s.token.len() >= 4 + 52);
        let (id, secret) = parse(TokenKind::UserToken, &s.token).unwrap();
        assert_eq!(id, s.id);
        assert!(secret_matches(secret, &s.hash));
        assert!(!secret_matches("nope", &s.hash));
    }

    #[test]
    fn the_range_test_is_the_alphabet() {
        for b in 0..=u8::MAX {
            assert_eq!(is_base32(b), ALPHABET.contains(&b), "byte {b}");
        }
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let s = generate(TokenKind::UserToken).unwrap();
        assert!(parse(TokenKind::Ticket, &s.token).is_none(), "wrong prefix");
        assert!(parse(TokenKind::UserToken, &s.token[..s.token.len() - 1]).is_none());
        assert!(parse(TokenKind::UserToken, &s.token.to_uppercase()).is_none());
        assert!(parse(TokenKind::UserToken, "tgu_garbage").is_none());
        assert!(parse(TokenKind::UserToken, "").is_none());
    }
}
