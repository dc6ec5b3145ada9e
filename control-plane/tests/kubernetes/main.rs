//! Kubernetes: the policy source (`source`), rendered manifests and Dockerfiles (`manifests`),
//! sidecar bootstrap with service account tokens verified by TokenReview (`tokenreview`), and
//! sidecar injection (`inject`), policy tenancy (`tenancy`), the webhook's bounds
//! (`webhook_bounds`), the injected shop run as deployed on the pod runner's pods against the
//! control-plane binary (`deployed`; needs root and network namespaces), a canary by editing a
//! MeshRoute there (`canary`), a Job with an injected sidecar there (`job`), the apps' probes
//! through their sidecars there (`probes`), the images built
//! from deploy/docker (`images`), and two control-plane replicas sharing their state through
//! the API (`replicas`), which operators change with the real `weftctl` (`ctl`).

mod canary;
mod ctl;
mod deployed;
mod images;
mod inject;
mod job;
mod manifests;
mod probes;
mod replicas;
mod source;
mod tenancy;
mod tokenreview;
mod webhook_bounds;
