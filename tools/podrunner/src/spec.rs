//! Pod specs out of the YAML users apply: the pod template of each workload (Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, Job, CronJob), bare Pods, and `List`s of them, as the
//! controllers would stamp them into Pods.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_json::Value;

use crate::Error;

/// One workload found in a manifest: where its pod template came from.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `Deployment`, `Job`, `Pod`, ...
    pub kind: String,
    /// The workload's `metadata.name`.
    pub name: String,
    /// The workload's `metadata.namespace` (`default` when the manifest has none).
    pub namespace: String,
    /// The pod template (for a bare Pod: its metadata and spec).
    pub template: PodTemplateSpec,
}

impl Workload {
    /// The Pod a controller would create from this template, named `pod_name`: the template's
    /// labels and annotations, the workload's namespace, a fresh `metadata.uid`.
    pub fn pod(&self, pod_name: &str) -> Pod {
        let mut meta = self.template.metadata.clone().unwrap_or_default();
        meta.name = Some(pod_name.to_string());
        meta.namespace = Some(self.namespace.clone());
        meta.uid = Some(format!("{pod_name}-{:x}", std::process::id()));
        let mut spec = self.template.spec.clone().unwrap_or_default();
        // Deployments and friends default to Always; the API server would have set it.
        spec.restart_policy
            .get_or_insert_with(|| "Always".to_string());
        Pod {
            metadata: meta,
            spec: Some(spec),
            status: None,
        }
    }
}

/// Every workload with a pod template in a multi-document YAML manifest, in order. Documents
/// of other kinds (Services, ServiceAccounts, CRDs) are skipped.
pub fn workloads(yaml: &str) -> Result<Vec<Workload>, Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| Error::Manifest(format!("not YAML: {e}")))?;
        collect(&value, &mut out)?;
    }
    Ok(out)
}

/// The workload named `name` of kind `kind` in `yaml`.
pub fn workload(yaml: &str, kind: &str, name: &str) -> Result<Workload, Error> {
    workloads(yaml)?
        .into_iter()
        .find(|w| w.kind == kind && w.name == name)
        .ok_or_else(|| Error::Manifest(format!("no {kind} named {name} in the manifest")))
}

/// The Services in a manifest (for the pods' `/etc/hosts`).
pub fn services(yaml: &str) -> Result<Vec<k8s_openapi::api::core::v1::Service>, Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| Error::Manifest(format!("not YAML: {e}")))?;
        if value.get("kind").and_then(Value::as_str) == Some("Service") {
            out.push(
                serde_json::from_value(value)
                    .map_err(|e| Error::Manifest(format!("bad Service: {e}")))?,
            );
        }
    }
    Ok(out)
}

fn collect(value: &Value, out: &mut Vec<Workload>) -> Result<(), Error> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let template = match kind {
        "List" => {
            for item in value
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                collect(item, out)?;
            }
            return Ok(());
        }
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            value.pointer("/spec/template").cloned()
        }
        "CronJob" => value.pointer("/spec/jobTemplate/spec/template").cloned(),
        "Pod" => Some(serde_json::json!({
            "metadata": value.get("metadata").cloned().unwrap_or(Value::Null),
            "spec": value.get("spec").cloned().unwrap_or(Value::Null),
        })),
        _ => return Ok(()),
    };
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let template =
        template.ok_or_else(|| Error::Manifest(format!("{kind} {name} has no pod template")))?;
    let template: PodTemplateSpec = serde_json::from_value(template)
        .map_err(|e| Error::Manifest(format!("{kind} {name}: bad pod template: {e}")))?;
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    out.push(Workload {
        kind: kind.to_string(),
        name,
        namespace,
        template,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_template_kind() {
        let yaml = "kind: Service\nmetadata: {name: s}\n---\n\
            kind: Deployment\nmetadata: {name: d, namespace: shop}\nspec:\n  template:\n    spec:\n      containers: [{name: a, image: x}]\n---\n\
            kind: CronJob\nmetadata: {name: c}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: b, image: y}]\n---\n\
            kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n  spec:\n    containers: [{name: c, image: z}]\n";
        let w = workloads(yaml).expect("parses");
        let kinds: Vec<_> = w
            .iter()
            .map(|w| (w.kind.as_str(), w.name.as_str()))
            .collect();
        assert_eq!(kinds, [("Deployment", "d"), ("CronJob", "c"), ("Pod", "p")]);
        let pod = w[0].pod("d-1");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()),
            Some("Always")
        );
        let job = w[1].pod("c-1");
        assert_eq!(
            job.spec.as_ref().and_then(|s| s.restart_policy.as_deref()),
            Some("Never")
        );
    }

    #[test]
    fn the_example_manifests_and_golden_injections_parse() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let shop =
            std::fs::read_to_string(format!("{root}/deploy/examples/kubernetes/shop-apps.yaml"))
                .expect("shop-apps.yaml");
        assert_eq!(workloads(&shop).expect("shop").len(), 4);
        assert_eq!(services(&shop).expect("services").len(), 3);
        let job = std::fs::read_to_string(format!(
            "{root}/control-plane/tests/kubernetes/inject/job.injected.yaml"
        ))
        .expect("job golden");
        let w = workload(&job, "Job", "nightly-report").expect("job");
        let spec = w.pod("r").spec.expect("spec");
        let init = spec.init_containers.expect("injected sidecar");
        let sidecar = init
            .iter()
            .find(|c| c.name == "weft-proxy")
            .expect("the sidecar");
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(matches!(
            workloads("kind: Job\nspec: 3\n"),
            Err(Error::Manifest(_))
        ));
        assert!(matches!(workloads(": : :\n\t-"), Err(Error::Manifest(_))));
    }
}
