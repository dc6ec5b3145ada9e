//! The control plane's policy source: a directory of YAML files, validated with the sidecar's
//! own code, watched for changes, errors with file, line and reason, the last good policy kept,
//! and one snapshot per calling service that the sidecar's code path accepts.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use weft_control_plane::policy::mesh::{MeshPolicy, PolicyError, PolicyErrors};
use weft_control_plane::policy::source::{DirSource, LastGood, PolicySource, Update};
use weft_policy::wire::PolicySnapshot;

const SERVICES: &str = "\
services:
  - name: frontend
    identity: spiffe://weft.local/ns/default/sa/frontend
  - name: orders
    identity: spiffe://weft.local/ns/default/sa/orders
    endpoints:
      - {address: 127.0.0.1:16006, labels: {version: v1}}
      - {address: 127.0.0.1:17006, labels: {version: v2}}
    outlier_detection: {consecutive_failures: 5, failures: 5xx}
  - name: inventory
    identity: spiffe://weft.local/ns/default/sa/inventory
    protocol: grpc
    port: 9003
    endpoints:
      - address: 127.0.0.1:18006
  - name: batch
    identity: spiffe://weft.local/ns/default/sa/batch
";

const ROUTES: &str = "\
routes:
  - name: orders-api
    service: orders
    from: [frontend]
    match:
      path: {prefix: /api}
    backends:
      - {subset: {version: v1}, weight: 90}
      - {subset: {version: v2}, weight: 10}
    timeout: 2s
    retry: {on: [gateway-error], attempts: 3, per_try_timeout: 500ms}
  - name: orders-batch
    service: orders
    from: [batch]
    backends: [{subset: {version: v1}}]
";

const INVENTORY: &str = "\
routes:
  - name: stock
    service: inventory
    from: [orders]
    match: {path: {prefix: /shop.inventory.v1.Inventory}}
    retry: {grpc_codes: [unavailable]}
authorization:
  - service: inventory
    default: deny
    rules:
      - {name: orders, from: [spiffe://weft.local/ns/default/sa/orders]}
";

const AUTHZ: &str = "\
# orders takes calls from the frontend and batch only
authorization:
  - service: orders
    default: deny
    rules:
      - name: frontend
        from: [spiffe://weft.local/ns/default/sa/frontend]
        paths: [/api]
      - name: batch
        from: [spiffe://weft.local/ns/default/sa/batch]
";

/// A policy directory: `10-services.yaml`, `20-routes.yaml`, `30-inventory.yml`,
/// `40-authz.yaml`, and files that are not policy.
fn shop() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "10-services.yaml", SERVICES);
    write(dir.path(), "20-routes.yaml", ROUTES);
    write(dir.path(), "30-inventory.yml", INVENTORY);
    write(dir.path(), "40-authz.yaml", AUTHZ);
    // Not policy: other extensions, hidden files, subdirectories.
    write(dir.path(), "README.md", "routes: [oops");
    write(dir.path(), ".20-routes.yaml.swp", "routes: [oops");
    std::fs::create_dir(dir.path().join("old")).expect("mkdir");
    write(&dir.path().join("old"), "x.yaml", "routes: [oops");
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write");
}

fn load(dir: &Path) -> Result<MeshPolicy, PolicyErrors> {
    DirSource::new(dir).load()
}

#[test]
fn a_directory_of_several_files_loads() {
    let dir = shop();
    let p = load(dir.path()).expect("valid");
    let names: Vec<&str> = p.services().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["frontend", "orders", "inventory", "batch"]);
    let routes: Vec<&str> = p.routes().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        routes,
        ["orders-api", "orders-batch", "stock"],
        "file order"
    );
    assert_eq!(p.authorization().len(), 2);
    let files: Vec<String> = p
        .files()
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        [
            "10-services.yaml",
            "20-routes.yaml",
            "30-inventory.yml",
            "40-authz.yaml"
        ]
    );
    assert_eq!(p.version().len(), 16);
    assert_eq!(load(dir.path()).expect("valid").version(), p.version());

    // An empty file (or only comments) is an empty part of the policy.
    write(dir.path(), "50-empty.yaml", "# nothing yet\n");
    assert_eq!(load(dir.path()).expect("valid").version(), p.version());
}

#[test]
fn a_directory_without_policy_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = load(dir.path()).expect_err("empty");
    assert!(e.to_string().contains("no policy files"), "{e}");
    let e = load(&dir.path().join("missing")).expect_err("missing");
    assert!(e.to_string().contains("cannot read directory"), "{e}");
}

#[test]
fn the_watcher_sees_a_route_weight_change() {
    let dir = shop();
    let source = DirSource::new(dir.path()).with_interval(Duration::from_millis(50));
    let (tx, rx) = mpsc::channel();
    let watch = source
        .watch(Box::new(move || {
            let _ = tx.send(());
        }))
        .expect("watch");
    let before = source.load().expect("valid");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "no change, no notification"
    );

    // Same size, possibly the same modification time: the content decides.
    write(
        dir.path(),
        "20-routes.yaml",
        &ROUTES
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50"),
    );
    rx.recv_timeout(Duration::from_secs(2))
        .expect("change noticed");
    let after = source.load().expect("valid");
    let weights: Vec<Option<u32>> = after.routes()[0]
        .backends
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(weights, [Some(50), Some(50)]);
    assert_ne!(after.version(), before.version());

    // A new file is a change too; after the watch is dropped nothing more is said.
    write(dir.path(), "60-more.yaml", "routes: []\n");
    rx.recv_timeout(Duration::from_secs(2)).expect("new file");
    drop(watch);
    write(dir.path(), "61-more.yaml", "routes: []\n");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

/// The errors of the shop with one more file, `90-change.yaml`.
fn errors_with(change: &str) -> Vec<PolicyError> {
    let dir = shop();
    write(dir.path(), "90-change.yaml", change);
    let errors = load(dir.path()).expect_err("invalid").0;
    for e in &errors {
        assert!(e.file.ends_with("90-change.yaml"), "{e}");
    }
    errors
}

fn line(e: &PolicyError) -> usize {
    e.location.expect("a location").0
}

#[test]
fn a_syntax_error_has_file_line_and_reason() {
    let errors = errors_with("routes:\n  - name: a\n    service: orders\n   backends: []\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(line(e), 4);
    assert!(e.field.is_none());
    let text = e.to_string();
    assert!(text.contains("90-change.yaml:4:"), "{text}");
    assert!(
        !text.contains("at line 4 column"),
        "the location once, in front: {text}"
    );
    assert!(text.contains("did not find expected"), "{text}");
}

#[test]
fn an_unknown_field_has_file_line_and_reason() {
    let errors = errors_with("routes:\n  - name: a\n    service: orders\n    weigth: 3\n");
    let e = &errors[0];
    assert_eq!(line(e), 4);
    assert!(e.reason.contains("unknown field `weigth`"), "{e}");
}

#[test]
fn an_unknown_service_in_a_route_has_file_line_and_reason() {
    let errors = errors_with(
        "# a second route file\nroutes:\n  - {name: ok, service: orders, from: [frontend], match: {path: {exact: /x}}}\n  - name: typo\n    service: ordres\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.field.as_deref(), Some("routes[1].service"), "{e}");
    assert_eq!(e.location, Some((5, 14)));
    assert!(e.reason.contains("unknown service \"ordres\""), "{e}");
    assert!(
        e.to_string()
            .ends_with("90-change.yaml:5:14: routes[1].service: unknown service \"ordres\""),
        "{e}"
    );
}

#[test]
fn a_bad_regex_has_file_line_and_reason() {
    let errors = errors_with(
        "routes:\n  - name: re\n    service: orders\n    from: [frontend]\n    match:\n      path:\n        regex: \"/items/((\"\n",
    );
    let e = &errors[0];
    assert_eq!(e.field.as_deref(), Some("routes[0].match.path.regex"));
    assert_eq!(line(e), 7);
    assert!(e.reason.contains("bad regex"), "{e}");
}

#[test]
fn a_shadowed_route_in_a_second_file_has_file_line_and_reason() {
    // 20-routes.yaml sends every request from batch to v1 first; a later batch route to orders
    // can never match.
    let errors = errors_with(
        "routes:\n  - name: batch-reports\n    service: orders\n    from: [batch, frontend]\n    match: {path: {prefix: /reports}}\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.field.as_deref(), Some("routes[0].match"));
    assert_eq!(line(e), 5);
    assert!(
        e.reason.contains(
            "shadowed: route \"orders-batch\" before it matches every request for callers batch"
        ),
        "{e}"
    );
}

#[test]
fn every_error_of_every_file_is_reported() {
    let dir = shop();
    write(dir.path(), "90-a.yaml", "routes: [");
    write(
        dir.path(),
        "91-b.yaml",
        "services:\n  - name: x\n    colour: red\n",
    );
    let errors = load(dir.path()).expect_err("invalid").0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].file.ends_with("90-a.yaml"));
    assert!(errors[1].file.ends_with("91-b.yaml"));
    assert_eq!(errors[1].location.map(|l| l.0), Some(3));
}

#[test]
fn the_last_good_policy_is_kept() {
    let dir = shop();
    let source = DirSource::new(dir.path());
    let mut state = LastGood::new(source.load().expect("valid"));
    let good = state.current().version().to_owned();
    assert_eq!(state.reload(&source), Update::Unchanged);

    write(
        dir.path(),
        "20-routes.yaml",
        &ROUTES.replace("version: v2}, weight: 10", "version: v3}, weight: 10"),
    );
    match state.reload(&source) {
        Update::Rejected(e) => {
            let text = e.to_string();
            assert!(
                text.contains("20-routes.yaml:9:") && text.contains("v3"),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(state.current().version(), good, "the last good stays");
    assert!(state.rejected().is_some());
    let kept = state.current().snapshot_for("frontend");
    assert_eq!(
        kept.routes[0].backends[1]
            .subset
            .get("version")
            .map(String::as_str),
        Some("v2")
    );

    write(
        dir.path(),
        "20-routes.yaml",
        &ROUTES.replace("weight: 10", "weight: 20"),
    );
    match state.reload(&source) {
        Update::Applied { from, to } => {
            assert_eq!(from, good);
            assert_eq!(&to, state.current().version());
        }
        other => panic!("expected the new policy, got {other:?}"),
    }
    assert!(state.rejected().is_none());
}

#[test]
fn snapshot_for_gives_each_service_only_what_it_needs() {
    let dir = shop();
    let p = load(dir.path()).expect("valid");
    let names = |s: &PolicySnapshot| -> (Vec<String>, Vec<String>) {
        (
            s.services.iter().map(|x| x.name.clone()).collect(),
            s.routes.iter().map(|x| x.name.clone()).collect(),
        )
    };

    let frontend = p.snapshot_for("frontend");
    assert_eq!(
        names(&frontend),
        (
            vec!["orders".into(), "inventory".into(), "batch".into()],
            vec!["orders-api".into()]
        )
    );
    assert!(frontend.authorization.is_none(), "nobody protects frontend");
    assert!(frontend.routes.iter().all(|r| r.from.is_none()));

    let orders = p.snapshot_for("orders");
    assert_eq!(
        names(&orders),
        (
            vec!["frontend".into(), "inventory".into(), "batch".into()],
            vec!["stock".into()]
        )
    );
    let authz = orders.authorization.as_ref().expect("orders' rules");
    assert_eq!(authz.default.as_deref(), Some("deny"));
    assert_eq!(authz.rules.len(), 2);

    let batch = p.snapshot_for("batch");
    assert_eq!(names(&batch).1, ["orders-batch"]);
    let inventory = p.snapshot_for("inventory");
    assert!(inventory.routes.is_empty());
    assert_eq!(
        inventory.authorization.as_ref().expect("rules").rules[0].name,
        "orders"
    );

    // Versions are content hashes: a change that does not concern a service keeps its version.
    write(
        dir.path(),
        "40-authz.yaml",
        &AUTHZ.replace("paths: [/api]", "paths: [/api, /v2]"),
    );
    let q = load(dir.path()).expect("valid");
    assert_ne!(q.version(), p.version());
    assert_ne!(q.snapshot_for("orders").version, orders.version);
    assert_eq!(q.snapshot_for("frontend").version, frontend.version);
    assert_eq!(q.snapshot_for("batch").version, batch.version);
    assert_ne!(frontend.version, batch.version);
}

/// A sidecar's local part (what never comes from the control plane).
fn local(service: &str) -> weft_policy::Local {
    let text = format!(
        "service:\n  name: {service}\n  identity: spiffe://weft.local/ns/default/sa/{service}\n  app: 127.0.0.1:8080\ntls: {{cert: c.pem, key: k.pem, trust_bundle: ca.pem}}\n"
    );
    weft_policy::parse(&text, Path::new("local.yaml"), Path::new("/etc/weft"))
        .expect("local part")
        .into_parts()
        .0
}

fn assert_round_trips_and_applies(p: &MeshPolicy, service: &str) -> weft_policy::Config {
    let snapshot = p.snapshot_for(service);
    let yaml = serde_yaml::to_string(&snapshot).expect("yaml");
    let back: PolicySnapshot = serde_yaml::from_str(&yaml).expect("yaml back");
    assert_eq!(back, snapshot, "{yaml}");
    let json = serde_json::to_string(&snapshot).expect("json");
    let back: PolicySnapshot = serde_json::from_str(&json).expect("json back");
    assert_eq!(back, snapshot);

    // What the sidecar will do with a pushed snapshot.
    let local = local(service);
    let policy = weft_policy::validate_snapshot(back, &local)
        .unwrap_or_else(|e| panic!("{service}: {e:?}\n{yaml}"));
    weft_policy::Config::from_parts(local, policy)
}

#[test]
fn a_snapshot_round_trips_and_validates_in_the_sidecar_code_path() {
    let dir = shop();
    let p = load(dir.path()).expect("valid");
    for s in [
        "frontend",
        "orders",
        "inventory",
        "batch",
        "not-in-the-policy",
    ] {
        assert_round_trips_and_applies(&p, s);
    }
    let c = assert_round_trips_and_applies(&p, "frontend");
    let orders = c
        .services
        .iter()
        .find(|s| s.name == "orders")
        .expect("orders");
    assert_eq!(orders.routes[0].name, "orders-api");
    assert_eq!(
        orders.routes[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>(),
        [90, 10]
    );
    let c = assert_round_trips_and_applies(&p, "orders");
    assert!(!c.authorization.default_allow);

    // A snapshot is the policy part of a static file: local part + snapshot is a sidecar file.
    let snapshot = p.snapshot_for("frontend");
    let mut text = String::from(
        "service:\n  name: frontend\n  identity: spiffe://weft.local/ns/default/sa/frontend\n  app: 127.0.0.1:8080\ntls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}\n",
    );
    let policy = PolicySnapshot {
        version: String::new(),
        ..snapshot
    };
    text.push_str(&serde_yaml::to_string(&policy).expect("yaml"));
    let c = weft_policy::parse(&text, Path::new("frontend.yaml"), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.services.len(), 3);
}

#[test]
fn the_sidecar_refuses_a_snapshot_that_clashes_with_its_listeners() {
    let dir = shop();
    write(
        dir.path(),
        "10-services.yaml",
        &SERVICES.replace("port: 9003", "port: 15000"),
    );
    let p = load(dir.path()).expect("valid at the mesh level");
    let e = weft_policy::validate_snapshot(p.snapshot_for("frontend"), &local("frontend"))
        .expect_err("the admin listener's port");
    assert_eq!(e[0].field, "services[1].port", "inventory, after orders");
}

#[test]
fn the_example_policy_loads_and_every_snapshot_applies() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/policy");
    let p = load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = p.services().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["frontend", "orders", "inventory"]);
    for s in &names {
        assert_round_trips_and_applies(&p, s);
    }
    let frontend = p.snapshot_for("frontend");
    let routes: Vec<&str> = frontend.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, ["orders-canary-header", "orders-api"]);
}
