//! The kinds the stand-in serves: group, version, plural, scope, and the API server behaviours
//! that differ by kind (a status subresource, generation, graceful deletion).

/// One kind the stand-in serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindSpec {
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    /// API version, such as `v1` or `v1alpha1`.
    pub version: &'static str,
    /// The `kind`, such as `Pod`.
    pub kind: &'static str,
    /// The resource name in paths, such as `pods`.
    pub plural: &'static str,
    /// Whether objects live in namespaces (false: cluster-scoped, such as Namespaces).
    pub namespaced: bool,
    /// Writes to the object ignore `status`, which changes only through `/status` (Pods and
    /// custom resources with the subresource, as the Weft CRDs declare it).
    pub status_subresource: bool,
    /// `metadata.generation` starts at 1 and moves when `spec` does (custom resources).
    pub generation: bool,
    /// A DELETE first sets `deletionTimestamp` and the object stays until deleted again with
    /// `gracePeriodSeconds=0` (Pods bound to a node: the kubelet finishes the deletion).
    pub graceful_delete: bool,
}

impl KindSpec {
    /// `group/version`, or `version` for the core group: the objects' `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// A built-in kind (list items carry no kind/apiVersion, as the API server serves them).
    pub fn builtin(&self) -> bool {
        // Gateway API kinds are custom resources (installed CRDs) despite their k8s.io group.
        self.group != GATEWAY_GROUP
            && (!self.group.contains('.') || self.group.ends_with(".k8s.io"))
    }

    /// `plural.group` (`plural` alone for the core group), as conflict messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    const fn core(kind: &'static str, plural: &'static str, namespaced: bool) -> Self {
        Self {
            group: "",
            version: "v1",
            kind,
            plural,
            namespaced,
            status_subresource: false,
            generation: false,
            graceful_delete: false,
        }
    }

    /// A Gateway API kind (`gateway.networking.k8s.io`): a custom resource with a status
    /// subresource and a generation, as the Gateway API CRDs declare them.
    pub const fn gateway(
        kind: &'static str,
        plural: &'static str,
        version: &'static str,
        namespaced: bool,
    ) -> Self {
        Self {
            group: GATEWAY_GROUP,
            version,
            kind,
            plural,
            namespaced,
            status_subresource: true,
            generation: true,
            graceful_delete: false,
        }
    }

    const fn custom(kind: &'static str, plural: &'static str) -> Self {
        Self {
            group: "weft.dev",
            version: "v1alpha1",
            kind,
            plural,
            namespaced: true,
            status_subresource: true,
            generation: true,
            graceful_delete: false,
        }
    }
}

/// The Gateway API's group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The Gateway API kinds (the standard channel's CRDs): what the control plane watches when
/// they are installed. A stand-in started without them (`ApiServer::start_with`) is a cluster
/// without the Gateway API.
pub fn gateway_api() -> Vec<KindSpec> {
    let mut grants = KindSpec::gateway("ReferenceGrant", "referencegrants", "v1beta1", true);
    // ReferenceGrants have no status.
    grants.status_subresource = false;
    vec![
        KindSpec::gateway("GatewayClass", "gatewayclasses", "v1", false),
        KindSpec::gateway("Gateway", "gateways", "v1", true),
        KindSpec::gateway("HTTPRoute", "httproutes", "v1", true),
        KindSpec::gateway("GRPCRoute", "grpcroutes", "v1", true),
        grants,
    ]
}

/// The kinds every stand-in serves: what the control plane, the sidecar injector and a
/// kubelet-like pod runner use, and the Gateway API's ([`gateway_api`]).
pub fn defaults() -> Vec<KindSpec> {
    let mut pods = KindSpec::core("Pod", "pods", true);
    pods.status_subresource = true;
    pods.graceful_delete = true;
    let mut slices = KindSpec::core("EndpointSlice", "endpointslices", true);
    slices.group = "discovery.k8s.io";
    let mut leases = KindSpec::core("Lease", "leases", true);
    leases.group = "coordination.k8s.io";
    vec![
        KindSpec::core("Namespace", "namespaces", false),
        KindSpec::core("Service", "services", true),
        slices,
        pods,
        KindSpec::core("ServiceAccount", "serviceaccounts", true),
        KindSpec::core("ConfigMap", "configmaps", true),
        KindSpec::core("Secret", "secrets", true),
        leases,
        KindSpec::custom("MeshRoute", "meshroutes"),
        KindSpec::custom("TrafficPolicy", "trafficpolicies"),
        KindSpec::custom("AuthorizationPolicy", "authorizationpolicies"),
        KindSpec::custom("GatewayPolicy", "gatewaypolicies"),
    ]
    .into_iter()
    .chain(gateway_api())
    .collect()
}
