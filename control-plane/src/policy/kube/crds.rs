//! The policy resources (`weft.dev/v1alpha1`, namespaced): [`MeshRoute`], [`TrafficPolicy`]
//! and [`AuthorizationPolicy`]. Each spec *is* a policy wire type (`serde(transparent)`: the
//! same fields, unknown ones refused, the same schema), so
//! the CRDs' OpenAPI schemas are generated from the very types the control plane validates
//! with, with the same snake_case field names as the policy files.
//!
//! [`GatewayPolicy`] carries the gateway's own JWT, API key, CORS and per-client limit wire types
//! for Gateway API routes (policy attachment, [`super::gateway_api::policy_attach`]).
//!
//! [`render`] gives the CRDs as YAML (what `weftctl crds` prints and
//! `deploy/kubernetes/base/crds/` holds).

use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weft_policy::wire;

/// The API group of Weft's resources.
pub const GROUP: &str = "weft.dev";
/// Their API version.
pub const VERSION: &str = "v1alpha1";
/// The condition type the control plane sets on every policy resource.
pub const ACCEPTED: &str = "Accepted";

/// A route to a mesh service of the resource's own namespace (a policy file's `routes` item).
/// `service` names a service of that namespace (`orders`, or `orders.shop` in `shop`); naming
/// another namespace's service is refused (`CrossNamespace`). The callers in `from` may be of
/// any namespace (`web`, `web.frontend`). `name` defaults to the resource's name; of two routes
/// of one service with the same name the older holds it (the other `Conflicted`). The routes
/// of one service match in the order of their resources' names.
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshRoute",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "mroute",
    category = "weft",
    doc = "A route to a Weft mesh service: match, weighted backends (canary), timeout, retries, rewrites, faults.",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct MeshRouteSpec {
    /// The route, as in a policy file.
    pub route: wire::Route,
}

/// The traffic policy of one service of the resource's own namespace (another namespace's
/// service is refused, `CrossNamespace`): load balancer, retry budget, outlier detection (the
/// circuit breaker) and concurrency limits. One per service: the oldest applies, the others
/// are `Conflicted` (created in the same second, none applies).
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "tpol",
    category = "weft",
    doc = "How callers reach one Weft mesh service: load balancer, retry budget, outlier detection, limits.",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct TrafficPolicySpec {
    /// The settings, as a policy file's service would carry them.
    pub policy: wire::TrafficPolicy,
}

/// Who may call one service of the resource's own namespace (a policy file's `authorization`
/// item; another namespace's service is refused, `CrossNamespace`; callers may be of any
/// namespace). One per service: the oldest applies, the others are `Conflicted` (created in
/// the same second, none applies).
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "authz",
    category = "weft",
    doc = "Inbound authorization of one Weft mesh service: allow rules by caller identity, path and method.",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Default","type":"string","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct AuthorizationPolicySpec {
    /// The rules, as in a policy file.
    pub authorization: wire::ServiceAuthorization,
}

/// JWT, API key, CORS and per-client limit settings for gateway routes made from Gateway API
/// routes (policy attachment, GEP-713 "direct"): each of `targetRefs` names an `HTTPRoute` or
/// `GRPCRoute` of the policy's own namespace (and with `sectionName`, one of its rules by
/// `name`). `auth` is the gateway file's `auth` section (its providers' and key sets' names are
/// the policy's own), `access` a gateway route's `access` block; both are the gateway's own
/// wire types. Of two policies naming the same target the older (then namespace/name) wins; a
/// policy naming a rule wins over one naming the whole route for that rule. An invalid policy
/// closes the routes it targets (`503`) until it is fixed.
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "GatewayPolicy",
    namespaced,
    status = "GatewayPolicyStatus",
    derive = "PartialEq",
    shortname = "gwpol",
    category = "weft",
    doc = "Authentication (JWT, API keys), CORS and per-client rate limits for the gateway routes of Gateway API HTTPRoutes and GRPCRoutes.",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRefs[0].name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.ancestors[0].conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct GatewayPolicySpec {
    /// The routes (or rules) the policy applies to, in its own namespace.
    pub target_refs: Vec<PolicyTargetRef>,
    /// JWT providers and API key sets, as the gateway file's `auth` (`max_clients` is the
    /// gateway's own and refused here; file paths are absolute paths in the gateway's pod).
    #[serde(default)]
    pub auth: weft_policy::gateway_auth::wire::GatewayAuthFile,
    /// Who may call, CORS, per-client limit: a gateway route's `access`, naming the providers
    /// and key sets of `auth`.
    #[serde(default)]
    pub access: weft_policy::gateway_auth::wire::RouteAccessFile,
}

/// A route a [`GatewayPolicy`] applies to (GEP-713's `LocalPolicyTargetReferenceWithSectionName`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// `gateway.networking.k8s.io`.
    pub group: String,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    /// The route's name.
    pub name: String,
    /// The name of one of the route's rules (`rules[].name`); none: every rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// What the control plane says about a [`GatewayPolicy`]: one entry per Gateway its targets
/// attach to (or per target not found).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPolicyStatus {
    /// Per ancestor (a Gateway, or the target itself when not found).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// One `status.ancestors[]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    /// The Gateway (or the target when not found).
    pub ancestor_ref: AncestorRef,
    /// Who wrote the entry.
    pub controller_name: String,
    /// `Accepted`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// An ancestor, as a Gateway API `ParentReference`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AncestorRef {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What the control plane says about a policy resource.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `Accepted`: whether the resource is in force, and if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition, in the shape Kubernetes uses everywhere (`metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition type (`Accepted`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word for programs (`Accepted`, `Invalid`, `CrossNamespace`, `Conflicted`,
    /// `ServiceNotFound`).
    pub reason: String,
    /// What is wrong, for people.
    pub message: String,
    /// The `metadata.generation` the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The CRDs: file name in `deploy/kubernetes/base/crds/` and YAML text.
pub fn render() -> Vec<(&'static str, String)> {
    let header = "# Generated from the Rust policy types by `weftctl crds --out deploy/kubernetes/base/crds`.\n\
                  # Do not edit: change the types in policy/src/wire.rs and regenerate.\n";
    [
        ("meshroutes.yaml", MeshRoute::crd()),
        ("trafficpolicies.yaml", TrafficPolicy::crd()),
        ("authorizationpolicies.yaml", AuthorizationPolicy::crd()),
        ("gatewaypolicies.yaml", GatewayPolicy::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| {
        // A CRD always serializes (plain data); were it not to, the drift test shows it.
        let yaml = serde_yaml::to_string(&crd).unwrap_or_else(|e| format!("# error: {e}\n"));
        (file, format!("{header}{}", quote_yaml11_keys(&yaml)))
    })
    .collect()
}

/// Quote mapping keys that YAML 1.1 reads as booleans. kubectl parses YAML 1.1 style, so the
/// retry policy's unquoted `on:` would reach the API server as the key `"true"`; serde_yaml
/// (YAML 1.2) leaves it bare.
fn quote_yaml11_keys(yaml: &str) -> String {
    const BOOLISH: [&str; 10] = ["on", "off", "yes", "no", "y", "n", "On", "Off", "Yes", "No"];
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_start_matches(' ');
        let indent = &line[..line.len() - body.len()];
        let (dash, rest) = match body.strip_prefix("- ") {
            Some(r) => ("- ", r),
            None => ("", body),
        };
        match rest.split_once(':') {
            Some((key, tail))
                if BOOLISH.contains(&key) && (tail.starts_with(' ') || tail.starts_with('\n')) =>
            {
                out.push_str(&format!("{indent}{dash}\"{key}\":{tail}"));
            }
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_spec_reads_a_policy_file_route_and_names_default_to_empty() {
        let spec: MeshRouteSpec = serde_json::from_value(serde_json::json!({
            "service": "orders",
            "match": {"path": {"prefix": "/api"}},
            "retry": {"grpc_codes": ["unavailable", 14]}
        }))
        .expect("parses");
        assert_eq!(spec.route.name, "");
        assert_eq!(spec.route.service, "orders");
        assert_eq!(
            spec.route.retry.expect("retry").grpc_codes,
            [
                wire::NameOrNumber::Name("unavailable".into()),
                wire::NameOrNumber::Number(14)
            ]
        );
        let bad = serde_json::from_value::<MeshRouteSpec>(serde_json::json!({
            "service": "orders", "colour": "blue"
        }));
        assert!(bad.is_err(), "unknown fields are refused: {bad:?}");
    }

    #[test]
    fn yaml11_boolean_keys_are_quoted() {
        assert_eq!(
            quote_yaml11_keys("a:\n  on:\n    x: on\n  - no: 1\n  online: 2\n"),
            "a:\n  \"on\":\n    x: on\n  - \"no\": 1\n  online: 2\n"
        );
    }
}
