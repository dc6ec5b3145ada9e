//! The gateway's config in force: fixed for the process's life (the certificates are the part
//! that reloads, see [`crate::gateway::edge_tls`]).

use std::sync::Arc;

use weft_policy::gateway::{Gateway, GatewayRoute};

use crate::gateway::metrics::GatewayMetrics;

/// One route with what the request path needs of it.
pub struct RouteEntry {
    /// The route's name (metrics label, access log).
    pub name: Arc<str>,
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
}

impl GatewayState {
    /// The state for `gw`.
    pub fn new(gw: Arc<Gateway>, metrics: GatewayMetrics) -> Self {
        let routes = (0..gw.routes.len())
            .map(|index| RouteEntry {
                name: gw.routes[index].name.as_str().into(),
                gw: gw.clone(),
                index,
            })
            .collect();
        Self {
            gw,
            routes,
            metrics,
        }
    }
}
