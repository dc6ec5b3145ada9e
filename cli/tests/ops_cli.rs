//! The operator API and `weftctl`'s operator commands: `weftctl` processes (the real binary)
//! against a control plane on loopback (OS-assigned ports), run in this test's process with
//! the defaults of the `weft-control-plane` binary (cargo builds that binary only for its own
//! crate's tests).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_testkit::process::output_within;

/// A loopback port reserved for this test process (see `weft_testkit::ports`).
fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], weft_testkit::ports::reserve()).into()
}

fn policy(v1: u32, v2: u32) -> String {
    format!(
        "services:\n\
         \x20 - name: frontend\n    identity: spiffe://weft.local/ns/default/sa/frontend\n\
         \x20 - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n\
         routes:\n\
         \x20 - name: orders-split\n    service: orders\n    from: [frontend]\n\
         \x20   backends:\n\
         \x20     - {{subset: {{version: v1}}, weight: {v1}}}\n\
         \x20     - {{subset: {{version: v2}}, weight: {v2}}}\n"
    )
}

const BAD: &str =
    "routes:\n  - name: broken\n    service: orders\n    match: {path: {regex: \"((\"}}\n";

/// A raw HTTP/1.1 request; (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

struct Cp {
    // Declared first, so the control plane stops before its runtime and directory go.
    running: weft_control_plane::server::Running,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    admin: SocketAddr,
}

impl Cp {
    fn start(policy_text: &str) -> Cp {
        Cp::start_bounded(policy_text, Default::default())
    }

    /// [`Cp::start`] with the listeners and hub bounded by `options`.
    fn start_bounded(policy_text: &str, options: weft_control_plane::server::ServeOptions) -> Cp {
        use weft_control_plane::server::{self, ServerConfig};
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy");
        std::fs::create_dir(&policy).expect("mkdir");
        std::fs::write(policy.join("mesh.yaml"), policy_text).expect("write");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // What `weft-control-plane --policy-dir P --state-dir S --listen A --admin B` runs.
        let config = ServerConfig {
            policy_dir: policy,
            state_dir: dir.path().join("state"),
            listen: free_addr(),
            admin: free_addr(),
            trust_domain: "weft.local".to_owned(),
            ca: Default::default(),
            grace: weft_control_plane::push::hub::DEFAULT_GRACE,
            poll_interval: weft_control_plane::policy::source::DEFAULT_POLL_INTERVAL,
            admin_token_file: None,
            cert_lifetime: server::DEFAULT_CERT_LIFETIME,
            kubernetes_tokens: None,
        };
        let running = rt
            .block_on(server::start_bounded(
                config,
                server::PolicyFrom::Directory,
                options,
            ))
            .expect("control plane");
        let admin = running.admin;
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "no admin listener");
            std::thread::sleep(Duration::from_millis(50));
        }
        Cp {
            running,
            _rt: rt,
            dir,
            admin,
        }
    }

    fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policy")
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("state/admin.token")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .expect("token")
            .trim()
            .to_owned()
    }

    fn status(&self) -> serde_json::Value {
        let (code, body) = http(self.admin, "GET", "/v1/status", Some(&self.token()), "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    fn version(&self) -> String {
        self.status()["policy_version"]
            .as_str()
            .expect("version")
            .to_owned()
    }

    /// `weftctl --server ... --token-file ... ARGS` as user alice.
    fn weftctl(&self, args: &[&str]) -> Out {
        let mut full = vec![
            "--server".to_owned(),
            format!("http://{}", self.admin),
            "--token-file".to_owned(),
            self.token_file().display().to_string(),
        ];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        weftctl(&full, &[("USER", "alice")])
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("state/audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn weftctl<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weftctl"));
    cmd.args(args)
        .env_remove("WEFT_SERVER")
        .env_remove("WEFT_ADMIN_TOKEN")
        .env_remove("WEFT_ADMIN_TOKEN_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (exit, stdout, stderr) = output_within(&mut cmd, Duration::from_secs(30));
    Out {
        code: exit.code().expect("exited"),
        stdout,
        stderr,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn the_api_requires_the_admin_token_and_weftctl_exits_2_without_it() {
    let cp = Cp::start(&policy(90, 10));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cp.token_file())
            .expect("token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(cp.token().len() >= 32);

    for path in [
        "/v1/status",
        "/status",
        "/v1/services",
        "/v1/history",
        "/nowhere",
    ] {
        let (code, body) = http(cp.admin, "GET", path, None, "");
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("admin token"), "{body}");
        let (code, _) = http(cp.admin, "GET", path, Some("not-the-token-at-all"), "");
        assert_eq!(code, 401, "{path}");
    }
    let (code, body) = http(cp.admin, "POST", "/v1/apply", None, "{}");
    assert_eq!(code, 401, "{body}");
    // Probes and Prometheus stay open.
    assert_eq!(http(cp.admin, "GET", "/live", None, "").0, 200);
    let (code, metrics) = http(cp.admin, "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    assert!(metrics.contains("weft_cp_policy_valid 1"), "{metrics}");
    // With the token: the old /status too.
    let (code, body) = http(cp.admin, "GET", "/status", Some(&cp.token()), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"policy_version\""), "{body}");

    // Malformed input: 4xx with a reason.
    let t = cp.token();
    let (code, body) = http(cp.admin, "POST", "/v1/apply", Some(&t), "{not json");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad request body"), "{body}");
    let (code, body) = http(
        cp.admin,
        "POST",
        "/v1/apply",
        Some(&t),
        r#"{"files": {"../escape.yaml": "services: []"}}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("file name"), "{body}");
    // Validate through the API: errors with file, line and reason; nothing written.
    let files = serde_json::json!({"files": {"zz-bad.yaml": BAD}}).to_string();
    let (code, body) = http(cp.admin, "POST", "/v1/validate", Some(&t), &files);
    assert_eq!(code, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["errors"][0]["file"], "zz-bad.yaml", "{v}");
    assert_eq!(v["errors"][0]["line"], 4, "{v}");
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .expect("reason")
            .contains("regex"),
        "{v}"
    );
    assert!(!cp.policy_dir().join("zz-bad.yaml").exists());
    let files = serde_json::json!({"files": {"mesh.yaml": policy(50, 50)}}).to_string();
    let (code, body) = http(cp.admin, "POST", "/v1/validate", Some(&t), &files);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"valid\": true"), "{body}");
    assert_eq!(
        std::fs::read_to_string(cp.policy_dir().join("mesh.yaml")).expect("read"),
        policy(90, 10)
    );
    let (code, body) = http(cp.admin, "GET", "/v1/apply", Some(&t), "");
    assert_eq!(code, 405, "{body}");
    let (code, _) = http(cp.admin, "POST", "/v1/apply?dry_run=maybe", Some(&t), "{}");
    assert_eq!(code, 400);
    assert!(!cp.policy_dir().join("escape.yaml").exists());
    assert!(!cp.dir.path().join("escape.yaml").exists());

    // weftctl: a wrong token, no token, no server: all exit 2.
    let wrong = write(
        cp.dir.path(),
        "wrong.token",
        "wrong-token-of-enough-length\n",
    );
    let server = format!("http://{}", cp.admin);
    let out = weftctl(
        &["--server", &server, "--token-file", &wrong, "status"],
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("authentication refused"),
        "{}",
        out.stderr
    );
    let out = weftctl(&["--server", &server, "status"], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no admin token"), "{}", out.stderr);
    let closed = format!("http://{}", free_addr());
    let token = cp.token();
    let out = weftctl(
        &["--server", &closed, "status"],
        &[("WEFT_ADMIN_TOKEN", &token)],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    // The token from the environment, the server too.
    let out = weftctl(
        &["status"],
        &[("WEFT_ADMIN_TOKEN", &token), ("WEFT_SERVER", &server)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("policy version "), "{}", out.stdout);
    // Usage errors: 2.
    assert_eq!(weftctl(&["apply"], &[]).code, 2);
    assert_eq!(
        weftctl(&["get", "pods"], &[]).code,
        1,
        "a bad value is invalid input"
    );
    assert_eq!(weftctl(&["frobnicate"], &[]).code, 2);
}

#[test]
fn validate_offline_names_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = write(tmp.path(), "mesh.yaml", &policy(90, 10));
    let out = weftctl(&["validate", &good], &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("valid: 1 files, 2 services, 1 routes"),
        "{}",
        out.stdout
    );

    let bad = write(tmp.path(), "zz-bad.yaml", BAD);
    let out = weftctl(&["validate", &good, &bad], &[]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("zz-bad.yaml:4:"), "{}", out.stdout);
    assert!(out.stdout.contains("regex"), "{}", out.stdout);
    assert!(out.stderr.contains("invalid"), "{}", out.stderr);

    // Files are validated together: a route to a service no file defines.
    let out = weftctl(&["validate", &bad], &[]);
    assert_eq!(out.code, 1);
    let missing = tmp.path().join("missing.yaml");
    let out = weftctl(&["validate", missing.to_str().expect("utf8")], &[]);
    assert_eq!(out.code, 2, "an unreadable file: {}", out.stderr);
}

#[test]
fn apply_dry_run_history_audit_invalid_apply_and_rollback() {
    let cp = Cp::start(&policy(90, 10));
    let original = policy(90, 10);
    let v0 = cp.version();
    let tmp = tempfile::tempdir().expect("tempdir");

    // Dry run: a diff and a summary; nothing written, nothing changed.
    let changed = write(tmp.path(), "mesh.yaml", &policy(10, 90));
    let out = cp.weftctl(&["apply", "-f", &changed, "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("--- a/mesh.yaml\n+++ b/mesh.yaml\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("-      - {subset: {version: v1}, weight: 90}"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("+      - {subset: {version: v1}, weight: 10}"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("routes changed: orders-split"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("nothing written"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(cp.policy_dir().join("mesh.yaml")).expect("read"),
        original
    );
    assert_eq!(cp.version(), v0);
    assert_eq!(
        cp.audit().len(),
        1,
        "a dry run is not audited: only the start"
    );
    assert_eq!(cp.audit()[0]["from_version"], serde_json::Value::Null);

    // Apply: in force at once, in history and the audit log with the actor.
    let out = cp.weftctl(&["apply", "-f", &changed]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v1 = cp.version();
    assert_ne!(v1, v0);
    assert!(
        out.stdout
            .contains(&format!("applied: version {v0} -> {v1}")),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_to_string(cp.policy_dir().join("mesh.yaml")).expect("read"),
        policy(10, 90)
    );
    let out = cp.weftctl(&["history"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert!(rows[0].starts_with("SEQ"), "{}", out.stdout);
    assert!(
        rows[1].contains(&v1) && rows[1].contains("admin (alice)") && rows[1].ends_with("apply"),
        "{}",
        out.stdout
    );
    assert!(
        rows[2].contains(&v0)
            && rows[2].contains("policy-directory")
            && rows[2].ends_with("file-change"),
        "{}",
        out.stdout
    );
    let audit = cp.audit();
    let last = audit.last().expect("audit");
    assert_eq!(last["actor"], "admin (alice)");
    assert_eq!(last["action"], "apply");
    assert_eq!(last["from_version"], v0.as_str());
    assert_eq!(last["to_version"], v1.as_str());
    assert_eq!(last["files"], serde_json::json!(["mesh.yaml"]));
    assert!(humantime::parse_rfc3339(last["time"].as_str().expect("time")).is_ok());

    // An invalid apply: refused with file and line; the last good version stays; audited.
    let bad = write(tmp.path(), "zz-bad.yaml", BAD);
    let out = cp.weftctl(&["apply", "-f", &bad]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("zz-bad.yaml:4:"), "{}", out.stdout);
    assert_eq!(cp.version(), v1);
    assert!(!cp.policy_dir().join("zz-bad.yaml").exists());
    let last = cp.audit().pop().expect("audit");
    assert_eq!(last["action"], "rejected");
    assert_eq!(last["to_version"], serde_json::Value::Null);
    assert!(
        last["error"]
            .as_str()
            .expect("error")
            .contains("zz-bad.yaml:4:"),
        "{last}"
    );

    // A second file: a new route.
    let extra = write(
        tmp.path(),
        "extra.yaml",
        "routes:\n  - name: orders-api\n    service: orders\n    match: {path: {prefix: /api}}\n",
    );
    let out = cp.weftctl(&["apply", "-f", &extra, &changed]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v2 = cp.version();
    assert_ne!(v2, v1);
    let out = cp.weftctl(&["get", "routes"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("NAME "), "{}", out.stdout);
    assert!(out.stdout.contains("orders-api"), "{}", out.stdout);
    assert!(out.stdout.contains("path prefix /api"), "{}", out.stdout);
    assert!(
        out.stdout.contains("version=v1:10 version=v2:90"),
        "{}",
        out.stdout
    );
    let out = cp.weftctl(&["get", "services"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("frontend")
            && out
                .stdout
                .contains("spiffe://weft.local/ns/default/sa/orders"),
        "{}",
        out.stdout
    );
    let out = cp.weftctl(&["get", "endpoints"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("SERVICE"), "{}", out.stdout);

    // Rollback to the first version: exactly its files (extra.yaml removed), its version.
    let out = cp.weftctl(&["rollback", &v0]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("rolled back: version {v2} -> {v0}")),
        "{}",
        out.stdout
    );
    assert_eq!(cp.version(), v0);
    let mut names: Vec<String> = std::fs::read_dir(cp.policy_dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["mesh.yaml"]);
    assert_eq!(
        std::fs::read_to_string(cp.policy_dir().join("mesh.yaml")).expect("read"),
        original
    );
    let last = cp.audit().pop().expect("audit");
    assert_eq!(last["action"], "rollback");
    assert_eq!(
        last["files"],
        serde_json::json!(["extra.yaml", "mesh.yaml"])
    );
    let out = cp.weftctl(&["rollback", "0000000000000000"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no policy version"), "{}", out.stderr);

    // An edit in the directory: recorded as the directory's.
    std::fs::write(cp.policy_dir().join(".tmp"), policy(50, 50)).expect("write");
    std::fs::rename(
        cp.policy_dir().join(".tmp"),
        cp.policy_dir().join("mesh.yaml"),
    )
    .expect("rename");
    // The status shows the new version a moment before the history records it (the hub takes
    // the policy first, then the history is written): wait for both.
    let deadline = Instant::now() + Duration::from_secs(5);
    let out = loop {
        let version = cp.version();
        if version != v0 {
            let out = cp.weftctl(&["history"]);
            if out
                .stdout
                .lines()
                .nth(1)
                .is_some_and(|row| row.contains(&version))
            {
                break out;
            }
        }
        assert!(
            Instant::now() < deadline,
            "edit not seen: {}",
            cp.running.hub.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let newest = out.stdout.lines().nth(1).expect("row");
    assert!(
        newest.contains("policy-directory") && newest.ends_with("file-change"),
        "{}",
        out.stdout
    );
    // A refused edit in the directory: audited as the directory's, with the error.
    std::fs::write(cp.policy_dir().join("zz-bad.yaml"), BAD).expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = cp.audit().pop().expect("audit");
        if last["action"] == "rejected" && last["actor"] == "policy-directory" {
            assert!(
                last["error"]
                    .as_str()
                    .expect("error")
                    .contains("zz-bad.yaml:4:"),
                "{last}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "refusal not audited: {last}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(cp.policy_dir().join("zz-bad.yaml")).expect("remove");
    let kept = std::fs::read_dir(cp.dir.path().join("state/history"))
        .expect("history")
        .count();
    assert_eq!(kept, 5, "one file per accepted version");
}

/// A policy whose snapshots the hub refuses as too large is refused before anything is
/// written: the operator reads why, the directory, the version in force and the history stay.
#[test]
fn apply_over_the_snapshot_limit_writes_nothing() {
    let original = policy(90, 10);
    let cp = Cp::start_bounded(
        &original,
        weft_control_plane::server::ServeOptions {
            hub: weft_control_plane::push::hub::HubLimits {
                max_snapshot_bytes: 4096,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let v0 = cp.version();
    let history = cp.weftctl(&["history"]).stdout;
    let tmp = tempfile::tempdir().expect("tempdir");
    // 100 more services: every one a destination in each service's snapshot.
    let services: String = (0..100)
        .map(|i| format!("  - name: s{i}\n    identity: spiffe://weft.local/ns/default/sa/s{i}\n"))
        .collect();
    let big = original.replacen("routes:\n", &format!("{services}routes:\n"), 1);
    let file = write(tmp.path(), "mesh.yaml", &big);
    for dry in [false, true] {
        let mut args = vec!["apply", "-f", file.as_str()];
        if dry {
            args.push("--dry-run");
        }
        let out = cp.weftctl(&args);
        assert_eq!(out.code, 1, "dry run {dry}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("over the limit of 4096"),
            "dry run {dry}: {}",
            out.stdout
        );
        assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(cp.policy_dir().join("mesh.yaml")).expect("read"),
        original,
        "the refused policy was written"
    );
    assert_eq!(cp.version(), v0);
    assert_eq!(cp.weftctl(&["history"]).stdout, history);
    let last = cp.audit().pop().expect("audit");
    assert_eq!(last["action"], "rejected", "{last}");
}
