//! The gateway's config in force: fixed for the process's life (the certificates are the part
//! that reloads, see [`crate::gateway::edge_tls`]).

use std::sync::Arc;

use weft_policy::gateway::{Gateway, GatewayRoute};

use crate::gateway::auth::{AuthStage, BuildError, RouteGuard};
use crate::gateway::metrics::GatewayMetrics;

/// One route with what the request path needs of it.
pub struct RouteEntry {
    /// The route's name (metrics label, access log).
    pub name: Arc<str>,
    /// Its admission state (authentication, CORS, per-client buckets).
    pub guard: RouteGuard,
    gw: Arc<Gateway>,
    index: usize,
}

impl RouteEntry {
    /// The route's validated config.
    pub fn config(&self) -> &GatewayRoute {
        &self.gw.routes[self.index]
    }
}

/// The gateway config and its metric handles.
pub struct GatewayState {
    /// The validated file.
    pub gw: Arc<Gateway>,
    /// Its routes, same order.
    pub routes: Vec<RouteEntry>,
    /// Metric families.
    pub metrics: GatewayMetrics,
    /// JWT key caches and API key sets.
    pub auth: AuthStage,
}

impl GatewayState {
    /// The state for `gw`; reads its API key files (JWT keys are fetched by the
    /// [`KeyRefresher`](crate::gateway::auth::refresh::KeyRefresher)).
    pub fn new(gw: Arc<Gateway>, metrics: GatewayMetrics) -> Result<Self, BuildError> {
        let auth = AuthStage::build(&gw.auth, weft_resilience::Clock::new())?;
        let routes = (0..gw.routes.len())
            .map(|index| RouteEntry {
                name: gw.routes[index].name.as_str().into(),
                guard: auth.route(gw.routes[index].access.clone()),
                gw: gw.clone(),
                index,
            })
            .collect();
        Ok(Self {
            gw,
            routes,
            metrics,
            auth,
        })
    }
}
