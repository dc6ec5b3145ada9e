//! The mesh's identities and the sidecars' configs: the trust domain, the client's and the
//! app's SPIFFE IDs, the workload certificates written for a run, and the pair's two sidecar
//! configs, built from the policy crate's own file types ([`weft_policy::wire::ConfigFile`])
//! and written with serde, so a config the bench writes is one the sidecar's parser has the
//! types for (the other scenarios build theirs on [`client_sidecar_base`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use weft_policy::wire::{ConfigFile, Endpoint, Listen, OwnService, Service, Tls};

/// App instances of the failing-endpoint scenario, each with its own certificate
/// ([`write_certs`]).
pub const APP_INSTANCES: usize = 3;

/// The mesh's trust domain.
pub const TRUST_DOMAIN: &str = "weft.local";

/// SPIFFE identity of the calling side (sidecar A).
pub const CLIENT_ID: &str = "spiffe://weft.local/ns/default/sa/client";

/// SPIFFE identity of the app's side (sidecar B).
pub const APP_ID: &str = "spiffe://weft.local/ns/default/sa/app";

/// Ports of one sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarPorts {
    /// Plain-HTTP outbound listener (the local app's calls).
    pub outbound: u16,
    /// mTLS inbound listener (other sidecars' calls).
    pub inbound: u16,
    /// Admin listener (`/ready`).
    pub admin: u16,
}

/// `127.0.0.1:<port>` as the configs write addresses.
fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A sidecar's own part: service `name` of `identity` whose app is at `127.0.0.1:app_port`
/// speaking `protocol`, its three listeners, the workload certificate `<cert>.crt` /
/// `<cert>.key` with the mesh CA, one worker; no services or routes yet.
pub fn sidecar(
    name: &str,
    identity: &str,
    app_port: u16,
    protocol: &str,
    ports: SidecarPorts,
    cert: &str,
) -> ConfigFile {
    ConfigFile {
        service: OwnService {
            name: name.to_owned(),
            identity: identity.to_owned(),
            app: local(app_port),
            protocol: Some(protocol.to_owned()),
            rate_limit: None,
            labels: BTreeMap::new(),
            egress: None,
            detect_timeout: None,
            opaque_ports: None,
        },
        listen: Listen {
            outbound: Some(local(ports.outbound)),
            inbound: Some(local(ports.inbound)),
            admin: Some(local(ports.admin)),
            metrics: None,
        },
        tls: Tls {
            cert: format!("{cert}.crt"),
            key: format!("{cert}.key"),
            trust_bundle: "ca.crt".to_owned(),
        },
        workers: Some(1),
        drain_timeout: None,
        connect_timeout: None,
        access_log: None,
        idle_timeout: None,
        max_connections_per_listener: None,
        tracing: None,
        control_plane: None,
        services: Vec::new(),
        routes: Vec::new(),
        authorization: None,
    }
}

/// Config of sidecar B, beside the app (service `app`).
pub fn app_sidecar(app_port: u16, ports: SidecarPorts) -> ConfigFile {
    app_sidecar_with_cert(app_port, ports, "app")
}

/// Config of a sidecar beside an instance of the app (service `app`), with
/// the workload certificate `<cert>.crt` / `<cert>.key`.
pub fn app_sidecar_with_cert(app_port: u16, ports: SidecarPorts, cert: &str) -> ConfigFile {
    sidecar("app", APP_ID, app_port, "http", ports, cert)
}

/// The service `app` a client-side sidecar may call, at the sidecars listening on
/// `endpoint_ports`.
pub fn app_service(endpoint_ports: &[u16]) -> Service {
    Service {
        name: "app".to_owned(),
        hosts: Vec::new(),
        identity: APP_ID.to_owned(),
        protocol: None,
        port: None,
        load_balancer: None,
        endpoints: endpoint_ports
            .iter()
            .map(|&p| Endpoint {
                address: local(p),
                labels: BTreeMap::new(),
            })
            .collect(),
        retry_budget: None,
        outlier_detection: None,
        limits: None,
        escaped_slashes: None,
        opaque_ports: None,
    }
}

/// Config of sidecar A, beside the client (service `client`, may call `app`
/// at `app_inbound`, sidecar B's inbound port). `unused_app_port` is where
/// its own (absent) app would be.
pub fn client_sidecar(unused_app_port: u16, ports: SidecarPorts, app_inbound: u16) -> ConfigFile {
    let mut cfg = client_sidecar_base(unused_app_port, ports);
    cfg.services.push(app_service(&[app_inbound]));
    cfg
}

/// A client-side sidecar's own part (service `client`), before its services and routes.
pub fn client_sidecar_base(unused_app_port: u16, ports: SidecarPorts) -> ConfigFile {
    sidecar(
        "client",
        CLIENT_ID,
        unused_app_port,
        "http",
        ports,
        "client",
    )
}

/// The config as the YAML file `weft-proxy --config` reads.
pub fn to_yaml(cfg: &ConfigFile) -> anyhow::Result<String> {
    serde_yaml::to_string(cfg).context("serializing a sidecar config")
}

/// Writes `cfg` as YAML to `path`.
pub fn write_config(path: &Path, cfg: &ConfigFile) -> anyhow::Result<()> {
    std::fs::write(path, to_yaml(cfg)?).with_context(|| format!("writing {}", path.display()))
}

/// File stem of the workload certificate of app instance `i` (from 1) in
/// the failing-endpoint scenario: `app-<i>` (identity [`APP_ID`]).
pub fn instance_cert(i: usize) -> String {
    format!("app-{i}")
}

/// Writes `ca.crt`, `client.crt/.key`, `app.crt/.key` and, for the
/// failing-endpoint scenario's three app instances, `app-1.crt/.key` ..
/// `app-3.crt/.key` (each its own key and certificate, all of identity
/// [`APP_ID`]) into `dir`: a fresh CA, one day of validity.
pub fn write_certs(dir: &Path) -> anyhow::Result<()> {
    let day = Duration::from_secs(86_400);
    let ca = weft_certs::CertificateAuthority::generate(TRUST_DOMAIN, day)?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    let files = [("client", "client".to_owned()), ("app", "app".to_owned())]
        .into_iter()
        .chain((1..=APP_INSTANCES).map(|i| ("app", instance_cert(i))));
    for (sa, stem) in files {
        let id = weft_certs::Identity::new(TRUST_DOMAIN, "default", sa)?;
        let cert = ca.issue(&id, day)?;
        std::fs::write(dir.join(format!("{stem}.crt")), &cert.cert_pem)?;
        std::fs::write(dir.join(format!("{stem}.key")), &cert.key_pem)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn configs_mention_every_port() {
        let ports = SidecarPorts {
            outbound: 1001,
            inbound: 1002,
            admin: 1003,
        };
        let b = to_yaml(&app_sidecar(1000, ports)).unwrap();
        for s in [
            "127.0.0.1:1000",
            "127.0.0.1:1001",
            "127.0.0.1:1002",
            "127.0.0.1:1003",
            APP_ID,
            "workers: 1",
        ] {
            assert!(b.contains(s), "{s} missing in\n{b}");
        }
        let a = client_sidecar(2000, ports, 3002);
        let y = to_yaml(&a).unwrap();
        for s in ["127.0.0.1:2000", "127.0.0.1:3002", CLIENT_ID, APP_ID] {
            assert!(y.contains(s), "{s} missing in\n{y}");
        }
        assert_eq!(a.services.len(), 1);
        assert_eq!(a.services[0].name, "app");
        assert_eq!(a.services[0].identity, APP_ID);
        assert_eq!(a.services[0].endpoints[0].address, "127.0.0.1:3002");
        // What the file says is what the sidecar's parser reads back.
        let back: ConfigFile = serde_yaml::from_str(&y).unwrap();
        assert_eq!(back, a);
    }
    #[test]
    fn certs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path()).unwrap();
        for f in [
            "ca.crt",
            "client.crt",
            "client.key",
            "app.crt",
            "app.key",
            "app-1.crt",
            "app-1.key",
            "app-2.crt",
            "app-2.key",
            "app-3.crt",
            "app-3.key",
        ] {
            let s = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(s.contains("-----BEGIN"), "{f}");
        }
        // Each instance has its own key.
        let key = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_ne!(key("app-1.key"), key("app-2.key"));
        assert_ne!(key("app.key"), key("app-3.key"));
    }
}
