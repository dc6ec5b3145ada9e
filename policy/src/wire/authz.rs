//! Authorization as written: a sidecar's allow rules, and the mesh's per-service blocks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::service::EscapedSlashes;

/// Inbound authorization of one destination service, at the mesh level: becomes that
/// service's sidecars' `authorization`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAuthorization {
    /// The destination service these rules protect.
    pub service: String,
    /// `allow` (the default) or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Allow rules; a request any rule matches is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
    /// Inbound requests whose path holds `%2F` or `%5C`: `reject` (the default, 400) or
    /// `keep` (forwarded encoded; `paths` compare the encoded form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
}

impl ServiceAuthorization {
    /// The sidecar-level block (without the service name).
    pub fn to_sidecar(&self) -> Authorization {
        Authorization {
            default: self.default.clone(),
            rules: self.rules.clone(),
            escaped_slashes: self.escaped_slashes,
        }
    }
}

/// Inbound authorization: allow rules and what happens to requests no rule allows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// `allow` (the default) or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Allow rules; a request any rule matches is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
    /// Inbound requests whose path holds `%2F` or `%5C`: `reject` (the default, 400) or
    /// `keep` (forwarded encoded; `paths` compare the encoded form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
}

/// One allow rule; every given condition must hold.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Rule name, for errors and logs.
    pub name: String,
    /// Caller SPIFFE identities, or `"*"` for any mesh identity.
    pub from: Vec<String>,
    /// Path prefixes (default: any path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Methods (default: any method).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}
