//! Kubernetes: the policy source (`source`), rendered manifests and Dockerfiles (`manifests`),
//! sidecar bootstrap with service account tokens verified by TokenReview (`tokenreview`), and
//! sidecar injection (`inject`), policy tenancy (`tenancy`), the webhook's bounds
//! (`webhook_bounds`), injected sidecars run as deployed against the control-plane binary
//! (`deployed`), and the images built from deploy/docker (`images`).

mod deployed;
mod images;
mod inject;
mod manifests;
mod source;
mod tenancy;
mod tokenreview;
mod webhook_bounds;
