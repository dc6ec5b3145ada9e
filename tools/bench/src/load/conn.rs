//! One request of a load loop on a kept-alive connection: the target, the shared counters
//! and error samples, and (re)connecting bounded in count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http1::Conn;

/// Most requests one connection task sends in one run (a safety bound; the
/// time limit ends runs long before).
pub(crate) const MAX_REQUESTS_PER_CONN: u64 = 100_000_000;

/// Most times one connection task reconnects in one run.
pub(crate) const MAX_RECONNECTS: u32 = 1_000;

/// How long past the end of a run a connection may still be busy (one slow
/// request) before it is cut off and counted as an error.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// How many error messages a run keeps as examples.
pub(crate) const ERROR_SAMPLES: usize = 5;

/// The open loop sleeps until this long before a request's scheduled time,
/// then yields in a loop until it is due (tokio timers have 1 ms granularity,
/// which would otherwise add up to 1 ms of phantom latency).
pub(crate) const SPIN_BEFORE: Duration = Duration::from_millis(2);

/// Where to send load and what to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The complete request bytes, sent as is for every request.
    pub request: Arc<[u8]>,
}

/// Counters shared by the connection tasks of one run.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) ok: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) samples: Mutex<Vec<String>>,
}

impl Counters {
    pub(crate) fn error(&self, msg: impl FnOnce() -> String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock() {
            if s.len() < ERROR_SAMPLES {
                s.push(msg());
            }
        }
    }

    pub(crate) fn samples(&self) -> Vec<String> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Outcome of one request on a connection that may need reopening.
pub(crate) enum Outcome {
    Ok,
    Failed,
}

/// The open connection in `conn`, or a new one (at most [`MAX_RECONNECTS`]
/// per run); `None`, with the error counted, when connecting fails.
pub(crate) async fn ensure_conn<'a>(
    conn: &'a mut Option<Conn>,
    reconnects: &mut u32,
    target: &Target,
    counters: &Counters,
) -> Option<&'a mut Conn> {
    if conn.is_none() {
        if *reconnects >= MAX_RECONNECTS {
            counters.error(|| "too many reconnects".into());
            // Back off so a dead target does not turn into a hot loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return None;
        }
        *reconnects += 1;
        match Conn::connect(target.addr).await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                counters.error(|| format!("connect {}: {e}", target.addr));
                tokio::time::sleep(Duration::from_millis(10)).await;
                return None;
            }
        }
    }
    conn.as_mut()
}

/// Sends one request on `conn`, (re)connecting first if needed, and counts
/// the result. Returns whether it succeeded with status 200.
pub(crate) async fn one_request(
    conn: &mut Option<Conn>,
    reconnects: &mut u32,
    target: &Target,
    counters: &Counters,
) -> Outcome {
    let Some(c) = ensure_conn(conn, reconnects, target, counters).await else {
        return Outcome::Failed;
    };
    let (outcome, reopen) = match c.request(&target.request).await {
        Ok(resp) if resp.status == 200 => (Outcome::Ok, false),
        Ok(resp) => {
            let status = resp.status;
            let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
            counters.error(|| format!("status {status}: {body}"));
            (Outcome::Failed, false)
        }
        Err(e) => {
            counters.error(|| e.to_string());
            (Outcome::Failed, true)
        }
    };
    if reopen || c.is_closed() {
        *conn = None;
    }
    if matches!(outcome, Outcome::Ok) {
        counters.ok.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}
