//! The gateway's config in force, swapped whole when the gateway file changes
//! ([`crate::gateway::reload`]): each connection and each request works with the state it
//! started with, as the sidecar's requests hold their snapshot. Certificates also reload on
//! their own (their files change without the gateway file changing, see
//! [`crate::gateway::edge_tls`]).

use std::sync::Arc;

use arc_swap::ArcSwap;
use weft_policy::gateway::{Gateway, GatewayRoute};

use crate::gateway::auth::{AuthStage, BuildError, RouteGuard};
use crate::gateway::edge_tls::{self, EdgeTls, EdgeTlsError};
use crate::gateway::metrics::GatewayMetrics;

/// The state in force, shared by the listeners, the proxy logic and the reloader.
pub type Live = ArcSwap<GatewayState>;

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

/// Why a gateway config cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A JWT provider or API key set is unusable.
    #[error("gateway auth: {0}")]
    Auth(#[from] BuildError),
    /// The certificates do not load.
    #[error("gateway certificates: {0}")]
    Tls(#[from] EdgeTlsError),
    /// A reload changed what only a restart can change.
    #[error("{0}: the listeners stay bound where they are; change them with a restart")]
    Listen(String),
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
    /// The edge TLS acceptor and its certificates by SNI.
    pub tls: Arc<EdgeTls>,
}

impl GatewayState {
    /// The state for `gw` at start: loads its certificates and API key files (JWT keys are
    /// fetched by the reloader's key tasks, [`crate::gateway::auth::refresh`]).
    pub fn new(gw: Arc<Gateway>, metrics: GatewayMetrics) -> Result<Self, StateError> {
        Self::next(gw, metrics, None)
    }

    /// The state for `gw` replacing `prev`: what the change leaves alone is kept (the TLS
    /// acceptor when the certificate list and version floor are the same, so a certificate
    /// reload in progress is not undone; each JWT provider's key cache when the provider is
    /// unchanged, so its tokens keep passing without a fetch). Per-client buckets start
    /// afresh. Listener addresses cannot change: they are bound once.
    pub fn next(
        gw: Arc<Gateway>,
        metrics: GatewayMetrics,
        prev: Option<&GatewayState>,
    ) -> Result<Self, StateError> {
        if let Some(p) = prev {
            if p.gw.https != gw.https {
                return Err(StateError::Listen(format!(
                    "listen.https changed from {} to {}",
                    p.gw.https, gw.https
                )));
            }
            if p.gw.http_redirect != gw.http_redirect {
                return Err(StateError::Listen(
                    "listen.http_redirect changed".to_owned(),
                ));
            }
        }
        let tls = match prev {
            Some(p) if p.gw.min_tls == gw.min_tls && p.gw.certificates == gw.certificates => {
                p.tls.clone()
            }
            _ => Arc::new(edge_tls::build(&gw)?),
        };
        let auth = AuthStage::rebuild(
            &gw.auth,
            weft_resilience::Clock::new(),
            prev.map(|p| &p.auth),
        )?;
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
            tls,
        })
    }
}
