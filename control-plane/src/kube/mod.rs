//! Kubernetes as the policy source: the policy resources ([`crds`]), the mapping from
//! Services, EndpointSlices, Pods and those resources to the mesh policy ([`mapping`], pure),
//! and the watching source behind [`crate::source::PolicySource`] ([`source::KubeSource`]).

pub mod crds;
pub mod mapping;
pub mod source;
