//! The runner's pods living in the stand-in API server ([`weft_podrunner::StandinApi`]): the
//! ConfigMap and the service-account token in the pod's volume come from it, the pod's status
//! (phase, IP, Ready) is written to it, and the Service's EndpointSlice follows the pod's
//! readiness, turning `terminating` (not ready) during the grace period of a deletion and
//! empty once the pod is gone.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use weft_kube_standin::ApiServer;
use weft_podrunner::{Images, Runner, RunnerOptions, StandinApi};

use crate::support::{bin_dir, can_run, pod, LIMIT};

/// The one endpoint of the `web` Service's slice, if any.
fn endpoint(api: &ApiServer) -> Option<Value> {
    let slice = api.try_get_in("EndpointSlice", "test", "web-podrunner")?;
    slice["endpoints"].as_array()?.first().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_live_in_the_standin_with_endpoints_following_readiness_and_deletion() {
    if !can_run() {
        return;
    }
    let server = Arc::new(
        ApiServer::start(vec![
            json!({"kind": "ServiceAccount", "apiVersion": "v1",
                   "metadata": {"name": "web", "namespace": "test"}}),
            json!({"kind": "ConfigMap", "apiVersion": "v1",
                   "metadata": {"name": "settings", "namespace": "test"},
                   "data": {"greeting": "from the API"}}),
            json!({"kind": "Service", "apiVersion": "v1",
                   "metadata": {"name": "web", "namespace": "test"},
                   "spec": {"selector": {"app": "web"},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                       "protocol": "TCP", "appProtocol": "http"}]}}),
        ])
        .await,
    );
    let kube = StandinApi::new(server.clone(), "weft-node");
    let api: Arc<dyn weft_podrunner::ClusterApi> = kube.clone();
    let runner =
        Runner::new(RunnerOptions::new(api, Images::weft_binaries(&bin_dir()))).expect("runner");
    // The app ignores SIGTERM, so the deletion takes the whole grace period (2 s): the time
    // in which its endpoint must show as terminating. It is ready once its token is there.
    let spec = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: test, labels: {app: web}}\nspec:\n  serviceAccountName: web\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: app\n    image: tools\n    command: [sh, -c, 'trap \"\" TERM; echo trapped; while :; do sleep 0.1; done']\n    readinessProbe:\n      exec: {command: [test, -s, /var/run/id/token]}\n      periodSeconds: 1\n    volumeMounts: [{name: id, mountPath: /var/run/id, readOnly: true}]\n  volumes:\n  - name: id\n    projected:\n      sources:\n      - serviceAccountToken: {audience: weft, expirationSeconds: 3600, path: token}\n      - configMap: {name: settings, items: [{key: greeting, path: greeting}]}\n";
    let p = kube.schedule(&runner, pod(spec)).await.expect("start");
    p.wait_ready(LIMIT).await.expect("ready");
    crate::support::wait_log(&p, "app", "trapped").await;

    // The volume: the ConfigMap's item, and a token the stand-in minted for this pod.
    let read = |file: &str| {
        let p = &p;
        let file = file.to_owned();
        async move {
            p.exec("app", &["cat", &file], Duration::from_secs(10))
                .await
                .expect("cat")
                .stdout
        }
    };
    assert_eq!(read("/var/run/id/greeting").await, "from the API");
    let token = read("/var/run/id/token").await;
    let claims = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .expect("base64"),
    )
    .expect("claims");
    assert_eq!(claims["sub"], "system:serviceaccount:test:web", "{claims}");
    assert_eq!(claims["aud"], json!(["weft"]), "{claims}");
    let stored = server.get_in("Pod", "test", "web-1");
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"], stored["metadata"]["uid"],
        "bound to the stored pod"
    );

    // The status in the API, and the ready endpoint at the pod's IP.
    let ip = p.ip().to_string();
    weft_testkit::wait::until_async("the pod Running and Ready in the API", LIMIT, || {
        let s = server.get_in("Pod", "test", "web-1");
        let ready = s["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ok = s["status"]["podIP"] == ip.as_str() && s["status"]["phase"] == "Running" && ready;
        async move { ok.then_some(()) }
    })
    .await;
    let ep = endpoint(&server).expect("an endpoint");
    assert_eq!(ep["addresses"], json!([ip]), "{ep}");
    assert_eq!(
        ep["conditions"],
        json!({"ready": true, "serving": true, "terminating": false})
    );
    assert_eq!(ep["targetRef"]["name"], "web-1");
    let slice = server.get_in("EndpointSlice", "test", "web-podrunner");
    assert_eq!(slice["ports"][0]["port"], 8080, "{slice}");
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "web"
    );

    // Deletion: terminating (not ready) while the grace period runs, then gone.
    let deleting = {
        let kube = kube.clone();
        tokio::spawn(async move { kube.delete(p).await })
    };
    weft_testkit::wait::until_async("the endpoint terminating", LIMIT, || {
        let ep = endpoint(&server);
        async move {
            ep.filter(|e| {
                e["conditions"]["terminating"] == true && e["conditions"]["ready"] == false
            })
        }
    })
    .await;
    assert!(
        server.get_in("Pod", "test", "web-1")["metadata"]
            .get("deletionTimestamp")
            .is_some(),
        "the pod is marked for deletion"
    );
    let report = deleting.await.expect("task").expect("deleted");
    assert!(report.took >= Duration::from_secs(2), "{report:?}");
    assert_eq!(report.killed, ["app"], "{report:?}");
    assert!(server.try_get_in("Pod", "test", "web-1").is_none());
    assert_eq!(endpoint(&server), None);
}
