//! The push to sidecars over `weft.control.v1`: [`hub::Hub`] holds the policy in force and
//! every connected sidecar's slot, `grpc` serves the streams and certificate issuance, [`join`] decides who may
//! join as what, and
//! `push_stream` frames one encoded snapshot for every stream without a copy each.

pub(crate) mod grpc;
pub mod hub;
pub mod join;
pub(crate) mod push_stream;
pub(crate) mod slot;
