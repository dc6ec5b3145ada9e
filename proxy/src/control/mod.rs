//! The control thread: admin HTTP (loopback), config reload on SIGHUP and on file change,
//! and, when `control_plane` is set, the control-plane client ([`crate::control::client`]).
//! It runs on its own single-threaded runtime so control work never delays traffic.
//! Certificate rotation ([`crate::identity::certify::rotate`]) has a thread of its own.

pub mod admin;
pub mod app_probe;
pub mod channel;
pub mod client;
pub mod endpoints;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::drain::Drain;
use crate::store::{file_stamps, PolicySource, Store};
use weft_policy::Listen;

/// How often the config and certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How long an admin or metrics client may take to send a request's headers (also the idle
/// limit between requests on a kept-alive connection). The metrics listener is on the pod's
/// address: without a limit a slow or silent client holds a connection forever.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once per admin or metrics listener; more are closed at accept.
/// Prometheus and the kubelet need a handful; the cap bounds what a flood can hold.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// What a listener of the control thread serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// The whole admin API (loopback only: it dumps config and changes the log level).
    Admin,
    /// `listen.metrics`: `/metrics`, `/live`, `/ready` and the configured app probes
    /// (`/app-health/...`, [`app_probe`]) only, safe on a pod's address for Prometheus and
    /// kubelet probes.
    ReadOnly,
}

/// Start the control thread; fails if the admin or metrics port cannot be bound. `listening`
/// holds the traffic listeners' bound addresses; returned completed with the admin and
/// metrics ones, and kept in the store for whatever reports them (registration, the admin
/// API) before any of it runs. `probes` are the app's probes the read-only port answers;
/// `gateway` feeds a gateway's reloader the configs the control plane sends it.
pub fn spawn(
    store: Arc<Store>,
    drain: Arc<Drain>,
    mut listening: Listen,
    probes: Arc<app_probe::AppProbes>,
    gateway: Option<Arc<crate::gateway::remote::GatewayFeed>>,
) -> anyhow::Result<Listen> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(TcpListener::bind(listening.admin))
        .map_err(|e| anyhow::anyhow!("listen.admin {}: {e}", listening.admin))?;
    listening.admin = listener.local_addr()?;
    let metrics = match listening.metrics {
        Some(addr) => {
            let m = rt
                .block_on(TcpListener::bind(addr))
                .map_err(|e| anyhow::anyhow!("listen.metrics {addr}: {e}"))?;
            listening.metrics = Some(m.local_addr()?);
            Some(m)
        }
        None => None,
    };
    store.set_listening(listening.clone());
    let renewals = match store.load().control_plane.clone() {
        Some(cp) => Some((spawn_renewal(store.clone(), cp.clone())?, cp)),
        None => None,
    };
    std::thread::Builder::new()
        .name("weft-control".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::spawn(reload_on_sighup(store.clone()));
                tokio::spawn(reload_on_change(store.clone()));
                if let Some((renewals, cp)) = renewals {
                    tokio::spawn(crate::control::client::run(
                        store.clone(),
                        cp,
                        renewals,
                        drain.clone(),
                        gateway,
                    ));
                }
                if let Some(m) = metrics {
                    tokio::spawn(serve_admin(
                        m,
                        Surface::ReadOnly,
                        store.clone(),
                        drain.clone(),
                        probes.clone(),
                    ));
                }
                serve_admin(listener, Surface::Admin, store, drain, probes).await;
            })
        })?;
    Ok(listening)
}

/// Start certificate renewal on a thread of its own, so that nothing the admin and metrics
/// listeners do (a slow `/metrics` render, a flood of connections) delays a renewal, and a
/// renewal that waits on the control plane delays no scrape. Returns the channel each renewed
/// expiry is sent on (the control-plane stream reports it).
fn spawn_renewal(
    store: Arc<Store>,
    cp: weft_policy::ControlPlane,
) -> anyhow::Result<tokio::sync::watch::Receiver<SystemTime>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (renewed, renewals) = tokio::sync::watch::channel(store.load().tls.not_after);
    std::thread::Builder::new()
        .name("weft-renewal".into())
        .spawn(move || rt.block_on(crate::identity::certify::rotate(store, cp, renewed)))?;
    Ok(renewals)
}

/// Reload on a blocking thread: a reload reads files and may wait for the rebuild lock (held
/// while a renewed certificate is installed), neither of which may stall the control thread.
async fn reload(store: &Arc<Store>, why: &'static str) {
    let s = store.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || reload_now(&s, why)).await {
        log::error!("reload task failed: {e}");
    }
}

fn reload_now(store: &Store, why: &str) {
    match store.reload() {
        Ok(v) => log::info!("config reloaded ({why}): now v{v}"),
        Err(e) => log::error!(
            "config rejected ({why}); keeping v{}:\n{e}",
            store.load().version
        ),
    }
}

async fn reload_on_sighup(store: Arc<Store>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        log::error!("cannot watch SIGHUP; reload on file change only");
        return;
    };
    while hup.recv().await.is_some() {
        reload(&store, "SIGHUP").await;
    }
}

/// The config file and the certificate files it names (rotation is a file change too).
fn watched(store: &Store) -> Vec<PathBuf> {
    let tls = store.load().tls_paths.clone();
    vec![store.path().to_owned(), tls.cert, tls.key, tls.trust_bundle]
}

async fn reload_on_change(store: Arc<Store>) {
    let mut paths = watched(&store);
    let mut last = file_stamps(&paths);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        let now = file_stamps(&paths);
        if now != last {
            reload(&store, "file changed").await;
            let after = watched(&store);
            // Compare later against the stamps taken *before* this reload: a file replaced
            // while it ran (the key renamed in after the certificate, say) then differs at the
            // next tick and is reloaded again. Stamping after the reload would record the new
            // file as seen and never apply it. A changed set of files is stamped anew.
            last = if after == paths {
                now
            } else {
                file_stamps(&after)
            };
            paths = after;
        }
    }
}

async fn serve_admin(
    listener: TcpListener,
    surface: Surface,
    store: Arc<Store>,
    drain: Arc<Drain>,
    probes: Arc<app_probe::AppProbes>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // e.g. out of file descriptors: back off instead of spinning.
                log::warn!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap: closed at once (dropping the stream), never queued.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!(
                "{surface:?} listener: {ADMIN_MAX_CONNECTIONS} connections open; closing a new one"
            );
            continue;
        };
        let (store, drain, probes) = (store.clone(), drain.clone(), probes.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let (store, drain, probes) = (store.clone(), drain.clone(), probes.clone());
                async move {
                    // The app's probes wait on the app (up to their timeout): answered here,
                    // asynchronously, not in the synchronous `handle`.
                    if req.uri().path().starts_with(app_probe::PREFIX) {
                        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                        return Ok::<_, Infallible>(app_health(&method, &path, &probes).await);
                    }
                    Ok::<_, Infallible>(handle(req, surface, &store, &drain))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn json(v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, format!("{v:#}\n"));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn log_level(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == hyper::Method::GET {
        return text(StatusCode::OK, format!("{}\n", log::max_level()));
    }
    if req.method() != hyper::Method::POST && req.method() != hyper::Method::PUT {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, or POST /log-level?level=debug\n".into(),
        );
    }
    let level = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")));
    match level.map(admin::parse_level) {
        Some(Ok(l)) => {
            log::set_max_level(l);
            log::warn!("log level set to {l} through the admin API");
            text(StatusCode::OK, format!("{l}\n"))
        }
        Some(Err(e)) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        None => text(StatusCode::BAD_REQUEST, "missing ?level=\n".into()),
    }
}

/// `GET /app-health/<container>/<kind>`: the app's own probe, run by [`app_probe`].
async fn app_health(
    method: &hyper::Method,
    path: &str,
    probes: &app_probe::AppProbes,
) -> Response<Full<Bytes>> {
    if method != hyper::Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "app probes answer GET only\n".into(),
        );
    }
    let (status, body) = probes.answer(path).await;
    text(status, body)
}

fn handle(
    req: Request<Incoming>,
    surface: Surface,
    store: &Store,
    drain: &Drain,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if surface == Surface::ReadOnly && !matches!(path, "/metrics" | "/live" | "/ready") {
        return text(
            StatusCode::NOT_FOUND,
            "not found; this listener serves /metrics, /live, /ready and the app's probes\n".into(),
        );
    }
    match path {
        "/config_dump" => json(admin::config_dump(&store.load(), &store.listening())),
        "/certs" => json(admin::certs(&store.load())),
        "/log-level" => log_level(&req),
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/metrics" => {
            let snap = store.load();
            snap.routes
                .export_gauges(&snap.own.name, &store.metrics, crate::clock::now());
            let mut r = text(StatusCode::OK, store.metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/ready" => {
            let snap = store.load();
            if drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            } else if snap.tls.not_after <= SystemTime::now() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "certificate expired\n".into(),
                )
            } else if snap.policy == PolicySource::Pending {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for the first control-plane snapshot (inbound refused: fail closed)\n"
                        .into(),
                )
            } else if snap.policy == PolicySource::Bootstrap {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for the first control-plane snapshot (serving the bootstrap policy)\n"
                        .into(),
                )
            } else if snap.control_plane.is_some() {
                let link = if store.control_plane_connected() {
                    "connected"
                } else {
                    "disconnected, serving the last good policy"
                };
                text(
                    StatusCode::OK,
                    format!(
                        "ready (control plane {link}; policy {}): config v{}\n",
                        store.control_plane_version().unwrap_or_default(),
                        snap.version
                    ),
                )
            } else {
                text(StatusCode::OK, format!("ready: config v{}\n", snap.version))
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready, /metrics, /config_dump, /certs or /log-level\n".into(),
        ),
    }
}
