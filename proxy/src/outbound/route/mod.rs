//! The outbound routing table and the routing stage: which destination a request is for (by
//! the dedicated port it arrived on, or its Host / :authority), which of its routes matches,
//! which weighted backend the route draws, and the route's path rewrite.
//!
//! The table is rebuilt off the hot path whenever policy changes; endpoint state that must
//! outlive a rebuild (latency history, ejections, budgets, limiters) is carried over from the
//! table it replaces, keyed by (service, address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use http::Method;
use pingora_http::RequestHeader;
use weft_policy::{LbPolicy, Limits, Protocol, Route, Service};
use weft_resilience::budget::RetryBudget;
use weft_resilience::limiter::ConcurrencyLimiter;
use weft_resilience::outlier::{EndpointHealth, HealthState, OutlierDetector};
use weft_resilience::rate::TokenBucket;
use weft_resilience::Nanos;

use crate::outbound::balance::{self, EndpointStats};
use crate::outbound::original_dst;
use crate::telemetry::metrics::{Direction, Metrics, RouteLabels, RouteMetrics};

/// Every callable service, with the indexes requests are routed by.
#[derive(Debug)]
pub struct Routes {
    /// Callable services.
    pub destinations: Vec<Arc<Destination>>,
    by_host: HashMap<String, usize>,
    by_port: HashMap<u16, usize>,
    /// Captured connections' original destinations ([`Routes::for_address`]).
    by_addr: original_dst::AddressIndex,
    /// Series for requests to an unknown host.
    pub unknown_host: Arc<RouteMetrics>,
}

/// A callable service with its routes and endpoints.
#[derive(Debug)]
pub struct Destination {
    /// Service name.
    pub name: String,
    /// SPIFFE identity its sidecars prove.
    pub identity: Arc<str>,
    /// What it speaks.
    pub protocol: Protocol,
    /// TLS server name its sidecars must prove (the DNS form of its identity).
    pub sni: String,
    /// Endpoint choice.
    pub lb: LbPolicy,
    /// Endpoint addresses.
    pub endpoints: Vec<SocketAddr>,
    /// Endpoint stats, index-aligned with `endpoints`.
    pub stats: Vec<Arc<EndpointStats>>,
    /// Outlier ejection state, index-aligned with `endpoints`.
    pub health: OutlierDetector,
    /// Any 5xx counts as an endpoint failure, not only 502, 503 and 504.
    pub outlier_counts_5xx: bool,
    /// Its ports a captured connection is never detected on (`listen::detect`).
    pub opaque_ports: Vec<u16>,
    /// Ejection counters, index-aligned with `endpoints`.
    pub ejections: Vec<prometheus::IntCounter>,
    /// Retries calls to this service may add.
    pub budget: Arc<RetryBudget>,
    /// Concurrency limits.
    pub limits: Limits,
    /// Requests in flight (HTTP).
    pub in_flight: Arc<ConcurrencyLimiter>,
    /// Open tunnels (TCP).
    pub tunnels: Arc<ConcurrencyLimiter>,
    /// Routes in match order (at least one).
    pub routes: Vec<Arc<RouteState>>,
    /// Every endpoint index (the TCP path's candidate list).
    pub all: Vec<usize>,
    /// Series for requests no route matches (and paths refused before routing).
    pub unmatched: Arc<RouteMetrics>,
    /// How request paths to it are canonicalized.
    pub paths: weft_policy::PathOptions,
    all_rr: AtomicUsize,
}

/// A route with its backends resolved to endpoint indices.
#[derive(Debug)]
pub struct RouteState {
    /// The validated route.
    pub route: Route,
    /// Backends, index-aligned with `route.backends`.
    pub backends: Vec<BackendState>,
    /// This route's series.
    pub metrics: Arc<RouteMetrics>,
    /// The route's name, shared with the access log.
    pub name: Arc<str>,
    /// The route's token bucket.
    pub rate: Option<TokenBucket>,
    total_weight: u32,
}

/// A backend's endpoints and its cumulative weight bound.
#[derive(Debug)]
pub struct BackendState {
    /// Indices into the destination's endpoints.
    pub endpoints: Vec<usize>,
    cum_weight: u32,
    rr: AtomicUsize,
}

/// Who is calling: the labels every outbound series of this sidecar carries.
struct Caller<'a> {
    service: &'a str,
    identity: &'a str,
    metrics: &'a Arc<Metrics>,
}

impl Caller<'_> {
    fn series(&self, dst: &str, route: &str) -> Arc<RouteMetrics> {
        self.metrics.route(RouteLabels {
            direction: Direction::Outbound,
            src_service: self.service.to_owned(),
            dst_service: dst.to_owned(),
            route: route.to_owned(),
            caller: self.identity.to_owned(),
        })
    }
}

impl Routes {
    /// Build the table for `services`, called by this sidecar's service `own_service` with
    /// identity `own_identity`; live endpoint state is carried over from `prev`.
    pub fn build(
        services: Vec<Service>,
        own_service: &str,
        own_identity: &str,
        prev: Option<&Routes>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let caller = Caller {
            service: own_service,
            identity: own_identity,
            metrics,
        };
        let old: HashMap<&str, &Destination> = prev
            .map(|p| {
                p.destinations
                    .iter()
                    .map(|d| (d.name.as_str(), &**d))
                    .collect()
            })
            .unwrap_or_default();
        let mut by_host = HashMap::new();
        let mut by_port = HashMap::new();
        let mut by_addr = original_dst::AddressIndex::default();
        let mut destinations = Vec::with_capacity(services.len());
        for svc in services {
            let idx = destinations.len();
            for h in &svc.hosts {
                by_host.insert(h.clone(), idx);
            }
            if let Some(p) = svc.port {
                by_port.insert(p, idx);
            }
            by_addr.add(&svc, idx);
            let prev = old.get(svc.name.as_str()).copied();
            destinations.push(Arc::new(Destination::build(svc, prev, &caller)));
        }
        Routes {
            destinations,
            by_host,
            by_port,
            by_addr,
            unknown_host: caller.series("unknown", "unmatched"),
        }
    }

    /// The destination a Host / :authority names (port and case ignored).
    pub fn for_host(&self, host: &str) -> Option<&Arc<Destination>> {
        let name = strip_port(host);
        let i = match self.by_host.get(name) {
            Some(i) => *i,
            None if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                *self.by_host.get(&name.to_ascii_lowercase())?
            }
            None => return None,
        };
        self.destinations.get(i)
    }

    /// The destination served on a dedicated outbound port.
    pub fn for_port(&self, port: u16) -> Option<&Arc<Destination>> {
        self.destinations.get(*self.by_port.get(&port)?)
    }

    /// The destination a captured connection's original address names: an endpoint's
    /// exact address, else a service's virtual IP (a host that is an IP address) or an
    /// endpoint's IP on any port (a pod IP belongs to one service). `None`: egress.
    pub fn for_address(&self, addr: SocketAddr) -> Option<&Arc<Destination>> {
        self.destinations.get(self.by_addr.find(addr)?)
    }

    /// The routing stage's first step: the destination of a request that arrived on local
    /// port `port` (a dedicated port names it) with Host / :authority `host`.
    pub fn destination(&self, port: Option<u16>, host: Option<&str>) -> Option<&Arc<Destination>> {
        port.and_then(|p| self.for_port(p))
            .or_else(|| host.and_then(|h| self.for_host(h)))
    }

    /// Every dedicated outbound port with its protocol.
    pub fn outbound_ports(&self) -> Vec<(u16, Protocol)> {
        let mut v: Vec<_> = self
            .by_port
            .iter()
            .filter_map(|(p, i)| Some((*p, self.destinations.get(*i)?.protocol)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Set the destination gauges (ejections, healthy endpoints, in flight); called when
    /// metrics are scraped, since ejections end with time, not events.
    pub fn export_gauges(&self, own_service: &str, metrics: &Metrics, now: Nanos) {
        metrics.clear_destination_gauges();
        for d in &self.destinations {
            let ejected = d.endpoints.iter().enumerate().map(|(i, a)| {
                (
                    a.to_string(),
                    d.health.state(i, now) != HealthState::Healthy,
                )
            });
            let busy = if d.protocol == Protocol::Tcp {
                d.tunnels.in_flight()
            } else {
                d.in_flight.in_flight()
            };
            metrics.destination(own_service, &d.name, ejected, busy);
        }
    }
}

/// The Host without its port; an IPv6 literal is kept whole (it never names a service).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

impl Destination {
    /// Resolve `svc`, carrying live state over from `prev` (the same service in the table
    /// being replaced) where it still applies.
    // Long (about 80 lines): the live state (endpoint stats, outlier health, limiter, budget,
    // routes) is each kept from `prev` or made anew, one after the other; split, every part
    // would take `prev` and the service again.
    fn build(svc: Service, prev: Option<&Destination>, caller: &Caller<'_>) -> Self {
        let endpoints: Vec<SocketAddr> = svc.endpoints.iter().map(|e| e.addr).collect();
        type Kept<'a> = (&'a Arc<EndpointStats>, &'a Arc<EndpointHealth>);
        let old: HashMap<SocketAddr, usize> = prev
            .map(|p| {
                p.endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (*a, i))
                    .collect()
            })
            .unwrap_or_default();
        let kept: Vec<Option<Kept>> = endpoints
            .iter()
            .map(|a| {
                let (p, i) = (prev?, *old.get(a)?);
                Some((&p.stats[i], p.health.health(i)))
            })
            .collect();
        let stats = kept
            .iter()
            .map(|k| k.map(|k| Arc::clone(k.0)).unwrap_or_default())
            .collect();
        let ejections = endpoints
            .iter()
            .map(|a| {
                caller
                    .metrics
                    .ejections(caller.service, &svc.name, &a.to_string())
            })
            .collect();
        let health = OutlierDetector::new(
            svc.outlier,
            kept.iter()
                .map(|k| k.map(|k| Arc::clone(k.1)).unwrap_or_default())
                .collect(),
        );
        // Limiters and budgets carry live counts; keep them while their settings hold so a
        // reload neither forgets in-flight requests nor refills a spent budget.
        let budget = match prev {
            Some(p) if p.budget.config() == svc.retry_budget => p.budget.clone(),
            _ => Arc::new(RetryBudget::new(svc.retry_budget)),
        };
        let (in_flight, tunnels) = match prev {
            Some(p) if p.limits == svc.limits => (p.in_flight.clone(), p.tunnels.clone()),
            _ => (
                ConcurrencyLimiter::new(svc.limits.max_in_flight, svc.limits.max_pending),
                ConcurrencyLimiter::new(svc.limits.max_connections, 0),
            ),
        };
        let mut routes = svc.routes;
        if routes.is_empty() {
            routes.push(Route::catch_all());
        }
        let routes = routes
            .into_iter()
            .map(|route| Arc::new(RouteState::build(route, &svc.endpoints, &svc.name, caller)))
            .collect();
        Destination {
            paths: svc.paths,
            unmatched: caller.series(&svc.name, "unmatched"),
            name: svc.name,
            protocol: svc.protocol,
            sni: svc.identity.dns_name(),
            identity: svc.identity.to_string().into(),
            lb: svc.lb,
            all: (0..endpoints.len()).collect(),
            endpoints,
            stats,
            ejections,
            health,
            outlier_counts_5xx: svc.outlier_counts_5xx,
            opaque_ports: svc.opaque_ports,
            budget,
            limits: svc.limits,
            in_flight,
            tunnels,
            routes,
            all_rr: AtomicUsize::new(0),
        }
    }

    /// The first route whose match takes the request.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
        req: &RequestHeader,
    ) -> Option<&Arc<RouteState>> {
        self.routes
            .iter()
            .find(|r| r.route.matcher.matches(method, path, &req.headers))
    }

    /// Pick an endpoint of a route's weighted backend that is not ejected, preferring one
    /// not in `tried` (a bit per endpoint index below 64) so a retry goes elsewhere.
    pub fn pick(&self, route: &RouteState, tried: u64, now: Nanos) -> Option<usize> {
        let b = route.pick_backend()?;
        self.choose(&b.endpoints, &b.rr, tried, now)
    }

    /// Pick any endpoint that is not ejected (TCP has no routes).
    pub fn pick_any(&self, tried: u64, now: Nanos) -> Option<usize> {
        self.choose(&self.all, &self.all_rr, tried, now)
    }

    fn choose(
        &self,
        candidates: &[usize],
        rr: &AtomicUsize,
        tried: u64,
        now: Nanos,
    ) -> Option<usize> {
        let fresh = |ep: usize| ep >= 64 || tried & (1 << ep) == 0;
        let usable = |ep: usize| fresh(ep) && self.health.selectable(ep, now);
        balance::choose(self.lb, candidates, &self.stats, rr, usable).or_else(|| {
            // Every candidate was tried already: a tried endpoint beats none.
            (tried != 0).then(|| {
                balance::choose(self.lb, candidates, &self.stats, rr, |ep| {
                    self.health.selectable(ep, now)
                })
            })?
        })
    }
}

impl RouteState {
    fn build(
        route: Route,
        endpoints: &[weft_policy::Endpoint],
        service: &str,
        caller: &Caller<'_>,
    ) -> Self {
        let mut cum = 0;
        let backends = route
            .backends
            .iter()
            .map(|b| {
                cum += b.weight;
                BackendState {
                    endpoints: (0..endpoints.len())
                        .filter(|&i| b.selects(&endpoints[i]))
                        .collect(),
                    cum_weight: cum,
                    rr: AtomicUsize::new(0),
                }
            })
            .collect();
        RouteState {
            rate: route
                .rate_limit
                .map(|r| TokenBucket::new(r.per_second, r.burst)),
            metrics: caller.series(service, &route.name),
            name: route.name.as_str().into(),
            route,
            backends,
            total_weight: cum,
        }
    }

    /// A backend drawn by weight.
    pub fn pick_backend(&self) -> Option<&BackendState> {
        if self.total_weight == 0 {
            return None;
        }
        if self.backends.len() == 1 {
            return self.backends.first();
        }
        let r = fastrand::u32(0..self.total_weight);
        self.backends.iter().find(|b| r < b.cum_weight)
    }

    /// Apply the route's request edits: the prefix rewrite and the headers it sets or removes.
    pub fn edit_request(&self, req: &mut RequestHeader) -> pingora_core::Result<()> {
        let route = &self.route;
        if let (Some(new), Some(weft_policy::PathMatch::Prefix(old))) =
            (&route.rewrite_prefix, &route.matcher.path)
        {
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let rewritten = rewrite_prefix(old, new, pq);
            let mut parts = req.uri.clone().into_parts();
            parts.path_and_query = rewritten.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                req.set_uri(uri);
            }
        }
        for name in &route.remove_headers {
            req.remove_header(name);
        }
        for (name, value) in &route.set_headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

/// Replace the matched `prefix` of `path_and_query` with `new_prefix`.
pub fn rewrite_prefix(prefix: &str, new_prefix: &str, path_and_query: &str) -> String {
    let rest = if prefix == "/" {
        path_and_query
    } else {
        path_and_query.get(prefix.len()..).unwrap_or("")
    };
    let mut out = String::with_capacity(new_prefix.len() + rest.len());
    out.push_str(new_prefix);
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    } else if !out.ends_with('/') && !rest.is_empty() && !rest.starts_with(['/', '?']) {
        out.push('/');
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
