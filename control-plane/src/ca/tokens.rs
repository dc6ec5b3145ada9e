//! Join tokens: how a workload proves its identity the first time in local mode.
//!
//! The operator creates one per service (`weftctl tokens create`), bound to one identity
//! (namespace and service account), and hands it to that service's sidecar. The token is
//! printed once: the state directory keeps only its SHA-256 ([`JOIN_TOKENS_FILE`], mode 0600),
//! so reading that file does not yield usable tokens. A token is `wjt1_<id>_<secret>`: the id
//! (16 hex digits) names it in `list` and `revoke` and in logs; the secret (256 random bits, 64
//! hex digits) is what proves possession. Tokens may be used any number of times (every replica
//! of a service and every restart) until they expire ([`DEFAULT_TOKEN_TTL`] after creation
//! unless created with another TTL or explicitly with none) or are revoked. A certificate
//! obtained with a token renews only while that token is neither revoked nor expired (the
//! issuer re-checks it by id, [`JoinTokenStore::check_id`]). Revoked tokens stay listed, so an
//! attempt to use one is reported as such.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use weft_certs::{
    validate_namespace, validate_service_account, validate_trust_domain, Identity, IdentityError,
};

pub use crate::ca::attest::TokenError;
use crate::ca::attest::{AttestError, Attestor, Credential};
use crate::ca::provenance::Source;
use crate::shared::file::FileDocs;
use crate::shared::{self, Docs};

/// File of join token hashes in a state directory.
pub const JOIN_TOKENS_FILE: &str = "join-tokens.json";
/// Namespace a token is bound to unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";
/// How long a token stays usable unless created with another TTL (or explicitly none).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest TTL a token may be created with.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

const TOKEN_PREFIX: &str = "wjt1_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const FILE_VERSION: u32 = 1;

/// What to bind a new token to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The service the token is for.
    pub service: String,
    /// The identity's namespace.
    pub namespace: String,
    /// The identity's service account; the service's name when `None`.
    pub service_account: Option<String>,
    /// How long the token stays usable; forever (until revoked) when `None`, which an operator
    /// must ask for explicitly (`weftctl tokens create --ttl never`).
    pub ttl: Option<Duration>,
}

impl NewToken {
    /// A token for `service` in the [`DEFAULT_NAMESPACE`], with service account = service name,
    /// expiring after [`DEFAULT_TOKEN_TTL`].
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            service_account: None,
            ttl: Some(DEFAULT_TOKEN_TTL),
        }
    }
}

/// A stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's id (the part of the token after `wjt1_` and before the secret).
    pub id: String,
    /// The service it was created for.
    pub service: String,
    /// The namespace of the identity it proves.
    pub namespace: String,
    /// The service account of the identity it proves.
    pub service_account: String,
    /// When it was created (whole seconds).
    pub created: SystemTime,
    /// When it stops being usable, if ever.
    pub expires: Option<SystemTime>,
    /// When it was revoked, if it was.
    pub revoked: Option<SystemTime>,
}

/// Whether a token is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        })
    }
}

impl TokenInfo {
    /// The token's status at `now`.
    pub fn status(&self, now: SystemTime) -> TokenStatus {
        if self.revoked.is_some() {
            TokenStatus::Revoked
        } else if self.expires.is_some_and(|e| e <= now) {
            TokenStatus::Expired
        } else {
            TokenStatus::Active
        }
    }

    /// The identity the token proves in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> Result<Identity, IdentityError> {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// A token just created: the only time its secret is available.
///
/// `Debug` does not show the token.
#[derive(Clone)]
pub struct CreatedToken {
    /// The token to hand to the workload: `wjt1_<id>_<secret>`.
    pub token: String,
    /// What was stored.
    pub info: TokenInfo,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

/// What [`JoinTokenStore::revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token is revoked now.
    Revoked(TokenInfo),
    /// The token had already been revoked; nothing changed.
    AlreadyRevoked(TokenInfo),
}

/// The join tokens of a state directory, or of the Kubernetes API (any [`DocStore`]).
///
/// Holds no state of its own: every call reads the document, so tokens created or revoked by
/// `weftctl` or through any replica take effect in every running control plane at once.
/// Changes are compare-and-swap ([`shared::update`]).
#[derive(Debug, Clone)]
pub struct JoinTokenStore {
    docs: Docs,
}

impl JoinTokenStore {
    /// The tokens of `state_dir` (which need not exist yet).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self::in_store(Arc::new(FileDocs::new(state_dir)))
    }

    /// The tokens kept in `docs`.
    pub fn in_store(docs: Docs) -> Self {
        Self { docs }
    }

    /// Where the token hashes are kept (the file's path, or the Secret).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.docs.describe(JOIN_TOKENS_FILE))
    }

    /// Creates a token bound to `request`'s identity and stores its hash.
    ///
    /// Creates the state directory (mode 0700) if missing. The returned
    /// [`CreatedToken::token`] is not stored anywhere: hand it over now.
    pub fn create(&self, request: &NewToken) -> Result<CreatedToken, TokenError> {
        // The service name doubles as the default service account, so it obeys the same rules.
        validate_service_account(&request.service)?;
        validate_namespace(&request.namespace)?;
        let service_account = request
            .service_account
            .clone()
            .unwrap_or_else(|| request.service.clone());
        validate_service_account(&service_account)?;
        if let Some(ttl) = request.ttl {
            if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
                return Err(TokenError::InvalidTtl(ttl));
            }
        }

        let rng = SystemRandom::new();
        let secret = hex(&random::<SECRET_BYTES>(&rng)?);
        let info = shared::update(self.docs.as_ref(), JOIN_TOKENS_FILE, |current| {
            let mut file = self.parse(current)?;
            // 64-bit ids practically never collide; a few tries bound the loop should the
            // RNG misbehave.
            let mut id = None;
            for _ in 0..8 {
                let candidate = hex(&random::<ID_BYTES>(&rng)?);
                if file.tokens.iter().all(|t| t.id != candidate) {
                    id = Some(candidate);
                    break;
                }
            }
            let id = id.ok_or(TokenError::Rng)?;
            let token = format!("{TOKEN_PREFIX}{id}_{secret}");
            let created = unix_secs(SystemTime::now());
            let record = TokenRecord {
                id,
                service: request.service.clone(),
                namespace: request.namespace.clone(),
                service_account: service_account.clone(),
                sha256: hex(&sha256(&token)),
                created_unix: created,
                expires_unix: request.ttl.map(|ttl| created.saturating_add(ttl.as_secs())),
                revoked_unix: None,
            };
            let info = record.info();
            file.tokens.push(record);
            Ok::<_, TokenError>((Some(self.render(&file)?), info))
        })?;
        let token = format!("{TOKEN_PREFIX}{}_{secret}", info.id);
        Ok(CreatedToken { token, info })
    }

    /// Every stored token (revoked and expired ones included), oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        Ok(self.load()?.tokens.iter().map(TokenRecord::info).collect())
    }

    /// Revokes the token with id `id` (a whole token is accepted too, and its id used).
    pub fn revoke(&self, id: &str) -> Result<Revocation, TokenError> {
        let id = parse_token(id.trim()).map_or(id.trim(), |(id, _)| id);
        let unknown = || TokenError::UnknownId { id: id.to_owned() };
        shared::update(self.docs.as_ref(), JOIN_TOKENS_FILE, |current| {
            let mut file = self.parse(current)?;
            let record = file
                .tokens
                .iter_mut()
                .find(|t| t.id == id)
                .ok_or_else(unknown)?;
            if record.revoked_unix.is_some() {
                return Ok((None, Revocation::AlreadyRevoked(record.info())));
            }
            record.revoked_unix = Some(unix_secs(SystemTime::now()));
            let info = record.info();
            Ok((Some(self.render(&file)?), Revocation::Revoked(info)))
        })
    }

    /// Checks a presented token at time `now` and returns what it is bound to.
    ///
    /// Surrounding whitespace (a trailing newline from a file) is ignored. The secret is
    /// compared by its SHA-256, in constant time. Whether a token is revoked or expired is told
    /// only to a caller that holds its secret.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<TokenInfo, AttestError> {
        let token = token.trim();
        let (id, _) = parse_token(token).ok_or(AttestError::MalformedToken)?;
        let invalid = || AttestError::InvalidToken { id: id.to_owned() };
        let file = self.load().map_err(AttestError::Store)?;
        let record = file
            .tokens
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(invalid)?;
        let stored = unhex::<32>(&record.sha256).ok_or_else(invalid)?;
        if !bool::from(sha256(token).ct_eq(&stored)) {
            return Err(invalid());
        }
        let info = record.info();
        match info.status(now) {
            TokenStatus::Active => Ok(info),
            TokenStatus::Revoked => Err(AttestError::Revoked { id: info.id }),
            TokenStatus::Expired => Err(AttestError::Expired { id: info.id }),
        }
    }

    /// Checks, at time `now`, that the token with id `id` still exists and is neither revoked
    /// nor expired: how a renewal re-checks the credential a certificate was obtained with (the
    /// certificate names the token's id, never its secret).
    pub fn check_id(&self, id: &str, now: SystemTime) -> Result<TokenInfo, AttestError> {
        let file = self.load().map_err(AttestError::Store)?;
        let info = file
            .tokens
            .iter()
            .find(|t| t.id == id)
            .map(TokenRecord::info)
            .ok_or_else(|| AttestError::InvalidToken { id: id.to_owned() })?;
        match info.status(now) {
            TokenStatus::Active => Ok(info),
            TokenStatus::Revoked => Err(AttestError::Revoked { id: info.id }),
            TokenStatus::Expired => Err(AttestError::Expired { id: info.id }),
        }
    }

    fn load(&self) -> Result<TokenFile, TokenError> {
        let current = self.docs.read(JOIN_TOKENS_FILE)?;
        self.parse(current.as_ref().map(|c| c.data.as_slice()))
    }

    /// The token document from its bytes (none, or empty: no tokens yet).
    fn parse(&self, bytes: Option<&[u8]>) -> Result<TokenFile, TokenError> {
        let bytes = match bytes {
            Some(b) if !b.is_empty() => b,
            _ => return Ok(TokenFile::default()),
        };
        let corrupt = |reason: String| TokenError::Corrupt {
            path: self.path(),
            reason,
        };
        let file: TokenFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(corrupt(format!(
                "version {} is not supported (expected {FILE_VERSION})",
                file.version
            )));
        }
        for record in &file.tokens {
            if unhex::<32>(&record.sha256).is_none() {
                return Err(corrupt(format!(
                    "token {}: sha256 is not 64 lowercase hex digits",
                    record.id
                )));
            }
        }
        Ok(file)
    }

    fn render(&self, file: &TokenFile) -> Result<Vec<u8>, TokenError> {
        let mut text = serde_json::to_vec_pretty(file).map_err(|e| TokenError::Corrupt {
            path: self.path(),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        Ok(text)
    }
}

/// Attests join tokens of a state directory to identities in one trust domain.
#[derive(Debug, Clone)]
pub struct JoinTokenAttestor {
    store: JoinTokenStore,
    trust_domain: String,
}

impl JoinTokenAttestor {
    /// An attestor for the tokens of `state_dir`, giving identities in `trust_domain`.
    pub fn new(state_dir: impl Into<PathBuf>, trust_domain: &str) -> Result<Self, IdentityError> {
        Self::with_store(JoinTokenStore::new(state_dir), trust_domain)
    }

    /// An attestor for the tokens of `store`, giving identities in `trust_domain`.
    pub fn with_store(store: JoinTokenStore, trust_domain: &str) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        Ok(Self {
            store,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The token store it reads.
    pub fn store(&self) -> &JoinTokenStore {
        &self.store
    }
}

impl Attestor for JoinTokenAttestor {
    fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        match credential {
            Credential::JoinToken(token) => {
                let info = self.store.verify(token, SystemTime::now())?;
                Ok(info.identity(&self.trust_domain)?)
            }
            other => Err(AttestError::UnsupportedCredential { kind: other.kind() }),
        }
    }

    fn recheck(&self, source: &Source, identity: &Identity) -> Result<(), AttestError> {
        let Source::JoinToken(id) = source else {
            return Err(AttestError::CredentialRequired {
                kind: "service account token",
            });
        };
        let info = self.store.check_id(id, SystemTime::now())?;
        // The token binds one identity; a certificate naming another was not obtained with it.
        if &info.identity(&self.trust_domain)? != identity {
            return Err(AttestError::InvalidToken { id: id.clone() });
        }
        Ok(())
    }
}

/// The id of a presented join token (`wjt1_<id>_<secret>`), if it has the token's form: what a
/// certificate's provenance names, never the secret.
pub fn token_id(token: &str) -> Option<&str> {
    parse_token(token.trim()).map(|(id, _)| id)
}

/// The token file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

impl Default for TokenFile {
    fn default() -> Self {
        Self {
            version: FILE_VERSION,
            tokens: Vec::new(),
        }
    }
}

/// One token in the file: its hash, never its secret.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    id: String,
    service: String,
    namespace: String,
    service_account: String,
    /// SHA-256 of the whole token string, lowercase hex.
    sha256: String,
    created_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_unix: Option<u64>,
}

impl TokenRecord {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            created: from_unix_secs(self.created_unix),
            expires: self.expires_unix.map(from_unix_secs),
            revoked: self.revoked_unix.map(from_unix_secs),
        }
    }
}

/// Splits `wjt1_<16 hex>_<64 hex>` into id and secret.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let ok = |s: &str, bytes: usize| {
        s.len() == 2 * bytes && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (ok(id, ID_BYTES) && ok(secret, SECRET_BYTES)).then_some((id, secret))
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], TokenError> {
    let mut bytes = [0u8; N];
    rng.fill(&mut bytes).map_err(|_| TokenError::Rng)?;
    Ok(bytes)
}

fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Decodes exactly `N` bytes of lowercase hex.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0x00, 0x7f, 0x80, 0xff, 0x12];
        assert_eq!(hex(&bytes), "007f80ff12");
        assert_eq!(unhex::<5>("007f80ff12"), Some(bytes));
        assert_eq!(unhex::<5>("007F80FF12"), None);
        assert_eq!(unhex::<5>("007f80ff1"), None);
        assert_eq!(unhex::<2>("zz00"), None);
    }

    #[test]
    fn token_syntax() {
        let id = "0123456789abcdef";
        let secret = "a".repeat(64);
        let token = format!("wjt1_{id}_{secret}");
        assert_eq!(parse_token(&token), Some((id, secret.as_str())));
        for bad in [
            String::new(),
            format!("wjt2_{id}_{secret}"),
            format!("wjt1_{id}{secret}"),
            format!("wjt1_{id}_{secret}0"),
            format!("wjt1_{}_{secret}", &id[1..]),
            format!("wjt1_{}_{secret}", id.to_uppercase()),
            format!("wjt1_{id}_{secret}_"),
            format!("wjt1_{id}_{}", "é".repeat(32)),
        ] {
            assert_eq!(parse_token(&bad), None, "{bad}");
        }
    }
}
