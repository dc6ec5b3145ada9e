//! The gateway's own metric families, in the sidecar's registry. Labels are bounded by the
//! config: `route` is a gateway route's name (or `unmatched`), `code` an HTTP status the
//! gateway sent, `result` one of a fixed few words.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use crate::telemetry::metrics::Metrics;

/// `weft_gateway_requests_total{route, code}`.
pub const REQUESTS: &str = "weft_gateway_requests_total";
/// `weft_gateway_request_duration_seconds{route}`.
pub const DURATION: &str = "weft_gateway_request_duration_seconds";
/// `weft_gateway_tls_handshakes_total{result}`: `ok`, `failed`, `timeout`.
pub const HANDSHAKES: &str = "weft_gateway_tls_handshakes_total";
/// `weft_gateway_certificate_reloads_total{result}`: `ok`, `error`.
pub const RELOADS: &str = "weft_gateway_certificate_reloads_total";
/// `weft_gateway_config_reloads_total{result}`: `ok`, `error` (the gateway file).
pub const CONFIG_RELOADS: &str = "weft_gateway_config_reloads_total";
/// `weft_gateway_auth_total{route, method, result}`: `method` `jwt` or `api_key`; `result`
/// `accepted` or a fixed word for why not.
pub const AUTH: &str = "weft_gateway_auth_total";
/// `weft_gateway_connections_refused_total{listener}`: over `limits.max_connections`.
pub const REFUSED: &str = "weft_gateway_connections_refused_total";

/// Handles of the gateway's families.
#[derive(Clone)]
pub struct GatewayMetrics {
    /// Requests by route and status code sent.
    pub requests: IntCounterVec,
    /// Time to the end of the response, by route.
    pub duration: HistogramVec,
    /// Edge TLS handshakes.
    pub handshakes: IntCounterVec,
    /// Certificate reloads.
    pub reloads: IntCounterVec,
    /// Connections refused at the cap.
    pub refused: IntCounterVec,
    /// Gateway file reloads.
    pub config_reloads: IntCounterVec,
    /// Authentication outcomes by route, method and result.
    pub auth: IntCounterVec,
}

impl GatewayMetrics {
    /// Make the families and register them in `m`'s registry.
    pub fn register(m: &Metrics) -> prometheus::Result<Self> {
        let g = GatewayMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    REQUESTS,
                    "Gateway requests answered, by route and status code.",
                ),
                &["route", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(DURATION, "Gateway request time to the end of the response.")
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                    ]),
                &["route"],
            )?,
            handshakes: IntCounterVec::new(
                Opts::new(HANDSHAKES, "Edge TLS handshakes, by result."),
                &["result"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new(RELOADS, "Edge certificate reloads, by result."),
                &["result"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(REFUSED, "Client connections closed at the connection cap."),
                &["listener"],
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    CONFIG_RELOADS,
                    "Gateway file reloads, by result (an error keeps the config in force).",
                ),
                &["result"],
            )?,
            auth: IntCounterVec::new(
                Opts::new(
                    AUTH,
                    "Gateway authentications (JWT, API key), by route, method and result.",
                ),
                &["route", "method", "result"],
            )?,
        };
        m.register(Box::new(g.requests.clone()))?;
        m.register(Box::new(g.duration.clone()))?;
        m.register(Box::new(g.handshakes.clone()))?;
        m.register(Box::new(g.reloads.clone()))?;
        m.register(Box::new(g.refused.clone()))?;
        m.register(Box::new(g.config_reloads.clone()))?;
        m.register(Box::new(g.auth.clone()))?;
        Ok(g)
    }
}
