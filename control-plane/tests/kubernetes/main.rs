//! Kubernetes: the policy source (`source`), rendered manifests and Dockerfiles (`manifests`),
//! sidecar bootstrap with service account tokens verified by TokenReview (`tokenreview`), and
//! sidecar injection (`inject`), policy tenancy (`tenancy`), the webhook's bounds
//! (`webhook_bounds`), and injected sidecars run as deployed against the control-plane binary
//! (`deployed`).

mod deployed;
mod inject;
mod manifests;
mod source;
mod tenancy;
mod tokenreview;
mod webhook_bounds;
