//! The parts of `GatewayClass` and `Gateway` (`gateway.networking.k8s.io/v1`) the north-south
//! translation reads, as serde types. Like the route types ([`super::types`]) they refuse
//! unknown fields: a field Weft does not implement makes the Gateway not Accepted with
//! `UnsupportedValue` naming it, never silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `spec` of a `GatewayClass`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayClassSpec {
    /// The controller that serves the class ([`super::CONTROLLER_NAME`] for Weft's).
    pub controller_name: String,
    /// Controller-specific parameters (Weft takes none: refused).
    #[serde(default)]
    pub parameters_ref: Option<serde_json::Value>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// The `spec` of a `Gateway`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// The class (a cluster-scoped `GatewayClass`).
    pub gateway_class_name: String,
    /// The listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Requested addresses (refused: the gateway's Service gives its address).
    #[serde(default)]
    pub addresses: Vec<serde_json::Value>,
    /// Labels for generated resources (refused: Weft generates none).
    #[serde(default)]
    pub infrastructure: Option<serde_json::Value>,
    /// TLS to backends (refused: the gateway speaks mesh mTLS to services).
    #[serde(default, rename = "backendTLS")]
    pub backend_tls: Option<serde_json::Value>,
}

/// One listener of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Its name (routes' `sectionName`).
    pub name: String,
    /// The host name it takes (`api.example.test`, `*.example.test`; none: any).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port.
    pub port: i32,
    /// `HTTP`, `HTTPS` (Weft's), `TLS`, `TCP`, `UDP`.
    pub protocol: String,
    /// TLS settings (HTTPS).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Which routes may attach.
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// A listener's TLS.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough` (refused).
    #[serde(default)]
    pub mode: Option<String>,
    /// Secrets of type `kubernetes.io/tls`.
    #[serde(default)]
    pub certificate_refs: Vec<SecretRef>,
    /// Implementation-specific options (Weft reads none: refused).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Client certificate validation (refused).
    #[serde(default)]
    pub frontend_validation: Option<serde_json::Value>,
}

/// A reference to a Secret.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// `""` (core, the default).
    #[serde(default)]
    pub group: Option<String>,
    /// `Secret` (the default).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the Gateway's; another needs a ReferenceGrant).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A listener's `allowedRoutes`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    /// Namespaces whose routes may attach (default: the Gateway's own).
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds (default: the protocol's, `HTTPRoute`).
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

/// `allowedRoutes.namespaces`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector` (refused).
    #[serde(default)]
    pub from: Option<String>,
    /// For `Selector`.
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
}

/// A route kind.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteGroupKind {
    /// Group (default the Gateway API's).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind.
    pub kind: String,
}
