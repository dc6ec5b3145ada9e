//! Kubernetes: the policy source (`source`), rendered manifests and Dockerfiles (`manifests`),
//! sidecar bootstrap with service account tokens verified by TokenReview (`tokenreview`), and
//! sidecar injection (`inject`), policy tenancy (`tenancy`) and the webhook's bounds
//! (`webhook_bounds`).

mod images;
mod inject;
mod manifests;
mod source;
mod tenancy;
mod tokenreview;
mod webhook_bounds;
