//! Dedicated outbound ports that appear after start: a config reload or a control-plane
//! snapshot may add a service with its own `port` (opaque TCP needs one), and Pingora binds
//! its listeners only at start.
//!
//! The [`PortManager`] (a Pingora background service) compares the ports of the snapshot in
//! force with what is bound every [`SYNC_INTERVAL`], binds new ones on 127.0.0.1 and closes
//! ports no longer configured (their open connections finish). Connections it accepts go to
//! the same dispatcher as the start-time listeners, with the same socket digest, so the
//! dispatcher finds the destination by local port either way. Ports bound at start stay with
//! Pingora; a port that cannot be bound (taken by another process) is retried and logged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::listener::Listener;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::task::JoinHandle;

use crate::state::Store;

/// How often the configured ports are compared with the bound ones.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// How long a port that could not be bound waits before the next try.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds and closes dedicated outbound ports as the config changes.
pub struct PortManager<A> {
    store: Arc<Store>,
    app: Arc<A>,
    /// Bound by Pingora at start; never rebound here.
    at_start: BTreeSet<u16>,
}

impl<A> PortManager<A> {
    /// A manager dispatching to `app`; `at_start` are the ports Pingora already listens on.
    pub fn new(store: Arc<Store>, app: Arc<A>, at_start: BTreeSet<u16>) -> Self {
        Self {
            store,
            app,
            at_start,
        }
    }
}

enum Slot {
    Bound(JoinHandle<()>),
    /// Binding failed; try again at this instant.
    Failed(tokio::time::Instant),
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> BackgroundService for PortManager<A> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut slots: BTreeMap<u16, Slot> = BTreeMap::new();
        loop {
            let wanted: BTreeSet<u16> = self
                .store
                .load()
                .outbound_ports()
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| !self.at_start.contains(p))
                .collect();
            slots.retain(|port, slot| {
                let keep = wanted.contains(port);
                if !keep {
                    if let Slot::Bound(task) = slot {
                        task.abort();
                        log::info!("dedicated port 127.0.0.1:{port} closed (no longer configured)");
                    }
                }
                keep
            });
            for port in wanted {
                let now = tokio::time::Instant::now();
                match slots.get(&port) {
                    Some(Slot::Bound(_)) => continue,
                    Some(Slot::Failed(at)) if *at > now => continue,
                    _ => {}
                }
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let slot = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        log::info!("dedicated port {addr} bound (added by a config change)");
                        Slot::Bound(tokio::spawn(accept(
                            Listener::from(l),
                            self.app.clone(),
                            shutdown.clone(),
                        )))
                    }
                    Err(e) => {
                        log::error!(
                            "cannot bind dedicated port {addr}: {e}; retrying in {BIND_RETRY:?}"
                        );
                        Slot::Failed(now + BIND_RETRY)
                    }
                };
                slots.insert(port, slot);
            }
            tokio::select! {
                () = tokio::time::sleep(SYNC_INTERVAL) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Draining: no new connections; the ones accepted finish on their own tasks.
        for slot in slots.into_values() {
            if let Slot::Bound(task) = slot {
                task.abort();
            }
        }
    }
}

async fn accept<A: ServerApp + Send + Sync + 'static>(
    listener: Listener,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) {
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                if let Err(e) = stream.set_nodelay() {
                    log::debug!("set_nodelay: {e}");
                }
                let (app, shutdown) = (app.clone(), shutdown.clone());
                tokio::spawn(async move {
                    app.process_new(Box::new(stream), &shutdown).await;
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("dedicated port accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
