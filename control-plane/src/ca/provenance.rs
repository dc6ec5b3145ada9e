//! Provenance: what the CA writes into each workload certificate about how its identity was
//! attested, and reads back when that certificate asks to be renewed.
//!
//! A renewal by certificate alone must still re-check the credential behind the identity (a
//! revoked or expired join token stops renewing) and must not carry the identity past the
//! configured maximum age. Both need facts the CA decided at attestation time: which
//! credential and when. They travel in a non-critical extension the CA itself signs, so every
//! control-plane replica reads the same facts from the certificate and no per-serial record
//! has to be stored or shared. A workload cannot forge them: they are under the CA's signature,
//! and the CSR's own extensions are refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Object identifier of the provenance extension: a `2.25` (UUID-derived) arc private to Weft.
pub const PROVENANCE_OID: &[u64] = &[2, 25, 10_853_617_307_219_519_511];

/// Version tag of the encoded text; anything else is refused (not guessed at).
const VERSION: &str = "weft-provenance-v1";
/// Longest encoded value accepted when reading a certificate.
const MAX_LEN: usize = 1024;

/// The credential an identity was attested with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A join token, by id (its secret is never in a certificate).
    JoinToken(String),
    /// A Kubernetes service account token (the identity names the service account).
    ServiceAccount,
    /// Nothing known: the renewed certificate had no provenance (issued before provenance
    /// existed, or by `weftctl certs issue`). Only the maximum age bounds such a chain,
    /// counted from the first certificate's `notBefore`.
    Unknown,
}

impl Source {
    /// The credential's kind, as `Credential::kind` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JoinToken(_) => "join token",
            Self::ServiceAccount => "service account token",
            Self::Unknown => "credential",
        }
    }
}

/// How and when an identity was last attested with a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// When the credential was last checked (whole seconds).
    pub attested_at: SystemTime,
    /// Which credential.
    pub source: Source,
}

/// Why a certificate's provenance extension could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the certificate's provenance extension is not valid: {0}")]
pub struct ProvenanceError(String);

impl Provenance {
    /// A provenance attested now, whole seconds (the certificate keeps no more).
    pub fn now(source: Source) -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            attested_at: UNIX_EPOCH + Duration::from_secs(secs),
            source,
        }
    }

    /// The extension's value: a DER UTF8String `weft-provenance-v1 at=<unix> by=<source>`.
    pub fn to_der(&self) -> Vec<u8> {
        let at = self
            .attested_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let by = match &self.source {
            Source::JoinToken(id) => format!("join-token:{id}"),
            Source::ServiceAccount => "service-account".to_owned(),
            Source::Unknown => "unknown".to_owned(),
        };
        let text = format!("{VERSION} at={at} by={by}");
        let mut der = vec![0x0c];
        der_length(&mut der, text.len());
        der.extend_from_slice(text.as_bytes());
        der
    }

    /// Reads the extension's value written by [`Provenance::to_der`].
    pub fn from_der(der: &[u8]) -> Result<Self, ProvenanceError> {
        let bad = |why: &str| ProvenanceError(why.to_owned());
        if der.len() > MAX_LEN {
            return Err(bad("too long"));
        }
        let text = utf8_string(der).ok_or_else(|| bad("not a DER UTF8String"))?;
        let mut parts = text.split(' ');
        if parts.next() != Some(VERSION) {
            return Err(bad("unknown version"));
        }
        let at = parts
            .next()
            .and_then(|p| p.strip_prefix("at="))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("no attestation time"))?;
        let source = match parts.next().and_then(|p| p.strip_prefix("by=")) {
            Some("service-account") => Source::ServiceAccount,
            Some("unknown") => Source::Unknown,
            Some(by) => match by.strip_prefix("join-token:") {
                Some(id) if !id.is_empty() => Source::JoinToken(id.to_owned()),
                _ => return Err(bad("unknown credential")),
            },
            None => return Err(bad("no credential")),
        };
        if parts.next().is_some() {
            return Err(bad("trailing fields"));
        }
        Ok(Self {
            attested_at: UNIX_EPOCH + Duration::from_secs(at),
            source,
        })
    }

    /// The provenance of a certificate (DER), `None` when it has none (issued before
    /// provenance existed, or by `weftctl certs issue`).
    pub fn of_cert(der: &[u8]) -> Result<Option<Self>, ProvenanceError> {
        let value = weft_certs::extension_from_cert_der(der, PROVENANCE_OID)
            .map_err(|e| ProvenanceError(e.to_string()))?;
        value.as_deref().map(Self::from_der).transpose()
    }
}

fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The text of a DER UTF8String (tag 12) that fills `der` exactly.
fn utf8_string(der: &[u8]) -> Option<&str> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if body.len() != len {
        return None;
    }
    std::str::from_utf8(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        for source in [
            Source::JoinToken("0123456789abcdef".into()),
            Source::ServiceAccount,
            Source::Unknown,
        ] {
            let p = Provenance::now(source);
            assert_eq!(Provenance::from_der(&p.to_der()).expect("reads"), p);
        }
        let long = Provenance {
            attested_at: UNIX_EPOCH,
            source: Source::JoinToken("x".repeat(300)),
        };
        assert_eq!(Provenance::from_der(&long.to_der()).expect("long"), long);
        for bad in [
            &b""[..],
            b"\x0c\x05abc",
            b"\x04\x03abc",
            b"\x0c\x03abc",
            b"\x0c\x1bweft-provenance-v1 at=1 by=x",
            b"\x0c\x2bweft-provenance-v1 at=1 by=service-account zz",
        ] {
            assert!(Provenance::from_der(bad).is_err(), "{bad:?}");
        }
    }
}
