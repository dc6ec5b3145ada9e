//! What the admin endpoints show: the config in force (never key material), the workload
//! certificate, and the runtime log level.

use std::time::SystemTime;

use serde_json::{json, Value};
use weft_resilience::outlier::HealthState;

use crate::store::{PolicySource, Snapshot};
use weft_policy::{HeaderValueMatch, LbPolicy, Listen, PathMatch, Protocol};

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The config in force with live endpoint load. Paths to key files appear; key bytes never do.
// Long on purpose: one JSON literal, shaped like the config file it dumps.
pub fn config_dump(s: &Snapshot, listening: &Listen) -> Value {
    let destinations: Vec<Value> = s
        .routes
        .destinations
        .iter()
        .map(|d| {
            let endpoints: Vec<Value> = d
                .endpoints
                .iter()
                .zip(&d.stats)
                .enumerate()
                .map(|(i, (a, st))| {
                    let health = match d.health.state(i, crate::clock::now()) {
                        HealthState::Healthy => "healthy",
                        HealthState::Ejected => "ejected",
                        HealthState::HalfOpen => "half_open",
                    };
                    json!({"address": a.to_string(), "pending": st.pending(), "cost_ns": st.cost(),
                           "health": health, "ejections": d.health.ejections(i)})
                })
                .collect();
            let routes: Vec<Value> = d
                .routes
                .iter()
                .map(|r| {
                    let m = &r.route.matcher;
                    let path = m.path.as_ref().map(|p| match p {
                        PathMatch::Exact(x) => json!({"exact": x}),
                        PathMatch::Prefix(x) => json!({"prefix": x}),
                        PathMatch::Regex(x) => json!({"regex": x.as_str()}),
                    });
                    let headers: Vec<Value> = m
                        .headers
                        .iter()
                        .map(|h| match &h.value {
                            HeaderValueMatch::Present => json!({"name": h.name.as_str()}),
                            HeaderValueMatch::Exact(v) => json!({"name": h.name.as_str(), "exact": v.to_str().unwrap_or("<binary>")}),
                            HeaderValueMatch::Regex(x) => json!({"name": h.name.as_str(), "regex": x.as_str()}),
                        })
                        .collect();
                    let backends: Vec<Value> = r
                        .route
                        .backends
                        .iter()
                        .zip(&r.backends)
                        .map(|(b, st)| json!({"subset": b.subset, "weight": b.weight, "endpoints": st.endpoints.len()}))
                        .collect();
                    json!({
                        "name": r.route.name,
                        "match": {"path": path, "method": m.method.as_ref().map(|x| x.as_str()), "headers": headers},
                        "backends": backends,
                        "timeout_ms": r.route.timeout.map(|t| t.as_millis() as u64),
                        "rewrite_prefix": r.route.rewrite_prefix,
                        "set_headers": r.route.set_headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                        "remove_headers": r.route.remove_headers.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                        "retry": {
                            "attempts": r.route.retry.max_attempts,
                            "on": format!("{:?}", r.route.retry.on),
                            "per_try_timeout_ms": r.route.retry.per_try_timeout.map(|t| t.as_millis() as u64),
                        },
                        "rate_limit": r.route.rate_limit.map(|l| json!({"requests_per_second": l.per_second, "burst": l.burst})),
                        "fault": r.route.fault.map(|f| format!("{f:?}")),
                    })
                })
                .collect();
            json!({
                "name": d.name,
                "protocol": protocol(d.protocol),
                "server_name": d.sni,
                "load_balancer": match d.lb { LbPolicy::P2cEwma => "p2c_ewma", LbPolicy::RoundRobin => "round_robin" },
                "endpoints": endpoints,
                "routes": routes,
                "retry_budget": format!("{:?}", d.budget.config()),
                "outlier_detection": format!("{:?}", d.health.config()),
                "limits": {"max_in_flight": d.limits.max_in_flight, "max_pending": d.limits.max_pending,
                           "queue_timeout_ms": d.limits.queue_timeout.as_millis() as u64,
                           "max_connections": d.limits.max_connections},
                "in_flight": d.in_flight.in_flight(),
            })
        })
        .collect();
    json!({
        "version": s.version,
        "service": {"name": s.own.name, "identity": s.own.identity.to_string(), "app": s.own.app.to_string(), "protocol": protocol(s.own.protocol)},
        "listen": {"outbound": listening.outbound.to_string(), "inbound": listening.inbound.to_string(), "admin": listening.admin.to_string(), "metrics": listening.metrics.map(|m| m.to_string())},
        "tls": {"cert": s.tls_paths.cert, "key": s.tls_paths.key, "trust_bundle": s.tls_paths.trust_bundle},
        "workers": s.workers,
        "drain_timeout_ms": s.drain_timeout.as_millis() as u64,
        "connect_timeout_ms": s.connect_timeout.as_millis() as u64,
        "tracing": {
            "collector": s.tracing.collector,
            "sampling": s.tracing.sampling,
            "max_queue": s.tracing.max_queue,
            "export_interval_ms": s.tracing.export_interval.as_millis() as u64,
        },
        "services": destinations,
        "policy_source": match s.policy {
            PolicySource::File => "file",
            PolicySource::ControlPlane => "control_plane",
            PolicySource::Bootstrap => "bootstrap",
            PolicySource::Pending => "pending (inbound refused)",
        },
        "authorization": {
            "default": if s.authz.default_allow { "allow" } else { "deny" },
            "rules": s.authz.rules.iter().map(|r| json!({
                "name": r.name,
                "from": if r.from.is_empty() { vec!["*".to_owned()] } else { r.from.clone() },
                "paths": r.paths,
                "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        },
    })
}

/// The workload certificate: identity and expiry.
pub fn certs(s: &Snapshot) -> Value {
    let left = s
        .tls
        .not_after
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs());
    json!({
        "identity": s.tls.identity.to_string(),
        "dns_name": s.tls.identity.dns_name(),
        "not_after_unix": unix(s.tls.not_after),
        "not_after": humantime::format_rfc3339_seconds(s.tls.not_after).to_string(),
        "expires_in_seconds": left,
        "trust_bundle_roots": s.tls.root_count,
        "cert_file": s.tls_paths.cert,
    })
}

/// Parse a log level name (`off`, `error`, `warn`, `info`, `debug`, `trace`).
pub fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse::<log::LevelFilter>()
        .map_err(|_| format!("unknown level {s:?}; use off, error, warn, info, debug or trace"))
}
