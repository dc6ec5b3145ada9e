//! Gateways' configs as a stream resource of their own: a `weft-proxy` in gateway mode names
//! the Gateway it serves in `Hello.gateway` (`<namespace>/<name>`, in its certificate's
//! namespace), and gets that Gateway's [`GatewayConfig`](weft_api::v1::GatewayConfig) as the
//! Kubernetes source translates it ([`crate::policy::kube::gateways`]), again whenever its
//! version changes, ACKed or NACKed as `gateway/<namespace>/<name>`.
//!
//! A gateway is sent its config only once it was sent a snapshot: it checks the routes against
//! the mesh services the snapshot gives, and the slot hands the snapshot (key `""`) out first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use weft_api::v1::{control_message, ControlMessage};

use super::resources::ResourceState;
use super::{Hub, HubState};
use crate::policy::kube::gateways::GatewayConfigs;
use crate::push::slot::{encode_framed, Outgoing};

/// The prefix of a gateway config's name in `Ack.resource` / `Nack.resource`.
pub const GATEWAY_PREFIX: &str = "gateway/";

/// The Gateway a stream serves, and what it was sent of its config and answered.
#[derive(Debug)]
pub(crate) struct GatewayWatch {
    /// `<namespace>/<name>`.
    pub(crate) name: String,
    pub(crate) state: ResourceState,
}

impl GatewayWatch {
    /// A stream serving `name`, sent nothing yet.
    pub(crate) fn new(name: String) -> Self {
        GatewayWatch {
            name,
            state: ResourceState::default(),
        }
    }
}

/// Why a `Hello.gateway` is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum GatewayNameError {
    /// Not `<namespace>/<name>`.
    #[error("Hello.gateway {0:?} is not <namespace>/<name>")]
    Form(String),
    /// Another namespace's Gateway: a namespace governs only its own.
    #[error("{peer} may not serve Gateway {name}: it is not in namespace {namespace}")]
    Namespace {
        /// The Gateway.
        name: String,
        /// Its namespace.
        namespace: String,
        /// Who asked.
        peer: String,
    },
}

/// `hello` checked for `peer`: none when empty, else `<namespace>/<name>` in the peer's
/// namespace.
pub(crate) fn gateway_name(
    hello: &str,
    peer: &weft_certs::Identity,
) -> Result<Option<String>, GatewayNameError> {
    if hello.is_empty() {
        return Ok(None);
    }
    let form = || GatewayNameError::Form(hello.chars().take(300).collect());
    let (ns, name) = hello.split_once('/').ok_or_else(form)?;
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !label(ns) || !label(name) {
        return Err(form());
    }
    if ns != peer.namespace() {
        return Err(GatewayNameError::Namespace {
            name: hello.to_owned(),
            namespace: ns.to_owned(),
            peer: peer.to_string(),
        });
    }
    Ok(Some(hello.to_owned()))
}

impl Hub {
    /// Follow the Gateways' configs as the Kubernetes source publishes them, sending each
    /// changed one to the gateways that serve it. Runs until the board is dropped.
    pub async fn follow_gateways(
        self: Arc<Self>,
        mut configs: watch::Receiver<Arc<GatewayConfigs>>,
    ) {
        loop {
            let now = configs.borrow_and_update().clone();
            {
                let mut st = self.lock();
                st.gateways = now;
                push_gateways(&mut st);
            }
            if configs.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Send each connected gateway stream that has had its snapshot its Gateway's config, if its
/// version differs from the one last sent (each config encoded once). A Gateway with no config
/// (not programmed, or deleted) sends nothing: its gateways keep their last good.
pub(super) fn push_gateways(st: &mut HubState) {
    let configs = st.gateways.clone();
    let mut encoded: HashMap<&str, Option<Outgoing>> = HashMap::new();
    for s in st.sidecars.values_mut() {
        let (Some(tx), Some(gw), Some(_)) = (&s.tx, &mut s.gateway, &s.sent) else {
            continue;
        };
        let Some(cfg) = configs.get(&gw.name) else {
            continue;
        };
        if gw.state.sent.as_deref() == Some(cfg.version.as_str()) {
            continue;
        }
        let msg = encoded.entry(gw.name.as_str()).or_insert_with(|| {
            let msg = ControlMessage {
                kind: Some(control_message::Kind::Gateway(cfg.clone())),
            };
            encode_framed(&msg).map(Outgoing::Encoded)
        });
        let Some(msg) = msg else { continue };
        if tx.put(&format!("{GATEWAY_PREFIX}{}", gw.name), msg.clone()) {
            log::info!(
                "sending Gateway {} config {} to {} at {}",
                gw.name,
                cfg.version,
                s.identity,
                s.endpoint
            );
            gw.state.sent = Some(cfg.version.clone());
            gw.state.sent_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mesh::MeshPolicy;
    use crate::push::hub::{Registration, DEFAULT_GRACE};
    use crate::push::slot::slot;

    fn config(version: &str) -> weft_api::v1::GatewayConfig {
        weft_api::v1::GatewayConfig {
            gateway: "shop/edge".into(),
            version: version.into(),
            config_yaml: "listen: {https: 0.0.0.0:8443}\n".into(),
            files: Default::default(),
        }
    }

    fn kinds(out: Vec<Outgoing>) -> Vec<String> {
        out.iter()
            .map(|o| match o.message().and_then(|m| m.kind) {
                Some(control_message::Kind::Snapshot(_)) => "snapshot".to_owned(),
                Some(control_message::Kind::Gateway(g)) => format!("gateway {}", g.version),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_gateway_gets_its_config_after_its_snapshot_and_again_only_when_it_changes() {
        let text = "services:\n  - name: edge\n    identity: spiffe://weft.local/ns/shop/sa/edge\n";
        let policy = MeshPolicy::from_texts(&[("p.yaml".into(), text.into())]).expect("valid");
        let hub = Hub::new(policy, "PEM".into(), "weft.local".into(), DEFAULT_GRACE);
        let (tx, mut rx) = slot();
        let peer = weft_certs::Identity::new("weft.local", "shop", "edge").expect("id");
        let registration = Registration {
            peer,
            service: "edge".into(),
            endpoint: ([127, 0, 0, 1], 15006).into(),
            labels: Default::default(),
            cert_not_after: None,
            admin: None,
            delta: true,
            subscribe: Vec::new(),
            gateway: Some("shop/edge".into()),
        };
        let id = hub.register(registration, tx).expect("registered");
        let configs = |v: &str| Arc::new([("shop/edge".to_owned(), config(v))].into());
        {
            let mut st = hub.lock();
            st.gateways = configs("g1");
            push_gateways(&mut st);
        }
        assert!(rx.take_now().is_empty(), "not before its snapshot");
        super::super::push_changed(&mut hub.lock(), "PEM");
        assert_eq!(kinds(rx.take_now()), ["snapshot", "gateway g1"]);
        assert!(hub.ack(id, "g1".into(), "gateway/shop/edge"));
        let acked = |hub: &Hub| {
            let st = hub.lock();
            let gw = st.sidecars[&id]
                .gateway
                .as_ref()
                .map(|g| g.state.acked.clone());
            gw.flatten()
        };
        assert_eq!(acked(&hub).as_deref(), Some("g1"));
        push_gateways(&mut hub.lock());
        assert!(
            rx.take_now().is_empty(),
            "the same version is not sent again"
        );
        {
            let mut st = hub.lock();
            st.gateways = configs("g2");
            push_gateways(&mut st);
        }
        assert_eq!(kinds(rx.take_now()), ["gateway g2"]);
        assert!(hub.nack(id, "g2".into(), "bad".into(), "gateway/shop/edge"));
        assert_eq!(
            acked(&hub).as_deref(),
            Some("g1"),
            "the NACK leaves the ACKed one"
        );
    }

    #[test]
    fn a_gateway_is_named_in_its_own_namespace_only() {
        let peer = weft_certs::Identity::new("weft.local", "shop", "edge").expect("id");
        assert_eq!(gateway_name("", &peer), Ok(None));
        assert_eq!(
            gateway_name("shop/edge", &peer),
            Ok(Some("shop/edge".to_owned()))
        );
        assert!(matches!(
            gateway_name("bank/edge", &peer),
            Err(GatewayNameError::Namespace { .. })
        ));
        for bad in [
            "shop",
            "shop/",
            "/edge",
            "shop/Edge",
            "shop/e/x",
            "shop/e dge",
        ] {
            assert!(
                matches!(gateway_name(bad, &peer), Err(GatewayNameError::Form(_))),
                "{bad}"
            );
        }
    }
}
