//! The mesh CA rotated on the deployed shop (see `deployed`) under load, by the sequence
//! `docs/KUBERNETES.md` documents ("Rotating the mesh CA"):
//!
//! 1. the new root is added to the `weft-trust-bundle` ConfigMap (old root first); the pod
//!    runner updates the mounted files as the kubelet does (atomic `..data` swap, on its sync
//!    period) and every sidecar reloads them;
//! 2. the control plane is restarted with the new root and key (`--ca-cert`, `--ca-key`) and
//!    the old root as `--extra-roots`; every sidecar's certificate renews with the new root
//!    (certificates live 30 s here, `--cert-lifetime`, so they renew within about 20 s);
//! 3. the old root is retired: the ConfigMap holds the new root alone, and the control plane is
//!    restarted without `--extra-roots`.
//!
//! Meanwhile an unmodified curl in the client pod calls the frontend back to back (each call
//! crosses three mTLS hops: client → frontend → orders → inventory). Asserted: not one request
//! fails; after each restart every sidecar's snapshot is ACKed (the control plane's status) and
//! no sidecar ever NACKed one (their metrics); `weft_trust_bundle_differs` is 0 on every
//! sidecar after each step; at the end every sidecar's certificate (the file in its data
//! volume) was issued by the new root.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_certs::CertificateAuthority;
use weft_podrunner::PodHandle;
use weft_testkit::wait;
use x509_parser::extensions::ParsedExtension;

use super::deployed::{can_run, node_get, Shop, LIMIT, NS};
use super::source::TD;

/// Workload certificates' lifetime here: renewed at about two thirds of it.
const CERT_LIFETIME: &str = "30s";
/// How long every sidecar may take to renew with the new root: a lifetime and a margin.
const RENEWAL_LIMIT: Duration = Duration::from_secs(60);

/// What one request through the mesh gave.
struct Outcome {
    at: Instant,
    ok: bool,
    detail: String,
}

/// curl from the client pod's network namespace, back to back in batches of 5, until `stop`
/// (bounded: at most `batches` batches or 10 minutes). Nothing is retried: every request
/// counts.
fn load(netns: &str, stop: &AtomicBool, batches: usize) -> Vec<Outcome> {
    let host = "frontend.shop.svc.cluster.local";
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    for _ in 0..batches {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let at = Instant::now();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "curl", "-sS", "-m", "5"])
            .args(["--connect-to", &format!("{host}:80:127.0.0.1:15001")])
            .args(["-w", "\n@@%{http_code}\n"]);
        for i in 0..5 {
            cmd.arg(format!("http://{host}/shop/{i}"));
        }
        let text = match cmd.output() {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("@@0 {e}\n"),
        };
        let mut body = String::new();
        let mut n = 0;
        for line in text.lines() {
            match line.strip_prefix("@@") {
                Some(code) => {
                    n += 1;
                    let served = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["order"]["version"].as_str().map(str::to_owned));
                    let ok = code.trim() == "200" && served.is_some();
                    out.push(Outcome {
                        at,
                        ok,
                        detail: format!("{code} {}", std::mem::take(&mut body)),
                    });
                }
                None => body.push_str(line),
            }
        }
        // A curl that printed fewer answers than requests failed the rest.
        for _ in n..5 {
            out.push(Outcome {
                at,
                ok: false,
                detail: format!("no answer: {text}"),
            });
        }
    }
    out
}

/// The key identifier a certificate names: its own (`subject`), or its issuer's.
fn key_id(pem: &str, subject: bool) -> Vec<u8> {
    let der = weft_certs::parse_cert_chain_pem(pem).expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der[0].as_ref()).expect("X.509");
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) if subject => Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) if !subject => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("a key identifier")
}

/// A file of the sidecar's filesystem, read in its container (as `kubectl exec cat`).
async fn sidecar_file(pod: &PodHandle, path: &str) -> String {
    let out = pod
        .exec("weft-proxy", &["cat", path], Duration::from_secs(10))
        .await
        .expect("exec cat");
    out.stdout
}

/// Every sidecar's metrics port: `(trust_bundle_differs, nacks)`.
async fn sidecar_metrics(shop: &Shop, pod: &PodHandle) -> (f64, f64) {
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let addr = format!("{}:15020", pod.ip()).parse().expect("addr");
    let (_, text) = node_get(&shop.runner, addr, req.into())
        .await
        .expect("the sidecar's metrics");
    let value = |name: &str, label: Option<&str>| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| label.is_none_or(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        value("weft_trust_bundle_differs", None),
        value(
            "weft_control_plane_snapshots_total",
            Some("result=\"nack\""),
        ),
    )
}

/// Waits until the control plane's status lists every pod's sidecar with its last snapshot
/// ACKed (failing at once on a NACK); how long that took.
async fn all_acked(shop: &Shop) -> Duration {
    let start = Instant::now();
    wait::until_async("every sidecar's snapshot ACKed", LIMIT, || async {
        let status = shop.admin("/v1/status").await;
        let sidecars = status["sidecars"].as_array().cloned().unwrap_or_default();
        assert!(
            sidecars.iter().all(|s| s["nack"].is_null()),
            "a sidecar NACKed: {status}"
        );
        let acked = sidecars
            .iter()
            .filter(|s| !s["sent_version"].is_null() && s["acked_version"] == s["sent_version"])
            .count();
        (sidecars.len() == shop.pods.len() && acked == sidecars.len()).then_some(())
    })
    .await;
    start.elapsed()
}

/// Puts the trust bundle ConfigMap holding `roots`, then waits until every pod's mounted
/// `ca.crt` holds them and every sidecar reloaded its files after that; how long it took.
async fn put_bundle(shop: &Shop, roots: &str) -> Duration {
    let start = Instant::now();
    shop.kube
        .server()
        .put(json!({"kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "weft-trust-bundle", "namespace": NS}, "data": {"ca.crt": roots}}));
    for pod in &shop.pods {
        wait::until_async(
            &format!("{}'s mounted trust bundle updated", pod.name()),
            Duration::from_secs(20),
            || async {
                (sidecar_file(pod, "/var/run/secrets/weft/ca.crt").await == roots).then_some(())
            },
        )
        .await;
    }
    // A reload that starts after the mount changed reads the new bundle.
    let seen: Vec<usize> = shop
        .pods
        .iter()
        .map(|p| p.logs("weft-proxy").len())
        .collect();
    for (pod, from) in shop.pods.iter().zip(seen) {
        wait::until_async(
            &format!("{}'s sidecar reloading its files", pod.name()),
            Duration::from_secs(20),
            || async {
                let log = pod.logs("weft-proxy");
                log.get(from..)
                    .is_some_and(|new| new.contains("config reloaded (file changed)"))
                    .then_some(())
            },
        )
        .await;
    }
    start.elapsed()
}

/// Asserts `weft_trust_bundle_differs` 0 and no NACK on every sidecar.
async fn bundles_agree(shop: &Shop, step: &str) {
    for pod in &shop.pods {
        let (differs, nacks) = sidecar_metrics(shop, pod).await;
        assert_eq!(
            differs,
            0.0,
            "{step}: {} shows weft_trust_bundle_differs 1",
            pod.name()
        );
        assert_eq!(nacks, 0.0, "{step}: {} NACKed a snapshot", pod.name());
    }
}

/// Waits until every sidecar's certificate was issued by the root with key id `root`.
async fn renewed_by(shop: &Shop, root: &[u8]) -> Duration {
    let start = Instant::now();
    for pod in &shop.pods {
        wait::until_async(
            &format!("{}'s certificate issued by the new root", pod.name()),
            RENEWAL_LIMIT.saturating_sub(start.elapsed()),
            || async {
                let pem = sidecar_file(pod, "/var/run/weft/cert.pem").await;
                (!pem.is_empty() && key_id(&pem, false) == root).then_some(())
            },
        )
        .await;
    }
    start.elapsed()
}

// In one CI run (2026-12-07) 1 of 9,300 requests failed here: a gRPC call orders -> inventory
// reported cancelled. Every certificate renewal used to drain the app's HTTP/2 connection to
// its sidecar with a GOAWAY, and a call tonic had queued as the GOAWAY arrived was cancelled
// (tonic does not retry it). Streams now take the proxy in force (`outbound::connector::InForce`)
// and the app's connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_ca_rotates_on_pods_under_load_without_a_failed_request() {
    if !can_run() {
        return;
    }
    let lifetime = vec!["--cert-lifetime".to_owned(), CERT_LIFETIME.to_owned()];
    let mut shop = Shop::start_with(&lifetime).await;
    shop.start_pods().await;
    let dir = shop.tmp.path().to_owned();
    let old = std::fs::read_to_string(dir.join("state/ca.crt")).expect("the old root");
    let next = CertificateAuthority::generate(TD, Duration::from_secs(30 * 24 * 3600))
        .expect("the new root");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    };
    let (new_crt, new_key) = (
        write("new-ca.crt", next.cert_pem()),
        write("new-ca.key", next.key_pem()),
    );
    let old_crt = write("old-ca.crt", &old);
    let (old_id, new_id) = (key_id(&old, true), key_id(next.cert_pem(), true));
    assert_ne!(old_id, new_id);

    // Warm-up: every hop ready (the callers' snapshots list the endpoints).
    let client = &shop.pods[4];
    let deadline = Instant::now() + LIMIT;
    loop {
        let batch = load_once(client.netns().to_owned()).await;
        if batch.iter().all(|o| o.ok) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shop never answered whole\n{}",
            shop.cp_log()
        );
    }
    all_acked(&shop).await;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (netns, stop) = (client.netns().to_owned(), Arc::clone(&stop));
        std::thread::spawn(move || load(&netns, &stop, 4000))
    };
    let started = Instant::now();

    // 1. Both roots in the ConfigMap, old first.
    let both = format!("{old}{}", next.cert_pem());
    let step1 = put_bundle(&shop, &both).await;

    // 2. The control plane signs with the new root, trusting the old one too.
    let t = Instant::now();
    let mut args = lifetime.clone();
    args.extend([
        "--ca-cert".into(),
        new_crt.clone(),
        "--ca-key".into(),
        new_key.clone(),
    ]);
    args.extend(["--extra-roots".into(), old_crt]);
    shop.restart_control_plane("cp-2.log", &args).await;
    let restart2 = t.elapsed();
    let acked2 = all_acked(&shop).await;
    bundles_agree(&shop, "after the restart with the new root").await;
    let renewed = renewed_by(&shop, &new_id).await;
    bundles_agree(&shop, "after the renewals").await;

    // 3. The old root retired: the ConfigMap, then the control plane.
    let step3 = put_bundle(&shop, next.cert_pem()).await;
    let t = Instant::now();
    let mut args = lifetime.clone();
    args.extend(["--ca-cert".into(), new_crt, "--ca-key".into(), new_key]);
    shop.restart_control_plane("cp-3.log", &args).await;
    let restart3 = t.elapsed();
    let acked3 = all_acked(&shop).await;
    bundles_agree(&shop, "after the old root was retired").await;
    // A certificate renewed after the retirement is still the new root's, and traffic flows.
    for pod in &shop.pods {
        let pem = sidecar_file(pod, "/var/run/weft/cert.pem").await;
        assert_eq!(key_id(&pem, false), new_id, "{}", pod.name());
    }
    let tail = Instant::now();
    wait::until_async(
        "two more seconds of load",
        Duration::from_secs(5),
        || async { (tail.elapsed() > Duration::from_secs(2)).then_some(()) },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    let outcomes = loader.join().expect("the load thread");
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| {
            format!(
                "+{:?}: {}",
                o.at.saturating_duration_since(started),
                o.detail
            )
        })
        .collect();
    let span = started.elapsed();
    eprintln!(
        "CA rotation under load: {} requests in {span:?}, {} failed; step 1 (ConfigMap with both \
         roots to every mount and sidecar reload) {step1:?}; step 2 restart {restart2:?}, every \
         sidecar ACKed {acked2:?} after it, every certificate renewed by the new root {renewed:?} \
         after that; step 3 (ConfigMap with the new root alone) {step3:?}, restart {restart3:?}, \
         ACKed {acked3:?} after it",
        outcomes.len(),
        failed.len()
    );
    assert!(outcomes.len() >= 50, "too little load: {}", outcomes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\n{}",
        failed.len(),
        outcomes.len(),
        shop.cp_log()
    );
}

/// One batch of [`load`], now.
async fn load_once(netns: String) -> Vec<Outcome> {
    tokio::task::spawn_blocking(move || load(&netns, &AtomicBool::new(false), 1))
        .await
        .expect("curl task")
}
