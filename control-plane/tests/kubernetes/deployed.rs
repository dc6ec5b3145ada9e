//! Kubernetes as deployed, on one machine: the real `weft-control-plane` binary with
//! `--kubernetes --kubernetes-tokens` against the stand-in API server, its real injection
//! webhook mutating the shop's pods (the Deployments of `deploy/examples/kubernetes/
//! shop-apps.yaml`, as their ReplicaSets create them), and the mutated pods run by the pod
//! runner (`weft-podrunner`) as a kubelet runs them: each in its own network namespace with
//! its own IP on the node's bridge, the injected `weft-proxy` as a native sidecar (startup,
//! readiness and liveness probes on the spec's timings), the app container `weft-sample`
//! (the binaries of `target/debug` stand for the images of the same name), volumes as the
//! spec says (the projected service-account token minted by the stand-in's TokenRequest, the
//! `weft-trust-bundle` ConfigMap read from the stand-in). The runner writes each pod's status
//! (phase, podIP, Ready) to the stand-in and keeps the Services' EndpointSlices as the
//! EndpointSlice controller does, so the endpoints the control plane sees are pod IPs whose
//! readiness follows the probes.
//!
//! Where things run, and why: the runner's node network namespace is the node's host network.
//! The stand-in API server and the control plane run there (the control plane as a process
//! with the node's network, like a control plane with `hostNetwork`, on the bridge address
//! 10.213.0.1): pods reach it through the Service name the injector writes
//! (`weft-control-plane.weft-system.svc`), which resolves in their `/etc/hosts` to that
//! address; the control plane reaches the API server on the node's loopback. Nothing of it is
//! on the host's own network.
//!
//! Needs root and network namespaces; without them the test fails saying why, unless
//! `WEFT_NO_NETNS=1` skips it explicitly. The `weft-proxy` and `weft-sample` binaries must be
//! built (`cargo build -p weft-proxy -p weft-samples`): stale ones are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{json, Value};
use weft_kube_standin::{kubeconfig, ApiServer};
use weft_podrunner::{Images, PodHandle, Runner, RunnerOptions, StandinApi};
use weft_testkit::process::{spawn, Guard};
use weft_testkit::{tools, wait};

use super::inject::{admission_review, response, webhook_certs, TestWebhook};
use super::source::TD;

pub(super) const NS: &str = "shop";
/// How long a pod may take from start to ready on a busy 2-core machine (token, certificate,
/// first snapshot, probes).
pub(super) const LIMIT: Duration = Duration::from_secs(90);
/// The control plane's ports on the node (its network namespace is the test's own: no clash).
pub(super) const CP_PORT: u16 = 7070;
pub(super) const ADMIN: &str = "127.0.0.1:9901";
const WEBHOOK: &str = "127.0.0.1:9443";

/// A meshed client for the scenarios: an echo app (`weft-sample http`, which answers with the
/// caller identity its sidecar passed on) under its own service account, injected like the shop.
const CLIENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata:
      labels: {app: client}
      annotations: {weft.dev/service: client, weft.dev/app-port: "8080", weft.dev/protocol: http}
    spec:
      serviceAccountName: client
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
        - name: client
          image: weft-sample:0.1.0
          args: [http, --listen=127.0.0.1:8080, --name=$(POD_NAME)]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  selector: {app: client}
  ports: [{name: http, port: 8080, targetPort: 8080, protocol: TCP, appProtocol: http}]
"#;

/// `true` when this machine can run pods. When it cannot: with `WEFT_NO_NETNS=1` the test says
/// so and returns `false` (an explicit skip); otherwise it fails with the reason.
pub(super) fn can_run() -> bool {
    match weft_podrunner::host_check() {
        Ok(()) => true,
        Err(why) if std::env::var("WEFT_NO_NETNS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED (WEFT_NO_NETNS=1): pods cannot run here: {why}");
            false
        }
        Err(why) => panic!(
            "the deployed-shop tests need root and network namespaces: {why}. \
             Run them as root, or set WEFT_NO_NETNS=1 to skip them explicitly"
        ),
    }
}

/// What the pods run, said in the test's output. With `WEFT_POD_IMAGES=1` (scripts/test sets it
/// right after `scripts/build-images` built the images from this checkout): the images
/// `localhost/weft-proxy` and `localhost/weft-sample`, mounted and run chrooted in their own
/// root filesystems (`weft_podrunner::rootfs`): their release binaries, their libc, their user
/// database. Otherwise the same binaries as Cargo built them in `target/debug` (refused when
/// older than their sources), on the host's filesystem: quicker to iterate on, but not the
/// images.
pub(super) fn pod_images() -> Images {
    let version = env!("CARGO_PKG_VERSION");
    let images = if std::env::var("WEFT_POD_IMAGES").as_deref() == Ok("1") {
        let roots = weft_podrunner::ImageRoots::mount(&[
            &format!("localhost/weft-proxy:{version}"),
            &format!("localhost/weft-sample:{version}"),
        ])
        .unwrap_or_else(|e| {
            panic!("WEFT_POD_IMAGES=1 but the images cannot be mounted: {e} (scripts/build-images builds them)")
        });
        Images::from_roots(roots)
    } else {
        let proxy = super::shared::weft_proxy_binary();
        let sample = tools::workspace_binary("weft-sample", &["samples/src"]);
        assert_eq!(proxy.parent(), sample.parent());
        Images::weft_binaries(proxy.parent().expect("target dir"))
    };
    eprintln!("the pods run:\n{}", images.describe());
    images
}

/// The documents of a multi-document YAML text.
fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

/// A file of `deploy/examples/kubernetes`, as documents.
pub(super) fn example(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/kubernetes")
        .join(file);
    documents(&std::fs::read_to_string(&path).expect("example manifest"))
}

fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| d["kind"] == kind)
}

/// The pod a workload's controller creates (a Deployment's ReplicaSet, a Job's controller):
/// the template's metadata and spec, a `generateName`, no name or namespace yet (the admission
/// review carries the namespace).
fn controller_pod(docs: &[Value], workload: &str) -> Value {
    let d = docs
        .iter()
        .find(|d| d["metadata"]["name"] == workload && d["spec"]["template"].is_object())
        .unwrap_or_else(|| panic!("no workload {workload}"));
    let template = &d["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["generateName"] = json!(format!("{workload}-"));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// The shop running: the stand-in, the control plane, the runner and its pods. Dropping it
/// stops the pods, the control plane and the node (processes and namespaces), in that order.
pub(super) struct Shop {
    pub pods: Vec<PodHandle>,
    pub(super) cp: Guard,
    pub kube: Arc<StandinApi>,
    pub runner: Runner,
    hook: Arc<TestWebhook>,
    docs: Vec<Value>,
    cp_log: PathBuf,
    pub tmp: tempfile::TempDir,
    admitted: usize,
}

impl Shop {
    /// The stand-in (in the node's network), the control plane beside it, the shop's Services,
    /// ServiceAccounts and trust bundle; no pods yet.
    pub async fn start() -> Shop {
        Shop::start_with(&[]).await
    }

    /// [`Shop::start`] with more arguments for the control plane (`cp_args`).
    pub async fn start_with(cp_args: &[String]) -> Shop {
        let images = pod_images();
        let mut docs = example("shop-apps.yaml");
        docs.extend(documents(CLIENT));

        let kube = StandinApi::unattached("weft-node");
        let api: Arc<dyn weft_podrunner::ClusterApi> = kube.clone();
        let mut opts = RunnerOptions::new(api, images);
        opts.backoff = (Duration::from_millis(200), Duration::from_secs(2));
        // ConfigMap volumes follow the API within about a second (the kubelet: a minute).
        opts.volume_sync = Some(Duration::from_secs(1));
        let runner = Runner::new(opts).expect("the pod runner");
        let objects: Vec<Value> = docs
            .iter()
            .filter(|d| {
                ["Namespace", "Service", "ServiceAccount"]
                    .contains(&d["kind"].as_str().unwrap_or(""))
            })
            .cloned()
            .collect();
        // Started on the node's runtime, so it listens on the node's loopback.
        let server = runner
            .node()
            .handle()
            .spawn(ApiServer::start(objects))
            .await
            .expect("the stand-in starts");
        kube.attach(Arc::new(server));
        for svc in of_kind(&docs, "Service") {
            runner.apply_service(serde_json::from_value(svc.clone()).expect("a Service"));
        }
        // What pods resolve the control plane's name to (not in the API: a Service without
        // endpoints would be one more mesh service to the control plane).
        let cp_service: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "weft-control-plane", "namespace": "weft-system"},
            "spec": {"clusterIP": weft_podrunner::net::GATEWAY.to_string(),
                     "ports": [{"name": "grpc", "port": CP_PORT}]}
        }))
        .expect("a Service");
        runner.apply_service(cp_service);

        let tmp = tempfile::tempdir().expect("tempdir");
        let (cp, cp_log, hook) = control_plane(&runner, &kube, tmp.path(), "cp.log", cp_args).await;
        // The trust bundle ConfigMap holds the CA certificate (docs/KUBERNETES.md, "Install").
        let ca = std::fs::read_to_string(tmp.path().join("state/ca.crt")).expect("ca.crt");
        kube.server()
            .put(json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "weft-trust-bundle", "namespace": NS}, "data": {"ca.crt": ca}}));
        Shop {
            pods: Vec::new(),
            cp,
            kube,
            runner,
            hook,
            docs,
            cp_log,
            tmp,
            admitted: 0,
        }
    }

    /// Applies the documents of `yaml`: ServiceAccounts and Services to the API (and the
    /// Services to the pods' names), workloads kept for [`Shop::create_pod`].
    pub fn apply(&mut self, yaml: &str) {
        for doc in documents(yaml) {
            if ["Service", "ServiceAccount"].contains(&doc["kind"].as_str().unwrap_or("")) {
                self.kube.server().put(doc.clone());
            }
            if doc["kind"] == "Service" {
                self.runner
                    .apply_service(serde_json::from_value(doc.clone()).expect("a Service"));
            }
            self.docs.push(doc);
        }
    }

    /// Stops the control plane (SIGTERM, as a rollout does; SIGKILL after 30 s) and starts it
    /// again on the same state with `cp_args`, its log in `log`; returns once its webhook
    /// answers.
    pub async fn restart_control_plane(&mut self, log: &str, cp_args: &[String]) {
        self.cp.signal(nix::sys::signal::Signal::SIGTERM);
        if self.cp.wait_within(Duration::from_secs(30)).is_none() {
            self.cp.kill();
        }
        let (cp, cp_log, hook) =
            control_plane(&self.runner, &self.kube, self.tmp.path(), log, cp_args).await;
        (self.cp, self.cp_log, self.hook) = (cp, cp_log, hook);
    }

    /// The control plane's log so far.
    pub fn cp_log(&self) -> String {
        std::fs::read_to_string(&self.cp_log).unwrap_or_default()
    }

    /// Creates a pod of `workload` (a Deployment or Job of the manifests) as its controller
    /// would: through the webhook (which injects the sidecar), named `name`, then scheduled on
    /// the runner's node.
    pub async fn create_pod(&mut self, workload: &str, name: &str) -> PodHandle {
        if let Some(exit) = self.cp.status() {
            panic!("weft-control-plane exited: {exit}\n{}", self.cp_log());
        }
        self.admitted += 1;
        let pod = controller_pod(&self.docs, workload);
        let review = admission_review(&format!("uid-{}", self.admitted), &pod);
        let hook = self.hook.clone();
        let (status, answer) = self
            .runner
            .node()
            .handle()
            .spawn(async move { hook.review(&review).await })
            .await
            .expect("the webhook answered");
        assert_eq!(status, 200, "{answer}");
        assert_eq!(response(&answer)["allowed"], true, "{answer}");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response(&answer)["patch"].as_str().expect("a patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("RFC 6902 patch");
        let mut patched = pod;
        json_patch::patch(&mut patched, &patch).expect("the patch applies");
        patched["metadata"]["name"] = json!(name);
        patched["metadata"]["namespace"] = json!(NS);
        let pod: Pod = serde_json::from_value(patched).expect("the injected Pod");
        self.kube
            .schedule(&self.runner, pod)
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e}"))
    }

    /// The shop's five pods (inventory, orders v1 and v2, frontend, client), in that order in
    /// `pods`, each started and then waited for until ready.
    pub async fn start_pods(&mut self) {
        for (deployment, name) in [
            ("inventory", "inventory-7d4b9c8f6-a1"),
            ("orders-v1", "orders-v1-7d4b9c8f6-b1"),
            ("orders-v2", "orders-v2-7d4b9c8f6-c1"),
            ("frontend", "frontend-7d4b9c8f6-d1"),
            ("client", "client-7d4b9c8f6-e1"),
        ] {
            let pod = self.create_pod(deployment, name).await;
            self.pods.push(pod);
        }
        for pod in &self.pods {
            self.ready(pod).await;
        }
    }

    /// Waits until `pod` is Ready (its sidecar's startup and readiness probes passed), failing
    /// with its sidecar's log and the control plane's.
    pub async fn ready(&self, pod: &PodHandle) {
        if let Err(e) = pod.wait_ready(LIMIT).await {
            panic!(
                "{e}\nsidecar log:\n{}\napp log:\n{}\ncontrol plane log:\n{}",
                pod.logs("weft-proxy"),
                pod.logs(
                    pod.name()
                        .split("-7d4b")
                        .next()
                        .unwrap_or("")
                        .trim_end_matches("-v1")
                        .trim_end_matches("-v2")
                ),
                self.cp_log()
            );
        }
    }

    /// A GET of `path` on the control plane's admin API (from the node), with its token.
    pub async fn admin(&self, path: &str) -> Value {
        let token = std::fs::read_to_string(self.tmp.path().join("state/admin.token"))
            .expect("the admin token");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        );
        let (code, body) = node_get(&self.runner, ADMIN.parse().expect("addr"), req)
            .await
            .expect("the admin API answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }
}

/// One HTTP/1.1 exchange from the node's network: status and body, `None` when the connection
/// fails or no answer comes within 5 s.
pub(super) async fn node_get(
    runner: &Runner,
    addr: std::net::SocketAddr,
    request: String,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let call = async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    runner
        .node()
        .handle()
        .spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .ok()
                .flatten()
        })
        .await
        .ok()
        .flatten()
}

/// The control plane in the node's network (see the module docs) with `extra` arguments, its
/// log file (`log` in `dir`), and its webhook's client. Returns once the webhook answers.
async fn control_plane(
    runner: &Runner,
    kube: &StandinApi,
    dir: &Path,
    log: &str,
    extra: &[String],
) -> (Guard, PathBuf, Arc<TestWebhook>) {
    let (cert, key, tls) = webhook_certs(dir);
    let log = dir.join(log);
    let listen = format!("{}:{CP_PORT}", weft_podrunner::net::GATEWAY);
    let mut cp = spawn(
        Command::new("ip")
            .args(["netns", "exec", runner.node().netns()])
            .arg(env!("CARGO_BIN_EXE_weft-control-plane"))
            .args(["--kubernetes", "--kubernetes-tokens", "--trust-domain", TD])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--listen", &listen])
            .args(["--admin", ADMIN])
            .args(["--webhook-listen", WEBHOOK])
            .arg("--webhook-cert")
            .arg(&cert)
            .arg("--webhook-key")
            .arg(&key)
            .args([
                "--webhook-control-plane",
                &format!("weft-control-plane.weft-system.svc:{CP_PORT}"),
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig(dir, kube.server()))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    )
    .expect("spawn weft-control-plane");
    let addr: std::net::SocketAddr = WEBHOOK.parse().expect("addr");
    let handle = runner.node().handle().clone();
    wait::until_async("the webhook to listen", Duration::from_secs(30), || {
        if let Some(exit) = cp.status() {
            panic!(
                "weft-control-plane exited: {exit}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let handle = handle.clone();
        async move {
            handle
                .spawn(async move { tokio::net::TcpStream::connect(addr).await.ok() })
                .await
                .ok()
                .flatten()
                .map(|_| ())
        }
    })
    .await;
    let hook = TestWebhook {
        _hook: None,
        addr,
        tls,
        _dir: tempfile::tempdir().expect("tempdir"),
    };
    (cp, log, Arc::new(hook))
}

/// `curl` (the machine's, unmodified) run in `pod`'s network namespace as `ip netns exec`
/// does: `urls` on the Service `host` (port 80), connected to the pod's sidecar outbound
/// listener as the mesh's redirect would. Prints per request a line `<code> <body>`.
pub(super) async fn curl(pod: &PodHandle, host: &str, paths: &[String]) -> Vec<(u16, String)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pod.netns(), "curl", "-sS", "-m", "5"])
        .args(["--connect-to", &format!("{host}:80:127.0.0.1:15001")])
        .args(["-w", "\n@@%{http_code}\n"]);
    for p in paths {
        cmd.arg(format!("http://{host}{p}"));
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("curl task")
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut replies = Vec::new();
    let mut body = String::new();
    for line in text.lines() {
        match line.strip_prefix("@@") {
            Some(code) => {
                replies.push((code.trim().parse().unwrap_or(0), std::mem::take(&mut body)));
            }
            None => body.push_str(line),
        }
    }
    assert_eq!(
        replies.len(),
        paths.len(),
        "curl: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    replies
}

/// The shop, injected by the webhook, on pods with their own IPs: every sidecar bootstraps from
/// its service-account token (minted by the stand-in, reviewed by it), gets its snapshot and
/// becomes ready; the status in the API carries each pod's IP and readiness, the EndpointSlices
/// list the pod IPs; an unmodified curl in the client pod calls the frontend by its Service
/// name, and the whole chain (frontend → orders v1 and v2 over HTTP → inventory over gRPC)
/// answers; the apps see their caller's SPIFFE identity; `weftctl top`'s data names each
/// sidecar's metrics port on its pod IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_shop_runs_on_pods_with_their_own_ips() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.start_pods().await;
    let ips: std::collections::BTreeSet<_> = shop.pods.iter().map(PodHandle::ip).collect();
    assert_eq!(ips.len(), shop.pods.len(), "one IP per pod");

    // The API holds what the kubelet reported: each pod Running, Ready, with its IP; the
    // EndpointSlice of orders lists both orders pods' IPs, ready.
    let api = shop.kube.server();
    for pod in &shop.pods {
        // Written by the runner after its own state changes: waited for, bounded.
        wait::until_async(
            &format!("{} Running with its IP in the API", pod.name()),
            Duration::from_secs(10),
            || async {
                let stored = api.try_get_in("Pod", NS, pod.name())?;
                (stored["status"]["podIP"] == pod.ip().to_string()
                    && stored["status"]["phase"] == "Running")
                    .then_some(())
            },
        )
        .await;
    }
    // The slice follows the pods' status writes (the runner's EndpointSlice sync runs after
    // each), so it is waited for, bounded, like a controller's output.
    let mut want = vec![shop.pods[1].ip().to_string(), shop.pods[2].ip().to_string()];
    want.sort();
    let ready_ips = |slice: &Value| -> Vec<String> {
        let mut ready: Vec<String> = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["conditions"]["ready"] == true)
            .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
            .collect();
        ready.sort();
        ready
    };
    wait::until_async(
        "the orders EndpointSlice listing both orders pods ready",
        Duration::from_secs(10),
        || async {
            let slice = api.try_get_in("EndpointSlice", NS, "orders-podrunner")?;
            (ready_ips(&slice) == want).then_some(())
        },
    )
    .await;
    assert!(
        api.reviews() >= shop.pods.len(),
        "every sidecar's token was reviewed"
    );

    // client → its sidecar → frontend's → frontend app → orders (both versions) and inventory.
    let client = &shop.pods[4];
    let (orders_v1, orders_v2) = (shop.pods[1].name(), shop.pods[2].name());
    let mut served = std::collections::BTreeSet::new();
    let paths: Vec<String> = (0..8).map(|i| format!("/shop/{i}")).collect();
    let deadline = std::time::Instant::now() + LIMIT;
    while served.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "orders served only by {served:?}\n{}",
            shop.cp_log()
        );
        for (code, body) in curl(client, "frontend.shop.svc.cluster.local", &paths).await {
            if code != 200 {
                // The endpoints' readiness may still be on its way to the callers' snapshots.
                continue;
            }
            let v: Value = serde_json::from_str(&body).expect("frontend's JSON");
            assert_eq!(v["served_by"], shop.pods[3].name(), "{v}");
            assert_eq!(v["inventory_served_by"], shop.pods[0].name(), "{v}");
            let by = v["order"]["served_by"]
                .as_str()
                .expect("orders' name")
                .to_owned();
            assert!(by == orders_v1 || by == orders_v2, "{v}");
            served.insert(by);
        }
    }

    // The frontend pod calls the client's echo app: it sees the frontend's identity.
    let frontend = &shop.pods[3];
    let replies = curl(frontend, "client.shop.svc.cluster.local", &["/who".into()]).await;
    assert_eq!(replies[0].0, 200, "{replies:?}");
    let echo: Value = serde_json::from_str(&replies[0].1).expect("echo JSON");
    assert_eq!(
        echo["caller"],
        format!("spiffe://{TD}/ns/shop/sa/frontend"),
        "{echo}"
    );

    // `weftctl top` scrapes what the status lists: each sidecar's metrics port on its pod IP.
    let status = shop.admin("/v1/status").await;
    let scraped: std::collections::BTreeSet<String> = status["sidecars"]
        .as_array()
        .expect("sidecars")
        .iter()
        .filter_map(|s| s["admin"].as_str().map(str::to_owned))
        .collect();
    let want: std::collections::BTreeSet<String> = shop
        .pods
        .iter()
        .map(|p| format!("{}:15020", p.ip()))
        .collect();
    assert_eq!(scraped, want, "{status}");
    for target in &scraped {
        let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let (code, metrics) = node_get(&shop.runner, target.parse().expect("addr"), req.into())
            .await
            .expect("metrics");
        assert!(code == 200 && metrics.contains("weft_"), "{target}: {code}");
    }
}
