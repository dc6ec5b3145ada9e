//! Sidecar injection: golden files per workload kind, idempotence, opt-out, annotation errors,
//! schema validation of the output with `kubernetes-validate --strict`, the `weftctl inject`
//! binary, and the webhook over real HTTPS producing the same result as `weftctl inject`.
//!
//! `WEFT_BLESS=1 cargo test -p weft-control-plane --test kubernetes inject` rewrites the
//! expected files (`*.injected.yaml`) from the current output and then fails on purpose: review
//! the diff and run again without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use weft_control_plane::inject::webhook::{self, WebhookConfig};
use weft_control_plane::inject::{inject_object, inject_yaml, InjectError, Settings};
use weft_testkit::process::spawn;
use weft_testkit::wait;

/// Inputs under tests/kubernetes/inject/, one per kind; the expected output of `NAME.yaml`
/// is `NAME.injected.yaml`.
const CASES: &[&str] = &[
    "deployment",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "pod",
    "list",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubernetes/inject")
}

fn input(case: &str) -> String {
    std::fs::read_to_string(dir().join(format!("{case}.yaml"))).expect("read input")
}

fn expected_path(case: &str) -> PathBuf {
    dir().join(format!("{case}.injected.yaml"))
}

fn docs(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn settings() -> Settings {
    Settings::default()
}

#[test]
fn golden_files_per_kind() {
    let bless = std::env::var_os("WEFT_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for case in CASES {
        let got = inject_yaml(&input(case), &settings()).unwrap_or_else(|e| panic!("{case}: {e}"));
        let path = expected_path(case);
        if bless {
            std::fs::write(&path, &got).expect("write golden file");
            stale.push(format!("{case}: rewrote {}", path.display()));
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (WEFT_BLESS=1 writes it)", path.display()));
        if got != want {
            stale.push(format!(
                "{case}: output differs from {}\n--- got ---\n{got}",
                path.display()
            ));
        }
    }
    // Bless mode writes and then fails, so a leaked WEFT_BLESS can never turn the suite green:
    // review the rewritten files, then run again without it.
    assert!(
        !bless,
        "WEFT_BLESS=1: the expected files were rewritten; review them (git diff) and run \
         again without WEFT_BLESS\n{}",
        stale.join("\n")
    );
    assert!(
        stale.is_empty(),
        "{}\n(WEFT_BLESS=1 rewrites the expected files)",
        stale.join("\n")
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    for case in CASES {
        let once = inject_yaml(&input(case), &settings()).expect("inject");
        let twice = inject_yaml(&once, &settings()).expect("inject again");
        assert_eq!(once, twice, "{case}: not idempotent");
    }
}

#[test]
fn what_injection_adds() {
    let out = docs(&inject_yaml(&input("job"), &settings()).expect("inject"));
    let spec = &out[0]["spec"]["template"]["spec"];
    // Capture first, then the sidecar.
    let capture = &spec["initContainers"][0];
    assert_eq!(capture["name"], "weft-init");
    assert_eq!(capture["image"], "weft-proxy:0.1.0");
    let args: Vec<&str> = capture["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args[..3],
        ["init", "--proxy-uid", "2102"],
        "the sidecar's UID"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--inbound-skip-ports", "15020"]),
        "the kubelet's probes reach the read-only port: {args:?}"
    );
    // Least privilege: root with NET_ADMIN and NET_RAW only, nothing written, no escalation.
    let sc = &capture["securityContext"];
    assert_eq!(
        sc["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]})
    );
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert!(
        capture["restartPolicy"].is_null(),
        "runs once, to completion"
    );
    let sidecar = &spec["initContainers"][1];
    assert_eq!(sidecar["name"], "weft-proxy");
    // A native sidecar: the Job completes when its app exits.
    assert_eq!(sidecar["restartPolicy"], "Always");
    // Probes and Prometheus use the read-only metrics port; the admin port stays on loopback.
    assert_eq!(
        sidecar["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": "weft-metrics"})
    );
    assert_eq!(
        sidecar["livenessProbe"]["httpGet"],
        json!({"path": "/live", "port": "weft-metrics"})
    );
    assert_eq!(
        sidecar["ports"][1],
        json!({"name": "weft-metrics", "containerPort": 15020, "protocol": "TCP"})
    );
    assert_eq!(sidecar["securityContext"]["runAsUser"], 2102);
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        sidecar["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(
        spec["containers"][0]["env"][0],
        json!({"name": "WEFT_PROXY", "value": "http://127.0.0.1:15001"})
    );
    let token = &spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "weft");
    assert_eq!(token["expirationSeconds"], 3600);
    assert_eq!(
        out[0]["spec"]["template"]["metadata"]["annotations"]["weft.dev/injected"],
        env!("CARGO_PKG_VERSION")
    );

    // Another init container stays, after the sidecar.
    let out = docs(&inject_yaml(&input("statefulset"), &settings()).expect("inject"));
    let init = &out[0]["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(init[0]["name"], "weft-init");
    assert_eq!(init[1]["name"], "weft-proxy");
    assert_eq!(init[2]["name"], "migrate");
}

/// The config handed to the sidecar, with the kubelet's `$(VAR)` expansion done, is valid for
/// the sidecar's own parser and names the pod's identity.
#[test]
fn sidecar_config_is_valid_for_the_sidecar() {
    let out = docs(&inject_yaml(&input("statefulset"), &settings()).expect("inject"));
    let env = out[0]["spec"]["template"]["spec"]["initContainers"][1]["env"]
        .as_array()
        .expect("env")
        .clone();
    let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
    // The vars WEFT_CONFIG refers to come first: the kubelet expands only earlier ones.
    assert_eq!(
        names,
        [
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_IP",
            "SERVICE_ACCOUNT",
            "WEFT_LOG",
            "WEFT_CONFIG"
        ]
    );
    let config = env[5]["value"].as_str().expect("config");
    let expanded = config
        .replace("$(POD_NAMESPACE)", "shop")
        .replace("$(SERVICE_ACCOUNT)", "ledger");
    assert!(!expanded.contains("$("), "{expanded}");
    let parsed = weft_policy::parse(
        &expanded,
        Path::new("/var/run/weft/config.yaml"),
        Path::new("/var/run/weft"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{expanded}"));
    assert_eq!(parsed.own.name, "ledger.shop");
    assert_eq!(
        parsed.own.identity.to_string(),
        "spiffe://weft.local/ns/shop/sa/ledger"
    );
    assert_eq!(parsed.tls.key, Path::new("/var/run/weft/key.pem"));
    let cp = parsed.control_plane.expect("control plane");
    assert_eq!(
        cp.join_token_file.as_deref(),
        Some(Path::new("/var/run/secrets/weft/token"))
    );
    assert!(expanded.contains("app: 127.0.0.1:9090"), "{expanded}");
    assert!(expanded.contains("protocol: grpc"), "{expanded}");
}

/// The mesh service name: annotation, else `app.kubernetes.io/name` or `app` label, else the
/// workload's name, else the service account; a pod with none of them is refused.
#[test]
fn service_name_defaults() {
    let config_of = |v: &Value| -> String {
        let spec = if v["kind"] == "Pod" {
            &v["spec"]
        } else {
            &v["spec"]["template"]["spec"]
        };
        spec["initContainers"][1]["env"][5]["value"]
            .as_str()
            .expect("config")
            .to_owned()
    };
    let mut d = docs(&input("deployment")).remove(0);
    assert!(config_of(&inject_object(&d, &settings()).expect("inject"))
        .contains("name: orders.$(POD_NAMESPACE)"));
    d["spec"]["template"]["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("labels");
    assert!(config_of(&inject_object(&d, &settings()).expect("inject"))
        .contains("name: orders-v2.$(POD_NAMESPACE)"));
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"generateName": "worker-", "namespace": "shop"},
                     "spec": {"serviceAccountName": "batch",
                              "containers": [{"name": "w", "image": "w:1"}]}});
    assert!(
        config_of(&inject_object(&pod, &settings()).expect("inject"))
            .contains("name: batch.$(POD_NAMESPACE)")
    );
    let mut anonymous = pod.clone();
    anonymous["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("serviceAccountName");
    let err = inject_object(&anonymous, &settings()).expect_err("no name");
    assert!(
        err.to_string()
            .starts_with("Pod shop/worker-*: cannot tell the mesh service name"),
        "{err}"
    );
}

#[test]
fn opted_out_and_other_kinds_pass_through() {
    let text = input("list");
    let before = docs(&text);
    let after = docs(&inject_yaml(&text, &settings()).expect("inject"));
    assert_eq!(before.len(), after.len());
    // frontend is injected; legacy (opted out) and the ConfigMap are not.
    assert_ne!(before[0]["items"][0], after[0]["items"][0]);
    assert_eq!(before[0]["items"][1], after[0]["items"][1]);
    assert_eq!(before[0]["items"][2], after[0]["items"][2]);
    // The ServiceAccount and NetworkPolicy documents come back equal.
    assert_eq!(before[1..], after[1..]);
    // The opt-out on the workload itself works too.
    let mut deployment = docs(&input("deployment")).remove(0);
    deployment["metadata"]["annotations"] = json!({"weft.dev/inject": "false"});
    assert_eq!(
        inject_object(&deployment, &settings()).expect("inject"),
        deployment
    );
}

#[test]
fn bad_annotations_name_the_object_and_annotation() {
    let base = docs(&input("deployment")).remove(0);
    for (annotation, value, reason) in [
        ("weft.dev/app-port", "http", "not a port number"),
        ("weft.dev/app-port", "15001", "sidecar's own ports"),
        ("weft.dev/protocol", "udp", "want http, grpc or tcp"),
        (
            "weft.dev/proxy-cpu-request",
            "lots",
            "not a Kubernetes quantity",
        ),
        (
            "weft.dev/proxy-memory-limit",
            "-1Gi",
            "not a Kubernetes quantity",
        ),
        ("weft.dev/log-level", "loud", "want off, error"),
        (
            "weft.dev/service",
            "Orders_V2",
            "not a Kubernetes Service name",
        ),
        ("weft.dev/inject", "maybe", "want \"true\" or \"false\""),
        (
            "weft.dev/rewrite-app-probes",
            "no",
            "want \"true\" or \"false\"",
        ),
        ("weft.dev/capture", "off", "want \"true\" or \"false\""),
        ("weft.dev/inbound-skip-ports", "9090,x", "not a port"),
        ("weft.dev/outbound-skip-ports", "9100-9000", "backwards"),
        (
            "weft.dev/inbound-skip-cidrs",
            "10.0.0.0/40",
            "prefix must be",
        ),
        (
            "weft.dev/outbound-skip-cidrs",
            "metadata",
            "not an IP address",
        ),
    ] {
        let mut d = base.clone();
        d["spec"]["template"]["metadata"]["annotations"] = json!({ annotation: value });
        let err = inject_object(&d, &settings()).expect_err(annotation);
        assert!(
            matches!(&err, InjectError::Annotation { annotation: a, .. } if a == annotation),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "Deployment shop/orders-v2: annotation {annotation}: "
            )),
            "{text}"
        );
        assert!(text.contains(reason), "{text}");
    }
    // hostNetwork pods cannot be meshed.
    let mut d = base.clone();
    d["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
    let err = inject_object(&d, &settings()).expect_err("hostNetwork");
    assert!(
        err.to_string()
            .starts_with("Deployment shop/orders-v2: hostNetwork"),
        "{err}"
    );
    // An app port the sidecar needs.
    let mut d = base;
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(15006);
    let err = inject_object(&d, &settings()).expect_err("port clash");
    assert!(err.to_string().contains("port 15006"), "{err}");
    // Not YAML.
    let err = inject_yaml("kind: [", &settings()).expect_err("syntax");
    assert!(err.to_string().starts_with("document 1: "), "{err}");
}

/// Every injected output validates against the Kubernetes schemas (strict: no unknown
/// fields), List items included.
#[test]
fn output_validates_with_kubernetes_validate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for case in CASES {
        let out = inject_yaml(&input(case), &settings()).expect("inject");
        // kubernetes-validate has no schema for `List`: validate its items as documents.
        let mut flat = Vec::new();
        for d in docs(&out) {
            match d["items"].as_array() {
                Some(items) if d["kind"] == "List" => flat.extend(items.iter().cloned()),
                _ => flat.push(d),
            }
        }
        let text: Vec<String> = flat
            .iter()
            .map(|d| serde_yaml::to_string(d).expect("yaml"))
            .collect();
        let path = tmp.path().join(format!("{case}.yaml"));
        std::fs::write(&path, text.join("---\n")).expect("write");
        files.push(path);
    }
    // The MutatingWebhookConfiguration too.
    files.push(webhook_yaml_path());
    let out = Command::new(weft_testkit::tools::find("kubernetes-validate"))
        .arg("--strict")
        .arg("--quiet")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("kubernetes-validate: {e}"));
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn webhook_yaml_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/base/webhook.yaml")
}

/// The MutatingWebhookConfiguration points where the webhook serves, for the shared contract.
#[test]
fn webhook_configuration_matches_the_server() {
    let text = std::fs::read_to_string(webhook_yaml_path()).expect("webhook.yaml");
    let config = docs(&text).remove(0);
    assert_eq!(config["kind"], "MutatingWebhookConfiguration");
    let hook = &config["webhooks"][0];
    let service = &hook["clientConfig"]["service"];
    assert_eq!(service["name"], "weft-control-plane");
    assert_eq!(service["namespace"], "weft-system");
    assert_eq!(service["path"], webhook::PATH);
    assert_eq!(service["port"], 8443);
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(
        hook["namespaceSelector"]["matchLabels"]["weft.dev/inject"],
        "enabled"
    );
    assert_eq!(hook["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
}

// ---- the webhook over HTTPS ----

pub(super) struct TestWebhook {
    pub(super) _hook: Option<webhook::Webhook>,
    pub(super) addr: std::net::SocketAddr,
    pub(super) tls: tokio_rustls::TlsConnector,
    pub(super) _dir: tempfile::TempDir,
}

/// A CA and a serving certificate for `localhost` from it, written to `dir`: the
/// certificate and key files, and a TLS connector trusting the CA.
pub(super) fn webhook_certs(dir: &Path) -> (PathBuf, PathBuf, tokio_rustls::TlsConnector) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        cert_file,
        key_file,
        tokio_rustls::TlsConnector::from(Arc::new(config)),
    )
}

/// The webhook on 127.0.0.1:0 with a certificate from a test CA.
async fn start_webhook() -> TestWebhook {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, tls) = webhook_certs(dir.path());
    let hook = webhook::start(WebhookConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cert,
        key,
        settings: settings(),
    })
    .await
    .expect("webhook starts");
    TestWebhook {
        addr: hook.addr,
        _hook: Some(hook),
        tls,
        _dir: dir,
    }
}

impl TestWebhook {
    /// One request on its own verified TLS connection: status and body.
    async fn post(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let call = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .expect("connect");
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let tls = self.tls.connect(name, tcp).await.expect("TLS handshake");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("http handshake");
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("request");
            let resp = sender.send_request(req).await.expect("response");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, body.to_vec())
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("webhook answered in time")
    }

    pub(super) async fn review(&self, review: &Value) -> (u16, Value) {
        let (status, body) = self
            .post("POST", "/inject", review.to_string().into_bytes())
            .await;
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        (status, json)
    }
}

/// An AdmissionReview as the API server sends it for a Pod created by a ReplicaSet.
pub(super) fn admission_review(uid: &str, pod: &Value) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5c1a2b7e-0d1f-4b3a-9c55-0c2f3b8e6f01",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                           "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// The pod a ReplicaSet of the `deployment` case creates: generateName, no name, no
/// namespace in the body (the review carries it).
pub(super) fn replicaset_pod() -> Value {
    let deployment = docs(&input("deployment")).remove(0);
    let template = &deployment["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["generateName"] = json!("orders-v2-7d4b9c8f6-");
    metadata["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-v2-7d4b9c8f6",
        "uid": "0b6f1c1e-8f0e-4d0e-a8b9-3f1d2c4b5a69", "controller": true,
        "blockOwnerDeletion": true
    }]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

pub(super) fn response(review: &Value) -> &Value {
    &review["response"]
}

#[tokio::test]
async fn webhook_patch_equals_weftctl_inject() {
    let hook = start_webhook().await;
    for (uid, pod) in [
        ("0f0e8b2a-1111-4c3d-9e4f-5a6b7c8d9e01", replicaset_pod()),
        (
            "0f0e8b2a-2222-4c3d-9e4f-5a6b7c8d9e02",
            docs(&input("pod")).remove(0),
        ),
    ] {
        let (status, answer) = hook.review(&admission_review(uid, &pod)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let r = response(&answer);
        assert_eq!(r["uid"], uid);
        assert_eq!(r["allowed"], true, "{answer}");
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().expect("patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("RFC 6902 patch");
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).expect("patch applies");
        assert_eq!(
            patched,
            inject_object(&pod, &settings()).expect("inject"),
            "the webhook's pod differs from weftctl inject's"
        );

        // The injected pod comes back allowed, without a patch.
        let (_, again) = hook
            .review(&admission_review("0f0e8b2a-3333", &patched))
            .await;
        assert_eq!(response(&again)["allowed"], true);
        assert!(response(&again).get("patch").is_none(), "{again}");
    }

    // Opted out: allowed, no patch.
    let mut pod = replicaset_pod();
    pod["metadata"]["annotations"] = json!({"weft.dev/inject": "false"});
    let (_, answer) = hook.review(&admission_review("u-optout", &pod)).await;
    assert_eq!(response(&answer)["allowed"], true);
    assert!(response(&answer).get("patch").is_none(), "{answer}");
}

#[tokio::test]
async fn webhook_denies_malformed_reviews_clearly() {
    let hook = start_webhook().await;
    let message = |v: &Value| {
        response(v)["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    // A bad annotation: denied with the reason, naming the pod and the annotation.
    let mut pod = replicaset_pod();
    pod["metadata"]["annotations"] = json!({"weft.dev/protocol": "udp"});
    let (status, answer) = hook.review(&admission_review("u-bad", &pod)).await;
    assert_eq!(status, 200);
    assert_eq!(response(&answer)["uid"], "u-bad");
    assert_eq!(response(&answer)["allowed"], false);
    let m = message(&answer);
    assert!(
        m.contains("Pod shop/orders-v2-7d4b9c8f6-*: annotation weft.dev/protocol"),
        "{m}"
    );

    // Host network: denied.
    let mut pod = replicaset_pod();
    pod["spec"]["hostNetwork"] = json!(true);
    let (_, answer) = hook.review(&admission_review("u-host", &pod)).await;
    assert_eq!(response(&answer)["allowed"], false);
    assert!(message(&answer).contains("hostNetwork"), "{answer}");

    // An app running as the sidecar's UID would bypass capture: denied, saying which and how
    // to fix it; opted out of capture, the same pod is allowed.
    let mut pod = replicaset_pod();
    pod["spec"]["securityContext"] = json!({"runAsUser": 2102});
    let (_, answer) = hook.review(&admission_review("u-uid", &pod)).await;
    assert_eq!(response(&answer)["allowed"], false);
    assert!(message(&answer).contains("runs as UID 2102"), "{answer}");
    pod["metadata"]["annotations"] = json!({"weft.dev/capture": "false"});
    let (_, answer) = hook.review(&admission_review("u-uid-opt-out", &pod)).await;
    assert_eq!(response(&answer)["allowed"], true, "{answer}");

    // Wrong apiVersion, with a uid to answer: denied, saying why.
    let mut review = admission_review("u-v1beta1", &replicaset_pod());
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, answer) = hook.review(&review).await;
    assert_eq!(status, 200);
    assert_eq!(response(&answer)["allowed"], false);
    assert!(message(&answer).contains("admission.k8s.io/v1"), "{answer}");

    // No object: denied.
    let mut review = admission_review("u-noobj", &replicaset_pod());
    review["request"]
        .as_object_mut()
        .expect("request")
        .remove("object");
    let (_, answer) = hook.review(&review).await;
    assert_eq!(response(&answer)["allowed"], false);
    assert!(message(&answer).contains("request.object"), "{answer}");

    // No uid: 400 with the reason.
    let mut review = admission_review("", &replicaset_pod());
    review["request"]
        .as_object_mut()
        .expect("request")
        .remove("uid");
    let (status, answer) = hook.review(&review).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or("")
            .contains("request.uid"),
        "{answer}"
    );

    // Not JSON: 400.
    let (status, body) = hook.post("POST", "/inject", b"<xml/>".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("not JSON"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Over 1 MiB: 413.
    let (status, _) = hook
        .post("POST", "/inject", vec![b' '; 1024 * 1024 + 1])
        .await;
    assert_eq!(status, 413);

    // Wrong method or path.
    let (status, _) = hook.post("GET", "/inject", Vec::new()).await;
    assert_eq!(status, 405);
    let (status, _) = hook.post("POST", "/mutate", b"{}".to_vec()).await;
    assert_eq!(status, 404);

    // And it still serves.
    let (_, answer) = hook
        .review(&admission_review("u-after", &replicaset_pod()))
        .await;
    assert_eq!(response(&answer)["allowed"], true);
}

/// The `weft-control-plane` binary serves the webhook with `--webhook-listen/-cert/-key`, with
/// its own trust domain in the injected identities.
#[tokio::test]
async fn control_plane_binary_serves_the_webhook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, tls) = webhook_certs(dir.path());
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("mkdir");
    std::fs::write(
        policy.join("mesh.yaml"),
        "services:\n  - name: orders\n    identity: spiffe://cluster.example/ns/shop/sa/orders\n",
    )
    .expect("write");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
    };
    let (listen, admin, hook_addr) = (free(), free(), free());
    let mut child = spawn(
        Command::new(env!("CARGO_BIN_EXE_weft-control-plane"))
            .arg("--policy-dir")
            .arg(&policy)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--trust-domain", "cluster.example"])
            .args(["--webhook-listen", &hook_addr.to_string()])
            .arg("--webhook-cert")
            .arg(&cert)
            .arg("--webhook-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("spawn");
    let hook = TestWebhook {
        _hook: None,
        addr: hook_addr,
        tls,
        _dir: dir,
    };
    wait::until_async("the webhook to listen", Duration::from_secs(15), || {
        if let Some(exit) = child.status() {
            panic!("weft-control-plane exited: {exit}");
        }
        async move { tokio::net::TcpStream::connect(hook_addr).await.ok() }
    })
    .await;
    let pod = replicaset_pod();
    let (status, answer) = hook.review(&admission_review("u-bin", &pod)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(response(&answer)["allowed"], true, "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response(&answer)["patch"].as_str().expect("patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("patch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).expect("applies");
    let want = Settings {
        trust_domain: "cluster.example".into(),
        ..settings()
    };
    assert_eq!(patched, inject_object(&pod, &want).expect("inject"));
}
