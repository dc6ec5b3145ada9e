//! Kubernetes: the policy source (and, from other parts of issue 7, injection and tokens).

mod source;
