//! Tokens signed here with ring (Ed25519 and ES256; RS256 is signed by PyJWT in the e2e
//! tests) and checked for every refusal.

use std::path::PathBuf;
use std::time::Duration;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;
use weft_policy::gateway_auth::JwksSource;

use super::super::jwk::parse_jwks;
use super::*;

const NOW: u64 = 1_800_000_000;

pub(crate) struct Signer {
    ed: Ed25519KeyPair,
    ec: EcdsaKeyPair,
}

impl Signer {
    pub(crate) fn new() -> Self {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519");
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
        Self {
            ed: Ed25519KeyPair::from_pkcs8(ed.as_ref()).expect("ed25519"),
            ec: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng)
                .expect("ec"),
        }
    }

    pub(crate) fn jwks(&self) -> KeySet {
        parse_jwks(self.jwks_json().as_bytes()).expect("jwks")
    }

    pub(crate) fn jwks_json(&self) -> String {
        let point = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": URL_SAFE_NO_PAD.encode(self.ed.public_key())},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
        ]})
        .to_string()
    }

    pub(crate) fn sign(&self, header: Value, claims: Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let msg = format!("{}.{}", enc(&header), enc(&claims));
        let sig = match header["alg"].as_str() {
            Some("ES256") => self
                .ec
                .sign(&SystemRandom::new(), msg.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            _ => self.ed.sign(msg.as_bytes()).as_ref().to_vec(),
        };
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

pub(crate) fn provider() -> JwtProvider {
    JwtProvider {
        name: "main".into(),
        issuer: "https://issuer.test".into(),
        audiences: vec!["orders".into()],
        jwks: JwksSource::File(PathBuf::from("unused")),
        refresh: Duration::from_secs(300),
        leeway: Duration::from_secs(30),
        forward_claims: Vec::new(),
        keep_token: false,
    }
}

fn claims() -> Value {
    json!({"iss": "https://issuer.test", "aud": "orders", "sub": "alice", "exp": NOW + 60})
}

fn check(token: &str) -> Result<Claims, JwtError> {
    let s = Signer::new();
    verify(token, &s.jwks(), &provider(), NOW)
}

#[test]
fn valid_tokens_of_both_algorithms_pass() {
    let s = Signer::new();
    let keys = s.jwks();
    for (alg, kid) in [("EdDSA", "ed"), ("ES256", "ec")] {
        let t = s.sign(json!({"alg": alg, "kid": kid, "typ": "JWT"}), claims());
        let c = verify(&t, &keys, &provider(), NOW).expect(alg);
        assert_eq!(c.subject(), Some("alice"));
    }
    // No kid: any key of the token's algorithm may verify it.
    let t = s.sign(json!({"alg": "EdDSA"}), claims());
    assert!(verify(&t, &keys, &provider(), NOW).is_ok());
    // aud as a list naming one accepted audience.
    let mut c = claims();
    c["aud"] = json!(["other", "orders"]);
    assert!(verify(&s.sign(json!({"alg": "EdDSA"}), c), &keys, &provider(), NOW).is_ok());
}

#[test]
fn time_claims_honour_the_leeway() {
    let s = Signer::new();
    let keys = s.jwks();
    let at = |exp: u64, nbf: Option<u64>| {
        let mut c = claims();
        c["exp"] = json!(exp);
        if let Some(n) = nbf {
            c["nbf"] = json!(n);
        }
        verify(&s.sign(json!({"alg": "EdDSA"}), c), &keys, &provider(), NOW)
    };
    assert_eq!(at(NOW - 31, None).err(), Some(JwtError::Expired));
    assert!(at(NOW - 29, None).is_ok(), "inside the 30 s leeway");
    assert_eq!(
        at(NOW + 60, Some(NOW + 31)).err(),
        Some(JwtError::NotYetValid)
    );
    assert!(at(NOW + 60, Some(NOW + 29)).is_ok());
    let mut c = claims();
    if let Some(o) = c.as_object_mut() {
        o.remove("exp");
    }
    assert_eq!(
        verify(&s.sign(json!({"alg": "EdDSA"}), c), &keys, &provider(), NOW).err(),
        Some(JwtError::NoExpiry)
    );
}

#[test]
fn wrong_issuer_audience_and_tampering_are_refused() {
    let s = Signer::new();
    let keys = s.jwks();
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        verify(
            &s.sign(json!({"alg": "ES256", "kid": "ec"}), c),
            &keys,
            &provider(),
            NOW,
        )
    };
    assert_eq!(
        with("iss", json!("https://evil.test")).err(),
        Some(JwtError::Issuer)
    );
    assert_eq!(
        with("aud", json!("billing")).err(),
        Some(JwtError::Audience)
    );
    assert_eq!(
        with("aud", json!(["billing"])).err(),
        Some(JwtError::Audience)
    );
    let good = s.sign(json!({"alg": "EdDSA", "kid": "ed"}), claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(
        json!({"iss": "https://issuer.test", "aud": "orders", "sub": "root", "exp": NOW + 60})
            .to_string(),
    );
    parts[1] = &evil;
    assert_eq!(
        verify(&parts.join("."), &keys, &provider(), NOW).err(),
        Some(JwtError::Signature)
    );
}

#[test]
fn none_hmac_and_algorithm_confusion_are_refused() {
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert_eq!(check(&none).err(), Some(JwtError::Algorithm));
    for alg in ["HS256", "RS512", "NONE", "ES384"] {
        let s = Signer::new();
        let t = s.sign(json!({"alg": alg, "kid": "ed"}), claims());
        assert_eq!(
            verify(&t, &s.jwks(), &provider(), NOW).err(),
            Some(JwtError::Algorithm),
            "{alg}"
        );
    }
    // An Ed25519 signature presented as ES256 against the Ed25519 key's kid: the key's type
    // decides, so no key is a candidate and the token fails.
    let s = Signer::new();
    let t = s.sign(json!({"alg": "EdDSA", "kid": "ed"}), claims());
    let relabelled = t.replacen(
        t.split('.').next().unwrap_or_default(),
        &URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"ed"}"#),
        1,
    );
    assert_eq!(
        verify(&relabelled, &s.jwks(), &provider(), NOW).err(),
        Some(JwtError::Signature)
    );
}

#[test]
fn malformed_and_unknown_kid() {
    let s = Signer::new();
    let keys = s.jwks();
    let t = s.sign(json!({"alg": "EdDSA", "kid": "rotated"}), claims());
    assert_eq!(
        verify(&t, &keys, &provider(), NOW).err(),
        Some(JwtError::UnknownKid)
    );
    assert_eq!(peek(&t).ok(), Some((Some("rotated".into()), Alg::EdDsa)));
    for bad in ["", "a.b", "!!!.b.c", "e30.e30.e30.e30"] {
        assert!(
            matches!(
                verify(bad, &keys, &provider(), NOW),
                Err(JwtError::Malformed(_) | JwtError::Algorithm)
            ),
            "{bad:?}"
        );
    }
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(peek(&huge).err(), Some(JwtError::Malformed("too long")));
    let crit = s.sign(json!({"alg": "EdDSA", "crit": ["b64"]}), claims());
    assert!(matches!(
        verify(&crit, &keys, &provider(), NOW),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn forwarded_claim_values_are_sanitised() {
    let c = Claims(
        json!({"sub": "alice\r\nx-admin: yes", "n": 42, "groups": ["a", "b", {"x": 1}], "o": {"k": 1}, "long": "x".repeat(1000)})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    assert_eq!(c.header_value("sub").expect("sub"), "alicex-admin: yes");
    assert_eq!(c.header_value("n").expect("n"), "42");
    assert_eq!(c.header_value("groups").expect("groups"), "a,b");
    assert_eq!(c.header_value("o"), None);
    assert_eq!(c.header_value("missing"), None);
    assert_eq!(
        c.header_value("long").expect("long").len(),
        MAX_CLAIM_HEADER_LEN
    );
}
