//! The gateway scenario (issue 23), run: Weft's gateway (`weft-proxy --gateway`) terminating
//! TLS from the load generator and forwarding over mutual TLS to a Weft sidecar in front of
//! the app, against NGINX as a TLS reverse proxy to the same app; one worker each, the same
//! server certificate and TLS 1.3 suite. Saturation and each fixed rate over HTTP/1.1
//! keep-alive connections; results in [`crate::gateway_results`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::time::Instant;
use weft_benches::http1::get_request;
use weft_benches::mesh::{self, loopback, Binaries, ChildGuard, SidecarPorts};
use weft_benches::procfs;

use crate::configs::weft_server_cfg;
use crate::gateway_results::{GatewayColumn, GatewayConfig, GatewayReport, GatewayRun};
use crate::lanes::{self, Kind};
use crate::model::{PairPorts, Sizing, Workload, APP_DNS, TLS13_SUITE};
use crate::pair::{self, PeersFound};

/// Pause after the proxies start and after each load.
const SETTLE: Duration = Duration::from_millis(300);

/// The gateway file: an HTTPS listener on `port` serving `app.crt` for every name (TLS 1.3
/// only, as NGINX is given), one route from any host and path to the service `app`.
pub fn gateway_file(port: u16, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "listen:\n\
         \x20 https: 127.0.0.1:{port}\n\
         tls:\n\
         \x20 min_version: \"1.3\"\n\
         \x20 certificates:\n\
         \x20   - {{hosts: [\"{APP_DNS}\"], cert: {d}/app.crt, key: {d}/app.key, default: true}}\n\
         routes:\n\
         \x20 - name: app\n\
         \x20   service: app\n"
    )
}

/// NGINX as a TLS reverse proxy: `app.crt` on `port` (TLS 1.3, the one suite), HTTP/1.1
/// with keep-alive to `app`, one worker, no master, no access log.
pub fn nginx_edge_cfg(port: u16, app: SocketAddr, dir: &Path, s: Sizing) -> String {
    let d = dir.display();
    let t = dir.join("nginx-edge-tmp");
    let t = t.display();
    format!(
        "worker_processes 1;\n\
         worker_rlimit_nofile {wc2};\n\
         pid {d}/nginx-edge.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections {wc}; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {t}/body;\n\
         \x20   proxy_temp_path {t}/proxy;\n\
         \x20   fastcgi_temp_path {t}/fastcgi;\n\
         \x20   uwsgi_temp_path {t}/uwsgi;\n\
         \x20   scgi_temp_path {t}/scgi;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   keepalive_timeout 60s;\n\
         \x20   upstream app {{\n\
         \x20       server {app};\n\
         \x20       keepalive {ka};\n\
         \x20       keepalive_requests 1000000;\n\
         \x20       keepalive_timeout 60s;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port} ssl;\n\
         \x20       ssl_certificate {d}/app.crt;\n\
         \x20       ssl_certificate_key {d}/app.key;\n\
         \x20       ssl_protocols TLSv1.3;\n\
         \x20       ssl_conf_command Ciphersuites {TLS13_SUITE};\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://app;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header Host $host;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        wc = s.worker_connections,
        wc2 = s.worker_connections * 2,
        ka = s.upstream_keepalive,
    )
}

/// The load generator's TLS: TLS 1.3 with the one suite the proxies are given, the mesh CA
/// as the only root, ALPN `http/1.1`, no client certificate.
pub fn client_tls(dir: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt"))
        .map_err(|e| anyhow::anyhow!("ca.crt: {e}"))?
    {
        roots.add(c.map_err(|e| anyhow::anyhow!("ca.crt: {e}"))?)?;
    }
    let mut provider = rustls::crypto::ring::default_provider();
    // The suite of TLS13_SUITE, the one NGINX is given.
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    anyhow::ensure!(
        !provider.cipher_suites.is_empty(),
        "rustls lacks {TLS13_SUITE}"
    );
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A running column: its processes (edge first) and where the client connects.
struct Edge {
    procs: Vec<ChildGuard>,
    entry: SocketAddr,
}

impl Edge {
    /// Starts `col` in front of `app`, pinned to `core`, and waits (bounded) until a request
    /// goes through.
    // The scenario's settings, passed as they are (as `Pair::start` takes them).
    #[allow(clippy::too_many_arguments)]
    async fn start(
        col: GatewayColumn,
        app: SocketAddr,
        dir: &Path,
        bins: &Binaries,
        found: &PeersFound,
        core: usize,
        sizing: Sizing,
        kind: &dyn Fn(SocketAddr) -> Kind,
    ) -> anyhow::Result<Self> {
        let ports = PairPorts::free()?;
        let extra = mesh::free_ports(1)?[0];
        let entry = loopback(ports.entry);
        let mut procs = Vec::new();
        match col {
            GatewayColumn::WeftGateway => {
                let (b_file, a_file, gw_file) = (
                    dir.join("gateway-sidecar.yaml"),
                    dir.join("gateway-mesh.yaml"),
                    dir.join("gateway.yaml"),
                );
                mesh::write_config(&b_file, &weft_server_cfg(Workload::Http, ports, app))?;
                let sp = SidecarPorts {
                    outbound: extra,
                    inbound: ports.weft[1],
                    admin: ports.weft[0],
                };
                mesh::write_config(&a_file, &mesh::client_sidecar(ports.weft[4], sp, ports.tls))?;
                std::fs::write(&gw_file, gateway_file(ports.entry, dir))?;
                mesh::check_config(bins, &b_file)?;
                let mut b = mesh::pinned(core, &bins.proxy);
                b.arg("--config").arg(&b_file);
                let mut b = ChildGuard::spawn("sidecar", b, &dir.join("gateway-sidecar.stderr"))?;
                mesh::wait_ready(&mut b, loopback(ports.weft[2]), "/ready").await?;
                let mut a = mesh::pinned(core, &bins.proxy);
                a.arg("--config")
                    .arg(&a_file)
                    .arg("--gateway")
                    .arg(&gw_file);
                let mut a = ChildGuard::spawn("gateway", a, &dir.join("gateway.stderr"))?;
                mesh::wait_ready(&mut a, loopback(ports.weft[0]), "/ready").await?;
                procs.push(a);
                procs.push(b);
            }
            GatewayColumn::Nginx => {
                let bin = found.nginx.as_ref().context("nginx not found")?;
                let f = dir.join("nginx-edge.conf");
                let t = dir.join("nginx-edge-tmp");
                std::fs::create_dir_all(&t).with_context(|| format!("creating {}", t.display()))?;
                std::fs::write(&f, nginx_edge_cfg(ports.entry, app, dir, sizing))?;
                let mut c = mesh::pinned(core, bin);
                // No master: the one process started is the worker we watch and end.
                c.arg("-e")
                    .arg("stderr")
                    .arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(&f);
                c.arg("-g").arg("daemon off; master_process off;");
                procs.push(ChildGuard::spawn(
                    "nginx",
                    c,
                    &dir.join("nginx-edge.stderr"),
                )?);
            }
        }
        let mut edge = Edge { procs, entry };
        edge.wait_through(&kind(entry)).await?;
        Ok(edge)
    }

    /// Fails if a process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(ChildGuard::check_alive)
    }

    /// Waits (at most [`mesh::READY_TIMEOUT`]) until one request through `kind` answers 200.
    async fn wait_through(&mut self, kind: &Kind) -> anyhow::Result<()> {
        let deadline = Instant::now() + mesh::READY_TIMEOUT;
        let mut last = String::from("no attempt yet");
        for _ in 0..(mesh::READY_TIMEOUT.as_millis() / 50 + 1) {
            self.check_alive()?;
            let one = async {
                let mut c = lanes::clients(kind, 1).await?;
                c[0].call(kind).await
            };
            match tokio::time::timeout(Duration::from_secs(5), one).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => last = "timed out".into(),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tails: Vec<String> = self
            .procs
            .iter()
            .map(|p| {
                format!(
                    "{} ({}):\n{}",
                    p.name(),
                    p.stderr_path().display(),
                    p.stderr_tail(20)
                )
            })
            .collect();
        bail!(
            "nothing through {} (last: {last}); {}",
            self.entry,
            tails.join("\n")
        )
    }
}

/// Runs the scenario: the app, then `runs` times each column (order alternating per run):
/// started fresh, its idle RSS, saturation, each fixed rate, ended.
// Long: the scenario in order (peers, certificates, app, the interleaved runs, the report), each step a call.
pub async fn run(
    cfg: GatewayConfig,
    bins: &Binaries,
    dir: &Path,
    nofile: u64,
) -> anyhow::Result<GatewayReport> {
    let mut found = PeersFound::detect();
    let mut versions = BTreeMap::new();
    let mut skipped = Vec::new();
    versions.insert("weft-proxy".to_owned(), bins.proxy_version());
    let mut cols = vec![GatewayColumn::WeftGateway];
    match (&found.nginx, cfg.only_weft) {
        (Some(p), false) => {
            versions.insert("nginx".to_owned(), mesh::version_of(p, "-v"));
            cols.push(GatewayColumn::Nginx);
        }
        (_, true) => {
            found.nginx = None;
            skipped.push("NGINX: --only-weft".to_owned());
        }
        (None, false) => skipped
            .push("NGINX: not found on PATH; install it with `scripts/setup --bench`".to_owned()),
    }
    for s in &skipped {
        eprintln!("weft-bench: {s}");
    }
    mesh::write_certs(dir).context("generating certificates")?;
    let sizing = Sizing::new(nofile, cfg.connections.max(cfg.latency_connections) as u64);
    let (app_addr, mut app) = pair::start_app(Workload::Http, cfg.server_core, bins, dir).await?;
    let tls = client_tls(dir)?;
    let name = ServerName::try_from(APP_DNS.to_owned())?;
    let request: Arc<[u8]> = get_request("app", "/").into();
    let kind = move |addr: SocketAddr| Kind::Https {
        addr,
        request: request.clone(),
        tls: tls.clone(),
        name: name.clone(),
    };
    let mut runs = Vec::new();
    for run in 1..=cfg.runs {
        // Alternate which column goes first, so neither always follows the other.
        let mut order = cols.clone();
        if run % 2 == 0 {
            order.reverse();
        }
        for col in order {
            let mut edge = Edge::start(
                col,
                app_addr,
                dir,
                bins,
                &found,
                cfg.server_core,
                sizing,
                &kind,
            )
            .await?;
            tokio::time::sleep(SETTLE).await;
            let mut watch = vec![app.pid()];
            watch.extend(edge.procs.iter().map(ChildGuard::pid));
            let idle_rss_kib = watch[1..]
                .iter()
                .map(|&p| procfs::rss_kib(p))
                .collect::<Result<Vec<_>, _>>()?;
            let k = kind(edge.entry);
            let lanes = lanes::clients(&k, cfg.connections).await?;
            let saturation = lanes::closed_loop(&k, lanes, cfg.timing, &watch).await?;
            let mut points = Vec::new();
            for &rate in &cfg.rates {
                tokio::time::sleep(SETTLE).await;
                let lanes = lanes::clients(&k, cfg.latency_connections).await?;
                points.push(lanes::open_loop(&k, lanes, rate, cfg.timing, &watch).await?);
            }
            app.check_alive()?;
            edge.check_alive()?;
            let rec = GatewayRun {
                run,
                column: col,
                idle_rss_kib,
                saturation,
                rates: points,
            };
            eprintln!(
                "weft-bench: gateway run {run}/{} {:<12} {:>10.1} req/s, errors {}",
                cfg.runs,
                col.as_str(),
                rec.saturation.rps,
                rec.errors()
            );
            runs.push(rec);
            drop(edge);
            tokio::time::sleep(SETTLE).await;
        }
    }
    drop(app);
    Ok(GatewayReport::new(cfg, versions, skipped, runs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_configs_serve_the_app_certificate_over_tls_1_3() {
        let d = Path::new("/t");
        let g = gateway_file(1001, d);
        for needle in [
            "https: 127.0.0.1:1001",
            "min_version: \"1.3\"",
            "cert: /t/app.crt, key: /t/app.key, default: true",
            "service: app",
        ] {
            assert!(g.contains(needle), "{needle:?} not in\n{g}");
        }
        let app: SocketAddr = "127.0.0.1:1009".parse().unwrap();
        let n = nginx_edge_cfg(1001, app, d, Sizing::new(20_000, 32));
        for needle in [
            "listen 127.0.0.1:1001 ssl;",
            "ssl_certificate /t/app.crt;",
            "ssl_protocols TLSv1.3;",
            "proxy_pass http://app;",
            "server 127.0.0.1:1009;",
            "keepalive 64;",
            "worker_processes 1;",
        ] {
            assert!(n.contains(needle), "{needle:?} not in\n{n}");
        }
        assert_eq!(n.matches('{').count(), n.matches('}').count(), "{n}");
    }
}
