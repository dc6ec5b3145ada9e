//! Kubernetes integration tests of the control plane.

mod inject;
