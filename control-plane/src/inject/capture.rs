//! Transparent capture as injected: the init container [`INIT_CONTAINER`] that runs
//! `weft-proxy init` (the sidecar's own image) before the native sidecar starts, so the pod's
//! TCP goes through the sidecar without the app changing (docs/KUBERNETES.md, "Transparent
//! capture").
//!
//! On by default, as in Linkerd and Istio: an app bound on `0.0.0.0` is otherwise reachable
//! from any pod around mTLS. `weft.dev/capture: "false"` opts a pod out (the sidecar is still
//! injected; apps then reach the mesh through `WEFT_PROXY` only). Skips, by annotation, both
//! ways: [`ANNOTATION_INBOUND_SKIP_PORTS`], [`ANNOTATION_OUTBOUND_SKIP_PORTS`],
//! [`ANNOTATION_INBOUND_SKIP_CIDRS`], [`ANNOTATION_OUTBOUND_SKIP_CIDRS`]. The sidecar's
//! read-only port ([`METRICS_PORT`]: the kubelet's probes, rewritten app probes, Prometheus)
//! is always skipped inbound; the inbound port is the rules' own target; the admin and
//! outbound ports listen on loopback, which capture leaves alone.
//!
//! Least privilege: `NET_ADMIN` and `NET_RAW` only, every other capability dropped, the root
//! filesystem read-only, no privilege escalation, and UID 0. Why root: `nft` needs
//! `CAP_NET_ADMIN` in its *effective* set. A container runtime gives the capabilities a spec
//! adds to a root process only; a non-root process loses them at `execve` (Kubernetes sets no
//! ambient capabilities), and file capabilities on `nft` would be privilege escalation, which
//! `allowPrivilegeEscalation: false` (no_new_privs) forbids. linkerd-init and istio-init run as
//! UID 0 with the same two capabilities for the same reason. UID 0 with those two and nothing
//! else cannot override file permissions (`CAP_DAC_OVERRIDE` is dropped) and writes nothing (the
//! root filesystem is read-only); the container exits once the rules are loaded.

use serde_json::{json, Map, Value};

use super::{InjectError, Settings, INBOUND_PORT, METRICS_PORT, OUTBOUND_PORT};

/// Name of the init container that sets capture up.
pub const INIT_CONTAINER: &str = "weft-init";
/// `"false"` leaves the pod's traffic uncaptured (the sidecar is still injected).
pub const ANNOTATION_CAPTURE: &str = "weft.dev/capture";
/// Local ports (or ranges `a-b`), comma-separated, whose inbound connections reach the app
/// directly, around the sidecar.
pub const ANNOTATION_INBOUND_SKIP_PORTS: &str = "weft.dev/inbound-skip-ports";
/// Destination ports (or ranges), comma-separated, whose outbound connections are not captured.
pub const ANNOTATION_OUTBOUND_SKIP_PORTS: &str = "weft.dev/outbound-skip-ports";
/// Source networks (CIDRs), comma-separated, whose inbound connections are not captured.
pub const ANNOTATION_INBOUND_SKIP_CIDRS: &str = "weft.dev/inbound-skip-cidrs";
/// Destination networks (CIDRs), comma-separated, whose outbound connections are not captured.
pub const ANNOTATION_OUTBOUND_SKIP_CIDRS: &str = "weft.dev/outbound-skip-cidrs";
/// At most this many entries per skip annotation (a bound on what an annotation can make the
/// init container's command line and the nftables sets hold).
pub const MAX_SKIP_ENTRIES: usize = 64;

/// The capture wanted by a pod's annotations: `None` when opted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Capture {
    inbound_skip_ports: Vec<String>,
    outbound_skip_ports: Vec<String>,
    inbound_skip_cidrs: Vec<String>,
    outbound_skip_cidrs: Vec<String>,
}

/// Whether capture is wanted: `true` unless [`ANNOTATION_CAPTURE`] is `"false"`.
pub(super) fn wanted(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("true") | Some("enabled") => Ok(true),
        Some("false") | Some("disabled") => Ok(false),
        Some(v) => Err(format!("{v:?}: want \"true\" or \"false\"")),
    }
}

/// Splits a comma-separated annotation value into checked, normalized entries.
fn list(
    value: Option<&str>,
    check: fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.len() > MAX_SKIP_ENTRIES {
        return Err(format!(
            "{} entries: at most {MAX_SKIP_ENTRIES}",
            items.len()
        ));
    }
    items.into_iter().map(check).collect()
}

/// A port (`8080`) or an inclusive range (`9000-9100`), 1-65535.
fn port_range(s: &str) -> Result<String, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("{s:?}: the range runs backwards"));
            }
            Ok(format!("{a}-{b}"))
        }
        None => Ok(port(s)?.to_string()),
    }
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fd00::/8`) or one address.
fn cidr(s: &str) -> Result<String, String> {
    let (a, p) = s.split_once('/').unwrap_or((s, ""));
    let addr: std::net::IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if p.is_empty() {
        return Ok(format!("{addr}/{max}"));
    }
    let prefix = p
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("{s:?}: prefix must be 0-{max}"))?;
    Ok(format!("{addr}/{prefix}"))
}

impl Capture {
    /// Reads the skip annotations through `ann` (the merged annotations' string values);
    /// a bad value names its annotation.
    pub(super) fn from_annotations(
        ann: &dyn Fn(&str) -> Result<Option<String>, InjectError>,
        bad: &dyn Fn(&str, String) -> InjectError,
    ) -> Result<Capture, InjectError> {
        let read = |key: &str, check: fn(&str) -> Result<String, String>| {
            list(ann(key)?.as_deref(), check).map_err(|r| bad(key, r))
        };
        Ok(Capture {
            inbound_skip_ports: read(ANNOTATION_INBOUND_SKIP_PORTS, port_range)?,
            outbound_skip_ports: read(ANNOTATION_OUTBOUND_SKIP_PORTS, port_range)?,
            inbound_skip_cidrs: read(ANNOTATION_INBOUND_SKIP_CIDRS, cidr)?,
            outbound_skip_cidrs: read(ANNOTATION_OUTBOUND_SKIP_CIDRS, cidr)?,
        })
    }

    /// The `weft-proxy init` arguments: the sidecar's UID and ports, the skips.
    fn args(&self, proxy_uid: u64) -> Vec<String> {
        let mut args = vec![
            "init".to_owned(),
            "--proxy-uid".to_owned(),
            proxy_uid.to_string(),
            "--outbound-port".to_owned(),
            OUTBOUND_PORT.to_string(),
            "--inbound-port".to_owned(),
            INBOUND_PORT.to_string(),
        ];
        // The read-only port first: the kubelet's probes and Prometheus must reach it.
        let mut inbound_ports = vec![METRICS_PORT.to_string()];
        inbound_ports.extend(
            self.inbound_skip_ports
                .iter()
                .filter(|p| **p != METRICS_PORT.to_string())
                .cloned(),
        );
        for (flag, values) in [
            ("--inbound-skip-ports", &inbound_ports),
            ("--outbound-skip-ports", &self.outbound_skip_ports),
            ("--inbound-skip-cidrs", &self.inbound_skip_cidrs),
            ("--outbound-skip-cidrs", &self.outbound_skip_cidrs),
        ] {
            if !values.is_empty() {
                args.push(flag.to_owned());
                args.push(values.join(","));
            }
        }
        args
    }

    /// The init container, run before the sidecar; `proxy_uid` is the injected sidecar's
    /// `runAsUser`, whose connections are never redirected.
    pub(super) fn init_container(&self, settings: &Settings, proxy_uid: u64) -> Value {
        json!({
            "name": INIT_CONTAINER,
            "image": settings.image,
            "imagePullPolicy": "IfNotPresent",
            "args": self.args(proxy_uid),
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"memory": "64Mi"},
            },
            // See the module docs for why UID 0 with these two capabilities.
            "securityContext": {
                "runAsUser": 0,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        })
    }
}

/// The `runAsUser` of the sidecar container `sidecar` (its own, else the pod's).
pub(super) fn sidecar_uid(sidecar: &Value, spec: &Map<String, Value>) -> Option<u64> {
    sidecar
        .pointer("/securityContext/runAsUser")
        .or_else(|| spec.get("securityContext")?.get("runAsUser"))
        .and_then(Value::as_u64)
}

/// Refuses a pod whose own containers would run as `proxy_uid`, the UID capture exempts:
/// their connections would leave the pod around the sidecar (plaintext, no policy), so the
/// pod is refused rather than meshed with a hole. A container's `runAsUser` is its own, else
/// the pod's; a container that sets neither runs as its image's user, which the injector
/// cannot see (docs/KUBERNETES.md says so).
pub(super) fn refuse_shared_uid(spec: &Map<String, Value>, proxy_uid: u64) -> Result<(), String> {
    let pod_uid = spec
        .get("securityContext")
        .and_then(|s| s.get("runAsUser"))
        .and_then(Value::as_u64);
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        for c in containers {
            let uid = c
                .pointer("/securityContext/runAsUser")
                .and_then(Value::as_u64)
                .or(pod_uid);
            if uid == Some(proxy_uid) {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                return Err(format!(
                    "container {name:?} runs as UID {proxy_uid}, the sidecar's: capture never \
                     redirects that UID, so its traffic would bypass the mesh (give it another \
                     runAsUser, or set {ANNOTATION_CAPTURE}: \"false\")"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lists_are_checked_normalized_and_bounded() {
        assert_eq!(
            list(Some(" 443, 9000-9100 ,"), port_range),
            Ok(vec!["443".into(), "9000-9100".into()])
        );
        assert!(list(Some("0"), port_range).is_err());
        assert!(list(Some("9100-9000"), port_range)
            .expect_err("backwards")
            .contains("backwards"));
        assert!(list(Some("http"), port_range).is_err());
        assert_eq!(
            list(Some("10.0.0.0/8,192.0.2.7,fd00::/8"), cidr),
            Ok(vec![
                "10.0.0.0/8".into(),
                "192.0.2.7/32".into(),
                "fd00::/8".into()
            ])
        );
        assert!(list(Some("10.0.0.0/33"), cidr).is_err());
        assert!(list(Some("orders/8"), cidr).is_err());
        let many = vec!["1"; MAX_SKIP_ENTRIES + 1].join(",");
        assert!(list(Some(&many), port_range)
            .expect_err("too many")
            .contains("at most"));
        assert_eq!(wanted(None), Ok(true));
        assert_eq!(wanted(Some("false")), Ok(false));
        assert!(wanted(Some("no")).is_err());
    }

    #[test]
    fn the_metrics_port_is_always_skipped_inbound_once() {
        let c = Capture {
            inbound_skip_ports: vec!["15020".into(), "9090".into()],
            outbound_skip_cidrs: vec!["169.254.169.254/32".into()],
            ..Capture::default()
        };
        let args = c.args(2102);
        assert_eq!(
            args,
            [
                "init",
                "--proxy-uid",
                "2102",
                "--outbound-port",
                "15001",
                "--inbound-port",
                "15006",
                "--inbound-skip-ports",
                "15020,9090",
                "--outbound-skip-cidrs",
                "169.254.169.254/32"
            ]
        );
        let bare = Capture::default().args(7);
        assert!(bare.ends_with(&["--inbound-skip-ports".into(), "15020".into()]));
    }

    /// Through the whole injection: skips reach the init container's command, the sidecar's
    /// UID is the pod's when the sidecar is injected, `weft.dev/capture: "false"` on an
    /// injected pod takes the init container out again (the strip path) and keeps the sidecar.
    #[test]
    fn annotations_reach_the_init_container_and_opting_out_strips_it() {
        let pod = |annotations: Value| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "db-0", "namespace": "shop", "annotations": annotations},
                   "spec": {"containers": [{"name": "db", "image": "postgres:16",
                                            "ports": [{"containerPort": 5432}]}]}})
        };
        let settings = Settings::default();
        let injected = super::super::inject_object(
            &pod(json!({
                "weft.dev/inbound-skip-ports": "9187, 5432",
                "weft.dev/outbound-skip-cidrs": "169.254.169.254",
            })),
            &settings,
        )
        .expect("inject");
        let init = &injected["spec"]["initContainers"];
        assert_eq!(init[0]["name"], INIT_CONTAINER);
        let args: Vec<&str> = init[0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--inbound-skip-ports", "15020,9187,5432"]),
            "{args:?}"
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--outbound-skip-cidrs", "169.254.169.254/32"]),
            "{args:?}"
        );
        // Opting out later: injecting the injected pod again removes capture, keeps the sidecar.
        let mut out = injected.clone();
        out["metadata"]["annotations"]["weft.dev/capture"] = json!("false");
        let again = super::super::inject_object(&out, &settings).expect("inject again");
        let names: Vec<&str> = again["spec"]["initContainers"]
            .as_array()
            .expect("init containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["weft-proxy"]);
        // A container may not take the init container's name.
        let mut clash = pod(json!({}));
        clash["spec"]["containers"][0]["name"] = json!(INIT_CONTAINER);
        assert!(super::super::inject_object(&clash, &settings)
            .expect_err("reserved")
            .to_string()
            .contains("reserved"));
    }

    #[test]
    fn a_container_sharing_the_sidecars_uid_is_refused() {
        let spec = |v: Value| v.as_object().cloned().expect("object");
        let own = spec(json!({"containers": [
            {"name": "app", "securityContext": {"runAsUser": 65532}},
            {"name": "helper", "securityContext": {"runAsUser": 2102}},
        ]}));
        let why = refuse_shared_uid(&own, 2102).expect_err("helper shares the UID");
        assert!(why.contains("\"helper\" runs as UID 2102"), "{why}");
        let by_pod = spec(json!({
            "securityContext": {"runAsUser": 2102},
            "initContainers": [{"name": "migrate"}],
            "containers": [{"name": "app", "securityContext": {"runAsUser": 1000}}],
        }));
        let why = refuse_shared_uid(&by_pod, 2102).expect_err("migrate inherits the pod's UID");
        assert!(why.contains("\"migrate\""), "{why}");
        let fine = spec(json!({
            "securityContext": {"runAsUser": 2102},
            "containers": [{"name": "app", "securityContext": {"runAsUser": 1000}}],
        }));
        assert_eq!(refuse_shared_uid(&fine, 2102), Ok(()));
        assert_eq!(
            refuse_shared_uid(&spec(json!({"containers": [{"name": "app"}]})), 2102),
            Ok(())
        );
    }
}
