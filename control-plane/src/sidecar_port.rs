//! The sidecars' port: bound with a long accept queue, each connection given a slot of the
//! port's connection cap and its TLS handshake in time, then gRPC within [`SidecarLimits`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use weft_api::v1::control_plane_server::ControlPlaneServer;

use crate::ca::issuer::Issuer;
use crate::limits::SidecarLimits;
use crate::push::hub::Hub;

/// Accept-queue length of the sidecars' port (the kernel caps it at `net.core.somaxconn`).
/// The standard library's 128 overflowed when 500 sidecars connected at once in
/// `weft-bench --cp-push`: the dropped handshakes waited out a 1 s SYN retransmission.
pub const SIDECAR_LISTEN_BACKLOG: u32 = 4096;

/// Bind the sidecars' port with a [`SIDECAR_LISTEN_BACKLOG`] long accept queue.
pub(crate) fn bind_sidecar_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind does: a restarted control plane can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(SIDECAR_LISTEN_BACKLOG)
}

/// Serve the sidecars on `listener` within `limits`: a connection slot, the TLS handshake in
/// time, then gRPC, the `Stream` method by `push_stream` (snapshots shared, not copied per
/// stream).
pub(crate) fn serve_sidecars(
    listener: TcpListener,
    tls: TlsAcceptor,
    hub: Arc<Hub>,
    issuer: Arc<Issuer>,
    limits: SidecarLimits,
) -> [tokio::task::JoinHandle<()>; 2] {
    type Conn = crate::net::Slotted<crate::push::grpc::TlsConn>;
    let (conn_tx, conn_rx) = mpsc::channel::<Result<Conn, std::io::Error>>(64);
    let gate = crate::net::Gate::new(limits.max_connections, limits.handshake_timeout);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = crate::net::accept(&listener, "sidecar port").await;
            let (tls, conn_tx, gate) = (tls.clone(), conn_tx.clone(), gate.clone());
            tokio::spawn(async move {
                let Some(slot) = gate.enter().await else {
                    log::warn!(
                        "sidecar port: closing the connection from {peer}: too many connections"
                    );
                    return;
                };
                match tokio::time::timeout(limits.handshake_timeout, tls.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let conn = crate::net::Slotted::new(crate::push::grpc::TlsConn(s), slot);
                        let _ = conn_tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => log::warn!("TLS handshake from {peer}: {e}"),
                    Err(_) => log::warn!("TLS handshake from {peer}: timed out"),
                }
            });
        }
    });
    let grpc = ControlPlaneServer::new(crate::push::grpc::Service {
        hub: hub.clone(),
        issuer,
    })
    .max_decoding_message_size(limits.max_message_bytes);
    let svc = crate::push::push_stream::PushRouter::new(hub, grpc);
    let serve = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_concurrent_streams(Some(limits.max_streams_per_connection))
            .concurrency_limit_per_connection(limits.max_streams_per_connection as usize)
            .http2_max_header_list_size(Some(16 * 1024))
            .timeout(limits.unary_timeout)
            .add_service(svc)
            .serve_with_incoming(ReceiverStream::new(conn_rx))
            .await;
        if let Err(e) = r {
            log::error!("gRPC server: {e}");
        }
    });
    [accept, serve]
}
