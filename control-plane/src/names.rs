//! The control plane's own names: the identity it serves with, which the injector also writes
//! into every sidecar (the name the sidecar expects on the control plane's certificate). A leaf
//! module, so the server and the injector both name it without depending on each other.

/// Namespace and service account of the control plane's own identity.
pub const CONTROL_PLANE_NAMESPACE: &str = "weft-system";
/// Service account of the control plane's own identity.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "control-plane";
