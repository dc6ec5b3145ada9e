//! `weft-bench --captured`, run as a user runs it (the binary, its flags, its report), with
//! windows short enough for the suite: the scenario builds its pods, carries load through
//! capture on both sides and without, and reports both with no error. Not a speed claim (a
//! debug build on a shared machine): the numbers come from release runs (README).

use std::process::Command;

#[test]
fn the_captured_scenario_measures_both_paths_through_real_pods() {
    if !nix_is_root() {
        if std::env::var("WEFT_NO_NETNS").as_deref() == Ok("1") {
            eprintln!("SKIPPED: not root and WEFT_NO_NETNS=1");
            return;
        }
        panic!("the captured scenario needs root (network namespaces, nftables)");
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_weft-bench"))
        .args([
            "--captured",
            "--runs",
            "1",
            "--warmup",
            "200ms",
            "--duration",
            "500ms",
            "--connections",
            "4",
            "--rate",
            "200",
            "--latency-connections",
            "2",
            "--out-dir",
        ])
        .arg(out_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start weft-bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("weft-bench's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weft-bench --captured failed:\n{stderr}"
    );
    let json = std::fs::read_to_string(out_dir.path().join("captured.json")).expect("report");
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    assert_eq!(report["caller_verified"], true, "{report}");
    for variant in ["direct", "mesh"] {
        let run = &report[variant][0];
        assert_eq!(run["errors"], 0, "{variant}: {report}");
        assert!(
            run["rps"].as_f64().unwrap_or(0.0) > 0.0,
            "{variant}: {report}"
        );
        assert!(run["p50_us"].as_f64().is_some(), "{variant}: {report}");
        let cpu = run["cpu_s_per_100k"].as_f64().unwrap_or(0.0);
        assert!(cpu > 0.0, "{variant}: the watched processes' CPU: {report}");
    }
    // perf counted the watched processes' system calls (scripts/setup installs it): the mesh
    // path, with two sidecars, makes more per request than the app alone.
    let syscalls = |variant: &str| {
        report[variant][0]["rate_syscalls_per_req"]
            .as_f64()
            .unwrap_or_else(|| panic!("{variant}: no system call count: {report}"))
    };
    assert!(syscalls("direct") >= 1.0, "{report}");
    assert!(syscalls("mesh") > syscalls("direct"), "{report}");
    let md = std::fs::read_to_string(out_dir.path().join("captured.md")).expect("markdown");
    assert!(md.contains("mesh / direct (paired, median)"), "{md}");
    // The pods are gone with the run.
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    let ours = format!("weftbench-{pid}-");
    assert!(!list.contains(&ours), "{list}");
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
