//! Kubernetes: the policy source (`source`), rendered manifests and Dockerfiles (`manifests`),
//! sidecar bootstrap with service account tokens verified by TokenReview (`tokenreview`), and
//! sidecar injection (`inject`), policy tenancy (`tenancy`), the webhook's bounds
//! (`webhook_bounds`) and two control-plane replicas sharing their state through the API
//! (`replicas`).

mod inject;
mod manifests;
mod replicas;
mod source;
mod tenancy;
mod tokenreview;
mod webhook_bounds;
