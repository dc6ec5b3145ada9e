//! Kubernetes as deployed, on one machine: the real `weft-control-plane` binary with
//! `--kubernetes --kubernetes-tokens` against the stand-in API server, its real injection
//! webhook mutating the shop's pods (the Deployments of `deploy/examples/kubernetes/
//! shop-apps.yaml`, as their ReplicaSets create them), and real `weft-proxy` sidecars started
//! from the container the webhook injected, as a kubelet would: the env with its `fieldRef`s
//! (`POD_NAME`, `POD_NAMESPACE`, `POD_IP`, `SERVICE_ACCOUNT`) and `$(VAR)` expanded in order,
//! the volumes as directories (the projected service-account token, which the stand-in's
//! TokenReview authenticates, and the `weft-trust-bundle` ConfigMap; the data emptyDir), the
//! mount paths in the args and config pointing into them.
//!
//! The `weft-proxy` binary must be built (`cargo build -p weft-proxy`): the test runs the one
//! beside it and refuses a stale one.
//!
//! What differs from a cluster, and why: there is no network namespace per pod here, so each
//! pod gets a loopback address of its own, 127.A.B.N (A.B random per run), standing for both
//! its pod IP and its own loopback. The listeners the injected config puts on 127.0.0.1 or
//! 0.0.0.0 (the sidecar's outbound, admin, inbound and metrics ports) and the app's address
//! are moved to that address, ports unchanged: on one host they would collide. Nothing else
//! of the injected config changes. The apps are in-process HTTP servers answering with who
//! served and the caller identity their sidecar passed on (`x-weft-caller`). The test plays
//! the kubelet and the EndpointSlice controller: pods start `Pending` with not-ready
//! endpoints, and become `Running` and ready once their sidecar's startup probe (`/ready` on
//! the metrics port) passes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_testkit::process::{spawn, Guard};
use weft_testkit::{ports, tools, wait};

use super::inject::{admission_review, response, webhook_certs, TestWebhook};
use super::source::{slice, TD};
use weft_kube_standin::{kubeconfig, ApiServer};

const NS: &str = "shop";
/// How long a sidecar may take from start to ready (token, certificate, first snapshot).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// One pod of the shop: which Deployment's template, its name and address.
struct PodPlan {
    deployment: &'static str,
    name: String,
    ip: Ipv4Addr,
}

/// The documents of the shop example.
fn shop_apps() -> Vec<Value> {
    use serde::Deserialize as _;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/kubernetes/shop-apps.yaml");
    let text = std::fs::read_to_string(&path).expect("shop-apps.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| d["kind"] == kind)
}

/// The pod a Deployment's ReplicaSet creates: the template's metadata and spec, a
/// `generateName`, no name or namespace yet (the admission review carries the namespace).
fn replicaset_pod(docs: &[Value], deployment: &str) -> Value {
    let d = of_kind(docs, "Deployment")
        .find(|d| d["metadata"]["name"] == deployment)
        .unwrap_or_else(|| panic!("no Deployment {deployment}"));
    let template = &d["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["generateName"] = json!(format!("{deployment}-7d4b9c8f6-"));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// `pod` through the webhook: the patched pod.
async fn injected(hook: &TestWebhook, pod: &Value, uid: &str) -> Value {
    let (status, answer) = hook.review(&admission_review(uid, pod)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(response(&answer)["allowed"], true, "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response(&answer)["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("RFC 6902 patch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    patched
}

/// The pod as the API server holds it once scheduled: named, with its IP, in `phase`.
fn scheduled(mut pod: Value, plan: &PodPlan, phase: &str) -> Value {
    pod["metadata"]["name"] = json!(plan.name);
    pod["metadata"]["namespace"] = json!(NS);
    pod["metadata"]["uid"] = json!(format!("pod-{}", plan.name));
    pod["status"] = json!({
        "phase": phase,
        "podIP": plan.ip.to_string(),
        "podIPs": [{"ip": plan.ip.to_string()}],
    });
    pod
}

/// `$(VAR)` references to variables defined earlier replaced, `$$` kept as one `$`, unknown
/// references left as they are: the kubelet's expansion of env values and args.
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|a| a.split_once(')'))
            .filter(|(n, _)| vars.contains_key(*n))
        {
            out.push_str(&vars[name]);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API `fieldRef` for `pod`.
fn field(pod: &Value, path: &str) -> String {
    let v = match path {
        "metadata.name" => &pod["metadata"]["name"],
        "metadata.namespace" => &pod["metadata"]["namespace"],
        "status.podIP" => &pod["status"]["podIP"],
        "spec.serviceAccountName" => &pod["spec"]["serviceAccountName"],
        other => panic!("fieldRef {other} is not supported here"),
    };
    v.as_str().unwrap_or_default().to_owned()
}

/// Write the pod's volumes as directories under `root`: projected service-account tokens and
/// ConfigMap items (from `configmaps`) with the volume's mode, emptyDirs empty.
fn materialize_volumes(pod: &Value, root: &Path, token: &str, configmaps: &BTreeMap<&str, Value>) {
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let dir = root.join(v["name"].as_str().expect("volume name"));
        std::fs::create_dir_all(&dir).expect("volume dir");
        let Some(sources) = v["projected"]["sources"].as_array() else {
            continue; // an emptyDir
        };
        let mode = v["projected"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        let write = |path: &str, data: &str| {
            let file = dir.join(path);
            std::fs::write(&file, data).expect("volume file");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("mode");
        };
        for s in sources {
            if let Some(path) = s["serviceAccountToken"]["path"].as_str() {
                assert_eq!(s["serviceAccountToken"]["audience"], "weft");
                write(path, token);
            }
            if let Some(name) = s["configMap"]["name"].as_str() {
                let cm = &configmaps[name];
                for item in s["configMap"]["items"].as_array().into_iter().flatten() {
                    let key = item["key"].as_str().expect("key");
                    write(
                        item["path"].as_str().expect("path"),
                        cm[key].as_str().expect("data"),
                    );
                }
            }
        }
    }
}

/// The injected sidecar's config with the pod's loopback and wildcard listeners on `ip`
/// (see the module docs): `listen.*` and `service.app`, ports unchanged.
fn on_pod_address(config: &str, ip: Ipv4Addr) -> String {
    let mut c: serde_yaml::Value = serde_yaml::from_str(config).expect("the config is YAML");
    let moved = |v: &mut serde_yaml::Value| {
        let a: SocketAddr = v.as_str().expect("an address").parse().expect("address");
        assert!(a.ip().is_loopback() || a.ip().is_unspecified(), "{a}");
        *v = serde_yaml::Value::from(SocketAddr::from((ip, a.port())).to_string());
    };
    for key in ["outbound", "inbound", "admin", "metrics"] {
        moved(&mut c["listen"][key]);
    }
    moved(&mut c["service"]["app"]);
    serde_yaml::to_string(&c).expect("yaml")
}

/// The injected `weft-proxy` container of `pod` as a kubelet runs it, with its volumes under
/// `root`; its log goes to `root/proxy.log`.
fn sidecar(proxy: &Path, pod: &Value, plan: &PodPlan, root: &Path) -> Guard {
    let container = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "weft-proxy"))
        .expect("the injected sidecar");
    assert_eq!(container["restartPolicy"], "Always", "a native sidecar");
    // Mount paths, longest first, so a nested mount wins.
    let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            let path = m["mountPath"].as_str().expect("mountPath").to_owned();
            (path, root.join(m["name"].as_str().expect("name")))
        })
        .collect();
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let mount = |text: &str| {
        mounts.iter().fold(text.to_owned(), |t, (path, host)| {
            t.replace(path.as_str(), &host.display().to_string())
        })
    };
    let mut env = BTreeMap::new();
    for e in container["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name").to_owned();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some(path) => field(pod, path),
            None => expand(e["value"].as_str().expect("value"), &env),
        };
        env.insert(name, value);
    }
    let config = env.get_mut("WEFT_CONFIG").expect("WEFT_CONFIG");
    *config = mount(&on_pod_address(config, plan.ip));
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| mount(&expand(a.as_str().expect("arg"), &env)))
        .collect();
    let log = std::fs::File::create(root.join("proxy.log")).expect("log");
    spawn(
        Command::new(proxy)
            .args(&args)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("spawn weft-proxy")
}

/// An app on `addr` answering every request with who served it and the caller identity the
/// sidecar passed on.
async fn app(addr: SocketAddr, pod: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("app bind");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let pod = pod.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let caller = req
                        .headers()
                        .get("x-weft-caller")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    let body = format!("served-by={pod} caller={caller}\n");
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

/// One HTTP/1.1 request on its own connection: the status and body, or `None` when the
/// connection fails or no answer comes within 5 s.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    get_with(addr, host, path, "").await
}

/// [`get`] with extra header lines (`Name: value\r\n` each).
async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &str,
) -> Option<(u16, String)> {
    let call = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .ok()
        .flatten()
}

/// The shop's frontend and both orders versions, each pod with its own address and sidecar:
/// every sidecar bootstraps from its service-account token, gets its snapshot and becomes
/// ready; the frontend's app reaches both orders pods through the mesh, at their pod IPs, and
/// orders sees the frontend's SPIFFE identity; the status lists each sidecar's metrics port on
/// its pod IP for `weftctl top`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_sidecars_join_by_identity_and_serve_the_shop() {
    // Built by `cargo build` of the workspace (CI builds it before the tests).
    let proxy = tools::workspace_binary(
        "weft-proxy",
        &[
            "proxy/src",
            "policy/src",
            "certs/src",
            "resilience/src",
            "api/src",
        ],
    );
    // A /24 of the loopback range of this run's own (the pid and the clock pick it).
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let (a, b) = (16 + (seed % 230) as u8, 1 + ((seed / 230) % 249) as u8);
    let pods: Vec<PodPlan> = [("frontend", 1), ("orders-v1", 2), ("orders-v2", 3)]
        .into_iter()
        .map(|(deployment, n)| PodPlan {
            deployment,
            name: format!("{deployment}-7d4b9c8f6-p{n}"),
            ip: Ipv4Addr::new(127, a, b, n),
        })
        .collect();
    let docs = shop_apps();

    let api = ApiServer::start(of_kind(&docs, "Service").cloned().collect()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cert, key, tls) = webhook_certs(tmp.path());
    let free = || SocketAddr::from(([127, 0, 0, 1], ports::reserve()));
    let (listen, admin, hook_addr) = (free(), free(), free());
    let cp_log = tmp.path().join("cp.log");
    let mut cp = spawn(
        Command::new(env!("CARGO_BIN_EXE_weft-control-plane"))
            .args(["--kubernetes", "--kubernetes-tokens", "--trust-domain", TD])
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--webhook-listen", &hook_addr.to_string()])
            .arg("--webhook-cert")
            .arg(&cert)
            .arg("--webhook-key")
            .arg(&key)
            .args(["--webhook-control-plane", &listen.to_string()])
            .env("KUBECONFIG", kubeconfig(tmp.path(), &api))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&cp_log).expect("log")),
    )
    .expect("spawn weft-control-plane");
    let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait::until_async("the webhook to listen", Duration::from_secs(30), || {
        if let Some(exit) = cp.status() {
            panic!("weft-control-plane exited: {exit}\n{}", log(&cp_log));
        }
        async move { tokio::net::TcpStream::connect(hook_addr).await.ok() }
    })
    .await;
    let hook = TestWebhook {
        _hook: None,
        addr: hook_addr,
        tls,
        _dir: tempfile::tempdir().expect("tempdir"),
    };
    // The trust bundle ConfigMap holds the CA certificate (docs/KUBERNETES.md, "Install").
    let ca = std::fs::read_to_string(tmp.path().join("state/ca.crt")).expect("ca.crt");
    let configmaps = BTreeMap::from([("weft-trust-bundle", json!({"ca.crt": ca}))]);

    let endpoints = |app: &str, ready: bool| -> Vec<(String, String, bool)> {
        pods.iter()
            .filter(|p| p.deployment.starts_with(app))
            .map(|p| (p.ip.to_string(), p.name.clone(), ready))
            .collect()
    };
    let put_slices = |ready: bool| {
        for app in ["frontend", "orders"] {
            let eps = endpoints(app, ready);
            let eps: Vec<(&str, &str, bool)> = eps
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), *c))
                .collect();
            api.put(slice(&format!("{app}-abcde"), app, Some("http"), &eps));
        }
    };
    // The EndpointSlice controller lists each pod, not ready, once it has its IP.
    put_slices(false);
    // Admission, scheduling (Pending, endpoints not ready), the kubelet starting the sidecars.
    let mut running = Vec::new();
    for (i, plan) in pods.iter().enumerate() {
        let pod = replicaset_pod(&docs, plan.deployment);
        let pod = injected(&hook, &pod, &format!("uid-{i}")).await;
        let pod = scheduled(pod, plan, "Pending");
        let account = pod["spec"]["serviceAccountName"].as_str().expect("account");
        // The kubelet's TokenRequest for the projected token: bound to the pod, audience weft.
        api.put(
            serde_json::json!({"kind": "ServiceAccount", "apiVersion": "v1",
            "metadata": {"name": account, "namespace": NS}}),
        );
        api.put(pod.clone());
        let token = api
            .mint_token(
                NS,
                account,
                &["weft"],
                Duration::from_secs(3600),
                Some(&plan.name),
            )
            .expect("a token");
        let root = tmp.path().join(&plan.name);
        materialize_volumes(&pod, &root, &token, &configmaps);
        running.push((sidecar(&proxy, &pod, plan, &root), root, pod));
    }

    // Every sidecar: certificate from its token, first snapshot, ready (its startup probe).
    for (plan, (guard, root, _)) in pods.iter().zip(running.iter_mut()) {
        let probe = SocketAddr::from((plan.ip, 15020));
        let what = format!("{}'s sidecar to be ready", plan.name);
        wait::until_async(&what, READY_WITHIN, || {
            if let Some(exit) = guard.status() {
                panic!(
                    "{} exited: {exit}\n{}",
                    plan.name,
                    log(&root.join("proxy.log"))
                );
            }
            async move {
                get(probe, "localhost", "/ready")
                    .await
                    .filter(|(s, _)| *s == 200)
            }
        })
        .await;
    }
    // The startup probes passed: the apps start, the pods run, their endpoints are ready.
    let mut apps = Vec::new();
    for plan in &pods {
        apps.push(app(SocketAddr::from((plan.ip, 8080)), plan.name.clone()).await);
    }
    for (_, _, pod) in &running {
        let mut pod = pod.clone();
        pod["status"]["phase"] = json!("Running");
        api.put(pod);
    }
    put_slices(true);

    // frontend's app -> its sidecar (outbound) -> orders' sidecars (inbound, pod IPs) -> apps.
    let outbound = SocketAddr::from((pods[0].ip, 15001));
    let caller = format!("caller=spiffe://{TD}/ns/shop/sa/frontend");
    let mut served = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while served.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests reached only {served:?}\n{}",
            log(&cp_log)
        );
        match get(outbound, "orders.shop.svc.cluster.local", "/api/orders").await {
            Some((200, body)) => {
                assert!(body.contains(&caller), "orders saw another caller: {body}");
                if let Some(pod) = body
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.strip_prefix("served-by="))
                {
                    served.insert(pod.to_owned());
                }
            }
            Some((403, body)) => panic!("refused: {body}"),
            // Not yet in frontend's snapshot: the endpoints' readiness is still on its way.
            _ => tokio::time::sleep(wait::POLL).await,
        }
    }
    assert_eq!(
        served,
        [pods[1].name.clone(), pods[2].name.clone()].into(),
        "{}",
        log(&cp_log)
    );

    // `weftctl top` scrapes what the status lists: each sidecar's metrics port on its pod IP,
    // never a loopback admin address.
    let token = std::fs::read_to_string(tmp.path().join("state/admin.token")).expect("token");
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    let (code, body) = get_with(admin, "localhost", "/v1/status", &auth)
        .await
        .expect("status");
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    let scraped: std::collections::BTreeSet<String> = status["sidecars"]
        .as_array()
        .expect("sidecars")
        .iter()
        .filter_map(|s| s["admin"].as_str().map(str::to_owned))
        .collect();
    let want: std::collections::BTreeSet<String> =
        pods.iter().map(|p| format!("{}:15020", p.ip)).collect();
    assert_eq!(scraped, want, "{body}");
    for target in &scraped {
        let (code, metrics) = get(target.parse().expect("addr"), "localhost", "/metrics")
            .await
            .expect("metrics");
        assert!(code == 200 && metrics.contains("weft_"), "{target}: {code}");
    }
    for task in apps {
        task.abort();
    }
}
