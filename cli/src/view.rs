//! The live view of `weft up`: every second, scrape every sidecar's metrics and show per
//! route requests/s, success rate, p50/p99, retries and open breakers
//! ([`weft_cli::top`]), with the traffic generator's counts and the control
//! plane's policy version.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use weft_cli::top::{self, Sample};
use weft_control_plane::push::hub::Hub;

use crate::mesh::{Instance, Traffic};

/// How long one HTTP call of the view or the generator may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the view refreshes.
pub const REFRESH: Duration = Duration::from_secs(1);

/// A small pooled HTTP/1.1 client for loopback calls.
#[derive(Clone)]
pub struct Client(HyperClient<HttpConnector, Empty<Bytes>>);

impl Client {
    /// A client with keep-alive.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self(HyperClient::builder(TokioExecutor::new()).build(connector))
    }

    /// `GET http://addr/path`: status and body.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.get_host(addr, &addr.to_string(), path).await
    }

    /// `GET path` from `addr` with `Host: host` (how a sidecar's outbound listener routes).
    pub async fn get_host(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<(u16, Bytes)> {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .header(http::header::HOST, host)
            .body(Empty::new())?;
        let call = async {
            let resp = self.0.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))?
    }
}

/// Scrape every sidecar; inbound series are renamed to the instance (`orders-v2`), so the
/// canary's two versions show as two rows.
async fn scrape(client: &Client, instances: &[Instance]) -> Vec<Sample> {
    let mut all = Vec::new();
    let calls = instances.iter().map(|i| async move {
        let text = client.get(i.admin, "/metrics").await.ok()?;
        let samples = top::parse(&String::from_utf8_lossy(&text.1)).ok()?;
        Some((i, samples))
    });
    for (i, samples) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
    {
        for mut s in samples {
            if s.labels.get("direction").map(String::as_str) == Some("inbound") {
                s.labels.insert("dst_service".into(), i.name.clone());
            }
            all.push(s);
        }
    }
    all
}

/// The live view.
pub struct View {
    client: Client,
    instances: Vec<Instance>,
    hub: Arc<Hub>,
    traffic: Arc<Traffic>,
    rate: u32,
    footer: String,
}

impl View {
    /// A view of `instances`, the control plane's `hub` and the generator's `traffic`;
    /// `footer` (where things are, how to stop) closes every full-screen frame.
    pub fn new(
        client: Client,
        instances: Vec<Instance>,
        hub: Arc<Hub>,
        traffic: Arc<Traffic>,
        rate: u32,
        footer: String,
    ) -> Self {
        Self {
            client,
            instances,
            hub,
            traffic,
            rate,
            footer,
        }
    }

    /// Refresh forever: the full screen every [`REFRESH`], or a summary line every 5 s.
    pub async fn run(self, full_screen: bool) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut prev = scrape(&self.client, &self.instances).await;
        let mut prev_at = Instant::now();
        let mut tick = tokio::time::interval(if full_screen {
            REFRESH
        } else {
            Duration::from_secs(5)
        });
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = scrape(&self.client, &self.instances).await;
            let rows = top::rows(&prev, &now, prev_at.elapsed());
            prev = now;
            prev_at = Instant::now();
            let header = self.header(started.elapsed());
            if full_screen {
                // Clear the screen and home the cursor, then draw the frame in one write.
                print!(
                    "\x1b[2J\x1b[H{header}\n\n{}\n{}",
                    top::render(&rows),
                    self.footer
                );
            } else {
                println!("{header}\n{}", top::render(&rows));
            }
        }
    }

    fn header(&self, up: Duration) -> String {
        let status = self.hub.status();
        let version = status["policy_version"].as_str().unwrap_or("?");
        let sidecars = status["sidecars"].as_array().map_or(0, Vec::len);
        let in_sync = status["sidecars"].as_array().map_or(0, |s| {
            s.iter()
                .filter(|s| s["connected"] == true && s["acked_version"] == s["sent_version"])
                .count()
        });
        let error = status["last_policy_error"]
            .as_str()
            .map(|e| format!("\npolicy REJECTED (last good stays in force): {e}"))
            .unwrap_or_default();
        let last = match self.traffic.last_error() {
            Some(e) if self.traffic.failed.load(Ordering::Relaxed) > 0 => {
                format!("\nlast failure: {e}")
            }
            _ => String::new(),
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "weft up {}  policy {}  sidecars in sync {in_sync}/{sidecars}  traffic {} req/s: {} ok, {} failed{}{last}{error}",
            humantime::format_duration(Duration::from_secs(up.as_secs())),
            version.get(..12).unwrap_or(version),
            self.rate,
            self.traffic.ok.load(Ordering::Relaxed),
            self.traffic.failed.load(Ordering::Relaxed),
            match self.traffic.skipped.load(Ordering::Relaxed) {
                0 => String::new(),
                n => format!(", {n} skipped (too many in flight)"),
            },
        );
        out
    }
}
