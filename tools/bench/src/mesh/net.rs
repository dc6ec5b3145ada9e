//! Talking to the processes under test: free loopback ports, one request on a fresh
//! connection, waiting (bounded) until a listener answers, and reading a sidecar's
//! `/metrics`.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;

use super::process::ChildGuard;
use crate::http1::{get_request, Conn};

/// How long a started process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Loopback address with `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
/// Sends `GET path` with `Host: host` to `addr` on a fresh connection;
/// returns the status and body.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::connect(addr).await?;
    let resp = conn.request(&get_request(host, path)).await?;
    Ok((resp.status, resp.body.to_vec()))
}

/// Waits (at most [`READY_TIMEOUT`]) until `GET path` on `addr` answers 200,
/// failing early if `child` exits.
pub async fn wait_ready(
    child: &mut ChildGuard,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<()> {
    wait_status(child, addr, path, 200).await
}

/// Waits (at most [`READY_TIMEOUT`]) until `GET path` on `addr` answers
/// `status`, failing early if `child` exits.
pub async fn wait_status(
    child: &mut ChildGuard,
    addr: SocketAddr,
    path: &str,
    status: u16,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no attempt yet");
    // At most READY_TIMEOUT / 50 ms iterations (plus the time each takes).
    for _ in 0..(READY_TIMEOUT.as_millis() / 50 + 1) {
        child.check_alive()?;
        match tokio::time::timeout(Duration::from_secs(2), get(addr, "127.0.0.1", path)).await {
            Ok(Ok((got, _))) if got == status => return Ok(()),
            Ok(Ok((got, body))) => {
                last = format!("status {got}: {}", String::from_utf8_lossy(&body));
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} (pid {}) not ready (answering {status}) on http://{addr}{path} within {:?} (last: {last}); stderr ({}) ends with:\n{}",
        child.name(),
        child.pid(),
        READY_TIMEOUT,
        child.stderr_path().display(),
        child.stderr_tail(30)
    )
}
/// Most bytes [`fetch_metrics`] reads.
pub(crate) const MAX_METRICS: u64 = 16 * 1024 * 1024;

/// `GET /metrics` from a sidecar's admin address: the whole response (head
/// and body) as text, read until the server closes (`Connection: close`).
pub async fn fetch_metrics(admin: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        stream.take(MAX_METRICS).read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("GET http://{admin}/metrics timed out"))?
}
/// The sample lines (not comments) of `text` whose metric name starts with
/// one of `prefixes`.
pub fn metric_lines(text: &str, prefixes: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && prefixes.iter().any(|p| l.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// The `caller` field of the sample app's default JSON body.
pub fn caller_of(body: &[u8]) -> anyhow::Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the app's answer is not JSON")?;
    Ok(v.get("caller").and_then(|c| c.as_str()).map(str::to_owned))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct() {
        let mut p = free_ports(8).unwrap();
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), 8);
    }
}
