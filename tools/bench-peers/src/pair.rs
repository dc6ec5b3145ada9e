//! The running pairs: which peers this machine has ([`PeersFound`]), a pair of proxies
//! started from the configs of [`crate::configs`] ([`Pair`]), one request, call or echo
//! through a pair, and a probe handshake that reads the TLS suite a pair negotiates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use tokio::time::Instant;
use weft_benches::mesh::{self, loopback, Binaries, ChildGuard};

use crate::configs::{
    haproxy_client_cfg, haproxy_server_cfg, nginx_client_cfg, nginx_server_cfg, weft_client_cfg,
    weft_server_cfg,
};
use crate::load as peer_load;
use crate::model::{Column, PairPorts, Sizing, Workload, APP_DNS, NGINX_STREAM_MODULE};

/// The peers found on this machine, and why any is left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeersFound {
    /// Path of `haproxy`, if on PATH.
    pub haproxy: Option<PathBuf>,
    /// Path of `nginx`, if on PATH.
    pub nginx: Option<PathBuf>,
    /// Whether NGINX has the stream module (built in, or Debian's dynamic module installed).
    pub nginx_stream: bool,
    /// Versions (first line of `-v`).
    pub versions: BTreeMap<String, String>,
    /// One line per peer or workload left out, and why.
    pub skipped: Vec<String>,
    /// The `weft-proxy` of the "weft-baseline" column (`--baseline-proxy`), when set.
    pub weft_baseline: Option<PathBuf>,
}

/// Finds `name` on `PATH` (and in /usr/sbin, where Debian puts both peers
/// and which a non-root PATH often lacks).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl PeersFound {
    /// Looks for `haproxy` and `nginx` and NGINX's stream module.
    pub fn detect() -> Self {
        let mut f = PeersFound {
            haproxy: which("haproxy"),
            nginx: which("nginx"),
            ..Default::default()
        };
        let hint = "install it with `scripts/setup --bench` (Debian packages haproxy, nginx, libnginx-mod-stream)";
        match &f.haproxy {
            Some(p) => {
                f.versions
                    .insert("haproxy".into(), mesh::version_of(p, "-v"));
            }
            None => f.skipped.push(format!(
                "haproxy: not found on PATH, HAProxy pair skipped; {hint}"
            )),
        }
        match &f.nginx {
            Some(p) => {
                f.versions.insert("nginx".into(), mesh::version_of(p, "-v"));
                let built_in = Command::new(p)
                    .arg("-V")
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stderr).contains("--with-stream ")
                            || String::from_utf8_lossy(&o.stderr).ends_with("--with-stream")
                    })
                    .unwrap_or(false);
                f.nginx_stream = built_in || Path::new(NGINX_STREAM_MODULE).is_file();
                if !f.nginx_stream {
                    f.skipped.push(format!(
                        "nginx: no stream module (neither built in nor {NGINX_STREAM_MODULE}), NGINX TCP skipped; {hint}"
                    ));
                }
            }
            None => f.skipped.push(format!(
                "nginx: not found on PATH, NGINX pair skipped; {hint}"
            )),
        }
        f
    }

    /// The pairs' columns available here, direct first.
    pub fn columns(&self) -> Vec<Column> {
        let mut v = vec![Column::Direct, Column::Weft];
        if self.weft_baseline.is_some() {
            v.push(Column::WeftBaseline);
        }
        if self.haproxy.is_some() {
            v.push(Column::Haproxy);
        }
        if self.nginx.is_some() {
            v.push(Column::Nginx);
        }
        v
    }

    /// Whether `col` can carry `w` here (NGINX TCP needs the stream module).
    pub fn supports(&self, col: Column, w: Workload) -> bool {
        match col {
            Column::Direct | Column::Weft | Column::WeftBaseline => true,
            Column::Haproxy => self.haproxy.is_some(),
            Column::Nginx => self.nginx.is_some() && (w != Workload::Tcp || self.nginx_stream),
        }
    }
}

/// Writes `client.pem` and `app.pem` (certificate then key, as HAProxy's
/// `crt` wants them) next to the certificates [`mesh::write_certs`] wrote.
pub fn write_combined_pems(dir: &Path) -> anyhow::Result<()> {
    for stem in ["client", "app"] {
        let cert = std::fs::read_to_string(dir.join(format!("{stem}.crt")))?;
        let key = std::fs::read_to_string(dir.join(format!("{stem}.key")))?;
        std::fs::write(dir.join(format!("{stem}.pem")), cert + &key)?;
    }
    Ok(())
}

/// A running pair of proxies (A beside the client, B beside the app).
#[derive(Debug)]
pub struct Pair {
    /// Which proxy.
    pub column: Column,
    /// Proxy A.
    pub a: ChildGuard,
    /// Proxy B.
    pub b: ChildGuard,
    /// Where the client connects (A's plain listener).
    pub entry: SocketAddr,
    /// B's mutual-TLS listener.
    pub tls: SocketAddr,
}

impl Pair {
    /// The proxies' PIDs: A, B.
    pub fn pids(&self) -> [u32; 2] {
        [self.a.pid(), self.b.pid()]
    }

    /// Fails if either proxy has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.a.check_alive()?;
        self.b.check_alive()
    }

    /// Writes the configs of `col`'s pair for workload `w` in front of `app`
    /// into `dir`, starts both proxies pinned to `core` and waits (bounded)
    /// until a request, call or echo goes through.
    // Long: one match arm per proxy (its config files and command line), then the common start and wait.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        col: Column,
        w: Workload,
        app: SocketAddr,
        dir: &Path,
        bins: &Binaries,
        found: &PeersFound,
        core: usize,
        sizing: Sizing,
    ) -> anyhow::Result<Self> {
        let ports = PairPorts::free()?;
        let stem = |side: &str| format!("peers-{}-{}-{side}", col.as_str(), w.as_str());
        let (a_cmd, b_cmd, _a_file, _b_file) = match col {
            Column::Direct => bail!("direct has no pair"),
            Column::Weft | Column::WeftBaseline => {
                let proxy = match col {
                    Column::WeftBaseline => found
                        .weft_baseline
                        .as_ref()
                        .context("no --baseline-proxy")?,
                    _ => &bins.proxy,
                };
                let (a_file, b_file) =
                    (dir.join(stem("a") + ".yaml"), dir.join(stem("b") + ".yaml"));
                mesh::write_config(&a_file, &weft_client_cfg(w, ports))?;
                mesh::write_config(&b_file, &weft_server_cfg(w, ports, app))?;
                mesh::check_config(bins, &a_file)?;
                mesh::check_config(bins, &b_file)?;
                let mut a = mesh::pinned(core, proxy);
                a.arg("--config").arg(&a_file);
                let mut b = mesh::pinned(core, proxy);
                b.arg("--config").arg(&b_file);
                (a, b, a_file, b_file)
            }
            Column::Haproxy => {
                let bin = found.haproxy.as_ref().context("haproxy not found")?;
                let (a_file, b_file) = (dir.join(stem("a") + ".cfg"), dir.join(stem("b") + ".cfg"));
                std::fs::write(&a_file, haproxy_client_cfg(w, ports, dir, sizing))?;
                std::fs::write(&b_file, haproxy_server_cfg(w, ports, app, dir, sizing))?;
                let cmd = |f: &Path| {
                    let mut c = mesh::pinned(core, bin);
                    // -db: foreground, no daemon; one process (nbthread 1).
                    c.arg("-db").arg("-f").arg(f);
                    c
                };
                (cmd(&a_file), cmd(&b_file), a_file, b_file)
            }
            Column::Nginx => {
                let bin = found.nginx.as_ref().context("nginx not found")?;
                let (a_file, b_file) =
                    (dir.join(stem("a") + ".conf"), dir.join(stem("b") + ".conf"));
                for side in ["a", "b"] {
                    let t = dir.join(format!("nginx-{side}-tmp"));
                    std::fs::create_dir_all(&t)
                        .with_context(|| format!("creating {}", t.display()))?;
                }
                std::fs::write(&a_file, nginx_client_cfg(w, ports, dir, sizing))?;
                std::fs::write(&b_file, nginx_server_cfg(w, ports, app, dir, sizing))?;
                let cmd = |f: &Path| {
                    let mut c = mesh::pinned(core, bin);
                    // No master: the one process we start is the worker (its
                    // PID is the one we watch and end).
                    c.arg("-e")
                        .arg("stderr")
                        .arg("-p")
                        .arg(dir)
                        .arg("-c")
                        .arg(f)
                        .arg("-g")
                        .arg("daemon off; master_process off;");
                    c
                };
                (cmd(&a_file), cmd(&b_file), a_file, b_file)
            }
        };
        let mut b = ChildGuard::spawn(
            &format!("{} B ({})", col.as_str(), w.as_str()),
            b_cmd,
            &dir.join(stem("b") + ".stderr"),
        )?;
        let mut a = ChildGuard::spawn(
            &format!("{} A ({})", col.as_str(), w.as_str()),
            a_cmd,
            &dir.join(stem("a") + ".stderr"),
        )?;
        if col.is_weft() {
            mesh::wait_ready(&mut b, loopback(ports.weft[2]), "/ready").await?;
            mesh::wait_ready(&mut a, loopback(ports.weft[0]), "/ready").await?;
        }
        let entry = loopback(ports.entry);
        wait_through(&mut a, &mut b, w, entry).await?;
        Ok(Pair {
            column: col,
            a,
            b,
            entry,
            tls: loopback(ports.tls),
        })
    }
}

/// Starts `weft-sample <w>` (one thread, pinned to `core`) on a free port and waits (bounded)
/// until it answers; its address and process.
pub async fn start_app(
    w: Workload,
    core: usize,
    bins: &Binaries,
    dir: &Path,
) -> anyhow::Result<(SocketAddr, ChildGuard)> {
    let addr = loopback(mesh::free_ports(1)?[0]);
    let mut cmd = mesh::pinned(core, &bins.sample);
    cmd.args([
        w.as_str(),
        "--listen",
        &addr.to_string(),
        "--name",
        "app",
        "--threads",
        "1",
    ]);
    let mut child = ChildGuard::spawn(
        &format!("app ({})", w.as_str()),
        cmd,
        &dir.join(format!("peers-app-{}.stderr", w.as_str())),
    )?;
    let deadline = Instant::now() + mesh::READY_TIMEOUT;
    let mut last = String::from("no attempt yet");
    // Bounded in count and by READY_TIMEOUT.
    for _ in 0..(mesh::READY_TIMEOUT.as_millis() / 50 + 1) {
        child.check_alive()?;
        match one_through(w, addr).await {
            Ok(()) => return Ok((addr, child)),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("app ({}) not ready at {addr}: {last}", w.as_str())
}

/// One request (HTTP), call (gRPC) or echo (TCP) through `entry`; HTTP must
/// answer 200.
pub async fn one_through(w: Workload, entry: SocketAddr) -> anyhow::Result<()> {
    match w {
        Workload::Http => {
            let (status, body) =
                tokio::time::timeout(Duration::from_secs(5), mesh::get(entry, "app", "/"))
                    .await
                    .context("timed out")??;
            ensure!(
                status == 200,
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        }
        Workload::Grpc => {
            let mut c = peer_load::grpc_client(entry).await?;
            peer_load::grpc_call(&mut c).await
        }
        Workload::Tcp => peer_load::tcp_echo_once(entry, b"weft-bench peers echo check").await,
    }
}

/// Waits (at most [`mesh::READY_TIMEOUT`]) until [`one_through`] succeeds,
/// failing early if either process exits.
async fn wait_through(
    a: &mut ChildGuard,
    b: &mut ChildGuard,
    w: Workload,
    entry: SocketAddr,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + mesh::READY_TIMEOUT;
    let mut last = String::from("no attempt yet");
    for _ in 0..(mesh::READY_TIMEOUT.as_millis() / 50 + 1) {
        a.check_alive()?;
        b.check_alive()?;
        match one_through(w, entry).await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} / {}: nothing through {entry} within {:?} (last: {last}); stderr of A ({}):\n{}\nB ({}):\n{}",
        a.name(),
        b.name(),
        mesh::READY_TIMEOUT,
        a.stderr_path().display(),
        a.stderr_tail(20),
        b.stderr_path().display(),
        b.stderr_tail(20)
    )
}

/// What a probe handshake against a pair's TLS listener negotiated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Negotiated {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub suite: String,
    /// The ALPN protocol, if any.
    pub alpn: Option<String>,
}

/// A rustls handshake (TLS 1.3 only, default suites, the client's workload
/// certificate, the mesh CA as the only root, server name [`APP_DNS`])
/// against `addr`, offering `alpn`; what was negotiated.
pub async fn probe_tls(dir: &Path, addr: SocketAddr, alpn: &[&str]) -> anyhow::Result<Negotiated> {
    let ca = std::fs::read(dir.join("ca.crt"))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.map_err(|e| anyhow::anyhow!("ca.crt: {e}"))?)?;
    }
    let chain = CertificateDer::pem_file_iter(dir.join("client.crt"))
        .map_err(|e| anyhow::anyhow!("client.crt: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("client.crt: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key"))
        .map_err(|e| anyhow::anyhow!("client.key: {e}"))?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(APP_DNS.to_owned())?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = connector.connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        Ok::<_, anyhow::Error>(Negotiated {
            version: conn
                .protocol_version()
                .map_or_else(|| "?".into(), |v| format!("{v:?}")),
            suite: conn
                .negotiated_cipher_suite()
                .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite())),
            alpn: conn
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .context("TLS probe timed out")?
}
