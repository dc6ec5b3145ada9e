//! The gateway's listeners, one Pingora service beside the sidecar's: the HTTPS listener
//! (TLS handshake bounded by `limits.handshake_timeout`, then HTTP/2 or HTTP/1.1 by ALPN) and
//! the optional plain-HTTP listener that answers every request with a 308 to HTTPS. Each holds
//! at most `limits.max_connections` connections; more are closed at once and counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake;
use pingora_core::protocols::{Ssl, Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_http::ResponseHeader;
use tokio::time::timeout;
use weft_policy::gateway::Gateway as GatewayConfig;

use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::reload::GatewayReloader;
use crate::gateway::remote::GatewayFeed;
use crate::gateway::route::request_host;
use crate::gateway::state::{GatewayState, Live};
use crate::gateway::Gateway;
use crate::listen::bound::{self, Prebound};
use crate::outbound::connector::{IdentitySync, OutboundProxies};
use crate::outbound::Outbound;
use crate::store::Store;
use crate::telemetry::access_log::AccessLog;

/// Where the gateway listens, once bound.
#[derive(Debug, Clone, Copy)]
pub struct GatewayListening {
    /// HTTPS.
    pub https: SocketAddr,
    /// The redirect listener.
    pub http_redirect: Option<SocketAddr>,
}

/// Counts a listener's open connections; a slot is released when the guard drops.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn hold(open: &AtomicUsize, max: usize) -> Option<Slot<'_>> {
    if open.fetch_add(1, Ordering::AcqRel) >= max {
        open.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(open))
}

/// The connection dispatcher of the gateway's listeners.
pub struct GatewayTraffic {
    proxies: Arc<OutboundProxies<Gateway>>,
    /// The config in force (limits, certificates, metrics); each connection takes it once.
    live: Arc<Live>,
    https_port: u16,
    open_https: AtomicUsize,
    open_http: AtomicUsize,
}

impl GatewayTraffic {
    async fn https(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let st = self.live.load_full();
        let limits = &st.gw.limits;
        let l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        let handshakes = &st.metrics.handshakes;
        let tls = match timeout(limits.handshake_timeout, handshake(&st.tls.acceptor, *l4)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                handshakes.with_label_values(&["failed"]).inc();
                log::debug!("gateway TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                handshakes.with_label_values(&["timeout"]).inc();
                return None;
            }
        };
        handshakes.with_label_values(&["ok"]).inc();
        // The proxy in force when the connection starts (a renewed workload certificate
        // applies to the next connection).
        let proxy = self.proxies.current();
        if tls.selected_alpn_proto() == Some(ALPN::H2) {
            return ServerApp::process_new(&proxy, Box::new(tls), shutdown).await;
        }
        let mut session = ServerSession::new_http1(Box::new(tls));
        // The first request's header: each read bounded by the header timeout (a keep-alive
        // wait that ends quietly); routed requests then get the idle timeout.
        session.set_keepalive(Some(limits.header_timeout.as_secs().max(1)));
        let mut result = proxy.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self
                .proxies
                .current()
                .process_new_http(session, shutdown)
                .await;
        }
        None
    }

    /// One request, answered with `308 Permanent Redirect` to the same host and path over
    /// HTTPS; the connection then closes.
    async fn redirect(&self, stream: Stream) -> Option<Stream> {
        let st = self.live.load_full();
        let limits = &st.gw.limits;
        let mut session = ServerSession::new_http1(stream);
        session.set_read_timeout(Some(limits.header_timeout));
        match timeout(limits.header_timeout, session.read_request()).await {
            Ok(Ok(true)) => {}
            _ => return None,
        }
        let req = session.req_header();
        let location = request_host(req).map(|h| {
            let h = if h.contains(':') { format!("[{h}]") } else { h };
            let port = match st.gw.redirect_port.unwrap_or(self.https_port) {
                443 => String::new(),
                p => format!(":{p}"),
            };
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            format!("https://{h}{port}{pq}")
        });
        let (status, location) = match location {
            Some(l) => (308, Some(l)),
            None => (400, None),
        };
        let mut resp = ResponseHeader::build(status, Some(3)).ok()?;
        if let Some(l) = location {
            resp.insert_header(http::header::LOCATION, l).ok()?;
        }
        resp.insert_header(http::header::CONTENT_LENGTH, "0").ok()?;
        resp.insert_header(http::header::CONNECTION, "close").ok()?;
        session.set_keepalive(None);
        session.write_response_header(Box::new(resp)).await.ok()?;
        let _ = session.finish_body().await;
        let code = if status == 308 { "308" } else { "400" };
        st.metrics
            .requests
            .with_label_values(&["redirect", code])
            .inc();
        None
    }
}

#[async_trait]
impl ServerApp for GatewayTraffic {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let port = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()))?;
        let https = port == self.https_port;
        let (open, name) = if https {
            (&self.open_https, "https")
        } else {
            (&self.open_http, "http_redirect")
        };
        let st = self.live.load_full();
        let Some(_slot) = hold(open, st.gw.limits.max_connections) else {
            st.metrics.refused.with_label_values(&[name]).inc();
            return None;
        };
        if https {
            self.https(stream, shutdown).await
        } else {
            self.redirect(stream).await
        }
    }
}

/// What the gateway service is built from.
pub struct Parts<'a> {
    /// The sidecar's store (identity, mesh services, the sidecar file's path).
    pub store: &'a Arc<Store>,
    /// The sidecar's outbound logic, which the gateway wraps.
    pub outbound: Outbound,
    /// Pingora's settings.
    pub conf: Arc<ServerConf>,
    /// The gateway file, read and validated at start.
    pub file: GatewayFile,
    /// Where access log lines go.
    pub access_log: Option<Arc<AccessLog>>,
}

/// The gateway file: where it is (the reloader reads it again when it changes) and its
/// config at start.
pub struct GatewayFile {
    /// Its path.
    pub path: std::path::PathBuf,
    /// Its validated config.
    pub config: Arc<GatewayConfig>,
    /// `<namespace>/<name>` of the Gateway whose config the control plane sends
    /// (`--gateway-name`); none: the file only.
    pub name: Option<String>,
}

/// Bind the gateway's listeners and add its services (listeners, the reloader of its files
/// and JWT keys, identity sync) to `server`. With a Gateway name, also the feed the
/// control-plane stream hands that Gateway's configs to.
pub fn add_services(
    server: &mut Server,
    parts: Parts<'_>,
) -> anyhow::Result<(GatewayListening, Option<Arc<GatewayFeed>>)> {
    let gw = parts.file.config;
    let metrics = GatewayMetrics::register(&parts.store.metrics).context("gateway metrics")?;
    let state = GatewayState::new(gw.clone(), metrics.clone()).context("gateway")?;
    let live = Arc::new(Live::from_pointee(state));
    let https = bound::bind(gw.https, "gateway https")?;
    let redirect = gw
        .http_redirect
        .map(|a| bound::bind(a, "gateway http_redirect"))
        .transpose()?;
    let listening = GatewayListening {
        https: https.addr,
        http_redirect: redirect.as_ref().map(|b| b.addr),
    };
    let logic = Gateway::new(parts.outbound, live.clone(), parts.access_log);
    let snap = parts.store.load();
    let proxies = Arc::new(
        OutboundProxies::new(parts.conf.clone(), logic, snap.tls.client.clone())
            .context("gateway proxy")?,
    );
    let (feed, remote) = match parts.file.name {
        Some(name) => {
            let (feed, rx) = GatewayFeed::new(name);
            (Some(Arc::new(feed)), Some(rx))
        }
        None => (None, None),
    };
    let reloader = GatewayReloader {
        path: parts.file.path,
        store: parts.store.clone(),
        live: live.clone(),
        metrics,
        remote: std::sync::Mutex::new(remote),
    };
    let traffic = GatewayTraffic {
        proxies: proxies.clone(),
        live,
        https_port: https.addr.port(),
        open_https: AtomicUsize::new(0),
        open_http: AtomicUsize::new(0),
    };
    let mut service = Service::new("weft gateway".to_owned(), traffic);
    service.threads = Some(snap.workers);
    service.add_tcp(&https.addr.to_string());
    let mut bound = vec![https];
    if let Some(r) = redirect {
        service.add_tcp(&r.addr.to_string());
        bound.push(r);
    }
    server.add_service(Prebound::new(service, bound));
    let mut reload =
        pingora_core::services::background::background_service("weft gateway reload", reloader);
    reload.threads = Some(1);
    server.add_service(reload);
    let mut sync = pingora_core::services::background::background_service(
        "weft gateway identity",
        IdentitySync::new(parts.store.clone(), proxies),
    );
    sync.threads = Some(1);
    server.add_service(sync);
    Ok((listening, feed))
}
