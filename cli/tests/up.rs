//! `weft up` for real: the binary starts the embedded control plane, five sidecar processes
//! and four app processes on loopback; traffic must cross every sidecar, a policy edit must
//! move the canary, and Ctrl-C must leave no process and no listener behind.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Sum of `weft_requests_total` series of `direction` in the metrics at `admin`.
fn requests(admin: &str, direction: &str) -> f64 {
    let url = format!("{admin}/metrics");
    let text = http_get(&url).unwrap_or_default();
    let needle = format!("direction=\"{direction}\"");
    text.lines()
        .filter(|l| l.starts_with("weft_requests_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.0 GET (no client crate needed for loopback admin calls).
fn http_get(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie of ours would still count, but weft reaps its
    // children before it exits.
    kill(Pid::from_raw(pid), None).is_ok()
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[test]
fn weft_up_runs_the_shop_follows_a_policy_edit_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(dir.path().join("weft-up.out")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "up",
            "--no-view",
            "--rate",
            "40",
            "--duration",
            "120s",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(log)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft up");
    let up_json = dir.path().join("up.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(v) = read_json(&up_json) {
            break v;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let out = std::fs::read_to_string(dir.path().join("weft-up.out")).unwrap_or_default();
            panic!("weft up exited early ({st}): {out}");
        }
        assert!(Instant::now() < deadline, "weft up never became ready");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sidecars = status["sidecars"].as_array().expect("sidecars").clone();
    assert_eq!(sidecars.len(), 5, "{status:#}");
    let admin = |name: &str| -> String {
        sidecars
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["admin"].as_str())
            .expect("sidecar")
            .to_owned()
    };

    // Traffic crosses every sidecar: each one's counters rise.
    let before: Vec<f64> = sidecars
        .iter()
        .map(|s| {
            let a = s["admin"].as_str().expect("admin");
            requests(a, "inbound") + requests(a, "outbound")
        })
        .collect();
    wait_for(
        "traffic through every sidecar",
        Duration::from_secs(30),
        || {
            sidecars.iter().zip(&before).all(|(s, b)| {
                let a = s["admin"].as_str().expect("admin");
                requests(a, "inbound") + requests(a, "outbound") > b + 5.0
            })
        },
    );
    // Both versions of orders serve at 90/10 (v2 gets some).
    wait_for("orders v2 serving", Duration::from_secs(30), || {
        requests(&admin("orders-v2"), "inbound") > 0.0
    });

    // `weftctl top` (its library code, as the binary runs it) shows what the metrics hold:
    // the generator's 40 requests a second at every hop, all succeeding.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut out = Vec::new();
    // The sidecars are found through the control plane, which they told their admin address.
    let conn = weft_control_plane::ctl::Connection {
        server: status["control_plane"]["admin"].as_str().map(str::to_owned),
        token_file: status["control_plane"]["admin_token_file"]
            .as_str()
            .map(Into::into),
    };
    rt.block_on(weft_control_plane::ctl::run(
        &conn,
        weft_control_plane::ctl::OpsCommand::Top {
            sidecars: Vec::new(),
            interval: Duration::from_secs(3),
            count: Some(1),
        },
        &mut out,
    ))
    .expect("weftctl top");
    let top = String::from_utf8(out).expect("utf-8");
    assert!(top.starts_with("5 sidecars"), "{top}");
    for (from, to) in [
        ("loadgen", "frontend"),
        ("frontend", "orders"),
        ("frontend", "inventory"),
        ("orders", "inventory"),
    ] {
        let row: Vec<&str> = top
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.len() == 10 && c[0] == "outbound" && c[1] == from && c[2] == to)
            .unwrap_or_else(|| panic!("no {from} -> {to} row in\n{top}"));
        let rps: f64 = row[4].parse().expect("rps");
        assert!(
            (25.0..=55.0).contains(&rps),
            "{from} -> {to} at {rps}/s, expected ~40:\n{top}"
        );
        let success: f64 = row[5].trim_end_matches('%').parse().expect("success");
        assert!(success >= 95.0, "{from} -> {to} success {success}%:\n{top}");
    }

    // The canary shift: all of orders to v2. Within a few seconds v1 gets nothing new.
    let policy_dir = status["policy_dir"].as_str().expect("policy dir");
    let routes = Path::new(policy_dir).join("routes.yaml");
    let text = std::fs::read_to_string(&routes).expect("routes");
    let shifted = text.replace(
        "      - {subset: {version: v1}, weight: 90}\n      - {subset: {version: v2}, weight: 10}\n",
        "      - {subset: {version: v2}, weight: 100}\n",
    );
    assert_ne!(text, shifted, "the weights are in routes.yaml as shipped");
    std::fs::write(&routes, shifted).expect("edit routes");
    std::thread::sleep(Duration::from_secs(2));
    let v1 = requests(&admin("orders-v1"), "inbound");
    let v2 = requests(&admin("orders-v2"), "inbound");
    std::thread::sleep(Duration::from_secs(3));
    let v1_after = requests(&admin("orders-v1"), "inbound");
    let v2_after = requests(&admin("orders-v2"), "inbound");
    assert!(
        v2_after - v2 > 20.0,
        "v2 takes the traffic: {v2} -> {v2_after}"
    );
    assert_eq!(v1_after, v1, "v1 gets nothing after the shift");

    // Ctrl-C: every process ends, nothing stays listening.
    let pids: Vec<i32> = status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect();
    assert_eq!(pids.len(), 9, "five sidecars and four apps: {status:#}");
    let weft = i32::try_from(child.id()).expect("pid");
    kill(Pid::from_raw(weft), Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "weft up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "weft up exits 0 on Ctrl-C: {exit}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived weft up");
    }
    let mut addrs: Vec<String> = Vec::new();
    for s in &sidecars {
        for k in ["outbound", "inbound", "app"] {
            addrs.push(s[k].as_str().expect("addr").to_owned());
        }
        addrs.push(
            s["admin"]
                .as_str()
                .expect("admin")
                .trim_start_matches("http://")
                .to_owned(),
        );
    }
    addrs.push(
        status["control_plane"]["listen"]
            .as_str()
            .expect("cp")
            .to_owned(),
    );
    for a in addrs {
        let addr: SocketAddr = a.parse().expect("socket address");
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "{addr} still listening after weft up stopped"
        );
    }
}
