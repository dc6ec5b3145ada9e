//! Metric names. Every name is `weft_` + what + unit suffix, defined once here (docs/METRICS.md
//! lists them with their labels).

macro_rules! weft {
    ($what:literal) => {
        concat!("weft_", $what)
    };
}
/// Requests received, by route (counter).
pub const REQUESTS: &str = weft!("requests_total");
/// Responses sent, by route, status class and code (counter).
pub const RESPONSES: &str = weft!("responses_total");
/// Time from request to the end of the response, seconds (histogram).
pub const REQUEST_DURATION: &str = weft!("request_duration_seconds");
/// Version of the config in force (gauge).
pub const CONFIG_VERSION: &str = weft!("config_version");
/// Config files refused (counter).
pub const CONFIG_REJECTED: &str = weft!("config_rejected_total");
/// 1 while the sidecar holds a stream to its control plane, else 0 (gauge).
pub const CONTROL_PLANE_CONNECTED: &str = weft!("control_plane_connected");
/// Control-plane snapshots applied (ACKed) and refused (NACKed), by result (counter).
pub const CONTROL_PLANE_SNAPSHOTS: &str = weft!("control_plane_snapshots_total");
/// Fields of control-plane snapshots this sidecar does not know and ignored (a newer control
/// plane's), summed over snapshots (counter).
pub const CONTROL_PLANE_UNKNOWN_FIELDS: &str = weft!("control_plane_unknown_fields_total");
/// 1 while the roots the control plane pushes differ from the mounted trust bundle in force
/// (`control_plane.trust_bundle: mounted`), else 0 (gauge).
pub const TRUST_BUNDLE_DIFFERS: &str = weft!("trust_bundle_differs");
/// When the workload certificate expires, Unix seconds (gauge).
pub const CERT_EXPIRY: &str = weft!("certificate_expiry_timestamp_seconds");
/// Workload certificate renewals with the control plane, by result (counter).
pub const CERT_RENEWALS: &str = weft!("cert_renewals_total");
/// Inbound TLS handshakes, by result (counter).
pub const TLS_HANDSHAKES: &str = weft!("tls_handshakes_total");
/// Connections a traffic listener closed at accept.
pub const CONNECTIONS_REFUSED: &str = weft!("connections_refused_total");
/// TCP tunnels opened, by direction and destination (counter).
pub const TCP_OPENED: &str = weft!("tcp_connections_opened_total");
/// TCP tunnels closed (counter).
pub const TCP_CLOSED: &str = weft!("tcp_connections_closed_total");
/// TCP connections refused before a tunnel opened, by reason (counter).
pub const TCP_REJECTED: &str = weft!("tcp_connections_rejected_total");
/// Bytes carried by TCP tunnels, by flow (counter).
pub const TCP_BYTES: &str = weft!("tcp_bytes_total");
/// Access log lines written (counter).
pub const ACCESS_LOG_LINES: &str = weft!("access_log_lines_total");
/// Access log records dropped because the writer fell behind (counter).
pub const ACCESS_LOG_DROPPED: &str = weft!("access_log_dropped_total");
/// Retry attempts sent, by route (counter).
pub const RETRIES: &str = weft!("retries_total");
/// Requests that needed at least one retry, by route and final `result` (counter).
pub const RETRIED_REQUESTS: &str = weft!("retried_requests_total");
/// Retryable failures not retried, by route and `reason` (counter).
pub const RETRIES_SKIPPED: &str = weft!("retries_skipped_total");
/// Requests the sidecar refused before any endpoint saw them, by route and `reason`
/// (counter).
pub const REQUESTS_REJECTED: &str = weft!("requests_rejected_total");
/// Faults injected, by route and `kind` (counter).
pub const FAULTS_INJECTED: &str = weft!("faults_injected_total");
/// Outlier ejections, by destination endpoint (counter).
pub const OUTLIER_EJECTIONS: &str = weft!("outlier_ejections_total");
/// 1 while an endpoint is ejected or half-open (breaker open), else 0 (gauge).
pub const ENDPOINT_EJECTED: &str = weft!("endpoint_ejected");
/// Endpoints of a destination that take traffic (gauge).
pub const ENDPOINTS_HEALTHY: &str = weft!("endpoints_healthy");
/// Endpoints of a destination (gauge).
pub const ENDPOINTS: &str = weft!("endpoints");
/// Requests in flight to a destination (gauge).
pub const IN_FLIGHT: &str = weft!("in_flight_requests");
/// Spans the collector accepted (counter).
pub const TRACE_SPANS_EXPORTED: &str = weft!("trace_spans_exported_total");
/// Spans dropped, by `reason`: `queue_full`, `export_failed` (counter).
pub const TRACE_SPANS_DROPPED: &str = weft!("trace_spans_dropped_total");
/// Export requests that failed (counter).
pub const TRACE_EXPORT_ERRORS: &str = weft!("trace_export_errors_total");
