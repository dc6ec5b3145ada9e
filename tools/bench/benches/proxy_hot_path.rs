//! Criterion micro-benchmarks of the sidecar's hot path, through its public
//! library API: route matching on a realistic route table, endpoint choice
//! (P2C on peak-EWMA and round robin), a config swap (reading the file,
//! building a snapshot and storing it in the `ArcSwap`), and Pingora's
//! connection-pool key of an upstream peer, which it computes twice per
//! request: with a client certificate on the peer (how Weft presented its
//! identity before) and without (now: the identity is the connector's, see
//! `weft_proxy::outbound_proxy`).
//!
//! ```text
//! cargo bench -p weft-benches --bench proxy_hot_path
//! ```
//!
//! Short by default (1 s warm-up and 2 s of measurement per benchmark, 50
//! samples); criterion's own flags (`-- --measurement-time 10`) lengthen it.

#![allow(missing_docs)] // criterion's macros generate undocumented items.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::utils::tls::CertKey;
use pingora_http::RequestHeader;
use rustls::pki_types::pem::PemObject;
use weft_proxy::metrics::Metrics;
use weft_proxy::state::{self, Store};

/// Services in the config (each with its routes and endpoints).
const SERVICES: usize = 20;
/// Endpoints per service (half `version: v1`, half `v2`).
const ENDPOINTS: usize = 4;

/// A client sidecar's config: `SERVICES` services of `ENDPOINTS` endpoints
/// each (every other one round robin), each with six routes of the kinds a
/// mesh uses (header canary, exact path, method + prefix, regex, prefix with
/// a rewrite, weighted catch-all).
fn config_yaml(ports: [u16; 4]) -> String {
    let mut y = format!(
        "service: {{name: client, identity: \"spiffe://weft.local/ns/default/sa/client\", app: \"127.0.0.1:{}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{}\", inbound: \"127.0.0.1:{}\", admin: \"127.0.0.1:{}\"}}\n\
         tls: {{cert: client.crt, key: client.key, trust_bundle: ca.crt}}\n\
         workers: 1\n\
         services:\n",
        ports[0], ports[1], ports[2], ports[3]
    );
    for s in 0..SERVICES {
        y += &format!(
            "  - name: svc-{s}\n    identity: \"spiffe://weft.local/ns/default/sa/app\"\n{}    endpoints:\n",
            if s % 2 == 1 { "    load_balancer: round_robin\n" } else { "" }
        );
        for e in 0..ENDPOINTS {
            y += &format!(
                "      - {{address: \"127.0.0.{}:{}\", labels: {{version: v{}}}}}\n",
                s + 2,
                8000 + e,
                1 + e % 2
            );
        }
    }
    y += "routes:\n";
    for s in 0..SERVICES {
        y += &format!(
            "  - {{name: canary, service: svc-{s}, match: {{path: {{prefix: /api}}, headers: [{{name: x-canary, exact: always}}]}}, backends: [{{subset: {{version: v2}}}}]}}\n\
             \x20 - {{name: health, service: svc-{s}, match: {{path: {{exact: /healthz}}}}}}\n\
             \x20 - {{name: writes, service: svc-{s}, match: {{method: POST, path: {{prefix: /api/orders}}}}}}\n\
             \x20 - {{name: items, service: svc-{s}, match: {{path: {{regex: \"/api/items/[0-9]+\"}}}}}}\n\
             \x20 - {{name: legacy, service: svc-{s}, match: {{path: {{prefix: /v1}}}}, rewrite: {{prefix: /api}}}}\n\
             \x20 - {{name: rest, service: svc-{s}, backends: [{{subset: {{version: v1}}, weight: 90}}, {{subset: {{version: v2}}, weight: 10}}]}}\n"
        );
    }
    y
}

/// Writes certificates and the config into `dir`; opens a store on it.
fn store(dir: &Path) -> Store {
    weft_benches::mesh::write_certs(dir).expect("certificates");
    let p = weft_benches::mesh::free_ports(4).expect("ports");
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, config_yaml([p[0], p[1], p[2], p[3]])).expect("config");
    let metrics = Metrics::new().expect("metrics");
    Store::open(&path, metrics).expect("the benchmark's config is valid")
}

fn request(method: &str, path: &str, canary: bool) -> RequestHeader {
    let mut r = RequestHeader::build(method, path.as_bytes(), None).expect("request");
    r.insert_header("host", "svc-7").expect("host");
    r.insert_header("user-agent", "bench").expect("ua");
    if canary {
        r.insert_header("x-canary", "always").expect("header");
    }
    r
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(dir.path());
    let snap = store.load();
    let dest_idx = snap.destination_for_host("svc-7").expect("svc-7");
    let dest = &snap.destinations[dest_idx];

    let mut g = c.benchmark_group("route");
    // (case, request, the route it must take)
    let cases = [
        (
            "first (header canary)",
            request("GET", "/api/items/1", true),
            0,
        ),
        ("regex", request("GET", "/api/items/42", false), 3),
        (
            "catch-all (last)",
            request("GET", "/static/app.js", false),
            5,
        ),
    ];
    for (name, req, want) in &cases {
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        assert_eq!(dest.route(&method, &path, req), Some(*want), "{name}");
        g.bench_function(*name, |b| {
            b.iter(|| {
                let host = black_box("svc-7");
                let d = &snap.destinations[snap.destination_for_host(host).unwrap_or(0)];
                d.route(black_box(&method), black_box(&path), req)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pick");
    for (name, host) in [("p2c peak-EWMA", "svc-6"), ("round robin", "svc-7")] {
        let d = &snap.destinations[snap.destination_for_host(host).expect("service")];
        let route = d.routes.len() - 1; // the weighted catch-all
        assert!(d.pick(route, 0, state::now()).is_some());
        g.bench_function(name, |b| {
            b.iter(|| d.pick(black_box(route), 0, state::now()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("config swap");
    g.bench_function(
        "reload: read file + certs, build snapshot, ArcSwap store",
        |b| b.iter(|| store.reload().expect("reload")),
    );
    g.bench_function("load (a request's snapshot)", |b| b.iter(|| store.load()));
    g.finish();

    let mut g = c.benchmark_group("pool key");
    let chain = std::fs::read_to_string(dir.path().join("client.crt")).expect("cert");
    let chain: Vec<Vec<u8>> = weft_certs::parse_cert_chain_pem(&chain)
        .expect("chain")
        .iter()
        .map(|c| c.to_vec())
        .collect();
    let key = std::fs::read(dir.path().join("client.key")).expect("key");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key).expect("key PEM");
    let cert_key = Arc::new(CertKey::new(chain, key.secret_der().to_vec()));
    let peer = || HttpPeer::new("127.0.0.1:8443", true, "app.default.weft.local".into());
    let plain = peer();
    let mut with_cert = peer();
    with_cert.client_cert_key = Some(cert_key);
    g.bench_function("peer without a client certificate (now)", |b| {
        b.iter(|| black_box(&plain).reuse_hash())
    });
    g.bench_function("peer with a client certificate (before)", |b| {
        b.iter(|| black_box(&with_cert).reuse_hash())
    });
    g.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = benches
}
criterion_main!(hot_path);
