//! JSON Web Keys (RFC 7517) turned into verification keys. A key's type fixes its algorithm
//! (RSA → RS256, EC P-256 → ES256, OKP Ed25519 → EdDSA), so a token cannot choose how its
//! signature is checked: algorithm confusion (an RSA key used as an HMAC secret, `none`) has
//! nothing to bind to.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519,
    RSA_PKCS1_2048_8192_SHA256,
};
use serde::Deserialize;

/// Keys kept from one JWKS document at most; the rest are ignored (a JWKS holds a handful).
pub const MAX_KEYS: usize = 64;

/// The three algorithms the gateway verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The JOSE name (`alg` header value).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// One verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `kid`, if the JWK has one.
    pub kid: Option<String>,
    material: Material,
}

impl Key {
    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self.material {
            Material::Rsa { .. } => Alg::Rs256,
            Material::P256(_) => Alg::Es256,
            Material::Ed25519(_) => Alg::EdDsa,
        }
    }

    /// Whether `sig` signs `msg` under this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            Material::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(msg, sig)
                .is_ok(),
            Material::Ed25519(x) => UnparsedPublicKey::new(&ED25519, x).verify(msg, sig).is_ok(),
        }
    }
}

/// The keys of one JWKS document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    /// Usable keys, in document order.
    pub keys: Vec<Key>,
}

impl KeySet {
    /// Keys a token with this `kid` and `alg` may be checked with: the key with that `kid`
    /// (when the token names one), of the token's algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.alg() == alg && (kid.is_none() || k.kid.as_deref() == kid))
    }

    /// Whether a key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Why a JWKS document was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with `keys`.
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Deserialize)]
struct Doc {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parse a JWKS document. Keys this gateway cannot use (other types, curves, `use: enc`, an
/// `alg` that disagrees with the key type, bad encodings) are skipped, so one odd key does
/// not lock out the rest; at most [`MAX_KEYS`] are kept.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
    let doc: Doc = serde_json::from_slice(bytes)?;
    let keys = doc
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(key)
        .take(MAX_KEYS)
        .collect();
    Ok(KeySet { keys })
}

fn key(j: Jwk) -> Option<Key> {
    if j.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let b64 = |s: &Option<String>| s.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
    let material = match (j.kty.as_str(), j.crv.as_deref()) {
        ("RSA", _) => {
            let n = b64(&j.n)?;
            // ring checks 2048..8192 bits; refuse shorter keys here too, with leading zeros.
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            (bits >= 2048).then_some(())?;
            Material::Rsa { n, e: b64(&j.e)? }
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (b64(&j.x)?, b64(&j.y)?);
            (x.len() == 32 && y.len() == 32).then_some(())?;
            Material::P256([&[4u8][..], &x[..], &y[..]].concat())
        }
        ("OKP", Some("Ed25519")) => {
            let x = b64(&j.x)?;
            (x.len() == 32).then_some(())?;
            Material::Ed25519(x)
        }
        _ => return None,
    };
    let key = Key {
        kid: j.kid,
        material,
    };
    match j.alg {
        Some(a) if a != key.alg().name() => None,
        _ => Some(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_skipped_and_types_fix_algorithms() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let n = URL_SAFE_NO_PAD.encode([0xc1u8; 256]);
        let short = URL_SAFE_NO_PAD.encode([0xc1u8; 128]);
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"},
            {"kty": "EC", "crv": "P-256", "x": x, "y": x, "kid": "ec"},
            {"kty": "RSA", "n": n, "e": "AQAB", "kid": "rsa", "alg": "RS256"},
            {"kty": "RSA", "n": n, "e": "AQAB", "kid": "as-hmac", "alg": "HS256"},
            {"kty": "RSA", "n": short, "e": "AQAB", "kid": "1024"},
            {"kty": "oct", "k": x, "kid": "secret"},
            {"kty": "EC", "crv": "P-384", "x": x, "y": x, "kid": "p384"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc"},
            "not an object"
        ]});
        let set = parse_jwks(doc.to_string().as_bytes()).expect("parses");
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("ed"), Some("ec"), Some("rsa")]);
        assert_eq!(set.keys[1].alg(), Alg::Es256);
        assert_eq!(set.candidates(Some("rsa"), Alg::Es256).count(), 0);
        assert_eq!(set.candidates(None, Alg::Rs256).count(), 1);
        assert!(parse_jwks(b"[]").is_err());
    }
}
