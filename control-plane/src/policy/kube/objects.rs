//! Which object a verdict is about: its kind, namespace and name (apart from the mapping, so
//! the Gateway API translation names them without depending on it).

use std::fmt;

/// The kinds of object a mapping verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A Kubernetes Service (no condition is written on it; its rejection is logged).
    Service,
    /// A `MeshRoute`.
    MeshRoute,
    /// A `TrafficPolicy`.
    TrafficPolicy,
    /// An `AuthorizationPolicy`.
    AuthorizationPolicy,
    /// A Gateway API `HTTPRoute` (its status is per parent, as the mapping's GAMMA verdicts).
    HttpRoute,
    /// A Gateway API `GRPCRoute` (likewise).
    GrpcRoute,
    /// A Gateway API `Gateway` (north-south; its status has listeners).
    Gateway,
    /// A Gateway API `GatewayClass` (cluster-scoped: no namespace).
    GatewayClass,
    /// A `GatewayPolicy` (its status is per ancestor Gateway).
    GatewayPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::MeshRoute => "MeshRoute",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::Gateway => "Gateway",
            Kind::GatewayClass => "GatewayClass",
            Kind::GatewayPolicy => "GatewayPolicy",
        })
    }
}

/// Which object: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}
