//! The peer comparison (`weft-bench --peers`): the Weft sidecar pair side by
//! side with an HAProxy pair and an NGINX pair set up as sidecars with the
//! same hops (plain in on loopback, mutual TLS 1.3 between the two proxies
//! verifying the peer against the mesh CA, plain to the app), and direct.
//!
//! This module holds the peers' configs (pure functions, unit-tested), the
//! running pairs ([`Pair`]), a probe handshake that reads the negotiated TLS
//! suite, and the results and their report ([`PeersReport`]).

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

use crate::load::{RateResult, SaturationResult};
use crate::mesh::{
    self, free_ports, loopback, Binaries, ChildGuard, SidecarPorts, APP_ID, CLIENT_ID,
};
use crate::peer_load::{self, TcpResult};
use crate::report::{fmt_num, fmt_opt};
use crate::stats::{median, median_opt, ratio};

/// The only TLS 1.3 suite the peers are given: the one two rustls endpoints
/// (the Weft pair) negotiate by default, so every pair encrypts alike.
pub const TLS13_SUITE: &str = "TLS_AES_256_GCM_SHA384";

/// The app side's DNS name in its workload certificate (the name the peers
/// verify; Weft verifies the SPIFFE URI).
pub const APP_DNS: &str = "app.default.serviceaccount.identity.weft.local";

/// Where Debian's dynamic NGINX stream module lives (package `libnginx-mod-stream`).
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// HTTP/1.1 keep-alive `GET /` against `weft-sample http`.
    Http,
    /// gRPC unary calls over HTTP/2 against `weft-sample grpc`.
    Grpc,
    /// Bulk TCP through `weft-sample tcp` (an echo).
    Tcp,
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 3] = [Workload::Http, Workload::Grpc, Workload::Tcp];

    /// Its name in messages and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Http => "http",
            Workload::Grpc => "grpc",
            Workload::Tcp => "tcp",
        }
    }
}

/// A column of the comparison: direct or one of the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    /// Client → app.
    Direct,
    /// The Weft sidecar pair.
    Weft,
    /// A second Weft pair running another `weft-proxy` build (`--baseline-proxy`), e.g. the
    /// plain release build beside the optimised one (PGO + BOLT), so one run shows what the
    /// build gained.
    WeftBaseline,
    /// An HAProxy pair.
    Haproxy,
    /// An NGINX pair.
    Nginx,
}

impl Column {
    /// Every column.
    pub const ALL: [Column; 5] = [
        Column::Direct,
        Column::Weft,
        Column::WeftBaseline,
        Column::Haproxy,
        Column::Nginx,
    ];

    /// Its name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Column::Direct => "direct",
            Column::Weft => "weft",
            Column::WeftBaseline => "weft-baseline",
            Column::Haproxy => "haproxy",
            Column::Nginx => "nginx",
        }
    }

    /// Whether this is one of the other proxies (not direct, not Weft).
    pub fn is_peer(self) -> bool {
        matches!(self, Column::Haproxy | Column::Nginx)
    }

    /// Whether this is a Weft pair (the measured build or the baseline build).
    pub fn is_weft(self) -> bool {
        matches!(self, Column::Weft | Column::WeftBaseline)
    }

    /// `cols` in the order of run `run` (from 1): a balanced Latin square (Williams design).
    /// Over as many runs as columns each column runs once in each position, and over twice as
    /// many each column follows each other column equally often, so whatever one leaves behind
    /// (caches, page cache, the CPU's clock) does not always fall on the same neighbour.
    pub fn order(cols: &[Column], run: usize) -> Vec<Column> {
        let n = cols.len();
        if n == 0 {
            return Vec::new();
        }
        // First row 0, 1, n-1, 2, n-2, ...; row r adds r to each. With an odd count the rows
        // alone give each neighbour pair one way only, so the next n runs take them reversed.
        let r = run.saturating_sub(1) % (2 * n);
        let mut v: Vec<Column> = (0..n)
            .map(|j| {
                let b = if j % 2 == 1 {
                    j.div_ceil(2)
                } else {
                    (n - j / 2) % n
                };
                cols[(b + r) % n]
            })
            .collect();
        if r >= n && n % 2 == 1 {
            v.reverse();
        }
        v
    }
}

/// Ports of one pair: where the client connects, the TLS listener between
/// the proxies, and the rest Weft needs (admin, unused listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PairPorts {
    /// Proxy A's plain listener (the client's target).
    pub entry: u16,
    /// Proxy B's mutual-TLS listener.
    pub tls: u16,
    /// Weft only: A's admin, A's (unused) inbound, B's admin, B's (unused)
    /// outbound, A's (absent) app.
    pub weft: [u16; 5],
}

impl PairPorts {
    /// Fresh free ports.
    pub fn free() -> anyhow::Result<Self> {
        let p = free_ports(7)?;
        Ok(PairPorts {
            entry: p[0],
            tls: p[1],
            weft: [p[2], p[3], p[4], p[5], p[6]],
        })
    }
}

/// Sizes the peers' configs follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizing {
    /// HAProxy `maxconn` (what the open-files limit allows: two sockets per
    /// connection plus slack).
    pub maxconn: u64,
    /// NGINX upstream `keepalive` (idle connections kept per upstream): at
    /// least the client connection count.
    pub upstream_keepalive: u64,
    /// NGINX `worker_connections` and `worker_rlimit_nofile`.
    pub worker_connections: u64,
}

impl Sizing {
    /// From the open-files soft limit and the most client connections any
    /// workload opens.
    pub fn new(nofile: u64, client_connections: u64) -> Self {
        let usable = nofile.saturating_sub(64);
        Sizing {
            maxconn: (usable / 2).clamp(256, 100_000),
            upstream_keepalive: client_connections.max(16) * 2,
            worker_connections: (usable / 2).clamp(256, 100_000),
        }
    }
}

/// HAProxy's `global` and `defaults` sections.
fn haproxy_head(w: Workload, s: Sizing) -> String {
    let mode = if w == Workload::Tcp { "tcp" } else { "http" };
    format!(
        "global\n\
         \x20   nbthread 1\n\
         \x20   maxconn {maxconn}\n\
         \x20   ssl-default-bind-ciphersuites {TLS13_SUITE}\n\
         \x20   ssl-default-bind-options ssl-min-ver TLSv1.3\n\
         \x20   ssl-default-server-ciphersuites {TLS13_SUITE}\n\
         \x20   ssl-default-server-options ssl-min-ver TLSv1.3\n\
         defaults\n\
         \x20   mode {mode}\n\
         \x20   maxconn {maxconn}\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n{keepalive}",
        maxconn = s.maxconn,
        keepalive = if w == Workload::Tcp {
            String::new()
        } else {
            "    timeout http-keep-alive 60s\n    option http-keep-alive\n".into()
        },
    )
}

/// Config of HAProxy A (the client side): plain in on `ports.entry`, mutual
/// TLS to B; certificates in `dir` (`client.pem` = certificate + key).
pub fn haproxy_client_cfg(w: Workload, ports: PairPorts, dir: &Path, s: Sizing) -> String {
    let d = dir.display();
    let (bind_extra, server_extra, reuse) = match w {
        Workload::Http => ("", " alpn http/1.1", "    http-reuse always\n"),
        Workload::Grpc => (" proto h2", " alpn h2", "    http-reuse always\n"),
        Workload::Tcp => ("", "", ""),
    };
    haproxy_head(w, s)
        + &format!(
            "frontend out\n\
             \x20   bind 127.0.0.1:{entry}{bind_extra}\n\
             \x20   default_backend peer\n\
             backend peer\n\
             {reuse}\
             \x20   server b 127.0.0.1:{tls} ssl crt {d}/client.pem ca-file {d}/ca.crt verify required \
             verifyhost {APP_DNS} sni str({APP_DNS}){server_extra}\n",
            entry = ports.entry,
            tls = ports.tls,
        )
}

/// Config of HAProxy B (the app side): mutual TLS in on `ports.tls`
/// (client certificate required, verified against the mesh CA), plain to
/// the app.
pub fn haproxy_server_cfg(
    w: Workload,
    ports: PairPorts,
    app: SocketAddr,
    dir: &Path,
    s: Sizing,
) -> String {
    let d = dir.display();
    let (bind_extra, server_extra, reuse) = match w {
        Workload::Http => (" alpn http/1.1", "", "    http-reuse always\n"),
        Workload::Grpc => (" alpn h2", " proto h2", "    http-reuse always\n"),
        Workload::Tcp => ("", "", ""),
    };
    haproxy_head(w, s)
        + &format!(
            "frontend in\n\
             \x20   bind 127.0.0.1:{tls} ssl crt {d}/app.pem ca-file {d}/ca.crt verify required{bind_extra}\n\
             \x20   default_backend app\n\
             backend app\n\
             {reuse}\
             \x20   server app {app}{server_extra}\n",
            tls = ports.tls,
        )
}

/// NGINX's main context: one worker, no daemon, logs to stderr, and (for
/// TCP) the stream module.
fn nginx_head(w: Workload, side: &str, dir: &Path, s: Sizing) -> String {
    let load = if w == Workload::Tcp && Path::new(NGINX_STREAM_MODULE).is_file() {
        format!("load_module {NGINX_STREAM_MODULE};\n")
    } else {
        String::new()
    };
    format!(
        "{load}worker_processes 1;\n\
         worker_rlimit_nofile {wc2};\n\
         pid {d}/nginx-{side}.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections {wc}; }}\n",
        d = dir.display(),
        wc = s.worker_connections,
        wc2 = s.worker_connections * 2,
    )
}

/// The `http` block's settings common to both NGINX sides: no access log,
/// temp files in `dir`, long keep-alive toward the client.
fn nginx_http_common(side: &str, dir: &Path) -> String {
    let t = dir.join(format!("nginx-{side}-tmp"));
    let t = t.display();
    format!(
        "    access_log off;\n\
         \x20   client_body_temp_path {t}/body;\n\
         \x20   proxy_temp_path {t}/proxy;\n\
         \x20   fastcgi_temp_path {t}/fastcgi;\n\
         \x20   uwsgi_temp_path {t}/uwsgi;\n\
         \x20   scgi_temp_path {t}/scgi;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   keepalive_timeout 60s;\n"
    )
}

/// The directives that make an NGINX upstream hop mutual TLS 1.3 with the
/// mesh CA; `prefix` is `proxy` or `grpc`.
fn nginx_upstream_tls(prefix: &str, dir: &Path, indent: &str) -> String {
    let d = dir.display();
    [
        format!("{prefix}_ssl_certificate {d}/client.crt;"),
        format!("{prefix}_ssl_certificate_key {d}/client.key;"),
        format!("{prefix}_ssl_trusted_certificate {d}/ca.crt;"),
        format!("{prefix}_ssl_verify on;"),
        format!("{prefix}_ssl_verify_depth 2;"),
        format!("{prefix}_ssl_name {APP_DNS};"),
        format!("{prefix}_ssl_server_name on;"),
        format!("{prefix}_ssl_protocols TLSv1.3;"),
        format!("{prefix}_ssl_conf_command Ciphersuites {TLS13_SUITE};"),
        format!("{prefix}_ssl_session_reuse on;"),
    ]
    .iter()
    .map(|l| format!("{indent}{l}\n"))
    .collect()
}

/// The directives of an NGINX TLS listener that requires a client
/// certificate from the mesh CA.
fn nginx_listener_tls(dir: &Path, indent: &str) -> String {
    let d = dir.display();
    [
        format!("ssl_certificate {d}/app.crt;"),
        format!("ssl_certificate_key {d}/app.key;"),
        format!("ssl_client_certificate {d}/ca.crt;"),
        "ssl_verify_client on;".into(),
        "ssl_verify_depth 2;".into(),
        "ssl_protocols TLSv1.3;".into(),
        format!("ssl_conf_command Ciphersuites {TLS13_SUITE};"),
    ]
    .iter()
    .map(|l| format!("{indent}{l}\n"))
    .collect()
}

/// Config of NGINX A (the client side).
pub fn nginx_client_cfg(w: Workload, ports: PairPorts, dir: &Path, s: Sizing) -> String {
    let head = nginx_head(w, "a", dir, s);
    let (entry, tls, ka) = (ports.entry, ports.tls, s.upstream_keepalive);
    match w {
        Workload::Http | Workload::Grpc => {
            let (listen, pass) = if w == Workload::Http {
                (
                    format!("listen 127.0.0.1:{entry};"),
                    "            proxy_pass https://peer;\n\
                     \x20           proxy_http_version 1.1;\n\
                     \x20           proxy_set_header Connection \"\";\n\
                     \x20           proxy_set_header Host $host;\n"
                        .to_owned()
                        + &nginx_upstream_tls("proxy", dir, "            "),
                )
            } else {
                (
                    format!("listen 127.0.0.1:{entry} http2;"),
                    "            grpc_pass grpcs://peer;\n".to_owned()
                        + &nginx_upstream_tls("grpc", dir, "            "),
                )
            };
            format!(
                "{head}http {{\n{common}\
                 \x20   upstream peer {{\n\
                 \x20       server 127.0.0.1:{tls};\n\
                 \x20       keepalive {ka};\n\
                 \x20       keepalive_requests 1000000;\n\
                 \x20       keepalive_timeout 60s;\n\
                 \x20   }}\n\
                 \x20   server {{\n\
                 \x20       {listen}\n\
                 \x20       location / {{\n{pass}\
                 \x20       }}\n\
                 \x20   }}\n\
                 }}\n",
                common = nginx_http_common("a", dir),
            )
        }
        Workload::Tcp => format!(
            "{head}stream {{\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{entry};\n\
             \x20       proxy_pass 127.0.0.1:{tls};\n\
             \x20       proxy_ssl on;\n\
             \x20       proxy_half_close on;\n{tls_lines}\
             \x20   }}\n\
             }}\n",
            tls_lines = nginx_upstream_tls("proxy", dir, "        ")
                .replace("        proxy_ssl_session_reuse on;\n", ""),
        ),
    }
}

/// Config of NGINX B (the app side).
pub fn nginx_server_cfg(
    w: Workload,
    ports: PairPorts,
    app: SocketAddr,
    dir: &Path,
    s: Sizing,
) -> String {
    let head = nginx_head(w, "b", dir, s);
    let (tls, ka) = (ports.tls, s.upstream_keepalive);
    let listener = nginx_listener_tls(dir, "        ");
    match w {
        Workload::Http | Workload::Grpc => {
            let (listen, pass) = if w == Workload::Http {
                (
                    format!("listen 127.0.0.1:{tls} ssl;"),
                    "            proxy_pass http://app;\n\
                     \x20           proxy_http_version 1.1;\n\
                     \x20           proxy_set_header Connection \"\";\n\
                     \x20           proxy_set_header Host $host;\n",
                )
            } else {
                (
                    format!("listen 127.0.0.1:{tls} ssl http2;"),
                    "            grpc_pass grpc://app;\n",
                )
            };
            format!(
                "{head}http {{\n{common}\
                 \x20   upstream app {{\n\
                 \x20       server {app};\n\
                 \x20       keepalive {ka};\n\
                 \x20       keepalive_requests 1000000;\n\
                 \x20       keepalive_timeout 60s;\n\
                 \x20   }}\n\
                 \x20   server {{\n\
                 \x20       {listen}\n{listener}\
                 \x20       location / {{\n{pass}\
                 \x20       }}\n\
                 \x20   }}\n\
                 }}\n",
                common = nginx_http_common("b", dir),
            )
        }
        Workload::Tcp => format!(
            "{head}stream {{\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{tls} ssl;\n{listener}\
             \x20       proxy_pass {app};\n\
             \x20       proxy_half_close on;\n\
             \x20   }}\n\
             }}\n"
        ),
    }
}

/// Config of Weft sidecar B (the app's) for workload `w`.
pub fn weft_server_cfg(w: Workload, ports: PairPorts, app: SocketAddr) -> String {
    let protocol = w.as_str();
    format!(
        "service: {{name: app, identity: \"{APP_ID}\", app: \"{app}\", protocol: {protocol}}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: app.crt, key: app.key, trust_bundle: ca.crt}}\n\
         workers: 1\n",
        o = ports.weft[3],
        i = ports.tls,
        a = ports.weft[2],
    )
}

/// Config of Weft sidecar A (the client's) for workload `w`: HTTP on its
/// outbound listener (`Host: app`), gRPC and TCP on a port of the service's
/// own (`ports.entry`).
pub fn weft_client_cfg(w: Workload, ports: PairPorts) -> String {
    let sp = SidecarPorts {
        outbound: if w == Workload::Http {
            ports.entry
        } else {
            ports.weft[4]
        },
        inbound: ports.weft[1],
        admin: ports.weft[0],
    };
    if w == Workload::Http {
        return mesh::client_sidecar_yaml(ports.weft[4], sp, ports.tls);
    }
    format!(
        "service: {{name: client, identity: \"{CLIENT_ID}\", app: \"127.0.0.1:{unused}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: client.crt, key: client.key, trust_bundle: ca.crt}}\n\
         workers: 1\n\
         services:\n\
         \x20 - name: app\n\
         \x20   identity: \"{APP_ID}\"\n\
         \x20   protocol: {protocol}\n\
         \x20   port: {entry}\n\
         \x20   endpoints: [{{address: \"127.0.0.1:{tls}\"}}]\n",
        unused = ports.weft[3],
        o = sp.outbound,
        i = sp.inbound,
        a = sp.admin,
        protocol = w.as_str(),
        entry = ports.entry,
        tls = ports.tls,
    )
}

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
                std::fs::write(&a_file, weft_client_cfg(w, ports))?;
                std::fs::write(&b_file, weft_server_cfg(w, ports, app))?;
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

/// Measurements of one column in one run of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRun {
    /// Run number (from 1).
    pub run: usize,
    /// The workload.
    pub workload: Workload,
    /// Direct or which pair.
    pub column: Column,
    /// The proxies' RSS (KiB) after start, before traffic: A, B.
    pub idle_rss_kib: Option<[u64; 2]>,
    /// HTTP and gRPC: saturation (closed loop). Watched: app, A, B.
    pub saturation: Option<SaturationResult>,
    /// HTTP: latency at a fixed rate (open loop).
    pub latency: Option<RateResult>,
    /// TCP: throughput.
    pub tcp: Option<TcpResult>,
}

impl PeerRun {
    /// req/s (HTTP, gRPC) or MB/s (TCP).
    pub fn throughput(&self) -> Option<f64> {
        match self.workload {
            Workload::Tcp => self.tcp.as_ref().map(|t| t.mb_per_s),
            _ => self.saturation.as_ref().map(|s| s.rps),
        }
    }

    /// CPU-seconds of both proxies per 100k requests in the saturation window.
    pub fn pair_cpu_per_100k(&self) -> Option<f64> {
        let s = self.saturation.as_ref()?;
        if self.column == Column::Direct || s.requests == 0 || s.cpu_seconds.len() < 3 {
            return None;
        }
        Some((s.cpu_seconds[1] + s.cpu_seconds[2]) / s.requests as f64 * 100_000.0)
    }

    /// CPU-seconds of both proxies per GB echoed (TCP).
    pub fn pair_cpu_per_gb(&self) -> Option<f64> {
        let t = self.tcp.as_ref()?;
        if self.column == Column::Direct || t.bytes == 0 || t.cpu_seconds.len() < 3 {
            return None;
        }
        Some((t.cpu_seconds[1] + t.cpu_seconds[2]) / t.bytes as f64 * 1e9)
    }

    /// Peak RSS (KiB) of A and B under load.
    pub fn load_rss_kib(&self) -> Option<[u64; 2]> {
        let peaks = match (&self.saturation, &self.tcp) {
            (Some(s), _) => &s.peak_rss_kib,
            (None, Some(t)) => &t.peak_rss_kib,
            _ => return None,
        };
        if self.column == Column::Direct || peaks.len() < 3 {
            return None;
        }
        Some([peaks[1], peaks[2]])
    }

    /// Errors over the run's loads.
    pub fn errors(&self) -> u64 {
        self.saturation.as_ref().map_or(0, |s| s.errors)
            + self.latency.as_ref().map_or(0, |l| l.errors + l.missed)
            + self.tcp.as_ref().map_or(0, |t| t.errors)
    }

    /// CPU seconds other processes on the machine used in this run's windows.
    pub fn other_work_s(&self) -> f64 {
        self.saturation
            .as_ref()
            .map_or(0.0, |s| s.others_cpu_seconds)
            + self.latency.as_ref().map_or(0.0, |l| l.others_cpu_seconds)
            + self.tcp.as_ref().map_or(0.0, |t| t.others_cpu_seconds)
    }
}

/// Medians of one column and workload over the runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerSummary {
    /// req/s (HTTP, gRPC) or MB/s (TCP).
    pub throughput: Option<f64>,
    /// × direct.
    pub vs_direct: Option<f64>,
    /// × the best peer (HAProxy / NGINX) in this workload.
    pub vs_best_peer: Option<f64>,
    /// Paired: in each run, this column's throughput × the best peer's in that same run;
    /// median, lowest, highest over the runs. Columns of one run are measured minutes apart at
    /// most, so a slow drift in the machine's speed largely cancels out of each ratio.
    pub per_run_vs_best_peer: Option<[f64; 3]>,
    /// HTTP at a fixed rate: p50, p99, p99.9 (µs).
    pub p50_us: Option<f64>,
    /// p99 (µs).
    pub p99_us: Option<f64>,
    /// p99.9 (µs).
    pub p999_us: Option<f64>,
    /// CPU-seconds of both proxies per 100k requests (HTTP, gRPC).
    pub pair_cpu_per_100k: Option<f64>,
    /// CPU-seconds of both proxies per GB echoed (TCP).
    pub pair_cpu_per_gb: Option<f64>,
    /// RSS idle, MiB: A, B.
    pub idle_rss_mib: Option<[f64; 2]>,
    /// Peak RSS under load, MiB: A, B.
    pub load_rss_mib: Option<[f64; 2]>,
    /// Errors over all runs.
    pub errors: u64,
    /// Runs.
    pub runs: usize,
}

/// The comparison's settings.
#[derive(Debug, Clone, Serialize)]
pub struct PeersConfig {
    /// Repetitions.
    pub runs: usize,
    /// Measured window of each load, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// HTTP saturation connections.
    pub connections: usize,
    /// Fixed rate of the latency runs.
    pub rate: f64,
    /// Its connections.
    pub latency_connections: usize,
    /// gRPC: HTTP/2 connections and calls in flight.
    pub grpc_channels: usize,
    /// Calls in flight.
    pub grpc_concurrency: usize,
    /// TCP connections.
    pub tcp_connections: usize,
    /// The peers' sizing.
    pub sizing: Sizing,
    /// CPUs: load generator, server.
    pub loadgen_core: usize,
    /// The apps' and proxies' CPU.
    pub server_core: usize,
}

/// The peer comparison's results.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    /// Settings.
    pub config: PeersConfig,
    /// What was found, versions, what was skipped.
    pub found: PeersFound,
    /// Per pair, what a rustls probe handshake negotiated with its TLS listener (HTTP workload).
    pub negotiated: BTreeMap<String, Negotiated>,
    /// The peers' config files of the HTTP workload (as run, for the record).
    pub configs: BTreeMap<String, String>,
    /// Medians: workload → column → summary.
    pub summary: BTreeMap<String, BTreeMap<String, PeerSummary>>,
    /// Issue 6's targets.
    pub targets: Vec<crate::report::TargetCheck>,
    /// Every run.
    pub runs: Vec<PeerRun>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Medians of `runs` of one column and workload.
pub fn summarize(runs: &[&PeerRun]) -> PeerSummary {
    let lat = |f: fn(&crate::stats::Percentiles) -> f64| {
        median_opt(
            runs.iter()
                .map(|r| r.latency.as_ref().and_then(|l| l.latency.as_ref()).map(f)),
        )
    };
    let rss = |f: fn(&PeerRun) -> Option<[u64; 2]>| {
        let a = median_opt(runs.iter().map(|r| f(r).map(|x| mib(x[0]))));
        let b = median_opt(runs.iter().map(|r| f(r).map(|x| mib(x[1]))));
        a.zip(b).map(|(a, b)| [a, b])
    };
    PeerSummary {
        throughput: median_opt(runs.iter().map(|r| r.throughput())),
        p50_us: lat(|p| p.p50_us),
        p99_us: lat(|p| p.p99_us),
        p999_us: lat(|p| p.p999_us),
        pair_cpu_per_100k: median_opt(runs.iter().map(|r| r.pair_cpu_per_100k())),
        pair_cpu_per_gb: median_opt(runs.iter().map(|r| r.pair_cpu_per_gb())),
        idle_rss_mib: rss(|r| r.idle_rss_kib),
        load_rss_mib: rss(PeerRun::load_rss_kib),
        errors: runs.iter().map(|r| r.errors()).sum(),
        runs: runs.len(),
        ..Default::default()
    }
}

impl PeersReport {
    /// Medians, ratios and target checks from every run.
    pub fn new(
        config: PeersConfig,
        found: PeersFound,
        negotiated: BTreeMap<String, Negotiated>,
        configs: BTreeMap<String, String>,
        runs: Vec<PeerRun>,
    ) -> Self {
        let mut summary = BTreeMap::new();
        for w in Workload::ALL {
            let mut cols: BTreeMap<Column, PeerSummary> = BTreeMap::new();
            for c in Column::ALL {
                let rs: Vec<&PeerRun> = runs
                    .iter()
                    .filter(|r| r.workload == w && r.column == c)
                    .collect();
                if !rs.is_empty() {
                    cols.insert(c, summarize(&rs));
                }
            }
            let direct = cols.get(&Column::Direct).and_then(|s| s.throughput);
            let best = best_peer(&cols, |s| s.throughput, true);
            for (c, s) in cols.iter_mut() {
                s.vs_direct = ratio(s.throughput, direct);
                s.vs_best_peer = ratio(s.throughput, best);
                s.per_run_vs_best_peer = per_run_vs_best_peer(&runs, w, *c);
            }
            if !cols.is_empty() {
                summary.insert(
                    w.as_str().to_owned(),
                    cols.into_iter()
                        .map(|(c, s)| (c.as_str().to_owned(), s))
                        .collect(),
                );
            }
        }
        let targets = targets(&summary);
        PeersReport {
            config,
            found,
            negotiated,
            configs,
            summary,
            targets,
            runs,
        }
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut md =
            String::from("# weft-bench --peers: Weft vs. HAProxy vs. NGINX sidecar pairs\n\n");
        md += &format!(
            "Each pair: client → proxy A (plain, loopback) → mutual TLS 1.3 (client certificate both ways, \
             verified against the mesh CA) → proxy B → app; one worker each; apps and proxies on CPU {}, \
             load generator on CPU {}. {} run(s), columns interleaved (order per run from a balanced Latin square), medians and paired ratios; \
             {} s measured after {} s warm-up. HTTP: {} keep-alive connections (saturation), open loop at {} req/s \
             over {} connections (latency from the scheduled send time). gRPC: unary Echo, {} calls in flight \
             over {} HTTP/2 connections. TCP: {} connections writing 64 KiB chunks through an echo, MB/s echoed back.\n\n",
            c.server_core,
            c.loadgen_core,
            c.runs,
            fmt_num(c.duration_s, 1),
            fmt_num(c.warmup_s, 1),
            c.connections,
            fmt_num(c.rate, 0),
            c.latency_connections,
            c.grpc_concurrency,
            c.grpc_channels,
            c.tcp_connections,
        );
        for (k, v) in &self.found.versions {
            md += &format!("- {k}: {v}\n");
        }
        for s in &self.found.skipped {
            md += &format!("- **skipped**: {s}\n");
        }
        for (k, n) in &self.negotiated {
            md += &format!(
                "- {k}: probe handshake with B's TLS listener negotiated {} {} (ALPN {})\n",
                n.version,
                n.suite,
                n.alpn.as_deref().unwrap_or("none")
            );
        }
        md += "\n";
        let get = |w: Workload, col: Column| {
            self.summary
                .get(w.as_str())
                .and_then(|m| m.get(col.as_str()))
        };
        let cols: Vec<Column> = Column::ALL
            .into_iter()
            .filter(|&col| Workload::ALL.iter().any(|&w| get(w, col).is_some()))
            .collect();
        md += "## Throughput\n\n| | HTTP/1.1 req/s | × direct | × best peer | gRPC req/s | × direct | × best peer | TCP MB/s | × direct | × best peer |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for &col in &cols {
            md += &format!("| {} ", col.as_str());
            for w in Workload::ALL {
                match get(w, col) {
                    Some(s) => {
                        md += &format!(
                            "| {} | {} | {} ",
                            fmt_opt(s.throughput, if w == Workload::Tcp { 1 } else { 0 }),
                            fmt_opt(s.vs_direct, 2),
                            fmt_opt(s.vs_best_peer, 2)
                        )
                    }
                    None => md += "| not run | | ",
                }
            }
            md += "|\n";
        }
        let paired: Vec<String> = Workload::ALL
            .into_iter()
            .flat_map(|w| cols.iter().map(move |&c| (w, c)))
            .filter(|(_, c)| c.is_weft())
            .filter_map(|(w, c)| {
                let [m, lo, hi] = get(w, c)?.per_run_vs_best_peer?;
                Some(format!(
                    "{} {}: {} ({}–{})",
                    c.as_str(),
                    w.as_str(),
                    fmt_num(m, 2),
                    fmt_num(lo, 2),
                    fmt_num(hi, 2)
                ))
            })
            .collect();
        if !paired.is_empty() {
            md += &format!(
                "\nPaired, × the best peer of the same run (median, lowest–highest over the runs): {}.\n",
                paired.join("; ")
            );
        }
        md += "\n## Latency, CPU and memory\n\n| | HTTP p50 µs | p99 µs | p99.9 µs | pair CPU-s / 100k HTTP | × best peer | pair CPU-s / 100k gRPC | × best peer | pair CPU-s / GB TCP | RSS idle A / B MiB | RSS under HTTP load A / B MiB | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        let best_cpu = |w: Workload| {
            self.summary.get(w.as_str()).and_then(|m| {
                m.iter()
                    .filter(|(k, _)| *k == "haproxy" || *k == "nginx")
                    .filter_map(|(_, s)| s.pair_cpu_per_100k)
                    .min_by(f64::total_cmp)
            })
        };
        let rss = |x: Option<[f64; 2]>| {
            x.map_or_else(
                || "–".to_owned(),
                |[a, b]| format!("{} / {}", fmt_num(a, 1), fmt_num(b, 1)),
            )
        };
        for &col in &cols {
            let h = get(Workload::Http, col);
            let g = get(Workload::Grpc, col);
            let t = get(Workload::Tcp, col);
            let errors: u64 = [h, g, t].iter().flatten().map(|s| s.errors).sum();
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                col.as_str(),
                fmt_opt(h.and_then(|s| s.p50_us), 0),
                fmt_opt(h.and_then(|s| s.p99_us), 0),
                fmt_opt(h.and_then(|s| s.p999_us), 0),
                fmt_opt(h.and_then(|s| s.pair_cpu_per_100k), 3),
                fmt_opt(
                    ratio(
                        h.and_then(|s| s.pair_cpu_per_100k),
                        best_cpu(Workload::Http)
                    ),
                    2
                ),
                fmt_opt(g.and_then(|s| s.pair_cpu_per_100k), 3),
                fmt_opt(
                    ratio(
                        g.and_then(|s| s.pair_cpu_per_100k),
                        best_cpu(Workload::Grpc)
                    ),
                    2
                ),
                fmt_opt(t.and_then(|s| s.pair_cpu_per_gb), 2),
                rss(h.and_then(|s| s.idle_rss_mib)),
                rss(h.and_then(|s| s.load_rss_mib)),
                errors,
            );
        }
        md += "\nCPU per 100k requests / per GB: both proxies' utime + stime from /proc over the saturation \
               window. RSS: VmRSS after start (idle) and the peak sampled every 100 ms under load.\n\n";
        md += "## Issue 6 targets (benchmarks, not tests)\n\n| what | target | measured | met |\n|---|---|---:|---|\n";
        for t in &self.targets {
            md += &format!(
                "| {} | {} | {} | {} |\n",
                t.what,
                t.target,
                fmt_opt(t.measured, 2),
                if t.measured.is_none() {
                    "n/a"
                } else if t.met {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        let other: Vec<String> = self
            .runs
            .iter()
            .map(|r| r.other_work_s())
            .filter(|&s| s > 0.5)
            .map(|s| fmt_num(s, 1))
            .collect();
        if !other.is_empty() {
            md += &format!(
                "\nOther processes on the machine used CPU during {} run(s) (CPU-s per run: {}): the numbers \
                 are only meaningful on an otherwise idle machine.\n",
                other.len(),
                other.join(", ")
            );
        }
        md += "\n## Per run\n\n| run | workload | column | throughput | p50 µs | p99 µs | pair CPU-s / 100k | errors | other work CPU-s |\n|---:|---|---|---:|---:|---:|---:|---:|---:|\n";
        for r in &self.runs {
            let p = r.latency.as_ref().and_then(|l| l.latency);
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.run,
                r.workload.as_str(),
                r.column.as_str(),
                fmt_opt(r.throughput(), 1),
                fmt_opt(p.map(|p| p.p50_us), 0),
                fmt_opt(p.map(|p| p.p99_us), 0),
                fmt_opt(r.pair_cpu_per_100k(), 3),
                r.errors(),
                fmt_num(r.other_work_s(), 2),
            );
        }
        md
    }
}

/// `col`'s throughput in each run × the best peer's in the same run: median, lowest, highest.
fn per_run_vs_best_peer(runs: &[PeerRun], w: Workload, col: Column) -> Option<[f64; 3]> {
    let mut ratios: Vec<f64> = runs
        .iter()
        .filter(|r| r.workload == w && r.column == col)
        .filter_map(|r| {
            let best = runs
                .iter()
                .filter(|p| p.run == r.run && p.workload == w && p.column.is_peer())
                .filter_map(PeerRun::throughput)
                .max_by(f64::total_cmp);
            ratio(r.throughput(), best)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let (lo, hi) = (*ratios.first()?, *ratios.last()?);
    Some([median(&ratios)?, lo, hi])
}

/// The best peer's value of `f` in `cols` (largest if `larger_is_better`).
fn best_peer(
    cols: &BTreeMap<Column, PeerSummary>,
    f: impl Fn(&PeerSummary) -> Option<f64>,
    larger_is_better: bool,
) -> Option<f64> {
    let vals = cols
        .iter()
        .filter(|(c, _)| c.is_peer())
        .filter_map(|(_, s)| f(s));
    if larger_is_better {
        vals.max_by(f64::total_cmp)
    } else {
        vals.min_by(f64::total_cmp)
    }
}

/// Issue 6's targets from the medians.
pub fn targets(
    summary: &BTreeMap<String, BTreeMap<String, PeerSummary>>,
) -> Vec<crate::report::TargetCheck> {
    use crate::report::check;
    let http = summary.get("http");
    let get = |k: &str| http.and_then(|m| m.get(k));
    let peers = || ["haproxy", "nginx"].into_iter().filter_map(&get);
    let weft = get("weft");
    let best_rps = peers().filter_map(|s| s.throughput).max_by(f64::total_cmp);
    let best_cpu = peers()
        .filter_map(|s| s.pair_cpu_per_100k)
        .min_by(f64::total_cmp);
    let best_p50 = peers().filter_map(|s| s.p50_us).min_by(f64::total_cmp);
    let weft_rss = weft.and_then(|s| s.load_rss_mib).map(|[a, b]| a.max(b));
    vec![
        check(
            "HTTP/1.1 pair throughput, × best of HAProxy / NGINX",
            ">= 1.25",
            ratio(weft.and_then(|s| s.throughput), best_rps),
            |x| x >= 1.25,
        ),
        check(
            "pair CPU-s per 100k HTTP requests, × best of HAProxy / NGINX",
            "<= 0.8",
            ratio(weft.and_then(|s| s.pair_cpu_per_100k), best_cpu),
            |x| x <= 0.8,
        ),
        check(
            "p50 at a fixed rate, × best of HAProxy / NGINX",
            "<= 1.0",
            ratio(weft.and_then(|s| s.p50_us), best_p50),
            |x| x <= 1.0,
        ),
        check(
            "each Weft sidecar's RSS under HTTP load, MiB",
            "< 15",
            weft_rss,
            |x| x < 15.0,
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ports() -> PairPorts {
        PairPorts {
            entry: 1001,
            tls: 1002,
            weft: [1003, 1004, 1005, 1006, 1007],
        }
    }

    fn sizing() -> Sizing {
        Sizing::new(20_000, 32)
    }

    #[test]
    fn sizing_follows_the_fd_limit_and_connections() {
        let s = Sizing::new(20_000, 32);
        assert_eq!(s.maxconn, 9_968);
        assert_eq!(s.upstream_keepalive, 64);
        assert!(Sizing::new(100, 1).maxconn >= 256);
    }

    #[test]
    fn haproxy_configs_have_one_thread_reuse_mtls_and_the_suite() {
        let d = Path::new("/t");
        let a = haproxy_client_cfg(Workload::Http, ports(), d, sizing());
        for needle in [
            "nbthread 1",
            "maxconn 9968",
            "http-reuse always",
            "bind 127.0.0.1:1001\n",
            "server b 127.0.0.1:1002 ssl crt /t/client.pem ca-file /t/ca.crt verify required",
            &format!("verifyhost {APP_DNS}"),
            &format!("ssl-default-server-ciphersuites {TLS13_SUITE}"),
            "ssl-min-ver TLSv1.3",
        ] {
            assert!(a.contains(needle), "{needle:?} not in\n{a}");
        }
        let app: SocketAddr = "127.0.0.1:1009".parse().unwrap();
        let b = haproxy_server_cfg(Workload::Grpc, ports(), app, d, sizing());
        assert!(b.contains(
            "bind 127.0.0.1:1002 ssl crt /t/app.pem ca-file /t/ca.crt verify required alpn h2"
        ));
        assert!(b.contains("server app 127.0.0.1:1009 proto h2"));
        let g = haproxy_client_cfg(Workload::Grpc, ports(), d, sizing());
        assert!(g.contains("bind 127.0.0.1:1001 proto h2"));
        let t = haproxy_client_cfg(Workload::Tcp, ports(), d, sizing());
        assert!(t.contains("mode tcp") && !t.contains("http-reuse"));
    }

    #[test]
    fn nginx_configs_have_one_worker_keepalive_and_mtls() {
        let d = Path::new("/t");
        let app: SocketAddr = "127.0.0.1:1009".parse().unwrap();
        let a = nginx_client_cfg(Workload::Http, ports(), d, sizing());
        for needle in [
            "worker_processes 1;",
            "keepalive_requests 1000000;",
            "keepalive 64;",
            "proxy_pass https://peer;",
            "proxy_ssl_certificate /t/client.crt;",
            "proxy_ssl_verify on;",
            &format!("proxy_ssl_name {APP_DNS};"),
            &format!("proxy_ssl_conf_command Ciphersuites {TLS13_SUITE};"),
            "proxy_set_header Connection \"\";",
        ] {
            assert!(a.contains(needle), "{needle:?} not in\n{a}");
        }
        let b = nginx_server_cfg(Workload::Http, ports(), app, d, sizing());
        for needle in [
            "listen 127.0.0.1:1002 ssl;",
            "ssl_verify_client on;",
            "ssl_client_certificate /t/ca.crt;",
            "ssl_protocols TLSv1.3;",
            "server 127.0.0.1:1009;",
            "keepalive 64;",
        ] {
            assert!(b.contains(needle), "{needle:?} not in\n{b}");
        }
        let g = nginx_client_cfg(Workload::Grpc, ports(), d, sizing());
        assert!(
            g.contains("listen 127.0.0.1:1001 http2;") && g.contains("grpc_pass grpcs://peer;")
        );
        assert!(g.contains("grpc_ssl_verify on;"));
        let gb = nginx_server_cfg(Workload::Grpc, ports(), app, d, sizing());
        assert!(gb.contains("grpc_pass grpc://app;") && gb.contains("ssl http2;"));
        let t = nginx_client_cfg(Workload::Tcp, ports(), d, sizing());
        assert!(
            t.contains("stream {")
                && t.contains("proxy_ssl on;")
                && t.contains("proxy_half_close on;")
        );
        let tb = nginx_server_cfg(Workload::Tcp, ports(), app, d, sizing());
        assert!(
            tb.contains("listen 127.0.0.1:1002 ssl;") && tb.contains("proxy_pass 127.0.0.1:1009;")
        );
        // Balanced braces: a typo here would only show when nginx starts.
        for cfg in [a, b, g, gb, t, tb] {
            assert_eq!(cfg.matches('{').count(), cfg.matches('}').count(), "{cfg}");
        }
    }

    #[test]
    fn weft_configs_per_workload() {
        let app: SocketAddr = "127.0.0.1:1009".parse().unwrap();
        let b = weft_server_cfg(Workload::Grpc, ports(), app);
        assert!(b.contains("protocol: grpc") && b.contains("inbound: \"127.0.0.1:1002\""));
        let a = weft_client_cfg(Workload::Tcp, ports());
        assert!(a.contains("protocol: tcp") && a.contains("port: 1001"));
        assert!(a.contains("address: \"127.0.0.1:1002\""));
        let h = weft_client_cfg(Workload::Http, ports());
        assert!(h.contains("outbound: \"127.0.0.1:1001\"") && h.contains("127.0.0.1:1002"));
    }

    #[test]
    fn order_is_a_balanced_latin_square() {
        for cols in [&Column::ALL[..], &Column::ALL[..4], &Column::ALL[..3]] {
            let n = cols.len();
            for r in 1..=2 * n {
                let mut o = Column::order(cols, r);
                o.sort();
                assert_eq!(o, cols.to_vec(), "run {r} is a permutation");
            }
            // Over n runs each column holds each position once.
            for &c in cols {
                let mut at: Vec<usize> = (1..=n)
                    .map(|r| Column::order(cols, r).iter().position(|&x| x == c).unwrap())
                    .collect();
                at.sort_unstable();
                assert_eq!(at, (0..n).collect::<Vec<_>>(), "{c:?} in {n} columns");
            }
            // Over 2n runs each column follows each other one equally often.
            let mut follows = BTreeMap::new();
            for r in 1..=2 * n {
                for w in Column::order(cols, r).windows(2) {
                    *follows.entry((w[0], w[1])).or_insert(0) += 1;
                }
            }
            assert_eq!(follows.len(), n * (n - 1), "{follows:?}");
            assert!(follows.values().all(|&k| k == 2), "{follows:?}");
        }
        assert_eq!(Column::order(&Column::ALL, 1)[0], Column::Direct);
    }

    fn run(col: Column, rps: f64, cpu: [f64; 3], p50: f64) -> PeerRun {
        PeerRun {
            run: 1,
            workload: Workload::Http,
            column: col,
            idle_rss_kib: Some([5_000, 6_000]),
            saturation: Some(SaturationResult {
                requests: (rps * 5.0) as u64,
                seconds: 5.0,
                rps,
                errors: 0,
                error_samples: vec![],
                cpu_seconds: cpu.to_vec(),
                loadgen_cpu_seconds: 1.0,
                peak_rss_kib: vec![1, 10_240, 12_288],
                cpu_busy_pct: vec![],
                others_cpu_seconds: 0.0,
            }),
            latency: Some(RateResult {
                rate: 2000.0,
                scheduled: 10,
                ok: 10,
                errors: 0,
                missed: 0,
                achieved_rps: 2000.0,
                latency: Some(crate::stats::Percentiles {
                    count: 10,
                    p50_us: p50,
                    p90_us: p50,
                    p99_us: p50 * 2.0,
                    p999_us: p50 * 3.0,
                    max_us: p50 * 4.0,
                }),
                error_samples: vec![],
                cpu_seconds: vec![],
                loadgen_cpu_seconds: 0.0,
                seconds: 5.0,
                cpu_busy_pct: vec![],
                others_cpu_seconds: 0.0,
            }),
            tcp: None,
        }
    }

    #[test]
    fn report_ratios_and_targets() {
        let runs = vec![
            run(Column::Direct, 40_000.0, [5.0, 0.0, 0.0], 50.0),
            run(Column::Weft, 15_000.0, [1.0, 1.5, 1.5], 200.0),
            run(Column::Haproxy, 10_000.0, [1.0, 2.0, 2.0], 250.0),
            run(Column::Nginx, 12_000.0, [1.0, 2.0, 2.0], 220.0),
        ];
        let cfg = PeersConfig {
            runs: 1,
            duration_s: 5.0,
            warmup_s: 1.0,
            connections: 32,
            rate: 2000.0,
            latency_connections: 16,
            grpc_channels: 4,
            grpc_concurrency: 32,
            tcp_connections: 4,
            sizing: sizing(),
            loadgen_core: 0,
            server_core: 1,
        };
        let r = PeersReport::new(
            cfg,
            PeersFound::default(),
            BTreeMap::new(),
            BTreeMap::new(),
            runs,
        );
        let w = &r.summary["http"]["weft"];
        assert_eq!(w.vs_best_peer, Some(1.25));
        assert_eq!(w.per_run_vs_best_peer, Some([1.25; 3]));
        assert_eq!(w.vs_direct, Some(0.375));
        // 3 CPU-s / 75k requests * 100k = 4; nginx 4 / 60k * 100k = 6.67.
        assert!((w.pair_cpu_per_100k.unwrap() - 4.0).abs() < 1e-9);
        assert_eq!(w.load_rss_mib, Some([10.0, 12.0]));
        assert!(r.targets[0].met, "{:?}", r.targets[0]);
        assert!(r.targets[1].met);
        assert!(r.targets[2].met);
        assert!(r.targets[3].met);
        let md = r.markdown();
        assert!(md.contains("| weft | 15 000 | 0.38 | 1.25 "), "{md}");
        assert!(md.contains("weft http: 1.25 (1.25–1.25)"), "{md}");
        assert!(md.contains("| **skipped**") || !md.contains("skipped"));
        let _ = serde_json::to_string(&r).unwrap();
    }
}
