//! `weft up` for real: the binary starts the embedded control plane, five sidecar processes,
//! four app processes and a gateway in front of frontend (joining the control plane as the
//! sidecars do), in each mode: on loopback (`--loopback`), and captured, each instance in a
//! network namespace of its own with the apps calling each other by name.
//! Traffic must cross every sidecar, a policy edit must move the canary, the printed `curl`
//! line must reach frontend through the gateway (and fail without its token), and Ctrl-C must leave
//! no process, no listener and (captured) no namespace behind.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_testkit::process::Guard;

/// Sum of `weft_requests_total` series of `direction` in the metrics at `admin`; `None` when
/// the sidecar does not answer or has no such series (never read as 0).
fn try_requests(admin: &str, direction: &str) -> Option<f64> {
    try_requests_with(admin, &[("direction", direction)])
}

/// Sum of `weft_requests_total` series with all of `labels`.
fn try_requests_with(admin: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let url = format!("{admin}/metrics");
    let text = http_get(&url)?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with("weft_requests_total{")
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// [`try_requests`] where the series must exist: a missing metric fails the test.
fn requests(admin: &str, direction: &str) -> f64 {
    try_requests(admin, direction)
        .unwrap_or_else(|| panic!("no weft_requests_total{{direction=\"{direction}\"}} at {admin}"))
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
    weft_testkit::wait::until(what, limit, || ok().then_some(()));
}

/// The policy version a sidecar serves, from its `/ready` (`ready v<N>`).
fn version(admin: &str) -> Option<u64> {
    http_get(&format!("{admin}/ready"))?
        .rsplit('v')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `weft up --no-view` at `rate` requests a second with `extra` options, its files in `dir`,
/// its output to `stdout`; guarded, with SIGTERM if this test process dies, so that weft up
/// stops its own sidecars and apps (they are in its process group, which the guard also kills
/// at the end).
fn weft_up(dir: &Path, rate: u32, stdout: Stdio, extra: &[&str]) -> Guard {
    weft_testkit::process::spawn_with(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["up", "--no-view", "--duration", "120s", "--rate"])
            .arg(rate.to_string())
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .stdout(stdout)
            // Kept for the failure message: why weft up ended, when it ends early.
            .stderr(
                std::fs::File::create(dir.join("weft-up.err"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            ),
        Signal::SIGTERM,
    )
    .expect("spawn weft up")
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie of ours would still count, but weft reaps its
    // children before it exits.
    kill(Pid::from_raw(pid), None).is_ok()
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Waits for `up.json` of the `weft up` in `dir`; fails with its output if it exits first.
fn wait_up(dir: &Path, child: &mut Guard) -> serde_json::Value {
    let up_json = dir.join("up.json");
    weft_testkit::wait::until("weft up to be ready", Duration::from_secs(90), || {
        let ready = read_json(&up_json);
        if let (None, Some(st)) = (&ready, child.status()) {
            let out = std::fs::read_to_string(dir.join("weft-up.out")).unwrap_or_default();
            let err = std::fs::read_to_string(dir.join("weft-up.err")).unwrap_or_default();
            panic!("weft up exited early ({st}): {out}\n{err}");
        }
        ready
    })
}

/// Every sidecar's request counters rise: traffic crosses each of them.
fn traffic_through_every_sidecar(sidecars: &[serde_json::Value]) {
    let total = |s: &serde_json::Value| {
        let a = s["admin"].as_str().expect("admin");
        // Before the first request a sidecar may have no series yet: that start is 0.
        try_requests(a, "inbound").unwrap_or(0.0) + try_requests(a, "outbound").unwrap_or(0.0)
    };
    let before: Vec<f64> = sidecars.iter().map(total).collect();
    wait_for(
        "traffic through every sidecar",
        Duration::from_secs(30),
        || {
            sidecars
                .iter()
                .zip(&before)
                .all(|(s, b)| total(s) > b + 5.0)
        },
    );
}

/// The failure drill's sibling, the canary shift: all of orders to v2 by editing routes.yaml.
/// Within a few seconds v1 gets nothing new.
fn canary_shift(status: &serde_json::Value, admin: &dyn Fn(&str) -> String) {
    let policy_dir = status["policy_dir"].as_str().expect("policy dir");
    let routes = Path::new(policy_dir).join("routes.yaml");
    let text = std::fs::read_to_string(&routes).expect("routes");
    let shifted = text.replace(
        "      - {subset: {version: v1}, weight: 90}\n      - {subset: {version: v2}, weight: 10}\n",
        "      - {subset: {version: v2}, weight: 100}\n",
    );
    assert_ne!(text, shifted, "the weights are in routes.yaml as shipped");
    let frontend = admin("frontend");
    let before = version(&frontend).expect("frontend's policy version");
    std::fs::write(&routes, shifted).expect("edit routes");
    // The event: the frontend sidecar serves the new policy version. Then a few requests on v2
    // show the new split in force (and outlast any request routed before it), after which v1
    // must get nothing while v2 takes more than 20.
    wait_for(
        "the frontend to serve the edited policy",
        Duration::from_secs(30),
        || version(&frontend).is_some_and(|v| v > before),
    );
    let v2_at_switch = requests(&admin("orders-v2"), "inbound");
    wait_for(
        "v2 to take requests under the new split",
        Duration::from_secs(30),
        || requests(&admin("orders-v2"), "inbound") > v2_at_switch + 5.0,
    );
    let v1 = requests(&admin("orders-v1"), "inbound");
    let v2 = requests(&admin("orders-v2"), "inbound");
    wait_for(
        "v2 to take 20 more requests",
        Duration::from_secs(30),
        || requests(&admin("orders-v2"), "inbound") - v2 > 20.0,
    );
    let v1_after = requests(&admin("orders-v1"), "inbound");
    assert_eq!(v1_after, v1, "v1 gets nothing after the shift");
}

/// The pids of the sidecars and apps in `up.json`.
fn process_ids(status: &serde_json::Value) -> Vec<i32> {
    status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect()
}

/// SIGINT (Ctrl-C) to weft up: it exits 0 within 30 s and every process it started is gone.
fn ctrl_c(child: &mut Guard, status: &serde_json::Value) {
    let pids = process_ids(status);
    assert_eq!(
        pids.len(),
        10,
        "five sidecars, four apps and the gateway: {status:#}"
    );
    let weft = i32::try_from(child.id()).expect("pid");
    kill(Pid::from_raw(weft), Signal::SIGINT).expect("SIGINT");
    let exit = child
        .wait_within(Duration::from_secs(30))
        .expect("weft up did not stop within 30 s of Ctrl-C");
    assert!(exit.success(), "weft up exits 0 on Ctrl-C: {exit}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived weft up");
    }
}

/// `weft up`'s gateway in front of frontend: the `curl` line it printed (run as printed, by a
/// shell) gets frontend's answer through the gateway with the demo token; without the token,
/// or with it tampered with, the gateway answers 401.
fn through_the_gateway(status: &serde_json::Value, out_file: &Path) {
    let line = status["gateway"]["curl"]
        .as_str()
        .expect("gateway curl line");
    let out = std::fs::read_to_string(out_file).unwrap_or_default();
    assert!(out.contains(line), "weft up prints the curl line:\n{out}");
    let token = status["gateway"]["token"].as_str().expect("token");
    assert!(line.contains(token) && line.contains("--cacert"), "{line}");
    let run = |line: &str| -> (u16, String) {
        let (exit, out, err) = weft_testkit::process::output_within(
            Command::new("sh")
                .arg("-c")
                .arg(format!("{line} -sS -m 10 -w '\\n%{{http_code}}'")),
            Duration::from_secs(20),
        );
        assert!(exit.success(), "{line}: {err}");
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    };
    // Right after start frontend's first calls may still be opening connections: the first
    // 200 within a bound, then every answer is checked.
    let body = weft_testkit::wait::until(
        "frontend through the gateway",
        Duration::from_secs(30),
        || {
            let (code, body) = run(line);
            (code == 200).then_some(body)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("frontend's JSON");
    assert_eq!(v["served_by"], "frontend", "{body}");
    let without = line.replace(&format!("-H 'Authorization: Bearer {token}' "), "");
    assert_ne!(without, line);
    let (code, body) = run(&without);
    assert_eq!(code, 401, "no token: {body}");
    let tampered = line.replace(token, &format!("{token}x"));
    assert_eq!(run(&tampered).0, 401, "a tampered token");
}

/// What `weft up` with PID `pid` created and left: namespaces and `/etc/netns` directories.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("weftup-{pid}-");
    ["/run/netns", "/etc/netns"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn weft_up_runs_the_shop_follows_a_policy_edit_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(dir.path().join("weft-up.out")).expect("log");
    let mut child = weft_up(dir.path(), 40, log.into(), &["--loopback"]);
    let status = wait_up(dir.path(), &mut child);
    assert_eq!(status["mode"], "loopback", "{status:#}");
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

    traffic_through_every_sidecar(&sidecars);
    // Both versions of orders serve at 90/10 (v2 gets some).
    wait_for("orders v2 serving", Duration::from_secs(30), || {
        try_requests(&admin("orders-v2"), "inbound").is_some_and(|n| n > 0.0)
    });

    // `weftctl top` (its library code, as the binary runs it) shows what the metrics hold:
    // the generator's 40 requests a second at every hop, all succeeding.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut out = Vec::new();
    // The sidecars are found through the control plane, which they told their admin address.
    let conn = weft_control_plane::operator::client::Connection {
        server: status["control_plane"]["admin"].as_str().map(str::to_owned),
        token_file: status["control_plane"]["admin_token_file"]
            .as_str()
            .map(Into::into),
    };
    rt.block_on(weft_cli::ctl::run(
        &conn,
        weft_cli::ctl::Command::Top {
            sidecars: Vec::new(),
            interval: Duration::from_secs(3),
            count: Some(1),
        },
        &mut out,
    ))
    .expect("weftctl top");
    let top = String::from_utf8(out).expect("utf-8");
    // The five sidecars and the gateway, which joins the control plane as they do.
    assert!(top.starts_with("6 sidecars"), "{top}");
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

    canary_shift(&status, &admin);
    through_the_gateway(&status, &dir.path().join("weft-up.out"));

    // Ctrl-C: every process ends, nothing stays listening.
    ctrl_c(&mut child, &status);
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
        status["gateway"]["https"]
            .as_str()
            .expect("gateway")
            .to_owned(),
    );
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

/// A SIGTERM that arrives while `weft up` is still starting the mesh (the sidecars and apps
/// half started) stops everything it started: nothing of its process group is left. Before
/// the stop signals were registered at the very start, the default action ended `weft up` at
/// once and orphaned what it had started.
#[test]
fn weft_up_stopped_during_start_up_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Whichever mode this machine gives (captured when root).
    let mut child = weft_up(dir.path(), 5, Stdio::null(), &[]);
    // The first process it started is the moment: `up.json` is written only once all ten
    // are ready, so the mesh is still starting.
    weft_testkit::wait::until(
        "weft up to start its first process",
        Duration::from_secs(60),
        || (child.group_members().len() >= 2).then_some(()),
    );
    assert!(
        !dir.path().join("up.json").exists(),
        "still starting when signalled"
    );
    child.signal(Signal::SIGTERM);
    let exit = child
        .wait_within(Duration::from_secs(60))
        .expect("weft up did not stop within 60 s of SIGTERM");
    assert!(exit.success(), "weft up exits 0 on SIGTERM: {exit}");
    let left = child.group_members();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let left = leftovers(child.id());
    assert!(left.is_empty(), "namespaces or files left behind: {left:?}");
}

/// Captured mode: each instance in a network namespace of its own (`weft-proxy init`), the
/// apps started with no proxy setting, calling `http://orders:8080` and `inventory:8080` by
/// name. Their calls cross mTLS (the callee's sidecar counts the caller's identity), the
/// canary shift works, and Ctrl-C leaves no process and no namespace. A namespace left by an
/// earlier run that died is removed at start; one of a live run is not.
#[test]
fn weft_up_captured_apps_call_by_name_over_mtls_and_leave_nothing_behind() {
    if std::env::var("WEFT_NO_NETNS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: WEFT_NO_NETNS=1 says this machine cannot have network namespaces");
        return;
    }
    // A crashed run's namespace: named with the PID of a process that has exited.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let dead = gone.id();
    gone.wait().expect("wait true");
    let stale = format!("weftup-{dead}-node");
    let (ok, _, err) = weft_testkit::process::output_within(
        Command::new("ip").args(["netns", "add", &stale]),
        Duration::from_secs(20),
    );
    assert!(ok.success(), "ip netns add (run as root): {err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(dir.path().join("weft-up.out")).expect("log");
    let mut child = weft_up(dir.path(), 40, log.into(), &[]);
    let status = wait_up(dir.path(), &mut child);
    let out = std::fs::read_to_string(dir.path().join("weft-up.out")).unwrap_or_default();
    assert_eq!(status["mode"], "captured", "{out}\n{status:#}");
    assert!(out.contains("captured mode"), "{out}");
    assert!(
        !leftovers(dead).contains(&stale),
        "the dead run's namespace is removed at start"
    );
    let sidecars = status["sidecars"].as_array().expect("sidecars").clone();
    let admin = |name: &str| -> String {
        sidecars
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["admin"].as_str())
            .expect("sidecar")
            .to_owned()
    };

    // Each app runs in its own pod's namespace, with no proxy setting at all.
    for p in status["processes"].as_array().expect("processes") {
        let (name, pid) = (p["name"].as_str().expect("name"), p["pid"].as_i64());
        let pid = pid.expect("pid");
        let (ok, ns, _) = weft_testkit::process::output_within(
            Command::new("ip").args(["netns", "identify", &pid.to_string()]),
            Duration::from_secs(20),
        );
        // The gateway runs in the node namespace (the bridge's), every other one in its pod.
        let instance = match name {
            "gateway" => "node",
            _ => name.split(' ').next().expect("instance"),
        };
        assert!(
            ok.success() && ns.trim() == format!("weftup-{}-{instance}", child.id()),
            "{name} runs in {ns:?}"
        );
        if name.ends_with(" app") {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
            let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
            assert!(
                argv.contains("--no-proxy") && !argv.contains("--proxy "),
                "{argv}"
            );
        }
    }

    traffic_through_every_sidecar(&sidecars);
    // The calls the apps made by name crossed mTLS: each callee's sidecar saw the caller's
    // identity.
    for (callee, caller) in [
        ("frontend", "loadgen"),
        ("orders-v1", "frontend"),
        ("inventory", "frontend"),
        ("inventory", "orders"),
    ] {
        let who = format!("spiffe://weft.local/ns/default/sa/{caller}");
        wait_for(
            &format!("{callee} to count calls from {caller}"),
            Duration::from_secs(30),
            || {
                try_requests_with(
                    &admin(callee),
                    &[("direction", "inbound"), ("caller", &who)],
                )
                .is_some_and(|n| n > 5.0)
            },
        );
    }
    canary_shift(&status, &admin);
    through_the_gateway(&status, &dir.path().join("weft-up.out"));

    ctrl_c(&mut child, &status);
    let left = leftovers(child.id());
    assert!(left.is_empty(), "namespaces or files left behind: {left:?}");
}
