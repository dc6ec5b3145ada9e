//! The mesh's identities and the sidecars' config files: the trust domain, the client's and
//! the app's SPIFFE IDs, the workload certificates written for a run, and the YAML of the
//! pair's two sidecars (the other scenarios build theirs on [`client_sidecar_head`]).

use std::path::Path;
use std::time::Duration;

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

/// Config of sidecar B, beside the app (service `app`).
pub fn app_sidecar_yaml(app_port: u16, ports: SidecarPorts) -> String {
    app_sidecar_yaml_with_cert(app_port, ports, "app")
}

/// Config of a sidecar beside an instance of the app (service `app`), with
/// the workload certificate `<cert>.crt` / `<cert>.key`.
pub fn app_sidecar_yaml_with_cert(app_port: u16, ports: SidecarPorts, cert: &str) -> String {
    format!(
        "service: {{name: app, identity: \"{APP_ID}\", app: \"127.0.0.1:{app_port}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: {cert}.crt, key: {cert}.key, trust_bundle: ca.crt}}\n\
         workers: 1\n",
        o = ports.outbound,
        i = ports.inbound,
        a = ports.admin,
    )
}

/// Config of sidecar A, beside the client (service `client`, may call `app`
/// at `app_inbound`, sidecar B's inbound port). `unused_app_port` is where
/// its own (absent) app would be.
pub fn client_sidecar_yaml(unused_app_port: u16, ports: SidecarPorts, app_inbound: u16) -> String {
    client_sidecar_head(unused_app_port, ports)
        + &format!(
            "services:\n\
             \x20 - name: app\n\
             \x20   identity: \"{APP_ID}\"\n\
             \x20   endpoints: [{{address: \"127.0.0.1:{app_inbound}\"}}]\n"
        )
}
/// The part of a client-side sidecar's config before `services:`.
pub fn client_sidecar_head(unused_app_port: u16, ports: SidecarPorts) -> String {
    format!(
        "service: {{name: client, identity: \"{CLIENT_ID}\", app: \"127.0.0.1:{unused_app_port}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: client.crt, key: client.key, trust_bundle: ca.crt}}\n\
         workers: 1\n",
        o = ports.outbound,
        i = ports.inbound,
        a = ports.admin,
    )
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
        let b = app_sidecar_yaml(1000, ports);
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
        let a = client_sidecar_yaml(2000, ports, 3002);
        for s in [
            "127.0.0.1:2000",
            "address: \"127.0.0.1:3002\"",
            CLIENT_ID,
            APP_ID,
            "  - name: app\n    identity:",
        ] {
            assert!(a.contains(s), "{s} missing in\n{a}");
        }
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
