//! The resilience scenarios' settings and outbound sidecar configs: the policy part
//! (`services:` and `routes:`) without and with the policies, for a balancer, built from the
//! policy crate's types, the whole client-side config on [`crate::mesh::client_sidecar_base`],
//! and the settings recorded with the results ([`ResilienceConfig`]).

use std::collections::BTreeMap;

use serde::Serialize;
use weft_policy::wire::{
    Backoff, ConfigFile, Limits, OutlierDetection, PolicySnapshot, RateLimit, Retry, RetryBudget,
    Route,
};

use crate::mesh::{app_service, client_sidecar_base, SidecarPorts};

use super::variant::{Balancer, Policies};

/// The policy part of an outbound sidecar's config: the service `app` (identity
/// [`crate::mesh::APP_ID`]) at the sidecars listening on `127.0.0.1:<port>` for each of
/// `endpoint_ports`, with one catch-all route `all`, without or with the resilience
/// policies, with `balancer` (the default one is left implicit).
///
/// Without policies, outlier detection is turned off (`consecutive_failures: 0`): it is the
/// one resilience feature on by default. With them: outlier detection, a retry budget,
/// limits, and on the route retries on 5xx and connection failures plus a rate limit far
/// above any load (so it costs its bookkeeping but never rejects).
pub fn policy_part(
    endpoint_ports: &[u16],
    policies: Policies,
    balancer: Balancer,
) -> PolicySnapshot {
    let mut app = app_service(endpoint_ports);
    if balancer != Balancer::P2cEwma {
        app.load_balancer = Some(balancer.as_str().to_owned());
    }
    let mut route = Route {
        name: "all".to_owned(),
        service: "app".to_owned(),
        from: None,
        matches: Default::default(),
        backends: Vec::new(),
        timeout: None,
        rewrite: None,
        request_headers: None,
        retry: None,
        rate_limit: None,
        fault: None,
    };
    match policies {
        Policies::Without => {
            app.outlier_detection = Some(OutlierDetection {
                consecutive_failures: Some(0),
                ..Default::default()
            });
        }
        Policies::With => {
            app.outlier_detection = Some(OutlierDetection {
                consecutive_failures: Some(5),
                base_ejection_time: Some("10s".into()),
                max_ejection_time: Some("300s".into()),
                max_ejected_percent: Some(50),
                failures: Some("5xx".into()),
            });
            app.retry_budget = Some(RetryBudget {
                ratio: Some(0.2),
                min_per_second: Some(10),
                window: Some("10s".into()),
            });
            app.limits = Some(Limits {
                max_in_flight: Some(1024),
                max_pending: Some(1024),
                queue_timeout: Some("1s".into()),
                max_connections: None,
            });
            route.retry = Some(Retry {
                on: Some(
                    ["5xx", "connect-failure", "refused-stream", "reset"]
                        .map(String::from)
                        .to_vec(),
                ),
                attempts: Some(3),
                backoff: Some(Backoff {
                    base: Some("25ms".into()),
                    max: Some("250ms".into()),
                }),
                ..Default::default()
            });
            route.rate_limit = Some(RateLimit {
                requests_per_second: 1_000_000_000.0,
                burst: Some(1_000_000),
                per_caller: None,
            });
        }
    }
    PolicySnapshot {
        version: String::new(),
        services: vec![app],
        routes: vec![route],
        authorization: None,
    }
}

/// [`policy_part`] as the YAML the report records for each variant.
pub fn services_yaml(
    endpoint_ports: &[u16],
    policies: Policies,
    balancer: Balancer,
) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&policy_part(
        endpoint_ports,
        policies,
        balancer,
    ))?)
}

/// Config of an outbound sidecar beside the client (service `client`) that
/// may call `app` at the sidecars listening on `app_inbound_ports`, without
/// or with the resilience policies, with `balancer` ([`policy_part`]).
pub fn policy_client_sidecar(
    unused_app_port: u16,
    ports: SidecarPorts,
    app_inbound_ports: &[u16],
    policies: Policies,
    balancer: Balancer,
) -> ConfigFile {
    let policy = policy_part(app_inbound_ports, policies, balancer);
    let mut cfg = client_sidecar_base(unused_app_port, ports);
    cfg.services = policy.services;
    cfg.routes = policy.routes;
    cfg
}

/// The resilience scenarios' settings, recorded with the results.
#[derive(Debug, Clone, Serialize)]
pub struct ResilienceConfig {
    /// Endpoints of the service in the failing-endpoint scenario.
    pub endpoints: usize,
    /// Of those, answering every request with `fail_status`.
    pub failing_endpoints: usize,
    /// The failing endpoint's status.
    pub fail_status: u16,
    /// How the failing-endpoint scenario loads the sidecar.
    pub load: String,
    /// The balancers it runs both variants with.
    pub balancers: Vec<Balancer>,
    /// Its request rate, requests per second.
    pub rate: f64,
    /// Its keep-alive connections.
    pub connections: usize,
    /// Its warm-up, seconds.
    pub warmup_s: f64,
    /// Its measured window, seconds.
    pub duration_s: f64,
    /// Connections of the healthy-path saturation runs.
    pub healthy_connections: usize,
    /// Measured window of the healthy-path saturation runs, seconds.
    pub healthy_duration_s: f64,
    /// The failing-endpoint outbound sidecars' `services:` / `routes:` (as
    /// run), by [`Variant::key`]. (The healthy-path ones are the P2C ones
    /// with the pair's one endpoint.)
    pub services_yaml: BTreeMap<String, String>,
}

/// Whether `weft-proxy --check` output says the config has fields it does
/// not know (a proxy built before the resilience policies).
pub fn is_unknown_field_error(check_output: &str) -> bool {
    check_output.contains("unknown field")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const P2C: Balancer = Balancer::P2cEwma;
    const RR: Balancer = Balancer::RoundRobin;

    #[test]
    fn without_policies_disables_outlier_detection_only() {
        let p = policy_part(&[1001], Policies::Without, P2C);
        let expected: PolicySnapshot = serde_yaml::from_str(
            "services:\n\
             \x20 - name: app\n\
             \x20   identity: \"spiffe://weft.local/ns/default/sa/app\"\n\
             \x20   endpoints: [{address: \"127.0.0.1:1001\"}]\n\
             \x20   outlier_detection: {consecutive_failures: 0}\n\
             routes:\n\
             \x20 - name: all\n\
             \x20   service: app\n",
        )
        .unwrap();
        assert_eq!(p, expected);
        let y = services_yaml(&[1001], Policies::Without, P2C).unwrap();
        for absent in [
            "retry",
            "rate_limit",
            "limits",
            "retry_budget",
            "load_balancer",
        ] {
            assert!(!y.contains(absent), "{absent} in\n{y}");
        }
    }

    #[test]
    fn with_policies_is_the_agreed_block() {
        let p = policy_part(&[1001, 1002, 1003], Policies::With, P2C);
        let expected: PolicySnapshot = serde_yaml::from_str(
            r#"services:
  - name: app
    identity: "spiffe://weft.local/ns/default/sa/app"
    endpoints: [{address: "127.0.0.1:1001"}, {address: "127.0.0.1:1002"}, {address: "127.0.0.1:1003"}]
    outlier_detection: {consecutive_failures: 5, base_ejection_time: 10s, max_ejection_time: 300s, max_ejected_percent: 50, failures: 5xx}
    retry_budget: {ratio: 0.2, min_per_second: 10, window: 10s}
    limits: {max_in_flight: 1024, max_pending: 1024, queue_timeout: 1s}
routes:
  - name: all
    service: app
    retry:
      on: [5xx, connect-failure, refused-stream, reset]
      attempts: 3
      backoff: {base: 25ms, max: 250ms}
    rate_limit: {requests_per_second: 1000000000, burst: 1000000}
"#,
        )
        .unwrap();
        assert_eq!(p, expected);
        // Both variants differ only in the policy fields.
        let mut without = policy_part(&[1001, 1002, 1003], Policies::Without, P2C);
        let mut with = p;
        for p in [&mut without, &mut with] {
            p.services[0].outlier_detection = None;
            p.services[0].retry_budget = None;
            p.services[0].limits = None;
            p.routes[0].retry = None;
            p.routes[0].rate_limit = None;
        }
        assert_eq!(with, without);
    }

    #[test]
    fn round_robin_adds_one_field() {
        for p in Policies::BOTH {
            let p2c = policy_part(&[1, 2, 3], p, P2C);
            let mut rr = policy_part(&[1, 2, 3], p, RR);
            assert_eq!(rr.services[0].load_balancer.as_deref(), Some("round_robin"));
            rr.services[0].load_balancer = None;
            assert_eq!(rr, p2c);
            let y = services_yaml(&[1, 2, 3], p, RR).unwrap();
            assert!(y.contains("load_balancer: round_robin"), "{y}");
        }
    }

    #[test]
    fn unknown_field_detection() {
        assert!(is_unknown_field_error(
            "a.yaml:7:5: services[0]: unknown field `outlier_detection`, expected one of `name`"
        ));
        assert!(!is_unknown_field_error("a.yaml: tls.cert: no such file"));
    }
}
