//! Criterion micro-benchmarks of the sidecar's hot path, through its public
//! library API: route matching on a realistic route table, endpoint choice
//! (P2C on peak-EWMA and round robin), a config swap (reading the file,
//! building a snapshot and storing it in the `ArcSwap`), and Pingora's
//! connection-pool key of an upstream peer, which it computes twice per
//! request: with a client certificate on the peer (how Weft presented its
//! identity before) and without (now: the identity is the connector's, see
//! `weft_proxy::outbound::connector`).
//!
//! ```text
//! cargo bench -p weft-benches --bench proxy_hot_path
//! ```
//!
//! Short by default (1 s warm-up and 2 s of measurement per benchmark, 50
//! samples); criterion's own flags (`-- --measurement-time 10`) lengthen it.

#![allow(missing_docs)] // criterion's macros generate undocumented items.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::utils::tls::CertKey;
use pingora_http::RequestHeader;
use rustls::pki_types::pem::PemObject;
use weft_benches::mesh::SidecarPorts;
use weft_policy::wire::{
    Backend, ConfigFile, Endpoint, HeaderMatch, Match, PathMatch, Rewrite, Route,
};
use weft_proxy::clock;
use weft_proxy::store::Store;
use weft_proxy::telemetry::metrics::Metrics;

/// Services in the config (each with its routes and endpoints).
const SERVICES: usize = 20;
/// Endpoints per service (half `version: v1`, half `v2`).
const ENDPOINTS: usize = 4;

/// The sidecar config: `SERVICES` services of `ENDPOINTS` labelled endpoints each (every
/// other one round robin), each with six routes (header match, exact, method + prefix,
/// regex, rewrite, weighted subsets), built from the policy crate's file types.
fn config(ports: [u16; 4]) -> ConfigFile {
    let sidecar = SidecarPorts {
        outbound: ports[1],
        inbound: ports[2],
        admin: ports[3],
    };
    let mut cfg = weft_benches::mesh::client_sidecar_base(ports[0], sidecar);
    for s in 0..SERVICES {
        let mut svc = weft_benches::mesh::app_service(&[]);
        svc.name = format!("svc-{s}");
        svc.load_balancer = (s % 2 == 1).then(|| "round_robin".to_owned());
        svc.endpoints = (0..ENDPOINTS)
            .map(|e| Endpoint {
                address: format!("127.0.0.{}:{}", s + 2, 8000 + e),
                labels: version(1 + e % 2),
            })
            .collect();
        cfg.services.push(svc);
    }
    for s in 0..SERVICES {
        let route = |name: &str, matches: Match| Route {
            name: name.to_owned(),
            service: format!("svc-{s}"),
            from: None,
            matches,
            backends: Vec::new(),
            timeout: None,
            rewrite: None,
            request_headers: None,
            retry: None,
            rate_limit: None,
            fault: None,
        };
        let path = |exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>| Match {
            path: Some(PathMatch {
                exact: exact.map(str::to_owned),
                prefix: prefix.map(str::to_owned),
                regex: regex.map(str::to_owned),
            }),
            ..Match::default()
        };
        let mut canary = route("canary", path(None, Some("/api"), None));
        canary.matches.headers = vec![HeaderMatch {
            name: "x-canary".to_owned(),
            exact: Some("always".to_owned()),
            regex: None,
        }];
        canary.backends = vec![backend(2, None)];
        let mut writes = route("writes", path(None, Some("/api/orders"), None));
        writes.matches.method = Some("POST".to_owned());
        let mut legacy = route("legacy", path(None, Some("/v1"), None));
        legacy.rewrite = Some(Rewrite {
            prefix: "/api".to_owned(),
        });
        let mut rest = route("rest", Match::default());
        rest.backends = vec![backend(1, Some(90)), backend(2, Some(10))];
        cfg.routes.extend([
            canary,
            route("health", path(Some("/healthz"), None, None)),
            writes,
            route("items", path(None, None, Some("/api/items/[0-9]+"))),
            legacy,
            rest,
        ]);
    }
    cfg
}

/// The subset label `version: v<n>`.
fn version(n: usize) -> BTreeMap<String, String> {
    BTreeMap::from([("version".to_owned(), format!("v{n}"))])
}

/// A backend: the subset `version: v<n>`, with `weight`.
fn backend(n: usize, weight: Option<u32>) -> Backend {
    Backend {
        subset: version(n),
        weight,
    }
}

/// Writes certificates and the config into `dir`; opens a store on it.
fn store(dir: &Path) -> Store {
    weft_benches::mesh::write_certs(dir).expect("certificates");
    let p = weft_benches::mesh::free_ports(4).expect("ports");
    let path = dir.join("sidecar.yaml");
    weft_benches::mesh::write_config(&path, &config([p[0], p[1], p[2], p[3]])).expect("config");
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
    let dest = snap.routes.for_host("svc-7").expect("svc-7");

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
        let taken = dest.route(&method, &path, req).expect("a route");
        assert!(Arc::ptr_eq(taken, &dest.routes[*want]), "{name}");
        g.bench_function(*name, |b| {
            b.iter(|| {
                let host = black_box("svc-7");
                let d = snap.routes.for_host(host).expect("svc-7");
                d.route(black_box(&method), black_box(&path), req)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pick");
    for (name, host) in [("p2c peak-EWMA", "svc-6"), ("round robin", "svc-7")] {
        let d = snap.routes.for_host(host).expect("service");
        let route = &d.routes[d.routes.len() - 1]; // the weighted catch-all
        assert!(d.pick(route, 0, clock::now()).is_some());
        g.bench_function(name, |b| {
            b.iter(|| d.pick(black_box(route), 0, clock::now()))
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
