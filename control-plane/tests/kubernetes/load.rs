//! Load for the deployed-shop scenarios that change the mesh under traffic (`rolling`,
//! `failover`): an unmodified `curl` in a client pod calling one Service by its name, batch
//! after batch, without a pause and without a retry of its own (a failed request is counted,
//! never repeated), until the scenario stops it. Each batch is one curl process (one
//! keep-alive connection to the pod's sidecar) making [`PER_BATCH`] requests in turn.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use weft_podrunner::PodHandle;

/// Requests per curl run.
pub(super) const PER_BATCH: usize = 10;
/// Batches at most, whatever the scenario does (a bound on the loop).
const MAX_BATCHES: usize = 5_000;
/// How long the load may run at most (a bound on the loop).
const MAX_TIME: Duration = Duration::from_secs(180);

/// One answer: its status and the `served_by` of the JSON body (`""` when it has none).
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub code: u16,
    pub served_by: String,
    pub body: String,
}

impl Reply {
    /// A 200 with a `served_by`.
    pub fn ok(&self) -> bool {
        self.code == 200 && !self.served_by.is_empty()
    }

    /// The failures among `replies`, one line each (status and body), for a test's message.
    pub fn failures<'a>(replies: impl IntoIterator<Item = &'a Reply>) -> Vec<String> {
        replies
            .into_iter()
            .filter(|r| !r.ok())
            .map(|r| format!("{} {}", r.code, r.body))
            .collect()
    }
}

/// One curl run: when it started and ended, and its answers in order.
#[derive(Debug)]
pub(super) struct Batch {
    pub start: Instant,
    pub end: Instant,
    pub replies: Vec<Reply>,
}

/// A running load; [`Load::stop`] ends it and returns every batch.
pub(super) struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Batch>>>,
    task: JoinHandle<()>,
}

/// The outcome of a load run.
pub(super) struct Summary {
    pub batches: Vec<Batch>,
}

impl Load {
    /// Starts calling `http://{host}{path}` from `pod` (its sidecar's outbound port, as the
    /// mesh's redirect would).
    pub fn start(pod: &PodHandle, host: &str, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (netns, host, path) = (pod.netns().to_owned(), host.to_owned(), path.to_owned());
        let (flag, out) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let begun = Instant::now();
            for _ in 0..MAX_BATCHES {
                if flag.load(Ordering::Acquire) || begun.elapsed() > MAX_TIME {
                    break;
                }
                let start = Instant::now();
                let replies = batch(&netns, &host, &path).await;
                let b = Batch {
                    start,
                    end: Instant::now(),
                    replies,
                };
                out.lock().unwrap_or_else(|e| e.into_inner()).push(b);
            }
        });
        Load { stop, seen, task }
    }

    /// Waits, bounded by `limit`, until the batches so far satisfy `pred` (an event of the
    /// load: a pod served a request, N batches ended after some instant); panics naming
    /// `what` otherwise.
    pub async fn until(&self, what: &str, limit: Duration, pred: impl Fn(&[Batch]) -> bool) {
        weft_testkit::wait::until_async(what, limit, || {
            let ok = pred(&self.seen.lock().unwrap_or_else(|e| e.into_inner()));
            async move { ok.then_some(()) }
        })
        .await;
    }

    /// Ends the load after the batch in progress and returns every batch.
    pub async fn stop(self) -> Summary {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("the load task");
        let batches = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        Summary { batches }
    }
}

/// How many batches started at `t` or later.
pub(super) fn ended_after(batches: &[Batch], t: Instant) -> usize {
    batches.iter().filter(|b| b.start >= t).count()
}

/// Whether `name` served a request in a batch that started at `t` or later.
pub(super) fn served_since(batches: &[Batch], name: &str, t: Instant) -> bool {
    batches
        .iter()
        .filter(|b| b.start >= t)
        .any(|b| b.replies.iter().any(|r| r.served_by == name))
}

impl Summary {
    /// The end of the last batch in which `name` served a request.
    pub fn last_served_by(&self, name: &str) -> Option<Instant> {
        self.batches
            .iter()
            .filter(|b| b.replies.iter().any(|r| r.served_by == name))
            .map(|b| b.end)
            .max()
    }

    /// The batches that started at `t` or later.
    pub fn since(&self, t: Instant) -> impl Iterator<Item = &Batch> {
        self.batches.iter().filter(move |b| b.start >= t)
    }
}

/// One curl run of [`PER_BATCH`] requests in `netns`. A curl that could not run at all, or
/// printed fewer answers than requests, yields failed replies for the missing ones (code 0).
async fn batch(netns: &str, host: &str, path: &str) -> Vec<Reply> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "curl", "-sS", "-m", "5"])
        .args(["--connect-to", &format!("{host}:80:127.0.0.1:15001")])
        .args(["-w", "\n@@%{http_code}\n"]);
    for _ in 0..PER_BATCH {
        cmd.arg(format!("http://{host}{path}"));
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("curl task");
    let text = match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("curl did not run: {e}"),
    };
    let mut replies = Vec::new();
    let mut body = String::new();
    for line in text.lines() {
        match line.strip_prefix("@@") {
            Some(code) => {
                let body = std::mem::take(&mut body);
                let served_by = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["served_by"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                replies.push(Reply {
                    code: code.trim().parse().unwrap_or(0),
                    served_by,
                    body,
                });
            }
            None => body.push_str(line),
        }
    }
    while replies.len() < PER_BATCH {
        replies.push(Reply {
            code: 0,
            served_by: String::new(),
            body: format!("no answer from curl: {text}"),
        });
    }
    replies
}
