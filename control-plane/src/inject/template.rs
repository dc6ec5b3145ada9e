//! What injection adds to a pod: the sidecar's config (in its `WEFT_CONFIG` env var), the
//! sidecar container itself, and the identity and data volumes; and how an earlier
//! injection's additions are taken out again.

use serde_json::{json, Map, Value};
use weft_policy::wire;

use super::annotations::Tuning;
use super::{
    Settings, ADMIN_PORT, CONFIG_ENV, CONFIG_PATH, DATA_DIR, DATA_VOLUME, IDENTITY_DIR,
    IDENTITY_VOLUME, INBOUND_PORT, INBOUND_PORT_NAME, METRICS_PORT, METRICS_PORT_NAME,
    OUTBOUND_PORT, PROXY_CONTAINER, PROXY_ENV, PROXY_UID, TOKEN_AUDIENCE, TOKEN_EXPIRATION_SECONDS,
    TRUST_BUNDLE_CONFIGMAP,
};

/// The sidecar's config: its own service `<service>.$(POD_NAMESPACE)` with the identity of
/// the pod's service account, the app on localhost, inbound on every address, the admin
/// port on loopback, the read-only metrics port on every address, the
/// control plane with the ServiceAccount token as the join credential, and key, certificate
/// and persisted policy in the data volume (relative paths resolve against the config
/// file's directory, [`DATA_DIR`]).
///
/// `$(POD_NAMESPACE)` and `$(SERVICE_ACCOUNT)` are expanded by the kubelet (they are env
/// vars defined before `WEFT_CONFIG` in the sidecar container).
pub fn sidecar_config(
    settings: &Settings,
    service: &str,
    app_port: u16,
    protocol: Option<&str>,
) -> String {
    let td = &settings.trust_domain;
    let config = wire::ConfigFile {
        service: wire::OwnService {
            name: format!("{service}.$(POD_NAMESPACE)"),
            identity: format!("spiffe://{td}/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)"),
            app: format!("127.0.0.1:{app_port}"),
            protocol: protocol.map(str::to_owned),
            rate_limit: None,
            labels: Default::default(),
            egress: None,
            detect_timeout: None,
            opaque_ports: None,
        },
        listen: wire::Listen {
            outbound: Some(format!("127.0.0.1:{OUTBOUND_PORT}")),
            inbound: Some(format!("0.0.0.0:{INBOUND_PORT}")),
            admin: Some(format!("127.0.0.1:{ADMIN_PORT}")),
            metrics: Some(format!("0.0.0.0:{METRICS_PORT}")),
        },
        tls: wire::Tls {
            cert: "cert.pem".to_owned(),
            key: "key.pem".to_owned(),
            trust_bundle: format!("{IDENTITY_DIR}/ca.crt"),
        },
        workers: None,
        drain_timeout: None,
        connect_timeout: None,
        access_log: None,
        idle_timeout: None,
        max_connections_per_listener: None,
        tracing: None,
        control_plane: Some(wire::ControlPlane {
            address: settings.control_plane.clone(),
            identity: format!(
                "spiffe://{td}/ns/{}/sa/{}",
                crate::names::CONTROL_PLANE_NAMESPACE,
                crate::names::CONTROL_PLANE_SERVICE_ACCOUNT
            ),
            state_file: Some("policy.json".to_owned()),
            join_token_file: Some(format!("{IDENTITY_DIR}/token")),
            bootstrap_timeout: None,
            // Fail closed until the first snapshot: the pod is not ready before it either.
            bootstrap_authorization: None,
            // The roots are the weft-trust-bundle ConfigMap's, mounted read only: one place,
            // which every pod of the namespace reads and the operator rotates
            // (docs/KUBERNETES.md, "Rotating the mesh CA").
            trust_bundle: Some(wire::TrustBundleSource::Mounted),
        }),
        services: Vec::new(),
        routes: Vec::new(),
        authorization: None,
    };
    // Plain structs of strings always serialize.
    serde_yaml::to_string(&config).unwrap_or_default()
}

/// An `httpGet` probe on the sidecar's read-only metrics port: the admin API stays on the
/// pod's loopback, where the kubelet's probes (sent to the pod IP) cannot reach it.
pub(super) fn metrics_probe(path: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": METRICS_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    })
}

pub(super) fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

pub(super) fn sidecar_container(settings: &Settings, tuning: &Tuning, config: &str) -> Value {
    json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        // A native sidecar: started before the app containers (once its startup probe
        // passes) and stopped after them, so Jobs complete when their app exits.
        "restartPolicy": "Always",
        "args": ["--config", CONFIG_PATH, "--config-env", CONFIG_ENV],
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            {"name": "WEFT_LOG", "value": tuning.log_level},
            // Last: it refers to the vars above, which the kubelet expands in order.
            {"name": CONFIG_ENV, "value": config},
        ],
        // The inbound and read-only metrics ports; the admin port listens on loopback.
        "ports": [
            {"name": INBOUND_PORT_NAME, "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        // Up to two minutes to obtain the first certificate and policy before the kubelet
        // restarts the sidecar; the app waits for it.
        "startupProbe": metrics_probe("/ready", 1, 120),
        "readinessProbe": metrics_probe("/ready", 5, 3),
        "livenessProbe": metrics_probe("/live", 10, 3),
        "resources": {
            "requests": {"cpu": tuning.cpu_request, "memory": tuning.memory_request},
            "limits": {"memory": tuning.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true},
            {"name": DATA_VOLUME, "mountPath": DATA_DIR},
        ],
    })
}

pub(super) fn volumes_added() -> [Value; 2] {
    [
        json!({
            "name": IDENTITY_VOLUME,
            "projected": {
                // Readable by the sidecar's user whatever the pod's other containers run as.
                "defaultMode": 0o444,
                "sources": [
                    {"serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                        "path": "token",
                    }},
                    {"configMap": {
                        "name": TRUST_BUNDLE_CONFIGMAP,
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }},
                ],
            },
        }),
        // Memory-backed: the private key never touches the node's disk.
        json!({
            "name": DATA_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"},
        }),
    ]
}

/// Take out what an earlier injection added (any version), so injection can start afresh.
pub(super) fn strip(spec: &mut Map<String, Value>) {
    fn remove_named(spec: &mut Map<String, Value>, key: &str, names: &[&str]) {
        if let Some(list) = spec.get_mut(key).and_then(Value::as_array_mut) {
            list.retain(|item| {
                !item
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| names.contains(&n))
            });
            if list.is_empty() {
                spec.remove(key);
            }
        }
    }
    remove_named(
        spec,
        "initContainers",
        &[PROXY_CONTAINER, super::capture::INIT_CONTAINER],
    );
    remove_named(spec, "volumes", &[IDENTITY_VOLUME, DATA_VOLUME]);
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            remove_named(c, "env", &[PROXY_ENV]);
        }
    }
}
