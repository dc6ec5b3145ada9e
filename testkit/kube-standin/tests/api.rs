//! The stand-in driven by kube-rs (the client the control plane uses) over HTTPS: optimistic
//! concurrency, selectors, watches and compaction, the status subresource, graceful pod
//! deletion, TokenRequest and TokenReview, the body cap.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, Client};
use serde_json::json;
use weft_kube_standin::{kubeconfig, ApiServer};

async fn client(api: &ApiServer, dir: &std::path::Path) -> Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig(dir, api)).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn cm(name: &str, labels: serde_json::Value, data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "data": {"k": data}
    }))
    .expect("configmap")
}

fn code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn writes_follow_resource_versions_and_selectors_filter() {
    let api = ApiServer::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, dir.path()).await, "weft-system");
    let pp = PostParams::default();
    let a = maps
        .create(&pp, &cm("a", json!({"app": "x"}), "1"))
        .await
        .expect("create");
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    assert_eq!(
        code(
            maps.create(&pp, &cm("a", json!({}), "2"))
                .await
                .expect_err("taken")
        ),
        (409, "AlreadyExists".into())
    );
    maps.create(&pp, &cm("b", json!({"app": "y"}), "1"))
        .await
        .expect("create b");

    // Two writers read the same version; the second one's update conflicts, then succeeds
    // after reading again.
    let mut first = maps.get("a").await.expect("get");
    let mut second = first.clone();
    first.data = Some([("k".to_owned(), "first".to_owned())].into());
    maps.replace("a", &pp, &first).await.expect("first write");
    second.data = Some([("k".to_owned(), "second".to_owned())].into());
    assert_eq!(
        code(maps.replace("a", &pp, &second).await.expect_err("stale")),
        (409, "Conflict".into())
    );
    let mut fresh = maps.get("a").await.expect("get");
    assert_eq!(fresh.metadata.uid, a.metadata.uid, "uid kept");
    fresh.data = Some([("k".to_owned(), "second".to_owned())].into());
    maps.replace("a", &pp, &fresh)
        .await
        .expect("after reading again");
    assert_eq!(
        code(
            maps.replace("nope", &pp, &cm("nope", json!({}), ""))
                .await
                .expect_err("missing")
        )
        .0,
        404
    );

    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect()
    };
    assert_eq!(
        names(
            maps.list(&ListParams::default().labels("app=x"))
                .await
                .expect("list")
        ),
        ["a"]
    );
    assert_eq!(
        names(
            maps.list(&ListParams::default().labels("app!=x"))
                .await
                .expect("list")
        ),
        ["b"]
    );
    assert_eq!(
        names(
            maps.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .expect("list")
        ),
        ["b"]
    );
    let other: Api<ConfigMap> = Api::namespaced(maps.clone().into_client(), "other");
    assert!(other
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused() {
    let api = ApiServer::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, dir.path()).await, "weft-system");
    let pp = PostParams::default();
    // A ConfigMap over 3 MiB is refused, not buffered.
    let big = cm("big", json!({}), &"x".repeat(4 * 1024 * 1024));
    assert_eq!(
        code(maps.create(&pp, &big).await.expect_err("too large")).0,
        413
    );
}

#[tokio::test]
async fn watches_resume_from_a_version_and_get_410_after_compaction() {
    let api = ApiServer::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, dir.path()).await, "ns");
    let pp = PostParams::default();
    maps.create(&pp, &cm("a", json!({"w": "1"}), "1"))
        .await
        .expect("create");
    let rv = maps
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    maps.create(&pp, &cm("b", json!({"w": "1"}), "1"))
        .await
        .expect("create");
    maps.create(&pp, &cm("c", json!({}), "1"))
        .await
        .expect("create unlabelled");
    let wp = WatchParams::default().labels("w=1").timeout(5);
    let mut events = maps.watch(&wp, &rv).await.expect("watch").boxed();
    match events.try_next().await.expect("event").expect("some") {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        events.try_next().await.expect("event"),
        Some(WatchEvent::Bookmark(_))
    ));
    maps.delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    match events.try_next().await.expect("event").expect("some") {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("{other:?}"),
    }
    api.expire();
    match events.try_next().await.expect("event").expect("some") {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("{other:?}"),
    }
    let mut again = maps.watch(&wp, &rv).await.expect("watch").boxed();
    assert!(
        matches!(again.try_next().await.expect("event"), Some(WatchEvent::Error(e)) if e.code == 410)
    );
}

#[tokio::test]
async fn status_is_a_subresource_and_bound_pods_delete_gracefully() {
    let api = ApiServer::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pods: Api<Pod> = Api::namespaced(client(&api, dir.path()).await, "shop");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"}, "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
        "status": {"phase": "Running"}
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    assert!(created.status.is_none(), "create drops status");
    let pp = PatchParams::default();
    pods.patch_status(
        "p",
        &pp,
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.1.0.5"}})),
    )
    .await
    .expect("status");
    let p = pods
        .patch(
            "p",
            &pp,
            &Patch::Merge(
                json!({"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Failed"}}),
            ),
        )
        .await
        .expect("labels");
    let status = p.status.expect("status");
    assert_eq!(
        (status.phase.as_deref(), status.pod_ip.as_deref()),
        (Some("Running"), Some("10.1.0.5"))
    );

    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = pods.get("p").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    pods.delete("p", &DeleteParams::default().grace_period(0))
        .await
        .expect("finish");
    assert_eq!(code(pods.get("p").await.expect_err("gone")).0, 404);
}

#[tokio::test]
async fn token_requests_mint_tokens_that_token_reviews_check() {
    let api = ApiServer::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client(&api, dir.path()).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "shop");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "orders"}})).expect("sa");
    sas.create(&PostParams::default(), &sa).await.expect("sa");
    let request = |seconds: i64, audience: &str| TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(seconds),
            ..Default::default()
        },
        ..Default::default()
    };
    let pp = PostParams::default();
    assert_eq!(
        code(
            sas.create_token_request("orders", &pp, &request(60, "weft"))
                .await
                .expect_err("short")
        )
        .0,
        422
    );
    let token = sas
        .create_token_request("orders", &pp, &request(3600, "weft"))
        .await
        .expect("token")
        .status
        .expect("status")
        .token;
    let reviews: Api<TokenReview> = Api::all(client);
    let review = |token: &str, audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..Default::default()
    };
    let ok = reviews
        .create(&pp, &review(&token, "weft"))
        .await
        .expect("review")
        .status
        .expect("status");
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(
        ok.user.and_then(|u| u.username).as_deref(),
        Some("system:serviceaccount:shop:orders")
    );
    let other = reviews
        .create(&pp, &review(&token, "vault"))
        .await
        .expect("review")
        .status
        .expect("status");
    assert_ne!(other.authenticated, Some(true));
    assert!(other.error.unwrap_or_default().contains("audiences"));
    // A token whose lifetime is over at once.
    let expired = api
        .mint_token("shop", "orders", &["weft"], Duration::ZERO, None)
        .expect("mint");
    let e = reviews
        .create(&pp, &review(&expired, "weft"))
        .await
        .expect("review")
        .status
        .expect("status");
    assert!(e.error.unwrap_or_default().contains("expired"));
    api.delete_in("ServiceAccount", "shop", "orders");
    let gone = reviews
        .create(&pp, &review(&token, "weft"))
        .await
        .expect("review")
        .status
        .expect("status");
    assert!(gone.error.unwrap_or_default().contains("has been deleted"));
    assert_eq!(api.reviews(), 4);
}
