//! The shop's sample apps from `deploy/examples/kubernetes/shop-apps.yaml` as pods, each on its
//! own IP, one calling the other by its Service name through `/etc/hosts`.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{can_run, runner, LIMIT};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_podrunner::spec;
use weft_podrunner::InMemoryApi;

/// The pod of `deployment` in the shop manifest. Without the injected sidecar (the mesh's way
/// into the pod) the app must listen on its pod IP instead of loopback: `--listen` becomes
/// `$(POD_IP):8080`, with POD_IP from `status.podIP`, the way the injector feeds its sidecar.
fn shop_pod(deployment: &str, pod_name: &str) -> Pod {
    let shop = std::fs::read_to_string(
        crate::support::root().join("deploy/examples/kubernetes/shop-apps.yaml"),
    )
    .expect("shop-apps.yaml");
    let mut pod = spec::workload(&shop, "Deployment", deployment)
        .expect("deployment")
        .pod(pod_name);
    let c = &mut pod.spec.as_mut().expect("spec").containers[0];
    for a in c.args.iter_mut().flatten() {
        if a == "--listen=127.0.0.1:8080" {
            *a = "--listen=$(POD_IP):8080".into();
        }
    }
    c.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: "POD_IP".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_pods_reach_each_other_by_service_name() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api);
    let shop = std::fs::read_to_string(
        crate::support::root().join("deploy/examples/kubernetes/shop-apps.yaml"),
    )
    .expect("shop");
    for svc in spec::services(&shop).expect("services") {
        runner.apply_service(svc);
    }
    let orders = runner
        .start(shop_pod("orders-v1", "orders-v1-7d9f"))
        .await
        .expect("orders pod");
    let frontend = runner
        .start(shop_pod("frontend", "frontend-5c2a"))
        .await
        .expect("frontend pod");
    orders.wait_ready(LIMIT).await.expect("orders ready");
    frontend.wait_ready(LIMIT).await.expect("frontend ready");
    assert_ne!(orders.ip(), frontend.ip());
    assert_ne!(orders.netns(), frontend.netns());

    // The frontend's container has the Service name for the orders pod's IP in its /etc/hosts...
    let hosts = frontend
        .exec("frontend", &["cat", "/etc/hosts"], Duration::from_secs(10))
        .await
        .expect("cat");
    let entry = format!(
        "{}\torders.shop.svc.cluster.local orders.shop.svc orders.shop orders\n",
        orders.ip()
    );
    assert!(hosts.stdout.contains(&entry), "{hosts:?}");
    // ...and calls it by that name, from its own network namespace, as user 65532.
    let call = frontend
        .exec(
            "frontend",
            &[
                "curl",
                "-sS",
                "-i",
                "-m",
                "10",
                "http://orders.shop.svc.cluster.local:8080/health",
            ],
            Duration::from_secs(15),
        )
        .await
        .expect("curl");
    assert_eq!(
        call.code,
        Some(0),
        "{call:?}; events {:#?}",
        frontend.events()
    );
    assert!(call.stdout.starts_with("HTTP/1.1 200"), "{call:?}");
    // The app was started with `--name=$(POD_NAME)` (fieldRef metadata.name).
    assert!(
        call.stdout
            .to_ascii_lowercase()
            .contains("x-served-by: orders-v1-7d9f"),
        "{call:?}"
    );
    let who = frontend
        .exec("frontend", &["id", "-u"], Duration::from_secs(10))
        .await
        .expect("id");
    assert_eq!(who.stdout.trim(), "65532");

    // The node reaches the pod IP over the bridge, as a kubelet's probe would.
    let addr = std::net::SocketAddr::from((orders.ip(), 8080));
    let reply = runner
        .node()
        .handle()
        .spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect from the node");
            s.write_all(b"GET /health HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        })
        .await
        .expect("node task");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // The status went through the API: pod IP and the Ready condition.
    let ip = orders.ip().to_string();
    crate::support::api_status(
        "orders Ready with its IP through the API",
        &api,
        "shop",
        "orders-v1-7d9f",
        |s| {
            s.pod_ip.as_deref() == Some(ip.as_str())
                && crate::support::condition(s, "Ready") == "True"
        },
    )
    .await;
}
