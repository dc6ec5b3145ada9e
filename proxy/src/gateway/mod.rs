//! The gateway: `weft-proxy` as the way into the mesh from outside.

pub mod auth;
