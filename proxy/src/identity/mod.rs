//! The sidecar's identity: its certificate material as rustls and Pingora use it
//! ([`material`]), and obtaining and renewing it from the control plane ([`certify`]).

pub mod certify;
pub mod material;
