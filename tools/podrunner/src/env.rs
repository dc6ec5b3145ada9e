//! A container's environment as the kubelet builds it: `envFrom` first, then `env` in order,
//! each `value` expanded against the variables defined before it; `valueFrom` from the pod's
//! own fields (the downward API) or from ConfigMap/Secret keys. `command` and `args` are then
//! expanded against the whole environment.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::api::ClusterApi;
use crate::Error;

/// Expands `$(VAR)` references in `input` exactly as the kubelet does (its fork of Go's
/// `os.Expand`, `third_party/forked/golang/expansion`): `$(NAME)` becomes the value when
/// `lookup` knows NAME and stays as written when it does not; `$$` becomes `$`; a `$` before
/// anything else, and an unclosed `$(`, are kept as they are.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // `$` and the next character, kept; the character may be multi-byte.
                    let ch = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..ch]);
                    ch
                }
            };
            cursor += advance + 1;
            checkpoint = cursor;
        } else {
            cursor += 1;
        }
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

/// The pod facts the downward API exposes.
#[derive(Debug, Clone)]
pub struct PodFields {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `status.hostIP`: the node's address on the pods' bridge.
    pub host_ip: Ipv4Addr,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

impl PodFields {
    /// The facts of `pod`, placed on `node_name` with `ip`.
    pub fn of(pod: &Pod, ip: Ipv4Addr, node_name: &str, host_ip: Ipv4Addr) -> Self {
        let spec = pod.spec.as_ref();
        PodFields {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ip,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            node_name: node_name.to_string(),
            host_ip,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        }
    }

    /// The value of a `fieldRef.fieldPath`.
    pub fn field(&self, path: &str) -> Result<String, Error> {
        let quoted = |prefix: &str| {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix("['"))
                .and_then(|r| r.strip_suffix("']"))
        };
        Ok(match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "status.podIP" | "status.podIPs" => self.ip.to_string(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_string(),
            "spec.serviceAccountName" => self.service_account.clone(),
            "spec.nodeName" => self.node_name.clone(),
            _ => {
                if let Some(k) = quoted("metadata.labels") {
                    self.labels.get(k).cloned().unwrap_or_default()
                } else if let Some(k) = quoted("metadata.annotations") {
                    self.annotations.get(k).cloned().unwrap_or_default()
                } else {
                    return Err(Error::Unsupported(format!("fieldRef {path}")));
                }
            }
        })
    }
}

/// The environment of `container`, in definition order (a later definition of a name wins).
pub async fn resolve(
    container: &Container,
    fields: &PodFields,
    api: &dyn ClusterApi,
) -> Result<Vec<(String, String)>, Error> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            config_map_data(api, &fields.namespace, &r.name, r.optional.unwrap_or(false)).await?
        } else if let Some(r) = &from.secret_ref {
            secret_data(api, &fields.namespace, &r.name, r.optional.unwrap_or(false)).await?
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            set(
                &mut env,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            let defined = env.clone();
            expand(v, &|name| {
                defined
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            })
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                fields.field(&f.field_path)?
            } else if let Some(r) = &from.config_map_key_ref {
                let data =
                    config_map_data(api, &fields.namespace, &r.name, r.optional.unwrap_or(false))
                        .await?;
                key_of(&data, &r.key, &r.name, r.optional.unwrap_or(false))?
            } else if let Some(r) = &from.secret_key_ref {
                let data =
                    secret_data(api, &fields.namespace, &r.name, r.optional.unwrap_or(false))
                        .await?;
                key_of(&data, &r.key, &r.name, r.optional.unwrap_or(false))?
            } else {
                return Err(Error::Unsupported(format!(
                    "env {}: resourceFieldRef",
                    var.name
                )));
            }
        } else {
            String::new()
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// `command` + `args` expanded against the container's whole environment.
pub fn expand_all(items: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    items.iter().map(|s| expand(s, &lookup)).collect()
}

fn key_of(
    data: &BTreeMap<String, Vec<u8>>,
    key: &str,
    name: &str,
    optional: bool,
) -> Result<String, Error> {
    match data.get(key) {
        Some(v) => Ok(String::from_utf8_lossy(v).into_owned()),
        None if optional => Ok(String::new()),
        None => Err(Error::Spec(format!("key {key} not found in {name}"))),
    }
}

/// A ConfigMap's `data` and `binaryData` merged; empty when optional and missing.
pub(crate) async fn config_map_data(
    api: &dyn ClusterApi,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    match api.config_map(namespace, name).await? {
        Some(cm) => {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            out.extend(
                cm.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(Error::Spec(format!(
            "configmap {namespace}/{name} not found"
        ))),
    }
}

/// A Secret's `data` and `stringData` merged; empty when optional and missing.
pub(crate) async fn secret_data(
    api: &dyn ClusterApi,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    match api.secret(namespace, name).await? {
        Some(s) => {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            out.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(Error::Spec(format!("secret {namespace}/{name} not found"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let cases = [
            ("$(A)", "a"),
            ("x$(A)y$(A)", "xaya"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$a"),
            ("$$", "$"),
            ("$A", "$A"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("$(EMPTY)x", "x"),
            ("é$é$(A)", "é$éa"),
            ("(A)", "(A)"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &vars), want, "input {input:?}");
        }
    }
}
