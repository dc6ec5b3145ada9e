//! The parts of the Gateway API v1 resources the control plane reads, as serde types.
//!
//! Specs refuse unknown fields (`deny_unknown_fields`): a field this control plane does not
//! implement (a newer or experimental one, such as `sessionPersistence` or a rule's `retry`)
//! makes the route fail to read, and so not Accepted with `UnsupportedValue` naming the field,
//! never silently ignored. Defaults are the API server's (the CRDs' schema defaults): a rule
//! without matches matches every path, a backendRef is a core `Service` of weight 1.

use serde::Deserialize;

/// The `spec` of an `HTTPRoute` (`gateway.networking.k8s.io/v1`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// The Services (GAMMA) or Gateways the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names (Gateways only: refused on a Service parent).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules, in order.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A reference to a route's parent: a Gateway (the default kind) or a Service (GAMMA).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    /// API group: `gateway.networking.k8s.io` (the default) or `""` (core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Gateway` (the default) or `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The parent's namespace (default: the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The parent's name.
    pub name: String,
    /// A listener name (Gateway) or port name (Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A port (listener or Service port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl ParentRef {
    /// Whether this is a core `Service` (GAMMA, east-west).
    pub fn is_service(&self) -> bool {
        self.group.as_deref().unwrap_or(super::GROUP).is_empty()
            && self.kind.as_deref() == Some("Service")
    }

    /// Whether this is a `Gateway` (north-south).
    pub fn is_gateway(&self) -> bool {
        self.group.as_deref().unwrap_or(super::GROUP) == super::GROUP
            && self.kind.as_deref().unwrap_or("Gateway") == "Gateway"
    }
}

/// One rule of an `HTTPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// The rule's name (optional, for status and metrics).
    #[serde(default)]
    pub name: Option<String>,
    /// Any one of them selects the rule (none: every request).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied to every request the rule takes.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// A rule's timeouts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// The whole request (a Gateway API duration: `10s`, `1m`, `500ms`).
    #[serde(default)]
    pub request: Option<String>,
    /// Each try to a backend.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// One match: every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Path (default `PathPrefix /`).
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: Vec<HttpHeaderMatch>,
    /// The HTTP method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The path (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// A header (or query parameter) condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The name.
    pub name: String,
    /// The value (or regex).
    pub value: String,
}

/// A filter. Only the variant `type` names may be set; the others are refused by kind.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `URLRewrite`, `RequestRedirect`, `ResponseHeaderModifier`,
    /// `RequestMirror`, `CORS`, `ExtensionRef`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Header edits.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Path or host rewrite.
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    /// The other filters' bodies: read only to say which is unsupported.
    #[serde(default)]
    pub request_redirect: Option<serde_json::Value>,
    /// See `request_redirect`.
    #[serde(default)]
    pub response_header_modifier: Option<serde_json::Value>,
    /// See `request_redirect`.
    #[serde(default)]
    pub request_mirror: Option<serde_json::Value>,
    /// See `request_redirect`.
    #[serde(default)]
    pub cors: Option<serde_json::Value>,
    /// See `request_redirect`.
    #[serde(default)]
    pub extension_ref: Option<serde_json::Value>,
}

/// `RequestHeaderModifier`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Set (replace).
    #[serde(default)]
    pub set: Vec<NameValue>,
    /// Add (append to an existing value).
    #[serde(default)]
    pub add: Vec<NameValue>,
    /// Remove by name.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `URLRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// Host rewrite.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path rewrite.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// A path rewrite.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplacePrefixMatch` or `ReplaceFullPath`.
    #[serde(rename = "type")]
    pub type_: String,
    /// For `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
    /// For `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
}

/// A weighted backend.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// API group (default `""`, core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<i32>,
    /// Weight (default 1).
    #[serde(default)]
    pub weight: Option<i32>,
    /// Per-backend filters (refused: the mesh edits requests per route).
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
}

/// The `spec` of a `ReferenceGrant` (`v1beta1`): who (`from`) may refer to what (`to`) in the
/// grant's namespace.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    /// The referring kinds and namespaces.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// The kinds (and names) that may be referred to.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

/// A `from` of a ReferenceGrant.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantFrom {
    /// Group of the referring kind.
    #[serde(default)]
    pub group: String,
    /// The referring kind (`HTTPRoute`).
    pub kind: String,
    /// The referring namespace.
    pub namespace: String,
}

/// A `to` of a ReferenceGrant.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantTo {
    /// Group of the referred-to kind (`""`).
    #[serde(default)]
    pub group: String,
    /// The referred-to kind (`Service`).
    pub kind: String,
    /// One name, or every object of the kind when absent.
    #[serde(default)]
    pub name: Option<String>,
}
