//! The parts of `weft up`'s local mesh that both its runner (`up`) and its live view (`view`)
//! know: the instances (a sidecar and its app each), the traffic generator's counts, and the
//! loopback ports and child processes the runner hands out and supervises.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long children get to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The trust domain of the local mesh.
pub const TRUST_DOMAIN: &str = "weft.local";

/// Writes `text` to `path` atomically, readable by its owner only (keys, tokens).
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    weft_certs::files::write_atomically(path, text.as_bytes(), 0o600)
        .with_context(|| format!("{}", path.display()))
}

/// One sidecar of the mesh and the app beside it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Instance name, e.g. `orders-v2`.
    pub name: String,
    /// Mesh service.
    pub service: &'static str,
    /// `version` label, if any.
    pub version: Option<&'static str>,
    /// Sidecar admin address (metrics, readiness).
    pub admin: SocketAddr,
    /// Sidecar outbound listener (the app's way into the mesh).
    pub outbound: SocketAddr,
    /// Sidecar inbound listener (mTLS).
    pub inbound: SocketAddr,
    /// The app's address.
    pub app: SocketAddr,
}

/// Hands out loopback ports that are free now, never the same one twice.
///
/// The ports are picked at random from [`PORTS_FROM`] up to the start of the kernel's
/// ephemeral range, not with `bind(0)`: a port `bind(0)` returned and this process released
/// lies in the ephemeral range, where any outgoing connection on the machine may take it as
/// its local port before the sidecar or app meant to listen on it binds it (and then that
/// bind fails). Below the range only another explicit bind can take it. (The test suite's
/// reserved ports, `weft_testkit::ports`, stay below [`PORTS_FROM`].)
#[derive(Default)]
pub struct Ports(BTreeSet<u16>);

/// The lowest port [`Ports`] hands out.
pub const PORTS_FROM: u16 = 20_000;

/// The first port of the kernel's ephemeral range; 32768 if it cannot be read.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

impl Ports {
    pub fn next(&mut self) -> anyhow::Result<SocketAddr> {
        let end = ephemeral_start();
        if end > PORTS_FROM + 1_000 {
            for _ in 0..1_000 {
                let port = fastrand::u16(PORTS_FROM..end);
                if self.0.contains(&port) {
                    continue;
                }
                if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                    let addr = l.local_addr()?;
                    self.0.insert(port);
                    return Ok(addr);
                }
            }
        }
        // A kernel whose ephemeral range starts low: what it says is free now.
        for _ in 0..100 {
            let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            if self.0.insert(addr.port()) {
                return Ok(addr);
            }
        }
        bail!("no free loopback port found")
    }
}

#[cfg(test)]
mod ports_tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let mut ports = Ports::default();
        let got: Vec<SocketAddr> = (0..50).map(|_| ports.next().expect("a port")).collect();
        let distinct: BTreeSet<u16> = got.iter().map(SocketAddr::port).collect();
        assert_eq!(distinct.len(), got.len());
        if ephemeral_start() > PORTS_FROM + 1_000 {
            assert!(
                got.iter()
                    .all(|a| (PORTS_FROM..ephemeral_start()).contains(&a.port())),
                "{got:?}"
            );
        }
        for a in got {
            assert!(a.ip().is_loopback());
            TcpListener::bind(a).expect("free when handed out");
        }
    }
}

/// The child processes; any still running when this is dropped get SIGKILL, so an error
/// half-way through never leaves processes behind.
#[derive(Default)]
pub struct Children(Vec<(String, Child)>);

impl Children {
    pub fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<u32> {
        let file = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }

    /// The first child that exited on its own, with its status.
    pub fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(name, c)| match c.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited ({status})")),
            _ => None,
        })
    }

    /// SIGTERM every child (they drain), wait up to [`STOP_TIMEOUT`], SIGKILL the rest.
    pub async fn stop(&mut self) -> usize {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for (_, c) in &self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self
                .0
                .iter_mut()
                .all(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let n = self.0.len();
        for (name, mut c) in self.0.drain(..) {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                log::warn!("{name} did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        n
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Counts of the traffic generator.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests answered 2xx.
    pub ok: AtomicU64,
    /// Requests that failed (non-2xx or no answer).
    pub failed: AtomicU64,
    /// Ticks skipped because too many requests were in flight.
    pub skipped: AtomicU64,
    /// Why the latest failed request failed (status and the body's first line).
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Traffic {
    /// Count a failed request, and why it failed.
    pub fn failed(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Why the latest failed request failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Until one of `children` exits; why.
pub async fn watch_children(children: &mut Children) -> String {
    loop {
        if let Some(why) = children.exited() {
            return why;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP, listened for from [`StopSignals::install`] on.
pub struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Until a stop signal (one that came in earlier counts at once) or `limit`.
    pub async fn wait(mut self, limit: Option<Duration>) -> anyhow::Result<()> {
        let limit = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
            () = limit => {}
        }
        Ok(())
    }
}
