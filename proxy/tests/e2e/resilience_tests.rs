//! Resilience against real failures: retries within budgets, outlier ejection and half-open
//! return, concurrency and rate limits, fault injection and timeouts, all through real
//! sidecars to real (scripted) apps.

use std::time::{Duration, Instant};

use crate::harness::*;

/// `n` endpoints of `orders`, each a sidecar in front of its own scripted app.
async fn orders(pki: &Pki, statuses: &[u16]) -> (Vec<TestApp>, Vec<Sidecar>) {
    pki.issue("orders");
    pki.issue("frontend");
    let mut apps = Vec::new();
    let mut cars = Vec::new();
    for (i, s) in statuses.iter().enumerate() {
        let app = TestApp::start(&format!("orders-{i}"), *s).await;
        cars.push(Sidecar::start(pki, Spec::new("orders", app.addr)).await);
        apps.push(app);
    }
    (apps, cars)
}

/// The frontend sidecar calling those endpoints, with `service` YAML appended to the
/// `orders` service entry and `routes` as the routes section.
async fn frontend(pki: &Pki, endpoints: &[Sidecar], service: &str, routes: &str) -> Sidecar {
    let eps: Vec<_> = endpoints.iter().map(|s| (s.inbound, "v1")).collect();
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}{service}routes:\n{routes}",
        service_yaml("orders", "http", None, &eps)
    );
    Sidecar::start(pki, spec).await
}

fn count(out: &[Outcome], f: impl Fn(&Outcome) -> bool) -> usize {
    out.iter().filter(|o| f(o)).count()
}

fn p99(out: &[Outcome]) -> Duration {
    let mut l: Vec<_> = out.iter().map(|o| o.latency).collect();
    l.sort_unstable();
    l[(l.len() * 99 / 100).min(l.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_failing_endpoint_and_ejection_starves_it() {
    let pki = Pki::new(60);
    let (apps, cars) = orders(&pki, &[200, 200, 500]).await;
    let fe = frontend(
        &pki,
        &cars,
        // Round robin keeps sending the bad endpoint its share until ejection takes it out;
        // P2C on peak-EWMA would starve it by latency alone and hide the detector.
        "    load_balancer: round_robin\n    outlier_detection: {consecutive_failures: 5, base_ejection_time: 2s, failures: 5xx}\n",
        "  - name: all\n    service: orders\n    retry: {on: [5xx], attempts: 3}\n",
    )
    .await;
    let out = load(fe.outbound, "orders", "/", 10_000, 8).await;
    let failed: Vec<_> = out.iter().filter(|o| o.status != 200).take(3).collect();
    assert!(
        failed.is_empty(),
        "{} of 10000 failed, e.g. {:?}",
        count(&out, |o| o.status != 200),
        failed
            .iter()
            .map(|o| (o.status, &o.error))
            .collect::<Vec<_>>()
    );
    let bad = apps[2].hits();
    // Five failures eject it; each later probe (after 2 s, then 4 s, ...) is one request.
    assert!(
        bad <= 40,
        "the failing endpoint saw {bad} of 10000 requests; ejection should starve it"
    );
    assert_eq!(count(&out, |o| o.served_by == "orders-2"), 0);
    let ejections = metric(
        fe.admin,
        "weft_outlier_ejections_total",
        &[("endpoint", &cars[2].inbound.to_string())],
    )
    .await;
    assert!(ejections >= 1.0, "ejections counted: {ejections}");
    let retries = metric(fe.admin, "weft_retries_total", &[("route", "all")]).await;
    assert_eq!(retries as u64, bad, "every failed attempt was retried once");
    let healthy = metric(
        fe.admin,
        "weft_endpoints_healthy",
        &[("dst_service", "orders")],
    )
    .await;
    assert_eq!(healthy, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_under_load_costs_no_idempotent_request() {
    let pki = Pki::new(61);
    let (_apps, mut cars) = orders(&pki, &[200, 200, 200]).await;
    let fe = frontend(
        &pki,
        &cars,
        "",
        "  - name: all\n    service: orders\n    retry: {on: [connect-failure, refused-stream, reset], attempts: 3}\n",
    )
    .await;
    let proxy = fe.outbound;
    let run = tokio::spawn(async move { load(proxy, "orders", "/", 6000, 6).await });
    // Mid-load, by the event: the endpoint has served 100 requests (the load sends 6,000).
    wait_metric(
        cars[1].admin,
        "weft_requests_total",
        &[("direction", "inbound")],
        100.0,
        Duration::from_secs(30),
    )
    .await;
    assert!(!run.is_finished(), "the load ended before the kill");
    cars[1].child.kill();
    let out = run.await.expect("load");
    let bad: Vec<_> = out
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| (o.status, o.error.clone()))
        .take(5)
        .collect();
    assert!(bad.is_empty(), "failed requests after SIGKILL: {bad:?}");
    let after = count(&out, |o| o.served_by == "orders-1");
    assert!(after < 6000, "the killed endpoint served everything?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let pki = Pki::new(62);
    let (apps, cars) = orders(&pki, &[500, 500]).await;
    let fe = frontend(
        &pki,
        &cars,
        "    outlier_detection: {consecutive_failures: 0}\n    retry_budget: {ratio: 0.2, min_per_second: 5, window: 10s}\n",
        "  - name: all\n    service: orders\n    retry: {on: [5xx], attempts: 3, backoff: {base: 2ms, max: 10ms}}\n",
    )
    .await;
    let n = 2000;
    let started = Instant::now();
    let out = load(fe.outbound, "orders", "/", n, 8).await;
    let elapsed = started.elapsed();
    assert_eq!(
        count(&out, |o| o.status == 500),
        n,
        "app's 500s pass through"
    );
    let hits: u64 = apps.iter().map(TestApp::hits).sum();
    let retries = hits - n as u64;
    // Without a budget every request would be tried 3 times: 4000 retries.
    let allowed = 0.2 * n as f64 + 5.0 * 10.0;
    assert!(
        (retries as f64) <= allowed * 1.05 + 5.0,
        "{retries} retries for {n} requests in {elapsed:?}; the budget allows about {allowed}"
    );
    assert!(retries >= 100, "the budget still allows retries: {retries}");
    let skipped = metric(
        fe.admin,
        "weft_retries_skipped_total",
        &[("reason", "budget_exhausted")],
    )
    .await;
    assert!(
        skipped >= (n as f64) * 0.5,
        "budget exhaustion counted: {skipped}"
    );
    let p = p99(&out);
    assert!(
        p < Duration::from_millis(150),
        "latency ballooned: p99 {p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_returns_through_a_half_open_probe() {
    let pki = Pki::new(63);
    let (apps, cars) = orders(&pki, &[200, 503]).await;
    let fe = frontend(
        &pki,
        &cars,
        "    load_balancer: round_robin\n    outlier_detection: {consecutive_failures: 3, base_ejection_time: 700ms}\n",
        "  - name: all\n    service: orders\n    retry: {on: [gateway-error], attempts: 2}\n",
    )
    .await;
    let out = load(fe.outbound, "orders", "/", 200, 2).await;
    assert_eq!(count(&out, |o| o.status == 200), 200);
    let before = apps[1].hits();
    assert!(before <= 4, "ejected after 3 failures, saw {before}");
    let ep = cars[1].inbound.to_string();
    assert_eq!(
        metric(fe.admin, "weft_endpoint_ejected", &[("endpoint", &ep)]).await,
        1.0
    );
    apps[1].set_status(200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let out = load(fe.outbound, "orders", "/", 400, 2).await;
    assert_eq!(count(&out, |o| o.status == 200), 400);
    let back = count(&out, |o| o.served_by == "orders-1");
    assert!(
        back >= 80,
        "the recovered endpoint got {back} of 400 after its probe"
    );
    assert_eq!(
        metric(fe.admin, "weft_endpoint_ejected", &[("endpoint", &ep)]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_get_fast_503s() {
    let pki = Pki::new(64);
    let (apps, cars) = orders(&pki, &[200]).await;
    let fe = frontend(
        &pki,
        &cars,
        "    limits: {max_in_flight: 4, max_pending: 2, queue_timeout: 100ms}\n",
        "  - name: all\n    service: orders\n",
    )
    .await;
    // The app holds every request until released: the 4 in flight stay in flight however slow
    // the machine is, so the split below is exact, not a race against a delay.
    apps[0].hold();
    let proxy = fe.outbound;
    let run = tokio::spawn(async move { load(proxy, "orders", "/", 24, 24).await });
    // The 20 beyond the limit are answered while the 4 are still held at the app: fast 503s,
    // not answers that waited for a slot.
    wait_metric(
        fe.admin,
        "weft_requests_rejected_total",
        &[("route", "all")],
        20.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        apps[0].hits(),
        4,
        "exactly the in-flight limit reached the app"
    );
    assert!(!run.is_finished(), "the held requests are still in flight");
    apps[0].release();
    let out = run.await.expect("load");
    let ok = count(&out, |o| o.status == 200);
    let shed: Vec<_> = out.iter().filter(|o| o.status == 503).collect();
    assert_eq!(ok, 4, "exactly the in-flight limit is served");
    assert_eq!(shed.len(), 20);
    for o in &shed {
        assert!(o.error.starts_with("overloaded"), "{}", o.error);
    }
    assert_eq!(
        count(&out, |o| o.error.contains("waiting")),
        18,
        "queue full"
    );
    assert_eq!(
        count(&out, |o| o.error.contains("freed within")),
        2,
        "queue timeout"
    );
    assert_eq!(apps[0].hits(), 4);
    let rejected = metric(
        fe.admin,
        "weft_requests_rejected_total",
        &[("route", "all")],
    )
    .await;
    assert_eq!(rejected, 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_accept_the_configured_rate_and_say_when_to_retry() {
    let pki = Pki::new(65);
    let (_apps, cars) = orders(&pki, &[200]).await;
    let fe = frontend(
        &pki,
        &cars,
        "",
        "  - name: all\n    service: orders\n    rate_limit: {requests_per_second: 100, burst: 10}\n",
    )
    .await;
    let started = Instant::now();
    let mut accepted = 0usize;
    let mut limited = 0usize;
    let c = client();
    // Bounded: 2 s of requests, at most 20000.
    for _ in 0..20_000 {
        if started.elapsed() >= Duration::from_secs(2) {
            break;
        }
        let r = get(&c, fe.outbound, "orders", "/").await;
        match r.status {
            200 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(r.header("retry-after"), "1");
                assert!(r.header("x-weft-error").starts_with("rate limited"));
            }
            s => panic!("unexpected {s}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let expected = 100.0 * secs + 10.0;
    assert!(limited > 0, "the offered rate must exceed the limit");
    assert!(
        (accepted as f64 - expected).abs() <= expected * 0.03 + 3.0,
        "accepted {accepted} in {secs:.2}s, expected {expected:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_rate_limits_are_per_caller() {
    let pki = Pki::new(66);
    pki.issue("orders");
    pki.issue("frontend");
    pki.issue("billing");
    let app = TestApp::start("orders", 200).await;
    let mut spec = Spec::new("orders", app.addr);
    // The inbound limit lives on the sidecar's own service block.
    spec.rest = String::new();
    let orders = Sidecar::start(&pki, spec).await;
    let mut file: wire::ConfigFile = serde_yaml::from_str(&orders.head).expect("head");
    file.service.rate_limit = Some(wire::RateLimit {
        requests_per_second: 20.0,
        burst: Some(5),
        per_caller: Some(true),
    });
    let head = serde_yaml::to_string(&file).expect("YAML");
    std::fs::write(&orders.config, &head).expect("config");
    orders.wait_version(2).await;
    let mut callers = Vec::new();
    for name in ["frontend", "billing"] {
        let mut spec = Spec::new(name, http_app(name).await);
        spec.rest = format!(
            "services:\n{}",
            service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
        );
        callers.push(Sidecar::start(&pki, spec).await);
    }
    let started = Instant::now();
    let (a, b) = tokio::join!(
        load(callers[0].outbound, "orders", "/", 300, 2),
        load(callers[1].outbound, "orders", "/", 300, 2)
    );
    let secs = started.elapsed().as_secs_f64();
    for out in [&a, &b] {
        let ok = count(out, |o| o.status == 200);
        let limited = count(out, |o| o.status == 429 && o.retry_after == "1");
        assert_eq!(ok + limited, 300);
        // Each caller has its own bucket: 5 + 20/s, however fast the other one goes.
        let most = 5.0 + 20.0 * secs + 2.0;
        assert!(
            ok >= 5 && (ok as f64) <= most,
            "{ok} accepted in {secs:.2}s, at most {most:.0}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_match_their_percentages() {
    let pki = Pki::new(67);
    let (_apps, cars) = orders(&pki, &[200]).await;
    let fe = frontend(
        &pki,
        &cars,
        "",
        "  - name: all\n    service: orders\n    fault: {abort: {percent: 20, status: 503}, delay: {percent: 10, duration: 60ms}}\n",
    )
    .await;
    let n = 2000;
    let out = load(fe.outbound, "orders", "/", n, 16).await;
    // Binomial shares; accept within 4.5 standard deviations (false alarm ~1e-5).
    let within = |seen: usize, p: f64| {
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        (seen as f64 - mean).abs() <= 4.5 * sd
    };
    let aborted = count(&out, |o| {
        o.status == 503 && o.error == "fault injected: abort"
    });
    assert!(within(aborted, 0.2), "aborted {aborted} of {n}");
    // The share of delays from the sidecar's own counter, not from latency (a busy machine
    // makes undelayed requests slow too). Latency only bounds it from below: every delayed
    // request took at least the delay.
    let delayed =
        metric(fe.admin, "weft_faults_injected_total", &[("kind", "delay")]).await as usize;
    assert!(within(delayed, 0.1), "delayed {delayed} of {n}");
    let slow = count(&out, |o| o.latency >= Duration::from_millis(60));
    assert!(
        slow >= delayed,
        "{delayed} delayed by 60 ms, only {slow} took that long"
    );
    assert_eq!(count(&out, |o| o.status == 200) + aborted, n);
    let faults = metric(fe.admin, "weft_faults_injected_total", &[("kind", "abort")]).await;
    assert_eq!(faults as usize, aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_bound_slow_upstreams_and_per_try_retries() {
    let pki = Pki::new(68);
    let (apps, cars) = orders(&pki, &[200, 200]).await;
    apps[1]
        .delay_ms
        .store(5_000, std::sync::atomic::Ordering::Relaxed);
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}    outlier_detection: {{consecutive_failures: 0}}\nroutes:\n{}",
        service_yaml(
            "orders",
            "http",
            None,
            &[(cars[0].inbound, "fast"), (cars[1].inbound, "slow")]
        ),
        r#"  - name: slow
    service: orders
    match: {path: {prefix: /slow}}
    timeout: 300ms
    backends: [{subset: {version: slow}}]
  - name: budgeted
    service: orders
    match: {path: {prefix: /budgeted}}
    timeout: 250ms
    retry: {on: [timeout], attempts: 5, per_try_timeout: 100ms, backoff: {base: 1ms, max: 1ms}}
    backends: [{subset: {version: slow}}]
  - name: all
    service: orders
    timeout: 2s
    retry: {on: [timeout], attempts: 3, per_try_timeout: 150ms}
"#
    );
    let fe = Sidecar::start(&pki, spec).await;
    let c = client();

    let t = Instant::now();
    let r = get(&c, fe.outbound, "orders", "/slow").await;
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        r.header("x-weft-error").contains("timeout"),
        "{}",
        r.header("x-weft-error")
    );
    // At least the timeout; and cut by it, far short of the app's 5 s (the upper bound leaves
    // room for a busy machine: it is the timeout firing that is tested, not the machine's speed).
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // Per-try timeouts and retries together stay inside the request timeout.
    let before = apps[1].hits();
    let t = Instant::now();
    let r = get(&c, fe.outbound, "orders", "/budgeted").await;
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.header("x-weft-error"));
    assert!(
        took >= Duration::from_millis(240) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let attempts = apps[1].hits() - before;
    assert!(
        (2..=3).contains(&attempts),
        "{attempts} attempts fit in 250ms at 100ms each"
    );

    // With a fast endpoint to fall back on, a per-try timeout turns into a success.
    let out = load(fe.outbound, "orders", "/", 40, 4).await;
    assert_eq!(
        count(&out, |o| o.status == 200 && o.served_by == "orders-0"),
        40
    );
    for o in &out {
        assert!(o.latency < Duration::from_millis(600), "{:?}", o.latency);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_codes_are_retried_as_configured() {
    let pki = Pki::new(69);
    pki.issue("frontend");
    pki.issue("inventory");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = l.local_addr().expect("addr");
    weft_samples::grpc::serve(l, "inventory-1");
    let mut spec = Spec::new("inventory", app);
    spec.protocol = "grpc";
    let inv = Sidecar::start(&pki, spec).await;
    let port = free_port();
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}    outlier_detection: {{consecutive_failures: 0}}\nroutes:\n  - name: rpc\n    service: inventory\n    retry: {{on: [], grpc_codes: [unavailable], attempts: 3, backoff: {{base: 1ms, max: 2ms}}}}\n",
        service_yaml("inventory", "grpc", Some(port), &[(inv.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut c = weft_samples::grpc::EchoClient::new(channel);
    let fail = |code: u32| weft_samples::grpc::EchoRequest {
        message: "down".into(),
        count: code,
    };
    // UNAVAILABLE (14) is retried up to the attempt limit; NOT_FOUND (5) is not.
    let e = c.fail(fail(14)).await.expect_err("fails");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert_eq!(
        metric(fe.admin, "weft_retries_total", &[("route", "rpc")]).await,
        2.0
    );
    let e = c.fail(fail(5)).await.expect_err("fails");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(
        metric(fe.admin, "weft_retries_total", &[("route", "rpc")]).await,
        2.0
    );
    let skipped = metric(
        fe.admin,
        "weft_retries_skipped_total",
        &[("reason", "attempts_exhausted")],
    )
    .await;
    assert_eq!(skipped, 1.0);
    let ok = c.unary(fail(0)).await.expect("unary").into_inner();
    assert_eq!(ok.served_by, "inventory-1");
}

pub async fn echo(s: &mut tokio::net::TcpStream) -> Option<[u8; 4]> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping").await.ok()?;
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
        .await
        .ok()?
        .ok()?;
    Some(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tunnels_obey_connection_limits_and_idle_timeouts() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new(70);
    pki.issue("frontend");
    pki.issue("db");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = l.local_addr().expect("addr");
    weft_samples::tcp::serve_echo(l);
    let mut spec = Spec::new("db", app);
    spec.protocol = "tcp";
    let db = Sidecar::start(&pki, spec).await;
    let port = free_port();
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "idle_timeout: 1s\nservices:\n{}    limits: {{max_connections: 1}}\n",
        service_yaml("db", "tcp", Some(port), &[(db.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;
    let mut first = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert_eq!(echo(&mut first).await, Some(*b"ping"));
    // The limit is one tunnel: a second connection is closed at once.
    let mut second = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert_eq!(echo(&mut second).await, None, "over the limit");
    let rejected = metric(
        fe.admin,
        "weft_tcp_connections_rejected_total",
        &[("reason", "overloaded")],
    )
    .await;
    assert_eq!(rejected, 1.0);
    // Idle for longer than idle_timeout: the tunnel is closed, which frees the slot.
    let t = Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut b))
        .await
        .expect("closed within 5s")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF after idling");
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
    let mut third = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert_eq!(echo(&mut third).await, Some(*b"ping"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_64k_are_replayed_and_larger_ones_are_not() {
    let pki = Pki::new(71);
    let (apps, cars) = orders(&pki, &[500, 200]).await;
    let fe = frontend(
        &pki,
        &cars,
        "    load_balancer: round_robin\n    outlier_detection: {consecutive_failures: 0}\n",
        "  - name: all\n    service: orders\n    retry: {on: [5xx], attempts: 2}\n",
    )
    .await;
    let c = client();
    for _ in 0..6 {
        let body = bytes::Bytes::from(vec![b'x'; 10 * 1024]);
        let r = send_body(&c, fe.outbound, "orders", "PUT", "/", &[], body)
            .await
            .expect("put");
        assert_eq!(
            r.status, 200,
            "a 10 KiB body is replayed to the other endpoint"
        );
    }
    let retried = metric(fe.admin, "weft_retries_total", &[("route", "all")]).await;
    assert!(
        retried >= 3.0,
        "half the small PUTs met the bad endpoint first: {retried}"
    );
    let mut failed = 0;
    for _ in 0..6 {
        let body = bytes::Bytes::from(vec![b'x'; 200 * 1024]);
        let r = send_body(&c, fe.outbound, "orders", "PUT", "/", &[], body)
            .await
            .expect("put");
        failed += usize::from(r.status == 500);
    }
    assert!(
        failed >= 3,
        "a 200 KiB body cannot be replayed: {failed} of 6 failed"
    );
    let skipped = metric(
        fe.admin,
        "weft_retries_skipped_total",
        &[("reason", "body_too_large")],
    )
    .await;
    assert_eq!(
        skipped as usize, failed,
        "every unreplayable retry is counted"
    );
    assert_eq!(
        metric(fe.admin, "weft_retries_total", &[("route", "all")]).await,
        retried
    );
    assert!(apps[0].hits() >= 6);
}
