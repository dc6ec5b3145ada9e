//! Transparent capture as injected, on the deployed shop's harness ([`Shop`]): the webhook adds
//! the `weft-init` init container (`weft-proxy init`, NET_ADMIN and NET_RAW only, run by the pod
//! runner with exactly those capabilities), and
//! - an **unmodified** `curl` in the injected client pod, with no proxy variable and no
//!   `--connect-to`, calls `http://echo.shop.svc.cluster.local:8080/who` and the Service's
//!   ClusterIP; both reach the echo app (bound on `0.0.0.0`) over mTLS: the app sees the
//!   client's SPIFFE identity, which only the server's sidecar sets;
//! - a plaintext connection from a pod of another, non-injected namespace to the echo pod's IP
//!   and app port is refused (it lands on the sidecar's mTLS listener), while the sidecar's
//!   read-only port 15020 (the kubelet's probes) stays reachable; with the rules removed the
//!   same connection reaches the app, which shows the refusal is capture's doing;
//! - running the init container's command again changes nothing (`nft list table inet weft`
//!   before and after), and it restores capture after a removal;
//! - the pods become Ready (their probes pass through the skipped port).

use std::process::Command;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use weft_podrunner::PodHandle;
use weft_testkit::wait;

use super::deployed::{can_run, Shop, LIMIT, NS};
use super::source::TD;

/// The echo server's Service address (a ClusterIP of the service CIDR; nothing routes it: only
/// capture and the sidecar give it meaning, as kube-proxy's rules would in a cluster).
const CLUSTER_IP: &str = "10.96.0.80";

/// An echo app bound on every address (as many apps are), injected like the shop.
const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec:
  selector: {matchLabels: {app: echo}}
  template:
    metadata:
      labels: {app: echo}
      annotations: {weft.dev/service: echo, weft.dev/app-port: "8080", weft.dev/protocol: http}
    spec:
      serviceAccountName: echo
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
        - name: echo
          image: weft-sample:0.1.0
          args: [http, --listen=0.0.0.0:8080, --name=$(POD_NAME)]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          ports: [{name: app, containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /health, port: app}
            periodSeconds: 1
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec:
  selector: {app: echo}
  clusterIP: 10.96.0.80
  ports: [{name: http, port: 8080, targetPort: 8080, protocol: TCP, appProtocol: http}]
"#;

/// A pod outside the mesh, in a namespace the injector does not touch: its containers' traffic
/// is its own (no sidecar, no capture).
const OUTSIDER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: elsewhere}
spec:
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
  containers:
    - name: app
      image: weft-sample:0.1.0
      args: [http, --listen=127.0.0.1:8080]
"#;

/// The machine's curl in `netns`, as a process of that pod would run it: no proxy variable, no
/// address override. Returns (exit code, HTTP status, body); the status is 0 when no HTTP
/// answer came.
fn curl(netns: &str, url: &str, resolve: &[String]) -> (i32, u16, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "curl", "-sS", "-m", "5"]);
    // `ip netns exec` keeps the host's /etc/hosts: a name resolves as the pod's own hosts file
    // (cluster DNS) would resolve it, to the pod IP given here.
    for r in resolve {
        cmd.args(["--resolve", r]);
    }
    cmd.args(["-w", "\n@@%{http_code}"]).arg(url);
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "WEFT_PROXY",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once("\n@@").unwrap_or((&text, "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// `nft list table inet weft` in `netns` (the rules capture loaded); fails when absent.
fn rules(netns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "nft", "list", "table", "inet", "weft",
        ])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "no capture table in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `weft-proxy` with `args` in `netns` (the init container's command, by hand); fails
/// with its output unless it succeeds.
fn weft_proxy_in(netns: &str, args: &[String]) {
    let proxy = super::shared::weft_proxy_binary();
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(&proxy)
        .args(args)
        .output()
        .expect("run weft-proxy");
    assert!(
        out.status.success(),
        "weft-proxy {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `caller` the echo app reports, after a 200; fails otherwise.
fn caller_of(what: &str, (exit, code, body): (i32, u16, String)) -> String {
    assert_eq!((exit, code), (0, 200), "{what}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    v["caller"].as_str().unwrap_or_default().to_owned()
}

/// Calls `url` from `pod` until the mesh answers 200 (the callers' snapshots may still be on
/// their way when the pods turn Ready), bounded by [`LIMIT`]; returns the caller seen.
async fn call_until_served(pod: &PodHandle, url: &str, resolve: &[String]) -> String {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let (netns, u, res) = (pod.netns().to_owned(), url.to_owned(), resolve.to_vec());
        let r = tokio::task::spawn_blocking(move || curl(&netns, &u, &res))
            .await
            .expect("curl task");
        if r.1 == 200 {
            return caller_of(url, r);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} not served within {LIMIT:?}; last answer: {r:?}"
        );
        tokio::time::sleep(wait::POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_pods_call_by_name_and_clusterip_over_mtls_and_refuse_plaintext() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.apply(ECHO);
    let echo = shop.create_pod("echo", "echo-7d4b9c8f6-f1").await;
    let client = shop.create_pod("client", "client-7d4b9c8f6-e1").await;
    // Probes pass through the skipped read-only port: both pods become Ready.
    shop.ready(&echo).await;
    shop.ready(&client).await;

    // What the webhook injected: capture first, as root with two capabilities, for the
    // sidecar's UID; its command is what we run again below.
    let stored = shop
        .kube
        .server()
        .try_get_in("Pod", NS, echo.name())
        .expect("the echo pod in the API");
    let init = &stored["spec"]["initContainers"][0];
    assert_eq!(init["name"], "weft-init", "{stored}");
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]})
    );
    let args: Vec<String> = init["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert_eq!(args[..3], ["init", "--proxy-uid", "2102"]);
    let loaded = rules(echo.netns());
    assert!(
        loaded.contains("redirect to :15006") && loaded.contains("redirect to :15001"),
        "{loaded}"
    );
    assert!(loaded.contains("meta skuid 2102 return"), "{loaded}");

    // An unmodified curl in the client pod, by Service name and by ClusterIP: captured, sent
    // by the client's sidecar over mTLS; the echo app sees the client's identity.
    let identity = format!("spiffe://{TD}/ns/{NS}/sa/client");
    let by_dns = [format!("echo.shop.svc.cluster.local:8080:{}", echo.ip())];
    let by_name = call_until_served(
        &client,
        "http://echo.shop.svc.cluster.local:8080/who",
        &by_dns,
    )
    .await;
    assert_eq!(by_name, identity);
    let by_ip = call_until_served(&client, &format!("http://{CLUSTER_IP}:8080/who"), &[]).await;
    assert_eq!(by_ip, identity);

    // A pod of another namespace, outside the mesh, in plaintext to the echo pod's IP and app
    // port: refused (the sidecar's mTLS listener gets it, and no HTTP answer comes back).
    let outsider: Pod = serde_yaml::from_str(OUTSIDER).expect("outsider pod");
    let outsider = shop
        .kube
        .schedule(&shop.runner, outsider)
        .await
        .expect("the outsider pod");
    outsider.wait_ready(LIMIT).await.expect("outsider ready");
    let direct = format!("http://{}:8080/who", echo.ip());
    let refused = curl(outsider.netns(), &direct, &[]);
    assert_ne!(refused.0, 0, "plaintext reached the app: {refused:?}");
    assert_eq!(refused.1, 0, "{refused:?}");
    // The read-only port is skipped: the kubelet's probes (and Prometheus) reach it.
    let ready = curl(
        outsider.netns(),
        &format!("http://{}:15020/ready", echo.ip()),
        &[],
    );
    assert_eq!((ready.0, ready.1), (0, 200), "{ready:?}");

    // Running the init container's command again changes nothing.
    weft_proxy_in(echo.netns(), &args);
    assert_eq!(
        rules(echo.netns()),
        loaded,
        "init run twice changed the rules"
    );

    // Without the rules the app bound on 0.0.0.0 is reachable around the sidecar: capture is
    // what refused the plaintext call. The init command puts it back.
    weft_proxy_in(echo.netns(), &["init".into(), "--remove".into()]);
    let open = curl(outsider.netns(), &direct, &[]);
    assert_eq!(
        caller_of("plaintext without capture", open),
        "",
        "no identity without the sidecar"
    );
    weft_proxy_in(echo.netns(), &args);
    assert_eq!(rules(echo.netns()), loaded);
    let again = curl(outsider.netns(), &direct, &[]);
    assert_eq!(again.1, 0, "plaintext reached the app again: {again:?}");
    // And the mesh call still works.
    assert_eq!(
        call_until_served(
            &client,
            "http://echo.shop.svc.cluster.local:8080/who",
            &by_dns
        )
        .await,
        identity
    );
}
