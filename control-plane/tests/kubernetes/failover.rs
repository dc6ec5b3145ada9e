//! One of two control-plane replicas killed under load, on the deployed shop (see `deployed`).
//!
//! Two real `weft-control-plane --kubernetes --kubernetes-tokens` processes run against the
//! one stand-in API server, both in the node's network (like `hostNetwork` pods): replica A is
//! the shop's own (its webhook injects the pods), replica B a second one on another port with
//! the same CA (`--ca-cert`/`--ca-key`, as a Secret mounted in both would give). Pods resolve
//! `weft-control-plane.weft-system.svc` to a Service address of their own, [`VIP`], outside
//! the pods' subnet so it is routed to the node like a real clusterIP; the node makes that
//! address real the way kube-proxy's nftables mode does: a `dnat` in the node's prerouting
//! hook, choosing a replica per connection with `numgen random mod 2` and a verdict map to one
//! chain per endpoint. After the kill the dead replica is taken out of the map, as the
//! endpoints controller and kube-proxy do once its readiness fails (here at once after the
//! kill: a connection that still reached the dead address in between is refused, and the
//! sidecar's reconnect backoff tries again). DNAT fits: the replicas' sidecar port is plain
//! TCP carrying mTLS end to end, so nothing between needs to understand it, and conntrack
//! keeps each connection on its replica as kube-proxy's does.
//!
//! What must hold: with an unmodified curl in the client pod calling the frontend all the
//! while (see `load`), not one request fails from the first whole batch until twenty batches
//! after every sidecar is back; every sidecar reconnects to the survivor (its admin
//! `/v1/status` lists them all connected); status (policy version), history and join tokens
//! read the same through either replica before the kill, and through the survivor after.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};
use weft_kube_standin::kubeconfig;
use weft_podrunner::Runner;
use weft_testkit::process::{spawn, Guard};
use weft_testkit::wait;

use super::deployed::{can_run, node_get, Shop, ADMIN, CP_PORT, LIMIT};
use super::load::{self, Load};
use super::source::TD;

/// The control plane's Service address (a clusterIP outside the pods' /24, so routed).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Replica B's ports on the node.
const B_PORT: u16 = 7071;
const B_ADMIN: &str = "127.0.0.1:9902";
/// The nftables table standing for kube-proxy's.
const TABLE: &str = "weft-kube-proxy";

/// An operator API on the node: its address and admin token.
struct Operator {
    addr: SocketAddr,
    token: String,
}

impl Operator {
    /// `METHOD path` with the admin token (and a JSON body): status and JSON.
    async fn call(&self, runner: &Runner, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: cp\r\nAuthorization: Bearer {}\r\n\
             X-Weft-Actor: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.token,
            body.len()
        );
        match node_get(runner, self.addr, req).await {
            Some((code, text)) => (code, serde_json::from_str(&text).unwrap_or(Value::Null)),
            None => (0, Value::Null),
        }
    }

    async fn get(&self, runner: &Runner, path: &str) -> Value {
        let (code, v) = self.call(runner, "GET", path, Value::Null).await;
        assert_eq!(code, 200, "GET {path} on {}: {v}", self.addr);
        v
    }

    /// The admin addresses of the sidecars connected to this replica.
    async fn connected(&self, runner: &Runner) -> std::collections::BTreeSet<String> {
        let (code, v) = self.call(runner, "GET", "/v1/status", Value::Null).await;
        if code != 200 {
            return Default::default();
        }
        v["sidecars"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["connected"] == true)
            .filter_map(|s| s["admin"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Replica B in the node's network: same CA as A, its own state, no webhook.
async fn replica_b(shop: &Shop) -> (Guard, Operator) {
    let root = shop.tmp.path();
    let dir = root.join("b");
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("cp.log");
    let listen = format!("{}:{B_PORT}", weft_podrunner::net::GATEWAY);
    let mut cp = spawn(
        Command::new("ip")
            .args(["netns", "exec", shop.runner.node().netns()])
            .arg(env!("CARGO_BIN_EXE_weft-control-plane"))
            .args(["--kubernetes", "--kubernetes-tokens", "--trust-domain", TD])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--ca-cert")
            .arg(root.join("state/ca.crt"))
            .arg("--ca-key")
            .arg(root.join("state/ca.key"))
            .args(["--listen", &listen, "--admin", B_ADMIN])
            .env("KUBECONFIG", kubeconfig(&dir, shop.kube.server()))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    )
    .expect("spawn replica B");
    let token_file = dir.join("state/admin.token");
    let token = wait::until_async("replica B's admin token", Duration::from_secs(30), || {
        if let Some(exit) = cp.status() {
            panic!(
                "replica B exited: {exit}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let t = std::fs::read_to_string(&token_file).ok();
        async move { t.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) }
    })
    .await;
    let b = Operator {
        addr: B_ADMIN.parse().expect("addr"),
        token,
    };
    wait::until_async("replica B ready", Duration::from_secs(30), || async {
        (b.call(&shop.runner, "GET", "/v1/status", Value::Null)
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    (cp, b)
}

/// Sets the Service's backends in the node's nftables, as kube-proxy's nftables mode writes
/// them: the VIP's rule jumps to a chain choosing an endpoint chain with `numgen random`.
fn service_backends(node: &str, ports: &[u16]) {
    let gw = weft_podrunner::net::GATEWAY;
    // One statement per line: nft wants a newline or `;` before a block's `}`.
    let mut rules = format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         chain prerouting {{\ntype nat hook prerouting priority dstnat; policy accept;\n\
         ip daddr {VIP} tcp dport {CP_PORT} goto svc-cp\n}}\n"
    );
    let mut vmap = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        rules += &format!("chain ep-{port} {{\nmeta l4proto tcp dnat to {gw}:{port}\n}}\n");
        vmap.push(format!("{i} : goto ep-{port}"));
    }
    rules += &format!(
        "chain svc-cp {{\nnumgen random mod {} vmap {{ {} }}\n}}\n}}\n",
        ports.len(),
        vmap.join(", ")
    );
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), &rules).expect("write rules");
    let out = Command::new("ip")
        .args(["netns", "exec", node, "nft", "-f"])
        .arg(file.path())
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft -f:\n{rules}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// History, join tokens and policy version, as read through one replica.
async fn shared_state(op: &Operator, runner: &Runner) -> (Value, Value, Value) {
    let status = op.get(runner, "/v1/status").await;
    (
        op.get(runner, "/v1/history").await["history"].clone(),
        op.get(runner, "/v1/tokens").await,
        status["policy_version"].clone(),
    )
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("b/cp.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_replica_killed_under_load_fails_no_request() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    let (mut b_process, b) = replica_b(&shop).await;
    let a = Operator {
        addr: ADMIN.parse().expect("addr"),
        token: std::fs::read_to_string(shop.tmp.path().join("state/admin.token"))
            .expect("A's admin token")
            .trim()
            .to_owned(),
    };
    let node = shop.runner.node().netns().to_owned();
    service_backends(&node, &[CP_PORT, B_PORT]);
    let cp_service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "weft-control-plane", "namespace": "weft-system"},
        "spec": {"clusterIP": VIP.to_string(), "ports": [{"name": "grpc", "port": CP_PORT}]}
    }))
    .expect("a Service");
    shop.runner.apply_service(cp_service);

    for (deployment, name) in [
        ("inventory", "inventory-7d4b9c8f6-a1"),
        ("orders-v1", "orders-v1-7d4b9c8f6-b1"),
        ("frontend", "frontend-7d4b9c8f6-d1"),
        ("client", "client-7d4b9c8f6-e1"),
    ] {
        let pod = shop.create_pod(deployment, name).await;
        shop.pods.push(pod);
    }
    for pod in &shop.pods {
        shop.ready(pod).await;
    }
    let all: std::collections::BTreeSet<String> = shop
        .pods
        .iter()
        .map(|p| format!("{}:15020", p.ip()))
        .collect();
    let runner = &shop.runner;
    let (on_a, on_b) = wait::until_async(
        "every sidecar connected to one replica or the other",
        LIMIT,
        || async {
            let (on_a, on_b) = (a.connected(runner).await, b.connected(runner).await);
            (on_a
                .union(&on_b)
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                == all)
                .then_some((on_a, on_b))
        },
    )
    .await;

    // Shared state, the same through both: a join token created through A, the history.
    let (code, created) = a
        .call(
            runner,
            "POST",
            "/v1/tokens",
            json!({"service": "frontend", "namespace": "shop"}),
        )
        .await;
    assert!((200..300).contains(&code), "{code}: {created}");
    let before = wait::until_async(
        "history, tokens and policy version the same through both replicas",
        Duration::from_secs(20),
        || async {
            let (sa, sb) = (
                shared_state(&a, runner).await,
                shared_state(&b, runner).await,
            );
            let has_token = sa.1.to_string().contains("frontend");
            (sa == sb && has_token).then_some(sa)
        },
    )
    .await;

    let load = Load::start(&shop.pods[3], "frontend.shop.svc.cluster.local", "/shop/1");
    load.until("a whole batch answered", LIMIT, |bs: &[load::Batch]| {
        bs.last()
            .is_some_and(|b| b.replies.iter().all(load::Reply::ok))
    })
    .await;
    let counted = Instant::now();
    load.until("ten counted batches", Duration::from_secs(60), |bs| {
        load::ended_after(bs, counted) >= 10
    })
    .await;

    // The victim: a replica with sidecars on it (B when it has any, else A).
    let kill_b = !on_b.is_empty();
    let moved = if kill_b { on_b.len() } else { on_a.len() };
    let (survivor, pid) = if kill_b {
        (&a, b_process.id())
    } else {
        (&b, shop.cp.id())
    };
    let killed = Instant::now();
    let exit = if kill_b {
        b_process.kill()
    } else {
        shop.cp.kill()
    };
    // The endpoints controller and kube-proxy take the dead replica out.
    service_backends(&node, &[if kill_b { CP_PORT } else { B_PORT }]);
    let runner = &shop.runner;
    wait::until_async(
        "every sidecar connected to the survivor",
        Duration::from_secs(30),
        || async { (survivor.connected(runner).await == all).then_some(()) },
    )
    .await;
    let reconnected = killed.elapsed();
    let back = Instant::now();
    load.until(
        "twenty batches after the reconnection",
        Duration::from_secs(60),
        |bs| load::ended_after(bs, back) >= 20,
    )
    .await;
    let summary = load.stop().await;

    let counted_batches: Vec<&load::Batch> = summary.since(counted).collect();
    let total: usize = counted_batches.iter().map(|b| b.replies.len()).sum();
    let failed = load::Reply::failures(counted_batches.iter().flat_map(|b| &b.replies));
    eprintln!(
        "failover: killed replica {} (pid {pid}, {exit}) holding {moved} of {} sidecars; all \
         connected to the survivor {reconnected:?} after the kill; {total} requests in {} \
         batches, {} failed",
        if kill_b { "B" } else { "A" },
        all.len(),
        counted_batches.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {failed:#?}\nA:\n{}\nB:\n{}",
        failed.len(),
        shop.cp_log(),
        log_of(shop.tmp.path())
    );
    assert!(total >= 30 * load::PER_BATCH);
    // The survivor reads what both read before: the same tokens, and the history then as the
    // oldest part of its history now (pods that became ready since may have added versions).
    let (history, tokens, _) = shared_state(survivor, &shop.runner).await;
    assert_eq!(tokens, before.1, "the survivor's join tokens");
    let (now, then) = (
        history.as_array().expect("history"),
        before.0.as_array().expect("history"),
    );
    assert!(
        now.len() >= then.len() && now[now.len() - then.len()..] == then[..],
        "the survivor's history {history} does not end with the one before the kill {}",
        before.0
    );
}
