//! CORS as a real browser enforces it: headless Chromium (Debian's `chromium`, which
//! `scripts/setup` installs) loads a page from one origin whose script calls the gateway on
//! another origin with `fetch(..., {credentials: 'include'})` and a non-simple header, so the
//! browser sends a preflight first. The gateway is a real `weft-proxy --gateway` in front of a
//! meshed `orders` (its own sidecar, mTLS); the page is served by a plain HTTP server here on
//! two loopback ports, two origins, only the first of which the route allows.
//!
//! Driver: `chromium --headless --dump-dom` with a virtual-time budget (virtual time does not
//! advance while a network fetch is outstanding, so the DOM it prints holds the fetch's
//! outcome), and `--log-net-log` for what the gateway actually answered the browser.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::*;

pub(crate) const HOST: &str = "api.example.test";
const ROUTE: &str = "browser";
/// How long one Chromium run may take before the test fails (and its group is killed).
const CHROMIUM_LIMIT: Duration = Duration::from_secs(90);

/// The page's script: one credentialed cross-origin fetch with a non-simple header to the
/// gateway named in the page's query (`?gw=https://host:port`), its outcome written into `#out`
/// as `OK <status> <body>` or `ERR <name>: <message>`.
const PAGE: &str = r#"<!doctype html>
<html><head><title>weft CORS</title></head><body><pre id="out">pending</pre>
<script>
const gw = new URLSearchParams(location.search).get("gw");
fetch(gw + "/browser", {credentials: "include", headers: {"x-demo": "1"}})
  .then(r => r.text().then(t => { document.getElementById("out").textContent = "OK " + r.status + " " + t.trim(); }))
  .catch(e => { document.getElementById("out").textContent = "ERR " + e.name + ": " + e.message; });
</script></body></html>
"#;

/// A plain HTTP/1.1 server on an OS-assigned loopback port answering every request with
/// [`PAGE`] (the page's origin is `http://127.0.0.1:<port>`).
async fn page_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // Read the request head (bounded), then answer and close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                     content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{html}",
                    PAGE.len(),
                    html = PAGE
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// What one Chromium run showed: the page's `#out` text and the browser's net log.
struct Run {
    out: String,
    net_log: String,
}

/// Runs headless Chromium on `url` in a fresh profile; bounded by [`CHROMIUM_LIMIT`], its
/// process group killed when it ends or the limit passes.
fn chromium(url: &str, work: &Path) -> Run {
    // A missing browser fails (never skips) the test, saying to run scripts/setup.
    let bin = weft_testkit::tools::find("chromium");
    let profile = tempfile::tempdir_in(work).expect("profile dir");
    let net_log = profile.path().join("net-log.json");
    let (exit, dom, err) = guarded::output_within(
        Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--ignore-certificate-errors",
                "--no-first-run",
                "--no-default-browser-check",
                "--no-proxy-server",
                // Nothing leaves loopback: no updates, sync or other background fetches, and
                // every name but the gateway's fails to resolve.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-domain-reliability",
            ])
            .arg(format!(
                "--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
            ))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--log-net-log={}", net_log.display()))
            .arg("--virtual-time-budget=20000")
            .arg("--dump-dom")
            .arg(url)
            .stdout(Stdio::piped()),
        CHROMIUM_LIMIT,
    );
    assert!(exit.success(), "chromium {url}: {exit}\n{err}");
    let out = dom
        .split_once("<pre id=\"out\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(out, _)| out.to_owned())
        .unwrap_or_else(|| panic!("no #out in the DOM chromium printed for {url}:\n{dom}\n{err}"));
    let net_log = std::fs::read_to_string(&net_log).unwrap_or_default();
    Run { out, net_log }
}

/// The API key the `keyed` route accepts (consumer `ci`).
pub(crate) const API_KEY: &str = "weft-test-key-0123456789";

/// The gateway (identity `gateway`) in front of `orders_inbound`, with one public route
/// `browser` whose CORS allows `origin` with credentials; returns it with its HTTPS port (a
/// self-signed certificate for [`HOST`]). Also the Prometheus test's gateway, which also
/// calls the route `keyed` (path `/keyed`, an API key in `x-api-key`: [`API_KEY`]) for the
/// dashboard's authentication panel. Set up by the gateway tests' shared helper.
pub(crate) async fn start_gateway(
    pki: &Pki,
    orders_inbound: SocketAddr,
    origin: &str,
) -> (Sidecar, u16) {
    let key = rcgen::KeyPair::generate().expect("edge key");
    let cert = rcgen::CertificateParams::new(vec![HOST.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("edge cert");
    std::fs::write(pki.path().join("edge.crt"), cert.pem()).expect("write");
    std::fs::write(pki.path().join("edge.key"), key.serialize_pem()).expect("write");
    std::fs::write(
        pki.path().join("api-keys.yaml"),
        format!("keys:\n  - {{consumer: ci, key: {API_KEY}}}\n"),
    )
    .expect("write keys");
    let edge = format!(
        "listen: {{https: 127.0.0.1:0}}
tls:
  certificates: [{{hosts: [{HOST}], cert: edge.crt, key: edge.key}}]
auth:
  api_keys: [{{name: ci, file: api-keys.yaml}}]
routes:
  - name: keyed
    hosts: [{HOST}]
    match: {{path: {{prefix: /keyed}}}}
    service: orders
    access: {{auth: {{api_key: ci}}}}
  - name: {ROUTE}
    hosts: [{HOST}]
    service: orders
    access:
      auth: {{public: true}}
      cors: {{allow_origins: ['{origin}'], allow_methods: [GET], allow_headers: [x-demo], allow_credentials: true, max_age: 60s}}
"
    );
    let edge_file = pki.path().join("browser-gateway.yaml");
    std::fs::write(&edge_file, edge).expect("gateway file");
    let services = service_yaml("orders", "http", None, &[(orders_inbound, "v1")]);
    let (gw, at) = crate::gateway_tests::spawn_gateway(pki, &services, &edge_file).await;
    (gw, at.https.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_the_gateway_cross_origin_with_credentials() {
    let pki = Pki::new(31);
    pki.issue("orders");
    let app = TestApp::start("orders-app", 200).await;
    let orders = Sidecar::start(&pki, Spec::new("orders", app.addr)).await;

    // Two origins (two loopback ports) serving the same page.
    let a = page_server().await;
    let b = page_server().await;
    let (origin_a, origin_b) = (format!("http://{a}"), format!("http://{b}"));
    let (gw, port) = start_gateway(&pki, orders.inbound, &origin_a).await;
    let gateway = format!("https://{HOST}:{port}");

    let work = tempfile::tempdir().expect("tempdir");
    // The gateway counts a request once its answer is sent, which may be just after the
    // browser has it: wait (bounded) for the count, then require it exactly.
    let counted = |code: &'static str, n: f64| {
        let admin = gw.admin;
        async move {
            let labels = [("route", ROUTE), ("code", code)];
            let got = wait_metric(
                admin,
                "weft_gateway_requests_total",
                &labels,
                n,
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(got, n, "gateway answers {code}");
        }
    };

    // Origin A: preflight answered at the gateway, then the credentialed GET reaches the app
    // and the page reads its body.
    let run = chromium(&format!("{origin_a}/?gw={gateway}"), work.path());
    assert_eq!(run.out, "OK 200 ok", "origin A ({origin_a})");
    assert_eq!(app.hits(), 1, "the app saw origin A's request");
    counted("204", 1.0).await; // the preflight, answered at the gateway
    counted("200", 1.0).await; // the request, forwarded
    let log_a = run.net_log.to_ascii_lowercase();
    assert!(
        log_a.contains(&format!("access-control-allow-origin: {origin_a}")),
        "the browser saw CORS headers for A"
    );
    assert!(log_a.contains("access-control-allow-credentials: true"));

    // Origin B: the preflight reaches the gateway, which answers it without any CORS header;
    // the browser then refuses the request (a TypeError in the page) and never sends it.
    let run = chromium(&format!("{origin_b}/?gw={gateway}"), work.path());
    assert!(
        run.out.starts_with("ERR TypeError"),
        "origin B ({origin_b}) must be blocked: {}",
        run.out
    );
    counted("403", 1.0).await; // B's preflight, refused
    counted("200", 1.0).await; // nothing of B's forwarded
    assert_eq!(app.hits(), 1, "the app never saw origin B's request");
    let log_b = run.net_log.to_ascii_lowercase();
    assert!(
        log_b.contains("access-control-request-headers: x-demo"),
        "B's net log holds its preflight"
    );
    assert!(
        !log_b.contains("access-control-allow-"),
        "no CORS header was answered to origin B"
    );
    drop(gw);
}
