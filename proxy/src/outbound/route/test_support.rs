//! A routing table from a sidecar config's text, for the stage modules' unit tests.

use std::path::Path;
use std::sync::Arc;

use super::Routes;
use crate::telemetry::metrics::Metrics;

/// The caller of every test table.
pub const HEAD: &str = "service: {name: frontend, identity: spiffe://weft.local/ns/default/sa/frontend, app: \"127.0.0.1:8080\"}\n\
                        tls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}\n";

/// Routes for `HEAD` + `rest` (services, routes), carrying state over from `prev`.
pub fn routes(rest: &str, prev: Option<&Routes>, metrics: &Arc<Metrics>) -> Routes {
    let text = format!("{HEAD}{rest}");
    let config = weft_policy::parse(&text, Path::new("t.yaml"), Path::new("/")).expect("valid");
    Routes::build(
        config.services,
        "frontend",
        "spiffe://weft.local/ns/default/sa/frontend",
        prev,
        metrics,
    )
}
