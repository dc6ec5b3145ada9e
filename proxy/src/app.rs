//! Assembles the sidecar from its parts: the traffic service with every listener, the
//! background services (dedicated ports, outbound identity), the access log and tracer, and
//! the control thread; then runs it until it is told to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;

use crate::control;
use crate::drain::{Drain, DrainSignals};
use crate::inbound::InboundHttp;
use crate::listen::bound::{self, Prebound};
use crate::listen::ports::PortManager;
use crate::listen::Traffic;
use crate::outbound::connector::{IdentitySync, OutboundProxies};
use crate::outbound::Outbound;
use crate::store::Store;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::hop::Reporters;
use crate::telemetry::trace::Tracer;
use weft_policy::Listen;

/// At exit, how long queued spans may take to reach the collector.
pub const TRACE_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Build and run the sidecar until it is told to stop. Returns only on a fatal start error.
pub fn run(store: Arc<Store>, ready_file: Option<&Path>) -> anyhow::Result<()> {
    run_with(store, ready_file, None)
}

/// [`run`], in gateway mode when `gateway` is given: the sidecar's listeners plus the
/// gateway's ([`crate::gateway`]), whose addresses the ready file adds.
// Long: the start-up order (bind, services, gateway, control thread, ready file, run) in one
// place, as `control::spawn` needs what the gateway's services hand back.
pub fn run_with(
    store: Arc<Store>,
    ready_file: Option<&Path>,
    gateway: Option<crate::gateway::listener::GatewayFile>,
) -> anyhow::Result<()> {
    let snap = store.load();
    // The app's probes the injector handed over: a bad set stops the start, naming the probe.
    let probes = Arc::new(control::app_probe::AppProbes::from_env()?);
    // Bound first: a port taken (or a bad address) stops the start with its name, and a port
    // of 0 is the kernel's choice from here on.
    let outbound_l = bound::bind(snap.listen.outbound, "outbound")?;
    let inbound_l = bound::bind(snap.listen.inbound, "inbound")?;
    let mut listening = snap.listen.clone();
    listening.outbound = outbound_l.addr;
    listening.inbound = inbound_l.addr;
    let drain = Arc::new(Drain::default());
    let server_conf = || ServerConf {
        threads: snap.workers,
        // Our drain thread exits the process once idle; Pingora's grace sleep is the backstop.
        grace_period_seconds: Some(snap.drain_timeout.as_secs() + 2),
        graceful_shutdown_timeout_seconds: Some(1),
        // One current-thread runtime per worker: a sidecar's connections never need stealing
        // across workers, and the single-threaded scheduler costs less per task wake-up.
        work_stealing: false,
        ..ServerConf::default()
    };
    let conf = Arc::new(server_conf());
    let mut server = Server::new_with_opt_and_conf(None, server_conf());
    server.bootstrap();

    let report = telemetry(&store, &drain)?;
    let traffic = Proxies {
        store: &store,
        drain: &drain,
        conf: conf.clone(),
        report: report.clone(),
    };
    traffic.add_services(&mut server, &listening, vec![outbound_l, inbound_l])?;
    let (edge, feed) = match gateway {
        Some(file) => {
            let (edge, feed) = crate::gateway::listener::add_services(
                &mut server,
                crate::gateway::listener::Parts {
                    store: &store,
                    outbound: Outbound::new(store.clone(), drain.clone(), report.clone()),
                    conf,
                    file,
                    access_log: report.access_log.clone(),
                },
            )?;
            (Some(edge), feed)
        }
        None => (None, None),
    };

    let listening = control::spawn(store.clone(), drain.clone(), listening, probes, feed)?;
    if let Some(path) = ready_file {
        write_ready_file(path, &listening, edge.as_ref())
            .with_context(|| format!("--ready-file {}", path.display()))?;
    }
    log::info!(
        "weft-proxy {} ({}) up: outbound {}, inbound {}, admin {}, config v{}, {}",
        snap.own.name,
        snap.tls.identity,
        listening.outbound,
        listening.inbound,
        listening.admin,
        snap.version,
        match &report.tracer {
            Some(t) => format!(
                "spans to {} (sampling {})",
                t.collector, snap.tracing.sampling
            ),
            None => "no span export".to_owned(),
        }
    );
    let limit = snap.drain_timeout;
    drop(snap);
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainSignals { drain, limit }),
    });
    Ok(())
}

/// Say where the sidecar listens, once every listener is bound: JSON with the `outbound`,
/// `inbound`, `admin` and (or null) `metrics` addresses and the `pid`, written atomically so
/// a reader never sees half of it. Connections made as soon as it appears wait in the
/// listeners' backlogs until the traffic workers start.
fn write_ready_file(
    path: &Path,
    l: &Listen,
    edge: Option<&crate::gateway::listener::GatewayListening>,
) -> std::io::Result<()> {
    let mut text = serde_json::json!({
        "pid": std::process::id(),
        "outbound": l.outbound.to_string(),
        "inbound": l.inbound.to_string(),
        "admin": l.admin.to_string(),
        "metrics": l.metrics.map(|m| m.to_string()),
    });
    // Gateway mode adds its listeners: `gateway_https`, `gateway_http` (null without one).
    if let (Some(e), Some(obj)) = (edge, text.as_object_mut()) {
        obj.insert("gateway_https".into(), e.https.to_string().into());
        obj.insert(
            "gateway_http".into(),
            e.http_redirect.map(|a| a.to_string()).into(),
        );
    }
    crate::store::write_atomically(path, format!("{text}\n").as_bytes(), 0o644)
}

/// The access log and the span exporter, when configured; queued spans are flushed at exit.
fn telemetry(store: &Store, drain: &Drain) -> anyhow::Result<Reporters> {
    let snap = store.load();
    let access_log = match &snap.access_log {
        Some(path) => Some(Arc::new(
            AccessLog::start(
                path,
                store.metrics.access_log_dropped.clone(),
                store.metrics.access_log_lines.clone(),
            )
            .with_context(|| format!("access log {}", path.display()))?,
        )),
        None => None,
    };
    let tracer = match &snap.tracing.collector {
        Some(_) => {
            let t = Tracer::start(
                &snap.tracing,
                &snap.own.name,
                &snap.identity,
                &store.metrics,
            )?;
            let at_exit = t.clone();
            drain.at_exit(move || {
                if !at_exit.flush(TRACE_FLUSH_LIMIT) {
                    log::warn!("spans still queued at exit were not all exported");
                }
            });
            Some(t)
        }
        None => None,
    };
    Ok(Reporters { access_log, tracer })
}

/// What the traffic services are built from.
struct Proxies<'a> {
    store: &'a Arc<Store>,
    drain: &'a Arc<Drain>,
    conf: Arc<ServerConf>,
    report: Reporters,
}

impl Proxies<'_> {
    /// The traffic service (the outbound and inbound proxies behind one dispatcher, on the
    /// `bound` listeners and the dedicated ports known at start) and its background services:
    /// the port manager for dedicated ports added later, and the outbound identity sync.
    fn add_services(
        &self,
        server: &mut Server,
        listening: &Listen,
        bound: Vec<bound::Bound>,
    ) -> anyhow::Result<()> {
        let snap = self.store.load();
        let outbound = Arc::new(
            OutboundProxies::new(
                self.conf.clone(),
                Outbound::new(self.store.clone(), self.drain.clone(), self.report.clone()),
                snap.tls.client.clone(),
            )
            .context("outbound proxy")?,
        );
        let mut inbound = HttpProxy::new(
            InboundHttp::new(self.store.clone(), self.drain.clone(), self.report.clone()),
            self.conf.clone(),
        );
        inbound.handle_init_modules();
        crate::upgrade::allow_extended_connect(&mut inbound);

        let traffic = Traffic {
            store: self.store.clone(),
            drain: self.drain.clone(),
            outbound: outbound.clone(),
            inbound: Arc::new(inbound),
            outbound_port: listening.outbound.port(),
            inbound_port: listening.inbound.port(),
            open: Arc::default(),
            egress: Arc::default(),
            access_log: self.report.access_log.clone(),
        };
        let ports = Arc::new(traffic.clone());
        let mut service = Service::new("weft traffic".to_owned(), traffic);
        service.threads = Some(snap.workers);
        service.add_tcp(&listening.outbound.to_string());
        service.add_tcp(&listening.inbound.to_string());
        let at_start: std::collections::BTreeSet<u16> = snap
            .routes
            .outbound_ports()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for port in &at_start {
            service.add_tcp(&format!("127.0.0.1:{port}"));
        }
        server.add_service(Prebound::new(service, bound));
        // Ports added later (reload, control-plane snapshot) are bound by the port manager.
        let mut port_manager = pingora_core::services::background::background_service(
            "weft dedicated ports",
            PortManager::new(self.store.clone(), ports, at_start),
        );
        port_manager.threads = Some(1);
        server.add_service(port_manager);
        let mut identity_sync = pingora_core::services::background::background_service(
            "weft outbound identity",
            IdentitySync::new(self.store.clone(), outbound),
        );
        identity_sync.threads = Some(1);
        server.add_service(identity_sync);
        Ok(())
    }
}
