//! `weftctl inject` through the real binary: manifests from standard input or a file, flags
//! reaching the output, and exit statuses. The injection itself is tested in the control
//! plane's `tests/kubernetes/inject.rs`, with the inputs read here.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_control_plane::inject::{inject_yaml, Settings};
use weft_testkit::process::spawn;

/// The control plane's injection inputs (`NAME.yaml`, one per kind).
fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../control-plane/tests/kubernetes/inject")
}

fn input(case: &str) -> String {
    std::fs::read_to_string(dir().join(format!("{case}.yaml"))).expect("read input")
}

fn settings() -> Settings {
    Settings::default()
}

/// `weftctl ARGS < stdin`, guarded and with a deadline; (exit code, stdout, stderr). Standard
/// input, output and error are unnamed temporary files: the guard exposes no stdin pipe, and
/// files never block the child.
fn weftctl(args: &[&str], stdin: &str) -> (i32, String, String) {
    let file = || tempfile::tempfile().expect("temporary file");
    let (mut input, mut out, mut err) = (file(), file(), file());
    input.write_all(stdin.as_bytes()).expect("write stdin");
    input.rewind().expect("rewind stdin");
    let clone = |f: &std::fs::File| f.try_clone().expect("clone file");
    let mut child = spawn(
        Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(args)
            .stdin(input)
            .stdout(clone(&out))
            .stderr(clone(&err)),
    )
    .expect("spawn weftctl");
    let exit = child
        .wait_within(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("weftctl {args:?} still running after 30 s"));
    drop(child);
    let read = |f: &mut std::fs::File| {
        f.rewind().expect("rewind");
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).expect("read");
        String::from_utf8_lossy(&buf).into_owned()
    };
    (exit.code().unwrap_or(-1), read(&mut out), read(&mut err))
}

#[test]
fn weftctl_inject_reads_stdin_writes_stdout() {
    let (code, out, err) = weftctl(&["inject"], &input("deployment"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        inject_yaml(&input("deployment"), &settings()).expect("inject")
    );

    // Flags reach the output; a file works like stdin.
    let file = dir().join("job.yaml");
    let (code, out, err) = weftctl(
        &[
            "inject",
            "-f",
            file.to_str().expect("utf-8 path"),
            "--trust-domain",
            "prod.example",
            "--image",
            "mirror.local/weft-proxy:9",
            "--control-plane",
            "cp.weft-system.svc:7070",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("image: mirror.local/weft-proxy:9"), "{out}");
    assert!(out.contains("spiffe://prod.example/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)"));
    assert!(out.contains("address: cp.weft-system.svc:7070"));

    // Invalid input: exit 1, naming the object and annotation, nothing on stdout.
    let bad = input("deployment").replace(
        "        version: v2\n    spec:",
        "        version: v2\n      annotations:\n        weft.dev/app-port: \"0\"\n    spec:",
    );
    assert_ne!(bad, input("deployment"));
    let (code, out, err) = weftctl(&["inject", "-f", "-"], &bad);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("Deployment shop/orders-v2: annotation weft.dev/app-port"),
        "{err}"
    );
    // A bad flag value is invalid input too; usage errors exit 2.
    let (code, _, err) = weftctl(&["inject", "--trust-domain", "Not A Domain"], "");
    assert_eq!(code, 1, "{err}");
    let (code, _, _) = weftctl(&["inject", "--no-such-flag"], "");
    assert_eq!(code, 2);
    let (code, _, err) = weftctl(&["inject", "-f", "/nonexistent/manifest.yaml"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/manifest.yaml"), "{err}");
}
