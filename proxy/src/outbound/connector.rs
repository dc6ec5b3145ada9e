//! The outbound HTTP proxy, with this sidecar's client identity in its connector, rebuilt when
//! that identity changes.
//!
//! Why the identity lives in the connector and not on each upstream peer: Pingora hashes a
//! peer's client certificate into the connection-pool key on every request, twice (to find a
//! pooled connection and to return it), and that hash formats each certificate serial as hex
//! with one allocation per byte: 320 ns a hash, against 16 ns without the certificate (the
//! `pool key` group of `tools/bench/benches/proxy_hot_path.rs`). A per-peer certificate or CA also
//! makes Pingora build a fresh rustls config for every new connection. A connector built once
//! per identity does neither.
//!
//! A renewed certificate or a changed trust bundle replaces the whole proxy: a new connector
//! and new, empty pools, so new requests open connections that present the new certificate
//! (as the changed pool key did before), while requests in flight finish on the old proxy,
//! whose connections close when it is dropped. The rebuild runs on its own thread
//! ([`IdentitySync`]), woken by every snapshot swap; the traffic path only loads the proxy in
//! force from an `ArcSwap`. That holds for every stream of an app's HTTP/2 (h2c) connection
//! too: Pingora serves all streams of a connection with one `HttpServerApp`, so that app is
//! [`InForce`], which hands each stream to the proxy in force when the stream starts. The app's
//! connection is never closed because of a renewal. (It used to be drained with a GOAWAY, and
//! a gRPC client whose call raced the GOAWAY saw it cancelled: tonic does not retry it.)
//!
//! Pingora's connector reads certificate, key and roots from file paths only. They are handed
//! over as memfds (`/proc/self/fd/N`): anonymous memory of this process holding exactly the
//! material the snapshot validated, so a certificate file replaced meanwhile cannot give the
//! connector a key that does not match its certificate, and the key is written to no
//! filesystem on the way.

use std::ffi::CStr;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_proxy::{HttpProxy, ProxyServiceBuilder};

use crate::identity::material::ClientIdentity;
use crate::outbound::Outbound;
use crate::store::Store;

/// Why an outbound proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The in-memory files for Pingora's connector could not be made.
    #[error("cannot hand the client identity to the connector: {0}")]
    MemFile(#[from] std::io::Error),
    /// Pingora's service builder kept no proxy (does not happen with Pingora 0.9).
    #[error("Pingora's service builder returned no proxy")]
    NoProxy,
}

/// The outbound proxy in force, and what it takes to build the next one. Generic over the
/// proxy logic: the sidecar's [`Outbound`], or the gateway's (`crate::gateway::Gateway`),
/// which dials the mesh with the same identity.
pub struct OutboundProxies<A = Outbound> {
    current: ArcSwap<HttpProxy<A>>,
    /// The identity `current` was built with; the lock serializes rebuilds.
    built_for: Mutex<Arc<ClientIdentity>>,
    conf: Arc<ServerConf>,
    app: A,
}

/// What a proxy logic needs to be built into an [`OutboundProxies`].
pub trait ProxyLogic:
    pingora_proxy::ProxyHttp<CTX: Send + Sync + 'static> + Clone + Send + Sync + 'static
{
}
impl<A> ProxyLogic for A
where
    A: pingora_proxy::ProxyHttp + Clone + Send + Sync + 'static,
    A::CTX: Send + Sync + 'static,
{
}

impl<A: ProxyLogic> OutboundProxies<A> {
    /// The first proxy: `app`'s logic with a connector presenting `identity`.
    pub fn new(
        conf: Arc<ServerConf>,
        app: A,
        identity: Arc<ClientIdentity>,
    ) -> Result<Self, BuildError> {
        let first = build(&conf, &app, &identity)?;
        Ok(Self {
            current: ArcSwap::from_pointee(first),
            built_for: Mutex::new(identity),
            conf,
            app,
        })
    }

    /// The proxy a new request takes.
    pub fn current(&self) -> Arc<HttpProxy<A>> {
        self.current.load_full()
    }

    /// Build and swap in a proxy for `identity` unless the one in force already has it.
    /// Returns whether it swapped; on error the proxy in force stays.
    pub fn refresh(&self, identity: &Arc<ClientIdentity>) -> Result<bool, BuildError> {
        let mut built_for = self.built_for.lock().unwrap_or_else(|e| e.into_inner());
        if **built_for == **identity {
            return Ok(false);
        }
        let next = build(&self.conf, &self.app, identity)?;
        self.current.store(Arc::new(next));
        *built_for = identity.clone();
        Ok(true)
    }
}

fn build<A: ProxyLogic>(
    conf: &Arc<ServerConf>,
    app: &A,
    identity: &ClientIdentity,
) -> Result<HttpProxy<A>, BuildError> {
    let chain = MemFile::new(c"weft-client-chain", &identity.chain_pem)?;
    let key = MemFile::new(c"weft-client-key", &identity.key_pem)?;
    let roots = MemFile::new(c"weft-mesh-roots", &identity.roots_pem)?;
    let mut client = ConnectorOptions::from_server_conf(conf);
    client.ca_file = Some(roots.path());
    client.cert_key_file = Some((chain.path(), key.path()));
    let mut server = HttpServerOptions::default();
    // Apps may speak HTTP/2 with prior knowledge (gRPC); `server::Traffic` sniffs for it.
    server.h2c = true;
    let mut service = ProxyServiceBuilder::new(conf, app.clone())
        .client_options(client)
        .server_options(server)
        .build();
    // The builder is Pingora's only way to give a proxy its connector options, and it wraps the
    // proxy in a listening service that is never run: take the proxy out, leaving a stand-in
    // whose connector trusts the same roots (so making it reads no system certificate store).
    let stand_in = ServerConf {
        threads: conf.threads,
        ca_file: Some(roots.path()),
        ..ServerConf::default()
    };
    let mut proxy = HttpProxy::new(app.clone(), Arc::new(stand_in));
    std::mem::swap(
        service.app_logic_mut().ok_or(BuildError::NoProxy)?,
        &mut proxy,
    );
    crate::upgrade::allow_extended_connect(&mut proxy);
    Ok(proxy)
}

/// Pingora's HTTP server app for an app's HTTP/2 connection: each stream goes to the proxy in
/// force when it starts (as each HTTP/1 request does, see `listen::Traffic`), so a renewal
/// changes the certificate the next stream presents without closing the app's connection.
pub struct InForce {
    proxies: Arc<OutboundProxies>,
    /// h2c on: apps speak HTTP/2 with prior knowledge (gRPC); what `build` gives each proxy.
    options: HttpServerOptions,
}

impl InForce {
    /// Streams of connections served by this app go to `proxies`' proxy in force.
    pub fn new(proxies: Arc<OutboundProxies>) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        Self { proxies, options }
    }
}

#[async_trait]
impl HttpServerApp for InForce {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.proxies
            .current()
            .process_new_http(session, shutdown)
            .await
    }

    fn h2_options(&self) -> Option<pingora_core::protocols::http::v2::server::H2Options> {
        self.proxies.current().h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn http_cleanup(&self) {
        self.proxies.current().http_cleanup().await;
    }
}

/// An anonymous in-memory file that Pingora can open by path while this value lives.
struct MemFile(OwnedFd);

impl MemFile {
    fn new(name: &CStr, text: &str) -> std::io::Result<Self> {
        let fd = memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(text.as_bytes())?;
        let this = Self(file.into());
        // Pingora's connector panics on a file it cannot read (no /proc, say): find out here,
        // where it is an error.
        let back = std::fs::read(this.path())?;
        if back != text.as_bytes() {
            return Err(std::io::Error::other(format!(
                "{} reads back {} bytes, not the {} written",
                this.path(),
                back.len(),
                text.len()
            )));
        }
        Ok(this)
    }

    /// Opening this path opens the file afresh, from its start.
    fn path(&self) -> String {
        format!("/proc/self/fd/{}", self.0.as_raw_fd())
    }
}

/// Rebuilds the outbound proxy when a snapshot brings another client certificate, key or
/// trust bundle. A Pingora background service: its own thread, apart from the traffic
/// workers.
pub struct IdentitySync<A = Outbound> {
    store: Arc<Store>,
    proxies: Arc<OutboundProxies<A>>,
}

impl<A: ProxyLogic> IdentitySync<A> {
    /// Keeps `proxies` on the identity of `store`'s snapshot in force.
    pub fn new(store: Arc<Store>, proxies: Arc<OutboundProxies<A>>) -> Self {
        Self { store, proxies }
    }
}

#[async_trait]
impl<A: ProxyLogic> BackgroundService for IdentitySync<A> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changes = self.store.subscribe();
        loop {
            // Checked before each wait, so a swap between start-up and subscribing counts.
            let snap = self.store.load();
            match self.proxies.refresh(&snap.tls.client) {
                Ok(true) => log::info!(
                    "outbound connections now present the certificate and trust bundle of config v{}",
                    snap.version
                ),
                Ok(false) => {}
                Err(e) => log::error!(
                    "outbound connector not rebuilt for config v{}, the previous one stays: {e}",
                    snap.version
                ),
            }
            drop(snap);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    use weft_certs::CertificateAuthority;

    use super::*;
    use crate::drain::Drain;
    use crate::store::test_support::orders;

    fn store_with_files(seed: u64) -> (tempfile::TempDir, Arc<Store>, CertificateAuthority) {
        let (dir, store, ca) = crate::store::test_support::store_with_files(seed);
        (dir, Arc::new(store), ca)
    }

    fn proxies(store: &Arc<Store>) -> Arc<OutboundProxies> {
        let app = Outbound::new(
            store.clone(),
            Arc::new(Drain::default()),
            crate::telemetry::hop::Reporters::default(),
        );
        let conf = Arc::new(ServerConf::default());
        Arc::new(OutboundProxies::new(conf, app, store.load().tls.client.clone()).expect("proxy"))
    }

    /// Renew the workload certificate: new key, new serial, same identity.
    fn renew(dir: &Path, store: &Store, ca: &CertificateAuthority) {
        let issued = ca
            .issue(&orders(), Duration::from_secs(3600))
            .expect("issue");
        let (crt, key) = (dir.join("o.crt"), dir.join("o.key"));
        store
            .install_files(&[
                (&crt, issued.cert_pem.as_bytes(), 0o644),
                (&key, issued.key_pem.as_bytes(), 0o600),
            ])
            .expect("install");
    }

    #[test]
    fn pingora_reads_back_exactly_the_validated_material_from_the_memfds() {
        let (dir, store, ca) = store_with_files(31);
        let id = store.load().tls.client.clone();
        let chain = MemFile::new(c"chain", &id.chain_pem).expect("chain");
        let key = MemFile::new(c"key", &id.key_pem).expect("key");
        let roots = MemFile::new(c"roots", &id.roots_pem).expect("roots");
        let (certs, private) =
            pingora_core::tls::load_certs_and_key_files(&chain.path(), &key.path())
                .expect("load")
                .expect("a certificate and a key");
        assert_eq!(certs.len(), 1);
        assert_eq!(
            weft_certs::identity_from_cert_der(certs[0].as_ref()).expect("identity"),
            orders()
        );
        let file_key = std::fs::read(dir.path().join("o.key")).expect("key file");
        let file_key = PrivateKeyDer::from_pem_slice(&file_key).expect("pem key");
        assert_eq!(private.secret_der(), file_key.secret_der());
        let mut store_roots = rustls::RootCertStore::empty();
        pingora_core::tls::load_ca_file_into_store(roots.path(), &mut store_roots).expect("roots");
        assert_eq!(store_roots.len(), 1);
        // Reading twice works: each open starts at the beginning.
        let again = std::fs::read_to_string(roots.path()).expect("again");
        assert_eq!(again, ca.cert_pem());
    }

    #[test]
    fn only_a_changed_certificate_or_bundle_rebuilds_the_proxy() {
        let (dir, store, ca) = store_with_files(32);
        let p = proxies(&store);
        let first = p.current();
        // The same files again (a reload, a policy change): the connector and its pool stay.
        store.reload().expect("reload");
        assert!(!p.refresh(&store.load().tls.client).expect("refresh"));
        assert!(Arc::ptr_eq(&first, &p.current()));
        // A renewed certificate: a new proxy for new requests; the old one lives on in theirs.
        renew(dir.path(), &store, &ca);
        assert!(p.refresh(&store.load().tls.client).expect("refresh"));
        let second = p.current();
        assert!(!Arc::ptr_eq(&first, &second));
        // A second root in the trust bundle.
        let next = CertificateAuthority::generate_seeded("weft.local", 33).expect("ca");
        let bundle = format!("{}{}", ca.cert_pem(), next.cert_pem());
        let path = dir.path().join("ca.crt");
        store
            .install_files(&[(&path, bundle.as_bytes(), 0o644)])
            .expect("install");
        assert!(p.refresh(&store.load().tls.client).expect("refresh"));
        assert!(!Arc::ptr_eq(&second, &p.current()));
    }

    #[tokio::test]
    async fn the_sync_service_swaps_the_proxy_when_a_renewal_is_installed() {
        let (dir, store, ca) = store_with_files(34);
        let p = proxies(&store);
        let first = p.current();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let sync = IdentitySync::new(store.clone(), p.clone());
        let task = tokio::spawn(async move { sync.start(shutdown).await });
        renew(dir.path(), &store, &ca);
        let swapped = tokio::time::timeout(Duration::from_secs(10), async {
            while Arc::ptr_eq(&first, &p.current()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(swapped.is_ok(), "no new proxy within 10 s of the renewal");
        stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the service ends on shutdown")
            .expect("no panic");
    }
}
