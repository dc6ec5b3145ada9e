//! A Service's opaque ports: the ports a captured connection to it takes the TCP path on at
//! once, never detected (`weft_policy::wire::Service::opaque_ports`). From, in this order:
//!
//! - the annotation `weft.dev/opaque-ports` (Linkerd's `config.linkerd.io/opaque-ports`):
//!   ports and ranges, comma-separated (`5432,8000-8010`); an entry that is not a port or a
//!   range of at most [`MAX_RANGE`] ports is logged and left out, the rest still count;
//! - a port's `appProtocol` naming a non-HTTP protocol (`tcp`, `tls`, `mysql`, `postgresql`,
//!   `redis`, `mongo`, ...): anything but `http`, `https`, `http2`, `grpc`, `h2c` and the
//!   `kubernetes.io/` HTTP values;
//! - without `appProtocol`, a port name Istio reads as non-HTTP: `tcp`, `tls`, `mongo`,
//!   `mysql`, `redis`, `postgres`, alone or as a prefix before `-` (`tcp-db`, `mysql-main`).
//!
//! Each such port counts as both the Service port (a connection to the ClusterIP) and its
//! numeric `targetPort` (a connection to a pod IP). The well-known list
//! (`weft_policy::DEFAULT_OPAQUE_PORTS`) is the calling sidecar's own default, not added here.

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_policy::MAX_OPAQUE_PORTS;

/// Service annotation listing opaque ports.
pub const OPAQUE_PORTS_ANNOTATION: &str = "weft.dev/opaque-ports";

/// Most ports one range in the annotation may span.
pub const MAX_RANGE: u32 = 1024;

/// Port-name protocols that are not HTTP (Istio's port-name convention).
const OPAQUE_NAMES: [&str; 6] = ["tcp", "tls", "mongo", "mysql", "redis", "postgres"];

/// `appProtocol` values that are HTTP (detected, not opaque).
const HTTP_APP_PROTOCOLS: [&str; 8] = [
    "http",
    "https",
    "http2",
    "grpc",
    "h2c",
    "kubernetes.io/h2c",
    "kubernetes.io/ws",
    "kubernetes.io/wss",
];

/// The annotation's ports; bad entries are logged (with the Service's `name`) and skipped.
pub fn parse_annotation(name: &str, value: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match parse_entry(entry) {
            Ok((lo, hi)) => out.extend(lo..=hi),
            Err(why) => log::warn!("Service {name}: {OPAQUE_PORTS_ANNOTATION}: {entry:?}: {why}"),
        }
        if out.len() >= MAX_OPAQUE_PORTS {
            log::warn!("Service {name}: {OPAQUE_PORTS_ANNOTATION}: only the first {MAX_OPAQUE_PORTS} ports count");
            out.truncate(MAX_OPAQUE_PORTS);
            break;
        }
    }
    out
}

/// One entry: `5432` or `8000-8010`.
fn parse_entry(entry: &str) -> Result<(u16, u16), String> {
    let port = |s: &str| match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("not a port (1 to 65535): {s:?}")),
        Ok(p) => Ok(p),
    };
    match entry.split_once('-') {
        None => port(entry).map(|p| (p, p)),
        Some((a, b)) => {
            let (lo, hi) = (port(a)?, port(b)?);
            if lo > hi {
                return Err(format!("range {lo}-{hi} runs backwards"));
            }
            if u32::from(hi - lo) >= MAX_RANGE {
                return Err(format!("range {lo}-{hi} spans more than {MAX_RANGE} ports"));
            }
            Ok((lo, hi))
        }
    }
}

/// Is this Service port declared non-HTTP by its `appProtocol` or, without one, its name?
pub fn port_is_opaque(p: &ServicePort) -> bool {
    if let Some(app) = p.app_protocol.as_deref() {
        return !HTTP_APP_PROTOCOLS.contains(&app.to_ascii_lowercase().as_str());
    }
    let Some(name) = p.name.as_deref() else {
        return false;
    };
    let head = name.split('-').next().unwrap_or(name).to_ascii_lowercase();
    OPAQUE_NAMES.contains(&head.as_str())
}

/// The Service's opaque ports (sorted, each once), `None` when it has none.
pub fn service_opaque_ports(
    name: &str,
    annotation: Option<&str>,
    ports: &[ServicePort],
) -> Option<Vec<u16>> {
    let mut out: Vec<u16> = annotation
        .map(|a| parse_annotation(name, a))
        .unwrap_or_default();
    let listed = out.clone();
    for p in ports {
        let port = u16::try_from(p.port).ok().filter(|p| *p != 0);
        let declared = port_is_opaque(p) || port.is_some_and(|p| listed.contains(&p));
        if !declared {
            continue;
        }
        out.extend(port);
        if let Some(IntOrString::Int(t)) = &p.target_port {
            out.extend(u16::try_from(*t).ok().filter(|t| *t != 0));
        }
    }
    out.sort_unstable();
    out.dedup();
    out.truncate(MAX_OPAQUE_PORTS);
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, app: Option<&str>, port: i32, target: Option<i32>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
            port,
            target_port: target.map(IntOrString::Int),
            ..Default::default()
        }
    }

    #[test]
    fn the_annotation_takes_ports_and_ranges_and_skips_bad_entries_alone() {
        assert_eq!(
            parse_annotation("db", "5432, 8000-8002"),
            [5432, 8000, 8001, 8002]
        );
        assert_eq!(
            parse_annotation("db", "0,70000,x,9-3,1-5000,,3306"),
            [3306],
            "each bad entry is left out, the good one stays"
        );
        assert_eq!(parse_entry("9-3"), Err("range 9-3 runs backwards".into()));
        assert!(parse_entry("1-5000")
            .expect_err("invalid")
            .contains("more than 1024"));
        assert!(parse_entry("http")
            .expect_err("invalid")
            .contains("not a port"));
    }

    #[test]
    fn app_protocol_then_port_names_declare_opaque_ports() {
        assert!(port_is_opaque(&port(None, Some("postgresql"), 5432, None)));
        assert!(port_is_opaque(&port(None, Some("TCP"), 1, None)));
        assert!(!port_is_opaque(&port(Some("tcp-x"), Some("http"), 1, None)));
        assert!(!port_is_opaque(&port(
            None,
            Some("kubernetes.io/h2c"),
            1,
            None
        )));
        assert!(port_is_opaque(&port(Some("tcp-db"), None, 1, None)));
        assert!(port_is_opaque(&port(Some("mysql"), None, 1, None)));
        assert!(!port_is_opaque(&port(Some("http-web"), None, 1, None)));
        assert!(!port_is_opaque(&port(Some("tcpx"), None, 1, None)));
        assert!(!port_is_opaque(&port(None, None, 1, None)));
    }

    #[test]
    fn a_service_lists_service_and_target_ports() {
        let ports = [
            port(Some("tcp-db"), None, 5433, Some(5432)),
            port(Some("http"), None, 80, Some(8080)),
            port(Some("smtp"), None, 2525, Some(25)),
        ];
        assert_eq!(
            service_opaque_ports("db", None, &ports),
            Some(vec![5432, 5433])
        );
        // The annotation names a Service port: its target port counts too.
        assert_eq!(
            service_opaque_ports("db", Some("2525"), &ports),
            Some(vec![25, 2525, 5432, 5433])
        );
        assert_eq!(service_opaque_ports("web", None, &ports[1..2]), None);
    }
}
