//! The apps' own probes through the sidecar, on the deployed shop (see `deployed`): the
//! webhook rewrites the shop's `httpGet` and `tcpSocket` probes (from `shop-apps.yaml`) to the
//! sidecar's read-only port, `/app-health/<container>/<kind>`, and the pod runner's kubelet
//! probes `<podIP>:15020`; the sidecar calls the app on the pod's loopback. The shop's pods
//! become Ready through those probes. A pod whose app's readiness fails (its probe path answers
//! 503) stays not Ready while its sidecar is ready, and its Service's EndpointSlice lists it
//! not ready. Paths other than the configured probes are not forwarded (404).

use std::time::Duration;

use serde_json::{json, Value};
use weft_podrunner::{EventKind, PodHandle};
use weft_testkit::wait;

use super::deployed::{can_run, node_get, Shop, LIMIT, NS};

/// An echo app whose readiness probe asks for a 503 (`weft-sample http` answers
/// `/status/{code}` with that code), probed by the port's name.
const SICK: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: sick, namespace: shop, labels: {app: sick}}
spec:
  selector: {matchLabels: {app: sick}}
  template:
    metadata:
      labels: {app: sick}
      annotations: {weft.dev/service: sick, weft.dev/app-port: "8080", weft.dev/protocol: http}
    spec:
      serviceAccountName: sick
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
        - name: sick
          image: weft-sample:0.1.0
          args: [http, --listen=127.0.0.1:8080, --name=$(POD_NAME)]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          ports: [{name: app, containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /status/503, port: app}
            periodSeconds: 1
            failureThreshold: 2
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sick, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: sick, namespace: shop, labels: {app: sick}}
spec:
  selector: {app: sick}
  ports: [{name: http, port: 8080, targetPort: 8080, protocol: TCP, appProtocol: http}]
"#;

/// `GET path` on the pod's sidecar read-only port, from the node (where the kubelet is).
async fn sidecar_get(shop: &Shop, pod: &PodHandle, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    let addr = std::net::SocketAddr::from((pod.ip(), 15020));
    node_get(&shop.runner, addr, req)
        .await
        .unwrap_or_else(|| panic!("{} {path}: no answer", pod.name()))
}

/// The app container (the first) of the pod as stored in the API.
fn app_container(shop: &Shop, pod: &PodHandle) -> Value {
    shop.kube.server().get_in("Pod", NS, pod.name())["spec"]["containers"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_probes_go_through_the_sidecar_and_readiness_is_the_apps() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.apply(SICK);
    // Ready means every container's readiness passed: the apps' through their sidecars.
    shop.start_pods().await;

    // The shop's four apps: their probes point at the sidecar, which answers them from the app.
    for pod in &shop.pods[..4] {
        let c = app_container(&shop, pod);
        let name = c["name"].as_str().expect("container name").to_owned();
        for (field, kind) in [("readinessProbe", "readyz"), ("livenessProbe", "livez")] {
            let path = format!("/app-health/{name}/{kind}");
            assert_eq!(
                c[field]["httpGet"],
                json!({"path": &path, "port": 15020, "scheme": "HTTP"}),
                "{}: {c}",
                pod.name()
            );
            let (code, body) = sidecar_get(&shop, pod, &path).await;
            assert_eq!(code, 200, "{} {path}: {body}", pod.name());
            let want = if name == "inventory" {
                "accepts connections on 127.0.0.1:8080"
            } else {
                "answered 200 on 127.0.0.1:8080/health"
            };
            assert!(body.contains(want), "{} {path}: {body}", pod.name());
        }
        // The app container became ready (the runner's kubelet probed it through the sidecar).
        let events = pod.events();
        assert!(
            events
                .iter()
                .any(|e| e.container == name && e.kind == EventKind::Ready),
            "{events:#?}"
        );
        // Only the configured probes are served: no startup probe was configured.
        let (code, body) = sidecar_get(&shop, pod, &format!("/app-health/{name}/startupz")).await;
        assert_eq!(code, 404, "{body}");
    }

    // The sick app: its sidecar becomes ready, its app's readiness fails through the sidecar.
    let sick = shop.create_pod("sick", "sick-7d4b9c8f6-f1").await;
    let events = sick
        .wait_events("the sidecar Ready and the app NotReady", LIMIT, |ev| {
            let has = |c: &str, k: EventKind| ev.iter().any(|e| e.container == c && e.kind == k);
            has("weft-proxy", EventKind::Ready) && has("sick", EventKind::NotReady)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nsidecar log:\n{}\napp log:\n{}",
                sick.logs("weft-proxy"),
                sick.logs("sick")
            )
        });
    assert!(
        !events
            .iter()
            .any(|e| e.container == "sick" && e.kind == EventKind::Ready),
        "{events:#?}"
    );
    assert!(
        !sick.is_ready(),
        "the pod is not Ready while its app is not"
    );
    let (code, body) = sidecar_get(&shop, &sick, "/app-health/sick/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("app answered 503 on 127.0.0.1:8080/status/503"),
        "{body}"
    );
    // The sidecar itself is ready: its own /ready does not wait on the app.
    let (code, body) = sidecar_get(&shop, &sick, "/ready").await;
    assert_eq!(code, 200, "{body}");

    // Its Service's EndpointSlice lists it, not ready (the runner writes it after the status).
    let api = shop.kube.server();
    let ip = sick.ip().to_string();
    let endpoint = wait::until_async(
        "the sick pod in its EndpointSlice",
        Duration::from_secs(10),
        || async {
            let slice = api.try_get_in("EndpointSlice", NS, "sick-podrunner")?;
            slice["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["addresses"][0] == ip.as_str())
                .cloned()
        },
    )
    .await;
    assert_eq!(endpoint["conditions"]["ready"], false, "{endpoint}");
    // The status in the API says the same: the sidecar ready, the app not, the pod not Ready
    // (written by the runner after its own state changed: waited for, bounded).
    let ready_of = |pod: &Value, list: &str, c: &str| {
        pod["status"][list]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == c))
            .map(|s| s["ready"].clone())
    };
    wait::until_async(
        "the sick pod's status: sidecar ready, app not",
        Duration::from_secs(10),
        || async {
            let pod = api.try_get_in("Pod", NS, sick.name())?;
            let ready_condition = pod["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?["status"]
                .clone();
            (ready_of(&pod, "initContainerStatuses", "weft-proxy") == Some(json!(true))
                && ready_of(&pod, "containerStatuses", "sick") == Some(json!(false))
                && ready_condition == "False")
                .then_some(())
        },
    )
    .await;

    // Nothing but the configured probes is forwarded.
    for path in [
        "/app-health/sick/livez",
        "/app-health/frontend/readyz",
        "/app-health/sick/readyz/x",
        "/app-health/",
    ] {
        let (code, body) = sidecar_get(&shop, &sick, path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
}
