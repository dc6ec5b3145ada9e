//! A Job with an injected sidecar, on the deployed shop (see `deployed`): the webhook injects
//! the sidecar as a native sidecar, the Job's app (an unmodified `curl`) starts once the
//! sidecar passed its startup probe, calls orders through it by the Service name, and exits;
//! the pod completes (`Succeeded` in the API) and the sidecar is stopped only after the app.

use weft_podrunner::EventKind;

use super::deployed::{can_run, Shop, LIMIT, NS};

const REPORT: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: report, namespace: shop}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {app: report}
      annotations: {weft.dev/service: report, weft.dev/protocol: http}
    spec:
      restartPolicy: Never
      serviceAccountName: report
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
        - name: report
          image: curl
          command: [curl, -sS, --fail-with-body, -m, "5", --retry, "10", --retry-all-errors,
                    --retry-delay, "1",
                    --connect-to, "orders.shop.svc.cluster.local:80:127.0.0.1:15001",
                    "http://orders.shop.svc.cluster.local/api/orders/7"]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: report, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: report, namespace: shop, labels: {app: report}}
spec:
  selector: {app: report}
  ports: [{name: http, port: 8080, targetPort: 8080, protocol: TCP, appProtocol: http}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_job_completes_and_its_sidecar_stops_after_the_app() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.apply(REPORT);
    for (deployment, name) in [
        ("inventory", "inventory-7d4b9c8f6-a1"),
        ("orders-v1", "orders-v1-7d4b9c8f6-b1"),
    ] {
        let pod = shop.create_pod(deployment, name).await;
        shop.ready(&pod).await;
        shop.pods.push(pod);
    }
    let job = shop.create_pod("report", "report-x7k2p").await;
    let phase = job.wait_finished(LIMIT).await.unwrap_or_else(|e| {
        panic!(
            "{e}\napp log:\n{}\nsidecar log:\n{}",
            job.logs("report"),
            job.logs("weft-proxy")
        )
    });
    assert_eq!(
        phase,
        "Succeeded",
        "app log:\n{}\nsidecar log:\n{}",
        job.logs("report"),
        job.logs("weft-proxy")
    );
    // The app's answer came from orders through the mesh.
    let answer: serde_json::Value = serde_json::from_str(
        job.logs("report")
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON answer: {}", job.logs("report"))),
    )
    .expect("orders' JSON");
    assert_eq!(answer["served_by"], shop.pods[1].name(), "{answer}");

    // Order: the sidecar was up before the app started, and was told to stop only after the
    // app had exited.
    let ev = job.events();
    let at = |c: &str, k: &dyn Fn(&EventKind) -> bool| {
        ev.iter()
            .position(|e| e.container == c && k(&e.kind))
            .unwrap_or_else(|| panic!("no such event for {c}: {ev:#?}"))
    };
    let sidecar_up = at("weft-proxy", &|k| *k == EventKind::StartupSucceeded);
    let app_started = at("report", &|k| matches!(k, EventKind::Started { .. }));
    let app_exited = at("report", &|k| {
        matches!(k, EventKind::Exited { code: Some(0), .. })
    });
    let sidecar_term = at("weft-proxy", &|k| *k == EventKind::Terminating);
    let sidecar_exited = at("weft-proxy", &|k| matches!(k, EventKind::Exited { .. }));
    assert!(
        sidecar_up < app_started && app_exited < sidecar_term && sidecar_term < sidecar_exited,
        "{ev:#?}"
    );
    // The API was told the pod finished.
    let api = shop.kube.server();
    weft_testkit::wait::until_async("Succeeded in the API", LIMIT, || {
        let phase = api.get_in("Pod", NS, "report-x7k2p")["status"]["phase"].clone();
        async move { (phase == "Succeeded").then_some(()) }
    })
    .await;
}
