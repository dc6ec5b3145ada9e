//! Probes as the kubelet runs them: `httpGet` and `tcpSocket` from the node's network namespace
//! to the pod's IP (not from inside the pod, so an app bound to loopback fails them, as on a
//! real node), `exec` inside the container's namespaces with its environment and user; each on
//! the spec's `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `failureThreshold` and
//! `successThreshold` (the Kubernetes defaults when unset: 0, 10, 1, 3, 1).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A probe's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `failureThreshold`.
    pub failure_threshold: u32,
    /// `successThreshold`.
    pub success_threshold: u32,
}

impl Timing {
    /// The timings of `p`, with the Kubernetes defaults.
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: Option<i32>, d: u64| {
            Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(d))
        };
        let count = |v: Option<i32>, d: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(d)
        };
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            failure_threshold: count(p.failure_threshold, 3),
            success_threshold: count(p.success_threshold, 1),
        }
    }
}

/// What a probe needs to reach its container.
#[derive(Clone)]
pub(crate) struct Target {
    pub pod_ip: Ipv4Addr,
    /// The container's named ports.
    pub ports: BTreeMap<String, i32>,
    /// A runtime inside the node's network namespace.
    pub node: tokio::runtime::Handle,
    /// Runs an exec probe's command in the container: its exit code, or why it could not run.
    pub exec: std::sync::Arc<dyn Fn(Vec<String>, Duration) -> Result<i32, String> + Send + Sync>,
}

fn port(p: &IntOrString, ports: &BTreeMap<String, i32>) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => *ports
            .get(name)
            .ok_or_else(|| format!("no port named {name}"))?,
    };
    u16::try_from(n).map_err(|_| format!("port {n} out of range"))
}

/// Runs `probe` once; `Err` carries why it failed.
pub(crate) async fn once(probe: &Probe, t: &Target, timeout: Duration) -> Result<(), String> {
    if let Some(h) = &probe.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
        {
            return Err("httpGet scheme HTTPS is not supported by the pod runner".into());
        }
        let host: Ipv4Addr = match h.host.as_deref() {
            Some(h) if !h.is_empty() => h
                .parse()
                .map_err(|_| format!("httpGet host {h} is not an IPv4 address"))?,
            _ => t.pod_ip,
        };
        let addr = SocketAddr::from((host, port(&h.port, &t.ports)?));
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return on_node(t, timeout, http_get(addr, path, headers)).await;
    }
    if let Some(s) = &probe.tcp_socket {
        let host: Ipv4Addr = match s.host.as_deref() {
            Some(h) if !h.is_empty() => h
                .parse()
                .map_err(|_| format!("tcpSocket host {h} is not an IPv4 address"))?,
            _ => t.pod_ip,
        };
        let addr = SocketAddr::from((host, port(&s.port, &t.ports)?));
        return on_node(t, timeout, async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect {addr}: {e}"))
        })
        .await;
    }
    if let Some(e) = &probe.exec {
        let argv = e.command.clone().unwrap_or_default();
        let exec = t.exec.clone();
        let code = tokio::task::spawn_blocking(move || exec(argv, timeout))
            .await
            .map_err(|e| format!("exec probe task: {e}"))??;
        return if code == 0 {
            Ok(())
        } else {
            Err(format!("exec probe exited {code}"))
        };
    }
    Err("the probe has no httpGet, tcpSocket or exec handler (grpc is not supported)".into())
}

/// Runs `fut` on the node's runtime (its sockets are in the node's network) with a deadline.
async fn on_node<F>(t: &Target, timeout: Duration, fut: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let task = t.node.spawn(async move {
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    });
    task.await.map_err(|e| format!("probe task: {e}"))?
}

/// One HTTP/1.1 GET; success is a status from 200 to 399, as the kubelet counts it.
async fn http_get(
    addr: SocketAddr,
    path: String,
    headers: Vec<(String, String)>,
) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // Only the status line matters; read at most 1 KiB of it.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// A probe's verdict after its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `successThreshold` consecutive successes.
    Success,
    /// `failureThreshold` consecutive failures, with the last reason.
    Failure(String),
}

/// Runs `probe` on its timings and calls `report` on every change of verdict (the first
/// verdict included). Returns when `report` returns `false` (the caller has what it needs).
pub(crate) async fn watch(probe: &Probe, t: &Target, mut report: impl FnMut(Verdict) -> bool) {
    let timing = Timing::of(probe);
    tokio::time::sleep(timing.initial_delay).await;
    let (mut ok, mut bad) = (0u32, 0u32);
    let mut last: Option<Verdict> = None;
    let mut tick = tokio::time::interval(timing.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let verdict = match once(probe, t, timing.timeout).await {
            Ok(()) => {
                ok += 1;
                bad = 0;
                (ok >= timing.success_threshold).then_some(Verdict::Success)
            }
            Err(reason) => {
                bad += 1;
                ok = 0;
                (bad >= timing.failure_threshold).then_some(Verdict::Failure(reason))
            }
        };
        if let Some(v) = verdict {
            if last.as_ref() != Some(&v) {
                last = Some(v.clone());
                if !report(v) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_kubernetes_ones() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.initial_delay, Duration::ZERO);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.failure_threshold, t.success_threshold), (3, 1));
    }

    #[tokio::test]
    async fn http_status_decides_success() {
        for (status, want) in [
            ("200 OK", true),
            ("302 Found", true),
            ("503 Unavailable", false),
        ] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut req = [0u8; 512];
                let _ = s.read(&mut req).await;
                s.write_all(reply.as_bytes()).await.expect("reply");
            });
            assert_eq!(
                http_get(addr, "/ready".into(), vec![]).await.is_ok(),
                want,
                "{status}"
            );
            server.await.expect("server");
        }
    }
}
