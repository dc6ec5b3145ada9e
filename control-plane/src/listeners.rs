//! The control plane's listeners, bound before anything is served (the first failure is the
//! start's error).

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::sidecar_port::bind_sidecar_listener;

/// The control plane's listeners, bound, with the addresses they got.
pub(crate) struct Bound {
    pub(crate) sidecars: TcpListener,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: TcpListener,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) metrics: Option<TcpListener>,
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// Bind the sidecars' port (`listen`), the operator API (`admin`) and the optional metrics
/// listener.
pub(crate) async fn bind(
    listen: SocketAddr,
    admin: SocketAddr,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<Bound> {
    let listener = bind_sidecar_listener(listen).with_context(|| format!("binding {listen}"))?;
    let listen = listener.local_addr()?;
    let admin_listener = TcpListener::bind(admin)
        .await
        .with_context(|| format!("binding {admin}"))?;
    let admin = admin_listener.local_addr()?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    let metrics = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    Ok(Bound {
        sidecars: listener,
        listen,
        admin: admin_listener,
        admin_addr: admin,
        metrics: metrics_listener,
        metrics_addr: metrics,
    })
}
