//! The Kubernetes manifests: each overlay renders with `kubectl kustomize` and validates
//! against the Kubernetes schemas (`kubernetes-validate --strict`, CRDs included), and the
//! rendered objects have the properties the docs promise; the examples validate too; the
//! Dockerfiles keep their invariants (images.rs checks the images built from them).
//!
//! `kubectl` and `kubernetes-validate` come from `scripts/setup` (a virtualenv under
//! `target/tools/k8s`, or the machine's own). Missing tools fail the test: never a silent skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize as _;
use serde_yaml::Value;
use weft_testkit::process::output_within;

pub(crate) const OVERLAYS: [&str; 3] = ["dev", "staging", "production"];
/// The oldest Kubernetes with native sidecars (init containers with `restartPolicy: Always`,
/// beta and on by default) and the newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];
/// Instances of Weft's own kinds. kubernetes-validate has schemas for the built-in kinds only
/// (it cannot load a CRD's schema for the objects of that CRD), so these, and only these, are
/// left out of its input; the CRDs themselves are validated.
const WEFT_KINDS: [&str; 4] = [
    "MeshRoute",
    "TrafficPolicy",
    "AuthorizationPolicy",
    "GatewayPolicy",
];

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

/// `name` from where `scripts/setup` installed it; panics saying what to run.
pub(crate) fn tool(name: &str) -> PathBuf {
    weft_testkit::tools::find(name)
}

/// Runs an external tool (`kubectl`, `kubernetes-validate`, `cargo`) that must succeed; its
/// standard output. The deadline is generous (a cold Python start, `cargo` waiting for a lock
/// held by a concurrent build): it only keeps a hung tool from stalling the suite.
pub(crate) fn run(cmd: &mut Command) -> String {
    run_within(cmd, Duration::from_secs(300))
}

/// [`run`] with the deadline `limit`.
fn run_within(cmd: &mut Command, limit: Duration) -> String {
    let (exit, stdout, stderr) = output_within(cmd, limit);
    assert!(exit.success(), "{cmd:?} failed: {exit}\n{stdout}{stderr}");
    stdout
}

/// `kubectl kustomize deploy/kubernetes/overlays/<overlay>`, as documents.
pub(crate) fn render(overlay: &str) -> Vec<Value> {
    let dir = repo().join("deploy/kubernetes/overlays").join(overlay);
    documents(&run(Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(&dir)))
}

pub(crate) fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn is_weft_instance(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|a| a.starts_with("weft.dev/"))
        && WEFT_KINDS.contains(&kind(doc))
}

pub(crate) fn find<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && name(d) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

/// `kubernetes-validate --strict` over `docs` (less Weft's own instances) for every version in
/// [`KUBERNETES_VERSIONS`]: exit 0, every object passed, no warning (an unknown kind warns).
pub(crate) fn validate(what: &str, docs: &[Value]) {
    let checked: Vec<&Value> = docs.iter().filter(|d| !is_weft_instance(d)).collect();
    assert!(!checked.is_empty(), "{what}: nothing to validate");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{}.yaml", what.replace('/', "_")));
    let text: Vec<String> = checked
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect();
    std::fs::write(&file, text.join("---\n")).expect("write");
    for version in KUBERNETES_VERSIONS {
        let out = run(Command::new(tool("kubernetes-validate"))
            .arg("--strict")
            .arg("-k")
            .arg(version)
            .arg(&file));
        assert!(
            !out.contains("WARN") && !out.contains("ERROR"),
            "{what} against {version}:\n{out}"
        );
        let passed = out.lines().filter(|l| l.contains(" passed for ")).count();
        assert_eq!(
            passed,
            checked.len(),
            "{what} against {version}: every object must pass\n{out}"
        );
    }
}

/// Every pod template (or pod) in `docs`, with the name of its object.
pub(crate) fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let spec = match kind(d) {
                "Pod" => &d["spec"],
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicaSet" => {
                    &d["spec"]["template"]["spec"]
                }
                "CronJob" => &d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => return None,
            };
            Some((format!("{} {}", kind(d), name(d)), spec))
        })
        .collect()
}

/// Every container (init containers included) runs as non-root, with a read-only root file
/// system, no privilege escalation and no capabilities.
pub(crate) fn assert_locked_down(what: &str, docs: &[Value]) {
    let pods = pod_specs(docs);
    assert!(!pods.is_empty(), "{what}: no workloads");
    for (owner, spec) in pods {
        let pod_non_root = spec["securityContext"]["runAsNonRoot"].as_bool() == Some(true);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{what}: {owner}: seccomp profile"
        );
        let containers = ["containers", "initContainers"]
            .iter()
            .filter_map(|k| spec[*k].as_sequence())
            .flatten();
        for c in containers {
            let who = format!(
                "{what}: {owner}, container {}",
                c["name"].as_str().unwrap_or("?")
            );
            let sc = &c["securityContext"];
            assert!(
                pod_non_root || sc["runAsNonRoot"].as_bool() == Some(true),
                "{who}: runAsNonRoot"
            );
            assert_ne!(sc["runAsUser"].as_u64(), Some(0), "{who}: runs as root");
            assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{who}");
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{who}"
            );
            let drops: Vec<&str> = sc["capabilities"]["drop"]
                .as_sequence()
                .map(|s| s.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert!(drops.contains(&"ALL"), "{who}: capabilities.drop [ALL]");
            assert!(
                sc["capabilities"]["add"].is_null(),
                "{who}: adds capabilities"
            );
            let image = c["image"].as_str().unwrap_or_default();
            // Images are retargeted with kustomize `images:`; no registry host is written here.
            assert!(
                !image.is_empty() && !image.contains('/'),
                "{who}: image {image:?} names a registry or is missing"
            );
        }
    }
}

fn control_plane_container(docs: &[Value]) -> &Value {
    let d = find(docs, "Deployment", "weft-control-plane");
    d["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["name"] == "control-plane"))
        .expect("the control-plane container")
}

fn env(container: &Value, key: &str) -> String {
    container["env"]
        .as_sequence()
        .and_then(|e| e.iter().find(|e| e["name"] == key))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("env {key}"))
        .to_owned()
}

fn replicas(docs: &[Value]) -> u64 {
    find(docs, "Deployment", "weft-control-plane")["spec"]["replicas"]
        .as_u64()
        .expect("replicas")
}

/// What the base's CRD files declare: `(group, kind)` per non-placeholder file.
fn crd_files() -> Vec<(PathBuf, Option<Value>)> {
    let dir = repo().join("deploy/kubernetes/base/crds");
    [
        "meshroutes.yaml",
        "trafficpolicies.yaml",
        "authorizationpolicies.yaml",
        "gatewaypolicies.yaml",
    ]
    .iter()
    .map(|f| {
        let path = dir.join(f);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc = documents(&text).into_iter().next();
        (path, doc)
    })
    .collect()
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        validate(&format!("overlay {overlay}"), &docs);
        assert_locked_down(&format!("overlay {overlay}"), &docs);
        // The CRDs render with the overlay (validated above as CustomResourceDefinitions).
        for (path, crd) in crd_files() {
            match crd {
                Some(crd) => {
                    let found = find(&docs, "CustomResourceDefinition", name(&crd));
                    assert_eq!(found["spec"]["group"], "weft.dev", "{}", path.display());
                    assert_eq!(found["spec"]["scope"], "Namespaced", "{}", path.display());
                }
                // Until the generated CRDs land, the base holds a commented placeholder.
                None => eprintln!("note: {} is still a placeholder", path.display()),
            }
        }
    }
}

#[test]
fn overlays_differ_in_replicas_resources_log_level_and_certificate_lifetime() {
    let mut seen = BTreeMap::new();
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let c = control_plane_container(&docs);
        let resources = serde_yaml::to_string(&c["resources"]).expect("yaml");
        seen.insert(
            overlay,
            (
                replicas(&docs),
                resources,
                env(c, "RUST_LOG"),
                env(c, "WEFT_CERT_LIFETIME"),
            ),
        );
        let pdb = find(&docs, "PodDisruptionBudget", "weft-control-plane");
        if overlay == "production" {
            assert!(replicas(&docs) >= 2, "production runs several replicas");
            assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(2));
            assert!(pdb["spec"]["maxUnavailable"].is_null());
        } else {
            assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1));
        }
    }
    let expect = |o: &str, r: u64, log: &str, life: &str| {
        let (replicas, _, l, lifetime) = &seen[o];
        assert_eq!(
            (*replicas, l.as_str(), lifetime.as_str()),
            (r, log, life),
            "{o}"
        );
    };
    expect("dev", 1, "debug", "1h");
    expect("staging", 2, "info", "12h");
    expect("production", 3, "warn", "24h");
    let resources: BTreeSet<&String> = seen.values().map(|v| &v.1).collect();
    assert_eq!(
        resources.len(),
        3,
        "each overlay sizes the control plane: {seen:#?}"
    );
}

#[test]
fn the_control_plane_runs_as_the_contract_says() {
    let docs = render("production");
    let c = control_plane_container(&docs);
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "--kubernetes",
        "--kubernetes-tokens",
        "--listen=0.0.0.0:7070",
        "--admin=127.0.0.1:7071",
        "--metrics-listen=0.0.0.0:7072",
        "--webhook-listen=0.0.0.0:8443",
        "--ca-cert=/etc/weft/ca/ca.crt",
        "--ca-key=/etc/weft/ca/ca.key",
        "--admin-token-file=/etc/weft/admin/token",
        "--cert-lifetime=$(WEFT_CERT_LIFETIME)",
    ] {
        assert!(args.contains(&want), "missing {want} in {args:?}");
    }
    // The plaintext operator API never leaves the pod's loopback.
    for arg in &args {
        if let Some(addr) = arg.strip_prefix("--admin=") {
            let addr: std::net::SocketAddr = addr.parse().expect("--admin address");
            assert!(addr.ip().is_loopback(), "{arg}");
        }
    }
    assert!(
        !args.contains(&"--insecure-plaintext-operator-api"),
        "{args:?}"
    );
    // Every flag the Deployment passes is one the binary has.
    let help = run_within(
        Command::new(env!("CARGO_BIN_EXE_weft-control-plane")).arg("--help"),
        Duration::from_secs(30),
    );
    for arg in &args {
        let flag = arg.split('=').next().unwrap_or_default();
        // `--kubernetes` must not count as present because `--kubernetes-tokens` is.
        let has = help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n"));
        assert!(has, "weft-control-plane has no flag {flag}:\n{help}");
    }
    assert_eq!(c["image"], "weft-control-plane:0.1.0");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    let mounts = c["volumeMounts"].as_sequence().expect("mounts");
    for secret_mount in ["ca", "admin-token", "webhook-tls"] {
        let m = mounts
            .iter()
            .find(|m| m["name"] == secret_mount)
            .unwrap_or_else(|| panic!("mount {secret_mount}"));
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{secret_mount}");
    }
    let pod = &find(&docs, "Deployment", "weft-control-plane")["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "control-plane");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "7072");
    let ports: BTreeSet<u64> = find(&docs, "Service", "weft-control-plane")["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(ports, BTreeSet::from([7070, 7072, 8443]));
    for d in &docs {
        if kind(d) != "Namespace" && kind(d) != "CustomResourceDefinition" {
            let cluster_scoped = matches!(
                kind(d),
                "ClusterRole" | "ClusterRoleBinding" | "MutatingWebhookConfiguration"
            );
            let ns = d["metadata"]["namespace"].as_str();
            assert_eq!(
                ns,
                (!cluster_scoped).then_some("weft-system"),
                "{} {}",
                kind(d),
                name(d)
            );
        }
    }
}

#[test]
fn rbac_grants_exactly_what_the_control_plane_uses() {
    let docs = render("production");
    let role = find(&docs, "ClusterRole", "weft-control-plane");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_sequence()
                .map(|s| {
                    s.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "wildcard in {rule:?}"
                    );
                    granted.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    let mut want = BTreeSet::new();
    for r in ["/services", "/pods", "discovery.k8s.io/endpointslices"] {
        for v in ["get", "list", "watch"] {
            want.insert(format!("{r}:{v}"));
        }
    }
    for r in [
        "meshroutes",
        "trafficpolicies",
        "authorizationpolicies",
        "gatewaypolicies",
    ] {
        for v in ["get", "list", "watch"] {
            want.insert(format!("weft.dev/{r}:{v}"));
        }
        for v in ["update", "patch"] {
            want.insert(format!("weft.dev/{r}/status:{v}"));
        }
    }
    let gateway_kinds = [
        "httproutes",
        "grpcroutes",
        "referencegrants",
        "gatewayclasses",
        "gateways",
    ];
    for r in gateway_kinds {
        for v in ["get", "list", "watch"] {
            want.insert(format!("gateway.networking.k8s.io/{r}:{v}"));
        }
    }
    for v in ["update", "patch"] {
        for r in ["httproutes", "grpcroutes", "gatewayclasses", "gateways"] {
            want.insert(format!("gateway.networking.k8s.io/{r}/status:{v}"));
        }
    }
    want.insert("authentication.k8s.io/tokenreviews:create".to_owned());
    assert_eq!(granted, want);
    let binding = find(&docs, "ClusterRoleBinding", "weft-control-plane");
    assert_eq!(binding["roleRef"]["name"], "weft-control-plane");
    assert_eq!(binding["subjects"][0]["name"], "control-plane");
    assert_eq!(binding["subjects"][0]["namespace"], "weft-system");
}

#[test]
fn the_network_policy_admits_sidecars_the_api_server_and_monitoring_only() {
    let docs = render("production");
    let np = find(&docs, "NetworkPolicy", "weft-control-plane");
    let rules = np["spec"]["ingress"].as_sequence().expect("ingress");
    let rule_for = |port: u64| {
        rules
            .iter()
            .find(|r| {
                r["ports"]
                    .as_sequence()
                    .is_some_and(|p| p.iter().any(|p| p["port"].as_u64() == Some(port)))
            })
            .unwrap_or_else(|| panic!("no ingress rule for {port}"))
    };
    // 7070: any pod of any namespace.
    assert_eq!(
        serde_yaml::to_string(&rule_for(7070)["from"]).expect("yaml"),
        "- namespaceSelector: {}\n"
    );
    // 8443: any source (the API server is not a pod).
    assert!(rule_for(8443)["from"].is_null());
    // 7072 (metrics, probes): only namespaces labelled for monitoring.
    assert_eq!(
        rule_for(7072)["from"][0]["namespaceSelector"]["matchLabels"]["weft.dev/monitoring"],
        "enabled"
    );
    let egress_ports: BTreeSet<u64> = np["spec"]["egress"]
        .as_sequence()
        .expect("egress")
        .iter()
        .flat_map(|r| r["ports"].as_sequence().into_iter().flatten())
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(egress_ports, BTreeSet::from([53, 443, 6443]));
}

#[test]
fn examples_validate_except_weft_s_own_kinds() {
    let dir = repo().join("deploy/examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/examples/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let what = file.display().to_string();
        let docs = documents(&std::fs::read_to_string(&file).expect("read"));
        if docs.iter().all(is_weft_instance) {
            // Policy objects only: nothing kubernetes-validate has a schema for.
            continue;
        }
        validate(&what, &docs);
        // Files with workloads (shop-scaling.yaml has only HPAs and budgets).
        if !pod_specs(&docs).is_empty() {
            assert_locked_down(&what, &docs);
        }
    }
    let apps =
        documents(&std::fs::read_to_string(dir.join("shop-apps.yaml")).expect("shop-apps.yaml"));
    let ns = find(&apps, "Namespace", "shop");
    assert_eq!(ns["metadata"]["labels"]["weft.dev/inject"], "enabled");
    for (deployment, version) in [("orders-v1", "v1"), ("orders-v2", "v2")] {
        let d = find(&apps, "Deployment", deployment);
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"]["version"],
            version
        );
        assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "orders");
    }
    for (_, spec) in pod_specs(&apps) {
        for c in spec["containers"].as_sequence().expect("containers") {
            assert_eq!(c["image"], "weft-sample:0.1.0");
        }
    }
}

/// `selector.matchLabels` selects a pod with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
}

/// The scaling example: each shop Deployment has a PodDisruptionBudget selecting exactly its
/// pods, one a drain can satisfy (fewer pods required than the Deployment keeps); the HPAs
/// target shop Deployments and scale on their app container's CPU (a `ContainerResource`
/// metric, not the pod's, which the sidecar would skew), which has a CPU request to be a
/// utilization of.
#[test]
fn the_shop_has_a_disruption_budget_per_deployment_and_hpas_on_the_app_container() {
    let dir = repo().join("deploy/examples/kubernetes");
    let apps = documents(&std::fs::read_to_string(dir.join("shop-apps.yaml")).expect("apps"));
    let scaling =
        documents(&std::fs::read_to_string(dir.join("shop-scaling.yaml")).expect("scaling"));
    let deployments: Vec<&Value> = apps.iter().filter(|d| kind(d) == "Deployment").collect();
    let hpas: Vec<&Value> = scaling
        .iter()
        .filter(|d| kind(d) == "HorizontalPodAutoscaler")
        .collect();
    let pdbs: Vec<&Value> = scaling
        .iter()
        .filter(|d| kind(d) == "PodDisruptionBudget")
        .collect();
    assert_eq!(hpas.len() + pdbs.len(), scaling.len(), "only HPAs and PDBs");
    assert!(hpas.len() >= 3, "{}", hpas.len());
    for hpa in &hpas {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert_eq!(target["kind"], "Deployment", "{}", name(hpa));
        let d = find(&apps, "Deployment", target["name"].as_str().expect("name"));
        let metrics = hpa["spec"]["metrics"].as_sequence().expect("metrics");
        assert!(!metrics.is_empty(), "{}", name(hpa));
        for m in metrics {
            assert_eq!(m["type"], "ContainerResource", "{}: {m:?}", name(hpa));
            let container = m["containerResource"]["container"]
                .as_str()
                .expect("container");
            assert_ne!(container, "weft-proxy", "{}", name(hpa));
            let c = d["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .expect("containers")
                .iter()
                .find(|c| c["name"] == container)
                .unwrap_or_else(|| panic!("{}: no container {container}", name(hpa)));
            let resource = m["containerResource"]["name"].as_str().expect("resource");
            assert!(
                !c["resources"]["requests"][resource].is_null(),
                "{}: {container} has no {resource} request",
                name(hpa)
            );
        }
        assert!(
            hpa["spec"]["minReplicas"].as_u64().expect("minReplicas") >= 2,
            "{}: one replica has no drain to survive",
            name(hpa)
        );
    }
    for d in &deployments {
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let covering: Vec<&&Value> = pdbs
            .iter()
            .filter(|p| selects(&p["spec"]["selector"], labels))
            .collect();
        assert_eq!(covering.len(), 1, "{}: one budget", name(d));
        let pdb = covering[0];
        for other in deployments.iter().filter(|o| name(o) != name(d)) {
            let their = &other["spec"]["template"]["metadata"]["labels"];
            assert!(
                !selects(&pdb["spec"]["selector"], their),
                "{}'s budget also counts {}'s pods",
                name(d),
                name(other)
            );
        }
        // The fewest pods the Deployment runs: its HPA's floor, else its replicas.
        let floor = hpas
            .iter()
            .find(|h| h["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"])
            .and_then(|h| h["spec"]["minReplicas"].as_u64())
            .or_else(|| d["spec"]["replicas"].as_u64())
            .unwrap_or(1);
        if let Some(min) = pdb["spec"]["minAvailable"].as_u64() {
            assert!(
                min < floor,
                "{}: minAvailable {min} of {floor} blocks every drain",
                name(d)
            );
        } else {
            assert!(
                pdb["spec"]["maxUnavailable"]
                    .as_u64()
                    .is_some_and(|m| m >= 1),
                "{}",
                name(d)
            );
        }
    }
}

/// One Dockerfile's facts.
struct Dockerfile {
    file: &'static str,
    package: &'static str,
    binary: &'static str,
    /// The Debian packages the runtime stage installs.
    runtime_packages: &'static [&'static str],
}

const DOCKERFILES: [Dockerfile; 3] = [
    Dockerfile {
        file: "proxy.Dockerfile",
        package: "weft-proxy",
        binary: "weft-proxy",
        // `weft-proxy init` (the injected capture init container) runs nft, or
        // iptables-restore where the kernel has no inet NAT (`--backend auto`).
        runtime_packages: &["ca-certificates", "nftables", "iptables"],
    },
    Dockerfile {
        file: "control-plane.Dockerfile",
        package: "weft-control-plane",
        binary: "weft-control-plane",
        runtime_packages: &["ca-certificates"],
    },
    Dockerfile {
        file: "samples.Dockerfile",
        package: "weft-samples",
        binary: "weft-sample",
        runtime_packages: &["ca-certificates"],
    },
];

#[test]
fn dockerfiles_are_multi_stage_non_root_and_build_what_the_manifests_run() {
    let manifests_images: BTreeSet<String> = {
        let mut docs = render("production");
        docs.extend(documents(
            &std::fs::read_to_string(repo().join("deploy/examples/kubernetes/shop-apps.yaml"))
                .expect("shop-apps"),
        ));
        pod_specs(&docs)
            .into_iter()
            .flat_map(|(_, s)| {
                ["containers", "initContainers"]
                    .iter()
                    .filter_map(|k| s[*k].as_sequence())
                    .flatten()
                    .filter_map(|c| c["image"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut built = BTreeSet::new();
    for d in DOCKERFILES {
        let path = repo().join("deploy/docker").join(d.file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Instructions only (comments and continuation lines joined).
        let joined = text.replace("\\\n", " ");
        let lines: Vec<&str> = joined
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let froms: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("FROM "))
            .collect();
        assert_eq!(
            froms,
            ["FROM ${RUST_IMAGE} AS build", "FROM ${RUNTIME_IMAGE}"],
            "{}: a build stage and a slim runtime stage",
            d.file
        );
        // Their defaults are the public images; scripts/build-images passes local ones.
        for arg in [
            "ARG RUST_IMAGE=rust:1.95-bookworm",
            "ARG RUNTIME_IMAGE=debian:bookworm-slim",
        ] {
            assert!(lines.contains(&arg), "{}: {arg}", d.file);
        }
        let final_stage: Vec<&str> = lines
            .iter()
            .copied()
            .skip_while(|l| *l != "FROM ${RUNTIME_IMAGE}")
            .collect();
        // The sidecar has a UID of its own (capture exempts it); the others run as `nonroot`.
        let user = if d.file.ends_with("proxy.Dockerfile") {
            "USER 2102:2102"
        } else {
            "USER 65532:65532"
        };
        assert_eq!(
            final_stage.iter().rev().find(|l| l.starts_with("USER ")),
            Some(&user),
            "{}: the runtime stage's user",
            d.file
        );
        assert!(
            final_stage
                .iter()
                .all(|l| !l.starts_with("USER root") && !l.starts_with("USER 0")),
            "{}",
            d.file
        );
        // One build command in all three (see the Dockerfiles: one feature resolution, so the
        // images after the first compile nothing).
        let packages: Vec<String> = DOCKERFILES
            .iter()
            .map(|d| format!("-p {}", d.package))
            .collect();
        let bins: Vec<String> = DOCKERFILES
            .iter()
            .map(|d| format!("--bin {}", d.binary))
            .collect();
        let outputs: Vec<String> = DOCKERFILES
            .iter()
            .map(|d| format!("target/release/{}", d.binary))
            .collect();
        let build = format!(
            "cargo build --release --locked {} {} && cp {} /usr/local/bin/",
            packages.join(" "),
            bins.join(" "),
            outputs.join(" ")
        );
        assert!(
            lines.iter().any(|l| {
                let words = l.split_whitespace().collect::<Vec<_>>().join(" ");
                words.starts_with("RUN ") && words.ends_with(&build)
            }),
            "{}: {build}",
            d.file
        );
        let copy = format!(
            "COPY --from=build /usr/local/bin/{0} /usr/local/bin/{0}",
            d.binary
        );
        assert!(final_stage.contains(&copy.as_str()), "{}: {copy}", d.file);
        let entry = format!("ENTRYPOINT [\"/usr/local/bin/{}\"]", d.binary);
        assert_eq!(final_stage.last(), Some(&entry.as_str()), "{}", d.file);
        // No COPY into the runtime image but the binary: only it and the CA certificates.
        assert_eq!(
            final_stage
                .iter()
                .filter(|l| l.starts_with("COPY "))
                .count(),
            1,
            "{}",
            d.file
        );
        // The runtime stage installs exactly its packages (one apt-get install).
        let installed: Vec<&str> = final_stage
            .iter()
            .filter_map(|l| l.split_once("apt-get install"))
            .flat_map(|(_, rest)| {
                rest.split("&&")
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .filter(|w| !w.starts_with('-'))
            })
            .collect();
        assert_eq!(
            installed, d.runtime_packages,
            "{}: runtime packages",
            d.file
        );
        for run in lines.iter().filter(|l| l.contains("apt-get install")) {
            assert!(
                run.contains("--no-install-recommends")
                    && run.contains("rm -rf /var/lib/apt/lists/*"),
                "{}: apt without cleaning its lists: {run}",
                d.file
            );
        }
        let tag = format!("-t {}:0.1.0", d.binary);
        assert!(
            text.contains(&tag),
            "{}: documents its image tag {tag}",
            d.file
        );
        // The package builds that binary.
        let manifest = run(Command::new(env!("CARGO")).current_dir(repo()).args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ]));
        let meta: serde_json::Value = serde_json::from_str(&manifest).expect("cargo metadata");
        let has_bin = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .filter(|p| p["name"] == d.package)
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .any(|t| t["name"] == d.binary && t["kind"][0] == "bin");
        assert!(has_bin, "package {} has no binary {}", d.package, d.binary);
        built.insert(format!("{}:0.1.0", d.binary));
    }
    // Every image the manifests run is one of these builds (the sidecar's, weft-proxy, is
    // added by injection).
    for image in &manifests_images {
        assert!(
            built.contains(image),
            "{image} is built by no Dockerfile: {built:?}"
        );
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "the build context skips target/"
    );
}
