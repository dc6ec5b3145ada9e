//! The control-plane protocol, version 1 (`weft.control.v1`): one bidirectional gRPC stream
//! per sidecar. The sidecar sends `Hello{service, endpoint_address, labels}` first, then
//! `Ack{version}` or `Nack{version, reason}` for each snapshot; the control plane sends
//! `Snapshot{version, policy_json, trust_bundle_pem}` whenever what that sidecar needs changes.
//! A gateway names its Gateway in `Hello.gateway` and gets `GatewayConfig` as a resource of its own.
//!
//! A crate of its own so the sidecar gets the generated client without the control plane's
//! CA and policy-source code, and `weft-policy` stays free of gRPC.

#![allow(missing_docs)]

/// Generated messages, client and server.
pub mod v1 {
    tonic::include_proto!("weft.control.v1");
}
