//! The app's own probes, answered on the sidecar's read-only port: `GET
//! /app-health/<container>/<livez|readyz|startupz>` runs the probe the injector took out of the
//! app container (an `httpGet` or a `tcpSocket`) against the app on the pod's loopback, and
//! answers 200 when the kubelet would have counted it a success, else 503.
//!
//! Why: the app listens on loopback (the sidecar is the pod's one way in), and with transparent
//! capture a kubelet probe to the app's port on the pod IP would land in the sidecar's mTLS
//! listener. So the injector points the app's probes at this port (as Istio does with
//! `ISTIO_KUBE_APP_PROBERS` and `/app-health/<container>/readyz`) and hands the originals to the
//! sidecar in the env var [`ENV`] (JSON, written by `control-plane/src/inject/probes.rs`).
//!
//! Only the probes of that env var are served, each by its exact path; anything else under
//! `/app-health/` is a 404. The probe always goes to `127.0.0.1`: the kubelet's `host` field
//! becomes the `Host` header, never an address to connect to, so the port is no open forwarder.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The env var holding the app probes (JSON: path → probe).
pub const ENV: &str = "WEFT_APP_PROBES";
/// The path prefix the app probes are served under.
pub const PREFIX: &str = "/app-health/";
/// How much of the app's answer is read to find its status line. The kubelet reads at most
/// 10 KiB of body; only the status matters here.
pub const MAX_STATUS_LINE: usize = 4096;
/// The longest `timeoutSeconds` accepted (Kubernetes sets no maximum; a probe waiting longer
/// than this is a mistake, and a bound keeps a connection slot from being held for hours).
pub const MAX_TIMEOUT_SECONDS: u64 = 600;

/// Why the app probes cannot be read: the sidecar refuses to start, naming the probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppProbeError {
    /// The env var is not a JSON object of probes.
    #[error("{ENV}: not a JSON object of probes: {0}")]
    Json(String),
    /// A probe's path is not `/app-health/<container>/<livez|readyz|startupz>`.
    #[error("{ENV}: {path:?}: {reason}")]
    Path {
        /// The path given.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A probe's fields are wrong.
    #[error("{ENV}: probe {path}: {reason}")]
    Probe {
        /// The probe's path.
        path: String,
        /// Why it is refused.
        reason: String,
    },
}

/// One probe as the injector writes it: the original action (as in the pod spec, port maybe a
/// name), the port it resolved to, and the probe's `timeoutSeconds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireProbe {
    http_get: Option<WireHttpGet>,
    tcp_socket: Option<WireTcp>,
    port: u16,
    timeout_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireHttpGet {
    path: Option<String>,
    // The pod spec's port (a number or a name); the resolved one is `WireProbe::port`.
    #[allow(dead_code)]
    port: serde_json::Value,
    host: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<WireHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeader {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTcp {
    #[allow(dead_code)]
    port: serde_json::Value,
    // The kubelet's target host; ignored: the app is on the pod's loopback.
    #[allow(dead_code)]
    host: Option<String>,
}

/// What one probe does against the app.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// `GET <path>` with these headers (Host among them); success is a 200-399 status.
    Http {
        path: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// A TCP connect; success is an accepted connection.
    Tcp,
}

/// One configured probe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    port: u16,
    timeout: Duration,
    action: Action,
}

/// The configured app probes, by their exact path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes {
    probes: BTreeMap<String, Probe>,
}

impl AppProbes {
    /// The probes of env var [`ENV`]; none when it is unset or empty.
    pub fn from_env() -> Result<Self, AppProbeError> {
        match std::env::var(ENV) {
            Ok(text) if !text.trim().is_empty() => Self::parse(&text),
            _ => Ok(Self::default()),
        }
    }

    /// Parse the JSON the injector writes (see the module docs), strictly: unknown fields, a
    /// bad path, port, timeout, scheme or header refuse the whole set.
    pub fn parse(text: &str) -> Result<Self, AppProbeError> {
        let wire: BTreeMap<String, WireProbe> =
            serde_json::from_str(text).map_err(|e| AppProbeError::Json(e.to_string()))?;
        let mut probes = BTreeMap::new();
        for (path, w) in wire {
            check_path(&path)?;
            let bad = |reason: String| AppProbeError::Probe {
                path: path.clone(),
                reason,
            };
            if w.port == 0 {
                return Err(bad("port 0".into()));
            }
            if !(1..=MAX_TIMEOUT_SECONDS).contains(&w.timeout_seconds) {
                return Err(bad(format!(
                    "timeoutSeconds {}: want 1 to {MAX_TIMEOUT_SECONDS}",
                    w.timeout_seconds
                )));
            }
            let action = match (w.http_get, w.tcp_socket) {
                (Some(h), None) => http_action(h, w.port).map_err(bad)?,
                (None, Some(_)) => Action::Tcp,
                _ => return Err(bad("want exactly one of httpGet and tcpSocket".into())),
            };
            let probe = Probe {
                port: w.port,
                timeout: Duration::from_secs(w.timeout_seconds),
                action,
            };
            probes.insert(path, probe);
        }
        Ok(Self { probes })
    }

    /// How many probes are configured.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Answer `GET path`: run the probe configured for exactly this path (404 for any other),
    /// 200 when the app passes it, 503 when not, each with a one-line reason.
    pub async fn answer(&self, path: &str) -> (StatusCode, String) {
        let Some(probe) = self.probes.get(path) else {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "no app probe {path}: only the probes the injector configured are served\n"
                ),
            );
        };
        match tokio::time::timeout(probe.timeout, run(probe)).await {
            Ok(Ok(why)) => (StatusCode::OK, format!("{why}\n")),
            Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "app probe on port {} timed out after {}s\n",
                    probe.port,
                    probe.timeout.as_secs()
                ),
            ),
        }
    }
}

/// `/app-health/<container>/<livez|readyz|startupz>`, the container a DNS label.
fn check_path(path: &str) -> Result<(), AppProbeError> {
    let bad = |reason: &str| AppProbeError::Path {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = path
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("want /app-health/<container>/<livez|readyz|startupz>"))?;
    let (container, kind) = rest
        .split_once('/')
        .ok_or_else(|| bad("want /app-health/<container>/<livez|readyz|startupz>"))?;
    let label = !container.is_empty()
        && container.len() <= 63
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !label {
        return Err(bad("the container name is not a DNS label"));
    }
    if !matches!(kind, "livez" | "readyz" | "startupz") {
        return Err(bad("the probe kind is not livez, readyz or startupz"));
    }
    Ok(())
}

/// The HTTP action: HTTP only (the injector leaves HTTPS probes alone), the path as given
/// (default `/`), the probe's headers, and `Host` from the headers, else `host`, else the
/// app's loopback address, as the kubelet sets it.
fn http_action(h: WireHttpGet, port: u16) -> Result<Action, String> {
    if let Some(s) = &h.scheme {
        if !s.eq_ignore_ascii_case("http") {
            return Err(format!("scheme {s:?}: only HTTP probes are served"));
        }
    }
    let path = h.path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "path {path:?}: want an absolute path without spaces"
        ));
    }
    let mut headers = Vec::new();
    for hd in &h.http_headers {
        let name = HeaderName::from_bytes(hd.name.as_bytes())
            .map_err(|_| format!("header name {:?} is not a header name", hd.name))?;
        let value = HeaderValue::from_str(&hd.value)
            .map_err(|_| format!("header {name}: value {:?} is not a header value", hd.value))?;
        headers.push((name, value));
    }
    let has =
        |headers: &[(HeaderName, HeaderValue)], n: &HeaderName| headers.iter().any(|(h, _)| h == n);
    if !has(&headers, &http::header::HOST) {
        let host = h
            .host
            .filter(|h| !h.is_empty())
            .map_or_else(|| format!("127.0.0.1:{port}"), |h| format!("{h}:{port}"));
        let value = HeaderValue::from_str(&host)
            .map_err(|_| format!("host {host:?} is not a header value"))?;
        headers.push((http::header::HOST, value));
    }
    // What the kubelet sends unless the probe says otherwise; apps that tell probes apart by
    // their user agent (a `kube-probe/` prefix) keep working.
    for (name, value) in [
        (http::header::USER_AGENT, "kube-probe/weft"),
        (http::header::ACCEPT, "*/*"),
    ] {
        if !has(&headers, &name) {
            headers.push((name, HeaderValue::from_static(value)));
        }
    }
    Ok(Action::Http { path, headers })
}

/// Run `probe` once (the caller bounds it in time): `Ok` with what passed, `Err` with why not.
async fn run(probe: &Probe) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, probe.port));
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("app not reachable on {addr}: {e}"))?;
    let Action::Http { path, headers } = &probe.action else {
        return Ok(format!("app accepts connections on {addr}"));
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in headers {
        req.extend_from_slice(name.as_str().as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    tcp.write_all(&req)
        .await
        .map_err(|e| format!("app on {addr}: sending the probe: {e}"))?;
    let status = read_status(&mut tcp)
        .await
        .map_err(|e| format!("app on {addr}: {e}"))?;
    if (200..400).contains(&status) {
        Ok(format!("app answered {status} on {addr}{path}"))
    } else {
        Err(format!("app answered {status} on {addr}{path}"))
    }
}

/// The status code of the answer's first line, reading at most [`MAX_STATUS_LINE`] bytes.
async fn read_status(tcp: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            ));
        }
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("closed the connection without an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(code) if version.starts_with("HTTP/1.") && (100..600).contains(&code) => Ok(code),
        _ => Err(format!("not an HTTP/1 status line: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// An app on loopback answering every request with `status`, and the requests it saw.
    async fn app(status: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                    let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        (port, rx)
    }

    fn probes(json: serde_json::Value) -> AppProbes {
        AppProbes::parse(&json.to_string()).expect("valid probes")
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_3xx_and_fails_otherwise() {
        for (status, want) in [
            (200, StatusCode::OK),
            (302, StatusCode::OK),
            (404, StatusCode::SERVICE_UNAVAILABLE),
            (503, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let (port, mut seen) = app(status).await;
            let p = probes(serde_json::json!({"/app-health/web/readyz": {
                "httpGet": {"path": "/health?x=1", "port": "http", "host": "web.local",
                            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]},
                "port": port, "timeoutSeconds": 2}}));
            let (code, body) = p.answer("/app-health/web/readyz").await;
            assert_eq!(code, want, "{status}: {body}");
            assert!(body.contains(&status.to_string()), "{body}");
            let req = seen.recv().await.expect("the app saw the probe");
            assert!(req.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{req}");
            assert!(
                req.contains(&format!("host: web.local:{port}\r\n")),
                "{req}"
            );
            assert!(req.contains("x-probe: yes\r\n"), "{req}");
            assert!(req.contains("user-agent: kube-probe/weft\r\n"), "{req}");
        }
    }

    #[tokio::test]
    async fn a_host_header_wins_over_host() {
        let (port, mut seen) = app(200).await;
        let p = probes(serde_json::json!({"/app-health/web/livez": {
            "httpGet": {"port": 1, "host": "ignored", "httpHeaders": [{"name": "Host", "value": "h.example"}]},
            "port": port, "timeoutSeconds": 1}}));
        assert_eq!(p.answer("/app-health/web/livez").await.0, StatusCode::OK);
        let req = seen.recv().await.expect("request");
        assert!(req.starts_with("GET / HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains("host: h.example\r\n") && !req.contains("ignored"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn tcp_probe_connects_and_a_closed_port_fails() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let p = probes(serde_json::json!({"/app-health/db/startupz": {
            "tcpSocket": {"port": port}, "port": port, "timeoutSeconds": 1}}));
        assert_eq!(p.answer("/app-health/db/startupz").await.0, StatusCode::OK);
        drop(l);
        let (code, body) = p.answer("/app-health/db/startupz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("not reachable"), "{body}");
    }

    #[tokio::test]
    async fn a_silent_app_times_out_within_the_probe_timeout() {
        // Accepts and never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let p = probes(serde_json::json!({"/app-health/web/readyz": {
            "httpGet": {"port": port}, "port": port, "timeoutSeconds": 1}}));
        let started = std::time::Instant::now();
        let (code, body) = p.answer("/app-health/web/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("timed out"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(l);
    }

    #[tokio::test]
    async fn only_configured_paths_are_served() {
        let (port, _seen) = app(200).await;
        let p = probes(serde_json::json!({"/app-health/web/readyz": {
            "httpGet": {"port": port}, "port": port, "timeoutSeconds": 1}}));
        for path in [
            "/app-health/web/livez",
            "/app-health/other/readyz",
            "/app-health/web/readyz/",
            "/app-health/",
        ] {
            assert_eq!(p.answer(path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn parsing_is_strict() {
        let ok = serde_json::json!({"httpGet": {"port": 8080}, "port": 8080, "timeoutSeconds": 1});
        assert_eq!(AppProbes::parse("{}").expect("empty").len(), 0);
        for (path, probe) in [
            ("/app-health/web/ready", ok.clone()),
            ("/app-health/Web/readyz", ok.clone()),
            ("/other/web/readyz", ok.clone()),
            (
                "/app-health/web/readyz",
                serde_json::json!({"httpGet": {"port": 1}, "port": 0, "timeoutSeconds": 1}),
            ),
            (
                "/app-health/web/readyz",
                serde_json::json!({"httpGet": {"port": 1}, "port": 1, "timeoutSeconds": 0}),
            ),
            (
                "/app-health/web/readyz",
                serde_json::json!({"httpGet": {"port": 1, "scheme": "HTTPS"}, "port": 1, "timeoutSeconds": 1}),
            ),
            (
                "/app-health/web/readyz",
                serde_json::json!({"httpGet": {"port": 1, "path": "x y"}, "port": 1, "timeoutSeconds": 1}),
            ),
            (
                "/app-health/web/readyz",
                serde_json::json!({"httpGet": {"port": 1, "httpHeaders": [{"name": "X", "value": "a\r\nb"}]}, "port": 1, "timeoutSeconds": 1}),
            ),
            (
                "/app-health/web/readyz",
                serde_json::json!({"port": 1, "timeoutSeconds": 1}),
            ),
            (
                "/app-health/web/readyz",
                serde_json::json!({"httpGet": {"port": 1}, "tcpSocket": {"port": 1}, "port": 1, "timeoutSeconds": 1}),
            ),
            (
                "/app-health/web/readyz",
                serde_json::json!({"exec": {}, "port": 1, "timeoutSeconds": 1}),
            ),
        ] {
            let text = serde_json::json!({ path: probe }).to_string();
            assert!(AppProbes::parse(&text).is_err(), "{text}");
        }
        assert!(matches!(
            AppProbes::parse("[]"),
            Err(AppProbeError::Json(_))
        ));
    }
}
