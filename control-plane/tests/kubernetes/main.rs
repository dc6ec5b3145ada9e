//! Kubernetes: rendered manifests and Dockerfiles (`manifests`), and sidecar bootstrap with
//! service account tokens verified by TokenReview (`tokenreview`).

mod manifests;
mod tokenreview;
