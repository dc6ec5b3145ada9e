//! The app's probes, pointed at the sidecar: every `httpGet` (HTTP) and `tcpSocket` liveness,
//! readiness and startup probe of an app container becomes an `httpGet` on the sidecar's
//! read-only port ([`METRICS_PORT`]) at `/app-health/<container>/<livez|readyz|startupz>`,
//! timings unchanged, and the originals go to the sidecar in its env var [`APP_PROBES_ENV`]
//! (JSON), which `weft-proxy` serves (`proxy/src/control/app_probe.rs`). Istio does the same
//! (`ISTIO_KUBE_APP_PROBERS`).
//!
//! Why: the app listens on loopback, so a kubelet probe sent to the pod IP cannot reach it,
//! and with transparent capture it would land in the sidecar's mTLS listener. Through the
//! sidecar the probe reaches the app on loopback, and the app container's readiness (so the
//! pod's, and its endpoint's) is the app's own.
//!
//! Why an env var on the sidecar and not its config: the probes belong to the pod spec, not
//! to the mesh config the control plane also pushes (one serde schema with
//! `deny_unknown_fields`, shared with the wire); the env var keeps the sidecar config as it
//! was and carries the originals verbatim, so [`restore`] gives back the exact spec and
//! injection stays idempotent.
//!
//! Left as they are: `exec` probes (they run inside the app container, no network), `grpc`
//! probes (the kubelet's gRPC health client; the sidecar speaks no gRPC health protocol to
//! the kubelet), `httpGet` with `scheme: HTTPS`, and probes already aimed at the sidecar's
//! ports (an earlier injection's).

use serde_json::{json, Map, Value};

use super::{InjectError, ADMIN_PORT, INBOUND_PORT, METRICS_PORT, OUTBOUND_PORT, PROXY_CONTAINER};

/// Env var of the sidecar holding the app's original probes (JSON: path → probe).
pub const APP_PROBES_ENV: &str = "WEFT_APP_PROBES";
/// `"false"` keeps the app's probes as written.
pub const ANNOTATION_REWRITE_PROBES: &str = "weft.dev/rewrite-app-probes";

/// The probe fields of a container and the name each has under `/app-health/<container>/`.
const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The value of [`ANNOTATION_REWRITE_PROBES`]: `true` unless `"false"`.
pub(super) fn rewrite_wanted(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(format!("{v:?}: want \"true\" or \"false\"")),
    }
}

/// Rewrite the app containers' probes in `spec` (see the module docs) and return the env var
/// the sidecar gets, `None` when no probe was rewritten. An `httpGet` or `tcpSocket` port
/// naming no port of its container is an error, as the kubelet would fail the probe.
pub(super) fn rewrite(
    spec: &mut Map<String, Value>,
    object: &str,
) -> Result<Option<Value>, InjectError> {
    let mut carried = Map::new();
    let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) else {
        return Ok(None);
    };
    for c in containers.iter_mut().filter_map(Value::as_object_mut) {
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let ports = c.get("ports").cloned().unwrap_or(Value::Null);
        for (field, kind) in KINDS {
            let Some(probe) = c.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some((action, original)) = ["httpGet", "tcpSocket"]
                .into_iter()
                .find_map(|a| probe.get(a).map(|o| (a, o.clone())))
            else {
                continue;
            };
            let https = original
                .get("scheme")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.eq_ignore_ascii_case("http"));
            if https {
                continue;
            }
            let port = resolve_port(original.get("port"), &ports).map_err(|reason| {
                InjectError::Object {
                    object: object.to_owned(),
                    reason: format!("container {name}: {field}: {reason}"),
                }
            })?;
            if [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, METRICS_PORT].contains(&port) {
                // Aimed at the sidecar already (or at a port the app cannot have).
                continue;
            }
            let path = format!("/app-health/{name}/{kind}");
            let timeout = probe
                .get("timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            carried.insert(
                path.clone(),
                json!({ action: original, "port": port, "timeoutSeconds": timeout }),
            );
            probe.remove(action);
            // By number: the kubelet resolves a named port against the probed container's own
            // ports, and `weft-metrics` is the sidecar's.
            probe.insert(
                "httpGet".to_owned(),
                json!({"path": path, "port": METRICS_PORT, "scheme": "HTTP"}),
            );
        }
    }
    if carried.is_empty() {
        return Ok(None);
    }
    // The kubelet expands `$(VAR)` in env values; `$$` is its escape for a literal `$`.
    let text = Value::Object(carried).to_string().replace('$', "$$");
    Ok(Some(json!({"name": APP_PROBES_ENV, "value": text})))
}

/// A probe's `port` (a number, or the name of one of the container's `ports`) as a number.
fn resolve_port(port: Option<&Value>, ports: &Value) -> Result<u16, String> {
    let number = |n: u64| {
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {n} is not 1-65535"))
    };
    match port {
        Some(Value::Number(n)) => number(n.as_u64().unwrap_or(0)),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            number(s.parse().unwrap_or(0))
        }
        Some(Value::String(s)) => ports
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(s.as_str()))
            .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
            .ok_or_else(|| format!("port {s:?} names none of the container's ports"))
            .and_then(number),
        _ => Err("no port".into()),
    }
}

/// Undo [`rewrite`]: put the originals carried in the injected sidecar's env back into the
/// app containers' probes. A probe changed since (not the one the injector wrote) is kept.
pub(super) fn restore(spec: &mut Map<String, Value>) {
    let carried = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
        .flat_map(|c| c.get("env").and_then(Value::as_array).into_iter().flatten())
        .find(|e| e.get("name").and_then(Value::as_str) == Some(APP_PROBES_ENV))
        .and_then(|e| e.get("value").and_then(Value::as_str))
        .and_then(|v| serde_json::from_str::<Map<String, Value>>(&v.replace("$$", "$")).ok());
    let (Some(carried), Some(containers)) = (
        carried,
        spec.get_mut("containers").and_then(Value::as_array_mut),
    ) else {
        return;
    };
    for c in containers.iter_mut().filter_map(Value::as_object_mut) {
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        for (field, kind) in KINDS {
            let path = format!("/app-health/{name}/{kind}");
            let Some(original) = carried.get(&path).and_then(Value::as_object) else {
                continue;
            };
            let Some(probe) = c.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            let ours = probe.get("httpGet").is_some_and(|h| {
                h.get("path").and_then(Value::as_str) == Some(path.as_str())
                    && h.get("port").and_then(Value::as_u64) == Some(u64::from(METRICS_PORT))
            });
            let Some((action, value)) = ["httpGet", "tcpSocket"]
                .into_iter()
                .find_map(|a| original.get(a).map(|v| (a, v.clone())))
            else {
                continue;
            };
            if ours {
                probe.remove("httpGet");
                probe.insert(action.to_owned(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(containers: Value) -> Map<String, Value> {
        json!({"containers": containers})
            .as_object()
            .cloned()
            .expect("object")
    }

    #[test]
    fn rewrites_http_and_tcp_and_restores_them() {
        let original = spec(json!([{
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/h$(X)", "port": "http",
                               "httpHeaders": [{"name": "X-A", "value": "b"}]},
                               "periodSeconds": 3, "timeoutSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 8080}},
            "startupProbe": {"exec": {"command": ["true"]}},
        }]));
        let mut s = original.clone();
        let env = rewrite(&mut s, "Pod x")
            .expect("rewrite")
            .expect("an env var");
        let c = &s["containers"][0];
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"},
                   "periodSeconds": 3, "timeoutSeconds": 2})
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"],
            "/app-health/web/livez"
        );
        assert_eq!(c["startupProbe"], original["containers"][0]["startupProbe"]);
        let text = env["value"].as_str().expect("value");
        assert!(text.contains("/h$$(X)"), "escaped for the kubelet: {text}");
        let carried: Value = serde_json::from_str(&text.replace("$$", "$")).expect("json");
        assert_eq!(carried["/app-health/web/readyz"]["port"], 8080);
        assert_eq!(carried["/app-health/web/readyz"]["timeoutSeconds"], 2);
        assert_eq!(carried["/app-health/web/livez"]["timeoutSeconds"], 1);

        // The sidecar carries the env var; restore puts back exactly the original.
        s.insert(
            "initContainers".into(),
            json!([{"name": PROXY_CONTAINER, "env": [env]}]),
        );
        restore(&mut s);
        s.remove("initContainers");
        assert_eq!(s, original);
    }

    #[test]
    fn unknown_port_name_is_an_error_and_https_is_left_alone() {
        let mut s = spec(json!([{"name": "web", "readinessProbe": {"httpGet": {"port": "nope"}}}]));
        let e = rewrite(&mut s, "Pod x").expect_err("unknown port");
        assert!(e.to_string().contains("\"nope\" names none"), "{e}");
        let mut s = spec(json!([{"name": "web",
            "readinessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}},
            "livenessProbe": {"grpc": {"port": 9000}}}]));
        let before = s.clone();
        assert!(rewrite(&mut s, "Pod x").expect("ok").is_none());
        assert_eq!(s, before);
    }

    #[test]
    fn the_annotation_is_validated() {
        assert_eq!(rewrite_wanted(None), Ok(true));
        assert_eq!(rewrite_wanted(Some("false")), Ok(false));
        assert!(rewrite_wanted(Some("no")).is_err());
    }
}
