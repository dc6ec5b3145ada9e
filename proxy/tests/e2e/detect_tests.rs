//! Protocol detection and opaque ports on captured connections, with real clients in network
//! namespaces (the pods of [`crate::capture_tests`]): PostgreSQL's `pgbench -C` and `psql`
//! through capture on both sides against the same namespaces without the mesh, and a
//! server-first protocol (an SMTP-like banner) on a port left non-opaque (the detection
//! timeout, not 10 s) and then declared opaque (at once).
//!
//! Needs root, `ip netns`, nftables, iptables and PostgreSQL's server and clients (`scripts/setup`).

use std::path::Path;
use std::process::Command;

use weft_netns::NsRuntime;
use weft_testkit::process::{self, Guard};
use weft_testkit::wait;

use crate::capture_tests::{
    capture, config, in_ns, run, Backend, Net, Pod, Sidecar, APP_UID, CMD_LIMIT, INBOUND,
};
use crate::harness::{spiffe, Pki};

/// PostgreSQL's own port: opaque by default (`weft_policy::DEFAULT_OPAQUE_PORTS`).
const PG_PORT: u16 = 5432;
/// The banner server's port: in no default list.
const BANNER_PORT: u16 = 2525;
/// Connections `pgbench -C` opens per measurement.
const PG_CONNECTIONS: &str = "200";

/// The client sidecar's view: service `name` whose one endpoint is `server`'s sidecar, with
/// `extra` lines (`opaque_ports`); protocol left out, so `http`, as an unannotated one is.
fn services(name: &str, server: &Pod, extra: &str) -> String {
    format!(
        "services:\n  - name: {name}\n    identity: {}\n    endpoints: [{{address: \"{}:{INBOUND}\"}}]\n{extra}",
        spiffe(name),
        server.ip
    )
}

/// Rewrites a sidecar's file (whole, then renamed) and waits for its reload.
fn reload(sidecar: &Sidecar, text: &str) {
    let version = sidecar.metric("weft_config_version", &[]);
    let tmp = sidecar.config.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &sidecar.config).expect("rename");
    sidecar.child.signal(nix::sys::signal::Signal::SIGHUP);
    wait::until("the reload", CMD_LIMIT, || {
        (sidecar.metric("weft_config_version", &[]) > version).then_some(())
    });
}

/// The `postgres` account's uid and gid (the server refuses to run as root).
fn postgres_ids() -> (String, String) {
    let id = |flag: &str| {
        let (ok, out, err) = run("id", &[flag, "postgres"]);
        assert!(
            ok,
            "no postgres account (scripts/setup installs PostgreSQL): {err}"
        );
        out.trim().to_owned()
    };
    (id("-u"), id("-g"))
}

/// PostgreSQL's server program `name` (`initdb`, `postgres`): on PATH, else where Debian's
/// `postgresql` package puts it (`/usr/lib/postgresql/<version>/bin`, newest first).
fn pg_bin(name: &str) -> String {
    let (ok, out, _) = run("sh", &["-c", &format!("command -v {name}")]);
    if ok && !out.trim().is_empty() {
        return out.trim().to_owned();
    }
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| v.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    let path = found
        .pop()
        .unwrap_or_else(|| panic!("no {name}: scripts/setup installs postgresql"));
    path.display().to_string()
}

/// A PostgreSQL server on `0.0.0.0:5432` in `pod`, its data in `dir`; ready when returned.
fn postgres(pod: &Pod, dir: &Path) -> Guard {
    let (uid, gid) = postgres_ids();
    let data = dir.join("pgdata");
    std::fs::create_dir_all(&data).expect("data dir");
    let (ok, _, err) = run(
        "chown",
        &["-R", &format!("{uid}:{gid}"), &dir.display().to_string()],
    );
    assert!(ok, "chown: {err}");
    let data = data.display().to_string();
    let as_pg = [
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
    ];
    let (initdb_bin, postgres_bin) = (pg_bin("initdb"), pg_bin("postgres"));
    let mut initdb = as_pg.to_vec();
    initdb.extend([
        initdb_bin.as_str(),
        "-D",
        &data,
        "-U",
        "postgres",
        "--auth=trust",
        "-N",
    ]);
    let (ok, out, err) = run(initdb[0], &initdb[1..]);
    assert!(ok, "initdb: {out}{err}");
    // Clients in other pods (the direct measurement) connect from the pod network; through
    // the mesh they arrive from the sidecar on loopback, which initdb already trusts.
    let hba = format!("{data}/pg_hba.conf");
    let mut conf = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    conf.push_str("host all all 10.214.0.0/24 trust\n");
    std::fs::write(&hba, conf).expect("pg_hba.conf");
    let log = dir.join("postgres.log");
    let child = process::spawn(
        Command::new("ip")
            .args(["netns", "exec", &pod.ns])
            .args(as_pg)
            .args([
                postgres_bin.as_str(),
                "-D",
                &data,
                "-k",
                &data,
                "-p",
                &PG_PORT.to_string(),
            ])
            .args(["-c", "listen_addresses=*", "-c", "fsync=off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    )
    .expect("spawn postgres");
    wait::until("postgres accepting connections", CMD_LIMIT, || {
        let (ok, _, _) = in_ns(
            &pod.ns,
            &[
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-Atc",
                "select 1",
            ],
        );
        ok.then_some(())
    });
    child
}

/// `pgbench -C` from `client` (as the app's UID) to `server`: a new connection per
/// transaction, `select 1` each. The average connection time in milliseconds.
fn pgbench_connect_ms(client: &Pod, server: &Pod, script: &Path) -> f64 {
    let host = server.ip.to_string();
    let script = script.display().to_string();
    let (ok, out, err) = in_ns(
        &client.ns,
        &[
            "setpriv",
            "--reuid",
            APP_UID,
            "--regid",
            APP_UID,
            "--clear-groups",
            "pgbench",
            "-h",
            &host,
            "-p",
            "5432",
            "-U",
            "postgres",
            "-n",
            "-C",
            "-c",
            "1",
            "-t",
            PG_CONNECTIONS,
            "-f",
            &script,
            "postgres",
        ],
    );
    assert!(ok, "pgbench: {out}{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("average connection time = "))
        .and_then(|v| v.trim_end_matches(" ms").trim().parse().ok())
        .unwrap_or_else(|| panic!("no connection time in pgbench's output:\n{out}"))
}

/// `psql -c 'select 1'` from `client` as the app: its output.
fn psql(client: &Pod, server: &Pod) -> (bool, String) {
    let host = server.ip.to_string();
    let (ok, out, err) = in_ns(
        &client.ns,
        &[
            "setpriv",
            "--reuid",
            APP_UID,
            "--regid",
            APP_UID,
            "--clear-groups",
            "psql",
            "-h",
            &host,
            "-U",
            "postgres",
            "-Atc",
            "select 1",
            "postgres",
        ],
    );
    (ok, if ok { out } else { err })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_capture_is_as_fast_as_direct_nftables() {
    postgres_through_capture_connects_as_fast_as_direct_give_or_take_a_few_ms(Backend::Nftables)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_capture_is_as_fast_as_direct_iptables() {
    postgres_through_capture_connects_as_fast_as_direct_give_or_take_a_few_ms(Backend::Iptables)
        .await;
}

async fn postgres_through_capture_connects_as_fast_as_direct_give_or_take_a_few_ms(
    backend: Backend,
) {
    let Some(mut net) = Net::create() else {
        return;
    };
    let (client, server) = (net.pod("client", 2), net.pod("db", 3));
    let pki = Pki::new(16);
    pki.issue("client");
    pki.issue("db");
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let _pg = postgres(&server, pg_dir.path());
    let script = pki.path().join("select1.sql");
    std::fs::write(&script, "select 1;\n").expect("script");
    // The app's UID reads the script.
    let _ = run("chmod", &["a+rx", &pki.path().display().to_string()]);
    let _ = run("chmod", &["a+r", &script.display().to_string()]);

    // The same namespaces without the mesh.
    let direct = pgbench_connect_ms(&client, &server, &script);

    capture(&server, backend);
    let server_conf = config("db", &server, "  protocol: tcp\n", "")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{PG_PORT}"));
    let _db = server.sidecar(pki.path(), "db", &server_conf);
    capture(&client, backend);
    let client_conf = config("client", &client, "", &services("db", &server, ""));
    let sidecar = client.sidecar(pki.path(), "client", &client_conf);

    // 5432 is opaque by default: never detected, tunnelled over mTLS at once.
    let (ok, out) = psql(&client, &server);
    assert!(
        ok && out.trim() == "1",
        "psql through capture: {out}\n{}",
        sidecar.log_text()
    );
    let opaque = pgbench_connect_ms(&client, &server, &script);
    let tunnels = sidecar.metric(
        "weft_tcp_connections_opened_total",
        &[("dst_service", "db")],
    );
    assert!(
        tunnels >= 200.0,
        "the connections crossed the mesh: {tunnels}"
    );

    // No opaque ports at all: PostgreSQL speaks first (SSLRequest / StartupMessage), so
    // detection sees it is not HTTP at its first bytes and takes the TCP path at once.
    reload(
        &sidecar,
        &config(
            "client",
            &client,
            "  opaque_ports: []\n",
            &services("db", &server, ""),
        ),
    );
    let detected = pgbench_connect_ms(&client, &server, &script);

    eprintln!(
        "pgbench -C average connection time: direct {direct:.3} ms, mesh (opaque port) \
         {opaque:.3} ms (+{:.3} ms, x{:.2}), mesh (detected) {detected:.3} ms (+{:.3} ms, x{:.2})",
        opaque - direct,
        opaque / direct,
        detected - direct,
        detected / direct
    );
    // Not a benchmark: a generous bound that a wait (detection's 300 ms, Linkerd's 10 s)
    // would break. Two mTLS handshakes per connection are what the mesh adds.
    for (what, ms) in [("opaque", opaque), ("detected", detected)] {
        assert!(
            ms < direct + 50.0,
            "{what}: {ms:.3} ms per connection against {direct:.3} ms direct"
        );
    }
}

/// A server-first app on `0.0.0.0:2525` in `pod`: each connection gets a banner at once.
fn banner_server(pod: &Pod) -> Guard {
    let code = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {BANNER_PORT})); s.listen(16)\n\
         while True:\n    c, _ = s.accept(); c.sendall(b'220 weft-test ready\\r\\n'); c.close()\n"
    );
    let child = process::spawn(
        Command::new("ip")
            .args(["netns", "exec", &pod.ns, "/usr/bin/python3", "-c", &code])
            .stdout(std::process::Stdio::null()),
    )
    .expect("spawn banner server");
    wait::until("the banner server", CMD_LIMIT, || {
        let (ok, out, _) = in_ns(
            &pod.ns,
            &["ss", "-Hltn", &format!("sport = :{BANNER_PORT}")],
        );
        (ok && !out.trim().is_empty()).then_some(())
    });
    child
}

/// Connects from `client` (as the app, unmodified) to the banner server and reads its
/// first line: (line, milliseconds until it came).
fn banner(client: &Pod, server: &Pod) -> (String, f64) {
    let code = format!(
        "import socket, time\n\
         t = time.monotonic()\n\
         c = socket.create_connection(('{}', {BANNER_PORT}), timeout=15)\n\
         line = c.makefile('rb').readline().decode().strip()\n\
         print(line); print((time.monotonic() - t) * 1000)\n",
        server.ip
    );
    let (ok, out, err) = in_ns(
        &client.ns,
        &[
            "setpriv",
            "--reuid",
            APP_UID,
            "--regid",
            APP_UID,
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &code,
        ],
    );
    assert!(ok, "banner client: {out}{err}");
    let mut lines = out.lines();
    let line = lines.next().unwrap_or_default().to_owned();
    let ms = lines
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::NAN);
    (line, ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_waits_unless_opaque_nftables() {
    a_server_first_protocol_waits_the_detect_timeout_unless_its_port_is_opaque(Backend::Nftables)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_waits_unless_opaque_iptables() {
    a_server_first_protocol_waits_the_detect_timeout_unless_its_port_is_opaque(Backend::Iptables)
        .await;
}

async fn a_server_first_protocol_waits_the_detect_timeout_unless_its_port_is_opaque(
    backend: Backend,
) {
    let Some(mut net) = Net::create() else {
        return;
    };
    let (client, server) = (net.pod("client", 2), net.pod("mail", 3));
    let pki = Pki::new(17);
    pki.issue("client");
    pki.issue("mail");
    let _app = banner_server(&server);
    capture(&server, backend);
    let server_conf = config("mail", &server, "  protocol: tcp\n", "")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{BANNER_PORT}"));
    let _mail = server.sidecar(pki.path(), "mail", &server_conf);
    capture(&client, backend);
    // A 1 s detection timeout, so the wait is plain against the handshakes' few ms.
    let own = "  detect_timeout: 1s\n";
    let sidecar = client.sidecar(
        pki.path(),
        "client",
        &config("client", &client, own, &services("mail", &server, "")),
    );

    // Left non-opaque (the service says nothing, so `http`): the app sends nothing, the
    // sidecar waits its detection timeout, then takes the TCP path: the banner comes.
    let (line, waited) = banner(&client, &server);
    assert_eq!(line, "220 weft-test ready", "{}", sidecar.log_text());
    assert!(
        (1000.0..3000.0).contains(&waited),
        "non-opaque: the banner after {waited:.1} ms, expected the 1 s timeout"
    );

    // Declared opaque by the service: at once.
    reload(
        &sidecar,
        &config(
            "client",
            &client,
            own,
            &services(
                "mail",
                &server,
                &format!("    opaque_ports: [{BANNER_PORT}]\n"),
            ),
        ),
    );
    let (line, at_once) = banner(&client, &server);
    assert_eq!(line, "220 weft-test ready");
    assert!(at_once < 900.0, "opaque: the banner after {at_once:.1} ms");
    eprintln!(
        "server-first banner: {waited:.1} ms on a non-opaque port (detect_timeout 1s), \
         {at_once:.1} ms on an opaque one"
    );
}

/// The gRPC sample app (`weft_samples::grpc`) on `0.0.0.0:port` inside `pod`, on a runtime
/// inside the pod's namespace; stopped when the returned runtime is dropped.
fn grpc_app(pod: &Pod, port: u16, name: &'static str) -> NsRuntime {
    let rt = NsRuntime::start(&pod.ns, format!("grpc app {name}")).expect("runtime in the pod");
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handle().spawn(async move {
        let l = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .expect("bind grpc app");
        let server = weft_samples::grpc::serve(l, name);
        let _ = tx.send(());
        let _ = server.await;
    });
    rx.recv_timeout(CMD_LIMIT).expect("grpc app listening");
    rt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_detected_by_its_preface_nftables() {
    a_grpc_call_on_a_non_opaque_port_is_detected_by_its_preface_and_routed(Backend::Nftables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_detected_by_its_preface_iptables() {
    a_grpc_call_on_a_non_opaque_port_is_detected_by_its_preface_and_routed(Backend::Iptables).await;
}

async fn a_grpc_call_on_a_non_opaque_port_is_detected_by_its_preface_and_routed(backend: Backend) {
    const GRPC_PORT: u16 = 50051;
    let Some(mut net) = Net::create() else {
        return;
    };
    let (client, server) = (net.pod("client", 2), net.pod("inv", 3));
    let pki = Pki::new(18);
    pki.issue("client");
    pki.issue("inventory");
    let _app = grpc_app(&server, GRPC_PORT, "inventory-1");
    capture(&server, backend);
    let server_conf = config("inventory", &server, "  protocol: grpc\n", "")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{GRPC_PORT}"));
    let _inv = server.sidecar(pki.path(), "inventory", &server_conf);
    capture(&client, backend);
    let sidecar = client.sidecar(
        pki.path(),
        "client",
        &config(
            "client",
            &client,
            "",
            &services("inventory", &server, "    protocol: grpc\n"),
        ),
    );

    // A real gRPC unary call from curl (HTTP/2 with prior knowledge, so the connection opens
    // with the preface): one length-prefixed EchoRequest { message: "hi" }.
    let body = pki.path().join("echo.bin");
    std::fs::write(&body, [0u8, 0, 0, 0, 4, 0x0a, 2, b'h', b'i']).expect("body");
    let _ = run("chmod", &["a+rx", &pki.path().display().to_string()]);
    let _ = run("chmod", &["a+r", &body.display().to_string()]);
    let url = format!("http://{}:{GRPC_PORT}/weft.sample.v1.Echo/Unary", server.ip);
    let data = format!("@{}", body.display());
    let (ok, out, err) = in_ns(
        &client.ns,
        &[
            "setpriv",
            "--reuid",
            APP_UID,
            "--regid",
            APP_UID,
            "--clear-groups",
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "5",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            &data,
            "-D",
            "-",
            "--output",
            "-",
            &url,
        ],
    );
    assert!(ok, "grpc call: {out}{err}\n{}", sidecar.log_text());
    assert!(out.contains("HTTP/2 200"), "{out}");
    assert!(
        out.contains("grpc-status: 0"),
        "trailers carry the status: {out}"
    );
    assert!(out.contains("inventory-1"), "served by the app: {out}");
    assert!(
        out.contains(&spiffe("client")),
        "the app saw the caller's identity (crossed mTLS): {out}"
    );
    assert_eq!(
        sidecar.metric(
            "weft_tcp_connections_opened_total",
            &[("dst_service", "inventory")]
        ),
        0.0,
        "routed on the HTTP path, not tunnelled"
    );

    // The same through grpcio (gRPC's C core and its own HTTP/2), unmodified and with no
    // proxy setting: unary, server streaming, bidirectional streaming and a status code.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/grpc/grpcio_client.py");
    let script = script.display().to_string();
    let target = format!("{}:{GRPC_PORT}", server.ip);
    let (ok, out, err) = in_ns(
        &client.ns,
        &[
            "setpriv",
            "--reuid",
            APP_UID,
            "--regid",
            APP_UID,
            "--clear-groups",
            "timeout",
            "30",
            "/usr/bin/python3",
            &script,
            &target,
        ],
    );
    assert!(ok, "grpcio client: {out}{err}\n{}", sidecar.log_text());
    let got: serde_json::Value = serde_json::from_str(out.trim()).expect("the client's JSON");
    let unary = got["unary"]["reply"].as_str().unwrap_or_default();
    assert_eq!(got["unary"]["code"], "OK", "{got}");
    assert!(
        unary.contains("unary-hi") && unary.contains("inventory-1"),
        "{got}"
    );
    assert!(unary.contains(&spiffe("client")), "crossed mTLS: {got}");
    let ticks = got["server_stream"].as_array().map(Vec::len);
    assert_eq!(ticks, Some(3), "three streamed replies: {got}");
    let bidi: Vec<&str> = got["bidi"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(bidi.len(), 4, "{got}");
    for (i, reply) in bidi.iter().enumerate() {
        assert!(reply.contains(&format!("bidi-{i}")), "in order: {got}");
    }
    assert_eq!(
        got["fail"]["code"], "NOT_FOUND",
        "the app's status crosses: {got}"
    );
    assert_eq!(got["fail"]["details"], "no such thing", "{got}");
}
