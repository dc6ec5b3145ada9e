//! Status writes: one merge patch of `status` per object, by kind (a policy resource's
//! `conditions`, a route's `parents`, a Gateway's or GatewayClass's conditions and
//! listeners: the control plane owns the first and its own entries of the others).

use ::kube::api::{DynamicObject, Patch, PatchParams};
use ::kube::{Api, Client};

use super::crds::{AuthorizationPolicy, GatewayPolicy, MeshRoute, TrafficPolicy};
use super::gateway_api;
use super::objects::{Kind, ObjectKey};

/// Patch `key`'s `status` with `status`.
pub(super) async fn write_status(
    client: &Client,
    key: &ObjectKey,
    status: &serde_json::Value,
) -> Result<(), ::kube::Error> {
    let patch = serde_json::json!({ "status": status });
    let params = PatchParams::default();
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    match key.kind {
        Kind::MeshRoute => {
            Api::<MeshRoute>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &Patch::Merge(&patch))
                .await?;
        }
        Kind::TrafficPolicy => {
            Api::<TrafficPolicy>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &Patch::Merge(&patch))
                .await?;
        }
        Kind::AuthorizationPolicy => {
            Api::<AuthorizationPolicy>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &Patch::Merge(&patch))
                .await?;
        }
        Kind::HttpRoute | Kind::GrpcRoute => {
            let resource = match key.kind {
                Kind::GrpcRoute => gateway_api::grpc_routes(),
                _ => gateway_api::http_routes(),
            };
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
                .patch_status(name, &params, &Patch::Merge(&patch))
                .await?;
        }
        Kind::GatewayPolicy => {
            Api::<GatewayPolicy>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &Patch::Merge(&patch))
                .await?;
        }
        Kind::Gateway | Kind::GatewayClass => {
            super::gateways::write_status(client, key, status).await?;
        }
        Kind::Service => {}
    }
    Ok(())
}
