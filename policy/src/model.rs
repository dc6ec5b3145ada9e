//! Validated domain types. The hot path and the snapshot builder see only these.
//!
//! A sidecar's [`Config`] is its [`Local`] part (own service, listeners, certificates, workers,
//! timeouts, access log, tracing) and its [`Policy`] part (the services it may call with their
//! routes and traffic policies, and who may call it), which the control plane can supply.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::authz::{Allowed, Authorization, AuthzRule};
pub use crate::path::PathOptions;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use regex::Regex;
use weft_certs::Identity;
pub use weft_resilience::backoff::Backoff;
pub use weft_resilience::budget::BudgetConfig;
pub use weft_resilience::fault::Fault;
pub use weft_resilience::outlier::OutlierConfig;
pub use weft_resilience::retry::{RetryOn, RetryPolicy};

/// Default outbound HTTP listener.
pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:15001";
/// Default inbound mTLS listener.
pub const DEFAULT_INBOUND: &str = "0.0.0.0:15006";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";
/// Default traffic worker threads: one, like linkerd2-proxy; a sidecar shares its pod's CPU.
pub const DEFAULT_WORKERS: usize = 1;
/// Default drain on SIGTERM: under Kubernetes' default 30 s termination grace.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a sidecar keeps trying to obtain its first certificate with a join token before it
/// exits (`control_plane.bootstrap_timeout`).
pub const DEFAULT_BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default connect timeout (linkerd2-proxy's too).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default idle limit for client connections and TCP tunnels (Envoy's TCP proxy default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default connections per traffic listener: far above what one workload's callers hold, low
/// enough that a flood of idle connections cannot exhaust the sidecar's file descriptors or
/// memory (a few tens of KiB each with TLS).
pub const DEFAULT_MAX_CONNECTIONS_PER_LISTENER: usize = 4096;
/// Default requests in flight to one service (Envoy's circuit-breaker default).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default requests waiting for an in-flight slot (Envoy's default).
pub const DEFAULT_MAX_PENDING: usize = 1024;
/// Default wait for an in-flight slot before answering 503.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default open TCP tunnels to one service (Envoy's default).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default attempts (the first plus two retries) when a route has a `retry` block.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 3;

/// Default probability of sampling a trace that starts at this sidecar: 1%, a production
/// default (every hop of a sampled trace is recorded; incoming decisions always win).
pub const DEFAULT_TRACE_SAMPLING: f64 = 0.01;
/// Default spans queued for export before new ones are dropped.
pub const DEFAULT_TRACE_MAX_QUEUE: usize = 2048;
/// Default longest wait of a finished span before it is sent to the collector.
pub const DEFAULT_TRACE_EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The whole validated sidecar config: [`Local`] and [`Policy`] fields side by side (see
/// [`Config::from_parts`] and [`Config::into_parts`]).
#[derive(Debug)]
pub struct Config {
    /// This sidecar's own service.
    pub own: OwnService,
    /// Listener addresses.
    pub listen: Listen,
    /// Certificate material locations.
    pub tls: TlsPaths,
    /// Traffic worker threads.
    pub workers: usize,
    /// SIGTERM drain limit.
    pub drain_timeout: Duration,
    /// Connect timeout to peers and the app.
    pub connect_timeout: Duration,
    /// Access log file (`-` is stdout); `None` is off.
    pub access_log: Option<PathBuf>,
    /// Idle limit for client connections and TCP tunnels.
    pub idle_timeout: Duration,
    /// Connections each traffic listener holds at once.
    pub max_connections_per_listener: usize,
    /// Distributed tracing.
    pub tracing: Tracing,
    /// The control plane the policy part comes from; `None` in static mode.
    pub control_plane: Option<ControlPlane>,
    /// Mesh services this sidecar may call, each with its routes.
    pub services: Vec<Service>,
    /// Who may call this sidecar's app.
    pub authorization: Authorization,
}

/// The control plane a sidecar follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// `host:port` of its sidecar endpoint.
    pub address: String,
    /// The identity its certificate must carry.
    pub identity: Identity,
    /// Where the last applied snapshot is kept, if anywhere.
    pub state_file: Option<PathBuf>,
    /// The join token file used to obtain a first certificate, if any.
    pub join_token_file: Option<PathBuf>,
    /// How long to keep trying to obtain the first certificate before giving up.
    pub bootstrap_timeout: Duration,
    /// Who may call the app before the first snapshot; `None`: nobody (fail closed).
    pub bootstrap_authorization: Option<Authorization>,
    /// Where the mesh's roots come from.
    pub trust_bundle: crate::wire::TrustBundleSource,
}

/// What belongs to one sidecar and never comes from the control plane.
#[derive(Debug, Clone)]
pub struct Local {
    /// This sidecar's own service.
    pub own: OwnService,
    /// Listener addresses.
    pub listen: Listen,
    /// Certificate material locations.
    pub tls: TlsPaths,
    /// Traffic worker threads.
    pub workers: usize,
    /// SIGTERM drain limit.
    pub drain_timeout: Duration,
    /// Connect timeout to peers and the app.
    pub connect_timeout: Duration,
    /// Access log file (`-` is stdout); `None` is off.
    pub access_log: Option<PathBuf>,
    /// Idle limit for client connections and TCP tunnels.
    pub idle_timeout: Duration,
    /// Connections each traffic listener holds at once.
    pub max_connections_per_listener: usize,
    /// Distributed tracing.
    pub tracing: Tracing,
    /// The control plane the policy part comes from; `None` in static mode.
    pub control_plane: Option<ControlPlane>,
}

impl Local {
    /// Ports a dedicated outbound service port must not take: the outbound and admin
    /// listeners' (both on loopback, where service ports live).
    pub fn reserved_ports(&self) -> [u16; 2] {
        [self.listen.outbound.port(), self.listen.admin.port()]
    }
}

/// The mesh policy one sidecar follows; the control plane owns it.
#[derive(Debug, Default)]
pub struct Policy {
    /// Mesh services this sidecar may call, each with its routes.
    pub services: Vec<Service>,
    /// Who may call this sidecar's app.
    pub authorization: Authorization,
}

impl Config {
    /// A sidecar config from its local part and a policy validated for it
    /// ([`crate::validate_snapshot`] with the same `local`, or the static file's own part).
    pub fn from_parts(local: Local, policy: Policy) -> Self {
        Config {
            own: local.own,
            listen: local.listen,
            tls: local.tls,
            workers: local.workers,
            drain_timeout: local.drain_timeout,
            connect_timeout: local.connect_timeout,
            access_log: local.access_log,
            idle_timeout: local.idle_timeout,
            max_connections_per_listener: local.max_connections_per_listener,
            tracing: local.tracing,
            control_plane: local.control_plane,
            services: policy.services,
            authorization: policy.authorization,
        }
    }

    /// The local part and the policy part.
    pub fn into_parts(self) -> (Local, Policy) {
        (
            Local {
                own: self.own,
                listen: self.listen,
                tls: self.tls,
                workers: self.workers,
                drain_timeout: self.drain_timeout,
                connect_timeout: self.connect_timeout,
                access_log: self.access_log,
                idle_timeout: self.idle_timeout,
                max_connections_per_listener: self.max_connections_per_listener,
                tracing: self.tracing,
                control_plane: self.control_plane,
            },
            Policy {
                services: self.services,
                authorization: self.authorization,
            },
        )
    }
}

/// Distributed tracing: W3C trace context is always propagated; spans are exported only when
/// a collector is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// OTLP/gRPC collector, `http://host:port`; `None` exports nothing.
    pub collector: Option<String>,
    /// Probability (0 to 1) of sampling a trace that starts here.
    pub sampling: f64,
    /// Spans queued for export before new ones are dropped.
    pub max_queue: usize,
    /// Longest a finished span waits before it is sent.
    pub export_interval: Duration,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            collector: None,
            sampling: DEFAULT_TRACE_SAMPLING,
            max_queue: DEFAULT_TRACE_MAX_QUEUE,
            export_interval: DEFAULT_TRACE_EXPORT_INTERVAL,
        }
    }
}

/// What the app behind this sidecar speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP/1.1 to the app (HTTP/2 between sidecars).
    Http,
    /// gRPC: h2c to the app.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// A service's `protocol` field: `http` (the default), `grpc` or `tcp`.
    pub(crate) fn from_field(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("http") => Ok(Self::Http),
            Some("grpc") => Ok(Self::Grpc),
            Some("tcp") => Ok(Self::Tcp),
            Some(other) => Err(format!(
                "unknown protocol {other:?}; expected http, grpc or tcp"
            )),
        }
    }
}

/// Load-balancing policy across a backend's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Power of two choices on peak-EWMA latency times outstanding requests.
    P2cEwma,
    /// Round robin.
    RoundRobin,
}

impl LbPolicy {
    /// A service's `load_balancer` field: `p2c_ewma` (the default) or `round_robin`.
    pub(crate) fn from_field(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("p2c_ewma") => Ok(Self::P2cEwma),
            Some("round_robin") => Ok(Self::RoundRobin),
            Some(other) => Err(format!(
                "unknown policy {other:?}; expected p2c_ewma or round_robin"
            )),
        }
    }
}

/// This sidecar's own service.
#[derive(Debug, Clone)]
pub struct OwnService {
    /// Service name.
    pub name: String,
    /// The identity this sidecar's certificate carries.
    pub identity: Identity,
    /// The app's loopback address.
    pub app: SocketAddr,
    /// What the app speaks.
    pub protocol: Protocol,
    /// Inbound rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Labels of this sidecar's endpoint, registered with the control plane.
    pub labels: BTreeMap<String, String>,
    /// Captured connections to addresses the mesh does not know: passed through or refused.
    pub egress: crate::wire::Egress,
    /// Longest wait for a captured connection's first bytes to an `http`/`grpc` service.
    pub detect_timeout: Duration,
    /// Destination ports a captured connection is never detected on.
    pub opaque_ports: Vec<u16>,
}

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
    /// One bucket per caller identity.
    pub per_caller: bool,
}

/// Concurrency limits towards one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Requests waiting for a slot.
    pub max_pending: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Open TCP tunnels (HTTP rides a few multiplexed connections per endpoint).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_pending: DEFAULT_MAX_PENDING,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Listener addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Outbound HTTP (loopback).
    pub outbound: SocketAddr,
    /// Inbound mTLS.
    pub inbound: SocketAddr,
    /// Admin (loopback).
    pub admin: SocketAddr,
    /// Read-only `/metrics`, `/live` and `/ready` on any address (off when `None`).
    pub metrics: Option<SocketAddr>,
}

/// Where the certificate material lives.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Trust bundle (PEM, one or more roots).
    pub trust_bundle: PathBuf,
}

/// A mesh service this sidecar may call.
#[derive(Debug)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Host names (lower case, without port) that route here; the name comes first.
    pub hosts: Vec<String>,
    /// Identity its sidecars must prove.
    pub identity: Identity,
    /// What it speaks.
    pub protocol: Protocol,
    /// Dedicated outbound port on 127.0.0.1, if any.
    pub port: Option<u16>,
    /// Endpoint choice.
    pub lb: LbPolicy,
    /// Its sidecars' inbound addresses.
    pub endpoints: Vec<Endpoint>,
    /// Its routes, in match order; empty means one implicit catch-all route.
    pub routes: Vec<Route>,
    /// How many retries calls to it may add.
    pub retry_budget: BudgetConfig,
    /// Per-endpoint ejection.
    pub outlier: OutlierConfig,
    /// Any 5xx counts as an endpoint failure, not only 502, 503 and 504.
    pub outlier_counts_5xx: bool,
    /// Concurrency limits.
    pub limits: Limits,
    /// How request paths to it are canonicalized (`escaped_slashes`).
    pub paths: PathOptions,
    /// Its ports a captured connection is never detected on (opaque TCP at once).
    pub opaque_ports: Vec<u16>,
}

/// An endpoint of a service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Inbound address of the endpoint's sidecar.
    pub addr: SocketAddr,
    /// Labels for subsets.
    pub labels: BTreeMap<String, String>,
}

/// A route: a match and where matched requests go.
#[derive(Debug)]
pub struct Route {
    /// Name (unique within the service).
    pub name: String,
    /// Conditions.
    pub matcher: RouteMatch,
    /// Weighted subsets; never empty, weights sum above zero.
    pub backends: Vec<Backend>,
    /// Deadline for the response headers.
    pub timeout: Option<Duration>,
    /// New prefix for the matched path prefix.
    pub rewrite_prefix: Option<String>,
    /// Headers set on the request.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed from the request.
    pub remove_headers: Vec<HeaderName>,
    /// When to retry.
    pub retry: RetryPolicy,
    /// Token bucket.
    pub rate_limit: Option<RateLimit>,
    /// Injected faults.
    pub fault: Option<Fault>,
}

impl Route {
    /// The route a service without routes gets: everything, to all endpoints.
    pub fn catch_all() -> Self {
        Route {
            name: "default".to_owned(),
            matcher: RouteMatch::default(),
            backends: vec![Backend {
                subset: Default::default(),
                weight: 1,
            }],
            timeout: None,
            rewrite_prefix: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            retry: RetryPolicy::default_policy(),
            rate_limit: None,
            fault: None,
        }
    }
}

/// All conditions must hold; an empty match takes everything.
#[derive(Debug, Default)]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Method condition.
    pub method: Option<Method>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
}

/// A path condition.
#[derive(Debug)]
pub enum PathMatch {
    /// Whole path (without query) equals.
    Exact(String),
    /// Path starts with this prefix at a segment boundary (`/api` takes `/api` and `/api/x`).
    Prefix(String),
    /// Whole path matches (anchored).
    Regex(Regex),
}

/// A header condition.
#[derive(Debug)]
pub struct HeaderMatch {
    /// Header name.
    pub name: HeaderName,
    /// Value condition.
    pub value: HeaderValueMatch,
}

/// What the header's value must be.
#[derive(Debug)]
pub enum HeaderValueMatch {
    /// Any value.
    Present,
    /// Equal bytes.
    Exact(HeaderValue),
    /// Whole value matches (anchored).
    Regex(Regex),
}

/// A weighted subset of endpoints.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Labels an endpoint must carry.
    pub subset: BTreeMap<String, String>,
    /// Relative weight.
    pub weight: u32,
}

impl Backend {
    /// Does this endpoint belong to the subset?
    pub fn selects(&self, ep: &Endpoint) -> bool {
        self.subset.iter().all(|(k, v)| ep.labels.get(k) == Some(v))
    }
}

impl RouteMatch {
    /// True when the match has no condition.
    pub fn is_catch_all(&self) -> bool {
        self.path.is_none() && self.method.is_none() && self.headers.is_empty()
    }
}
