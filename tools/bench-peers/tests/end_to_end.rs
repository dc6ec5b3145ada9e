//! `weft-bench-peers`, run as a user runs it (the binary, its flags, its reports), with windows
//! short enough for the suite: the sidecar-pair comparison at two fixed rates and saturation
//! for HTTP/1.1 and gRPC, and the gateway scenario. Every column it ran must carry numbers at
//! every point (latency percentiles, CPU per 100k requests, each proxy's RSS, and the paired
//! ratio to the best peer when a peer ran): a missing value fails, it is never read as zero.
//! HAProxy and NGINX are opt-in (`scripts/setup --bench`); without them the report must say
//! they were skipped. Not a speed claim (a debug build on a shared machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("weft-bench-peers-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with the short windows and `extra`; the JSON report `<name>.json`.
fn run(extra: &[&str], name: &str) -> Value {
    let out_dir = TempDir::new(name);
    let out = Command::new(env!("CARGO_BIN_EXE_weft-bench-peers"))
        .args([
            "--runs",
            "1",
            "--warmup",
            "200ms",
            "--duration",
            "600ms",
            "--connections",
            "4",
            "--latency-connections",
            "2",
            "--rates",
            "100,200",
            "--out-dir",
        ])
        .arg(&out_dir.0)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run weft-bench-peers");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weft-bench-peers {extra:?} failed:\n{stderr}"
    );
    let json = std::fs::read_to_string(out_dir.0.join(format!("{name}.json"))).expect("report");
    let md = std::fs::read_to_string(out_dir.0.join(format!("{name}.md"))).expect("markdown");
    assert!(md.contains("100 req/s: p50 / p99 / p99.9 µs"), "{md}");
    assert!(md.contains("100 req/s: syscalls / req"), "{md}");
    serde_json::from_str(&json).expect("JSON report")
}

/// A positive number at `v[key]` (a missing value or null fails).
fn num(v: &Value, key: &str, ctx: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{ctx}: {key} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{ctx}: {key} = {x}");
    x
}

/// Checks one column's points: the two rates then saturation, each with its numbers; the
/// proxies' CPU and RSS unless `direct`, the paired ratios when a peer ran.
fn check_points(points: &Value, ctx: &str, proxies: usize, peer_ran: bool) {
    let points = points
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: no points"));
    let labels: Vec<&str> = points
        .iter()
        .map(|p| p["point"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["100 req/s", "200 req/s", "saturation"], "{ctx}");
    for p in points {
        let ctx = format!("{ctx} at {}", p["point"]);
        num(p, "throughput", &ctx);
        let fixed = p["rate"].is_number();
        if fixed {
            let p50 = num(p, "p50_us", &ctx);
            let p99 = num(p, "p99_us", &ctx);
            assert!(num(p, "p999_us", &ctx) >= p99 && p99 >= p50, "{ctx}: {p}");
        }
        if proxies > 0 {
            num(p, "cpu_per_100k", &ctx);
            // At a low fixed rate requests travel alone, so each wakes the proxies; at
            // saturation one wake-up serves several.
            let wakeups = num(p, "wakeups_per_req", &ctx);
            assert!(!fixed || wakeups > 0.5, "{ctx}: {p}");
            if fixed {
                // Each request is at least a read and a write in each proxy (perf counts them,
                // installed by scripts/setup); and some of their time is the kernel's.
                let syscalls = num(p, "syscalls_per_req", &ctx);
                assert!(syscalls >= 2.0, "{ctx}: {p}");
                // A share of 10 ms ticks in a short window: present, possibly 0.
                let kernel = p["kernel_pct"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{ctx}: no kernel_pct: {p}"));
                assert!((0.0..=100.0).contains(&kernel), "{ctx}: {p}");
            }
            let rss = p["rss_mib"]
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: rss: {p}"));
            assert_eq!(rss.len(), proxies, "{ctx}: {p}");
            assert!(
                rss.iter().all(|r| r.as_f64().is_some_and(|x| x > 1.0)),
                "{ctx}: {p}"
            );
        }
        if peer_ran {
            let r = &p["vs_best_peer"];
            let keys: &[&str] = match (fixed, proxies > 0) {
                (true, true) => &["p50", "p99", "p999", "cpu", "wakeups", "syscalls", "rss"],
                (true, false) => &["p50", "p99", "p999"],
                (false, true) => &["throughput", "cpu", "wakeups", "rss"],
                (false, false) => &["throughput"],
            };
            for k in keys {
                // [median, lowest, highest], each a positive number.
                let v = r[k]
                    .as_array()
                    .unwrap_or_else(|| panic!("{ctx}: ratio {k}: {r}"));
                assert_eq!(v.len(), 3, "{ctx}: {r}");
                assert!(
                    v.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)),
                    "{ctx}: {r}"
                );
            }
        }
    }
}

/// Failed and missed requests of one run's loads (saturation, each rate, TCP).
fn errors(run: &Value) -> u64 {
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
    let mut e = 0;
    for load in ["saturation", "tcp"] {
        if !run[load].is_null() {
            e += n(&run[load]["errors"]);
        }
    }
    for p in run["rates"].as_array().expect("rates") {
        e += n(&p["result"]["errors"]) + n(&p["result"]["missed"]);
    }
    e
}

#[test]
fn pairs_measure_every_rate_and_saturation_with_numbers() {
    let r = run(
        &[
            "--grpc-concurrency",
            "4",
            "--grpc-channels",
            "1",
            "--tcp-connections",
            "1",
        ],
        "peers",
    );
    let found = &r["found"];
    let peers_ran = found["haproxy"].is_string() || found["nginx"].is_string();
    if !peers_ran {
        let skipped = found["skipped"].to_string();
        assert!(
            skipped.contains("haproxy") && skipped.contains("nginx"),
            "{r}"
        );
    }
    for run in r["runs"].as_array().expect("runs") {
        assert_eq!(errors(run), 0, "{run}");
    }
    for w in ["http", "grpc"] {
        let cols = r["summary"][w]
            .as_object()
            .unwrap_or_else(|| panic!("{w}: {r}"));
        assert!(
            cols.contains_key("weft") && cols.contains_key("direct"),
            "{w}: {r}"
        );
        for (col, s) in cols {
            let proxies = if col == "direct" { 0 } else { 2 };
            check_points(&s["points"], &format!("{w} {col}"), proxies, peers_ran);
        }
    }
}

#[test]
fn the_gateway_scenario_measures_weft_and_nginx_at_the_edge() {
    let r = run(&["--gateway"], "gateway");
    let nginx_ran = r["versions"]["nginx"].is_string();
    if !nginx_ran {
        assert!(r["skipped"].to_string().contains("NGINX"), "{r}");
    }
    for run in r["runs"].as_array().expect("runs") {
        assert_eq!(errors(run), 0, "{run}");
    }
    for (table, gw_procs) in [("path", 2), ("edge", 1)] {
        let cols = r[table]
            .as_object()
            .unwrap_or_else(|| panic!("{table}: {r}"));
        check_points(
            &cols["weft-gateway"],
            &format!("{table} weft-gateway"),
            gw_procs,
            nginx_ran,
        );
        if nginx_ran {
            check_points(&cols["nginx"], &format!("{table} nginx"), 1, true);
        }
    }
}
