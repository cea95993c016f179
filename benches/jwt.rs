#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Session JWT costs, per algorithm (EdDSA, ES256, RS256 with a 2048-bit key, HS256):
//! - `verify/<alg>`: a cold `KeySet::verify` (no cache in front): split, header parse, kid
//!   lookup, signature check, registered-claim checks, claims parse. What a session request
//!   pays on a verification-cache miss.
//! - `signature_only/<alg>`: just `jsonwebtoken::crypto::verify` on the same token with a
//!   `DecodingKey` built once from the public JWK: the crypto backend's share of `verify`.
//! - `sign/<alg>`: `KeySet::sign` (login, and the `X-Auth-Assertion` header when enabled).
//! - `token_digest`: the SHA-256 cache key of one token.
//!
//! Setup (not timed): one generated key per algorithm in its own `KeySet`, one signed token.
//! The crypto backend is jsonwebtoken's feature (`aws_lc_rs` or `rust_crypto`); key
//! generation uses aws-lc-rs directly either way and is not timed.
//!
//! Run: `cargo bench --bench jwt -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use data_encoding::BASE64;
use tokengate::jwt::{Algorithm, Claims, KeySet, SigningKey, VerifyRules, token_digest};

const NOW: i64 = 1_900_000_000;

fn claims() -> Claims {
    Claims {
        sub: "u_01HV7Z8K4Q2M".into(),
        sid: "kX3v9Qw2Lr8pT1nB6yZc4A".into(),
        app: Some("bq1".into()),
        iat: NOW,
        exp: NOW + 48 * 3600,
        nbf: None,
        iss: "https://auth.example.test".into(),
        aud: "tokengate".into(),
        jti: "Jf2mR7sW0aP5eK9tL3hQxU".into(),
    }
}

fn rules() -> VerifyRules<'static> {
    VerifyRules {
        issuer: "https://auth.example.test",
        audience: "tokengate",
        leeway_secs: 5,
        now: NOW,
    }
}

/// The key as jsonwebtoken verifies it, built the public way: from the JWK, or the secret.
fn decoding_key(key: &SigningKey) -> jsonwebtoken::DecodingKey {
    match key.public_jwk() {
        Some(jwk) => {
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
            jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap()
        }
        None => jsonwebtoken::DecodingKey::from_secret(
            &BASE64.decode(key.export().key.as_bytes()).unwrap(),
        ),
    }
}

fn jsonwebtoken_algorithm(algorithm: Algorithm) -> jsonwebtoken::Algorithm {
    algorithm.as_str().parse().unwrap()
}

fn bench(c: &mut Criterion) {
    let sets: Vec<(Algorithm, SigningKey, KeySet, String)> = Algorithm::ALL
        .into_iter()
        .map(|algorithm| {
            let key = SigningKey::generate(algorithm).unwrap();
            let mut set = KeySet::new();
            set.add(key.clone()).unwrap();
            let token = set.sign(&claims()).unwrap();
            assert_eq!(set.verify(&token, &rules()).unwrap(), claims());
            (algorithm, key, set, token)
        })
        .collect();

    let mut verify = c.benchmark_group("verify");
    for (algorithm, _, set, token) in &sets {
        verify.bench_function(algorithm.as_str(), |b| {
            b.iter(|| set.verify(black_box(token), black_box(&rules())).unwrap())
        });
    }
    verify.finish();

    let mut signature_only = c.benchmark_group("signature_only");
    for (algorithm, key, _, token) in &sets {
        let decoding = decoding_key(key);
        let alg = jsonwebtoken_algorithm(*algorithm);
        let (input, signature) = token.rsplit_once('.').unwrap();
        assert!(jsonwebtoken::crypto::verify(signature, input.as_bytes(), &decoding, alg).unwrap());
        signature_only.bench_function(algorithm.as_str(), |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(
                    black_box(signature),
                    black_box(input.as_bytes()),
                    &decoding,
                    alg,
                )
                .unwrap()
            })
        });
    }
    signature_only.finish();

    let session = claims();
    let mut sign = c.benchmark_group("sign");
    for (algorithm, _, set, _) in &sets {
        sign.bench_function(algorithm.as_str(), |b| {
            b.iter(|| set.sign(black_box(&session)).unwrap())
        });
    }
    sign.finish();

    let token = &sets[0].3;
    c.bench_function("token_digest", |b| {
        b.iter(|| token_digest(black_box(token)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
