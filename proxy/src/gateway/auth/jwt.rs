//! JWT (RFC 7519) verification for one provider: the compact JWS form, signature first, then
//! `iss`, `aud`, `exp` and `nbf` with the provider's leeway. Pure: keys and the time are
//! given, so every refusal is unit-tested without a clock or a network.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;
use serde::Deserialize;
use serde_json::{Map, Value};
use weft_policy::gateway_auth::JwtProvider;

use super::jwk::{Alg, KeySet};

/// The longest token accepted, in bytes (larger ones are refused before any decoding).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The longest value a forwarded claim header may have; longer values are cut.
pub const MAX_CLAIM_HEADER_LEN: usize = 256;

/// Why a token was refused. The text is the `error_description` a client sees: it names the
/// check that failed and never echoes the token's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is `none`, HMAC, or anything but RS256, ES256, EdDSA.
    #[error("algorithm not accepted")]
    Algorithm,
    /// No key has the token's `kid` (after any refresh).
    #[error("unknown key id")]
    UnknownKid,
    /// No key of the token's algorithm verifies the signature.
    #[error("bad signature")]
    Signature,
    /// `exp` is missing.
    #[error("token has no exp")]
    NoExpiry,
    /// `exp` (plus leeway) has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the provider's.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` names none of the provider's audiences.
    #[error("wrong audience")]
    Audience,
}

impl JwtError {
    /// A fixed word for the fault, for the auth outcome metric.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed",
            JwtError::Algorithm => "algorithm",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::Signature => "bad_signature",
            JwtError::NoExpiry => "no_expiry",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Issuer => "wrong_issuer",
            JwtError::Audience => "wrong_audience",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// Extensions a verifier must understand; this one understands none.
    crit: Option<Value>,
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// `sub`, when it is a string.
    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }

    /// A claim as a header value: strings as they are, numbers and booleans printed, arrays
    /// of those joined with `,`; anything but visible ASCII and spaces dropped, at most
    /// [`MAX_CLAIM_HEADER_LEN`] bytes. `None` for a missing, object or null claim.
    pub fn header_value(&self, claim: &str) -> Option<HeaderValue> {
        let raw = match self.0.get(claim)? {
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().filter_map(scalar).collect();
                parts.join(",")
            }
            v => scalar(v)?,
        };
        let clean: String = raw
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(MAX_CLAIM_HEADER_LEN)
            .collect();
        HeaderValue::from_str(clean.trim()).ok()
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The token's key id and algorithm, read without verifying (to pick keys, or to know an
/// unknown `kid` is worth a refresh). Refuses `none` and every algorithm but the three.
pub fn peek(token: &str) -> Result<(Option<String>, Alg), JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("too long"));
    }
    let head = token.split('.').next().unwrap_or_default();
    let header: Header = serde_json::from_slice(&b64(head)?)
        .map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
    if header.crit.is_some() {
        return Err(JwtError::Malformed("unsupported crit header"));
    }
    let alg = match header.alg.as_str() {
        "RS256" => Alg::Rs256,
        "ES256" => Alg::Es256,
        "EdDSA" => Alg::EdDsa,
        _ => return Err(JwtError::Algorithm),
    };
    Ok((header.kid, alg))
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("not base64url"))
}

/// Verify `token` against `keys` for `provider` at `unix_now` (seconds).
pub fn verify(
    token: &str,
    keys: &KeySet,
    provider: &JwtProvider,
    unix_now: u64,
) -> Result<Claims, JwtError> {
    let (kid, alg) = peek(token)?;
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three parts"));
    };
    let signature = b64(sig)?;
    let signed = &token.as_bytes()[..head.len() + 1 + body.len()];
    if kid.as_deref().is_some_and(|k| !keys.has_kid(k)) {
        return Err(JwtError::UnknownKid);
    }
    if !keys
        .candidates(kid.as_deref(), alg)
        .any(|k| k.verify(signed, &signature))
    {
        return Err(JwtError::Signature);
    }
    let claims: Map<String, Value> = serde_json::from_slice(&b64(body)?)
        .map_err(|_| JwtError::Malformed("claims are not a JSON object"))?;
    check_claims(&claims, provider, unix_now)?;
    Ok(Claims(claims))
}

fn check_claims(c: &Map<String, Value>, p: &JwtProvider, now: u64) -> Result<(), JwtError> {
    let leeway = p.leeway.as_secs();
    let time = |name: &str| {
        c.get(name)
            .and_then(Value::as_f64)
            .map(|t| t.max(0.0) as u64)
    };
    let exp = time("exp").ok_or(JwtError::NoExpiry)?;
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if time("nbf").is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if c.get("iss").and_then(Value::as_str) != Some(p.issuer.as_str()) {
        return Err(JwtError::Issuer);
    }
    if p.audiences.is_empty() {
        return Ok(());
    }
    let named = |a: &Value| {
        a.as_str()
            .is_some_and(|a| p.audiences.iter().any(|x| x == a))
    };
    let ok = match c.get("aud") {
        Some(Value::Array(list)) => list.iter().any(named),
        Some(one) => named(one),
        None => false,
    };
    ok.then_some(()).ok_or(JwtError::Audience)
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
pub(crate) mod tests;
