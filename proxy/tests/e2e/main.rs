//! End-to-end tests: real `weft-proxy` processes, real TLS, real apps, all on loopback.
//! One test binary so the whole suite shares one build.

mod access_log_tests;
mod admin_tests;
mod adversarial_tests;
mod authz_tests;
mod capture_tests;
mod capture_websocket_tests;
mod control_plane_tests;
mod coverage_tests;
mod detect_tests;
mod endpoints_by_service_tests;
mod extended_connect_tests;
mod fail_closed_tests;
mod gateway_auth_tests;
mod gateway_browser_tests;
mod gateway_jwt_tests;
mod gateway_reload_tests;
mod gateway_tests;
mod gateway_ws_tests;
mod half_close_tests;
mod harness;
mod http_tests;
mod identity_tests;
mod lifecycle_tests;
mod listener_tests;
mod metrics_tests;
mod ops_tests;
mod prometheus_tests;
mod protocol_tests;
mod resilience_tests;
mod routing_tests;
mod tls_tests;
mod trace_tests;
mod trust_bundle_tests;
mod upgrade_tests;

use harness::*;

/// frontend sidecar → orders sidecar → orders app.
pub async fn pair(pki: &Pki, orders_rest: &str) -> (Sidecar, Sidecar) {
    pki.issue("frontend");
    pki.issue("orders");
    let orders_app = http_app("orders-v1").await;
    let orders = Sidecar::start(pki, Spec::new("orders", orders_app)).await;
    let fe_app = http_app("frontend").await;
    let mut spec = Spec::new("frontend", fe_app);
    spec.rest = format!(
        "services:\n{}{orders_rest}",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
    );
    let frontend = Sidecar::start(pki, spec).await;
    (frontend, orders)
}
