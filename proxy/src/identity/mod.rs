//! The sidecar's identity: its certificate material as rustls and Pingora use it
//! ([`material`]), obtaining it at start ([`bootstrap`]) and renewing it ([`certify`]) from the control plane, and the trust bundle a
//! snapshot carries ([`trust`]).

pub mod bootstrap;
pub mod certify;
pub mod material;
pub mod trust;
