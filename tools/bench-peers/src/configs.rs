//! The pairs' config files, as text: HAProxy and NGINX set up as sidecars with the same hops
//! as the Weft pair (plain in on loopback, mutual TLS 1.3 between the proxies verifying the
//! peer against the mesh CA, plain to the app), and the Weft pair's sidecar configs. Pure
//! functions, unit-tested.

use std::net::SocketAddr;
use std::path::Path;

use weft_benches::mesh::{self, SidecarPorts, APP_ID};
use weft_policy::wire::ConfigFile;

use crate::model::{PairPorts, Sizing, Workload, APP_DNS, NGINX_STREAM_MODULE, TLS13_SUITE};

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
pub fn weft_server_cfg(w: Workload, ports: PairPorts, app: SocketAddr) -> ConfigFile {
    let sp = SidecarPorts {
        outbound: ports.weft[3],
        inbound: ports.tls,
        admin: ports.weft[2],
    };
    let mut cfg = mesh::sidecar("app", APP_ID, app.port(), w.as_str(), sp, "app");
    // The app may listen elsewhere than 127.0.0.1 (it does not today).
    cfg.service.app = app.to_string();
    cfg
}

/// Config of Weft sidecar A (the client's) for workload `w`: HTTP on its
/// outbound listener (`Host: app`), gRPC and TCP on a port of the service's
/// own (`ports.entry`).
pub fn weft_client_cfg(w: Workload, ports: PairPorts) -> ConfigFile {
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
        return mesh::client_sidecar(ports.weft[4], sp, ports.tls);
    }
    let mut cfg = mesh::client_sidecar_base(ports.weft[3], sp);
    let mut app = mesh::app_service(&[ports.tls]);
    app.protocol = Some(w.as_str().to_owned());
    app.port = Some(ports.entry);
    cfg.services.push(app);
    cfg
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
        assert_eq!(b.service.protocol.as_deref(), Some("grpc"));
        assert_eq!(b.service.app, "127.0.0.1:1009");
        assert_eq!(b.listen.inbound.as_deref(), Some("127.0.0.1:1002"));
        let a = weft_client_cfg(Workload::Tcp, ports());
        let s = &a.services[0];
        assert_eq!((s.protocol.as_deref(), s.port), (Some("tcp"), Some(1001)));
        assert_eq!(s.endpoints[0].address, "127.0.0.1:1002");
        let h = weft_client_cfg(Workload::Http, ports());
        assert_eq!(h.listen.outbound.as_deref(), Some("127.0.0.1:1001"));
        assert_eq!(h.services[0].endpoints[0].address, "127.0.0.1:1002");
        let y = mesh::to_yaml(&h).unwrap();
        assert!(
            y.contains("127.0.0.1:1001") && y.contains("127.0.0.1:1002"),
            "{y}"
        );
    }
}
