//! The sidecar's config: the policy model of the `weft-policy` crate (wire types, validated
//! types and their validation), shared with the control plane. Re-exported whole so the
//! sidecar reads `crate::config::*` as before.

pub use weft_policy::*;
