//! Kubernetes: the policy source (`source`), rendered manifests and Dockerfiles (`manifests`),
//! sidecar bootstrap with service account tokens verified by TokenReview (`tokenreview`), and
//! sidecar injection (`inject`), policy tenancy (`tenancy`), the webhook's bounds
//! (`webhook_bounds`), injected sidecars run as deployed against the control-plane binary
//! (`deployed`), the images built from deploy/docker (`images`), and two control-plane replicas
//! sharing their state through the API (`replicas`), which operators change with the real
//! `weftctl` (`ctl`).

mod ctl;
mod deployed;
mod images;
mod inject;
mod manifests;
mod replicas;
mod source;
mod tenancy;
mod tokenreview;
mod webhook_bounds;
