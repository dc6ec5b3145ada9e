//! The mesh policy: what it is ([`mesh::MeshPolicy`], validated with the sidecar's own code and
//! cut into one snapshot per calling service) and where it comes from ([`source`]: a watched
//! directory of YAML files, and [`source::LastGood`], which keeps the last valid policy in
//! force; [`kube`]: the Kubernetes API).

pub mod kube;
pub mod mesh;
pub mod source;
