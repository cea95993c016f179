//! Tests of [`crate::jwt`]: round trips, every forgery the verifier must refuse, the clock
//! rules, rotation, export/import, and the JWKS in both directions.
//!
//! Must not: read the system clock (every `now` is a constant) or depend on test order (keys
//! that are slow to make, RSA, are made once and shared read-only).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde_json::{Map, Value, json};

use super::keyset::MAX_TOKEN_LEN;
use super::*;

const NOW: i64 = 1_900_000_000;
const ISS: &str = "https://auth.example.test";
const AUD: &str = "tokengate";

fn claims() -> Claims {
    Claims {
        sub: "u_alice".into(),
        sid: "s_123".into(),
        app: Some("bq1".into()),
        iat: NOW,
        exp: NOW + 3600,
        nbf: None,
        iss: ISS.into(),
        aud: AUD.into(),
        jti: "j_1".into(),
    }
}

fn rules(now: i64) -> VerifyRules<'static> {
    VerifyRules {
        issuer: ISS,
        audience: AUD,
        leeway_secs: 5,
        now,
    }
}

/// RSA generation is the slow one: make one key per test binary and clone it.
fn rsa_key() -> SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(Algorithm::RS256).unwrap())
        .clone()
}

fn key(algorithm: Algorithm) -> SigningKey {
    match algorithm {
        Algorithm::RS256 => rsa_key(),
        other => SigningKey::generate(other).unwrap(),
    }
}

fn set_of(key: SigningKey) -> KeySet {
    let mut set = KeySet::new();
    set.add(key).unwrap();
    set
}

fn b64(bytes: &[u8]) -> String {
    BASE64URL_NOPAD.encode(bytes)
}

/// A compact JWS built by hand: `sign` gets the signing input and returns raw signature bytes.
fn forge(header: &Value, payload: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// Signs `input` with `key`'s own private key and algorithm through jsonwebtoken.
fn raw_sign(key: &SigningKey, input: &[u8]) -> Vec<u8> {
    let signature =
        jsonwebtoken::crypto::sign(input, &key.encoding, key.algorithm().to_jsonwebtoken())
            .unwrap();
    BASE64URL_NOPAD.decode(signature.as_bytes()).unwrap()
}

/// HS256 over `input` with `secret`, whatever the secret is.
fn hmac(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let signature =
        jsonwebtoken::crypto::sign(input, &key, jsonwebtoken::Algorithm::HS256).unwrap();
    BASE64URL_NOPAD.decode(signature.as_bytes()).unwrap()
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"typ": "JWT", "alg": alg, "kid": kid})
}

fn claims_json() -> Value {
    serde_json::to_value(claims()).unwrap()
}

/// Replaces one character of a base64url segment with another valid one.
fn flip_char(segment: &str, index: usize) -> String {
    let mut chars: Vec<char> = segment.chars().collect();
    chars[index] = if chars[index] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[test]
fn sign_then_verify_round_trips_for_every_algorithm() {
    for algorithm in Algorithm::ALL {
        let set = set_of(key(algorithm));
        let token = set.sign(&claims()).unwrap();
        assert_eq!(set.verify(&token, &rules(NOW)), Ok(claims()), "{algorithm}");

        let header = token_header(&token);
        assert_eq!(header["alg"], algorithm.as_str());
        assert_eq!(header["kid"], set.current_kid().unwrap());
    }
}

#[test]
fn default_algorithm_is_eddsa() {
    assert_eq!(Algorithm::default(), Algorithm::EdDSA);
    assert_eq!("ES256".parse::<Algorithm>(), Ok(Algorithm::ES256));
    assert_eq!(
        "none".parse::<Algorithm>(),
        Err(KeyError::UnsupportedAlgorithm)
    );
    assert_eq!(
        "es256".parse::<Algorithm>(),
        Err(KeyError::UnsupportedAlgorithm)
    );
}

#[test]
fn tampered_signature_is_refused() {
    for algorithm in Algorithm::ALL {
        let set = set_of(key(algorithm));
        let token = set.sign(&claims()).unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        for index in [0, signature.len() / 2, signature.len() - 2] {
            let tampered = format!("{input}.{}", flip_char(signature, index));
            assert_eq!(
                set.verify(&tampered, &rules(NOW)),
                Err(JwtError::BadSignature),
                "{algorithm} at {index}"
            );
        }
        let truncated = format!("{input}.{}", &signature[..signature.len() - 4]);
        assert_eq!(
            set.verify(&truncated, &rules(NOW)),
            Err(JwtError::BadSignature)
        );
        let empty = format!("{input}.");
        assert_eq!(set.verify(&empty, &rules(NOW)), Err(JwtError::BadSignature));
    }
}

#[test]
fn tampered_payload_is_refused() {
    for algorithm in Algorithm::ALL {
        let set = set_of(key(algorithm));
        let token = set.sign(&claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();

        // A different, well-formed payload under the original signature.
        let mut other = claims();
        other.sub = "u_mallory".into();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            b64(serde_json::to_string(&other).unwrap().as_bytes()),
            parts[2]
        );
        assert_eq!(
            set.verify(&swapped, &rules(NOW)),
            Err(JwtError::BadSignature),
            "{algorithm}"
        );

        let flipped = format!("{}.{}.{}", parts[0], flip_char(parts[1], 5), parts[2]);
        assert_eq!(
            set.verify(&flipped, &rules(NOW)),
            Err(JwtError::BadSignature)
        );
    }
}

#[test]
fn tampered_header_is_refused() {
    let set = set_of(key(Algorithm::EdDSA));
    let token = set.sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let kid = set.current_kid().unwrap();
    // Same kid and alg, one more member: the signing input changed, so the signature fails.
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": "JWT", "x": 1});
    let changed = format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        parts[1],
        parts[2]
    );
    assert_eq!(
        set.verify(&changed, &rules(NOW)),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    for algorithm in Algorithm::ALL {
        let set = set_of(key(algorithm));
        let kid = set.current_kid().unwrap().to_owned();
        for alg in ["none", "None", "NONE", ""] {
            let token = forge(&json!({"alg": alg, "kid": kid}), &claims_json(), |_| {
                Vec::new()
            });
            assert!(token.ends_with('.'), "empty signature part");
            assert_eq!(
                set.verify(&token, &rules(NOW)),
                Err(JwtError::BadSignature),
                "{algorithm} / {alg:?}"
            );
        }
    }
}

#[test]
fn hmac_signed_with_a_public_key_is_refused() {
    // RS256: the public key as raw n, as PKCS#1 DER, as X.509 SPKI DER and as PEM text.
    let rsa = rsa_key();
    let pair =
        RsaKeyPair::from_pkcs8(&BASE64.decode(rsa.export().key.as_bytes()).unwrap()).unwrap();
    let spki = AsDer::<PublicKeyX509Der<'static>>::as_der(pair.public_key())
        .unwrap()
        .as_ref()
        .to_vec();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        BASE64.encode(&spki)
    );
    let rsa_forms: Vec<Vec<u8>> = vec![
        pair.public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec(),
        pair.public_key().as_ref().to_vec(),
        spki,
        pem.into_bytes(),
    ];

    // EdDSA: the raw 32 bytes and the X.509 SPKI DER.
    let ed = key(Algorithm::EdDSA);
    let ed_pair =
        Ed25519KeyPair::from_pkcs8(&BASE64.decode(ed.export().key.as_bytes()).unwrap()).unwrap();
    let ed_forms: Vec<Vec<u8>> = vec![
        ed_pair.public_key().as_ref().to_vec(),
        AsDer::<PublicKeyX509Der<'static>>::as_der(ed_pair.public_key())
            .unwrap()
            .as_ref()
            .to_vec(),
    ];

    let es = key(Algorithm::ES256);
    let es_jwk = es.public_jwk().unwrap();
    let es_forms = vec![es_jwk.to_string().into_bytes()];

    for (signer, forms) in [(rsa, rsa_forms), (ed, ed_forms), (es, es_forms)] {
        let kid = signer.kid().to_owned();
        let set = set_of(signer);
        for secret in forms {
            let token = forge(&header("HS256", &kid), &claims_json(), |input| {
                hmac(&secret, input)
            });
            assert_eq!(
                set.verify(&token, &rules(NOW)),
                Err(JwtError::BadSignature),
                "kid {kid}"
            );
        }
    }
}

#[test]
fn a_key_of_another_type_is_refused() {
    // The set's key is EdDSA; the token is a valid ES256 signature by some other key that
    // claims the EdDSA key's kid, once with its own alg and once pretending to be EdDSA.
    let ed = key(Algorithm::EdDSA);
    let kid = ed.kid().to_owned();
    let set = set_of(ed);
    let intruder = key(Algorithm::ES256);
    for alg in ["ES256", "EdDSA"] {
        let token = forge(&header(alg, &kid), &claims_json(), |input| {
            raw_sign(&intruder, input)
        });
        assert_eq!(
            set.verify(&token, &rules(NOW)),
            Err(JwtError::BadSignature),
            "{alg}"
        );
    }
}

#[test]
fn a_token_signed_by_one_key_naming_another_is_refused() {
    for (a_alg, b_alg) in [
        (Algorithm::EdDSA, Algorithm::EdDSA),
        (Algorithm::ES256, Algorithm::ES256),
        (Algorithm::HS256, Algorithm::HS256),
        (Algorithm::EdDSA, Algorithm::RS256),
    ] {
        let a = key(a_alg);
        let b = SigningKey::generate(b_alg).unwrap();
        let b_kid = b.kid().to_owned();
        let mut set = KeySet::new();
        set.add(a.clone()).unwrap();
        set.add(b).unwrap();
        let token = forge(&header(b_alg.as_str(), &b_kid), &claims_json(), |input| {
            raw_sign(&a, input)
        });
        assert_eq!(
            set.verify(&token, &rules(NOW)),
            Err(JwtError::BadSignature),
            "{a_alg} as {b_alg}"
        );
    }
}

#[test]
fn unknown_or_missing_kid_is_refused() {
    let signer = key(Algorithm::EdDSA);
    let set = set_of(key(Algorithm::EdDSA));
    let token = set_of(signer.clone()).sign(&claims()).unwrap();
    assert_eq!(set.verify(&token, &rules(NOW)), Err(JwtError::UnknownKey));

    let no_kid = forge(&json!({"alg": "EdDSA"}), &claims_json(), |input| {
        raw_sign(&signer, input)
    });
    assert_eq!(
        set_of(signer.clone()).verify(&no_kid, &rules(NOW)),
        Err(JwtError::UnknownKey),
        "a missing kid never falls back to trying the keys"
    );

    let number_kid = forge(
        &json!({"alg": "EdDSA", "kid": 7}),
        &claims_json(),
        |input| raw_sign(&signer, input),
    );
    assert!(matches!(
        set_of(signer).verify(&number_kid, &rules(NOW)),
        Err(JwtError::Malformed(_))
    ));

    assert_eq!(
        KeySet::new().verify(&token, &rules(NOW)),
        Err(JwtError::UnknownKey)
    );
}

#[test]
fn expiry_is_checked_against_the_given_now_with_leeway() {
    let set = set_of(key(Algorithm::EdDSA));
    let exp = claims().exp;
    let token = set.sign(&claims()).unwrap();
    // Leeway 5: accepted through exp + 4, refused from exp + 5 on.
    assert!(set.verify(&token, &rules(exp - 1)).is_ok());
    assert!(set.verify(&token, &rules(exp)).is_ok(), "within leeway");
    assert!(set.verify(&token, &rules(exp + 4)).is_ok(), "within leeway");
    assert_eq!(set.verify(&token, &rules(exp + 5)), Err(JwtError::Expired));
    assert_eq!(
        set.verify(&token, &rules(exp + 86_400)),
        Err(JwtError::Expired)
    );

    let strict = VerifyRules {
        leeway_secs: 0,
        ..rules(exp)
    };
    assert_eq!(
        set.verify(&token, &strict),
        Err(JwtError::Expired),
        "refused at exp itself (RFC 7519 §4.1.4)"
    );
    let huge = VerifyRules {
        leeway_secs: u64::MAX,
        ..rules(i64::MIN)
    };
    assert!(
        set.verify(&token, &huge).is_ok(),
        "no overflow at the extremes"
    );
}

#[test]
fn not_before_is_checked_against_the_given_now_with_leeway() {
    let set = set_of(key(Algorithm::EdDSA));
    let mut early = claims();
    early.nbf = Some(NOW + 100);
    let token = set.sign(&early).unwrap();
    assert_eq!(set.verify(&token, &rules(NOW)), Err(JwtError::NotYetValid));
    assert_eq!(
        set.verify(&token, &rules(NOW + 94)),
        Err(JwtError::NotYetValid)
    );
    assert!(
        set.verify(&token, &rules(NOW + 95)).is_ok(),
        "within leeway"
    );
    assert!(set.verify(&token, &rules(NOW + 100)).is_ok());
}

#[test]
fn wrong_issuer_or_audience_is_refused() {
    let set = set_of(key(Algorithm::EdDSA));
    let token = set.sign(&claims()).unwrap();
    let wrong_iss = VerifyRules {
        issuer: "https://auth.example.test/",
        ..rules(NOW)
    };
    assert_eq!(set.verify(&token, &wrong_iss), Err(JwtError::WrongIssuer));
    let wrong_aud = VerifyRules {
        audience: "tokengate-admin",
        ..rules(NOW)
    };
    assert_eq!(set.verify(&token, &wrong_aud), Err(JwtError::WrongAudience));
    let prefix_aud = VerifyRules {
        audience: "token",
        ..rules(NOW)
    };
    assert_eq!(
        set.verify(&token, &prefix_aud),
        Err(JwtError::WrongAudience)
    );
}

#[test]
fn missing_registered_claims_are_refused() {
    let set = set_of(key(Algorithm::EdDSA));
    let mut no_iss = claims_json();
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut no_aud = claims_json();
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut no_exp = claims_json();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut string_exp = claims_json();
    string_exp["exp"] = json!("soon");
    for (payload, expected) in [
        (no_iss, JwtError::WrongIssuer),
        (no_aud, JwtError::WrongAudience),
    ] {
        let token = set.sign_claims(&payload).unwrap();
        assert_eq!(
            set.verify_claims::<Map<String, Value>>(&token, &rules(NOW)),
            Err(expected)
        );
    }
    for payload in [no_exp, string_exp] {
        let token = set.sign_claims(&payload).unwrap();
        assert!(matches!(
            set.verify_claims::<Map<String, Value>>(&token, &rules(NOW)),
            Err(JwtError::Malformed(_))
        ));
    }
}

#[test]
fn other_issuers_claim_forms_are_understood() {
    let set = set_of(key(Algorithm::ES256));
    let payload = json!({
        "sub": "alice@idp",
        "iss": ISS,
        "aud": ["other-api", AUD],
        "exp": (NOW + 60) as f64 + 0.75,
        "nbf": NOW as f64 - 0.5,
        "email": "alice@example.test",
    });
    let token = set.sign_claims(&payload).unwrap();
    let claims: Map<String, Value> = set.verify_claims(&token, &rules(NOW)).unwrap();
    assert_eq!(claims["email"], "alice@example.test");
    assert!(
        matches!(set.verify(&token, &rules(NOW)), Err(JwtError::Malformed(_))),
        "not the shape of a tokengate session"
    );
    let only_other = json!({"iss": ISS, "aud": ["other-api"], "exp": NOW + 60});
    let token = set.sign_claims(&only_other).unwrap();
    assert_eq!(
        set.verify_claims::<Map<String, Value>>(&token, &rules(NOW)),
        Err(JwtError::WrongAudience)
    );
}

#[test]
fn malformed_tokens_are_refused_as_malformed() {
    let set = set_of(key(Algorithm::EdDSA));
    let kid = set.current_kid().unwrap().to_owned();
    let good = set.sign(&claims()).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let oversized = format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_LEN), parts[2]);
    let cases = [
        String::new(),
        "garbage".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"[1,2]"), parts[1], parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        oversized,
    ];
    for token in &cases {
        assert!(
            matches!(set.verify(token, &rules(NOW)), Err(JwtError::Malformed(_))),
            "{token:.40}"
        );
    }

    // Properly signed, but the header demands extensions / the payload is not JSON.
    let signer_key = key(Algorithm::EdDSA);
    let signer = set_of(signer_key.clone());
    let crit = forge(
        &json!({"alg": "EdDSA", "kid": signer_key.kid(), "crit": ["b64"], "b64": false}),
        &claims_json(),
        |input| raw_sign(&signer_key, input),
    );
    assert!(matches!(
        signer.verify(&crit, &rules(NOW)),
        Err(JwtError::Malformed(_))
    ));
    let own = SigningKey::import(&set.export()[0]).unwrap();
    let input = format!(
        "{}.{}",
        b64(header("EdDSA", &kid).to_string().as_bytes()),
        b64(b"not json")
    );
    let not_json = format!("{input}.{}", b64(&raw_sign(&own, input.as_bytes())));
    assert!(matches!(
        set.verify(&not_json, &rules(NOW)),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn errors_never_contain_the_token() {
    let set = set_of(key(Algorithm::EdDSA));
    let token = set.sign(&claims()).unwrap();
    let (input, signature) = token.rsplit_once('.').unwrap();
    let bad = format!("{input}.{}", flip_char(signature, 3));
    let errors = [
        set.verify(&bad, &rules(NOW)).unwrap_err(),
        set.verify(&format!("{token}x.y"), &rules(NOW)).unwrap_err(),
        set_of(key(Algorithm::EdDSA))
            .verify(&token, &rules(NOW))
            .unwrap_err(),
        set.verify(&token, &rules(NOW + 10_000)).unwrap_err(),
    ];
    let parts: Vec<&str> = token.split('.').collect();
    for error in errors {
        for text in [error.to_string(), format!("{error:?}")] {
            for part in &parts {
                assert!(!text.contains(part), "{text}");
            }
        }
    }
}

#[test]
fn rotation_keeps_old_tokens_until_their_key_is_removed() {
    let key1 = key(Algorithm::EdDSA);
    let kid1 = key1.kid().to_owned();
    let mut set = set_of(key1);
    let token1 = set.sign(&claims()).unwrap();

    let key2 = key(Algorithm::ES256);
    let kid2 = key2.kid().to_owned();
    set.add(key2).unwrap();
    assert_eq!(set.current_kid(), Some(kid2.as_str()), "the newest signs");
    let token2 = set.sign(&claims()).unwrap();
    assert_eq!(token_header(&token2)["kid"], kid2.as_str());
    assert_eq!(token_header(&token2)["alg"], "ES256");
    assert!(
        set.verify(&token1, &rules(NOW)).is_ok(),
        "old key still verifies"
    );
    assert!(set.verify(&token2, &rules(NOW)).is_ok());

    assert!(set.remove(&kid1));
    assert!(!set.remove(&kid1), "already gone");
    assert_eq!(set.verify(&token1, &rules(NOW)), Err(JwtError::UnknownKey));
    assert!(set.verify(&token2, &rules(NOW)).is_ok());
    assert_eq!(set.kids().collect::<Vec<_>>(), vec![kid2.as_str()]);
}

/// The decoded JOSE header of a token.
fn token_header(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&BASE64URL_NOPAD.decode(header.as_bytes()).unwrap()).unwrap()
}

#[test]
fn current_key_can_be_chosen_and_falls_back_when_removed() {
    let old = key(Algorithm::EdDSA);
    let new = key(Algorithm::EdDSA);
    let (old_kid, new_kid) = (old.kid().to_owned(), new.kid().to_owned());
    let mut set = set_of(old);
    set.add(new).unwrap();
    set.set_current(&old_kid).unwrap();
    assert_eq!(set.current_kid(), Some(old_kid.as_str()));
    assert_eq!(
        set.set_current("nope"),
        Err(KeyError::UnknownKid("nope".into()))
    );
    assert!(set.remove(&old_kid));
    assert_eq!(set.current_kid(), Some(new_kid.as_str()));
    assert!(set.remove(&new_kid));
    assert_eq!(set.current_kid(), None);
    assert_eq!(set.sign(&claims()), Err(KeyError::NoSigningKey));
}

#[test]
fn duplicate_kids_are_refused() {
    let a = key(Algorithm::EdDSA);
    let mut set = set_of(a.clone());
    assert_eq!(
        set.add(a.clone()),
        Err(KeyError::DuplicateKid(a.kid().into()))
    );
    let other = key(Algorithm::ES256).with_kid(a.kid()).unwrap();
    assert!(set.add(other).is_err());
    assert_eq!(set.len(), 1);
}

#[test]
fn export_then_import_round_trips_for_every_algorithm() {
    for algorithm in Algorithm::ALL {
        let original = key(algorithm);
        let set = set_of(original.clone());
        let exported = original.export();
        assert_eq!(exported.kid, original.kid());
        assert_eq!(exported.alg, algorithm);

        // Through JSON, as the store would keep it.
        let stored = serde_json::to_string(&exported).unwrap();
        let loaded: ExportedKey = serde_json::from_str(&stored).unwrap();
        let imported = SigningKey::import(&loaded).unwrap();
        assert_eq!(imported.kid(), original.kid());
        assert_eq!(imported.algorithm(), algorithm);
        assert_eq!(imported.public_jwk(), original.public_jwk());

        let token = set_of(imported).sign(&claims()).unwrap();
        assert_eq!(set.verify(&token, &rules(NOW)), Ok(claims()), "{algorithm}");
        assert_eq!(set.export(), vec![exported.clone()]);
        assert!(
            !format!("{exported:?}").contains(&exported.key),
            "Debug redacts the key"
        );
    }
}

#[test]
fn import_refuses_bad_material() {
    let mut exported = key(Algorithm::EdDSA).export();
    exported.alg = Algorithm::ES256;
    assert!(matches!(
        SigningKey::import(&exported),
        Err(KeyError::InvalidKey { .. })
    ));
    let mut exported = key(Algorithm::EdDSA).export();
    exported.key = "not base64!".into();
    assert!(matches!(
        SigningKey::import(&exported),
        Err(KeyError::InvalidKey { .. })
    ));
    let mut exported = key(Algorithm::EdDSA).export();
    exported.kid = "has space".into();
    assert!(matches!(
        SigningKey::import(&exported),
        Err(KeyError::InvalidKid)
    ));
}

#[test]
fn pem_round_trips_with_a_stable_kid() {
    for algorithm in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let original = key(algorithm);
        let pem = original.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let first = SigningKey::from_pem(algorithm, &pem).unwrap();
        let second = SigningKey::from_pem(algorithm, &pem).unwrap();
        assert_eq!(first.kid(), second.kid(), "derived from the key");
        assert_eq!(first.kid().len(), 16);
        assert_eq!(
            first.public_jwk().unwrap()["x"],
            original.public_jwk().unwrap()["x"]
        );

        let set = set_of(first.clone());
        let token = set_of(second).sign(&claims()).unwrap();
        assert_eq!(set.verify(&token, &rules(NOW)), Ok(claims()), "{algorithm}");

        let renamed = first.with_kid("session-2031").unwrap();
        assert_eq!(renamed.kid(), "session-2031");
        assert_eq!(renamed.public_jwk().unwrap()["kid"], "session-2031");
    }
    assert_eq!(key(Algorithm::HS256).to_pem(), None);
}

#[test]
fn pem_of_the_wrong_kind_is_refused() {
    let ed_pem = key(Algorithm::EdDSA).to_pem().unwrap();
    for algorithm in [Algorithm::ES256, Algorithm::RS256, Algorithm::HS256] {
        assert!(matches!(
            SigningKey::from_pem(algorithm, &ed_pem),
            Err(KeyError::InvalidKey { .. })
        ));
    }
    let pkcs1 = ed_pem.replace("PRIVATE KEY", "RSA PRIVATE KEY");
    match SigningKey::from_pem(Algorithm::RS256, &pkcs1) {
        Err(KeyError::InvalidKey { reason, .. }) => assert!(reason.contains("pkcs8")),
        other => panic!("{other:?}"),
    }
    let encrypted = ed_pem.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
    assert!(SigningKey::from_pem(Algorithm::EdDSA, &encrypted).is_err());
    assert!(SigningKey::from_pem(Algorithm::EdDSA, "").is_err());
    let no_end = ed_pem.replace("-----END PRIVATE KEY-----", "");
    assert!(SigningKey::from_pem(Algorithm::EdDSA, &no_end).is_err());
}

#[test]
fn hmac_secrets_need_32_bytes() {
    assert_eq!(
        SigningKey::from_secret(&[7u8; 31]).unwrap_err(),
        KeyError::SecretTooShort(31)
    );
    assert_eq!(
        SigningKey::from_secret(b"").unwrap_err(),
        KeyError::SecretTooShort(0)
    );
    let key = SigningKey::from_secret(&[7u8; 32]).unwrap();
    assert_eq!(key.algorithm(), Algorithm::HS256);
    assert_eq!(
        key.kid(),
        SigningKey::from_secret(&[7u8; 32]).unwrap().kid(),
        "a stable kid"
    );
    assert_ne!(
        key.kid(),
        SigningKey::from_secret(&[8u8; 32]).unwrap().kid()
    );
    assert!(SigningKey::from_pkcs8_der(Algorithm::HS256, &[7u8; 32]).is_err());
}

#[test]
fn generated_kids_are_random_hex() {
    let a = key(Algorithm::EdDSA);
    let b = key(Algorithm::EdDSA);
    assert_ne!(a.kid(), b.kid());
    assert_eq!(a.kid().len(), 16);
    assert!(a.kid().bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(key(Algorithm::EdDSA).with_kid("").is_err());
    assert!(key(Algorithm::EdDSA).with_kid("x".repeat(65)).is_err());
    assert!(key(Algorithm::EdDSA).with_kid("a/b").is_err());
}

#[test]
fn debug_output_hides_private_material() {
    for algorithm in Algorithm::ALL {
        let key = key(algorithm);
        let secret = key.export().key;
        let set = set_of(key.clone());
        for text in [format!("{key:?}"), format!("{set:?}")] {
            assert!(!text.contains(&secret), "{text}");
            assert!(text.contains(key.kid()));
        }
    }
}

/// Every string anywhere in a JSON value, to look for leaked material.
fn all_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| all_strings(item, out)),
        Value::Object(members) => members.iter().for_each(|(name, item)| {
            out.push(name.clone());
            all_strings(item, out);
        }),
        _ => {}
    }
}

#[test]
fn jwks_publishes_public_parts_only() {
    let mut set = KeySet::new();
    let secret = [42u8; 48];
    let hmac_key = SigningKey::from_secret(&secret).unwrap();
    let hmac_kid = hmac_key.kid().to_owned();
    let keys: Vec<SigningKey> = Algorithm::ALL.into_iter().map(key).collect();
    for key in &keys {
        set.add(key.clone()).unwrap();
    }
    set.add(hmac_key).unwrap();
    let jwks = set.jwks();
    let published = jwks["keys"].as_array().unwrap();
    assert_eq!(published.len(), 3, "EdDSA, ES256, RS256; no HS256");

    let text = jwks.to_string();
    let mut strings = Vec::new();
    all_strings(&jwks, &mut strings);
    for member in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
        assert!(
            published.iter().all(|jwk| jwk.get(member).is_none()),
            "member {member}"
        );
    }
    assert!(!text.contains(&hmac_kid));
    assert!(!strings.iter().any(|s| s.as_str() == "oct"));
    for secret in [secret.to_vec(), keys[3].export_material()] {
        for encoded in [BASE64URL_NOPAD.encode(&secret), BASE64.encode(&secret)] {
            assert!(!text.contains(&encoded[..20]));
        }
    }

    let by_kid = |kid: &str| {
        published
            .iter()
            .find(|jwk| jwk["kid"] == kid)
            .unwrap()
            .clone()
    };
    let ed = by_kid(keys[0].kid());
    assert_eq!(
        ed.as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["alg", "crv", "kid", "kty", "use", "x"])
    );
    assert_eq!(
        (ed["kty"].as_str(), ed["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(
        (ed["alg"].as_str(), ed["use"].as_str()),
        (Some("EdDSA"), Some("sig"))
    );
    assert_eq!(
        BASE64URL_NOPAD
            .decode(ed["x"].as_str().unwrap().as_bytes())
            .unwrap()
            .len(),
        32
    );
    let ec = by_kid(keys[1].kid());
    assert_eq!(
        ec.as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["alg", "crv", "kid", "kty", "use", "x", "y"])
    );
    assert_eq!(
        (ec["kty"].as_str(), ec["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(ec["alg"], "ES256");
    let rsa = by_kid(keys[2].kid());
    assert_eq!(
        rsa.as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["alg", "e", "kid", "kty", "n", "use"])
    );
    assert_eq!(
        (rsa["kty"].as_str(), rsa["e"].as_str()),
        (Some("RSA"), Some("AQAB"))
    );
    assert_eq!(rsa["alg"], "RS256");
}

impl SigningKey {
    /// The raw private material, for leak checks.
    fn export_material(&self) -> Vec<u8> {
        BASE64.decode(self.export().key.as_bytes()).unwrap()
    }
}

#[test]
fn a_verifier_built_from_the_jwks_verifies_the_original_tokens() {
    let mut set = KeySet::new();
    let mut tokens = Vec::new();
    for algorithm in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        set.add(key(algorithm)).unwrap();
        tokens.push(set.sign(&claims()).unwrap());
    }
    set.add(key(Algorithm::HS256)).unwrap();
    let hmac_token = set.sign(&claims()).unwrap();

    let import = KeySet::from_jwks_bytes(set.jwks().to_string().as_bytes()).unwrap();
    assert!(import.skipped.is_empty());
    let external = import.keys;
    assert_eq!(external.len(), 3);
    assert_eq!(external.current_kid(), None);
    for token in &tokens {
        assert_eq!(external.verify(token, &rules(NOW)), Ok(claims()));
    }
    assert_eq!(
        external.verify(&hmac_token, &rules(NOW)),
        Err(JwtError::UnknownKey)
    );
    assert_eq!(external.sign(&claims()), Err(KeyError::NoSigningKey));
    assert!(external.export().is_empty());
    assert_eq!(
        external.jwks(),
        set.jwks(),
        "republishes the same public keys"
    );

    // The same pinning holds for the external set: HMAC with a published key's bytes fails.
    let ed_jwk = &set.jwks()["keys"][0];
    let x = BASE64URL_NOPAD
        .decode(ed_jwk["x"].as_str().unwrap().as_bytes())
        .unwrap();
    let forged = forge(
        &header("HS256", ed_jwk["kid"].as_str().unwrap()),
        &claims_json(),
        |input| hmac(&x, input),
    );
    assert_eq!(
        external.verify(&forged, &rules(NOW)),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn jwks_import_infers_alg_and_skips_what_it_must_not_use() {
    let ed = key(Algorithm::EdDSA);
    let es = key(Algorithm::ES256);
    let rsa = rsa_key();
    let mut ed_no_alg = ed.public_jwk().unwrap();
    ed_no_alg.as_object_mut().unwrap().remove("alg");
    ed_no_alg.as_object_mut().unwrap().remove("use");

    let mut with_private = es.public_jwk().unwrap();
    with_private["kid"] = json!("leaked");
    with_private["d"] = json!("AAAA");
    let mut enc = es.public_jwk().unwrap();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    let mut ps256 = rsa.public_jwk().unwrap();
    ps256["alg"] = json!("PS256");
    ps256["kid"] = json!("pss");
    let mut off_curve = es.public_jwk().unwrap();
    off_curve["kid"] = json!("off-curve");
    off_curve["y"] = json!(b64(&[1u8; 32]));
    let mut no_kid = rsa.public_jwk().unwrap();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut verify_only_ops = rsa.public_jwk().unwrap();
    verify_only_ops.as_object_mut().unwrap().remove("use");
    verify_only_ops["key_ops"] = json!(["verify"]);
    let small_rsa = json!({"kty": "RSA", "kid": "small", "n": b64(&[0xc5; 128]), "e": "AQAB"});
    let oct = json!({"kty": "oct", "kid": "shared", "k": b64(&[1u8; 32])});
    let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"});

    let document = json!({"keys": [
        ed_no_alg, with_private, enc, ps256, off_curve, no_kid, verify_only_ops, small_rsa, oct,
        p384, "not an object"
    ]});
    let import = KeySet::from_jwks(&document).unwrap();
    let kids: Vec<&str> = import.keys.kids().collect();
    assert_eq!(kids, vec![ed.kid(), rsa.kid()]);
    let skipped: Vec<Option<&str>> = import.skipped.iter().map(|s| s.kid.as_deref()).collect();
    assert_eq!(
        skipped,
        vec![
            Some("leaked"),
            Some("enc"),
            Some("pss"),
            Some("off-curve"),
            None,
            Some("small"),
            Some("shared"),
            Some("p384"),
            None
        ]
    );

    // The inferred EdDSA pin works like an explicit one.
    let token = set_of(ed.clone()).sign(&claims()).unwrap();
    assert_eq!(import.keys.verify(&token, &rules(NOW)), Ok(claims()));
}

#[test]
fn jwks_import_refuses_unusable_documents() {
    let ed = key(Algorithm::EdDSA);
    let jwk = ed.public_jwk().unwrap();
    let cases = [
        json!({}),
        json!({"keys": {}}),
        json!({"keys": []}),
        json!({"keys": [{"kty": "oct", "kid": "k", "k": "AAAA"}]}),
    ];
    for document in cases {
        assert!(matches!(
            KeySet::from_jwks(&document),
            Err(KeyError::InvalidJwks(_))
        ));
    }
    assert_eq!(
        KeySet::from_jwks(&json!({"keys": [jwk.clone(), jwk]})).unwrap_err(),
        KeyError::DuplicateKid(ed.kid().into())
    );
    assert!(matches!(
        KeySet::from_jwks_bytes(b"{not json"),
        Err(KeyError::InvalidJwks(_))
    ));
}

#[test]
fn token_digest_is_sha256() {
    assert_eq!(
        data_encoding::HEXLOWER.encode(&token_digest("abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_ne!(token_digest("a.b.c"), token_digest("a.b.d"));
}

#[test]
fn token_ids_are_random_and_url_safe() {
    let a = new_token_id().unwrap();
    let b = new_token_id().unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), 22);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
}
