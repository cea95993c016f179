//! JSON Web Keys: the public half of a key ([`PublicKey`]) and its JWK form (RFC 7517/7518,
//! RFC 8037 for Ed25519), and reading another issuer's JWKS into a verifying-only key set
//! ([`JwksImport`]).
//!
//! Must not: publish or accept private or symmetric material. A JWK with private members
//! (`d`, `p`, ...) or of type `oct` is skipped, never used: a key published with its private
//! half is compromised, and an HMAC key from a JWKS would let its publisher's readers forge.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey};
use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value, json};

use super::key::{VerifyingKey, fingerprint};
use super::{Algorithm, KeyError, KeySet};

/// Members that only a private or symmetric JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// A kid from someone else's JWKS longer than this is not one we keep around.
const MAX_FOREIGN_KID: usize = 256;

/// The public half of an asymmetric key, in the raw forms JWK and the verifiers use.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// The 32-byte Ed25519 public key.
    Ed25519 { x: Vec<u8> },
    /// The P-256 point's coordinates, 32 bytes each.
    P256 { x: Vec<u8>, y: Vec<u8> },
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl PublicKey {
    /// From an uncompressed SEC1 P-256 point (`04 || x || y`), as aws-lc gives it.
    pub(crate) fn from_sec1_point(point: &[u8]) -> Option<Self> {
        match point {
            [0x04, coordinates @ ..] if coordinates.len() == 64 => {
                let (x, y) = coordinates.split_at(32);
                Some(PublicKey::P256 {
                    x: x.to_vec(),
                    y: y.to_vec(),
                })
            }
            _ => None,
        }
    }

    /// The key in the form jsonwebtoken verifies with, valid for both of its backends.
    pub(crate) fn decoding_key(&self) -> DecodingKey {
        match self {
            PublicKey::Ed25519 { x } => DecodingKey::from_ed_der(x),
            PublicKey::P256 { x, y } => {
                DecodingKey::from_ec_der(&[&[0x04], &x[..], &y[..]].concat())
            }
            PublicKey::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
        }
    }

    /// The public JWK: public members, `kid`, `alg` and `use: "sig"`.
    pub(crate) fn to_jwk(&self, kid: &str, algorithm: Algorithm) -> Value {
        let b64 = |bytes: &[u8]| BASE64URL_NOPAD.encode(bytes);
        let mut jwk = match self {
            PublicKey::Ed25519 { x } => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(x)}),
            PublicKey::P256 { x, y } => {
                json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)})
            }
            PublicKey::Rsa { n, e } => json!({"kty": "RSA", "n": b64(n), "e": b64(e)}),
        };
        if let Some(members) = jwk.as_object_mut() {
            members.insert("kid".into(), kid.into());
            members.insert("alg".into(), algorithm.as_str().into());
            members.insert("use".into(), "sig".into());
        }
        jwk
    }

    /// A kid derived from the public key alone, so a key loaded from a file keeps its kid.
    pub(crate) fn fingerprint(&self, algorithm: Algorithm) -> String {
        match self {
            PublicKey::Ed25519 { x } => fingerprint(algorithm, &[x]),
            PublicKey::P256 { x, y } => fingerprint(algorithm, &[x, y]),
            PublicKey::Rsa { n, e } => fingerprint(algorithm, &[n, e]),
        }
    }
}

/// The result of reading a JWKS: the keys that can verify, and the ones left out and why.
#[derive(Debug, Clone)]
pub struct JwksImport {
    /// A verifying-only key set (it can't sign): one entry per usable key.
    pub keys: KeySet,
    /// Keys that were left out (encryption keys, unsupported types or algorithms, ...).
    pub skipped: Vec<SkippedJwk>,
}

/// One JWK that was left out of a [`JwksImport`], for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedJwk {
    /// Its `kid`, if it had a string one.
    pub kid: Option<String>,
    /// Why it was left out: a fixed sentence.
    pub reason: &'static str,
}

/// Reads `{"keys": [...]}`. Unusable keys are skipped (and listed); a document that is not a
/// JWKS, two usable keys with one kid, or no usable key at all is an error.
pub(crate) fn import(document: &Value) -> Result<JwksImport, KeyError> {
    let jwks = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(KeyError::InvalidJwks("no \"keys\" array"))?;
    let mut keys = KeySet::new();
    let mut skipped = Vec::new();
    for jwk in jwks {
        match verifying_key(jwk) {
            Ok(key) => keys.insert_verifying(key)?,
            Err(reason) => skipped.push(SkippedJwk {
                kid: jwk
                    .get("kid")
                    .and_then(Value::as_str)
                    .filter(|kid| kid.len() <= MAX_FOREIGN_KID)
                    .map(str::to_owned),
                reason,
            }),
        }
    }
    if keys.is_empty() {
        return Err(KeyError::InvalidJwks("no usable signature key"));
    }
    Ok(JwksImport { keys, skipped })
}

/// One JWK as a verifying key, or why it can't be one.
fn verifying_key(jwk: &Value) -> Result<VerifyingKey, &'static str> {
    let jwk = jwk.as_object().ok_or("not a JSON object")?;
    let kty = string_member(jwk, "kty")?.ok_or("no kty")?;
    if kty == "oct" {
        return Err("symmetric keys are never taken from a JWKS");
    }
    if PRIVATE_MEMBERS
        .iter()
        .any(|member| jwk.contains_key(*member))
    {
        return Err("private key material is published with it");
    }
    let kid = string_member(jwk, "kid")?
        .filter(|kid| !kid.is_empty())
        .ok_or("no kid")?;
    if kid.len() > MAX_FOREIGN_KID {
        return Err("kid too long");
    }
    if string_member(jwk, "use")?.is_some_and(|key_use| key_use != "sig") {
        return Err("not a signature key (use)");
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("key_ops does not include verify");
        }
    }
    let alg = string_member(jwk, "alg")?;
    // A missing `alg` is inferred from the key type: each type maps to the one algorithm of
    // that family that tokengate supports, so pinning still holds.
    let (algorithm, public) = match kty {
        "OKP" => {
            if string_member(jwk, "crv")? != Some("Ed25519") {
                return Err("unsupported OKP curve (only Ed25519)");
            }
            let x = coordinate(jwk, "x", 32)?;
            ParsedPublicKey::new(&ED25519, &x).map_err(|_| "not a valid Ed25519 public key")?;
            (Algorithm::EdDSA, PublicKey::Ed25519 { x })
        }
        "EC" => {
            if string_member(jwk, "crv")? != Some("P-256") {
                return Err("unsupported EC curve (only P-256)");
            }
            let x = coordinate(jwk, "x", 32)?;
            let y = coordinate(jwk, "y", 32)?;
            let point = [&[0x04], &x[..], &y[..]].concat();
            // Refuse a point that is not on the curve now, not at every verification.
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .map_err(|_| "not a valid P-256 public key")?;
            (Algorithm::ES256, PublicKey::P256 { x, y })
        }
        "RSA" => {
            let n = strip_leading_zeros(base64url_member(jwk, "n")?);
            let e = strip_leading_zeros(base64url_member(jwk, "e")?);
            let bits = bit_length(&n);
            if !(2048..=8192).contains(&bits) {
                return Err("RSA modulus must have 2048 to 8192 bits");
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent out of range");
            }
            (Algorithm::RS256, PublicKey::Rsa { n, e })
        }
        _ => return Err("unsupported kty"),
    };
    if alg.is_some_and(|alg| alg != algorithm.as_str()) {
        return Err("unsupported alg for this key type");
    }
    Ok(VerifyingKey::from_public(kid.to_owned(), algorithm, public))
}

/// `Ok(None)` when absent; an error when present but not a string.
fn string_member<'a>(
    jwk: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, &'static str> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err("a JWK member that should be a string is not"),
    }
}

/// A base64url member; trailing `=` is tolerated since some issuers pad despite RFC 7515 §2.
fn base64url_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, &'static str> {
    let text = string_member(jwk, name)?.ok_or("a required key member is missing")?;
    BASE64URL_NOPAD
        .decode(text.trim_end_matches('=').as_bytes())
        .map_err(|_| "a key member is not base64url")
}

fn coordinate(jwk: &Map<String, Value>, name: &str, len: usize) -> Result<Vec<u8>, &'static str> {
    let bytes = base64url_member(jwk, name)?;
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err("a key coordinate has the wrong length")
    }
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&byte| byte == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn bit_length(big_endian: &[u8]) -> usize {
    match big_endian.first() {
        Some(&first) => (big_endian.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}
