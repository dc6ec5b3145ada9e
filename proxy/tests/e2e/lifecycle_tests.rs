//! Config reload and drain under live load, and large bodies streamed with flat memory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use weft_samples::http::{pattern_byte, Checksum, CHUNK_SIZE};

use crate::harness::*;
use crate::pair;

/// Load from `tasks` concurrent keep-alive clients until `stop`, for at most 30 s; counts
/// successes and failures (non-200 or transport error), remembering who served.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    last_served: Arc<std::sync::Mutex<String>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(
        proxy: std::net::SocketAddr,
        host: &'static str,
        path: &'static str,
        tasks: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let last_served = Arc::new(std::sync::Mutex::new(String::new()));
        let tasks = (0..tasks)
            .map(|_| {
                let (stop, ok, failed, last) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    last_served.clone(),
                );
                tokio::spawn(async move {
                    let c = client();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match send(&c, proxy, host, "GET", path, &[]).await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut l) = last.lock() {
                                    *l = r.served_by().to_owned();
                                }
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{} {}", r.status, r.header("x-weft-error")));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e);
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            last_served,
            tasks,
        }
    }

    async fn ok_at_least(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let target = self.ok.load(Ordering::Relaxed) + n;
        while self.ok.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.expect("load task"));
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing_and_bad_config_is_rejected() {
    let pki = Pki::new(40);
    pki.issue("frontend");
    pki.issue("orders");
    let v1 = Sidecar::start(&pki, Spec::new("orders", http_app("orders-v1").await)).await;
    let v2 = Sidecar::start(&pki, Spec::new("orders", http_app("orders-v2").await)).await;
    let services = format!(
        "services:\n{}",
        service_yaml(
            "orders",
            "http",
            None,
            &[(v1.inbound, "v1"), (v2.inbound, "v2")]
        )
    );
    let to = |version: &str| {
        format!("{services}routes:\n  - {{name: all, service: orders, backends: [{{subset: {{version: {version}}}}}]}}\n")
    };
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = to("v1");
    let fe = Sidecar::start(&pki, spec).await;
    assert_eq!(fe.version().await, 1);

    let load = Load::start(fe.outbound, "orders", "/", 4);
    load.ok_at_least(200).await;
    assert_eq!(*load.last_served.lock().expect("lock"), "orders-v1");

    // SIGHUP reload: traffic moves to v2.
    fe.rewrite(&to("v2"));
    fe.signal(nix::sys::signal::Signal::SIGHUP);
    fe.wait_version(2).await;
    load.ok_at_least(200).await;
    assert_eq!(*load.last_served.lock().expect("lock"), "orders-v2");

    // An invalid file is rejected with file, field and reason; v2 keeps serving.
    fe.rewrite(&format!("{services}routes:\n  - {{name: bad, service: orders, match: {{path: {{regex: \"((\"}}}}}}\n"));
    fe.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fe.log_text().contains("config rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            fe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = fe.log_text();
    assert!(
        log.contains("routes[0].match.path.regex: bad regex"),
        "{log}"
    );
    assert!(
        log.contains(&fe.config.display().to_string()),
        "names the file: {log}"
    );
    load.ok_at_least(200).await;
    assert_eq!(fe.version().await, 2);
    assert_eq!(*load.last_served.lock().expect("lock"), "orders-v2");

    // A file change alone (no signal) is picked up too.
    fe.rewrite(&to("v1"));
    fe.wait_version(3).await;
    load.ok_at_least(200).await;
    assert_eq!(*load.last_served.lock().expect("lock"), "orders-v1");

    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok >= 800, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let pki = Pki::new(41);
    let (mut fe, mut orders) = pair(&pki, "").await;
    let c = client();
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            let p = fe.outbound;
            tokio::spawn(async move { send(&c, p, "orders", "GET", "/delay/1500", &[]).await })
        })
        .collect();
    // Every request must have reached the orders sidecar (counted as received, so in flight
    // there) before SIGTERM: one still between the sidecars would meet a closed listener,
    // which is not what this test is about. A loaded machine can take a while to get there.
    wait_metric(
        orders.admin,
        "weft_requests_total",
        &[("direction", "inbound")],
        20.0,
        Duration::from_secs(10),
    )
    .await;
    let t0 = Instant::now();
    fe.signal(nix::sys::signal::Signal::SIGTERM);
    orders.signal(nix::sys::signal::Signal::SIGTERM);
    // New connections are no longer accepted: the listener closes (waited for, not slept on).
    weft_testkit::wait::until_async(
        "the outbound listener to close after SIGTERM",
        Duration::from_secs(5),
        || async {
            tokio::net::TcpStream::connect(fe.outbound)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    for r in in_flight {
        let r = r.await.expect("task").expect("in-flight request completes");
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        fe.wait_exit(Duration::from_secs(8)).await,
        Some(0),
        "{}",
        fe.log_text()
    );
    assert_eq!(
        orders.wait_exit(Duration::from_secs(8)).await,
        Some(0),
        "{}",
        orders.log_text()
    );
    // Exits once idle, well before the 10 s drain timeout.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

const GIB: u64 = 1 << 30;

/// Sample both sidecars' RSS every 50 ms until `done`; the peak in KiB.
fn watch_rss(pids: Vec<i32>, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
            for pid in &pids {
                peak = peak.max(rss_kib(*pid));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streams_both_ways_with_flat_sidecar_memory() {
    let pki = Pki::new(42);
    let (fe, orders) = pair(&pki, "").await;
    let done = Arc::new(AtomicBool::new(false));
    let rss = watch_rss(vec![fe.pid(), orders.pid()], done.clone());
    let c = client();

    // Download: check the length and every chunk's first and last byte against the pattern.
    let req = http::Request::get(format!("http://{}/bytes/{GIB}", fe.outbound))
        .header("host", "orders")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("req");
    let resp = c.request(req).await.expect("download");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            if let (Some(first), Some(last)) = (data.first(), data.last()) {
                assert_eq!(*first, pattern_byte(offset), "at {offset}");
                assert_eq!(*last, pattern_byte(offset + data.len() as u64 - 1));
            }
            offset += data.len() as u64;
        }
    }
    assert_eq!(offset, GIB);

    // Upload: the app reports the byte count and checksum of what arrived.
    let chunk: Bytes = (0..CHUNK_SIZE as u64).map(pattern_byte).collect();
    let chunks = GIB / CHUNK_SIZE as u64;
    let mut expected = Checksum::new();
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let req = http::Request::post(format!("http://{}/sink", fe.outbound))
        .header("host", "orders")
        .body(StreamBody::new(stream))
        .expect("req");
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    let j: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(j["bytes"], GIB);
    let one: Bytes = (0..CHUNK_SIZE as u64).map(pattern_byte).collect();
    for _ in 0..chunks {
        expected.update(&one);
    }
    assert_eq!(j["checksum"], expected.finish());

    done.store(true, Ordering::Relaxed);
    let peak_kib = rss.await.expect("rss watcher");
    assert!(peak_kib > 0, "RSS was sampled");
    assert!(peak_kib < 64 * 1024, "sidecar peak RSS {peak_kib} KiB");
    eprintln!("1 GiB each way; peak sidecar RSS {} MiB", peak_kib / 1024);
}
