//! Two `weft-control-plane` processes (`--kubernetes`) against one stand-in API server: join
//! tokens, revocations, denied serials, policy history and the audit log are the API's, so
//! what one replica writes the other enforces and lists, and the writer Lease moves to the
//! survivor when its holder dies.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use weft_kube_standin::{kubeconfig, ApiServer};
use weft_testkit::wait;

use super::shared::{spawn_control_plane, ControlPlane};
use super::source::{resource, shop};
use super::tokenreview::{ask, client_at, csr, mesh, Mesh, TD};

/// The writer Lease's duration the replicas run with: short, so the test sees it move.
const LEASE: Duration = Duration::from_secs(2);

/// One replica: its process, its sidecar and operator addresses, its admin token.
struct Replica {
    cp: ControlPlane,
    token: String,
}

/// `METHOD path` on an operator API with the admin token: the status and the JSON body
/// (`null` when it is not JSON).
async fn call(r: &Replica, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    // Not listening yet (starting) or any more (killed): no answer, status 0.
    let Ok(mut s) = tokio::net::TcpStream::connect(r.cp.admin).await else {
        return (0, Value::Null);
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: cp\r\nAuthorization: Bearer {}\r\nX-Weft-Actor: test\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        r.token,
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("an answer in time")
        .expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// Starts a replica with its own (throwaway) state directory, the mesh's root, and the API
/// through `kubeconfig`; returns once it is ready.
async fn replica(mesh: &Mesh, name: &str, kubeconfig: &Path) -> Replica {
    let d = mesh.dir.path();
    let (root_crt, root_key) = (d.join("root.crt"), d.join("root.key"));
    let extra = [
        OsStr::new("--lease-duration"),
        OsStr::new("2s"),
        OsStr::new("--ca-cert"),
        root_crt.as_os_str(),
        OsStr::new("--ca-key"),
        root_key.as_os_str(),
    ];
    let cp = spawn_control_plane(d, kubeconfig, name, TD, &extra);
    let token_file = cp.token_file();
    let mut r = Replica {
        cp,
        token: String::new(),
    };
    r.token = wait::until_async("the replica's admin token", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(&token_file).ok();
        async move { t.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) }
    })
    .await;
    let ready = &r;
    wait::until_async(
        &format!("{name} ready"),
        Duration::from_secs(30),
        || async move { (call(ready, "GET", "/v1/status", None).await.0 == 200).then_some(()) },
    )
    .await;
    r
}

impl Replica {
    fn log(&self) -> String {
        self.cp.log()
    }

    /// `weftctl ARGS` against this replica's operator API: its standard output.
    async fn weftctl(&self, args: &[&str]) -> String {
        super::ctl::ok(self.cp.admin, &self.cp.token_file(), args).await
    }

    /// The process id the Lease names this replica by.
    fn identity(&self) -> String {
        format!("weft-control-plane-{}", self.cp.process.id())
    }

    async fn history(&self) -> Value {
        let (status, v) = call(self, "GET", "/v1/history", None).await;
        assert_eq!(status, 200, "{v}\n{}", self.log());
        v["history"].clone()
    }

    async fn audit(&self) -> Value {
        let (status, v) = call(self, "GET", "/v1/audit", None).await;
        assert_eq!(status, 200, "{v}\n{}", self.log());
        v["audit"].clone()
    }
}

fn holder(api: &ApiServer) -> Option<String> {
    api.try_get_in("Lease", "weft-system", "weft-control-plane-writer")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// A route that changes the policy version.
fn route(name: &str) -> Value {
    resource(
        "MeshRoute",
        name,
        1,
        json!({"service": "orders", "match": {"headers": [{"name": format!("x-{name}"), "exact": "1"}]},
               "backends": [{"subset": {"version": "v2"}}]}),
    )
}

/// History and audit listed through `a` and `b` until both list `entries` versions, the same.
async fn agreed(a: &Replica, b: &Replica, entries: usize) -> Value {
    wait::until_async(
        &format!("{entries} history entries, the same through both replicas"),
        Duration::from_secs(20),
        || async {
            let (ha, hb) = (a.history().await, b.history().await);
            let same = ha == hb && a.audit().await == b.audit().await;
            (same && ha.as_array().map_or(0, Vec::len) == entries).then_some(ha)
        },
    )
    .await
}

/// A token created through `a` joins through `b`; revoked through `b`, `a` refuses it and the
/// renewal of the certificate it obtained. Operators' calls are the real `weftctl`'s.
async fn tokens_are_shared(api: &ApiServer, mesh: &Mesh, a: &Replica, b: &Replica) {
    // A token created through A joins through B.
    let token = a
        .weftctl(&["tokens", "create", "frontend", "--namespace", "shop"])
        .await;
    let token = token.trim();
    assert!(
        api.get_in("Secret", "weft-system", "weft-join-tokens")["data"]
            .to_string()
            .len()
            > 10
    );
    // Listed the same through both.
    let listed = b.weftctl(&["tokens", "list"]).await;
    assert_eq!(listed, a.weftctl(&["tokens", "list"]).await);
    assert!(
        listed.contains(&token[5..21]) && listed.contains("active"),
        "{listed}"
    );
    let (csr_pem, key) = weft_certs::generate_csr(
        &weft_certs::Identity::new(TD, "shop", "frontend").expect("identity"),
    )
    .expect("csr");
    let issued = client_at(mesh, b.cp.listen, None)
        .await
        .certify(ask(&csr_pem, token))
        .await
        .unwrap_or_else(|e| panic!("B accepts A's token: {e:?}\n{}", b.log()))
        .into_inner();
    let held = Some((issued.cert_chain_pem.as_str(), key.as_str()));
    client_at(mesh, a.cp.listen, held)
        .await
        .certify(ask(&csr_pem, ""))
        .await
        .expect("A renews it, by certificate");

    // Revoked through B (by the whole token: only its id is sent): A refuses the token, and
    // the renewal of what it obtained.
    let said = b.weftctl(&["tokens", "revoke", token]).await;
    assert!(said.starts_with("revoked join token"), "{said}");
    assert!(a.weftctl(&["tokens", "list"]).await.contains("revoked"));
    let e = client_at(mesh, a.cp.listen, None)
        .await
        .certify(ask(&csr("shop", "frontend"), token))
        .await
        .expect_err("A refuses a token revoked through B");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = client_at(mesh, a.cp.listen, held)
        .await
        .certify(ask(&csr_pem, ""))
        .await
        .expect_err("A refuses to renew a revoked token's certificate");
    assert!(e.message().contains("revoked"), "{}", e.message());
}

/// A serial denied through `a` (with `weftctl certs deny`) is refused on renewal by `b`.
async fn denials_are_shared(mesh: &Mesh, a: &Replica, b: &Replica) {
    let other = b
        .weftctl(&["tokens", "create", "orders", "--namespace", "shop"])
        .await;
    let (csr2, key2) = weft_certs::generate_csr(
        &weft_certs::Identity::new(TD, "shop", "orders").expect("identity"),
    )
    .expect("csr");
    let cert = client_at(mesh, a.cp.listen, None)
        .await
        .certify(ask(&csr2, other.trim()))
        .await
        .expect("B's token through A")
        .into_inner()
        .cert_chain_pem;
    let chain = weft_certs::parse_cert_chain_pem(&cert).expect("chain");
    let serial = weft_certs::serial_hex_from_cert_der(&chain[0]).expect("serial");
    let said = a.weftctl(&["certs", "deny", &serial]).await;
    assert!(said.contains("no longer renews"), "{said}");
    let again = b.weftctl(&["certs", "deny", &serial]).await;
    assert!(again.contains("already denied"), "{again}");
    let e = client_at(mesh, b.cp.listen, Some((&cert, &key2)))
        .await
        .certify(ask(&csr2, ""))
        .await
        .expect_err("B refuses a serial denied through A");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_tokens_denials_history_and_the_writer_lease() {
    let api = ApiServer::start(shop()).await;
    let mesh = mesh();
    let config = kubeconfig(mesh.dir.path(), &api);
    let a = replica(&mesh, "a", &config).await;
    let b = replica(&mesh, "b", &config).await;

    tokens_are_shared(&api, &mesh, &a, &b).await;
    denials_are_shared(&mesh, &a, &b).await;

    // History and audit: one writer records, both list the same.
    agreed(&a, &b, 1).await;
    api.put(route("first"));
    let history = agreed(&a, &b, 2).await;
    assert_eq!(history[0]["seq"], 2, "{history}");

    // The Lease holder dies: the survivor takes the Lease within its duration (and a renewal
    // period), and records the next change.
    let first = wait::until_async("a Lease holder", Duration::from_secs(10), || async {
        holder(&api)
    })
    .await;
    let (mut dead, survivor) = if first == a.identity() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(first, dead.identity());
    dead.cp.process.kill();
    let killed = Instant::now();
    wait::until_async("the survivor holds the Lease", LEASE * 4, || async {
        (holder(&api) == Some(survivor.identity())).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= LEASE + LEASE / 3 + Duration::from_secs(1),
        "took {took:?}"
    );
    api.put(route("second"));
    wait::until_async(
        "the survivor records the change",
        Duration::from_secs(20),
        || async {
            let h = survivor.history().await;
            (h.as_array().map_or(0, Vec::len) == 3 && h[0]["seq"] == 3).then_some(())
        },
    )
    .await;
}
