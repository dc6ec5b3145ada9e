//! Sidecar injection: the one mutation behind `weftctl inject` and the control plane's mutating
//! admission webhook ([`webhook`]).
//!
//! [`inject_object`] takes one Kubernetes object as JSON (a Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, Job, CronJob or a `List` of them; any other kind comes back unchanged)
//! and returns it with the `weft-proxy` sidecar in its pod spec:
//!
//! - a *native sidecar* (an init container with `restartPolicy: Always`, Kubernetes >= 1.29),
//!   first among the init containers, with a startup probe on its `/ready` (the read-only
//!   metrics port [`METRICS_PORT`], which Prometheus scrapes too): the kubelet
//!   starts the other init containers and the app only once the sidecar is ready, and stops the
//!   sidecar only after the app containers have exited, so a Job's pod completes when its app
//!   does, with no wrapper script or shutdown call;
//! - its config in the `WEFT_CONFIG` env var ([`sidecar_config`]), written with Kubernetes
//!   `$(VAR)` references to the pod's namespace and service account, which `weft-proxy
//!   --config-env WEFT_CONFIG` writes into its data directory before it starts;
//! - a projected volume with the pod's ServiceAccount token (audience `weft`, the sidecar's
//!   join credential, verified by the control plane with TokenReview) and the mesh trust
//!   bundle (ConfigMap `weft-trust-bundle`, key `ca.crt`, in the workload's namespace), and a
//!   memory-backed emptyDir for the sidecar's key, certificate and persisted policy;
//! - `WEFT_PROXY=http://127.0.0.1:15001` in every app container's env;
//! - the app containers' `httpGet`/`tcpSocket` probes pointed at the sidecar ([`probes`]);
//! - unless `weft.dev/capture: "false"`, the init container `weft-init` ahead of the sidecar,
//!   running `weft-proxy init` with `NET_ADMIN` and `NET_RAW` only: transparent capture
//!   ([`capture`]);
//! - the annotation `weft.dev/injected: <version>`.
//!
//! Injection is idempotent: whatever an earlier injection added is taken out first, so
//! injecting an injected object gives the same object (and an older injection is upgraded).
//! Annotations `weft.dev/*` on the pod template (or else on the workload itself) opt out or
//! tune; a bad value is an [`InjectError`] naming the object and the annotation.

mod annotations;
mod capture;
mod object;
mod probes;
mod template;
pub mod webhook;

use annotations::{app_port, log_level, protocol, quantity, service_name, tuned, Tuning};
pub use capture::{
    ANNOTATION_CAPTURE, ANNOTATION_INBOUND_SKIP_CIDRS, ANNOTATION_INBOUND_SKIP_PORTS,
    ANNOTATION_OUTBOUND_SKIP_CIDRS, ANNOTATION_OUTBOUND_SKIP_PORTS, INIT_CONTAINER,
};
use object::{annotations, describe, pod_template_path, pointer_mut_or_create};
pub use probes::{ANNOTATION_REWRITE_PROBES, APP_PROBES_ENV};
pub use template::sidecar_config;
use template::{sidecar_container, strip, volumes_added};

use serde_json::{json, Map, Value};

/// Name of the injected sidecar container.
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// Prefix of every Weft annotation.
pub const ANNOTATION_PREFIX: &str = "weft.dev/";
/// `"false"` opts a workload out of injection.
pub const ANNOTATION_INJECT: &str = "weft.dev/inject";
/// Set by injection to the version of the injector; marks an injected pod.
pub const ANNOTATION_INJECTED: &str = "weft.dev/injected";
/// The mesh service name (without the namespace) of the workload.
pub const ANNOTATION_SERVICE: &str = "weft.dev/service";
/// The app's port on localhost, where the sidecar forwards inbound traffic.
pub const ANNOTATION_APP_PORT: &str = "weft.dev/app-port";
/// The protocol the app speaks: `http`, `grpc` or `tcp`.
pub const ANNOTATION_PROTOCOL: &str = "weft.dev/protocol";
/// CPU request of the sidecar (a Kubernetes quantity).
pub const ANNOTATION_CPU_REQUEST: &str = "weft.dev/proxy-cpu-request";
/// Memory request of the sidecar (a Kubernetes quantity).
pub const ANNOTATION_MEMORY_REQUEST: &str = "weft.dev/proxy-memory-request";
/// Memory limit of the sidecar (a Kubernetes quantity).
pub const ANNOTATION_MEMORY_LIMIT: &str = "weft.dev/proxy-memory-limit";
/// Log level of the sidecar: `off`, `error`, `warn`, `info`, `debug` or `trace`.
pub const ANNOTATION_LOG_LEVEL: &str = "weft.dev/log-level";

/// The version written in [`ANNOTATION_INJECTED`].
pub const INJECTOR_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default sidecar image (a kustomize `images:` entry or `--image` retargets it).
pub const DEFAULT_IMAGE: &str = "weft-proxy:0.1.0";
/// Default control-plane address the sidecars connect to.
pub const DEFAULT_CONTROL_PLANE: &str = "weft-control-plane.weft-system.svc:7070";
/// Default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

/// The sidecar's inbound mTLS port (named [`INBOUND_PORT_NAME`]).
pub const INBOUND_PORT: u16 = 15006;
/// Name of the inbound port in the pod spec.
pub const INBOUND_PORT_NAME: &str = "weft-inbound";
/// The sidecar's admin port (config dump, log level), on the pod's loopback.
pub const ADMIN_PORT: u16 = 15000;
/// The sidecar's read-only port on the pod's address: `/metrics` for Prometheus, `/live` and
/// `/ready` for the kubelet's probes (named [`METRICS_PORT_NAME`]).
pub const METRICS_PORT: u16 = 15020;
/// The container port name of [`METRICS_PORT`].
pub const METRICS_PORT_NAME: &str = "weft-metrics";
/// The sidecar's outbound HTTP listener on localhost.
pub const OUTBOUND_PORT: u16 = 15001;
/// Env var telling app containers where the mesh is.
pub const PROXY_ENV: &str = "WEFT_PROXY";
/// Env var holding the sidecar's config.
pub const CONFIG_ENV: &str = "WEFT_CONFIG";
/// Where the sidecar writes its config (in the data volume).
pub const CONFIG_PATH: &str = "/var/run/weft/config.yaml";
/// Mount path of the data volume (key, certificate, persisted policy).
pub const DATA_DIR: &str = "/var/run/weft";
/// Mount path of the identity volume (ServiceAccount token and trust bundle).
pub const IDENTITY_DIR: &str = "/var/run/secrets/weft";
/// Name of the identity volume.
pub const IDENTITY_VOLUME: &str = "weft-identity";
/// Name of the data volume.
pub const DATA_VOLUME: &str = "weft-proxy-data";
/// The ConfigMap, in the workload's namespace, holding the mesh trust bundle (key `ca.crt`).
pub const TRUST_BUNDLE_CONFIGMAP: &str = "weft-trust-bundle";
/// Audience of the projected ServiceAccount token.
pub const TOKEN_AUDIENCE: &str = "weft";
/// Lifetime asked for the projected token; the kubelet refreshes it at 80 % of that.
pub const TOKEN_EXPIRATION_SECONDS: u32 = 3600;
/// User and group the sidecar runs as. Its own UID, not the images' common `nonroot` (65532)
/// that apps run as too: capture exempts this UID's connections, so an app sharing it would
/// leave the pod around the sidecar (Linkerd's proxy is 2102 for the same reason, Istio's 1337).
pub const PROXY_UID: u32 = 2102;
/// App port used when the workload declares none and has no `weft.dev/app-port`.
pub const FALLBACK_APP_PORT: u16 = 8080;

/// What injection needs besides the object: where the control plane is, the trust domain,
/// the image and the default sidecar resources and log level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `host:port` of the control plane's sidecar port.
    pub control_plane: String,
    /// The mesh trust domain.
    pub trust_domain: String,
    /// The sidecar image.
    pub image: String,
    /// CPU request unless annotated.
    pub cpu_request: String,
    /// Memory request unless annotated.
    pub memory_request: String,
    /// Memory limit unless annotated.
    pub memory_limit: String,
    /// Log level unless annotated.
    pub log_level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            control_plane: DEFAULT_CONTROL_PLANE.to_owned(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            image: DEFAULT_IMAGE.to_owned(),
            cpu_request: "100m".to_owned(),
            memory_request: "64Mi".to_owned(),
            memory_limit: "256Mi".to_owned(),
            log_level: "info".to_owned(),
        }
    }
}

impl Settings {
    /// Check the settings themselves (an operator's flags), before any object.
    pub fn validate(&self) -> Result<(), InjectError> {
        let bad = |what: &str, reason: String| InjectError::Settings(format!("{what}: {reason}"));
        weft_certs::Identity::new(
            &self.trust_domain,
            crate::names::CONTROL_PLANE_NAMESPACE,
            crate::names::CONTROL_PLANE_SERVICE_ACCOUNT,
        )
        .map_err(|e| bad("trust domain", e.to_string()))?;
        let (host, port) = self
            .control_plane
            .rsplit_once(':')
            .ok_or_else(|| bad("control-plane address", "want host:port".into()))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad(
                "control-plane address",
                format!("{:?}: want host:port", self.control_plane),
            ));
        }
        if self.image.is_empty() || self.image.contains(char::is_whitespace) {
            return Err(bad(
                "image",
                format!("{:?} is not an image name", self.image),
            ));
        }
        for (what, q) in [
            ("cpu request", &self.cpu_request),
            ("memory request", &self.memory_request),
            ("memory limit", &self.memory_limit),
        ] {
            quantity(q).map_err(|r| bad(what, r))?;
        }
        log_level(&self.log_level).map_err(|r| bad("log level", r))?;
        Ok(())
    }
}

/// Why an object cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The input is not YAML or JSON objects.
    #[error("document {document}: {reason}")]
    Syntax {
        /// 1-based position of the document in the input.
        document: usize,
        /// Why.
        reason: String,
    },
    /// A `weft.dev/*` annotation has a bad value.
    #[error("{object}: annotation {annotation}: {reason}")]
    Annotation {
        /// The object, as `Kind namespace/name`.
        object: String,
        /// The annotation.
        annotation: String,
        /// Why its value is refused.
        reason: String,
    },
    /// The object cannot carry the sidecar (host network, malformed pod spec, reserved names).
    #[error("{object}: {reason}")]
    Object {
        /// The object, as `Kind namespace/name`.
        object: String,
        /// Why.
        reason: String,
    },
    /// The injection settings themselves are wrong.
    #[error("{0}")]
    Settings(String),
}

/// Inject every injectable object of multi-document YAML (or JSON) text and write it back as
/// YAML documents separated by `---`. Empty documents are dropped; all or nothing: the first
/// error is returned and nothing is written.
pub fn inject_yaml(text: &str, settings: &Settings) -> Result<String, InjectError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = Value::deserialize(doc).map_err(|e| InjectError::Syntax {
            document,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(InjectError::Syntax {
                document,
                reason: "not a Kubernetes object (a mapping with apiVersion and kind)".into(),
            });
        }
        let injected = inject_object(&value, settings)?;
        let yaml = serde_yaml::to_string(&injected).map_err(|e| InjectError::Syntax {
            document,
            reason: format!("cannot write it back: {e}"),
        })?;
        out.push(yaml);
    }
    Ok(out.join("---\n"))
}

/// The object with the sidecar injected into its pod spec (see the module docs); a `List`
/// has each item injected; kinds without a pod spec, opted-out objects and objects whose
/// injection is current come back equal to the input.
pub fn inject_object(object: &Value, settings: &Settings) -> Result<Value, InjectError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let mut out = object.clone();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = out.get_mut("items").and_then(Value::as_array_mut) {
            for item in items.iter_mut() {
                *item = inject_object(item, settings)?;
            }
        }
        return Ok(out);
    }
    let Some(template_path) = pod_template_path(kind) else {
        return Ok(out);
    };
    let described = describe(object);
    let workload_annotations = annotations(object.pointer("/metadata/annotations"));
    let workload_name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(template) = pointer_mut_or_create(&mut out, template_path) else {
        return Err(InjectError::Object {
            object: described,
            reason: format!("{kind} without a pod template at {template_path}"),
        });
    };
    let workload = Workload {
        annotations: &workload_annotations,
        name: workload_name.as_deref(),
        described: &described,
    };
    inject_template(template, &workload, settings)?;
    Ok(out)
}

/// What the pod template inherits from the object around it.
struct Workload<'a> {
    /// The object's own annotations (the template's win).
    annotations: &'a Map<String, Value>,
    /// The object's name (for a Pod, the pod's own).
    name: Option<&'a str>,
    /// `Kind namespace/name`, for messages.
    described: &'a str,
}

/// Inject the sidecar into one pod template: read the annotations, then add the config,
/// container, volumes and env, in the order the pod spec wants them.
// Long (about 170 lines): a straight sequence of edits to one pod spec, each commented,
// that reads best in the order Kubernetes sees the result.
fn inject_template(
    template: &mut Value,
    workload: &Workload<'_>,
    settings: &Settings,
) -> Result<(), InjectError> {
    let object = workload.described;
    let workload_annotations = workload.annotations;
    let obj_err = |reason: String| InjectError::Object {
        object: object.to_owned(),
        reason,
    };
    // The template's annotations win over the workload's own.
    let mut merged = workload_annotations.clone();
    merged.extend(annotations(template.pointer("/metadata/annotations")));
    let ann = |key: &str| -> Result<Option<String>, InjectError> {
        match merged.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(other) => Err(InjectError::Annotation {
                object: object.to_owned(),
                annotation: key.to_owned(),
                reason: format!("{other} is not a string (quote it)"),
            }),
        }
    };
    let bad = |key: &str, reason: String| InjectError::Annotation {
        object: object.to_owned(),
        annotation: key.to_owned(),
        reason,
    };
    match ann(ANNOTATION_INJECT)?.as_deref() {
        None | Some("true") | Some("enabled") => {}
        Some("false") | Some("disabled") => return Ok(()),
        Some(v) => {
            return Err(bad(
                ANNOTATION_INJECT,
                format!("{v:?}: want \"true\" or \"false\""),
            ))
        }
    }
    let tuning = Tuning {
        service: match ann(ANNOTATION_SERVICE)? {
            Some(s) => Some(service_name(&s).map_err(|r| bad(ANNOTATION_SERVICE, r))?),
            None => None,
        },
        app_port: match ann(ANNOTATION_APP_PORT)? {
            Some(p) => Some(app_port(&p).map_err(|r| bad(ANNOTATION_APP_PORT, r))?),
            None => None,
        },
        protocol: match ann(ANNOTATION_PROTOCOL)? {
            Some(p) => Some(protocol(&p).map_err(|r| bad(ANNOTATION_PROTOCOL, r))?),
            None => None,
        },
        cpu_request: tuned(
            ann(ANNOTATION_CPU_REQUEST)?,
            &settings.cpu_request,
            quantity,
        )
        .map_err(|r| bad(ANNOTATION_CPU_REQUEST, r))?,
        memory_request: tuned(
            ann(ANNOTATION_MEMORY_REQUEST)?,
            &settings.memory_request,
            quantity,
        )
        .map_err(|r| bad(ANNOTATION_MEMORY_REQUEST, r))?,
        memory_limit: tuned(
            ann(ANNOTATION_MEMORY_LIMIT)?,
            &settings.memory_limit,
            quantity,
        )
        .map_err(|r| bad(ANNOTATION_MEMORY_LIMIT, r))?,
        log_level: tuned(ann(ANNOTATION_LOG_LEVEL)?, &settings.log_level, log_level)
            .map_err(|r| bad(ANNOTATION_LOG_LEVEL, r))?,
    };

    let rewrite_probes = probes::rewrite_wanted(ann(ANNOTATION_REWRITE_PROBES)?.as_deref())
        .map_err(|r| bad(ANNOTATION_REWRITE_PROBES, r))?;
    let capture = match capture::wanted(ann(ANNOTATION_CAPTURE)?.as_deref()) {
        Ok(true) => Some(capture::Capture::from_annotations(&ann, &bad)?),
        Ok(false) => None,
        Err(r) => return Err(bad(ANNOTATION_CAPTURE, r)),
    };

    let labels = annotations(template.pointer("/metadata/labels"));
    let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(obj_err("the pod spec is missing or not an object".into()));
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(obj_err(
            "hostNetwork pods cannot be meshed: the sidecar's ports would be the node's \
             (set weft.dev/inject: \"false\")"
                .into(),
        ));
    }
    probes::restore(spec);
    strip(spec);
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| obj_err("the pod spec has no containers".into()))?;
    let mut first_port = None;
    for c in containers {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name == PROXY_CONTAINER || name == INIT_CONTAINER {
            return Err(obj_err(format!(
                "container name {name} is reserved for the sidecar"
            )));
        }
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(port) = p
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            if [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, METRICS_PORT].contains(&port) {
                return Err(obj_err(format!(
                    "container {name} uses port {port}, which the sidecar needs \
                     ({ADMIN_PORT}, {OUTBOUND_PORT}, {INBOUND_PORT} and {METRICS_PORT} are taken)"
                )));
            }
            first_port.get_or_insert(port);
        }
    }
    let app_port = tuning.app_port.or(first_port).unwrap_or(FALLBACK_APP_PORT);
    let service = match tuning.service.clone() {
        Some(s) => s,
        None => default_service(&labels, workload.name, object, spec)?,
    };
    let config = sidecar_config(settings, &service, app_port, tuning.protocol.as_deref());
    let mut sidecar = sidecar_container(settings, &tuning, &config);
    if rewrite_probes {
        if let Some(env) = probes::rewrite(spec, object)? {
            if let Some(list) = sidecar.get_mut("env").and_then(Value::as_array_mut) {
                list.push(env);
            }
        }
    }

    // App containers learn where the mesh is.
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut() {
            if let Some(c) = c.as_object_mut() {
                let env = c.entry("env").or_insert_with(|| Value::Array(Vec::new()));
                if let Some(env) = env.as_array_mut() {
                    env.insert(
                        0,
                        json!({
                            "name": PROXY_ENV,
                            "value": format!("http://127.0.0.1:{OUTBOUND_PORT}"),
                        }),
                    );
                }
            }
        }
    }
    // Capture before anything runs in the pod, with the UID the sidecar runs as.
    let proxy_uid = capture::sidecar_uid(&sidecar, spec).unwrap_or(u64::from(PROXY_UID));
    if capture.is_some() {
        capture::refuse_shared_uid(spec, proxy_uid).map_err(obj_err)?;
    }
    let capture_init = capture.map(|c| c.init_container(settings, proxy_uid));
    // First among the init containers: the others may use the mesh too.
    let init = spec
        .entry("initContainers")
        .or_insert_with(|| Value::Array(Vec::new()));
    match init.as_array_mut() {
        Some(init) => {
            init.insert(0, sidecar);
            if let Some(c) = capture_init {
                init.insert(0, c);
            }
        }
        None => return Err(obj_err("initContainers is not a list".into())),
    }
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    match volumes.as_array_mut() {
        Some(v) => v.extend(volumes_added()),
        None => return Err(obj_err("volumes is not a list".into())),
    }
    let Some(meta) = pointer_mut_or_create(template, "/metadata/annotations") else {
        return Err(obj_err("metadata.annotations is not a map".into()));
    };
    if let Some(m) = meta.as_object_mut() {
        m.insert(
            ANNOTATION_INJECTED.to_owned(),
            Value::String(INJECTOR_VERSION.to_owned()),
        );
    }
    Ok(())
}

/// The mesh service name when no annotation gives it: the pod's `app.kubernetes.io/name` or
/// `app` label, else the workload's name (a Pod's own name; a pod a controller creates has
/// none yet, only `generateName`), else its service account.
fn default_service(
    labels: &Map<String, Value>,
    name: Option<&str>,
    object: &str,
    spec: &Map<String, Value>,
) -> Result<String, InjectError> {
    let label = ["app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).and_then(Value::as_str));
    let account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|a| *a != "default");
    let candidate = label
        .or(name)
        .or(account)
        .ok_or_else(|| InjectError::Object {
            object: object.to_owned(),
            reason: format!(
                "cannot tell the mesh service name: set the annotation {ANNOTATION_SERVICE} \
             or an app.kubernetes.io/name or app label"
            ),
        })?;
    service_name(candidate).map_err(|reason| InjectError::Object {
        object: object.to_owned(),
        reason: format!("mesh service name {reason}; set the annotation {ANNOTATION_SERVICE}"),
    })
}

#[cfg(test)]
mod tests;
