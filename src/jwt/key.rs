//! One key: a [`SigningKey`] (private material, its algorithm and kid) and the public half
//! every key in a set has ([`VerifyingKey`]); generating keys, loading them from PKCS#8 PEM/DER
//! or an HMAC secret, and exporting them for the store ([`ExportedKey`]).
//!
//! Must not: print or serialise private material anywhere but [`SigningKey::export`] and
//! [`SigningKey::to_pem`] (the `Debug` impls redact it), or accept a key that is not of the
//! algorithm it is loaded as.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use data_encoding::{BASE64, HEXLOWER};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::jwk::PublicKey;
use super::{Algorithm, KeyError};

/// The shortest HS256 secret accepted: 256 bits, the size of the hash (RFC 7518 §3.2).
pub(crate) const MIN_HMAC_SECRET: usize = 32;
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// The part of a key that verifies: what every entry of a key set has, private or not.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) kid: String,
    pub(crate) algorithm: Algorithm,
    pub(crate) decoding: DecodingKey,
    /// `None` for HS256: a shared secret has no public half to publish.
    pub(crate) public: Option<PublicKey>,
}

impl VerifyingKey {
    pub(crate) fn from_public(kid: String, algorithm: Algorithm, public: PublicKey) -> Self {
        VerifyingKey {
            kid,
            algorithm,
            decoding: public.decoding_key(),
            public: Some(public),
        }
    }

    /// The public JWK (with `kid`, `alg`, `use`), or `None` for an HMAC key.
    pub(crate) fn jwk(&self) -> Option<Value> {
        self.public
            .as_ref()
            .map(|public| public.to_jwk(&self.kid, self.algorithm))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A private key that signs tokens: its kid, its algorithm, and the private material (PKCS#8
/// DER for EdDSA/ES256/RS256, the raw secret for HS256).
#[derive(Clone)]
pub struct SigningKey {
    pub(crate) verifying: VerifyingKey,
    pub(crate) encoding: EncodingKey,
    /// Kept only to export the key again; jsonwebtoken's `EncodingKey` hides its own copy.
    material: Vec<u8>,
}

/// A signing key in a form the store can keep and give back ([`SigningKey::import`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedKey {
    /// The key id.
    pub kid: String,
    /// The algorithm the key is pinned to.
    pub alg: Algorithm,
    /// Standard base64 of the PKCS#8 DER private key, or of the secret for HS256.
    pub key: String,
}

impl fmt::Debug for ExportedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.verifying.kid)
            .field("algorithm", &self.verifying.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key of `algorithm` with a random 16-hex-character kid. RSA keys are 2048 bits
    /// (the size RS256 verifiers expect; bigger ones cost verification time on every request);
    /// HMAC secrets are 32 random bytes.
    pub fn generate(algorithm: Algorithm) -> Result<Self, KeyError> {
        let material = match algorithm {
            Algorithm::EdDSA => Ed25519KeyPair::generate()
                .and_then(|pair| pair.to_pkcs8v1())
                .map(|doc| doc.as_ref().to_vec()),
            Algorithm::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|pair| pair.to_pkcs8v1())
                .map(|doc| doc.as_ref().to_vec()),
            Algorithm::RS256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|pair| AsDer::<Pkcs8V1Der<'static>>::as_der(&pair))
                .map(|der| der.as_ref().to_vec()),
            Algorithm::HS256 => {
                let mut secret = vec![0u8; MIN_HMAC_SECRET];
                getrandom::fill(&mut secret).map_err(|_| KeyError::Random)?;
                Ok(secret)
            }
        }
        .map_err(|_| KeyError::Random)?;
        Self::build(Some(random_kid()?), algorithm, material)
    }

    /// Loads an unencrypted PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`) of
    /// `algorithm` (EdDSA, ES256 or RS256). The kid is derived from the public key, so the same
    /// file gives the same kid on every start; [`SigningKey::with_kid`] sets another.
    pub fn from_pem(algorithm: Algorithm, pem: &str) -> Result<Self, KeyError> {
        let der = pem_to_der(algorithm, pem)?;
        Self::from_pkcs8_der(algorithm, &der)
    }

    /// Loads an unencrypted PKCS#8 DER private key of `algorithm` (EdDSA, ES256 or RS256); the
    /// kid is derived from the public key, as in [`SigningKey::from_pem`].
    pub fn from_pkcs8_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        if algorithm == Algorithm::HS256 {
            return Err(invalid(
                algorithm,
                "HS256 keys are secrets, not PKCS#8 keys",
            ));
        }
        Self::build(None, algorithm, der.to_vec())
    }

    /// An HS256 key from a shared secret of at least 32 bytes. The kid is derived from the
    /// secret through SHA-256 (it reveals nothing an HS256 token doesn't already expose to an
    /// offline guess of the secret).
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        Self::build(None, Algorithm::HS256, secret.to_vec())
    }

    /// The same key under another kid: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Result<Self, KeyError> {
        let kid = kid.into();
        validate_kid(&kid)?;
        self.verifying.kid = kid;
        Ok(self)
    }

    /// The key id, as written in the `kid` header of the tokens it signs.
    pub fn kid(&self) -> &str {
        &self.verifying.kid
    }

    /// The algorithm this key is pinned to.
    pub fn algorithm(&self) -> Algorithm {
        self.verifying.algorithm
    }

    /// The public JWK (`kid`, `alg`, `use: sig` and the public members only), or `None` for
    /// HS256, whose secret is never published.
    pub fn public_jwk(&self) -> Option<Value> {
        self.verifying.jwk()
    }

    /// The key in the form the store keeps. This carries the private material.
    pub fn export(&self) -> ExportedKey {
        ExportedKey {
            kid: self.verifying.kid.clone(),
            alg: self.verifying.algorithm,
            key: BASE64.encode(&self.material),
        }
    }

    /// Loads a key the store kept ([`SigningKey::export`]); same kid, same algorithm.
    pub fn import(exported: &ExportedKey) -> Result<Self, KeyError> {
        let material = BASE64
            .decode(exported.key.as_bytes())
            .map_err(|_| invalid(exported.alg, "stored key is not base64"))?;
        validate_kid(&exported.kid)?;
        Self::build(Some(exported.kid.clone()), exported.alg, material)
    }

    /// The private key as PKCS#8 PEM, or `None` for HS256. This carries the private material.
    pub fn to_pem(&self) -> Option<String> {
        if self.verifying.algorithm == Algorithm::HS256 {
            return None;
        }
        let body = BASE64.encode(&self.material);
        let mut pem = String::with_capacity(body.len() + body.len() / 64 + 64);
        pem.push_str(PEM_BEGIN);
        pem.push('\n');
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(PEM_END);
        pem.push('\n');
        Some(pem)
    }

    /// Signs `claims` with this key: header `{"typ":"JWT","alg":<alg>,"kid":<kid>}`.
    pub(crate) fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let mut header = jsonwebtoken::Header::new(self.verifying.algorithm.to_jsonwebtoken());
        header.kid = Some(self.verifying.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|_| KeyError::Signing)
    }

    /// Parses `material` as a key of `algorithm` and derives what signing and verifying need.
    /// `kid: None` derives one from the public key (or the secret).
    fn build(
        kid: Option<String>,
        algorithm: Algorithm,
        material: Vec<u8>,
    ) -> Result<Self, KeyError> {
        let (encoding, public) = match algorithm {
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(&material)
                    .map_err(|_| invalid(algorithm, "not a PKCS#8 Ed25519 private key"))?;
                let public = PublicKey::Ed25519 {
                    x: pair.public_key().as_ref().to_vec(),
                };
                (EncodingKey::from_ed_der(&material), Some(public))
            }
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &material)
                    .map_err(|_| invalid(algorithm, "not a PKCS#8 P-256 private key"))?;
                let public = PublicKey::from_sec1_point(pair.public_key().as_ref())
                    .ok_or_else(|| invalid(algorithm, "unexpected P-256 public key encoding"))?;
                (EncodingKey::from_ec_der(&material), Some(public))
            }
            Algorithm::RS256 => {
                // aws-lc refuses RSA keys outside 2048..=8192 bits here.
                let pair = RsaKeyPair::from_pkcs8(&material).map_err(|_| {
                    invalid(
                        algorithm,
                        "not a PKCS#8 RSA private key of 2048 to 8192 bits",
                    )
                })?;
                let public = PublicKey::Rsa {
                    n: pair
                        .public_key()
                        .modulus()
                        .big_endian_without_leading_zero()
                        .to_vec(),
                    e: pair
                        .public_key()
                        .exponent()
                        .big_endian_without_leading_zero()
                        .to_vec(),
                };
                // Both jsonwebtoken backends sign RSA from the PKCS#1 key inside the PKCS#8.
                let pkcs1 = pkcs8_private_key(&material)
                    .ok_or_else(|| invalid(algorithm, "PKCS#8 structure not understood"))?;
                (EncodingKey::from_rsa_der(pkcs1), Some(public))
            }
            Algorithm::HS256 => {
                if material.len() < MIN_HMAC_SECRET {
                    return Err(KeyError::SecretTooShort(material.len()));
                }
                (EncodingKey::from_secret(&material), None)
            }
        };
        let kid = kid.unwrap_or_else(|| match &public {
            Some(public) => public.fingerprint(algorithm),
            None => fingerprint(algorithm, &[b"hmac-secret", &material]),
        });
        let decoding = match &public {
            Some(public) => public.decoding_key(),
            None => DecodingKey::from_secret(&material),
        };
        Ok(SigningKey {
            verifying: VerifyingKey {
                kid,
                algorithm,
                decoding,
                public,
            },
            encoding,
            material,
        })
    }
}

/// 64 random bits as 16 lowercase hex characters: unique enough for the handful of keys a
/// set holds, short in every token header.
fn random_kid() -> Result<String, KeyError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|_| KeyError::Random)?;
    Ok(HEXLOWER.encode(&bytes))
}

/// A stable kid: the first 64 bits of SHA-256 over a label, the algorithm and `parts`, as hex.
pub(crate) fn fingerprint(algorithm: Algorithm, parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"tokengate-kid\0");
    hash.update(algorithm.as_str().as_bytes());
    for part in parts {
        // Length-prefixed, so that n||e can't collide with another split of the same bytes.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    HEXLOWER.encode(&hash.finalize()[..8])
}

pub(crate) fn validate_kid(kid: &str) -> Result<(), KeyError> {
    let ok = (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidKid)
    }
}

fn invalid(alg: Algorithm, reason: &'static str) -> KeyError {
    KeyError::InvalidKey { alg, reason }
}

/// The DER inside the first `PRIVATE KEY` PEM block. Other PEM kinds get a reason that says
/// what to do, since "invalid key" alone sends people guessing.
fn pem_to_der(algorithm: Algorithm, pem: &str) -> Result<Vec<u8>, KeyError> {
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(invalid(algorithm, "encrypted PEM keys are not supported"));
    }
    let Some(start) = pem.find(PEM_BEGIN) else {
        let reason = if pem.contains("-----BEGIN RSA PRIVATE KEY-----")
            || pem.contains("-----BEGIN EC PRIVATE KEY-----")
        {
            "not PKCS#8: convert it with `openssl pkcs8 -topk8 -nocrypt`"
        } else {
            "no -----BEGIN PRIVATE KEY----- block"
        };
        return Err(invalid(algorithm, reason));
    };
    let body = &pem[start + PEM_BEGIN.len()..];
    let end = body
        .find(PEM_END)
        .ok_or_else(|| invalid(algorithm, "PEM block has no END line"))?;
    let base64: Vec<u8> = body[..end]
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    BASE64
        .decode(&base64)
        .map_err(|_| invalid(algorithm, "PEM body is not base64"))
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo` (RFC 5208):
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, ... }`.
/// For RSA that is the PKCS#1 `RSAPrivateKey` jsonwebtoken signs with.
fn pkcs8_private_key(der: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = der_element(der)? else {
        return None;
    };
    let (0x02, _, rest) = der_element(info)? else {
        return None;
    };
    let (0x30, _, rest) = der_element(rest)? else {
        return None;
    };
    let (0x04, key, _) = der_element(rest)? else {
        return None;
    };
    Some(key)
}

/// One DER element: (tag, contents, the bytes after it). Definite lengths only, as DER requires.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}
