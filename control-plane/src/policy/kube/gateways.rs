//! North-south on Kubernetes: the Gateway API translation ([`gateway_api::north_south`]) of
//! what the stores hold, its status writes, and the gateway files the control plane writes
//! for each programmed Gateway (`--gateway-dir DIR`: `DIR/<namespace>/<name>/gateway.yaml`
//! and `tls/listener-<i>.crt|.key` beside it, each replaced whole, keys mode 0600), which
//! `weft-proxy --gateway DIR/<namespace>/<name>/gateway.yaml` serves; and the same config as a
//! stream resource ([`messages`], published on the [`GatewayBoard`]) for a gateway that names
//! its Gateway in `Hello.gateway` (`weft-proxy --gateway-name <namespace>/<name>`).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::kube::api::{DynamicObject, Patch, PatchParams};
use ::kube::{Api, Client};
use weft_policy::wire;

use super::gateway_api::north_south::{self, GatewayConfig, Inputs, NorthSouth};
use super::gateway_api::types::ReferenceGrantSpec;
use super::gateway_api::{self};
use super::mapping::Objects;
use super::objects::{Kind, ObjectKey};

/// The programmed Gateways' configs by `<namespace>/<name>`, as the stream sends them.
pub type GatewayConfigs = BTreeMap<String, weft_api::v1::GatewayConfig>;

/// Where the Kubernetes source publishes the [`GatewayConfigs`] of each load and the push
/// follows them ([`crate::push::hub::Hub::follow_gateways`]); only a change wakes the push.
#[derive(Debug, Clone)]
pub struct GatewayBoard(Arc<tokio::sync::watch::Sender<Arc<GatewayConfigs>>>);

impl Default for GatewayBoard {
    fn default() -> Self {
        GatewayBoard(Arc::new(tokio::sync::watch::Sender::new(Arc::default())))
    }
}

impl GatewayBoard {
    /// Put `configs` in force if they differ from those in force.
    pub fn publish(&self, configs: GatewayConfigs) {
        self.0.send_if_modified(|cur| {
            if **cur == configs {
                return false;
            }
            *cur = Arc::new(configs);
            true
        });
    }

    /// Wakes on each change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<GatewayConfigs>> {
        self.0.subscribe()
    }
}

/// Each programmed Gateway's config as a stream message; a Gateway whose file cannot be
/// written as YAML is left out (logged), so its gateways keep their last good.
pub fn messages(ns: &NorthSouth) -> GatewayConfigs {
    ns.gateways
        .iter()
        .filter_map(|g| {
            let config = g.config.as_ref().ok()?;
            let yaml = match config.yaml() {
                Ok(y) => y,
                Err(e) => {
                    log::warn!("the gateway config of {} as YAML: {e}", g.key);
                    return None;
                }
            };
            let name = format!("{}/{}", g.key.namespace, g.key.name);
            let files: std::collections::HashMap<String, Vec<u8>> =
                config.pems.iter().cloned().collect();
            let msg = weft_api::v1::GatewayConfig {
                version: version(&yaml, &config.pems),
                gateway: name.clone(),
                config_yaml: yaml,
                files,
            };
            Some((name, msg))
        })
        .collect()
}

/// A content hash of the file and its files (each length-prefixed, so no two differ only in
/// where one ends): hex of the first 12 bytes of SHA-256.
fn version(yaml: &str, files: &[(String, Vec<u8>)]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    };
    part(yaml.as_bytes());
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort();
    for (name, bytes) in sorted {
        part(name.as_bytes());
        part(bytes);
    }
    let digest = ctx.finish();
    digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The north-south translation of `objects` given the mesh's services.
pub fn translate(objects: &Objects, mesh: &[wire::Service]) -> NorthSouth {
    let grants: Vec<(String, ReferenceGrantSpec)> = objects
        .reference_grants
        .iter()
        .filter_map(|g| {
            let spec = serde_json::from_value(g.data.get("spec")?.clone()).ok()?;
            Some((g.metadata.namespace.clone().unwrap_or_default(), spec))
        })
        .collect();
    north_south::north_south(&Inputs {
        classes: &objects.gateway_classes,
        gateways: &objects.gateways,
        routes: &objects.http_routes,
        grpc_routes: &objects.grpc_routes,
        grants: &grants,
        services: &objects.services,
        secrets: objects.secrets.as_deref(),
        mesh,
        policies: &objects.gateway_policies,
    })
}

/// Whether the control plane may list Secrets (the Gateways' certificates): an opt-in RBAC
/// rule (docs/KUBERNETES.md, north-south).
pub async fn secrets_readable(client: &Client) -> bool {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::all(client.clone());
    match api
        .list_metadata(&::kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            log::info!(
                "Secrets are not read ({e}): HTTPS listeners of Weft's Gateways get no \
                 certificate (grant get, list, watch on secrets: docs/KUBERNETES.md)"
            );
            false
        }
    }
}

/// The directory of one Gateway's files under `dir`.
pub fn gateway_dir(dir: &Path, key: &ObjectKey) -> PathBuf {
    dir.join(&key.namespace).join(&key.name)
}

/// Write each programmed Gateway's files under `dir`; a file whose contents are the same is
/// left alone (the gateway polls modification times). Returns the gateways written.
pub fn write_configs(dir: &Path, ns: &NorthSouth) -> Vec<(ObjectKey, io::Result<bool>)> {
    ns.gateways
        .iter()
        .filter_map(|g| {
            let config = g.config.as_ref().ok()?;
            Some((g.key.clone(), write_one(&gateway_dir(dir, &g.key), config)))
        })
        .collect()
}

/// Whether anything changed. Certificates first, so the gateway file never names a file
/// not there yet.
fn write_one(at: &Path, config: &GatewayConfig) -> io::Result<bool> {
    std::fs::create_dir_all(at.join("tls"))?;
    let mut changed = false;
    for (name, bytes) in &config.pems {
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        changed |= replace_if_changed(&at.join(name), bytes, mode)?;
    }
    let yaml = config.yaml().map_err(io::Error::other)?;
    let text = format!(
        "# Written by weft-control-plane from the Gateway API resources: do not edit.\n{yaml}"
    );
    changed |= replace_if_changed(&at.join("gateway.yaml"), text.as_bytes(), 0o644)?;
    Ok(changed)
}

fn replace_if_changed(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    if std::fs::read(path).is_ok_and(|b| b == bytes) {
        return Ok(false);
    }
    weft_certs::files::write_atomically(path, bytes, mode)?;
    Ok(true)
}

/// Patch a Gateway's or GatewayClass's `status` (merge: other writers' fields stay).
pub async fn write_status(
    client: &Client,
    key: &ObjectKey,
    status: &serde_json::Value,
) -> Result<(), ::kube::Error> {
    let patch = serde_json::json!({ "status": status });
    let params = PatchParams::default();
    let api: Api<DynamicObject> = match key.kind {
        Kind::GatewayClass => Api::all_with(client.clone(), &gateway_api::gateway_classes()),
        _ => Api::namespaced_with(client.clone(), &key.namespace, &gateway_api::gateways()),
    };
    api.patch_status(&key.name, &params, &Patch::Merge(&patch))
        .await?;
    Ok(())
}
