//! The resilience scenarios' outbound sidecar configs: the `services:` part without and
//! with the policies, for a balancer, and the whole client-side config built on
//! [`crate::mesh::client_sidecar_head`].

use std::fmt::Write as _;

use crate::mesh::APP_ID;

use super::variant::*;

/// The `services:` and `routes:` part of an outbound sidecar's config: the
/// service `app` (identity [`APP_ID`]) at the sidecars listening on
/// `127.0.0.1:<port>` for each of `endpoint_ports`, with one catch-all route
/// `all`, without or with the resilience policies, with `balancer` (the
/// default one is left implicit).
pub fn services_yaml(endpoint_ports: &[u16], policies: Policies, balancer: Balancer) -> String {
    let endpoints: Vec<String> = endpoint_ports
        .iter()
        .map(|p| format!("{{address: \"127.0.0.1:{p}\"}}"))
        .collect();
    let mut s = format!(
        "services:\n\
         \x20 - name: app\n\
         \x20   identity: \"{APP_ID}\"\n\
         \x20   endpoints: [{}]\n",
        endpoints.join(", ")
    );
    if balancer != Balancer::P2cEwma {
        let _ = writeln!(s, "    load_balancer: {}", balancer.as_str());
    }
    match policies {
        Policies::Without => {
            s.push_str(
                "    outlier_detection: {consecutive_failures: 0}\n\
                 routes:\n\
                 \x20 - name: all\n\
                 \x20   service: app\n",
            );
        }
        Policies::With => {
            s.push_str(
                "    outlier_detection: {consecutive_failures: 5, base_ejection_time: 10s, max_ejection_time: 300s, max_ejected_percent: 50, failures: 5xx}\n\
                 \x20   retry_budget: {ratio: 0.2, min_per_second: 10, window: 10s}\n\
                 \x20   limits: {max_in_flight: 1024, max_pending: 1024, queue_timeout: 1s}\n\
                 routes:\n\
                 \x20 - name: all\n\
                 \x20   service: app\n\
                 \x20   retry:\n\
                 \x20     on: [5xx, connect-failure, refused-stream, reset]\n\
                 \x20     attempts: 3\n\
                 \x20     backoff: {base: 25ms, max: 250ms}\n\
                 \x20   rate_limit: {requests_per_second: 1000000000, burst: 1000000}\n",
            );
        }
    }
    s
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
        let y = services_yaml(&[1001], Policies::Without, P2C);
        assert_eq!(
            y,
            "services:\n\
             \x20 - name: app\n\
             \x20   identity: \"spiffe://weft.local/ns/default/sa/app\"\n\
             \x20   endpoints: [{address: \"127.0.0.1:1001\"}]\n\
             \x20   outlier_detection: {consecutive_failures: 0}\n\
             routes:\n\
             \x20 - name: all\n\
             \x20   service: app\n"
        );
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
        let y = services_yaml(&[1001, 1002, 1003], Policies::With, P2C);
        assert_eq!(
            y,
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
"#
        );
        // Both variants differ only in the policy lines.
        let without = services_yaml(&[1001, 1002, 1003], Policies::Without, P2C);
        let common = |y: &str| -> Vec<String> {
            y.lines()
                .filter(|l| {
                    ![
                        "outlier_detection",
                        "retry",
                        "limits",
                        "on:",
                        "attempts",
                        "backoff",
                        "rate_limit",
                    ]
                    .iter()
                    .any(|k| l.trim_start().starts_with(k))
                })
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(common(&y), common(&without));
    }

    #[test]
    fn round_robin_adds_one_line() {
        for p in Policies::BOTH {
            let p2c = services_yaml(&[1, 2, 3], p, P2C);
            let rr = services_yaml(&[1, 2, 3], p, RR);
            let mut lines: Vec<&str> = rr.lines().collect();
            assert_eq!(lines.remove(4), "    load_balancer: round_robin", "{rr}");
            assert_eq!(lines, p2c.lines().collect::<Vec<_>>());
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
