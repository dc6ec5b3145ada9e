//! The gateway's manifests as docs/KUBERNETES.md "Gateway" says, on every overlay: the proxy
//! image joining the control plane as an injected sidecar does (the same config, projected
//! token and trust bundle, a memory-backed data volume as the only writable path) with
//! `--gateway-name` naming the Gateway it serves, a LoadBalancer on 443 and an HPA on CPU; and
//! the alternative of a gateway file of one's own (`components/gateway-file`: joining the same
//! way, the gateway file from a ConfigMap and the edge certificate from a Secret), whose file
//! the proxy's own parser accepts against the mesh services the control plane lists.

use std::path::Path;
use std::process::Command;

use serde_yaml::Value;
use weft_control_plane::inject::{self, Settings};
use weft_control_plane::policy::kube::mapping::SIDECAR_CONTAINER;
use weft_policy::wire;

use super::manifests::{
    assert_locked_down, documents, find, render, repo, run, tool, validate, OVERLAYS,
};

/// The Gateway the shipped Deployment serves (its own namespace's, as the stream requires).
const GATEWAY_NAME_ARG: &str = "--gateway-name=$(POD_NAMESPACE)/weft-gateway";
/// The data volume's mount: the one writable path.
const DATA_DIR: &str = "/var/run/weft";

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: not a list"))
}

fn strings(v: &Value) -> Vec<&str> {
    seq(v, "strings").iter().filter_map(Value::as_str).collect()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    seq(list, name)
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The rendered overlay `overlay` with the component `components/gateway-file`, through a
/// throwaway kustomization that names both by relative path (kustomize refuses absolute ones).
fn render_with_gateway_file(overlay: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let k8s = repo().join("deploy/kubernetes");
    let up = dir
        .path()
        .ancestors()
        .skip(1)
        .map(|_| "..")
        .collect::<Vec<_>>()
        .join("/");
    let rel = |p: &str| format!("{up}{}/{p}", k8s.display());
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{}]\ncomponents: [{}]\n",
            rel(&format!("overlays/{overlay}")),
            rel("components/gateway-file")
        ),
    )
    .expect("kustomization");
    documents(&run(Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(dir.path())))
}

/// The injected sidecar's config for the same service, parsed: what the gateway's must match
/// in everything that makes it join (control plane, TLS files, listeners).
fn injected(service: &str) -> wire::ConfigFile {
    let text = inject::sidecar_config(&Settings::default(), service, 8080, Some("http"));
    serde_yaml::from_str(&text).expect("the injector's config")
}

/// The gateway container joins as an injected sidecar: its config, token and trust bundle.
fn joins_like_a_sidecar(overlay: &str, pod: &Value, c: &Value) {
    let env = &c["env"];
    let names: Vec<&str> = seq(env, "env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    // The kubelet expands $(VAR) only from vars defined before.
    let at = |n: &str| names.iter().position(|x| *x == n);
    let config_at = at("WEFT_CONFIG").expect("WEFT_CONFIG");
    for var in ["POD_NAMESPACE", "SERVICE_ACCOUNT"] {
        assert!(at(var).is_some_and(|i| i < config_at), "{overlay}: {var}");
    }
    let text = named(env, "WEFT_CONFIG")["value"]
        .as_str()
        .expect("WEFT_CONFIG value");
    let ours: wire::ConfigFile = serde_yaml::from_str(text).expect("WEFT_CONFIG parses");
    let theirs = injected("weft-gateway");
    assert_eq!(ours.control_plane, theirs.control_plane, "{overlay}");
    assert_eq!(ours.tls, theirs.tls, "{overlay}");
    assert_eq!(ours.listen, theirs.listen, "{overlay}");
    assert_eq!(ours.service.name, theirs.service.name, "{overlay}");
    assert_eq!(ours.service.identity, theirs.service.identity, "{overlay}");
    // As the kubelet expands it, the proxy's own parser takes it: the gateway's identity.
    let expanded = text
        .replace("$(POD_NAMESPACE)", "weft-system")
        .replace("$(SERVICE_ACCOUNT)", "gateway");
    let config = weft_policy::parse(&expanded, Path::new("config.yaml"), Path::new(DATA_DIR))
        .unwrap_or_else(|e| panic!("{overlay}: WEFT_CONFIG: {e}"));
    assert_eq!(
        config.own.identity.spiffe_uri(),
        "spiffe://weft.local/ns/weft-system/sa/gateway"
    );
    assert!(config.control_plane.is_some(), "{overlay}: control_plane");
    let metrics = config.listen.metrics.expect("listen.metrics");
    assert_eq!(metrics.port(), 15020, "the probes' port");

    // The identity volume: the projected token (the injector's audience) and the trust bundle,
    // read-only where the config names them; the data volume in memory, the one writable path.
    let mounts = &c["volumeMounts"];
    let id = named(mounts, "weft-identity");
    assert_eq!(id["mountPath"], "/var/run/secrets/weft", "{overlay}");
    assert_eq!(id["readOnly"].as_bool(), Some(true), "{overlay}");
    let data = named(mounts, "weft-proxy-data");
    assert_eq!(data["mountPath"], DATA_DIR, "{overlay}");
    let volumes = &pod["volumes"];
    let sources = seq(
        &named(volumes, "weft-identity")["projected"]["sources"],
        "sources",
    );
    let token = sources
        .iter()
        .find_map(|s| s.get("serviceAccountToken"))
        .expect("a projected token");
    assert_eq!(token["audience"], inject::TOKEN_AUDIENCE, "{overlay}");
    assert_eq!(token["path"], "token", "{overlay}");
    let bundle = sources
        .iter()
        .find_map(|s| s.get("configMap"))
        .expect("the trust bundle");
    assert_eq!(bundle["name"], inject::TRUST_BUNDLE_CONFIGMAP, "{overlay}");
    let empty = &named(volumes, "weft-proxy-data")["emptyDir"];
    assert_eq!(
        empty["medium"], "Memory",
        "{overlay}: keys stay off the disk"
    );
    assert!(empty["sizeLimit"].is_string(), "{overlay}");
}

/// The Secrets `pod` mounts (by name).
fn secrets(pod: &Value) -> Vec<&str> {
    seq(&pod["volumes"], "volumes")
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect()
}

#[test]
fn the_gateway_joins_the_control_plane_and_serves_its_gateway() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let d = find(&docs, "Deployment", "weft-gateway");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "gateway", "{overlay}");
        // Only the projected token with the mesh's audience; never the API's default one.
        assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
        let containers = seq(&pod["containers"], "containers");
        assert_eq!(
            containers.len(),
            1,
            "{overlay}: the gateway is the workload"
        );
        let c = &containers[0];
        // A mesh pod: the control plane finds its Service as a mesh service by this name.
        assert_eq!(c["name"], SIDECAR_CONTAINER, "{overlay}");
        assert_eq!(c["image"], "weft-proxy:0.1.0", "{overlay}");
        // The proxy image's user, as the injected sidecar's (images.rs checks the image).
        assert_eq!(c["securityContext"]["runAsUser"].as_u64(), Some(2102));
        assert_eq!(
            strings(&c["args"]),
            [
                "--config=/var/run/weft/config.yaml",
                "--config-env=WEFT_CONFIG",
                "--gateway=/var/run/weft/gateway/gateway.yaml",
                GATEWAY_NAME_ARG,
            ],
            "{overlay}"
        );
        joins_like_a_sidecar(overlay, pod, c);
        let mounts = seq(&c["volumeMounts"], "mounts");
        assert_eq!(mounts.len(), 2, "{overlay}: no other mount");
        assert_eq!(
            secrets(pod),
            [] as [&str; 0],
            "{overlay}: no Secret: the certificates come from the control plane"
        );
        for (probe, path) in [
            ("startupProbe", "/ready"),
            ("livenessProbe", "/live"),
            ("readinessProbe", "/ready"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{overlay} {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{overlay} {probe}");
        }
        let port = |name: &str| {
            seq(&c["ports"], "ports")
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("port {name}"))
        };
        assert_eq!((port("https"), port("metrics")), (8443, 15020));
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{overlay}");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{overlay}");

        let svc = find(&docs, "Service", "weft-gateway");
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(443));
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let selector = svc["spec"]["selector"].as_mapping().expect("selector");
        assert!(!selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v));

        let hpa = find(&docs, "HorizontalPodAutoscaler", "weft-gateway");
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "weft-gateway");
        let m = &hpa["spec"]["metrics"][0];
        assert_eq!(
            (m["type"].as_str(), m["resource"]["name"].as_str()),
            (Some("Resource"), Some("cpu"))
        );
        assert_eq!(m["resource"]["target"]["type"], "Utilization");
        assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(2));
        find(&docs, "PodDisruptionBudget", "weft-gateway");
    }
}

/// The gateway-file component: the gateway joins as the base's does (the same config env,
/// token, trust bundle and data volume) but serves the ConfigMap's gateway file (no
/// `--gateway-name`) with the edge certificate from a Secret, both read-only; the rest
/// (lock-down, probes, schemas) stays. The file passes the proxy's own parser against the mesh
/// services as the control plane names them (`<service>.<namespace>`), and names one the
/// sidecar config alone does not list (they come from the control plane's snapshot).
#[test]
fn the_gateway_file_component_joins_and_serves_the_configmap_s_file() {
    let docs = render_with_gateway_file("production");
    validate("gateway-file", &docs);
    assert_locked_down("gateway-file", &docs);
    let d = find(&docs, "Deployment", "weft-gateway");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        strings(&c["args"]),
        [
            "--config=/var/run/weft/config.yaml",
            "--config-env=WEFT_CONFIG",
            "--gateway=/etc/weft/gateway/gateway.yaml",
        ]
    );
    joins_like_a_sidecar("gateway-file", pod, c);
    let mounts = &c["volumeMounts"];
    assert_eq!(seq(mounts, "mounts").len(), 4, "{mounts:?}");
    for (volume, at) in [
        ("edge-tls", "/etc/weft/edge"),
        ("config", "/etc/weft/gateway"),
    ] {
        let m = named(mounts, volume);
        assert_eq!(m["mountPath"], at, "{volume}");
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{volume}");
    }
    let volumes = &pod["volumes"];
    assert_eq!(seq(volumes, "volumes").len(), 4);
    assert_eq!(
        secrets(pod),
        ["weft-gateway-tls"],
        "the edge certificate only"
    );
    let edge = named(volumes, "edge-tls");
    assert_eq!(edge["secret"]["defaultMode"].as_u64(), Some(0o400));
    assert_eq!(
        named(volumes, "config")["configMap"]["name"],
        "weft-gateway"
    );
    for (probe, path) in [("livenessProbe", "/live"), ("readinessProbe", "/ready")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
    }

    let cm = find(&docs, "ConfigMap", "weft-gateway");
    let file = |k: &str| cm["data"][k].as_str().unwrap_or_else(|| panic!("{k}"));
    // The mesh services as a control-plane snapshot lists the shop's on Kubernetes.
    let mesh = weft_policy::parse(
        "service: {name: weft-gateway.weft-system, identity: spiffe://weft.local/ns/weft-system/sa/gateway, \
         app: 127.0.0.1:8080}\ntls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}\n\
         services:\n  - {name: frontend.shop, identity: spiffe://weft.local/ns/shop/sa/frontend, protocol: http}\n",
        Path::new("snapshot"),
        Path::new(DATA_DIR),
    )
    .expect("the stand-in snapshot");
    let parse = |services| {
        weft_policy::gateway::parse(
            file("gateway.yaml"),
            Path::new("gateway.yaml"),
            Path::new("/etc/weft/gateway"),
            services,
        )
    };
    let gw = parse(&mesh.services).unwrap_or_else(|e| panic!("gateway.yaml: {e}"));
    assert_eq!(gw.https.port(), 8443, "the container's https port");
    let before_any_snapshot = parse(&[]).expect_err("no mesh services before a snapshot");
    assert!(
        before_any_snapshot.to_string().contains("frontend.shop"),
        "{before_any_snapshot}"
    );
    serde_json::from_str::<serde_json::Value>(file("jwks.json")).expect("jwks.json");
}
