//! Protocol detection's settings: how long a sidecar reads a captured connection's first bytes
//! (`service.detect_timeout`), and the ports it never reads them on (`service.opaque_ports`,
//! a service's `opaque_ports`).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::Validator;

/// Default wait for a captured connection's first bytes to an `http` or `grpc` service. A
/// client-first protocol sends them within a round trip on the pod's loopback; only a
/// server-first protocol on a port nobody declared opaque waits this long (Linkerd: 10 s).
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(300);

/// `service.detect_timeout`'s allowed range: 1 ms to 5 s.
pub const DETECT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(5));

/// Ports opaque by default: server-first protocols and the well-known ports whose clients
/// detection gains nothing on (Linkerd's list): SMTP (25, 587), MySQL (3306), Galera (4444),
/// PostgreSQL (5432), Redis (6379), Elasticsearch transport (9300), memcached (11211).
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// Most ports one `opaque_ports` list may name.
pub const MAX_OPAQUE_PORTS: usize = 1024;

impl Validator<'_> {
    /// An `opaque_ports` list: ports 1 to 65535, each once, at most [`MAX_OPAQUE_PORTS`];
    /// an invalid entry is an error at its own index and is left out.
    pub(crate) fn opaque_ports(&mut self, field: &str, raw: Vec<u16>) -> Vec<u16> {
        if raw.len() > MAX_OPAQUE_PORTS {
            self.err(
                field,
                format!("at most {MAX_OPAQUE_PORTS} ports, got {}", raw.len()),
            );
            return Vec::new();
        }
        let mut seen = BTreeSet::new();
        for (i, port) in raw.into_iter().enumerate() {
            if port == 0 {
                self.err(format!("{field}[{i}]"), "port 0 is not a port");
            } else if !seen.insert(port) {
                self.err(format!("{field}[{i}]"), format!("duplicate port {port}"));
            }
        }
        seen.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{locate, parse, Config, ConfigError, FieldError};

    const FILE: &str = r#"
service:
  name: frontend
  identity: spiffe://weft.local/ns/default/sa/frontend
  app: 127.0.0.1:8080
OWN
tls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}
services:
  - name: db
    identity: spiffe://weft.local/ns/default/sa/db
SVC
"#;

    fn file(own: &str, svc: &str) -> String {
        FILE.replace("OWN\n", own).replace("SVC\n", svc)
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("weft.yaml"), Path::new("/etc/weft"))
    }

    /// The errors, each as `line: field: reason` (the line from [`locate`]).
    fn errors(text: &str) -> Vec<String> {
        match load(text) {
            Err(ConfigError::Invalid { errors, .. }) => errors
                .iter()
                .map(|e: &FieldError| {
                    let line = locate(text, &e.field).map_or(0, |l| l.line);
                    format!("{line}: {}: {}", e.field, e.reason)
                })
                .collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_timeout_and_well_known_ports() {
        let c = load(&file("", "")).expect("valid");
        assert_eq!(c.own.detect_timeout, Duration::from_millis(300));
        assert_eq!(c.own.opaque_ports, DEFAULT_OPAQUE_PORTS);
        assert!(c.services[0].opaque_ports.is_empty());
    }

    #[test]
    fn both_lists_override_and_empty_means_none() {
        let c = load(&file(
            "  detect_timeout: 50ms\n  opaque_ports: []\n",
            "    opaque_ports: [2525, 25]\n",
        ))
        .expect("valid");
        assert_eq!(c.own.detect_timeout, Duration::from_millis(50));
        assert!(c.own.opaque_ports.is_empty());
        assert_eq!(c.services[0].opaque_ports, [25, 2525]);
    }

    #[test]
    fn bad_values_are_refused_at_their_line() {
        let text = file(
            "  detect_timeout: 10s\n  opaque_ports: [0, 5432, 5432]\n",
            "    opaque_ports: [9000, 0]\n",
        );
        let errs = errors(&text);
        assert_eq!(
            errs,
            [
                "6: service.detect_timeout: must be 1ms to 5s, got 10s",
                "7: service.opaque_ports[0]: port 0 is not a port",
                "7: service.opaque_ports[2]: duplicate port 5432",
                "12: services[0].opaque_ports[1]: port 0 is not a port",
            ],
            "{errs:#?}"
        );
        let many: Vec<String> = (1..=1025).map(|p| p.to_string()).collect();
        let text = file(&format!("  opaque_ports: [{}]\n", many.join(",")), "");
        assert_eq!(
            errors(&text),
            ["6: service.opaque_ports: at most 1024 ports, got 1025"]
        );
        // Not a number, or out of range: a syntax error at its line and column.
        for bad in ["[70000]", "[smtp]", "5432"] {
            let text = file(&format!("  opaque_ports: {bad}\n"), "");
            let msg = load(&text).expect_err(bad).to_string();
            assert!(msg.starts_with("weft.yaml:6:"), "{bad}: {msg}");
        }
    }

    #[test]
    fn a_newer_fields_wire_form_round_trips_and_older_readers_drop_it() {
        let svc = crate::wire::Service {
            name: "db".into(),
            hosts: vec![],
            identity: "spiffe://weft.local/ns/default/sa/db".into(),
            protocol: None,
            port: None,
            load_balancer: None,
            endpoints: vec![],
            retry_budget: None,
            outlier_detection: None,
            limits: None,
            escaped_slashes: None,
            opaque_ports: Some(vec![3306]),
        };
        let json = serde_json::to_string(&svc).expect("json");
        assert!(json.contains("\"opaque_ports\":[3306]"), "{json}");
        let (back, ignored) =
            crate::lenient::from_json::<crate::wire::Service>(json.as_bytes()).expect("read");
        assert_eq!(back, svc);
        assert!(ignored.is_empty());
        // Absent: no field on the wire at all (older sidecars never see it).
        let none = crate::wire::Service {
            opaque_ports: None,
            ..svc
        };
        assert!(!serde_json::to_string(&none)
            .expect("json")
            .contains("opaque"));
    }
}
